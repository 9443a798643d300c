"""Swarm discovery against the responses recorded from a real Docker Engine."""

from __future__ import annotations

import json

import pytest
import requests

from bridge.config import Settings
from bridge.devkit.emulator import documents
from bridge.discovery.managers import DockerManagers
from bridge.discovery.swarm import SwarmDiscovery
from bridge.edges.docker_api import docker_error, status_error
from bridge.errors import DockerAPIError
from tests.conftest import FIXTURES


def _swarm(settings: Settings | None = None) -> SwarmDiscovery:
    settings = settings or Settings()
    return SwarmDiscovery(settings, DockerManagers(settings))


def _decode(name: str, settings: Settings | None = None):  # type: ignore[no-untyped-def]
    return _swarm(settings).decode((FIXTURES / name).read_bytes())


def test_recorded_34_running_tasks_become_34_agents() -> None:
    """tasks_running_34.json yields every task, with the address Docker reports, CIDR stripped."""
    raw = json.loads((FIXTURES / "tasks_running_34.json").read_bytes())
    found = _decode("tasks_running_34.json")
    assert len(found.agents) == 34
    assert found.without_address == ()
    by_id = {a.id: a for a in found.agents}
    for task in raw:
        agent = by_id[task["ID"]]
        address = task["NetworksAttachments"][0]["Addresses"][0].split("/")[0]
        assert agent.address == address
        assert agent.endpoint == f"http://{address}:8080"
        assert agent.task_id == task["ID"] and agent.slot == task["Slot"]
        assert agent.node_id == task["NodeID"]
        assert agent.container_id == task["Status"]["ContainerStatus"]["ContainerID"]
        assert (agent.source, agent.service, agent.network) == (
            "swarm",
            "CHORUS_chorus",
            "chorus_default",
        )
    assert len({a.address for a in found.agents}) == 34


def test_rejected_tasks_are_not_published() -> None:
    """The broken-image tasks have addresses but never ran: none becomes an agent."""
    raw = json.loads((FIXTURES / "tasks_broken_image_all.json").read_bytes())
    assert all(t["NetworksAttachments"][0]["Addresses"] for t in raw)
    assert _decode("tasks_broken_image_all.json").agents == ()


def test_history_tasks_are_skipped() -> None:
    """Only desired-running, running tasks of the unfiltered list become agents."""
    raw = json.loads((FIXTURES / "tasks_all.json").read_bytes())
    expected = {
        t["ID"] for t in raw if t["DesiredState"] == "running" and t["Status"]["State"] == "running"
    }
    assert {a.id for a in _decode("tasks_all.json").agents} == expected


def test_other_network_means_no_address() -> None:
    """A task with no address on the configured network is skipped and counted."""
    found = _decode("tasks_running_34.json", Settings(network_names=("elsewhere",)))
    assert found.agents == ()
    assert len(found.without_address) == 34


def test_network_list_first_match_and_empty_means_first() -> None:
    """A list of networks matches in order; an empty list takes the first address."""
    first = _decode("tasks_running_34.json", Settings(network_names=("nope", "chorus_default")))
    any_net = _decode("tasks_running_34.json", Settings(network_names=()))
    assert len(first.agents) == len(any_net.agents) == 34


