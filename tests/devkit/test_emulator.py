"""The emulated Docker Engine API, as the real docker SDK sees it."""

from __future__ import annotations

import asyncio
import json
import re
import shutil
import signal
import socket
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import docker
import docker.errors
import pytest
import requests

from bridge.devkit.emulator import DockerEmulator, EmulatedSwarm, serve_in_thread
from bridge.devkit.emulator.events import event_matches
from bridge.devkit.emulator.filters import EngineError, parse_filters
from tests.conftest import FIXTURES, wait_for

SERVICE = "CHORUS_chorus"
RUNNING = {"service": [SERVICE], "desired-state": ["running"]}


def _fixture_json(name: str) -> Any:
    return json.loads((FIXTURES / name).read_text())


def shape(value: Any, path: str = "$") -> dict[str, str]:
    """Every key path of a JSON document, with the JSON type found there."""
    if isinstance(value, dict):
        out = {path: "object"}
        for key, item in value.items():
            out |= shape(item, f"{path}.{key}")
        return out
    if isinstance(value, list):
        out = {path: "array"}
        for item in value:
            out |= shape(item, f"{path}[]")
        return out
    return {path: type(value).__name__}


def _answers(path: Path) -> bool:
    """Whether something accepts connections on the unix socket."""
    with socket.socket(socket.AF_UNIX) as probe:
        try:
            probe.connect(str(path))
        except OSError:
            return False
    return True


@pytest.fixture
def sock_path() -> Iterator[Path]:
    """A short socket path (unix socket paths are limited to about 100 bytes)."""
    directory = tempfile.mkdtemp(prefix="emu-", dir="/tmp")
    yield Path(directory) / "docker.sock"
    shutil.rmtree(directory, ignore_errors=True)


@pytest.fixture
def swarm() -> EmulatedSwarm:
    """A manager with the recorded service: 34 running tasks."""
    state = EmulatedSwarm(seed=7)
    state.add_tasks(34)
    return state


@pytest.fixture
async def emulator(sock_path: Path, swarm: EmulatedSwarm) -> AsyncIterator[DockerEmulator]:
    async with DockerEmulator(sock_path, swarm) as emu:
        yield emu


async def connect(emu: DockerEmulator, timeout: float = 5) -> docker.APIClient:
    """A real SDK client; version="auto" asks GET /version, so it is built in a thread."""
    return await asyncio.to_thread(
        docker.APIClient, base_url=emu.base_url, version="auto", timeout=timeout
    )


@pytest.fixture
async def client(emulator: DockerEmulator) -> AsyncIterator[docker.APIClient]:
    api = await connect(emulator)
    yield api
    api.close()


async def raw(
    api: docker.APIClient, path: str, method: str = "GET", **params: Any
) -> requests.Response:
    """Request a path as given (bare or versioned), without the SDK's decoding."""
    url = f"{api.base_url}{path}"
    response: requests.Response = await asyncio.to_thread(api.request, method, url, params=params)
    return response


class TestTaskShape:
    async def test_keys_and_types_equal_the_recorded_tasks(self, client: docker.APIClient) -> None:
        """Every task has exactly the key paths and JSON types of a recorded 20.10 task."""
        recorded = _fixture_json("tasks_running_34.json")
        expected = shape(recorded[0])
        assert all(shape(task) == expected for task in recorded)
        tasks = await asyncio.to_thread(client.tasks, filters=RUNNING)
        assert len(tasks) == 34
        for task in tasks:
            assert shape(task) == expected

    async def test_values_look_like_docker_values(
        self, client: docker.APIClient, swarm: EmulatedSwarm
    ) -> None:
        """IDs, container IDs, slots, addresses and network are what Docker would give."""
        tasks = await asyncio.to_thread(client.tasks, filters=RUNNING)
        assert sorted(t["Slot"] for t in tasks) == list(range(1, 35))
        assert len({t["ID"] for t in tasks}) == 34
        for task in tasks:
            assert re.fullmatch(r"[0-9a-z]{25}", task["ID"])
            assert re.fullmatch(r"[0-9a-f]{64}", task["Status"]["ContainerStatus"]["ContainerID"])
            assert task["ServiceID"] == swarm.service_id
            assert task["NodeID"] == swarm.node_id
            assert task["Status"]["State"] == task["DesiredState"] == "running"
            (attachment,) = task["NetworksAttachments"]
            assert attachment["Network"]["Spec"]["Name"] == "chorus_default"
            assert attachment["Network"]["ID"] == swarm.network_id
            assert task["Spec"]["Networks"] == [{"Target": swarm.network_id}]
            assert re.fullmatch(r"127\.10\.0\.\d+/16", attachment["Addresses"][0])

    def test_addresses_are_sequential_and_loopback(self) -> None:
        """Addresses start after the gateway, explicit ones are kept, non-loopback is refused."""
        state = EmulatedSwarm(subnet="127.20.0.0/24")
        first, second = state.add_tasks(2)
        assert (state.address_of(first), state.address_of(second)) == ("127.20.0.2", "127.20.0.3")
        (explicit,) = state.add_tasks(1, addresses=["127.0.3.9"])
        assert state.task(explicit)["NetworksAttachments"][0]["Addresses"] == ["127.0.3.9/24"]
        with pytest.raises(ValueError, match="not a loopback address"):
            state.add_tasks(1, addresses=["10.0.1.5"])
        with pytest.raises(ValueError, match="not a loopback address"):
            EmulatedSwarm(subnet="10.0.1.0/24")


