"""Swarm discovery: the running tasks of the service, through the Docker Engine API edge.

GET /tasks is filtered on the service and on desired-state=running; the list is decoded by
TaskListDecoder (only what changed since the previous list), which also drops tasks of any
other service the engine's filter let through.
"""

from __future__ import annotations

import json

import msgspec
import structlog

from bridge.config import Settings
from bridge.discovery.base import SwarmRound
from bridge.discovery.tasks import MixedServicesError, TaskListDecoder
from bridge.edges.docker_api import DockerAPI
from bridge.errors import DockerAPIError

__all__ = ["SwarmDiscovery"]

log = structlog.get_logger(__name__)


class SwarmDiscovery:
    """Lists the service's running tasks through `api` (which it does not own)."""

    def __init__(self, settings: Settings, api: DockerAPI) -> None:
        self.settings = settings
        self.api = api
        self._filters = json.dumps(
            {"service": [settings.service_name], "desired-state": ["running"]}
        )
        self._tasks = TaskListDecoder(settings)

    async def check_manager(self) -> bool:
        """Whether the engine is a swarm manager (GET /info: Swarm.ControlAvailable)."""
        info = await self.api.info()
        swarm = info.get("Swarm") or {}
        return bool(isinstance(swarm, dict) and swarm.get("ControlAvailable"))

    async def fetch_tasks(self) -> bytes:
        """The raw task list of the service (GET /tasks, filtered on service and desired state)."""
        return await self.api.tasks(self._filters)

    def decode(self, body: bytes) -> SwarmRound:
        """Agents from a raw task list; DockerAPIError(bad_response) when it is not tasks JSON
        of the service."""
        host = self.settings.docker_host
        try:
            return self._tasks.decode(body)
        except msgspec.DecodeError as exc:
            raise DockerAPIError(
                "bad_response",
                f"the Docker API sent a task list that is not "
                f"valid JSON of tasks ({exc}); is {host} really a Docker "
                "Engine?",
            ) from exc
        except MixedServicesError as exc:
            raise DockerAPIError(
                "bad_response",
                f"{exc}: the engine at {host} did not apply "
                "the service filter; the list is not used",
            ) from exc

    def note_service_id(self, service_id: str) -> None:
        """The service's ID, as Docker events tell it (tasks of other IDs are ignored)."""
        self._tasks.note_service_id(service_id)

    @property
    def decoded(self) -> int:
        """Tasks the last decode() had to decode: those new or changed since the list before."""
        return self._tasks.decoded

    async def discover(self) -> SwarmRound:
        """One round: fetch and decode the task list."""
        return self.decode(await self.fetch_tasks())