def test_malformed_task_json_is_a_bad_response() -> None:
    """Truncated or wrongly shaped task JSON gives a clear bad_response error."""
    body = (FIXTURES / "tasks_running_34.json").read_bytes()
    swarm = _swarm()
    for broken in (body[: len(body) // 2], b'{"message": "not a list"}', b'[{"ID": 5}]'):
        with pytest.raises(DockerAPIError) as info:
            swarm.decode(broken)
        assert info.value.kind == "bad_response"


def _answer(status: int, body: bytes, content_type: str = "application/json") -> requests.Response:
    response = requests.Response()
    response.status_code = status
    response._content = body
    response.headers["Content-Type"] = content_type
    return response


def _engine(message: str) -> bytes:
    return json.dumps({"message": message}).encode()


@pytest.mark.parametrize(
    ("status", "body", "kind", "says"),
    [
        (503, "tasks_not_swarm_503.body", "not_manager", "not a manager"),
        (404, "tasks_service_not_found_404.body", "service_not_found", "WHOOSH_SERVICE_NAME"),
        (500, "tasks_bad_filter_500.body", "server_error", "HTTP 500"),
        # From the multi-node swarm: a worker, the last manager of three, a locked manager.
        (503, "tasks_worker_503.body", "not_manager", "not a manager: it is a worker"),
        (500, "tasks_no_leader_500.body", "no_leader", "lost quorum"),
        (503, "tasks_locked_503.body", "swarm_locked", "docker swarm unlock"),
    ],
)
def test_recorded_error_answers_are_classified(
    status: int, body: str, kind: str, says: str
) -> None:
    """The recorded answers map to errors that say what to do."""
    answer = _answer(status, (FIXTURES / body).read_bytes())
    error = status_error(answer, Settings())
    assert error.kind == kind
    assert says in str(error) and json.loads(answer.content)["message"] in str(error)


@pytest.mark.parametrize(
    ("message", "body"),
    [
        (documents.NOT_MANAGER_WORKER, "tasks_worker_503.body"),
        (documents.NO_LEADER, "tasks_no_leader_500.body"),
        (documents.SWARM_LOCKED, "tasks_locked_503.body"),
    ],
)
def test_the_emulators_texts_are_the_recorded_ones(message: str, body: str) -> None:
    """What the emulator answers is what the real engines answered."""
    assert json.loads((FIXTURES / body).read_bytes())["message"] == message


@pytest.mark.parametrize(
    ("status", "message", "kind", "says"),
    [
        (503, documents.NOT_MANAGER_WORKER, "not_manager", "not a manager: it is a worker"),
        (503, documents.SWARM_LOCKED, "swarm_locked", "docker swarm unlock"),
        (503, documents.MANAGER_PREPARING, "manager_not_ready", "joining the swarm"),
        (500, documents.NO_LEADER, "no_leader", "lost quorum"),
    ],
)
def test_a_manager_that_cannot_answer_is_named_from_the_engines_message(
    status: int, message: str, kind: str, says: str
) -> None:
    """Docker's own texts (moby daemon/cluster): a worker, a locked swarm, a manager being
    prepared, a swarm without a leader are each what they are, never 'place the bridge on a
    manager node' nor an anonymous server error; the engine's words are kept."""
    error = status_error(_answer(status, _engine(message)), Settings(), "tcp://10.0.0.7:2375")
    assert error.kind == kind
    assert says in str(error) and "tcp://10.0.0.7:2375" in str(error)
    assert message in str(error) and "place the bridge" not in str(error)


def test_a_proxys_403_names_the_refused_call() -> None:
    """HAProxy's 403 page (an HTML body, not the engine's JSON): forbidden, naming the call
    the proxy refused and what it must let through."""
    answer = _answer(403, documents.PROXY_FORBIDDEN.encode(), "text/html")
    error = status_error(answer, Settings(), "tcp://docker-api:2375", "GET /events")
    assert error.kind == "forbidden"
    text = str(error)
    assert "refused GET /events" in text and "tcp://docker-api:2375" in text
    assert "403 Forbidden Request forbidden by administrative rules." in text
    assert "<html>" not in text and "/tasks" in text


def test_a_proxy_with_no_engine_behind_it_is_unreachable() -> None:
    """HAProxy's 503 (no server answers behind it) is no statement about swarm managers."""
    page = b"<html><body><h1>503 Service Unavailable</h1>\nNo server is available.\n</body></html>"
    error = status_error(_answer(503, page, "text/html"), Settings(), "tcp://docker-api:2375")
    assert error.kind == "unreachable" and "no Docker Engine answering" in str(error)


def test_socket_and_permission_errors_are_classified() -> None:
    """A missing socket and a forbidden one are told apart from an outage."""
    missing = requests.exceptions.ConnectionError(
        OSError("Connection aborted.", FileNotFoundError(2, "No such file or directory"))
    )
    denied = requests.exceptions.ConnectionError(
        OSError("Connection aborted.", PermissionError(13, "Permission denied"))
    )
    timeout = requests.exceptions.ReadTimeout("read timed out")
    settings = Settings()
    assert kind(missing, settings) == "socket_missing"
    assert kind(denied, settings) == "permission_denied"
    assert kind(timeout, settings) == "timeout"


def kind(exc: Exception, settings: Settings) -> str | None:
    error = docker_error(exc, settings)
    return None if error is None else error.kind


def test_a_list_of_several_services_is_a_bad_response() -> None:
    """A list mixing services, before the service's ID is known, fails the round (which
    removes nothing) instead of publishing another service's tasks."""
    own = json.loads((FIXTURES / "tasks_running_34.json").read_bytes())
    other = [{**task, "ServiceID": "someotherservice00000000"} for task in own[:2]]
    with pytest.raises(DockerAPIError) as info:
        _swarm().decode(json.dumps(own + other).encode())
    assert info.value.kind == "bad_response" and "service filter" in str(info.value)


def test_socket_missing_advice_depends_on_whether_the_host_was_set() -> None:
    """Setting WHOOSH_DOCKER_HOST is advised only when it was not set."""
    missing = requests.exceptions.ConnectionError(
        OSError("Connection aborted.", FileNotFoundError(2, "No such file or directory"))
    )
    default = docker_error(missing, Settings())
    chosen = docker_error(missing, Settings(docker_host="unix:///run/other/docker.sock"))
    assert default is not None and chosen is not None
    assert "set WHOOSH_DOCKER_HOST" in str(default)
    assert "set WHOOSH_DOCKER_HOST" not in str(chosen) and "WHOOSH_DOCKER_HOST" in str(chosen)
