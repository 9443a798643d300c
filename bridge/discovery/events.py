"""Follows Docker's /events, so that a change of the service's tasks is looked at at once.

Three kinds of events say something about the service's tasks:
- `service` events of the service (scope swarm: every manager emits them);
- `node` events (scope swarm): a node down or ready, drained or active, joining or leaving.
  Every manager emits them in the same millisecond the task list changes, so they are how a
  task on another node is seen to go, or its replacement to come;
- `container` events labelled with the service, of what happens to a task's container (create,
  start, die, stop, destroy, health_status, ...). They are node-local: only the engine that runs
  the container emits them, so a manager that runs no agent sees none.
Anything else says nothing about the tasks and triggers nothing: a container's exec_* events (a
HEALTHCHECK probe every few seconds), attach, resize, a node's leader or reachability change.
Swarm has no task events, so the poll stays as the safety net, and a relevant event starts a
burst of rounds (bridge/discovery/followup.py) rather than one.

One stream carries every type and is filtered here: Docker ANDs filter keys, so one query
cannot ask for "service events of S, node events, or container events labelled S". The stream
is read on the manager being read (bridge/discovery/managers.py), and opened again on the new
one when that changes.

A stream that cannot be opened, breaks, or is closed by the daemon is opened again with backoff
(from RETRY_MIN up to RETRY_MAX seconds), at once when the manager being read changes. An
outage is one line when it begins and one when it ends; it ends when a stream has stayed open
for STABLE seconds (a stream closed as soon as it opens has not come back). A reconnection asks
for a round, for whatever happened in between. The follower never stops discovery and never
delays shutdown (the Docker edge bounds every read).
"""

from __future__ import annotations

import asyncio
import json
import random
from collections.abc import Callable, Mapping
from typing import Any

import structlog

from bridge.discovery.managers import DockerManagers
from bridge.edges.docker_api import EventStream
from bridge.errors import DockerAPIError

__all__ = ["RETRY_MAX", "RETRY_MIN", "STABLE", "EventFollower", "is_relevant"]

log = structlog.get_logger(__name__)

_SERVICE_LABEL = "com.docker.swarm.service.name"
_FILTERS = json.dumps({"type": ["service", "node", "container"]})
# What can change a task: its container's life. exec_*, attach, resize, top, ... cannot.
_TASK_ACTIONS = frozenset(
    {
        "create",
        "start",
        "restart",
        "kill",
        "die",
        "oom",
        "stop",
        "destroy",
        "pause",
        "unpause",
        "health_status",
    }
)
# A node update that changes only these says nothing about where tasks run.
_NODE_NOISE = ("leader.", "reachability.")
# Seconds between attempts to open the stream again: doubling, with jitter, up to the max.
RETRY_MIN, RETRY_MAX = 0.1, 30.0
# A stream open this long has come back (the outage is over, the backoff starts afresh).
STABLE = 5.0


def is_relevant(event: Mapping[str, Any], service: str) -> bool:
    """Whether an event says something about the service's tasks (the module docstring)."""
    actor = event.get("Actor") or {}
    attributes: Mapping[str, str] = actor.get("Attributes") or {}
    kind = event.get("Type")
    if kind == "service":
        return attributes.get("name") == service
    if kind == "node":
        changed = [k for k in attributes if k.endswith((".old", ".new"))]
        return not changed or not all(k.startswith(_NODE_NOISE) for k in changed)
    if kind == "container" and attributes.get(_SERVICE_LABEL) == service:
        action = str(event.get("Action") or "")
        return action.split(":", 1)[0] in _TASK_ACTIONS
    return False


class EventFollower:
    """Calls `on_event()` for each relevant event and `catch_up()` when a stream (re)opens, on
    the event loop, until cancelled."""

    def __init__(
        self,
        managers: DockerManagers,
        service: str,
        *,
        on_event: Callable[[], None],
        catch_up: Callable[[], None],
    ) -> None:
        self._managers = managers
        self._service = service
        self._on_event, self._catch_up = on_event, catch_up
        self.connected = asyncio.Event()  # a stream is open
        self._lost: tuple[float, str] | None = None  # the outage: (since, kind)
        self._announced = False  # the first stream's line was written
        self._stable = asyncio.Event()  # the open stream has lasted STABLE seconds

    async def run(self) -> None:
        """Follow events for ever, opening the stream again after each loss."""
        loop = asyncio.get_running_loop()
        delay = RETRY_MIN
        while True:
            address = self._managers.current
            try:
                address = await self._follow()
            except DockerAPIError as exc:
                if self.connected.is_set():
                    self._catch_up()  # a round tells whether the manager itself is gone
                self.connected.clear()
                self._note_lost(exc, loop.time())
            if self._stable.is_set():
                delay = RETRY_MIN
            moved = asyncio.ensure_future(self._managers.moved(address))
            try:
                await asyncio.wait({moved}, timeout=delay * random.uniform(0.8, 1.2))
            finally:
                moved.cancel()
            if not moved.done() or moved.cancelled():
                delay = min(delay * 2, RETRY_MAX)
            else:
                delay = RETRY_MIN  # another manager: try it at once

    async def _follow(self) -> str:
        """Read one stream until it ends or the manager being read changes; its address."""
        self._stable.clear()
        async with self._managers.events(_FILTERS) as (address, stream):
            self.connected.set()
            self._catch_up()  # events may have been missed while no stream was open
            stable = asyncio.get_running_loop().call_later(STABLE, self._note_stable)
            if not self._announced:
                self._announced = True
                log.info("docker_events_connected", service=self._service, host=address)
            reading = asyncio.ensure_future(self._read(stream))
            moved = asyncio.ensure_future(self._managers.moved(address))
            try:
                await asyncio.wait({reading, moved}, return_when=asyncio.FIRST_COMPLETED)
            finally:
                stable.cancel()
                moved.cancel()
                reading.cancel()
                await asyncio.gather(reading, moved, return_exceptions=True)
            failure = reading.exception() if reading.done() and not reading.cancelled() else None
            if failure is not None:
                raise failure
            self.connected.clear()
            return address

    async def _read(self, stream: EventStream) -> None:
        async for event in stream:
            if is_relevant(event, self._service):
                self._on_event()

    def _note_lost(self, exc: DockerAPIError, now: float) -> None:
        if self._lost is None:
            log.warning(
                "docker_events_lost",
                service=self._service,
                kind=exc.kind,
                error=str(exc),
                retry=f"with backoff, up to {RETRY_MAX:g}s apart; the poll carries on meanwhile",
            )
            self._lost = (now, exc.kind)  # the recovery line names how the outage began

    def _note_stable(self) -> None:
        self._stable.set()
        if self._lost is None:
            return
        since, kind = self._lost
        log.info(
            "docker_events_connected",
            service=self._service,
            host=self._managers.current,
            was=kind,
            outage_s=round(asyncio.get_running_loop().time() - since, 1),
        )
        self._lost = None
