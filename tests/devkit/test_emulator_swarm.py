"""The emulated engine as a swarm of several nodes: managers on their own sockets, workers,
node events, tasks waiting in desired state `ready`, a task list committed after its service
event, and the failures of one manager (locked, not ready, no leader, a proxy's 403)."""

from __future__ import annotations

import asyncio
import json
import shutil
import tempfile
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import docker
import docker.errors
import pytest
import requests

from bridge.devkit.emulator import DockerEmulator, EmulatedSwarm
from bridge.devkit.emulator import documents as docs
from tests.conftest import FIXTURES, wait_for

SERVICE = "CHORUS_chorus"
LISTED = {"service": [SERVICE], "desired-state": ["running", "ready"]}


@pytest.fixture
def sock_dir() -> Iterator[Path]:
    directory = tempfile.mkdtemp(prefix="emu-", dir="/tmp")
    yield Path(directory)
    shutil.rmtree(directory, ignore_errors=True)


class Cluster:
    """3 managers, each served on its own socket, and 2 workers (one served too)."""

    def __init__(
        self, swarm: EmulatedSwarm, managers: list[DockerEmulator], worker: DockerEmulator
    ):
        self.swarm, self.managers, self.worker = swarm, managers, worker
        self.workers = [n for n in swarm.nodes if swarm.nodes[n].role == "worker"]


@pytest.fixture
async def cluster(sock_dir: Path) -> AsyncIterator[Cluster]:
    swarm = EmulatedSwarm(seed=21)
    ids = [swarm.node_id, swarm.add_node(manager=True), swarm.add_node(manager=True)]
    workers = [swarm.add_node(), swarm.add_node()]
    for node in ids:
        swarm.drain(node)  # the managers run no task
    swarm.add_tasks(4)
    emulators = [DockerEmulator(sock_dir / f"m{i}.sock", swarm, node=n) for i, n in enumerate(ids)]
    worker = DockerEmulator(sock_dir / "w.sock", swarm, node=workers[0])
    for emulator in (*emulators, worker):
        await emulator.start()
    try:
        yield Cluster(swarm, emulators, worker)
    finally:
        for emulator in (*emulators, worker):
            await emulator.stop()


def get(emulator: DockerEmulator, path: str, **params: Any) -> requests.Response:
    client = docker.APIClient(base_url=emulator.base_url, version="1.41", timeout=5)
    try:
        response: requests.Response = client.get(client.base_url + path, params=params)
        return response
    finally:
        client.close()


def tasks(emulator: DockerEmulator) -> list[dict[str, Any]]:
    response = get(emulator, "/tasks", filters=json.dumps(LISTED))
    response.raise_for_status()
    listed: list[dict[str, Any]] = response.json()
    return listed


class EventLog:
    """Every event one node's /events stream delivers, read in a thread while it runs."""

    def __init__(self, emulator: DockerEmulator, filters: dict[str, list[str]]) -> None:
        self.events: list[dict[str, Any]] = []
        self._client = docker.APIClient(base_url=emulator.base_url, version="1.41", timeout=30)
        self._stream: Any = None
        self._task = asyncio.create_task(asyncio.to_thread(self._read, filters))

    def _read(self, filters: dict[str, list[str]]) -> None:
        # Opened here: the request waits for the emulator, which runs on the test's loop.
        self._stream = self._client.events(filters=filters, decode=True)
        for event in self._stream:
            self.events.append(event)

    async def close(self) -> None:
        if self._stream is not None:
            self._stream.close()
        self._client.close()
        await asyncio.gather(self._task, return_exceptions=True)


