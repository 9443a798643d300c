"""How soon the agents bucket follows the task list on a multi-node swarm.

Claim (DESIGN.md, "Discovery"): on a multi-node swarm, an agent joins or leaves the bucket within
1 s of the manager's task list showing it (p95), wherever its task runs, and nothing the list
shows running is missing for longer; killing the manager the bridge reads costs no more than the
swarm's own election.

Setup: the nodes of scripts/swarm-nodes.sh (3 managers, 2 workers); a service of REPLICAS
busybox agents kept off node 1; the bridge (`python -m bridge run`, a process of its own)
reads node 1's engine only, its poll at 30 s, NATS on loopback. This program samples the
managers' task list every 50 ms and watches the bucket, on one clock:
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
import dataclasses
import functools
import sys
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path

import _multinode
import common
import docker.errors
import nats
import requests
from nats.aio.client import Client as NATS

from bridge.embedded import EmbeddedNats
from tests.multinode.swarm import MultiNodeSwarm, MultiNodeUnavailable, Node, NodeService
from tests.multinode.timeline import (
    BucketTimeline,
    Lag,
    Sample,
    TaskSampler,
    divergence,
    lags,
    missing,
    task_listers,
    watching_bucket,
)

POLL = 30.0
# Past the poll: a change the bridge only finds by polling still counts, as late.
WINDOW = POLL + 15.0
SWARM_DEADLINE = 120.0


@dataclasses.dataclass
class Result:
    name: str
    joins: list[Lag] = dataclasses.field(default_factory=list)
    leaves: list[Lag] = dataclasses.field(default_factory=list)
    swarm: common.Series = dataclasses.field(default_factory=lambda: common.Series("swarm"))
    notes: list[str] = dataclasses.field(default_factory=list)

    def add(self, found: list[Lag]) -> None:
        self.joins += [lag for lag in found if lag.joined]
        self.leaves += [lag for lag in found if not lag.joined]


@dataclasses.dataclass
class Run:
    swarm: MultiNodeSwarm
    service: NodeService
    sampler: TaskSampler
    bucket: BucketTimeline
    health: _multinode.HealthSampler
    bridge_node: Node
    replicas: int

    async def do(self, call: Callable[[], object]) -> float:
        """Run a blocking command; the monotonic time it was issued."""
        t = time.monotonic()
        await asyncio.to_thread(call)
        return t

    async def until_list(self, predicate: Callable[[Sample], bool], what: str) -> Sample:
        return await asyncio.to_thread(self.sampler.wait_for, predicate, SWARM_DEADLINE, what)

    async def settle(self, since: float, result: Result) -> float | None:
        """Wait until the bucket equals the list (or the window passes); record the lags."""
        done = await _multinode.converged(self.sampler, self.bucket, WINDOW)
        result.add(lags(self.sampler, self.bucket, since))
        return done


def running_count(n: int) -> Callable[[Sample], bool]:
    return lambda s: s.error is None and len(s.running) == n and len(s.tasks) == n


async def scale(run: Run, samples: int) -> list[Result]:
    up, down = Result("scale up by 3"), Result("scale down by 3")
    for _ in range(samples):
        for result, count in ((up, run.replicas + 3), (down, run.replicas)):
            t0 = await run.do(functools.partial(run.service.scale, count))
            seen = await run.until_list(running_count(count), f"{count} running")
            result.swarm.add(seen.t - t0)
            await run.settle(t0, result)
    return [up, down]


async def with_victims(
    run: Run, name: str, fault: Callable[[Node], None], undo: Callable[[Node], None]
) -> Result:
    """A fault on the worker that runs the most agents: they leave, replacements start
    elsewhere (a node that came back gets none back: Swarm does not rebalance)."""
    result = Result(name)
    ids = {name: nid for nid, name in (await asyncio.to_thread(run.swarm.node_ids)).items()}
    last = run.sampler.samples[-1]

    def on(node: Node) -> set[str]:
        return {t for t, (_, _, n) in last.tasks.items() if n == ids[node.hostname]}

    worker = max(run.swarm.workers, key=lambda w: len(on(w)))
    victims = on(worker)
    t0 = await run.do(lambda: fault(worker))
    gone = await run.until_list(
        lambda s: s.error is None and not victims & set(s.tasks), f"{worker.hostname}'s tasks off"
    )
    result.swarm.add(gone.t - t0)
    back = await run.until_list(running_count(run.replicas), f"{run.replicas} running again")
    await run.settle(t0, result)
    removed = [lag.bucket for lag in result.leaves if lag.bucket is not None]
    result.notes += [
        f"{len(victims)} agents on {worker.hostname}; the list dropped them {gone.t - t0:.1f} s "
        f"after the fault; replacements all running at {back.t - t0:.1f} s",
        f"dead agents left the bucket at {_span(removed, t0)} after the fault",
        f"longest a listed running agent was missing from the bucket: "
        f"{max(missing(run.sampler, run.bucket, t0).values(), default=0.0):.1f} s",
        _divergence(run, t0),
    ]
    await asyncio.to_thread(undo, worker)
    await asyncio.to_thread(run.swarm.wait_node, worker, "ready", SWARM_DEADLINE)
    return result


async def manager_killed(run: Run) -> Result:
    """The bridge's own manager dies; 3 agents are added through another one meanwhile."""
    result = Result("bridge's manager killed, scale up by 3")
    leader = (await asyncio.to_thread(run.swarm.raft_leader)).hostname
    t0 = await run.do(lambda: run.swarm.crash(run.bridge_node))
    answered = await run.until_list(lambda s: s.error is None and s.t > t0, "another manager")
    result.swarm.add(answered.t - t0)
    t1 = await run.do(lambda: run.service.scale(run.replicas + 3))
    listed = await run.until_list(running_count(run.replicas + 3), "3 more running")
    await run.settle(t1, result)
    unhealthy = run.health.first_not_ok(t0)
    result.notes += [
        f"{run.bridge_node.hostname} was {'' if leader == run.bridge_node.hostname else 'not '}"
        f"the raft leader ({leader}); another manager listed the tasks {answered.t - t0:.1f} s "
        "after the kill",
        f"3 new agents listed {listed.t - t1:.1f} s after the scale; "
        f"in the bucket: {_span([lg.bucket for lg in result.joins if lg.bucket], listed.t)}",
        "/healthz: "
        + (
            f"{unhealthy[0] - t0:.1f} s after the kill: {unhealthy[1][:120]}"
            if unhealthy
            else f"200 for the whole {time.monotonic() - t0:.0f} s outage"
        ),
    ]
    t2 = await run.do(lambda: run.swarm.start(run.bridge_node))
    await asyncio.to_thread(run.swarm.wait_node, run.bridge_node, "ready", SWARM_DEADLINE)
    caught = await _multinode.converged(run.sampler, run.bucket, WINDOW)
    result.notes.append(
        "after the manager's restart the bucket caught up "
        + (f"{caught - t2:.1f} s later" if caught else f"not within {WINDOW:g} s")
    )
    await run.do(lambda: run.service.scale(run.replicas))
    await run.until_list(running_count(run.replicas), f"{run.replicas} running")
    await _multinode.converged(run.sampler, run.bucket, WINDOW)
    return result


