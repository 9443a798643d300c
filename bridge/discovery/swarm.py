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
from bridge.discovery.base import SwarmRound
from bridge.discovery.tasks import TaskListDecoder
from bridge.errors import DockerAPIError

__all__ = ["SwarmDiscovery", "classify_docker_error"]

log = structlog.get_logger(__name__)


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
        self._tasks = TaskListDecoder(settings)

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
            return self._tasks.decode(body)
        except msgspec.DecodeError as exc:
            raise classify_docker_error(exc, self.settings) from exc

    @property
    def decoded(self) -> int:
        """Tasks the last decode() had to decode: those new or changed since the list before."""
        return self._tasks.decoded

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