class TestTaskFilters:
    async def test_service_by_name_id_and_legacy_form(
        self, client: docker.APIClient, swarm: EmulatedSwarm
    ) -> None:
        """The service filter takes the name or the ID, in the list or the legacy map form."""
        by_name = await asyncio.to_thread(client.tasks, filters={"service": SERVICE})
        by_id = await asyncio.to_thread(client.tasks, filters={"service": swarm.service_id})
        legacy = (
            await raw(client, "/v1.41/tasks", filters=json.dumps({"service": {SERVICE: True}}))
        ).json()
        assert len(by_name) == len(by_id) == len(legacy) == 34

    async def test_unknown_service_is_not_found(self, client: docker.APIClient) -> None:
        """An unknown service is HTTP 404 with Docker's message, not an empty list."""
        with pytest.raises(docker.errors.NotFound) as caught:
            await asyncio.to_thread(client.tasks, filters={"service": "NoSuch"})
        assert (
            caught.value.response.content
            == (FIXTURES / "tasks_service_not_found_404.body").read_bytes()
        )

    async def test_malformed_filters_are_a_500(self, client: docker.APIClient) -> None:
        """A filters parameter that is not JSON gets Go's message with HTTP 500, as recorded."""
        response = await raw(client, "/v1.41/tasks", filters="{bad")
        assert response.status_code == 500
        assert response.content == (FIXTURES / "tasks_bad_filter_500.body").read_bytes()

    async def test_desired_state_id_name_and_node(
        self, client: docker.APIClient, swarm: EmulatedSwarm
    ) -> None:
        """desired-state is exact; id and name match by prefix; node takes the node ID."""
        gone = swarm.running_ids()[0]
        swarm.remove_task(gone)
        running = await asyncio.to_thread(client.tasks, filters=RUNNING)
        removed = await asyncio.to_thread(client.tasks, filters={"desired-state": "remove"})
        everything = await asyncio.to_thread(client.tasks)
        assert len(running) == 33 and gone not in {t["ID"] for t in running}
        assert [(t["ID"], t["Status"]["State"]) for t in removed] == [(gone, "shutdown")]
        assert len(everything) == 34
        kept = running[0]
        by_id = await asyncio.to_thread(client.tasks, filters={"id": kept["ID"][:6]})
        assert kept["ID"] in {t["ID"] for t in by_id}
        slot_3 = await asyncio.to_thread(client.tasks, filters={"name": f"{SERVICE}.3."})
        assert [t["Slot"] for t in slot_3] == [3]
        on_node = await asyncio.to_thread(client.tasks, filters={"node": swarm.node_id})
        assert len(on_node) == 34

    def test_go_json_errors(self) -> None:
        """Malformed filters give the messages Go's encoding/json gives."""
        cases = {
            '{"service":': "unexpected end of JSON input",
            '{"service":"x"}': "json: cannot unmarshal string into Go value of type "
            "map[string]bool",
            '{"service":["x"] "a":1}': "invalid character '\"' after object key:value pair",
            "[1]": "json: cannot unmarshal array into Go value of type map[string]map[string]bool",
        }
        for raw, message in cases.items():
            with pytest.raises(EngineError) as caught:
                parse_filters(raw)
            assert (caught.value.status, caught.value.message) == (500, message)