async def leader_killed(run: Run) -> Result:
    """The raft leader dies (the bridge's manager or another); 3 agents are added through the
    new leader as soon as one takes the command."""
    result = Result("raft leader killed, scale up by 3")
    leader = await asyncio.to_thread(run.swarm.raft_leader)
    t0 = await run.do(lambda: run.swarm.crash(leader))
    t1 = await asyncio.to_thread(_retry, lambda: run.service.scale(run.replicas + 3))
    listed = await run.until_list(running_count(run.replicas + 3), "3 more running")
    result.swarm.add(listed.t - t1)
    await run.settle(t1, result)
    failed = [s.t for s in run.sampler.samples if s.t >= t0 and s.error is not None]
    after = run.sampler.first(lambda s: s.error is None, failed[-1]) if failed else None
    unhealthy = run.health.first_not_ok(t0)
    result.notes += [
        f"killed {leader.hostname}"
        + (" (the bridge's manager)" if leader == run.bridge_node else ""),
        "the task list failed "
        + (
            f"from {failed[0] - t0:.1f} s to {after.t - t0:.1f} s after the kill (the election)"
            if failed and after
            else "on no sample"
        ),
        f"a manager took the scale {t1 - t0:.1f} s after the kill; 3 new agents listed "
        f"{listed.t - t1:.1f} s later",
        "/healthz: "
        + (
            f"{unhealthy[0] - t0:.1f} s after the kill: {unhealthy[1][:120]}"
            if unhealthy
            else "200 throughout"
        ),
    ]
    await asyncio.to_thread(run.swarm.start, leader)
    await asyncio.to_thread(run.swarm.wait_node, leader, "ready", SWARM_DEADLINE)
    await asyncio.to_thread(_retry, lambda: run.service.scale(run.replicas))
    await run.until_list(running_count(run.replicas), f"{run.replicas} running")
    await _multinode.converged(run.sampler, run.bucket, WINDOW)
    return result


def _retry(call: Callable[[], object]) -> float:
    """Call until a manager accepts it (during an election none does); when it was accepted."""
    deadline = time.monotonic() + SWARM_DEADLINE
    while True:
        try:
            call()
            return time.monotonic()
        except (docker.errors.APIError, AssertionError, requests.RequestException):
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)


def _divergence(run: Run, since: float) -> str:
    seconds, worst, listed = divergence(run.sampler, run.bucket, since)
    return (
        f"the bucket differed from the list for {seconds:.1f} s in all, at worst by {worst} "
        f"agents (the list then had {listed} running)"
    )


def _span(times: list[float], origin: float) -> str:
    if not times:
        return "never (within the window)"
    lo, hi = min(times) - origin, max(times) - origin
    return f"{lo:.1f}-{hi:.1f} s" if hi - lo > 0.05 else f"{lo:.1f} s"


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
                bridge_node, service.name, server.url, f"bench_{token}", state / "bridge.log", POLL
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
