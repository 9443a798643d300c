"""How soon the agents bucket follows the task list on a multi-node swarm.

Claim (DESIGN.md, "Discovery"): on a multi-node swarm, an agent joins or leaves the bucket within
1 s of the manager's task list showing it (p95), wherever its task runs, and nothing the list
shows running is missing for longer; killing the manager the bridge reads costs no more than the
swarm's own election.

Setup: the nodes of scripts/swarm-nodes.sh (3 managers, 2 workers); a service of REPLICAS
busybox agents kept off node 1; the bridge (`python -m bridge run`, a process of its own)
reads node 1's engine, and the other managers' when it fails (WHOOSH_DOCKER_HOST lists the
three, as the stack's tasks.docker-api does), its poll at 30 s, NATS on loopback. This program
samples the managers' task list every 50 ms and watches the bucket, on one clock:
  list      when a sample of the manager's task list first showed the change (the baseline: what
            the swarm itself knew, measured in the same run);
  bucket    when the bucket's watch saw the key put or deleted;
  lag       bucket - list, per task (a task never followed within the window is "missing").
  swarm     from the command (scale, crash, drain, kill) to the list showing it: Swarm's own time.
Scenarios: scale-up and scale-down by 3 (SAMPLES times), a worker crashed (SIGKILL of the whole
node, then started again), a worker drained (then active), and the bridge's manager killed
(scale-up by 3 during the outage; then started again), and the raft leader killed (whichever
manager it is; 3 agents added through the new leader).

Usage: python bench/multinode_latency.py [--samples 3] [--replicas 12] [--target 1.0]
                                         [--only scale,crash,drain,manager,leader]
Needs root and the nodes up (bash scripts/swarm-nodes.sh up). Exit status: 0 every target met,
1 some missed, 2 the nodes are not there.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path

import _multinode
import common
import nats
from _multinode_scenarios import (
    POLL,
    WINDOW,
    Result,
    Run,
    leader_killed,
    manager_killed,
    scale,
    with_victims,
)
from nats.aio.client import Client as NATS

from bridge.edges.nats_server import EmbeddedNats
from tests.multinode.service import NodeService
from tests.multinode.swarm import MultiNodeSwarm, MultiNodeUnavailable, Node
from tests.multinode.timeline import (
    Lag,
    TaskSampler,
    task_listers,
    watching_bucket,
)


def _series(name: str, found: list[Lag]) -> common.Series:
    series = common.Series(name)
    for lag in found:
        if lag.seconds is not None:
            series.add(lag.seconds)
    lost = sum(1 for lag in found if lag.seconds is None)
    series.note = f"{lost} never followed within {WINDOW:g} s" if lost else ""
    return series


def report(bench: common.Bench, results: list[Result], target: float) -> None:
    for result in results:
        rows = [
            _series("joins: list -> bucket", result.joins),
            _series("leaves: list -> bucket", result.leaves),
            result.swarm,
        ]
        rows = [r for r in rows if r.n or r.note]
        result.swarm.name = "swarm: command -> list"
        bench.table(result.name, rows, result.swarm)
        for note in result.notes:
            bench.info(result.name, note)
        for row in rows[:-1]:
            ok = bool(row.n) and not row.note and row.p95 < target
            bench.target(
                f"{result.name}, {row.name.split(':')[0]}",
                ok,
                f"p95 {row.p95:.3f} s (n={row.n}{', ' + row.note if row.note else ''}), "
                f"target < {target:g} s",
            )


async def scenarios(run: Run, only: set[str], samples: int) -> list[Result]:
    results: list[Result] = []
    steps: list[tuple[str, Callable[[], Awaitable[list[Result] | Result]]]] = [
        ("scale", lambda: scale(run, samples)),
        ("crash", lambda: with_victims(run, "worker crashed", run.swarm.crash, run.swarm.start)),
        ("drain", lambda: with_victims(run, "worker drained", run.swarm.drain, run.swarm.activate)),
        ("manager", lambda: manager_killed(run)),
        ("leader", lambda: leader_killed(run)),
    ]
    for name, step in steps:
        if name in only:
            print(f"-- {name} --", flush=True)
            got = await step()
            results += got if isinstance(got, list) else [got]
    return results


async def measure(args: argparse.Namespace, swarm: MultiNodeSwarm, state: Path) -> int:
    bench = common.Bench("multi-node swarm: task list -> agents bucket")
    token = uuid.uuid4().hex[:8]
    bridge_node = swarm.managers[0]
    service = NodeService(swarm, f"chorus-bench-{token}", avoid=(bridge_node,))
    await asyncio.to_thread(service.create, args.replicas)
    try:
        await asyncio.to_thread(service.wait_running, args.replicas)
        async with (
            EmbeddedNats(port=0, store_dir=state / "nats") as server,
            _multinode.bridge_process(
                swarm.managers,
                service.name,
                server.url,
                f"bench_{token}",
                state / "bridge.log",
                POLL,
            ) as bridge,
        ):
            bench.say(f"bridge pid {bridge.pid} reads {bridge_node.socket}; log {bridge.log}")
            nc = await nats.connect(server.url)
            health = _multinode.HealthSampler(bridge.health_url)
            try:
                results = await _observe(args, swarm, service, nc, health, bridge_node, token)
            finally:
                await nc.close()
    finally:
        await asyncio.to_thread(service.remove)
        await asyncio.to_thread(swarm.restore)
    report(bench, results, args.target)
    return bench.exit_code()


async def _observe(
    args: argparse.Namespace,
    swarm: MultiNodeSwarm,
    service: NodeService,
    nc: NATS,
    health: _multinode.HealthSampler,
    bridge_node: Node,
    token: str,
) -> list[Result]:
    async with asyncio.TaskGroup() as tg:
        polling = tg.create_task(health.run())
        try:
            await health.wait_ok(60)
            kv = await nc.jetstream().key_value(f"bench_{token}")
            with (
                task_listers(swarm.managers, service.name) as listers,
                TaskSampler(listers) as sampler,
            ):
                async with watching_bucket(kv) as bucket:
                    run = Run(swarm, service, sampler, bucket, health, bridge_node, args.replicas)
                    first = await _multinode.converged(sampler, bucket, WINDOW)
                    if first is None:
                        raise RuntimeError("the bridge's first round never matched the list")
                    return await scenarios(run, set(args.only.split(",")), args.samples)
        finally:
            polling.cancel()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--samples", type=int, default=3, help="scale-ups (and downs) by 3")
    parser.add_argument("--replicas", type=int, default=12)
    parser.add_argument("--target", type=float, default=1.0, help="p95 target in seconds")
    parser.add_argument("--only", default="scale,crash,drain,manager,leader")
    args = parser.parse_args()
    common.quiet_logs()
    try:
        swarm = MultiNodeSwarm.discover()
    except MultiNodeUnavailable as exc:
        print(f"multinode_latency: {exc}", file=sys.stderr)
        return 2
    # Kept after the run: the bridge's log (bridge.log) is the record of what it did.
    state = Path(tempfile.mkdtemp(prefix="chorus-bench-multinode-"))
    try:
        return asyncio.run(measure(args, swarm, state))
    finally:
        swarm.close()


if __name__ == "__main__":
    sys.exit(main())
