"""`chorus-bridge demo`: the whole story on one machine, with nothing but the package.

An embedded nats-server, an emulated Docker Engine API whose service has N tasks with loopback
addresses, N simulated agents on those addresses (some also on the bus), and the real bridge:
discovery through the Swarm API, presence, one broadcast through the real broadcast API, its
report, and the council it forms (who holds each role, how soon it was active). Only Docker
and the agents are stand-ins.
"""

from __future__ import annotations

import asyncio
import contextlib
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import click
import nats
import structlog
from nats.aio.client import Client as NATS

from bridge.app import running_bridge
from bridge.config import Settings
from bridge.contract.messages import (
    BroadcastReport,
    CouncilOpportunity,
    ErrorReply,
    Role,
    decode_reply,
    encode,
)
from bridge.contract.names import Names
from bridge.devkit.demo_council import CouncilWatch, Newcomer
from bridge.devkit.demo_explore import explore
from bridge.devkit.emulator import DockerEmulator, EmulatedSwarm
from bridge.devkit.sim import SimAgent, SimFleet, allocate_addresses
from bridge.edges.nats_server import EmbeddedNats
from bridge.errors import BridgeError

__all__ = ["DemoResult", "run_demo"]

log = structlog.get_logger(__name__)

# Loopback addresses of the simulated agents start here (127.0.1.1, 127.0.1.2, ...).
AGENT_BASE = "127.0.1.1"
STEP_TIMEOUT = 60.0

OPPORTUNITY = CouncilOpportunity(
    id="council-42",
    project="whoosh",
    title="Build the API",
    deadline=None,
    roles=[
        Role(name="tpm", core=True),
        Role(name="senior-software-architect", core=True),
        Role(name="backend-developer", core=True),
        Role(name="qa-engineer", core=False),
    ],
)


class DemoResult:
    """What the demo saw, for its caller (and its tests). `holders`: role -> its holder;
    `activated_ms`: from the broadcast request to the council's `activated` event."""

    def __init__(self) -> None:
        self.discovered = 0
        self.discovery_ms = 0.0
        self.on_bus = 0
        self.report: BroadcastReport | None = None
        self.holders: dict[str, str | None] = {}
        self.activated_ms: float | None = None
        self.nats_url = ""


def claim_every_role(agent: SimAgent, opportunity: CouncilOpportunity) -> str | None:
    """Agent i claims role i, core roles first: a fleet fills the core roles, then the others."""
    roles = sorted(opportunity.roles, key=lambda role: not role.core)
    return roles[agent.index].name if agent.index < len(roles) else None


Say = Callable[[str], None]


def _say(text: str) -> None:
    click.echo(text)