async def test_every_manager_lists_every_nodes_tasks_and_a_worker_answers_503(
    cluster: Cluster,
) -> None:
    """One swarm: each manager lists the same tasks (all on the workers, the managers being
    drained); a worker's task list is Docker's 503 for a worker; /info tells each role."""
    lists = [await asyncio.to_thread(tasks, m) for m in cluster.managers]
    assert all(
        sorted(t["ID"] for t in listed) == sorted(cluster.swarm.running_ids()) for listed in lists
    )
    assert {t["NodeID"] for t in lists[0]} == set(cluster.workers)
    refused = await asyncio.to_thread(get, cluster.worker, "/tasks")
    assert refused.status_code == 503
    assert refused.json()["message"] == docs.NOT_MANAGER_WORKER
    info = (await asyncio.to_thread(get, cluster.managers[1], "/info")).json()["Swarm"]
    assert info["ControlAvailable"] is True and (info["Managers"], info["Nodes"]) == (3, 5)
    assert info["NodeID"] == cluster.managers[1].node_id
    worker_info = (await asyncio.to_thread(get, cluster.worker, "/info")).json()["Swarm"]
    assert worker_info["ControlAvailable"] is False


async def test_container_events_only_where_the_container_runs_node_events_everywhere(
    cluster: Cluster,
) -> None:
    """A scale's container events reach only the node that runs the task; the service event
    and a node going down reach every manager, the node event in the moment the task list
    shows the replacements waiting in desired state ready."""
    manager = EventLog(cluster.managers[0], {"type": ["service", "container", "node"]})
    worker = EventLog(cluster.worker, {"type": ["service", "container", "node"]})
    try:
        await wait_for(lambda: cluster.managers[0].event_streams == 1, what="the stream")
        await wait_for(lambda: cluster.worker.event_streams == 1, what="the worker's stream")
        (added,) = cluster.swarm.add_tasks(1, node=cluster.workers[0])
        await wait_for(lambda: any(e["Action"] == "start" for e in worker.events), what="start")
        down = cluster.workers[1]
        on_down = {
            t["ID"]
            for t in await asyncio.to_thread(tasks, cluster.managers[0])
            if t["NodeID"] == down
        }
        replacements = cluster.swarm.node_down(down)
        await wait_for(lambda: any(e["Type"] == "node" for e in manager.events), what="node")
    finally:
        await manager.close()
        await worker.close()
    assert [e["Type"] for e in manager.events] == ["service", "node"]
    node = manager.events[1]
    assert node["Actor"]["ID"] == down and node["scope"] == "swarm"
    assert {k: v for k, v in node["Actor"]["Attributes"].items() if "." in k} == {
        "state.old": "ready",
        "state.new": "down",
    }
    started = [e for e in worker.events if e["Type"] == "container"]
    assert {e["Actor"]["Attributes"]["com.docker.swarm.task.id"] for e in started} == {added}
    listed = {t["ID"]: t for t in await asyncio.to_thread(tasks, cluster.managers[2])}
    assert on_down and not on_down & set(listed)  # desired shutdown: out of the filter
    assert len(replacements) == len(on_down)
    for task_id in replacements:
        assert (listed[task_id]["DesiredState"], listed[task_id]["Status"]["State"]) == (
            "ready",
            "pending",
        )
        assert listed[task_id]["NodeID"] == cluster.workers[0]
    assert cluster.swarm.start_ready() == replacements
    after = {t["ID"]: t for t in await asyncio.to_thread(tasks, cluster.managers[0])}
    assert all(
        after[t]["DesiredState"] == after[t]["Status"]["State"] == "running" for t in replacements
    )


async def test_a_drain_shuts_tasks_down_and_its_replacements_wait(cluster: Cluster) -> None:
    """A drain: an availability event, the node's tasks desired shutdown, replacements in
    desired state ready until started; activating it again moves nothing back."""
    drained = cluster.workers[0]
    moved = [
        t
        for t in cluster.swarm.tasks()
        if t["NodeID"] == drained and t["DesiredState"] == "running"
    ]
    replacements = cluster.swarm.drain(drained)
    assert len(replacements) == len(moved) > 0
    listed = await asyncio.to_thread(tasks, cluster.managers[0])
    waiting = [t for t in listed if t["DesiredState"] == "ready"]
    assert sorted(t["ID"] for t in waiting) == sorted(replacements)
    assert all(t["NodeID"] != drained for t in listed)
    cluster.swarm.start_ready()
    cluster.swarm.activate(drained)
    assert all(t["NodeID"] != drained for t in await asyncio.to_thread(tasks, cluster.managers[0]))


