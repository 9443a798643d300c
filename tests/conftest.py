"""Shared fixtures: a real nats-server, unique names, bounded waits."""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine, MutableMapping
from pathlib import Path
from typing import Any

import nats
import pytest
import structlog
import structlog.testing
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg

from bridge.app import Bridge, open_bridge
from bridge.config import Settings
from bridge.contract.messages import (
    ANNOUNCEMENT_DECODER,
    Announcement,
    ClaimAnswer,
    CouncilOpportunity,
    Role,
    Via,
)
from bridge.devkit.emulator import DockerEmulator, EmulatedSwarm
from bridge.discovery.dns import DnsDiscovery
from bridge.discovery.followup import SCHEDULE, Schedule
from bridge.discovery.managers import Resolve
from bridge.edges.kv import RawBucket, snapshot_of
from bridge.edges.nats_server import EmbeddedNats
from tests.dns_server import DnsTestServer

# Responses recorded from a real Docker Engine 20.10 in swarm mode (their README says how).
FIXTURES = Path(__file__).resolve().parent / "fixtures" / "docker-engine-20.10"

# The opportunity the broadcast, trust and simulated-agent tests send.
OPPORTUNITY = CouncilOpportunity(
    id="council-42",
    project="whoosh",
    title="Build the API",
    roles=[
        Role(name="tpm", core=True),
        Role(name="senior-software-architect", core=True),
        Role(name="qa-engineer", core=False),
    ],
)


class RecordedCouncils:
    """The broadcaster's councils for tests of delivery alone: what it was handed, kept in
    order (the councils themselves are tested against a running bridge, tests/council/)."""

    def __init__(self) -> None:
        self.recorded: list[str] = []
        self.claims: list[tuple[str, str, str, Via]] = []

    async def record(self, opportunity: CouncilOpportunity) -> None:
        self.recorded.append(opportunity.id)

    async def claim(
        self, opportunity_id: str, agent_id: str, role: str, *, via: Via
    ) -> ClaimAnswer | None:
        self.claims.append((opportunity_id, agent_id, role, via))
        return None


@pytest.fixture
async def nats_server(tmp_path: Path) -> AsyncIterator[EmbeddedNats]:
    """A real nats-server with JetStream, on a free port, state in a temp dir."""
    async with EmbeddedNats(port=0, store_dir=tmp_path / "nats") as server:
        yield server


@pytest.fixture
async def nc(nats_server: EmbeddedNats) -> AsyncIterator[NATS]:
    """A plain client of the test server, for observing what the bridge does."""
    client = await nats.connect(nats_server.url, max_reconnect_attempts=1, connect_timeout=2)
    yield client
    await client.close()


@pytest.fixture
def unique() -> str:
    """A short unique token, for subject prefixes and bucket names."""
    return uuid.uuid4().hex[:10]


async def announcements(nc: NATS, settings: Settings) -> list[Announcement]:
    """Subscribe to the announcements of `settings`'s prefix; the list fills as they come."""
    seen: list[Announcement] = []

    async def on(msg: Msg) -> None:
        seen.append(ANNOUNCEMENT_DECODER.decode(msg.data))

    await nc.subscribe(f"{settings.subject_prefix}.agents.announce", cb=on)
    await nc.flush()
    return seen


async def live_keys(kv: RawBucket) -> list[str]:
    """The keys of a bucket that hold a value, sorted. Not nats-py's `kv.keys()`: it stops at
    its first "done" marker, which a loaded machine can see before the keys
    (bridge/edges/kv/watch.py)."""
    entries = await snapshot_of(kv, timeout=10)
    return sorted(key for key, entry in entries.items() if entry.operation is None)


async def wait_for(
    predicate: Callable[[], bool | Awaitable[bool]],
    timeout: float = 5.0,
    interval: float = 0.02,
    what: str = "condition",
) -> None:
    """Wait until `predicate` holds, failing after `timeout` seconds (no bare sleeps)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        result = predicate()
        if not isinstance(result, bool):
            result = await result
        if result:
            return
        if loop.time() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        await asyncio.sleep(interval)


# --- an emulated Docker Engine, a loopback DNS server, and a bridge running in-process ---


@pytest.fixture
def swarm() -> EmulatedSwarm:
    """An emulated swarm manager with one service; its addresses are on loopback."""
    return EmulatedSwarm(subnet="127.10.0.0/16")


@pytest.fixture
async def docker_api(tmp_path: Path, swarm: EmulatedSwarm) -> AsyncIterator[DockerEmulator]:
    """The emulated Docker Engine API on a unix socket."""
    async with DockerEmulator(tmp_path / "docker.sock", swarm) as emulator:
        yield emulator


@pytest.fixture
async def dns_server() -> AsyncIterator[DnsTestServer]:
    """A DNS server on 127.0.0.1 (UDP and TCP) for the DNS fallback; no query leaves loopback."""
    async with DnsTestServer() as server:
        yield server


def dns_discovery(settings: Settings, server: DnsTestServer) -> DnsDiscovery:
    import dns.asyncresolver
    import dns.nameserver

    resolver = dns.asyncresolver.Resolver(configure=False)
    resolver.nameservers = [dns.nameserver.Do53Nameserver(server.host, server.port)]
    return DnsDiscovery(settings, resolver, timeout=1.0)


@pytest.fixture
def settings(docker_api: DockerEmulator, unique: str) -> Settings:
    """Settings of a bridge on the emulator, with names of its own and a slow poll (so a
    change seen quickly was seen through events)."""
    return Settings(
        docker_host=docker_api.base_url,
        discovery_method="swarm",
        subject_prefix=f"t{unique}",
        kv_bucket=f"agents_{unique}",
        poll_interval=60.0,
        listen_host="127.0.0.1",
        listen_port=0,
        docker_timeout=1.0,
        dns_names=(),
    )


async def rounds_pass(running: RunningBridge, count: int = 2) -> None:
    """Wait until `count` more discovery rounds have run, asking for each one."""
    pipeline = running.bridge.pipeline
    for _ in range(count):
        target = pipeline.rounds + 1
        pipeline.trigger()
        # B023: awaited within this iteration, so the lambda sees this iteration's target.
        await wait_for(lambda: pipeline.rounds >= target, timeout=10, what="a round")  # noqa: B023


class RunningBridge:
    """A Bridge running in a task of the test's loop; `stop()` shuts it down cleanly."""

    def __init__(self, bridge: Bridge, task: asyncio.Task[None], stop: asyncio.Event) -> None:
        self.bridge, self.task, self._stop = bridge, task, stop

    async def stop(self) -> None:
        self._stop.set()
        await stopped(self.task)


