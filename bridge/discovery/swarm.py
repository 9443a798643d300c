"""Swarm discovery: the running tasks of the service, through the Docker Engine API.

Only GET /_ping, /version, /info, /tasks and /events are called (a read-only socket on a manager
node allows them). The docker SDK is blocking, so every call runs in a thread, and every call has
a timeout: a hung daemon must not freeze discovery.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from typing import Any

import docker
import docker.errors
import msgspec
import requests
import structlog
from docker.tls import TLSConfig

from bridge.config import Settings
from bridge.discovery.base import SwarmRound, endpoint_for
from bridge.errors import DockerAPIError
from bridge.models import Agent

__all__ = ["SwarmDiscovery", "agents_from_tasks", "classify_docker_error"]

log = structlog.get_logger(__name__)


# gc=False: these only ever hold strings, numbers and each other, never a cycle. Untracked,
# the ~10,000 tasks of a round cost the garbage collector nothing to traverse; tracked, a full
# collection during a round walks every one of them.
class _NetworkSpec(msgspec.Struct, gc=False):
    Name: str = ""


class _Network(msgspec.Struct, gc=False):
    Spec: _NetworkSpec = msgspec.field(default_factory=_NetworkSpec)


class _Attachment(msgspec.Struct, gc=False):
    Network: _Network = msgspec.field(default_factory=_Network)
    Addresses: tuple[str, ...] | None = None


class _ContainerStatus(msgspec.Struct, gc=False):
    ContainerID: str | None = None


class _Status(msgspec.Struct, gc=False):
    State: str = ""
    ContainerStatus: _ContainerStatus | None = None


class _Task(msgspec.Struct, gc=False):
    """The fields of a Docker task that discovery reads; the rest is skipped while decoding."""

    ID: str
    Status: _Status = msgspec.field(default_factory=_Status)
    DesiredState: str = ""
    Slot: int | None = None
    NodeID: str | None = None
    NetworksAttachments: tuple[_Attachment, ...] | None = None


# Built once: a typed decoder that reads only the fields above is what keeps a round of
# 10,000 tasks cheap next to the fetch itself.
_TASKS_DECODER = msgspec.json.Decoder(list[_Task])


def _address(task: _Task, networks: tuple[str, ...]) -> tuple[str, str] | None:
    """(address without its /prefix, network name) on the first configured network, in order."""
    attachments = task.NetworksAttachments or ()
    if not networks:
        for attachment in attachments:
            if attachment.Addresses:
                return attachment.Addresses[0].split("/", 1)[0], attachment.Network.Spec.Name
        return None
    for wanted in networks:
        for attachment in attachments:
            if attachment.Addresses and attachment.Network.Spec.Name == wanted:
                return attachment.Addresses[0].split("/", 1)[0], wanted
    return None


def _endpoint(address: str, port: int) -> str:
    # Docker hands out IP literals: only an IPv6 one (it has a ':') needs endpoint_for's
    # brackets, and its parse of an IPv4 address costs more than the rest of building an agent.
    return endpoint_for(address, port) if ":" in address else f"http://{address}:{port}"


def agents_from_tasks(tasks: list[_Task], settings: Settings) -> SwarmRound:
    """Turn tasks into agents: running ones with an address on the configured network(s)."""
    agents: list[Agent] = []
    without_address: list[str] = []
    pending = 0
    for task in tasks:
        if task.DesiredState != "running":
            continue
        if task.Status.State != "running":
            pending += 1  # preparing, starting, ...: a later round picks it up
            continue
        found = _address(task, settings.network_names)
        if found is None:
            without_address.append(task.ID)
            continue
        address, network = found
        status = task.Status.ContainerStatus
        agents.append(Agent(
            id=task.ID, endpoint=_endpoint(address, settings.agent_port), address=address,
            port=settings.agent_port, source="swarm", service=settings.service_name,
            network=network, task_id=task.ID, slot=task.Slot, node_id=task.NodeID or None,
            container_id=(status.ContainerID or None) if status else None))
    return SwarmRound(agents=tuple(agents), without_address=tuple(without_address),
                      pending=pending)


def _chain(exc: BaseException) -> Iterator[BaseException]:
    """The exception, its causes, and exceptions nested in args (how requests wraps OS errors)."""
    seen: set[int] = set()
    stack: list[BaseException] = [exc]
    while stack:
        current = stack.pop()
        if id(current) in seen:
            continue
        seen.add(id(current))
        yield current
        stack.extend(a for a in current.args if isinstance(a, BaseException))
        for linked in (current.__cause__, current.__context__, getattr(current, "reason", None)):
            if isinstance(linked, BaseException):
                stack.append(linked)


def classify_docker_error(exc: BaseException, settings: Settings) -> DockerAPIError:
    """Map what the docker SDK raised to one DockerAPIError whose message says what to do."""
    if isinstance(exc, DockerAPIError):
        return exc
    host = settings.docker_host
    chain = list(_chain(exc))
    if any(isinstance(e, requests.exceptions.Timeout | TimeoutError) for e in chain):
        return DockerAPIError("timeout", f"the Docker API at {host} did not answer within "
                              f"{settings.docker_timeout:g}s; is the daemon hung or overloaded?")
    if any(isinstance(e, FileNotFoundError) for e in chain):
        return DockerAPIError("socket_missing", f"no Docker socket at {host}: mount "
                              "/var/run/docker.sock into the bridge (read-only is enough) or set "
                              "WHOOSH_DOCKER_HOST")
    if any(isinstance(e, PermissionError) for e in chain):
        return DockerAPIError("permission_denied", f"permission denied on {host}: run the bridge "
                              "as root or in the socket's group")
    if isinstance(exc, docker.errors.APIError):
        status = exc.status_code
        message = exc.explanation or str(exc)
        if status == 503:
            return DockerAPIError("not_manager", f"the engine at {host} is not a swarm manager "
                                  f"(HTTP 503: {message}); the task list is manager-only: place "
                                  "the bridge on a manager node")
        if status == 404:
            return DockerAPIError("service_not_found", f"service {settings.service_name!r} not "
                                  f"found (HTTP 404: {message}); check WHOOSH_SERVICE_NAME")
        if status is not None and status >= 500:
            return DockerAPIError("server_error", f"the Docker API answered HTTP {status}: "
                                  f"{message}")
        return DockerAPIError("api_error", f"the Docker API answered HTTP {status}: {message}")
    if isinstance(exc, msgspec.DecodeError | ValueError):
        return DockerAPIError("bad_response", f"the Docker API sent a task list that is not "
                              f"valid JSON of tasks ({exc}); is {host} really a Docker Engine?")
    if any(isinstance(e, ConnectionError | requests.exceptions.ConnectionError) for e in chain):
        return DockerAPIError("unreachable", f"cannot connect to the Docker API at {host} ({exc})")
    return DockerAPIError("api_error", f"the Docker API call failed: {exc!r}")


class SwarmDiscovery:
    """Lists the service's running tasks. One instance per bridge; close() frees the client."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._client: docker.APIClient | None = None
        filters = {"service": [settings.service_name], "desired-state": ["running"]}
        self._task_params = {"filters": json.dumps(filters)}

    def _connect(self) -> docker.APIClient:
        if self._client is None:
            s = self.settings
            tls: TLSConfig | bool = False
            if s.docker_tls_verify and s.docker_cert_path:
                cert = (f"{s.docker_cert_path}/cert.pem", f"{s.docker_cert_path}/key.pem")
                tls = TLSConfig(client_cert=cert, ca_cert=f"{s.docker_cert_path}/ca.pem",
                                verify=True)
            host = s.docker_host.replace("tcp://", "https://") if tls else s.docker_host
            # version="auto" asks GET /version once, so any engine's API version works.
            self._client = docker.APIClient(base_url=host, version="auto",
                                            timeout=s.docker_timeout, tls=tls)
        return self._client

    async def _call(self, fn: Any, *args: Any, **kwargs: Any) -> Any:
        def run() -> Any:
            return fn(self._connect(), *args, **kwargs)

        try:
            return await asyncio.to_thread(run)
        except Exception as exc:
            raise classify_docker_error(exc, self.settings) from exc

    async def check_manager(self) -> bool:
        """Whether the engine is a swarm manager (GET /info: Swarm.ControlAvailable)."""
        info = await self._call(lambda c: c.info())
        swarm = info.get("Swarm") or {}
        return bool(swarm.get("ControlAvailable"))

    def _fetch_tasks(self, client: docker.APIClient) -> bytes:
        # The SDK's tasks() decodes with the stdlib into dicts; fetching the bytes through the
        # same client and decoding only the fields we need with msgspec is several times faster.
        response = client._get(client._url("/tasks"), params=self._task_params)
        client._raise_for_status(response)
        body: bytes = response.content
        return body

    async def fetch_tasks(self) -> bytes:
        """The raw task list of the service (GET /tasks, filtered on service and desired state)."""
        body: bytes = await self._call(self._fetch_tasks)
        return body

    def decode(self, body: bytes) -> SwarmRound:
        """Agents from a raw task list; DockerAPIError(bad_response) when it is not tasks JSON."""
        try:
            tasks = _TASKS_DECODER.decode(body)
        except msgspec.DecodeError as exc:
            raise classify_docker_error(exc, self.settings) from exc
        return agents_from_tasks(tasks, self.settings)

    async def discover(self) -> SwarmRound:
        """One round: fetch and decode the task list."""
        return self.decode(await self.fetch_tasks())

    def client(self) -> docker.APIClient:
        """The SDK client (blocking; call from a thread). Used by the events follower."""
        return self._connect()

    def close(self) -> None:
        if self._client is not None:
            self._client.close()
            self._client = None