class TestErrorSwitches:
    async def test_not_manager_is_the_recorded_503(
        self, client: docker.APIClient, swarm: EmulatedSwarm
    ) -> None:
        """not_manager answers HTTP 503 with the recorded body and headers."""
        swarm.error = "not_manager"
        with pytest.raises(docker.errors.APIError) as caught:
            await asyncio.to_thread(client.tasks, filters=RUNNING)
        response = caught.value.response
        assert response.status_code == 503
        assert response.content == (FIXTURES / "tasks_not_swarm_503.body").read_bytes()
        for line in (FIXTURES / "tasks_not_swarm_503.headers").read_text().splitlines()[1:]:
            name, _, value = line.partition(": ")
            if name and name not in ("Date", "Content-Length"):
                assert response.headers[name] == value
        swarm.error = None
        assert len(await asyncio.to_thread(client.tasks, filters=RUNNING)) == 34

    async def test_service_not_found_and_server_error(
        self, client: docker.APIClient, swarm: EmulatedSwarm
    ) -> None:
        """service_not_found is a NotFound naming the service; server_error is an HTTP 500."""
        swarm.error = "service_not_found"
        with pytest.raises(docker.errors.NotFound, match=f"service {SERVICE} not found"):
            await asyncio.to_thread(client.tasks, filters=RUNNING)
        swarm.error = "server_error"
        with pytest.raises(docker.errors.APIError) as caught:
            await asyncio.to_thread(client.tasks, filters=RUNNING)
        assert caught.value.status_code == 500

    async def test_bad_json_fails_to_decode(
        self, client: docker.APIClient, swarm: EmulatedSwarm
    ) -> None:
        """bad_json answers 200 with a truncated body that the SDK cannot decode."""
        swarm.error = "bad_json"
        with pytest.raises(json.JSONDecodeError):
            await asyncio.to_thread(client.tasks, filters=RUNNING)
        info = await asyncio.to_thread(client.info)  # other paths stay healthy
        assert info["Swarm"]["ControlAvailable"] is True

    async def test_hang_times_out_then_recovers(
        self, emulator: DockerEmulator, swarm: EmulatedSwarm
    ) -> None:
        """hang never answers: the client's read timeout fires; cleared, it answers again."""
        api = await connect(emulator, timeout=0.5)
        swarm.error = "hang"
        started = time.monotonic()
        with pytest.raises(requests.exceptions.ReadTimeout):
            await asyncio.to_thread(api.tasks, filters=RUNNING)
        assert time.monotonic() - started < 3
        swarm.error = None
        assert len(await asyncio.to_thread(api.tasks, filters=RUNNING)) == 34
        api.close()

    async def test_clearing_hang_releases_a_waiting_request(
        self, client: docker.APIClient, swarm: EmulatedSwarm
    ) -> None:
        """A request held by hang is answered as soon as the switch is cleared."""
        swarm.error = "hang"
        pending = asyncio.create_task(asyncio.to_thread(client.tasks, filters=RUNNING))
        await wait_for(lambda: swarm.requests["/tasks"] == 1, what="the hung request")
        assert not pending.done()
        swarm.error = None
        assert len(await asyncio.wait_for(pending, 5)) == 34

    async def test_error_on_every_path(
        self, client: docker.APIClient, swarm: EmulatedSwarm
    ) -> None:
        """With paths=None the switch applies to every endpoint, /info included."""
        swarm.set_error("server_error", paths=None)
        with pytest.raises(docker.errors.APIError) as caught:
            await asyncio.to_thread(client.info)
        assert caught.value.status_code == 500

    async def test_worker_node(self, sock_path: Path) -> None:
        """A worker says so in /_ping and /info, and its task list is a 503."""
        async with DockerEmulator(sock_path, EmulatedSwarm(manager=False)) as emu:
            api = await connect(emu)
            info = await asyncio.to_thread(api.info)
            assert info["Swarm"]["LocalNodeState"] == "active"
            assert info["Swarm"]["ControlAvailable"] is False
            assert "Managers" not in info["Swarm"]
            assert (await raw(api, "/_ping")).headers["Swarm"] == "active/worker"
            with pytest.raises(docker.errors.APIError) as caught:
                await asyncio.to_thread(api.tasks, filters=RUNNING)
            assert caught.value.status_code == 503
            assert "Worker nodes can't be used" in caught.value.explanation
            api.close()

    async def test_swarm_mode_off(self, sock_path: Path) -> None:
        """An engine outside any swarm answers the task list exactly as recorded."""
        async with DockerEmulator(sock_path, EmulatedSwarm(active=False)) as emu:
            api = await connect(emu)
            info = await asyncio.to_thread(api.info)
            assert info["Swarm"]["LocalNodeState"] == "inactive"
            assert (await raw(api, "/_ping")).headers["Swarm"] == "inactive"
            response = await raw(api, "/v1.41/tasks")
            assert response.status_code == 503
            assert response.content == (FIXTURES / "tasks_not_swarm_503.body").read_bytes()
            api.close()


