"""DockerAPI: the Docker Engine API at one address, every call bounded and run in a thread of
its own (the SDK blocks)."""

from __future__ import annotations

import contextlib
import os
from collections.abc import AsyncIterator, Mapping
from typing import Any

import docker
import docker.errors
import msgspec
import requests
import structlog
from docker.tls import TLSConfig

from bridge.config import Settings
from bridge.edges.docker_api.events import EventStream
from bridge.edges.docker_api.failures import (
    CONNECT_TIMEOUT,
    docker_error,
    status_error,
)
from bridge.edges.docker_api.threads import in_thread
from bridge.errors import ConfigError, DockerAPIError

__all__ = ["DockerAPI"]

log = structlog.get_logger(__name__)

# The API version the client is built with; only unversioned paths are ever called, so it
# is never sent (a fixed value just spares the SDK its GET /version at construction).
_CLIENT_VERSION = "1.41"

_OBJECT = msgspec.json.Decoder(dict[str, Any])


class DockerAPI:
    """The Docker Engine API at one address. close() frees its connections.

    host: the address (unix:// or tcp://); default: the first of WHOOSH_DOCKER_HOST. Each
    method raises DockerAPIError (kind: socket_missing, permission_denied, not_manager,
    swarm_locked, manager_not_ready, no_leader, forbidden, service_not_found, server_error,
    bad_response, timeout, unreachable, api_error).
    """

    def __init__(self, settings: Settings, host: str | None = None) -> None:
        self.settings = settings
        self.host = host or settings.docker_hosts[0]
        tls: TLSConfig | bool = False
        if settings.docker_tls_verify and settings.docker_cert_path:
            path = settings.docker_cert_path
            tls = TLSConfig(
                client_cert=(f"{path}/cert.pem", f"{path}/key.pem"),
                ca_cert=f"{path}/ca.pem",
                verify=True,
            )
        host = self.host.replace("tcp://", "https://") if tls else self.host
        # Building the client does no I/O (the version is given); a bad host is a config error.
        try:
            self._client = docker.APIClient(
                base_url=host, version=_CLIENT_VERSION, timeout=settings.docker_timeout, tls=tls
            )
        except docker.errors.DockerException as exc:
            raise ConfigError("WHOOSH_DOCKER_HOST", self.host, str(exc)) from exc
        self._timeout = settings.docker_timeout
        self._connect_timeout = min(CONNECT_TIMEOUT, settings.docker_timeout)
        self._socket_path = host.removeprefix("unix://") if host.startswith("unix://") else None

    def _get(
        self,
        path: str,
        params: Mapping[str, str] | None = None,
        *,
        stream: bool = False,
        read_timeout: float | None = None,
    ) -> requests.Response:
        """GET an unversioned path; a non-2xx answer raises DockerAPIError."""
        if self._socket_path is not None and not os.path.exists(self._socket_path):
            # Asked first: the SDK's unix connection leaks its socket when connect() fails.
            raise self._mapped(FileNotFoundError(2, "No such file", self._socket_path))
        try:
            response: requests.Response = self._client.get(
                self._client.base_url + path,
                params=params,
                stream=stream,
                timeout=(self._connect_timeout, read_timeout or self._timeout),
            )
        except Exception as exc:
            raise self._mapped(exc) from exc
        if response.status_code >= 300:
            with response:
                raise status_error(response, self.settings, self.host, f"GET {path}")
        return response

    def _mapped(self, exc: Exception) -> Exception:
        return docker_error(exc, self.settings, self.host) or exc

    def _body(self, path: str, params: Mapping[str, str] | None) -> bytes:
        with self._get(path, params) as response:
            try:
                body: bytes = response.content
            except Exception as exc:
                raise self._mapped(exc) from exc
        return body

    async def info(self) -> dict[str, Any]:
        """GET /info as a JSON object; DockerAPIError(bad_response) when it is not one."""
        body = await in_thread(lambda: self._body("/info", None))
        try:
            return _OBJECT.decode(body)
        except msgspec.DecodeError as exc:
            raise DockerAPIError(
                "bad_response",
                f"GET /info did not answer a JSON object ({exc}); is {self.host} a Docker Engine?",
            ) from exc

    async def tasks(self, filters: str) -> bytes:
        """The raw body of GET /tasks?filters=<filters JSON>."""
        return await in_thread(lambda: self._body("/tasks", {"filters": filters}))

    @contextlib.asynccontextmanager
    async def events(self, filters: str) -> AsyncIterator[EventStream]:
        """GET /events?filters=..., open: entering raises DockerAPIError when it cannot be."""
        stream = EventStream(self, filters)
        await stream.open()
        try:
            yield stream
        finally:
            stream.close()

    def close(self) -> None:
        self._client.close()