async def test_a_scales_tasks_are_listed_a_moment_after_its_service_event(sock_dir: Path) -> None:
    """commit_delay: the service event is out at once, the new tasks are in the list only
    that long after it (Swarm: 0.03 to 0.3 s), each container's events after that."""
    swarm = EmulatedSwarm(seed=22, commit_delay=0.3)
    async with DockerEmulator(sock_dir / "d.sock", swarm) as emulator:
        log = EventLog(emulator, {"type": ["service", "container"]})
        try:
            await wait_for(lambda: emulator.event_streams == 1, what="the stream")
            started = time.monotonic()
            added = swarm.add_tasks(2)
            await wait_for(lambda: len(log.events) >= 1, what="the service event")
            assert log.events[0]["Type"] == "service"
            assert await asyncio.to_thread(tasks, emulator) == []
            await wait_for(lambda: swarm.commits_pending == 0, what="the commit")
            assert time.monotonic() - started >= 0.3
            assert {t["ID"] for t in await asyncio.to_thread(tasks, emulator)} == set(added)
            await wait_for(lambda: len(log.events) == 5, what="create and start of each")
        finally:
            await log.close()


@pytest.mark.parametrize(
    ("mode", "status", "message"),
    [
        ("swarm_locked", 503, docs.SWARM_LOCKED),
        ("manager_preparing", 503, docs.MANAGER_PREPARING),
        ("no_leader", 500, docs.NO_LEADER),
    ],
)
async def test_one_manager_fails_as_docker_does_the_others_answer(
    cluster: Cluster, mode: str, status: int, message: str
) -> None:
    """A node's own switch: that manager answers the task list with Docker's message; the
    swarm's switch (a swarm that lost quorum) fails every manager."""
    failing = cluster.managers[0]
    failing.set_error(mode)  # type: ignore[arg-type]
    answer = await asyncio.to_thread(get, failing, "/tasks")
    assert (answer.status_code, answer.json()["message"]) == (status, message)
    assert len(await asyncio.to_thread(tasks, cluster.managers[1])) == 4
    failing.set_error(None)
    cluster.swarm.set_error("no_leader")
    for manager in cluster.managers:
        assert (await asyncio.to_thread(get, manager, "/tasks")).status_code == 500


async def test_a_locked_manager_says_so_in_info(cluster: Cluster) -> None:
    cluster.managers[2].set_error("swarm_locked")
    info = (await asyncio.to_thread(get, cluster.managers[2], "/info")).json()["Swarm"]
    assert (info["LocalNodeState"], info["ControlAvailable"]) == ("locked", False)


async def test_a_proxys_403_is_its_own_page(cluster: Cluster) -> None:
    """forbidden: HAProxy's 403 page (HTML, no engine headers)."""
    cluster.managers[0].set_error("forbidden", paths={"/events"})
    answer = await asyncio.to_thread(get, cluster.managers[0], "/events")
    assert answer.status_code == 403 and answer.text == docs.PROXY_FORBIDDEN
    assert answer.headers["Content-Type"].startswith("text/html")
    assert "Api-Version" not in answer.headers


async def test_an_event_stream_that_closes_at_once(cluster: Cluster) -> None:
    """close: /events answers 200 and ends the stream at once; the task list is untouched."""
    cluster.managers[0].set_error("close", paths={"/events"})
    answer = await asyncio.to_thread(get, cluster.managers[0], "/events")
    assert (answer.status_code, answer.content) == (200, b"")
    assert len(await asyncio.to_thread(tasks, cluster.managers[0])) == 4


