"""Swarm discovery: the running tasks of the service, through the Docker Engine API edge.

GET /tasks is filtered on the service and on desired-state running and ready (a task desired
ready is a replacement waiting to start: not an agent, a sign that more is coming); the list is
decoded by TaskListDecoder (only what changed since the previous list), which also drops tasks of
any other service the engine's filter let through.
"""

from __future__ import annotations

import json

import msgspec
import structlog

from bridge.config import Settings
from bridge.discovery.base import SwarmRound
from bridge.discovery.managers import DockerManagers
from bridge.discovery.tasks import MixedServicesError, TaskListDecoder
from bridge.errors import DockerAPIError

__all__ = ["SwarmDiscovery"]

log = structlog.get_logger(__name__)


class SwarmDiscovery:
    """Lists the service's running tasks through `managers` (which it does not own)."""

    def __init__(self, settings: Settings, managers: DockerManagers) -> None:
        self.settings = settings
        self.managers = managers
        self._filters = json.dumps(
            {"service": [settings.service_name], "desired-state": ["running", "ready"]}
        )
        self._tasks = TaskListDecoder(settings)

    async def fetch_tasks(self) -> bytes:
        """The raw task list of the service (GET /tasks, filtered on service and desired state),
        from the manager being read or, when it fails, the next."""
        return await self.managers.tasks(self._filters)

    def decode(self, body: bytes) -> SwarmRound:
        """Agents from a raw task list; DockerAPIError(bad_response) when it is not tasks JSON
        of the service."""
        host = self.managers.current or self.settings.docker_host
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

    @property
    def decoded(self) -> int:
        """Tasks the last decode() had to decode: those new or changed since the list before."""
        return self._tasks.decoded

    async def discover(self) -> SwarmRound:
        """One round: fetch and decode the task list."""
        return self.decode(await self.fetch_tasks())
