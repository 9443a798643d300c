"""A NATS cluster of three on loopback, buckets with three replicas: kill -9 the server the
bridge is connected to, the meta leader, the stream leader of each bucket; the bridge keeps
discovering and answering broadcasts, and the bucket is right after."""

from __future__ import annotations

from collections.abc import MutableMapping
from pathlib import Path
from typing import Any

import structlog

from bridge.config import Settings
from bridge.devkit.emulator import DockerEmulator, EmulatedSwarm
from tests.chaos.scenarios import (
    BROADCAST_WAITS_FOR,
    DISCOVERY_WAITS_FOR,
    KILLS,
    Gap,
    kill_and_measure,
    measure,
    streams_of,
)
from tests.chaos.support import bucket_agents
from tests.conftest import run_bridge, wait_for
from tests.nats_cluster import nats_cluster, settled

# The target is 3 s, and bench/recovery.py measures it. This test guards against the outages
# it replaced (broadcasts lost for 9 s, a new task for 30 s) on a loaded CI machine: once, with
# the machine's 2 cores saturated by other work, a kill cost 5.6 s, so the bound is 8 s; the
# figures are printed, and the bridge's log lines since the kill shown when the bound is missed.
# A kill of the agents stream's own leader waits for its election (nats-server followers wait
# 4 to 9 s to campaign), then for the bridge's next retry (at most 2 s apart); so do
# broadcasts when the councils stream's leader is killed (each is recorded there first).
BOUND, ELECTION_BOUND = 8.0, 15.0


async def test_kills_in_a_cluster_of_three(
    tmp_path: Path, settings: Settings, swarm: EmulatedSwarm, docker_api: DockerEmulator
) -> None:
    settings = settings.replace(kv_replicas=3, bus_ack_wait=0.2)
    swarm.add_tasks(3)
    with structlog.testing.capture_logs() as logs:
        gaps = await _kills(tmp_path, settings, swarm)
    for gap in gaps:
        found = ELECTION_BOUND if gap.fault == DISCOVERY_WAITS_FOR else BOUND
        answered = ELECTION_BOUND if gap.fault == BROADCAST_WAITS_FOR else BOUND
        assert gap.discovery_s < found and gap.broadcast_s < answered, (gap, _after(logs, gap))
    # The lease survived the elections: renewals are retried within it. Only the lease
    # stream's own elections may outlast the 7.5 s left to retry (nats-server followers wait
    # 4 to 9 s before they campaign; the bridge then steps down and leads again): its leader
    # killed, or stepped down to move it off another fault's server. A loss counts against the
    # kill or step-down logged last before it: kill_and_measure waits for the bridge to write
    # its lease again after each, so a loss is never logged after the next one.
    marks = [(e["event"], _cause(e)) for e in logs if e["event"] in _MARKS]
    for index, (event, _) in enumerate(marks):
        if event == "leader_lease_lost":
            before = [cause for e, cause in marks[:index] if e != "leader_lease_lost"]
            assert before and before[-1] == "lease stream leader", marks


_MARKS = ("kill", "step_down", "leader_lease_lost")


def _cause(event: MutableMapping[str, Any]) -> str:
    """The stream role a kill or step-down is about; the event name for anything else."""
    return str(event.get("fault") or event.get("role") or event["event"])


def _after(logs: list[MutableMapping[str, Any]], gap: Gap) -> list[str]:
    """The bridge's log lines from the kill of `gap` to the next kill: what a failure shows."""
    kills = [i for i, e in enumerate(logs) if e["event"] == "kill"]
    start = next(i for i in kills if logs[i]["fault"] == gap.fault)
    end = next((i for i in kills if i > start), len(logs))
    return [" ".join(f"{k}={v}" for k, v in e.items()) for e in logs[start:end]]


async def _kills(tmp_path: Path, settings: Settings, swarm: EmulatedSwarm) -> list[Gap]:
    async with (
        nats_cluster(tmp_path / "cluster") as cluster,
        run_bridge(settings, cluster.url) as running,
    ):
        await settled(cluster, list(streams_of(settings).values()))
        base = await measure(cluster.url, settings, swarm, "baseline")
        gaps = []
        for fault in KILLS:
            gaps.append(await kill_and_measure(cluster, fault, running.bridge, settings, swarm))
        print(f"\n{'fault':<24} {'server':<6} {'discovery s':>11} {'broadcast s':>11}")
        print(f"{'none (baseline)':<24} {'-':<6} {base[0]:>11.2f} {base[1]:>11.2f}")
        for gap in gaps:
            print(
                f"{gap.fault:<24} {gap.server:<6} {gap.discovery_s:>11.2f} {gap.broadcast_s:>11.2f}"
            )

        async def right() -> bool:
            return set(await bucket_agents(cluster.url, settings)) == set(swarm.running_ids())

        await wait_for(right, timeout=10, what="the bucket to hold the running tasks")
        assert running.bridge.election is not None
        assert running.bridge.election.is_leader.is_set()
    return gaps