class TestEngineDocuments:
    async def test_ping_version_and_info(
        self, client: docker.APIClient, swarm: EmulatedSwarm
    ) -> None:
        """/_ping, /version and /info carry what a client reads to know the engine."""
        ping = await raw(client, "/_ping")
        assert (ping.status_code, ping.text) == (200, "OK")
        assert ping.headers["Api-Version"] == "1.41"
        assert ping.headers["Swarm"] == "active/manager"
        assert ping.headers["Content-Type"] == "text/plain; charset=utf-8"
        assert await asyncio.to_thread(client.version) == _fixture_json("version.json")
        assert client.api_version == "1.41"
        info = await asyncio.to_thread(client.info)
        assert info["ServerVersion"] == "20.10.24+dfsg1"
        assert info["Swarm"]["LocalNodeState"] == "active"
        assert info["Swarm"]["ControlAvailable"] is True
        assert info["Swarm"]["NodeID"] == swarm.node_id
        assert (info["Swarm"]["Nodes"], info["Swarm"]["Managers"]) == (1, 1)

    async def test_paths_methods_and_counters(
        self, client: docker.APIClient, swarm: EmulatedSwarm
    ) -> None:
        """Any version prefix works; other paths are 404, other methods 405, both recorded."""
        assert (await raw(client, "/v1.44/tasks")).status_code == 200
        assert (await raw(client, "/tasks")).status_code == 200
        missing = await raw(client, "/v1.41/services")
        assert missing.status_code == 404 and "message" in missing.json()
        post = await raw(client, "/v1.41/tasks", "POST")
        assert post.status_code == 405 and "message" in post.json()
        assert swarm.requests["/tasks"] == 3
        assert swarm.requests["/version"] == 1
        assert swarm.unexpected == ["GET /services", "POST /tasks"]


class TestMutations:
    def test_state_changes_keep_the_shape_docker_gives(self, swarm: EmulatedSwarm) -> None:
        """fail, set_state, drop_address and set_address show up as Docker would show them."""
        first, second, third, fourth = swarm.running_ids()[:4]
        replacement = swarm.fail_task(first, replace=True)
        failed = swarm.task(first)
        assert (failed["Status"]["State"], failed["DesiredState"]) == ("failed", "shutdown")
        assert failed["Status"]["Err"] == "task: non-zero exit (1)"
        assert replacement is not None and swarm.task(replacement)["Slot"] == failed["Slot"]
        swarm.set_state(second, "starting")
        assert swarm.task(second)["Status"]["State"] == "starting"
        assert swarm.task(second)["DesiredState"] == "running"
        swarm.drop_address(third)
        assert "NetworksAttachments" not in swarm.task(third)
        swarm.drop_address(fourth, keep_attachment=True)
        assert "Addresses" not in swarm.task(fourth)["NetworksAttachments"][0]
        swarm.set_address(fourth, "127.0.9.9")
        assert swarm.address_of(fourth) == "127.0.9.9"
        assert swarm.replicas == 34
        assert swarm.scale(30) and swarm.replicas == 30
        assert len(swarm.scale(36)) == 6 and swarm.replicas == 36

    async def test_mutation_changes_the_served_list(
        self, client: docker.APIClient, swarm: EmulatedSwarm
    ) -> None:
        """A cached task list is dropped when the swarm changes."""
        assert len(await asyncio.to_thread(client.tasks, filters=RUNNING)) == 34
        swarm.scale(36)
        assert len(await asyncio.to_thread(client.tasks, filters=RUNNING)) == 36


