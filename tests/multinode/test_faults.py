"""Discovery under faults on the multi-node swarm, the bridge's manager running no agent: the
bucket against the managers' task list over time (tests/multinode/faults.py checks DESIGN.md's
target on every change), and /healthz where managers fail.

One worker or node at a time: scale up and down, a crash, a partition and its healing, a drain
and activation, a rolling update. Several managers: the one the bridge reads killed (costs no
more than the election), a majority killed (the bucket freezes, /healthz says why), a worker's
address (named as not a manager).
"""

from __future__ import annotations

import asyncio
import functools
import time
from collections.abc import Callable

import docker.errors
import pytest
from nats.aio.client import Client as NATS

from bridge.edges.nats_server import EmbeddedNats
from tests.conftest import run_bridge, wait_for
from tests.multinode.faults import (
    bridge_settings,
    node_id,
    on_node,
    running_count,
    watched_bridge,
)
from tests.multinode.service import NodeService
from tests.multinode.swarm import MultiNodeSwarm, Node
from tests.multinode.timeline import TaskSampler

REPLICAS = 12
# After the manager the bridge reads is killed, the new agents reach the bucket this soon
# after another manager lists them (the election itself is not counted: no manager lists
# anything during it). Before the multi-node work: never, within 45 s.
TAKEOVER = 5.0
# A majority of managers lost: /healthz turns 503 after 3 poll intervals without a round.
POLL_SHORT = 3.0
UNHEALTHY_WITHIN = 45.0
# How late it may be beyond 3 polls of the last manager's answer: the round in flight.
POLL_LATE = 5.0
# ... and names the swarm's state: the last manager's calls hang (10 s each, the Docker timeout)
# until it knows it has no leader (15-20 s after the kill), then answer so.
NAMED_WITHIN = 45.0


async def _in_thread(call: Callable[[], object]) -> float:
    """Run a blocking command; the monotonic time it was issued."""
    t = time.monotonic()
    await asyncio.to_thread(call)
    return t


def busiest(swarm: MultiNodeSwarm, task_list: TaskSampler) -> tuple[Node, str, set[str]]:
    """The worker that runs the most agents: (it, its node id, its tasks)."""
    last = task_list.samples[-1]
    ids = {w.hostname: node_id(swarm, w) for w in swarm.workers}
    worker = max(swarm.workers, key=lambda w: len(on_node(last, ids[w.hostname])))
    return worker, ids[worker.hostname], on_node(last, ids[worker.hostname])


async def test_scale_up_and_down(
    agents: NodeService,
    bridge_node: Node,
    task_list: TaskSampler,
    nats_server: EmbeddedNats,
    nc: NATS,
    unique: str,
) -> None:
    settings = bridge_settings([bridge_node], agents, unique)
    async with watched_bridge(settings, nats_server, nc, task_list) as watch:
        since = time.monotonic()
        for _ in range(2):
            for count in (REPLICAS + 3, REPLICAS):
                await asyncio.to_thread(agents.scale, count)
                await watch.until(running_count(count), f"{count} running")
                await watch.settled()
        watch.check(since, "scale up and down by 3, twice")


# A worker lost and back: (the fault, what undoes it, how the check names it).
NodeAction = Callable[[MultiNodeSwarm, Node], None]
LOST_AND_BACK: dict[str, tuple[NodeAction, NodeAction, str]] = {
    "crash": (MultiNodeSwarm.crash, MultiNodeSwarm.start, "crashed"),
    "partition": (MultiNodeSwarm.partition, MultiNodeSwarm.heal, "partitioned and healed"),
}


@pytest.mark.parametrize("fault", sorted(LOST_AND_BACK))
async def test_a_worker_lost_and_back(
    fault: str,
    agents: NodeService,
    faults: MultiNodeSwarm,
    bridge_node: Node,
    task_list: TaskSampler,
    nats_server: EmbeddedNats,
    nc: NATS,
    unique: str,
) -> None:
    """A worker crashed (kill -9 of its engine) or cut off the nodes' link: its agents leave
    the bucket when Swarm drops them (marked down), their replacements join as they run; the
    worker back (started again, or its link healed) and ready."""
    lose, restore, said = LOST_AND_BACK[fault]
    settings = bridge_settings([bridge_node], agents, unique)
    async with watched_bridge(settings, nats_server, nc, task_list) as watch:
        worker, _, victims = busiest(faults, task_list)
        since = await _in_thread(functools.partial(lose, faults, worker))
        await watch.until(lambda s: not victims & s.running, f"{worker.hostname}'s agents off")
        await watch.until(running_count(REPLICAS), f"{REPLICAS} running elsewhere")
        await watch.settled()
        await asyncio.to_thread(restore, faults, worker)
        await asyncio.to_thread(faults.wait_node, worker, "ready", 60)
        await watch.settled()
        watch.check(since, f"{len(victims)} agents on {said} {worker.hostname}")


async def test_a_drained_node_and_active_again(
    agents: NodeService,
    faults: MultiNodeSwarm,
    bridge_node: Node,
    task_list: TaskSampler,
    nats_server: EmbeddedNats,
    nc: NATS,
    unique: str,
) -> None:
    settings = bridge_settings([bridge_node], agents, unique)
    async with watched_bridge(settings, nats_server, nc, task_list) as watch:
        worker, wid, victims = busiest(faults, task_list)
        since = await _in_thread(functools.partial(faults.drain, worker))
        await watch.until(
            lambda s: running_count(REPLICAS)(s) and not on_node(s, wid),
            f"{REPLICAS} running, none on {worker.hostname}",
        )
        await watch.settled()
        await asyncio.to_thread(faults.activate, worker)
        await watch.settled()
        watch.check(since, f"{len(victims)} agents on drained {worker.hostname}, active again")


