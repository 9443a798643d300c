"""Discovery on an emulated multi-node swarm whose bridge reads a manager that runs no agent
task, so that no container event ever reaches it (as on a real swarm: container events are
node-local). What it has: node events, tasks waiting in desired state `ready`, and a task list
that changes a moment after its service event. Each change must reach the bucket within about a
second of the manager's task list showing it."""

from __future__ import annotations

import asyncio
import functools
import statistics
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest
from nats.aio.client import Client as NATS

from bridge.bus.registry import read_bucket
from bridge.config import Settings
from bridge.devkit.emulator import DockerEmulator, EmulatedSwarm
from bridge.edges.nats_server import EmbeddedNats
from tests.conftest import RunningBridge, run_bridge, wait_for

# The target is 1 s from the manager's list to the bucket; the bound leaves room for a loaded
# machine, and is still far below the 60 s poll these tests run with.
WITHIN = 3.0
COMMIT_DELAY = 0.3  # Swarm: 0.03 to 0.3 s between a service event and its tasks


class Fleet:
    """A swarm of one manager (drained: it runs no task) and 3 workers, served on the
    manager's socket only."""

    def __init__(self, swarm: EmulatedSwarm, manager: DockerEmulator) -> None:
        self.swarm, self.manager = swarm, manager
        self.workers = [n.id for n in swarm.nodes.values() if n.role == "worker"]

    def running(self) -> set[str]:
        """What the manager's task list shows as agents: desired and state running."""
        return {
            t["ID"]
            for t in self.swarm.tasks()
            if t["DesiredState"] == "running" and t["Status"]["State"] == "running"
        }


@pytest.fixture
async def fleet(tmp_path: Path) -> AsyncIterator[Fleet]:
    swarm = EmulatedSwarm(seed=31, commit_delay=COMMIT_DELAY)
    for _ in range(3):
        swarm.add_node()
    swarm.drain(swarm.node_id)
    swarm.add_tasks(6)
    await wait_for(lambda: swarm.commits_pending == 0, what="the first tasks")
    async with DockerEmulator(tmp_path / "manager.sock", swarm) as manager:
        yield Fleet(swarm, manager)


@pytest.fixture
def multinode(fleet: Fleet, unique: str) -> Settings:
    return Settings(
        docker_host=fleet.manager.base_url,
        discovery_method="swarm",
        subject_prefix=f"t{unique}",
        kv_bucket=f"agents_{unique}",
        poll_interval=60.0,
        listen_host="127.0.0.1",
        listen_port=0,
        docker_timeout=1.0,
        dns_names=(),
    )


async def keys(nc: NATS, settings: Settings) -> set[str]:
    agents, _ = await read_bucket(await nc.jetstream().key_value(settings.kv_bucket))
    return set(agents)


async def follows(
    running: RunningBridge, fleet: Fleet, change: Callable[[], object], what: str
) -> float:
    """Make the change, wait until the task list shows it, then until the bucket equals the
    list; the seconds from the list to the bucket."""
    loop = asyncio.get_running_loop()
    before = fleet.running()
    change()
    await wait_for(
        lambda: fleet.swarm.commits_pending == 0 and fleet.running() != before,
        what=f"the task list to show {what}",
        interval=0.005,
    )
    listed = loop.time()
    expected = fleet.running()
    await wait_for(
        lambda: set(running.bridge.registry.published) == expected,
        timeout=WITHIN,
        interval=0.01,
        what=f"the bucket to follow {what}",
    )
    return loop.time() - listed


async def test_every_change_on_other_nodes_reaches_the_bucket_within_a_second(
    fleet: Fleet, multinode: Settings, nats_server: EmbeddedNats, nc: NATS
) -> None:
    """Scale up and down (tasks committed 0.3 s after the service event), a worker down and
    its replacements started, a drain and its replacements, the node back: each reaches the
    bucket within about a second of the manager's list, with no container event."""
    swarm = fleet.swarm
    taken: dict[str, float] = {}
    async with run_bridge(multinode, nats_server.url) as running:
        follower = running.bridge.follower
        assert follower is not None
        await wait_for(follower.connected.is_set, what="the event stream")
        assert set(running.bridge.registry.published) == fleet.running()
        taken["scale up 6 -> 9"] = await follows(running, fleet, lambda: swarm.scale(9), "9")
        taken["scale down 9 -> 7"] = await follows(running, fleet, lambda: swarm.scale(7), "7")
        down = fleet.workers[0]
        replacements: list[str] = []
        taken["worker down"] = await follows(
            running, fleet, lambda: replacements.extend(swarm.node_down(down)), "the node down"
        )
        assert replacements
        # The restart delay (5 s on a real swarm): no event comes when they start.
        taken["replacements start"] = await follows(
            running, fleet, swarm.start_ready, "the replacements running"
        )
        taken["drain"] = await follows(
            running, fleet, lambda: swarm.drain(fleet.workers[1]), "the drain"
        )
        taken["drained tasks' replacements start"] = await follows(
            running, fleet, swarm.start_ready, "the replacements running"
        )
        swarm.node_ready(down)
        swarm.activate(fleet.workers[1])
        taken["scale up 7 -> 10 on the nodes back"] = await follows(
            running, fleet, lambda: swarm.scale(10), "10"
        )
        assert await keys(nc, multinode) == fleet.running()
    print(", ".join(f"{what}: {seconds:.2f}s" for what, seconds in taken.items()))
    print(f"median {statistics.median(taken.values()):.2f}s, max {max(taken.values()):.2f}s")


async def test_tasks_that_start_a_while_after_their_event_are_seen_within_a_second(
    fleet: Fleet, multinode: Settings, nats_server: EmbeddedNats
) -> None:
    """A scale's tasks are listed pending (committed after the service event), and run a
    moment later on their worker: no event says so, yet each is in the bucket within about a
    second of the list showing it running, even after the event's burst is over."""
    swarm = fleet.swarm
    async with run_bridge(multinode, nats_server.url) as running:
        follower = running.bridge.follower
        assert follower is not None
        await wait_for(follower.connected.is_set, what="the event stream")
        added = swarm.add_tasks(3, state="pending")
        await wait_for(lambda: swarm.commits_pending == 0, what="the commit")
        await asyncio.sleep(3.0)  # the scenario: they take a while to start, past the burst
        took = []
        for task in added:
            took.append(
                await follows(
                    running, fleet, functools.partial(swarm.set_state, task, "running"), task
                )
            )
    print("started to bucket: " + ", ".join(f"{t:.2f}s" for t in took))