class TestEvents:
    async def _open(
        self, client: docker.APIClient, swarm: EmulatedSwarm, filters: dict[str, Any]
    ) -> Any:
        stream = await asyncio.to_thread(client.events, decode=True, filters=filters)
        await wait_for(lambda: swarm.event_streams == 1, what="the event stream")
        return stream

    async def _take(self, stream: Any, n: int) -> list[dict[str, Any]]:
        def take() -> list[dict[str, Any]]:
            return [next(stream) for _ in range(n)]

        return await asyncio.wait_for(asyncio.to_thread(take), 5)

    async def test_add_emits_service_update_and_container_events(
        self, client: docker.APIClient, swarm: EmulatedSwarm
    ) -> None:
        """Adding a task emits a service update and its container's create and start."""
        stream = await self._open(client, swarm, {"type": ["service", "container"]})
        (task_id,) = swarm.add_tasks(1)
        update, create, start = await self._take(stream, 3)
        assert update["Type"] == "service" and update["scope"] == "swarm"
        assert update["Actor"]["Attributes"] == {
            "name": SERVICE,
            "replicas.new": "35",
            "replicas.old": "34",
        }
        recorded = [
            json.loads(line) for line in (FIXTURES / "events_scale.jsonl").read_text().splitlines()
        ]
        recorded_create = next(e for e in recorded if e.get("Action") == "create")
        assert list(create) == list(recorded_create)
        assert list(create["Actor"]["Attributes"]) == list(recorded_create["Actor"]["Attributes"])
        labels = create["Actor"]["Attributes"]
        assert labels["com.docker.swarm.service.name"] == SERVICE
        assert labels["com.docker.swarm.task.id"] == task_id
        assert (create["Action"], start["Action"]) == ("create", "start")
        swarm.close_event_streams()
        assert await asyncio.to_thread(list, stream) == []

    async def test_filters_keep_only_matching_events(
        self, client: docker.APIClient, swarm: EmulatedSwarm
    ) -> None:
        """A type=service stream sees the scale-down's service update and no container event."""
        stream = await self._open(client, swarm, {"type": ["service"]})
        swarm.scale(33)
        swarm.fail_task(swarm.running_ids()[0])  # a crash: container events only
        (update,) = await self._take(stream, 1)
        assert update["Actor"]["Attributes"]["replicas.new"] == "33"
        swarm.close_event_streams()
        assert await asyncio.to_thread(list, stream) == []

    async def test_label_filter(self, client: docker.APIClient, swarm: EmulatedSwarm) -> None:
        """A label filter keeps the containers of the service and drops its service events."""
        label = f"com.docker.swarm.service.name={SERVICE}"
        stream = await self._open(client, swarm, {"label": [label]})
        gone = swarm.running_ids()[-1]
        swarm.remove_task(gone)
        events = await self._take(stream, 4)
        assert [e["Action"] for e in events] == ["kill", "die", "stop", "destroy"]
        assert events[0]["Actor"]["Attributes"]["signal"] == "15"
        swarm.close_event_streams()
        assert await asyncio.to_thread(list, stream) == []

    async def test_client_closing_its_stream_is_seen(
        self, client: docker.APIClient, swarm: EmulatedSwarm
    ) -> None:
        """A stream the client closes stops counting as open, so reconnections can be watched."""
        stream = await self._open(client, swarm, {"type": ["service"]})
        await asyncio.to_thread(stream.close)
        await wait_for(lambda: swarm.event_streams == 0, what="the stream to be dropped")

    def test_service_filter_matches_like_docker(self, swarm: EmulatedSwarm) -> None:
        """service=NAME matches the actor ID or `name` by prefix, whatever the event type."""
        service_update = {
            "Type": "service",
            "Action": "update",
            "scope": "swarm",
            "Actor": {"ID": swarm.service_id, "Attributes": {"name": SERVICE}},
        }
        other_service = {**service_update, "Actor": {"ID": "x", "Attributes": {"name": "web"}}}
        network = {
            "Type": "network",
            "Action": "connect",
            "scope": "local",
            "Actor": {"ID": swarm.network_id, "Attributes": {"name": "chorus_default"}},
        }
        container = {
            "Type": "container",
            "Action": "start",
            "scope": "local",
            "Actor": {"ID": "f" * 64, "Attributes": {"name": f"{SERVICE}.3.abc"}},
        }
        args = {"service": frozenset({SERVICE})}
        assert event_matches(args, service_update)
        assert not event_matches(args, other_service)
        assert not event_matches(args, network)
        assert event_matches(args, container)  # its name SERVICE.SLOT.ID has the prefix
        assert event_matches({"service": frozenset({swarm.service_id})}, service_update)

    async def test_stop_ends_streams_and_hung_requests(
        self, sock_path: Path, swarm: EmulatedSwarm
    ) -> None:
        """Stopping the emulator ends open event streams and answers hung requests promptly."""
        emu = DockerEmulator(sock_path, swarm)
        await emu.start()
        api = await connect(emu)
        stream = await self._open(api, swarm, {})
        swarm.error = "hang"
        hung = asyncio.create_task(asyncio.to_thread(api.tasks, filters=RUNNING))
        reader = asyncio.create_task(asyncio.to_thread(list, stream))
        await wait_for(lambda: swarm.requests["/tasks"] == 1, what="the hung request")
        started = time.monotonic()
        await emu.stop()
        await asyncio.wait_for(asyncio.gather(hung, reader, return_exceptions=True), 5)
        assert time.monotonic() - started < 3
        assert not await asyncio.to_thread(sock_path.exists)
        api.close()


