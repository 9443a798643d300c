"""Follows Docker's /events so that a change of the service triggers a round at once.

Swarm emits `service` events (scope swarm) and node-local `container` events labelled with the
service name; there are no task events, so the poll stays as the safety net. One stream carries
both types and is filtered here: Docker ANDs filter keys, so a single query cannot ask for
"service events of S or container events labelled S".

A stream that cannot be opened, breaks or is closed by the daemon is opened again with
backoff (from RETRY_MIN up to RETRY_MAX seconds, so the bucket catches up within seconds of a
restarted daemon answering). It never stops discovery and never delays shutdown (the Docker
edge bounds every read). An outage of the stream is logged once when it starts and once when
it ends, and the reconnection triggers a round for whatever happened in between.
"""

from __future__ import annotations

import asyncio
import json
import random
from collections.abc import Callable, Mapping
from typing import Any

import structlog

from bridge.discovery.swarm import SwarmDiscovery
from bridge.edges.docker_api import DockerAPI
from bridge.errors import DockerAPIError

__all__ = ["RETRY_MAX", "RETRY_MIN", "EventFollower", "is_relevant"]

log = structlog.get_logger(__name__)

_SERVICE_LABEL = "com.docker.swarm.service.name"
_SERVICE_ID_LABEL = "com.docker.swarm.service.id"
_FILTERS = json.dumps({"type": ["service", "container"]})
# Seconds between attempts to open the stream again: doubling, with jitter, up to the max.
RETRY_MIN, RETRY_MAX = 0.1, 2.0
# A stream that stayed up this long was healthy: the next outage starts backoff afresh.
_HEALTHY_STREAM_SECONDS = 10.0


def is_relevant(event: Mapping[str, Any], service: str) -> bool:
    """Whether an event concerns the service: its own service events or its tasks' containers."""
    return service_id_of(event, service) is not None


def service_id_of(event: Mapping[str, Any], service: str) -> str | None:
    """The service's ID as the event tells it, when the event concerns the service."""
    actor = event.get("Actor") or {}
    attributes = actor.get("Attributes") or {}
    kind = event.get("Type")
    if kind == "service" and attributes.get("name") == service:
        return str(actor.get("ID") or "")
    if kind == "container" and attributes.get(_SERVICE_LABEL) == service:
        return str(attributes.get(_SERVICE_ID_LABEL) or "")
    return None


class EventFollower:
    """Calls `trigger()` (on the event loop) for each relevant event, until cancelled."""

    def __init__(self, swarm: SwarmDiscovery, trigger: Callable[[], None]) -> None:
        self._api: DockerAPI = swarm.api
        self._swarm = swarm
        self._service = swarm.settings.service_name
        self._trigger = trigger
        self.connected = asyncio.Event()
        self._lost_at: float | None = None  # when the current outage began (loop time)
        self._lost_kind: str | None = None

    async def run(self) -> None:
        """Follow events for ever, opening the stream again after each loss."""
        loop = asyncio.get_running_loop()
        delay = RETRY_MIN
        while True:
            opened = loop.time()
            try:
                await self._follow()
            except DockerAPIError as exc:
                if self.connected.is_set():
                    self._trigger()  # a round tells whether the whole API is down
                self.connected.clear()
                self._note_lost(exc, loop.time())
            if loop.time() - opened >= _HEALTHY_STREAM_SECONDS:
                delay = RETRY_MIN
            await asyncio.sleep(delay * random.uniform(0.8, 1.2))  # jitter
            delay = min(delay * 2, RETRY_MAX)

    async def _follow(self) -> None:
        async with self._api.events(_FILTERS) as stream:
            self._note_connected()
            self.connected.set()
            # Events may have been missed while the stream was down: one round catches up.
            self._trigger()
            async for event in stream:
                service_id = service_id_of(event, self._service)
                if service_id is not None:
                    self._swarm.note_service_id(service_id)
                    self._trigger()

    def _note_lost(self, exc: DockerAPIError, now: float) -> None:
        if self._lost_at is None:
            log.warning(
                "docker_events_lost",
                service=self._service,
                kind=exc.kind,
                error=str(exc),
                retry=f"with backoff, up to {RETRY_MAX:g}s apart; the poll carries on meanwhile",
            )
            self._lost_at, self._lost_kind = now, exc.kind

    def _note_connected(self) -> None:
        if self._lost_at is None:
            if not self.connected.is_set():
                log.info("docker_events_connected", service=self._service)
            return
        outage = asyncio.get_running_loop().time() - self._lost_at
        log.info(
            "docker_events_connected",
            service=self._service,
            was=self._lost_kind,
            outage_s=round(outage, 1),
        )
        self._lost_at = self._lost_kind = None