async def test_a_rolling_update(
    agents: NodeService,
    bridge_node: Node,
    task_list: TaskSampler,
    nats_server: EmbeddedNats,
    nc: NATS,
    unique: str,
) -> None:
    settings = bridge_settings([bridge_node], agents, unique)
    async with watched_bridge(settings, nats_server, nc, task_list) as watch:
        before = task_list.samples[-1].running
        since = await _in_thread(functools.partial(agents.roll, 3))
        await watch.until(
            lambda s: running_count(REPLICAS)(s) and not s.running & before,
            f"{REPLICAS} new tasks running",
        )
        await watch.settled()
        watch.check(since, "a rolling update of 12, 3 at a time")


async def test_the_manager_read_killed_costs_no_more_than_the_election(
    agents: NodeService,
    faults: MultiNodeSwarm,
    bridge_node: Node,
    task_list: TaskSampler,
    nats_server: EmbeddedNats,
    nc: NATS,
    unique: str,
) -> None:
    """The bridge reads the first manager; it dies, 3 agents are added through another: they
    join the bucket within TAKEOVER of the list showing them."""
    settings = bridge_settings(faults.managers, agents, unique)
    async with watched_bridge(settings, nats_server, nc, task_list) as watch:
        await asyncio.to_thread(faults.crash, bridge_node)
        since = await asyncio.to_thread(_until_accepted, lambda: agents.scale(REPLICAS + 3))
        await watch.until(running_count(REPLICAS + 3), f"{REPLICAS + 3} running")
        await watch.settled(TAKEOVER + 10)
        watch.check(since, f"3 agents added after {bridge_node.hostname} died", TAKEOVER)
        healthy, details = watch.running.bridge.health()
        assert healthy, details


async def test_a_majority_of_managers_lost_freezes_the_bucket(
    agents: NodeService,
    faults: MultiNodeSwarm,
    bridge_node: Node,
    task_list: TaskSampler,
    nats_server: EmbeddedNats,
    nc: NATS,
    unique: str,
) -> None:
    """Two of three managers killed: the last has no leader. Nothing leaves the bucket, and
    /healthz turns 503 within a few polls, naming the engine's reason; when the managers are
    back, the bucket follows the list again."""
    settings = bridge_settings(faults.managers, agents, unique, poll=POLL_SHORT)
    async with watched_bridge(settings, nats_server, nc, task_list) as watch:
        held = watch.bucket.keys
        killed = time.monotonic()
        for manager in faults.managers[:2]:
            await asyncio.to_thread(faults.crash, manager)
        bridge = watch.running.bridge

        def unhealthy() -> bool:
            return not bridge.health()[0]

        await wait_for(unhealthy, timeout=UNHEALTHY_WITHIN, interval=0.2, what="/healthz 503")
        # Counted from the last moment a manager still listed the tasks: the last one can
        # answer for some seconds after the kill, until its raft notices the leader is gone.
        turned = time.monotonic()
        answered = max(x.t for x in task_list.samples if x.error is None and x.t < turned)
        print(
            f"/healthz 503 {turned - killed:.1f}s after the kill, {turned - answered:.1f}s "
            "after the last manager's answer"
        )
        assert turned - answered <= 3 * POLL_SHORT + POLL_LATE, "503 later than a few polls"

        def names_it() -> bool:
            return "no leader" in _reasons(bridge.health()[1])

        # The last manager hangs the calls it still forwards to the dead leader until it knows
        # there is none (tests/fixtures/docker-engine-20.10/README.md), then says so at once.
        await wait_for(names_it, timeout=NAMED_WITHIN, interval=0.2, what="the reason")
        reasons = _reasons(bridge.health()[1])
        print(f"/healthz names it {time.monotonic() - killed:.1f}s after the kill: {reasons}")
        assert watch.bucket.keys == held
        assert not [e for e in watch.bucket.events if e[0] > killed and not e[2]], "removed"
        for manager in faults.managers[:2]:
            await asyncio.to_thread(faults.start, manager)
        await watch.until(lambda s: s.error is None and s.t > killed, "a manager answers")
        await watch.settled(60)
        await wait_for(lambda: bridge.health()[0], timeout=3 * POLL_SHORT + 10, what="healthy")


async def test_a_workers_address_says_not_a_manager(
    multinode: MultiNodeSwarm, agents: NodeService, nats_server: EmbeddedNats, unique: str
) -> None:
    settings = bridge_settings([multinode.workers[0]], agents, unique)
    async with run_bridge(settings, nats_server.url, first_round=False) as running:

        def named() -> bool:
            return "not a manager" in _reasons(running.bridge.health()[1])

        await wait_for(named, timeout=15, interval=0.2, what="/healthz: not a manager")
        assert not running.bridge.health()[0]


def _reasons(details: dict[str, object]) -> str:
    """/healthz's reasons, as one text."""
    reasons = details.get("reasons")
    return " ".join(str(r) for r in reasons) if isinstance(reasons, list) else ""


def _until_accepted(call: Callable[[], object]) -> float:
    """Call until a manager takes it (none does during an election); when one did."""
    deadline = time.monotonic() + 120
    while True:
        try:
            call()
            return time.monotonic()
        except (docker.errors.APIError, AssertionError, docker.errors.DockerException):
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)
