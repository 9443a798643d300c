"""A NATS cluster of three on loopback, buckets with three replicas: kill -9 the server the
bridge is connected to, the meta leader, the stream leader of each bucket; the bridge keeps
discovering and answering broadcasts, and the bucket is right after."""

from __future__ import annotations

from pathlib import Path

import structlog

from bridge.config import Settings
from bridge.emulator import DockerEmulator, EmulatedSwarm
from tests.chaos.scenarios import KILLS, Gap, kill_and_measure, measure, streams_of
from tests.chaos.support import bucket_agents
from tests.conftest import run_bridge, wait_for
from tests.nats_cluster import nats_cluster, settled

# The target is 3 s; a loaded CI machine gets some slack, the figures are printed.
BOUND = 10.0


async def test_kills_in_a_cluster_of_three(tmp_path: Path, settings: Settings,
                                           swarm: EmulatedSwarm,
                                           docker_api: DockerEmulator) -> None:
    settings = settings.replace(kv_replicas=3, bus_ack_wait=0.2)
    swarm.add_tasks(3)
    with structlog.testing.capture_logs() as logs:
        gaps = await _kills(tmp_path, settings, swarm)
    # The lease survived every stream leader election: renewals were retried within it.
    assert not [e for e in logs if e["event"] == "leader_lease_lost"]
    for gap in gaps:
        assert gap.discovery_s < BOUND and gap.broadcast_s < BOUND, gap


async def _kills(tmp_path: Path, settings: Settings, swarm: EmulatedSwarm) -> list[Gap]:
    async with nats_cluster(tmp_path / "cluster") as cluster, \
            run_bridge(settings, cluster.url) as running:
        await settled(cluster, list(streams_of(settings).values()))
        base = await measure(cluster.url, settings, swarm, "baseline")
        gaps = [await kill_and_measure(cluster, fault, running.bridge, settings, swarm)
                for fault in KILLS]
        print(f"\n{'fault':<24} {'server':<6} {'discovery s':>11} {'broadcast s':>11}")
        print(f"{'none (baseline)':<24} {'-':<6} {base[0]:>11.2f} {base[1]:>11.2f}")
        for gap in gaps:
            print(f"{gap.fault:<24} {gap.server:<6} {gap.discovery_s:>11.2f} "
                  f"{gap.broadcast_s:>11.2f}")

        async def right() -> bool:
            return set(await bucket_agents(cluster.url, settings)) == set(swarm.running_ids())

        await wait_for(right, timeout=10, what="the bucket to hold the running tasks")
        assert running.bridge.election is not None
        assert running.bridge.election.is_leader.is_set()
    return gaps
