"""Faults and what they cost, measured as an operator sees it: seconds until a new task is in
the bucket (discovery) and until a broadcast gets a report. Shared by tests/chaos and
bench/recovery.py."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import datetime
import signal

import nats
import nats.errors
import structlog

from bridge.app import Bridge
from bridge.config import Settings
from bridge.devkit.emulator import EmulatedSwarm
from tests.chaos.support import has_key, lease_of, try_broadcast
from tests.nats_cluster import NatsCluster, settled

__all__ = [
    "BROADCAST_WAITS_FOR",
    "DISCOVERY_WAITS_FOR",
    "KILLS",
    "Gap",
    "kill_and_measure",
    "lease_renewed",
    "measure",
    "streams_of",
]

log = structlog.get_logger(__name__)

# What to kill: the server the bridge is connected to, the JetStream meta leader, and the
# stream leader of each bucket.
KILLS = (
    "connected",
    "meta leader",
    "agents stream leader",
    "lease stream leader",
    "presence stream leader",
    "councils stream leader",
)
# The streams whose own leader's kill waits for that stream's election before the path that
# writes there works again: discovery writes the agents bucket, and a broadcast records its
# opportunity in the councils bucket before it is sent (DESIGN.md, "Councils").
DISCOVERY_WAITS_FOR = "agents stream leader"
BROADCAST_WAITS_FOR = "councils stream leader"


@dataclasses.dataclass(frozen=True)
class Gap:
    """What one fault cost, in seconds from the fault."""

    fault: str
    server: str
    discovery_s: float
    broadcast_s: float


def streams_of(settings: Settings) -> dict[str, str]:
    prefix = settings.subject_prefix
    return {
        "agents stream leader": f"KV_{settings.kv_bucket}",
        "lease stream leader": f"KV_{prefix}_bridge",
        "presence stream leader": f"KV_{prefix}_presence",
        "councils stream leader": f"KV_{prefix}_councils",
    }


async def _victim(cluster: NatsCluster, fault: str, bridge: Bridge, settings: Settings) -> str:
    if fault == "connected":
        assert bridge.nc is not None and bridge.nc.connected_url is not None
        port = bridge.nc.connected_url.port
        return next(s.name for s in cluster.servers if s.port == port)
    if fault == "meta leader":
        return await cluster.meta_leader()
    return await cluster.stream_leader(streams_of(settings)[fault])


async def measure(
    url: str, settings: Settings, swarm: EmulatedSwarm, label: str, timeout: float = 60.0
) -> tuple[float, float]:
    """Add a task now; seconds until it is in the bucket, and until a broadcast is reported."""
    loop = asyncio.get_running_loop()
    start = loop.time()
    new = swarm.add_tasks(1)[0]

    async def discovered() -> float:
        while not await has_key(url, settings, new):  # noqa: ASYNC110 - polls the server: no event to wait on
            await asyncio.sleep(0.05)
        return loop.time() - start

    async def reported() -> float:
        attempt = 0
        while await try_broadcast(url, settings, f"{label}-{attempt}", timeout=2) is None:
            attempt += 1
            await asyncio.sleep(0.05)
        return loop.time() - start

    async with asyncio.timeout(timeout):
        found, answered = await asyncio.gather(discovered(), reported())
    return found, answered


async def _isolate(cluster: NatsCluster, fault: str, victim: str, settings: Settings) -> None:
    """Move the agents, lease and councils streams' leaders off the victim (a graceful
    step-down) unless the fault is theirs, so that a kill costs what the fault named costs.
    A step-down is an election of that stream: logged as `step_down` with its role, so that
    what it costs is counted against it, not against the kill that follows."""
    streams = streams_of(settings)
    nc = await nats.connect(cluster.urls, connect_timeout=1)
    try:
        for role in ("agents stream leader", "lease stream leader", "councils stream leader"):
            if fault == role:
                continue
            async with asyncio.timeout(30):
                while await cluster.stream_leader(streams[role]) == victim:
                    log.info("step_down", role=role, server=victim)
                    with contextlib.suppress(nats.errors.Error):
                        await nc.request(
                            f"$JS.API.STREAM.LEADER.STEPDOWN.{streams[role]}", b"", timeout=2
                        )
                    await asyncio.sleep(0.5)
    finally:
        await nc.close()
    await settled(cluster, list(streams.values()))


async def kill_and_measure(
    cluster: NatsCluster, fault: str, bridge: Bridge, settings: Settings, swarm: EmulatedSwarm
) -> Gap:
    """kill -9 the server `fault` names (logged as `kill`), measure, then start it again and
    let it catch up. Before the kill and after the restart, the bridge writes its lease again
    (lease_renewed), so that each fault's cost to the lease is logged before the next one."""
    name = await _victim(cluster, fault, bridge, settings)
    await _isolate(cluster, fault, name, settings)
    await lease_renewed(cluster.url, settings, bridge)
    name = await _victim(cluster, fault, bridge, settings)  # a step-down may move others
    server = cluster.by_name(name)
    log.info("kill", fault=fault, server=name)
    await server.stop(signal.SIGKILL)
    label = fault.replace(" ", "-")
    found, answered = await measure(cluster.url, settings, swarm, label)
    server.start()
    await server.ready(30)
    await settled(cluster, list(streams_of(settings).values()))
    await lease_renewed(cluster.url, settings, bridge)
    return Gap(fault=fault, server=name, discovery_s=found, broadcast_s=answered)


async def lease_renewed(url: str, settings: Settings, bridge: Bridge, timeout: float = 30) -> None:
    """Wait until the bridge writes its lease again after the cluster settled: what a fault
    does to the lease (ridden out, or lost and taken back) is then done, and logged, before
    the next fault begins. The cluster settles when the lease stream has elected its leader;
    the bridge learns it at its next retry, which can come after that (up to 2 s: a write
    answered "no responders", then a bucket lookup that times out), and a lease lost then
    would be logged after the next fault's start, and counted as its doing."""
    assert bridge.election is not None
    since = datetime.datetime.now(datetime.UTC)

    async def renewed() -> bool:
        found = await lease_of(url, f"{settings.subject_prefix}_bridge")
        lease = found[0] if found is not None else None
        return (
            lease is not None
            and lease.bridge_id == bridge.election.identity
            and lease.renewed_at is not None
            and datetime.datetime.fromisoformat(lease.renewed_at) > since
        )

    try:
        async with asyncio.timeout(timeout):
            while not await renewed():  # noqa: ASYNC110 - polls the server: no event to wait on
                await asyncio.sleep(0.05)
    except TimeoutError:
        raise AssertionError(
            f"the bridge did not write its lease within {timeout:g} s of the cluster settling"
        ) from None
