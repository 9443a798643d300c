"""The bridge against the real Docker Engine in swarm mode, with a real nats-server.

Each test makes its own service of busybox httpd agents on the overlay network chorus_default
and removes it afterwards. The agents' overlay addresses are only read from the Docker API and
compared with the bucket: nothing connects to them (no health checks, no broadcasts, no DNS).
"""

from __future__ import annotations

import asyncio
import math
import os
import signal
import statistics
import subprocess
import time
from collections.abc import Callable, Iterator, MutableMapping
from pathlib import Path
from typing import Any

import docker
import docker.errors
import pytest
import requests
import structlog
from nats.aio.client import Client as NATS

from bridge.bus.registry import read_bucket
from bridge.config import Settings
from bridge.contract.messages import Agent
from bridge.edges.nats_server import EmbeddedNats
from tests.conftest import announcements, run_bridge, wait_for
from tests.swarm_support import NETWORK, AgentService, connect_engine, engine_host, in_ci

pytestmark = [pytest.mark.swarm, pytest.mark.timeout(180)]

POLL_INTERVAL = 30.0
# A change must reach the bucket well before the poll would have found it.
FOLLOW_DEADLINE = POLL_INTERVAL / 2


@pytest.fixture(scope="session")
def engine() -> Iterator[tuple[str, docker.DockerClient]]:
    """The real engine (skipped without one; a failure under CI=true)."""
    host = engine_host()
    client = connect_engine(host)
    yield host, client
    client.close()


@pytest.fixture
def agents(engine: tuple[str, docker.DockerClient], unique: str) -> Iterator[AgentService]:
    """A service of 3 running agents with a unique name, removed at the end."""
    service = AgentService(engine[1], f"chorus-test-{unique}")
    try:
        service.create(3)
        service.wait_running(3)
        yield service
    finally:
        service.remove()


@pytest.fixture
def real_settings(
    engine: tuple[str, docker.DockerClient], agents: AgentService, unique: str
) -> Settings:
    """A bridge on the real engine: Swarm only, no DNS, the 30 s poll, names of its own."""
    return Settings(
        docker_host=engine[0],
        discovery_method="swarm",
        service_name=agents.name,
        network_names=(NETWORK,),
        dns_names=(),
        poll_interval=POLL_INTERVAL,
        subject_prefix=f"t{unique}",
        kv_bucket=f"agents_{unique}",
        listen_host="127.0.0.1",
        listen_port=0,
    )


async def bucket(nc: NATS, settings: Settings) -> dict[str, Agent]:
    kv = await nc.jetstream().key_value(settings.kv_bucket)
    agents, _ = await read_bucket(kv)
    return agents


async def addresses(nc: NATS, settings: Settings) -> dict[str, str]:
    return {key: agent.address for key, agent in (await bucket(nc, settings)).items()}


async def running(agents: AgentService) -> dict[str, str]:
    return await asyncio.to_thread(agents.running)


async def until_bucket_is(
    nc: NATS, settings: Settings, agents: AgentService, count: int, timeout: float
) -> dict[str, Agent]:
    """Wait until Docker runs `count` tasks and the bucket holds exactly those addresses.

    Reading the bucket is retried until the deadline: a KV watch may announce the end of the
    current values before delivering them (nats-py), which reads as an empty bucket.
    """
    seen: dict[str, Agent] = {}

    async def same() -> bool:
        tasks = await running(agents)
        seen.clear()
        seen.update(await bucket(nc, settings))
        return len(tasks) == count and {k: a.address for k, a in seen.items()} == tasks

    await wait_for(
        same, timeout=timeout, interval=0.1, what=f"the bucket to hold the {count} running tasks"
    )
    return dict(seen)


async def test_bucket_holds_the_running_tasks(
    real_settings: Settings, agents: AgentService, nats_server: EmbeddedNats, nc: NATS
) -> None:
    """After its first round the bucket holds exactly the running tasks, as Docker reports them."""
    async with run_bridge(real_settings, nats_server.url):
        # No event comes after the first round: matching now means that round found them all.
        published = await until_bucket_is(nc, real_settings, agents, 3, timeout=2)
        tasks = {t["ID"]: t for t in await asyncio.to_thread(agents.tasks)}
    assert len(published) == 3
    for key, agent in published.items():
        task = tasks[key]
        assert agent.task_id == key and agent.source == "swarm"
        assert agent.endpoint == f"http://{agent.address}:8080" and "/" not in agent.address
        assert (agent.service, agent.network) == (agents.name, NETWORK)
        assert agent.slot == task["Slot"] and agent.node_id == task["NodeID"]
        assert agent.container_id == task["Status"]["ContainerStatus"]["ContainerID"]