async def test_a_stopped_manager_refuses_and_the_others_keep_their_streams(
    cluster: Cluster,
) -> None:
    """Stopping one manager's server (a node that dies) ends its streams only."""
    logs = [EventLog(m, {"type": ["service"]}) for m in cluster.managers]
    try:
        await wait_for(
            lambda: all(m.event_streams == 1 for m in cluster.managers), what="the streams"
        )
        await cluster.managers[0].stop()
        assert cluster.managers[0].event_streams == 0
        assert [m.event_streams for m in cluster.managers[1:]] == [1, 1]
        with pytest.raises(requests.exceptions.ConnectionError):
            await asyncio.to_thread(get, cluster.managers[0], "/tasks")
    finally:
        for log in logs:
            await log.close()


async def test_tcp_listener(sock_dir: Path) -> None:
    """tcp=(host, 0): a loopback TCP port of its own, named in base_url."""
    swarm = EmulatedSwarm(seed=23)
    swarm.add_tasks(2)
    async with DockerEmulator(None, swarm, tcp=("127.0.0.1", 0)) as emulator:
        assert emulator.base_url.startswith("tcp://127.0.0.1:")
        assert not emulator.base_url.endswith(":0")
        assert len(await asyncio.to_thread(tasks, emulator)) == 2


async def test_host_network_and_host_port_tasks_are_shaped_as_recorded() -> None:
    """host_mode: a task on the host network, and one with only a host-mode port, as the real
    engine lists them (tasks_host_network.json, tasks_host_port_only.json)."""
    swarm = EmulatedSwarm(seed=24)
    on_host, by_port = swarm.add_tasks(2)
    swarm.host_mode(on_host, "network")
    swarm.host_mode(by_port, "port")
    recorded_net = json.loads((FIXTURES / "tasks_host_network.json").read_text())[0]
    recorded_port = json.loads((FIXTURES / "tasks_host_port_only.json").read_text())[0]
    net, port = swarm.task(on_host), swarm.task(by_port)
    assert [a["Network"]["Spec"] for a in net["NetworksAttachments"]] == [
        a["Network"]["Spec"] for a in recorded_net["NetworksAttachments"]
    ]
    assert all("Addresses" not in a for a in net["NetworksAttachments"])
    assert "NetworksAttachments" not in port and "NetworksAttachments" not in recorded_port
    assert {p["PublishMode"] for p in port["Status"]["PortStatus"]["Ports"]} == {"host"}


async def test_a_recreated_service_and_a_late_event_of_its_old_container(sock_dir: Path) -> None:
    """recreate_service: a new service ID and new tasks; late_event sends an old container's
    event labelled with the old ID; probe sends a healthcheck's exec events."""
    swarm = EmulatedSwarm(seed=25)
    old_tasks = swarm.add_tasks(3)
    old_id = swarm.service_id
    async with DockerEmulator(sock_dir / "r.sock", swarm) as emulator:
        log = EventLog(emulator, {"type": ["service", "container"]})
        try:
            await wait_for(lambda: emulator.event_streams == 1, what="the stream")
            new_tasks = swarm.recreate_service()
            swarm.late_event(old_tasks[0])
            swarm.probe(new_tasks[0])
            await wait_for(lambda: any(e["Action"] == "exec_die" for e in log.events), what="exec")
        finally:
            await log.close()
    assert swarm.service_id != old_id and len(new_tasks) == 3
    assert {t["ServiceID"] for t in swarm.tasks()} == {swarm.service_id}
    destroy = next(e for e in log.events if e["Action"] == "destroy")
    labels = destroy["Actor"]["Attributes"]
    assert (labels["com.docker.swarm.service.id"], labels["com.docker.swarm.task.id"]) == (
        old_id,
        old_tasks[0],
    )
    actions = [e["Action"].split(":")[0] for e in log.events if e["Type"] == "container"]
    assert actions[-3:] == ["exec_create", "exec_start", "exec_die"]
    services = [(e["Action"], e["Actor"]["ID"]) for e in log.events if e["Type"] == "service"]
    assert services == [("remove", old_id), ("create", swarm.service_id)]