class TestScale:
    async def test_ten_thousand_tasks(self, sock_path: Path) -> None:
        """10,000 tasks are listed whole; a change is in the next list (the cached body of a
        query is dropped). How fast: bench/discovery_round.py, not a timed test."""
        state = EmulatedSwarm(seed=1)
        ids = state.add_tasks(10_000)
        query = parse_filters(json.dumps(RUNNING))
        for starting, task_id in enumerate(ids[:3], start=1):
            state.tasks_body(query)  # cached now
            state.set_state(task_id, "starting")
            assert state.tasks_body(query).count(b'"State":"starting"') == starting
        async with DockerEmulator(sock_path, state) as emu:
            api = await connect(emu, timeout=30)
            tasks = await asyncio.to_thread(api.tasks, filters=RUNNING)
            api.close()
        assert len(tasks) == 10_000
        assert len({t["ID"] for t in tasks}) == 10_000
        assert len({t["NetworksAttachments"][0]["Addresses"][0] for t in tasks}) == 10_000


class TestOtherRunners:
    def test_serve_in_thread_for_blocking_callers(
        self, sock_path: Path, swarm: EmulatedSwarm
    ) -> None:
        """A background-thread emulator serves SDK calls and sees mutations from this thread."""
        with serve_in_thread(sock_path, swarm) as emu:
            api = docker.APIClient(base_url=emu.base_url, version="auto", timeout=5)
            assert len(api.tasks(filters=RUNNING)) == 34
            swarm.scale(40)
            assert len(api.tasks(filters=RUNNING)) == 40
            api.close()
        assert not sock_path.exists()

    async def test_module_command_serves_until_sigterm(self, sock_path: Path) -> None:
        """`python -m bridge.devkit.emulator` serves N tasks and exits 0 on SIGTERM."""
        process = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "bridge.devkit.emulator",
            "--socket",
            str(sock_path),
            "--tasks",
            "5",
            "--service",
            "CHORUS_other",
            stdout=asyncio.subprocess.DEVNULL,
        )
        try:
            await wait_for(lambda: _answers(sock_path), timeout=10, what="the emulator")
            api = docker.APIClient(base_url=f"unix://{sock_path}", version="auto", timeout=5)
            tasks = await asyncio.to_thread(api.tasks, filters={"service": "CHORUS_other"})
            api.close()
            assert len(tasks) == 5
            process.send_signal(signal.SIGTERM)
            assert await asyncio.wait_for(process.wait(), 10) == 0
        finally:
            if process.returncode is None:
                process.kill()
                await process.wait()
