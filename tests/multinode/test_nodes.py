"""The multi-node swarm itself: five engines, and faults that do what Swarm documents.

These pin the ground the discovery tests stand on: if a crash stops being seen as a node down,
or a drain stops moving tasks, a discovery test would measure the wrong thing.
"""

from __future__ import annotations

import asyncio
import io
import subprocess
import tarfile
from collections.abc import Iterator

import docker.errors
import pytest

from tests.multinode.service import NodeService
from tests.multinode.swarm import MultiNodeSwarm, Node, script
from tests.multinode.timeline import Sample, TaskSampler

# A dead worker is marked down after 11-14 s with the default dispatcher heartbeat (5 s).
NODE_DOWN = 40.0
# A node that comes back, or a manager that takes over after a raft election (about 10 s).
RECOVERY = 60.0


def on_node(sample: Sample, node_id: str, desired: str) -> set[str]:
    return {tid for tid, (d, _, n) in sample.tasks.items() if n == node_id and d == desired}


def node_id(multinode: MultiNodeSwarm, node: Node) -> str:
    ids = {name: nid for nid, name in multinode.node_ids().items()}
    return ids[node.hostname]


async def test_five_engines_three_managers(multinode: MultiNodeSwarm) -> None:
    infos = [await asyncio.to_thread(multinode.engine(n).info) for n in multinode.nodes]
    assert [i["Name"] for i in infos] == [n.hostname for n in multinode.nodes]
    assert len({i["Swarm"]["NodeID"] for i in infos}) == len(multinode.nodes)
    assert [i["Swarm"]["ControlAvailable"] for i in infos] == [n.manager for n in multinode.nodes]
    assert len(multinode.managers) >= 3 and len(multinode.workers) >= 2
    states = await asyncio.to_thread(multinode.node_states)
    assert set(states.values()) == {("ready", "active")}


async def test_a_worker_refuses_the_task_list(multinode: MultiNodeSwarm) -> None:
    """What the bridge meets when pointed at a worker: 503, "not a swarm manager"."""
    worker = multinode.engine(multinode.workers[0]).api
    with pytest.raises(docker.errors.APIError) as refused:
        await asyncio.to_thread(worker.tasks)
    assert refused.value.status_code == 503
    assert "not a swarm manager" in str(refused.value.explanation)


async def test_agents_run_on_every_node_but_the_bridges(
    multinode: MultiNodeSwarm, agents: NodeService, bridge_node: Node
) -> None:
    placed = set((await asyncio.to_thread(agents.nodes_of)).values())
    assert bridge_node.hostname not in placed
    assert placed == {n.hostname for n in multinode.nodes if n != bridge_node}


async def test_a_crashed_worker_is_marked_down_and_comes_back(
    faults: MultiNodeSwarm, agents: NodeService, task_list: TaskSampler
) -> None:
    worker = faults.workers[0]
    wid = await asyncio.to_thread(node_id, faults, worker)
    before = task_list.wait_for(lambda s: bool(on_node(s, wid, "running")), 10, "tasks on it")
    victims = on_node(before, wid, "running")
    await asyncio.to_thread(faults.crash, worker)
    # Swarm lists them as running until the node is marked down, then no longer desired
    # running (desired shutdown: out of a list filtered on running and ready).
    gone = await asyncio.to_thread(
        task_list.wait_for,
        lambda s: not victims & on_node(s, wid, "running"),
        NODE_DOWN,
        f"the tasks of crashed {worker.hostname} to leave the list",
    )
    assert gone.t - before.t > 5.0, "marked down sooner than a heartbeat could tell"
    await asyncio.to_thread(faults.wait_node, worker, "down", 10)
    await asyncio.to_thread(faults.start, worker)
    await asyncio.to_thread(faults.wait_node, worker, "ready", RECOVERY)
    # Replacements elsewhere bring the service back to 12.
    await asyncio.to_thread(agents.wait_running, 12, RECOVERY)


async def test_a_stopped_worker_is_marked_down_and_starts_again(
    faults: MultiNodeSwarm, agents: NodeService
) -> None:
    """A clean shutdown of a node's dockerd (SIGTERM), then a start: it rejoins by itself."""
    worker = faults.workers[1]
    await asyncio.to_thread(faults.stop, worker)
    await asyncio.to_thread(faults.wait_node, worker, "down", NODE_DOWN)
    await asyncio.to_thread(faults.start, worker)
    await asyncio.to_thread(faults.wait_node, worker, "ready", RECOVERY)


