"""Recovery of the bridge after NATS faults: restarts of a single server, kills in a cluster.

The bridge runs in this process (`Bridge.run`, as the tests run it) on the emulated Docker
Engine (`bridge.devkit.emulator`, in-process, on a unix socket) with 3 tasks; NATS is real
nats-server processes (tests/nats_cluster.py) on loopback.

Restart (5 times each, store kept, then store wiped): nats-server is stopped (SIGTERM) and
started again on the same port; from the moment it answers JetStream requests again, a new
task is added to the service and timed until its key is in the agents bucket (read from the
stream as a client would). The buckets `chorus_bridge` and `chorus_presence` are memory
buckets, so they are lost on every restart; with the store wiped `chorus_agents` is too.

Baseline, measured in the same run: the same measure on a healthy server (a new task timed
until it is in the bucket, no restart).

Target: recovery after a restart, p95 under 5 s, store kept and store wiped.

Cluster (three nats-servers with routes, buckets with three replicas, NATS_URL listing all
three): kill -9 of the server the bridge is connected to, of the JetStream meta leader, and of
the stream leader of each bucket, one at a time, the server started again and caught up
between faults. For each: seconds from the kill until a new task is in the bucket, and until
a broadcast gets a report. Target: at most 3 s, except for the agents stream's own leader
(discovery writes there) and the councils stream's (a broadcast records its opportunity there
before sending it): no write can land in a stream before its replicas elect a new leader, and
nats-server's followers wait 4 to 9 s (its Raft election timeout) before they campaign; those
rows' target is the election window plus the bridge's retry interval and a request timeout
(12 s). Other streams' leaders are moved off each victim first, so a row costs what it names.

    python bench/recovery.py [--quick]
"""

from __future__ import annotations

import asyncio
import signal
import tempfile
from pathlib import Path

from common import Bench, Series, arguments, main, quiet_logs

from bridge.app import Bridge, running_bridge
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
from tests.chaos.support import has_key
from tests.nats_cluster import NatsProcess, nats_cluster, settled

RESTART_LIMIT_S = 5.0
KILL_LIMIT_S = 3.0
ELECTION_LIMIT_S = 12.0
TIMEOUT = 60.0


def settings_for(sock: Path, replicas: int = 1) -> Settings:
    return Settings(
        docker_host=f"unix://{sock}",
        discovery_method="swarm",
        dns_names=(),
        poll_interval=30.0,
        listen_host="127.0.0.1",
        listen_port=0,
        kv_replicas=replicas,
        bus_ack_wait=0.2,
    )


async def until_started(bridge: Bridge) -> None:
    async with asyncio.timeout(TIMEOUT):
        await bridge.pipeline.first_round.wait()


async def new_task_in_bucket(url: str, settings: Settings, swarm: EmulatedSwarm) -> float:
    """Add a task now; seconds until its key is in the agents bucket."""
    loop = asyncio.get_running_loop()
    started = loop.time()
    task_id = swarm.add_tasks(1)[0]
    async with asyncio.timeout(TIMEOUT):
        while not await has_key(url, settings, task_id):  # noqa: ASYNC110 - polls the server: no event to wait on
            await asyncio.sleep(0.02)
    return loop.time() - started


async def restarts(bench: Bench, tmp: Path, reps: int) -> None:
    swarm = EmulatedSwarm(subnet="127.11.0.0/16")
    swarm.add_tasks(3)
    sock = tmp / "docker.sock"
    settings = settings_for(sock)
    baseline = Series("healthy NATS (baseline)")
    kept, wiped = Series("restart, store kept"), Series("restart, store wiped")
    server = NatsProcess(tmp / "single")
    server.start()
    await server.ready()
    try:
        async with DockerEmulator(sock, swarm), running_bridge(settings, server.url) as bridge:
            await until_started(bridge)
            await new_task_in_bucket(server.url, settings, swarm)  # warm-up
            for _ in range(reps):
                for series in (baseline, kept, wiped):  # interleaved
                    if series is not baseline:
                        await server.stop(signal.SIGTERM)
                        if series is wiped:
                            server.wipe()
                        server.start()
                        await server.ready()
                    series.add(await new_task_in_bucket(server.url, settings, swarm))
    finally:
        await server.stop()
    bench.table(
        "seconds from NATS answering after a restart to a new task in the bucket",
        [baseline, kept, wiped],
        baseline,
    )
    for series in (kept, wiped):
        bench.target(
            f"{series.name}: recovery p95 < {RESTART_LIMIT_S:g} s",
            series.p95 < RESTART_LIMIT_S,
            f"p95 {series.p95:.2f} s, median {series.median:.2f} s over {series.n}; "
            f"healthy baseline median {baseline.median * 1000:.0f} ms",
        )


async def cluster_kills(bench: Bench, tmp: Path) -> None:
    swarm = EmulatedSwarm(subnet="127.12.0.0/16")
    swarm.add_tasks(3)
    sock = tmp / "docker-cluster.sock"
    settings = settings_for(sock, replicas=3)
    async with (
        nats_cluster(tmp / "cluster") as cluster,
        DockerEmulator(sock, swarm),
        running_bridge(settings, cluster.url) as bridge,
    ):
        await until_started(bridge)
        await settled(cluster, list(streams_of(settings).values()))
        base = await measure(cluster.url, settings, swarm, "baseline")
        gaps = [await kill_and_measure(cluster, fault, bridge, settings, swarm) for fault in KILLS]
    bench.say("\n-- cluster of 3, kill -9, seconds from the kill (one run each) --")
    bench.say(f"{'fault':<26}{'server':<8}{'discovery s':>12}{'broadcast s':>12}")
    bench.say(f"{'none (baseline)':<26}{'-':<8}{base[0]:>12.2f}{base[1]:>12.2f}")
    for gap in gaps:
        bench.say(f"{gap.fault:<26}{gap.server:<8}{gap.discovery_s:>12.2f}{gap.broadcast_s:>12.2f}")
    for gap in gaps:
        _kill_target(bench, gap)


def _kill_target(bench: Bench, gap: Gap) -> None:
    waits = gap.fault in (DISCOVERY_WAITS_FOR, BROADCAST_WAITS_FOR)
    limit = ELECTION_LIMIT_S if waits else KILL_LIMIT_S
    worst = max(gap.discovery_s, gap.broadcast_s)
    bench.target(
        f"kill -9 of the {gap.fault}: discovery and broadcasts back within {limit:g} s",
        worst <= limit,
        f"discovery {gap.discovery_s:.2f} s, broadcast {gap.broadcast_s:.2f} s",
    )


async def run() -> int:
    args = arguments(__doc__ or "")
    quiet_logs()
    bench = Bench("recovery: the bridge after NATS restarts and cluster kills")
    with tempfile.TemporaryDirectory(prefix="bench-recovery-") as tmp_name:
        tmp = Path(tmp_name)
        await restarts(bench, tmp, 3 if args.quick else 5)
        await cluster_kills(bench, tmp)
    return bench.exit_code()


if __name__ == "__main__":
    main(run, limit=900)