async def test_scaling_reaches_the_bucket_before_the_poll(
    real_settings: Settings, agents: AgentService, nats_server: EmbeddedNats, nc: NATS
) -> None:
    """A scale-up (3 to 6) and a scale-down (6 to 2) are in the bucket long before the poll."""
    async with run_bridge(real_settings, nats_server.url):
        seen = await announcements(nc, real_settings)
        before = set(await running(agents))
        await asyncio.to_thread(agents.scale, 6)
        await until_bucket_is(nc, real_settings, agents, 6, timeout=FOLLOW_DEADLINE)
        six = set(await running(agents))
        await wait_for(lambda: len(seen) == 3, what="3 announcements")
        assert sorted((s.event, s.agent.id) for s in seen) == sorted(
            ("joined", task) for task in six - before
        )

        seen.clear()
        await asyncio.to_thread(agents.scale, 2)
        await until_bucket_is(nc, real_settings, agents, 2, timeout=FOLLOW_DEADLINE)
        two = set(await running(agents))
        await wait_for(lambda: len(seen) == 4, what="4 announcements")
        assert sorted((s.event, s.agent.id) for s in seen) == sorted(
            ("left", task) for task in six - two
        )


async def test_restart_leaves_no_stale_key(
    real_settings: Settings, agents: AgentService, nats_server: EmbeddedNats, nc: NATS
) -> None:
    """Tasks removed while the bridge was down are gone from the bucket after its first round."""
    async with run_bridge(real_settings, nats_server.url):
        before = await until_bucket_is(nc, real_settings, agents, 3, timeout=5)
    await asyncio.to_thread(agents.scale, 1)
    await asyncio.to_thread(agents.wait_running, 1)
    async with run_bridge(real_settings, nats_server.url):
        # Far below the 30 s poll: only the first round can have removed the two stale keys.
        after = await until_bucket_is(nc, real_settings, agents, 1, timeout=2)
    assert set(after) < set(before)


# --- churn: rolling restarts, scale cycles, a restarted daemon -----------------------------

SAMPLE_EVERY = 0.2
# A running task may be missing from the bucket, or a gone one still in it, this long at most.
CHURN_LIMIT = 2.0