async def test_a_partitioned_worker_is_marked_down_and_heals(
    faults: MultiNodeSwarm, agents: NodeService
) -> None:
    worker = faults.workers[1]
    await asyncio.to_thread(faults.partition, worker)
    await asyncio.to_thread(faults.wait_node, worker, "down", NODE_DOWN)
    await asyncio.to_thread(faults.heal, worker)
    await asyncio.to_thread(faults.wait_node, worker, "ready", RECOVERY)


async def test_a_drained_worker_loses_its_tasks(
    faults: MultiNodeSwarm, agents: NodeService, task_list: TaskSampler
) -> None:
    worker = faults.workers[0]
    wid = await asyncio.to_thread(node_id, faults, worker)
    await asyncio.to_thread(faults.drain, worker)
    await asyncio.to_thread(
        task_list.wait_for,
        lambda s: not on_node(s, wid, "running") and len(s.running) == 12,
        RECOVERY,
        f"12 running, none on drained {worker.hostname}",
    )
    assert (await asyncio.to_thread(faults.node_states))[worker.hostname][1] == "drain"
    await asyncio.to_thread(faults.activate, worker)
    assert (await asyncio.to_thread(faults.node_states))[worker.hostname][1] == "active"


async def test_the_other_managers_answer_when_the_leader_is_killed(
    faults: MultiNodeSwarm, agents: NodeService, task_list: TaskSampler
) -> None:
    """The task list is back on another manager after the raft election (about 10 s)."""
    task_list.wait_for(lambda s: len(s.running) == 12, 10, "12 running")
    leader = await asyncio.to_thread(faults.raft_leader)
    await asyncio.to_thread(faults.crash, leader)
    killed_at = task_list.samples[-1].t
    await asyncio.to_thread(
        task_list.wait_for,
        lambda s: s.error is None and len(s.running) == 12 and s.t > killed_at,
        RECOVERY,
        "another manager to list the 12 tasks",
    )
    await asyncio.to_thread(faults.start, leader)
    await asyncio.to_thread(faults.wait_node, leader, "ready", RECOVERY)


CHECK_IMAGE = "chorus-load-check:test"


def build_on_host(number: int) -> str:
    """A one-file image tagged CHECK_IMAGE, different for each `number`, on the host's engine
    (where `swarm-nodes.sh load` takes images from); its id."""
    context = io.BytesIO()
    with tarfile.open(fileobj=context, mode="w") as tar:
        files = {"Dockerfile": b"FROM scratch\nCOPY build /build\n", "build": str(number).encode()}
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    done = subprocess.run(
        ["docker", "build", "-q", "-t", CHECK_IMAGE, "-"],
        input=context.getvalue(),
        capture_output=True,
        timeout=120,
        check=True,
    )
    return done.stdout.decode().strip()


@pytest.fixture
def check_image(multinode: MultiNodeSwarm) -> Iterator[None]:
    yield
    for node in multinode.nodes:
        subprocess.run(["docker", "-H", node.socket, "rmi", "-f", CHECK_IMAGE], capture_output=True)
    subprocess.run(["docker", "rmi", "-f", CHECK_IMAGE], capture_output=True)
    subprocess.run(["docker", "image", "prune", "-f"], capture_output=True)


@pytest.mark.usefixtures("check_image")
async def test_loading_a_new_build_leaves_no_old_one_on_the_nodes(
    multinode: MultiNodeSwarm,
) -> None:
    """Each test run loads new builds onto the nodes, whose data is a tmpfs of 6 GiB: the build
    a load replaces must go, or the nodes fill up after a few runs ("no space left on
    device" while loading)."""
    first = await asyncio.to_thread(build_on_host, 1)
    await asyncio.to_thread(script, "load", CHECK_IMAGE)
    second = await asyncio.to_thread(build_on_host, 2)
    assert second != first
    await asyncio.to_thread(script, "load", CHECK_IMAGE)
    for node in multinode.nodes:
        ids = await asyncio.to_thread(multinode.docker, node, "images", "-aq", "--no-trunc")
        assert second in ids.split(), node
        assert first not in ids.split(), f"node {node.number} kept the replaced build"
