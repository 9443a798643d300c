"""The scenarios of bench/multinode_latency.py: each changes the swarm, waits until the
manager's task list shows it and the bucket follows (or the window passes), and keeps the lags.
"""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import time
from collections.abc import Callable

import _multinode
import common
import docker.errors
import requests

from tests.multinode.service import NodeService
from tests.multinode.swarm import MultiNodeSwarm, Node
from tests.multinode.timeline import (
    BucketTimeline,
    Lag,
    Sample,
    TaskSampler,
    divergence,
    lags,
    missing,
)

__all__ = [
    "POLL",
    "WINDOW",
    "Result",
    "Run",
    "leader_killed",
    "manager_killed",
    "scale",
    "with_victims",
]

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