class _Progress:
    """One line that counts agents as they start (rewritten in place on a terminal)."""

    def __init__(self, say: Say, total: int) -> None:
        self._say, self._total = say, total
        self._tty = sys.stdout.isatty()
        self._last = -1

    def __call__(self, started: int, total: int) -> None:
        if self._tty:
            click.echo(f"\r  agents started: {started}/{total}", nl=started == total)
            return
        step = max(1, total // 4)
        if started == total or started // step != self._last:
            self._last = started // step
            self._say(f"  agents started: {started}/{total}")


async def _until(predicate: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + STEP_TIMEOUT
    while not predicate():
        if time.monotonic() > deadline:
            raise BridgeError(f"the demo timed out waiting for {what}")
        await asyncio.sleep(0.01)


@contextlib.asynccontextmanager
async def _stage(
    agents: int,
    on_bus: int,
    say: Say,
) -> AsyncIterator[tuple[EmbeddedNats, EmulatedSwarm, DockerEmulator, SimFleet, Names]]:
    names = Names(prefix="chorus", agents_bucket="chorus_agents")
    with tempfile.TemporaryDirectory(prefix="chorus-demo-") as tmp:
        async with contextlib.AsyncExitStack() as stack:
            server = await stack.enter_async_context(
                EmbeddedNats(port=0, store_dir=Path(tmp) / "nats")
            )
            say(f"NATS with JetStream (embedded): {server.url}, state in {tmp}/nats")
            swarm = EmulatedSwarm()
            addresses = allocate_addresses(agents, AGENT_BASE)
            task_ids = swarm.add_tasks(agents, addresses=addresses)
            docker_api = await stack.enter_async_context(
                DockerEmulator(Path(tmp) / "docker.sock", swarm)
            )
            say(
                f"Docker Engine API (emulated): {docker_api.base_url}, service "
                f"{swarm.service} with {agents} running tasks on {addresses[0]}"
                f"{'..' + addresses[-1] if agents > 1 else ''}"
            )
            say(f"Starting {agents} simulated agents ({on_bus} of them on the bus)...")
            fleet = await stack.enter_async_context(
                SimFleet(
                    agents,
                    on_bus=on_bus,
                    nats_url=server.url,
                    names=names,
                    base=AGENT_BASE,
                    task_ids=task_ids,
                    progress=_Progress(say, agents),
                    claim_policy=claim_every_role,
                    ask_claims=True,
                )
            )
            yield server, swarm, docker_api, fleet, names


async def _broadcast(
    watch: CouncilWatch, fleet: SimFleet, nc: NATS, result: DemoResult, say: Say
) -> None:
    names = fleet.names
    say(
        f"\nBroadcast of {OPPORTUNITY.id!r} ({', '.join(r.name for r in OPPORTUNITY.roles)}) "
        f"through {names.broadcast}..."
    )
    sent = time.perf_counter()
    msg = await nc.request(names.broadcast, encode(OPPORTUNITY), timeout=STEP_TIMEOUT)
    reply = decode_reply(msg.data)
    if isinstance(reply, ErrorReply):
        raise BridgeError(f"the bridge refused the demo's opportunity: {reply.error}")
    result.report = reply
    say(
        f"  reached {reply.success_count} of {reply.total_agents} agents in "
        f"{reply.duration_ms} ms: {reply.via_bus} via the bus, {reply.via_http} via HTTP, "
        f"{len(reply.failed)} failed"
    )
    for failure in reply.failed:
        say(f"    failed: {failure.agent_id} {failure.endpoint} ({failure.error})")
    core = sum(role.core for role in OPPORTUNITY.roles)
    if result.discovered >= core:  # fewer agents than core roles: it cannot form
        try:
            activated = await watch.until("activated")
        except TimeoutError:
            say(f"  {OPPORTUNITY.id} did not activate within {STEP_TIMEOUT:.0f} s")
        else:
            result.activated_ms = (activated - sent) * 1000
            say(f"  {OPPORTUNITY.id} activated {result.activated_ms:.0f} ms after the broadcast")
    await _until(lambda: fleet.unanswered == 0, "the answers to the agents' claims")
    state = await watch.state()
    result.holders = {role.name: role.holder for role in state.roles}
    for line in watch.show(state):
        say(line)


async def run_demo(
    agents: int = 34, on_bus: int = 17, *, say: Say = _say, keep: asyncio.Event | None = None
) -> DemoResult:
    """Run the demo; returns what it saw. With `keep`, everything stays up after the
    broadcast, with the commands to explore it printed, until `keep` is set (Ctrl-C)."""
    if not 1 <= agents <= 10_000 or not 0 <= on_bus <= agents:
        raise BridgeError(
            f"--agents must be 1..10000 and --on-bus 0..agents (got {agents} and {on_bus})"
        )
    result = DemoResult()
    async with _stage(agents, on_bus, say) as (server, swarm, docker_api, fleet, names):
        settings = Settings(
            discovery_method="swarm",
            docker_host=docker_api.base_url,
            dns_names=(),
            agent_port=fleet.port,
            listen_host="127.0.0.1",
            listen_port=0,
            log_format="console",
            log_level="WARNING",
        )
        say("\nStarting the bridge (discovery through the Swarm API)...")
        started = time.perf_counter()
        async with running_bridge(settings, server.url) as bridge:
            registry = bridge.registry
            await _until(lambda: len(registry.published) >= agents, "discovery")
            result.discovery_ms = (time.perf_counter() - started) * 1000
            result.discovered = len(registry.published)
            say(
                f"  discovered {result.discovered} of {agents} agents via the Swarm API in "
                f"{result.discovery_ms:.0f} ms (a DNS lookup of the service name would have "
                "found its one virtual IP)"
            )
            await _until(
                lambda: sum(a.on_bus for a in registry.published.values()) >= on_bus, "presence"
            )
            result.on_bus = sum(a.on_bus for a in registry.published.values())
            say(
                f"  presence: {result.on_bus} agents on the bus, "
                f"{agents - result.on_bus} reachable by HTTP only"
            )
            async with _client(server.url) as nc:
                watch = CouncilWatch(nc, names, OPPORTUNITY, say)
                await watch.start()
                await _broadcast(watch, fleet, nc, result, say)
                result.nats_url = server.url
                if keep is not None:
                    explore(server.url, bridge.http_port, min(registry.published), say)
                    await _kept(keep, Newcomer(watch, swarm, fleet, say))
                    say("\nStopping...")
        say("\nDone: the bridge, the agents, Docker's stand-in and NATS stopped cleanly.")
    return result


async def _kept(keep: asyncio.Event, newcomer: Newcomer) -> None:
    """Until Ctrl-C (`keep`): the newcomer's commands on stdin."""
    with newcomer.reading():
        async with asyncio.TaskGroup() as tg:
            commands = tg.create_task(newcomer.run(), name="demo-newcomer")
            await keep.wait()
            commands.cancel()


@contextlib.asynccontextmanager
async def _client(url: str) -> AsyncIterator[NATS]:
    nc = await nats.connect(url, name="chorus-demo-coordinator")
    try:
        yield nc
    finally:
        await nc.close()