async def unless_stopped(
    task: asyncio.Task[None], awaitable: Awaitable[object], what: str, timeout: float = 15.0
) -> None:
    """Wait for `awaitable`, unless the bridge's task ends first (its error is raised then)."""
    waiter = asyncio.ensure_future(awaitable)
    try:
        done, _ = await asyncio.wait(
            {task, waiter}, timeout=timeout, return_when=asyncio.FIRST_COMPLETED
        )
    finally:
        waiter.cancel()
    if waiter in done:
        return
    if task.done():
        task.result()
        raise AssertionError(f"the bridge stopped before {what}")
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


@contextlib.asynccontextmanager
async def run_bridge(
    settings: Settings,
    url: str,
    *,
    dns: DnsDiscovery | None = None,
    follow_events: bool = True,
    first_round: bool = True,
    schedule: Schedule = SCHEDULE,
    resolve: Resolve | None = None,
    clock: Callable[[], float] = time.time,
) -> AsyncIterator[RunningBridge]:
    """Start a bridge and wait until it is ready and (first_round) a leader's first round is
    done; a standby has none: pass first_round=False."""
    stop = asyncio.Event()
    opened: asyncio.Future[Bridge] = asyncio.get_running_loop().create_future()

    async def serve() -> None:
        async with open_bridge(
            settings,
            url,
            dns=dns,
            follow_events=follow_events,
            schedule=schedule,
            resolve=resolve,
            clock=clock,
        ) as bridge:
            opened.set_result(bridge)
            await bridge.run(stop)

    task = asyncio.create_task(serve(), name="bridge")
    try:
        await unless_stopped(task, opened, "the bridge to open")
        bridge = opened.result()
        running = RunningBridge(bridge, task, stop)
        await unless_stopped(task, bridge.ready.wait(), "the bridge to be ready")
        if first_round:
            await unless_stopped(task, bridge.pipeline.first_round.wait(), "a first round")
            # The round's announcements may still sit in the client's buffer: once flushed,
            # the server has delivered them, and a test that subscribes now sees only later
            # ones.
            await unless_stopped(task, bridge.nc.flush(timeout=5), "the first round's messages")
        yield running
    finally:
        if not task.done():
            stop.set()
            await stopped(task)


async def stopped(task: asyncio.Task[None], timeout: float = 10.0) -> None:
    """Wait for the bridge's task to end once asked to stop; its error is raised. Not
    `await task` under asyncio.timeout: a task that swallowed its cancellation (bridge/waits.py)
    keeps that await waiting past any timeout."""
    done, _ = await asyncio.wait({task}, timeout=timeout)
    if not done:
        running = sorted(t.get_name() for t in asyncio.all_tasks() if not t.done())
        task.cancel()  # a second stop, so that the loop can still be closed
        await asyncio.wait({task}, timeout=timeout)
        raise AssertionError(
            f"the bridge did not stop within {timeout}s of its stop; tasks left: {running}"
        )
    task.result()


async def swallow_a_stop() -> None:
    """Be asked to stop and carry on, as nats-py's wait_for does on Python 3.11 when the stop
    comes with the reply (tests/test_waits.py shows it does)."""
    task = asyncio.current_task()
    assert task is not None
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await asyncio.get_running_loop().create_future()


async def ends_cancelled(run: Coroutine[Any, Any, object], timeout: float = 10.0) -> bool:
    """Run `run` as a task: whether it ends by itself, cancelled, within `timeout` seconds (a
    task that does not is stopped, and the answer is False)."""
    task = asyncio.create_task(run)
    ended = task in (await asyncio.wait({task}, timeout=timeout))[0]
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    return ended and task.cancelled()


@pytest.fixture
async def logs() -> AsyncIterator[list[MutableMapping[str, Any]]]:
    """The structured log lines of the test, as structlog's capture gives them."""
    with structlog.testing.capture_logs() as captured:
        yield captured