class Sampler:
    """Every SAMPLE_EVERY seconds: Docker's running tasks and the bucket's keys, and what
    DESIGN.md allows between them (times on the test's loop clock)."""

    def __init__(self, nc: NATS, settings: Settings, agents: AgentService) -> None:
        self._nc, self._settings, self._agents = nc, settings, agents
        self.listed: dict[str, float] = {}  # task -> when first seen running
        self.gone: dict[str, float] = {}  # task -> when first seen no longer running
        self.violations: list[str] = []
        self.running: set[str] = set()
        self.keys: set[str] = set()
        self.samples = 0

    async def sample(self) -> bool:
        """One sample; False when Docker did not answer (a restarting daemon)."""
        now = asyncio.get_running_loop().time()
        try:
            self.running = set(await running(self._agents))
        except (docker.errors.DockerException, requests.exceptions.RequestException):
            return False
        self.keys = set(await bucket(self._nc, self._settings))
        self.samples += 1
        for task in self.running:
            self.listed.setdefault(task, now)
            self.gone.pop(task, None)
        for task in self.listed.keys() - self.running:
            self.gone.setdefault(task, now)
        for task in self.running - self.keys:
            if now - self.listed[task] > CHURN_LIMIT:
                self.violations.append(
                    f"{task} running for {now - self.listed[task]:.1f}s, not in the bucket"
                )
        for task in self.keys - self.running:
            since = self.gone.get(task)
            if since is not None and now - since > CHURN_LIMIT:
                self.violations.append(f"{task} gone for {now - since:.1f}s, still in the bucket")
        return True

    async def until(self, done: Callable[[], bool], timeout: float) -> None:
        """Sample until `done()` holds after a sample (AssertionError after `timeout`)."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            started = loop.time()
            if await self.sample() and done():
                return
            if loop.time() > deadline:
                raise AssertionError(
                    f"not done after {timeout}s: running {self.running}, bucket {self.keys}"
                )
            await asyncio.sleep(max(0.0, SAMPLE_EVERY - (loop.time() - started)))


@pytest.mark.parametrize("order", ["stop-first", "start-first"])
async def test_rolling_restart_keeps_the_bucket_in_step(
    real_settings: Settings, agents: AgentService, nats_server: EmbeddedNats, nc: NATS, order: str
) -> None:
    """`docker service update --force` (every task replaced, one at a time): no running task
    missing from the bucket, and no gone task left in it, for more than 2 s."""
    async with run_bridge(real_settings, nats_server.url):
        before = set(await until_bucket_is(nc, real_settings, agents, 3, timeout=5))
        sampler = Sampler(nc, real_settings, agents)
        await sampler.sample()
        await asyncio.to_thread(agents.force_update, order)

        def replaced() -> bool:
            return (
                len(sampler.running) == 3
                and not sampler.running & before
                and sampler.keys == sampler.running
            )

        await sampler.until(replaced, timeout=90)
    assert sampler.violations == []
    assert sampler.samples > 5  # the update was watched while it ran


class KeyTimes:
    """When each key first appeared in the bucket (loop clock), from a KV watch."""

    def __init__(self) -> None:
        self.seen: dict[str, float] = {}

    async def run(self, nc: NATS, settings: Settings) -> None:
        kv = await nc.jetstream().key_value(settings.kv_bucket)
        watcher = await kv.watchall()
        try:
            async for entry in watcher:
                if entry is not None and entry.operation is None:
                    self.seen.setdefault(entry.key, asyncio.get_running_loop().time())
        finally:
            await watcher.stop()  # type: ignore[no-untyped-call]


SCALE_CYCLES = 4
SCALE_TO = 10
NEW_REPLICA_LIMIT = 1.0


async def test_scale_cycles_reach_the_bucket_within_a_second(
    real_settings: Settings, agents: AgentService, nats_server: EmbeddedNats, nc: NATS
) -> None:
    """Scale to 0 and back to 10, a few times: every new replica is in the bucket within 1 s
    of Docker listing it running (p95 over every replica of every cycle)."""
    latencies: list[float] = []
    async with run_bridge(real_settings, nats_server.url):
        times = KeyTimes()
        watch = asyncio.create_task(times.run(nc, real_settings))
        try:
            for _ in range(SCALE_CYCLES):
                await asyncio.to_thread(agents.scale, 0)
                await until_bucket_is(nc, real_settings, agents, 0, timeout=30)
                await asyncio.to_thread(agents.scale, SCALE_TO)
                listed = await listed_times(agents, SCALE_TO, timeout=60)
                await until_bucket_is(nc, real_settings, agents, SCALE_TO, timeout=30)
                latencies += [times.seen[task] - at for task, at in listed.items()]
        finally:
            watch.cancel()
    ordered = sorted(latencies)
    p95 = ordered[max(0, math.ceil(0.95 * len(ordered)) - 1)]
    print(
        f"new replica to bucket over {len(ordered)} replicas: median "
        f"{statistics.median(ordered):.3f}s, p95 {p95:.3f}s, max {ordered[-1]:.3f}s"
    )
    assert len(ordered) == SCALE_CYCLES * SCALE_TO
    assert p95 <= NEW_REPLICA_LIMIT, ordered


async def listed_times(agents: AgentService, count: int, timeout: float) -> dict[str, float]:
    """When each task was first listed running (polled every 50 ms), until `count` are."""
    loop = asyncio.get_running_loop()
    seen: dict[str, float] = {}
    deadline = loop.time() + timeout
    while len(seen) < count:
        now = loop.time()
        for task in await running(agents):
            seen.setdefault(task, now)
        if loop.time() > deadline:
            raise AssertionError(f"{len(seen)} of {count} tasks running after {timeout}s")
        await asyncio.sleep(0.05)
    return seen


RESTART_VARIABLE = "CHORUS_TEST_RESTART_DOCKERD"
DOCKERD_PIDFILE = Path("/var/run/docker.pid")
REPOSITORY = Path(__file__).resolve().parents[2]
# After the daemon answers again, the bucket equals the running tasks within this.
CATCH_UP_LIMIT = 5.0


def stop_dockerd() -> None:
    """SIGTERM the daemon named by its pid file; wait until it has exited."""
    pid = int(DOCKERD_PIDFILE.read_text().strip())
    os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + 60
    while Path(f"/proc/{pid}").exists() and _state(pid) != "Z":
        if time.monotonic() > deadline:
            raise AssertionError(f"dockerd (pid {pid}) did not exit within 60 s")
        time.sleep(0.1)


def _state(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return "gone"


def start_dockerd() -> None:
    """Start the daemon as the project does (scripts/swarm-up.sh), and wait for the swarm."""
    subprocess.run(
        ["bash", str(REPOSITORY / "scripts" / "swarm-up.sh")],
        check=True,
        capture_output=True,
        timeout=180,
    )


def answers(host: str) -> bool:
    try:
        client = docker.APIClient(base_url=host, version="auto", timeout=2)
    except docker.errors.DockerException:
        return False
    try:
        return bool(client.ping())
    except (docker.errors.DockerException, OSError, requests.exceptions.RequestException):
        return False
    finally:
        client.close()


@pytest.mark.skipif(
    not (in_ci() or os.environ.get(RESTART_VARIABLE) == "1"),
    reason=f"restarts the shared dockerd: CI=true or {RESTART_VARIABLE}=1 only",
)
async def test_dockerd_restart_under_a_running_bridge(
    engine: tuple[str, docker.DockerClient],
    real_settings: Settings,
    agents: AgentService,
    nats_server: EmbeddedNats,
    nc: NATS,
) -> None:
    """dockerd stopped and started again while the bridge runs: no agent removed while it is
    down, the event stream comes back, and the bucket equals the running tasks within 5 s
    of the daemon answering."""
    host = engine[0]
    with structlog.testing.capture_logs() as logs:
        async with run_bridge(real_settings, nats_server.url):
            before = set(await until_bucket_is(nc, real_settings, agents, 3, timeout=5))
            await asyncio.to_thread(stop_dockerd)
            # Down until the bridge has seen a round fail, then started again: the bucket is
            # sampled all along, and nothing may leave it.
            try:
                down_samples = await _unchanged_until(
                    nc, real_settings, before, lambda: "docker_api_failing" in events(logs)
                )
                # and for a while after that round: its writes (if any) would be out by then
                down_samples += await _unchanged_until(
                    nc, real_settings, before, lambda: True, at_least=10
                )
            finally:
                starting = asyncio.create_task(asyncio.to_thread(start_dockerd))
            try:
                down_samples += await _unchanged_while_down(nc, real_settings, host, before)
            except BaseException:
                await starting  # the daemon back for the tests that follow
                raise
            answered = asyncio.get_running_loop().time()
            sampler = Sampler(nc, real_settings, agents)
            await sampler.until(lambda: sampler.keys == sampler.running, timeout=60)
            caught_up = asyncio.get_running_loop().time() - answered
            await starting
            await wait_for(
                lambda: any(e["event"] == "docker_events_connected" and "was" in e for e in logs),
                timeout=10,
                what="the event stream to come back",
            )
            # The swarm settles (Swarm replaces the tasks that stopped with the daemon): the
            # bucket follows it, in step, to 3 running tasks.
            await sampler.until(
                lambda: len(sampler.running) == 3 and sampler.keys == sampler.running, timeout=90
            )
    print(
        f"bucket unchanged over {down_samples} samples while dockerd was down; "
        f"equal to the running tasks {caught_up:.2f}s after it answered; "
        f"replaced: {len(before - sampler.running)} of 3"
    )
    assert caught_up <= CATCH_UP_LIMIT
    assert sampler.violations == []


def events(logs: list[MutableMapping[str, Any]]) -> set[str]:
    return {str(e["event"]) for e in logs}


async def _unchanged_until(
    nc: NATS,
    settings: Settings,
    before: set[str],
    done: Callable[[], bool],
    timeout: float = 30.0,
    at_least: int = 0,
) -> int:
    """Sample the bucket until `done()`, `at_least` times; each sample must hold `before`.
    The samples taken."""
    deadline = asyncio.get_running_loop().time() + timeout
    samples = 0
    while samples < at_least or not done():
        assert asyncio.get_running_loop().time() < deadline, "no failed round was logged"
        seen = set(await bucket(nc, settings))
        assert seen == before, (sorted(before - seen), sorted(seen - before))
        samples += 1
        await asyncio.sleep(SAMPLE_EVERY)
    return samples


async def _unchanged_while_down(
    nc: NATS, settings: Settings, host: str, before: set[str], timeout: float = 120.0
) -> int:
    """Sample the bucket from the daemon's stop until it answers again: every sample taken
    while it did not answer must hold `before` (a failed round removes nothing). A sample
    counts only when the daemon still did not answer after it was taken, since it never
    goes down again once back. Returns the number of such samples."""
    deadline = asyncio.get_running_loop().time() + timeout
    samples = 0
    while asyncio.get_running_loop().time() < deadline:
        seen = set(await bucket(nc, settings))
        if await asyncio.to_thread(answers, host):
            return samples
        assert seen == before, (sorted(before - seen), sorted(seen - before))
        samples += 1
        await asyncio.sleep(SAMPLE_EVERY)
    raise AssertionError(f"dockerd did not answer within {timeout:g}s of being started")
