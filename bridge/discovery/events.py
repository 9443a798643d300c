"""Follows Docker's /events so that a change of the service triggers a round at once.

Swarm emits `service` events (scope swarm) and node-local `container` events labelled with the
service name; there are no task events, so the poll stays as the safety net. One stream carries
both types and is filtered here: Docker ANDs filter keys, so a single query cannot ask for
"service events of S or container events labelled S". A broken or closed stream reconnects with
exponential backoff and never stops discovery.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable, Mapping
from typing import Any

import structlog
import tenacity

from bridge.discovery.swarm import SwarmDiscovery, classify_docker_error
from bridge.errors import DockerAPIError

__all__ = ["EventFollower", "is_relevant"]

log = structlog.get_logger(__name__)

_SERVICE_LABEL = "com.docker.swarm.service.name"
# A stream that stayed up this long counts as healthy: the next failure starts backoff afresh.
_HEALTHY_STREAM_SECONDS = 30.0


class _StreamClosed(Exception):
    """The daemon closed the event stream (e.g. it restarted)."""


class _HealthyStreamEnded(Exception):
    """A stream that had been up for a while ended: reconnect with the backoff reset."""


def is_relevant(event: Mapping[str, Any], service: str) -> bool:
    """Whether an event concerns the service: its own service events or its tasks' containers."""
    actor = event.get("Actor") or {}
    attributes = actor.get("Attributes") or {}
    kind = event.get("Type")
    if kind == "service":
        return bool(attributes.get("name") == service)
    if kind == "container":
        return bool(attributes.get(_SERVICE_LABEL) == service)
    return False


class EventFollower:
    """Calls `trigger()` (on the event loop) for each relevant event, until cancelled."""

    def __init__(self, swarm: SwarmDiscovery, service: str, trigger: Callable[[], None],
                 *, max_backoff: float = 30.0) -> None:
        self._swarm = swarm
        self._service = service
        self._trigger = trigger
        self._max_backoff = max_backoff
        self.connected = asyncio.Event()

    def _consume(self, stream: Any, loop: asyncio.AbstractEventLoop) -> None:
        for event in stream:
            if isinstance(event, dict) and is_relevant(event, self._service):
                loop.call_soon_threadsafe(self._trigger)
        raise _StreamClosed("the Docker daemon closed the event stream")

    async def _follow_once(self) -> None:
        loop = asyncio.get_running_loop()

        def open_stream() -> Any:
            return self._swarm.client().events(
                decode=True, filters={"type": ["service", "container"]})

        try:
            stream = await asyncio.to_thread(open_stream)
        except Exception as exc:
            raise classify_docker_error(exc, self._swarm.settings) from exc
        log.info("docker_events_connected", service=self._service)
        self.connected.set()
        opened = loop.time()
        # Events may have been missed while disconnected: one round catches up.
        self._trigger()
        try:
            await asyncio.to_thread(self._consume, stream, loop)
        except Exception as exc:
            lost = exc if isinstance(exc, _StreamClosed) else classify_docker_error(
                exc, self._swarm.settings)
            if loop.time() - opened >= _HEALTHY_STREAM_SECONDS:
                raise _HealthyStreamEnded(str(lost)) from exc
            raise lost from exc
        finally:
            self.connected.clear()
            # Closing the response unblocks the thread that is reading it.
            with contextlib.suppress(Exception):
                stream.close()

    async def run(self) -> None:
        """Follow events forever, reconnecting with exponential backoff."""
        while True:
            retrying = tenacity.AsyncRetrying(
                wait=tenacity.wait_exponential(multiplier=0.5, max=self._max_backoff)
                + tenacity.wait_random(0, 0.5),
                retry=tenacity.retry_if_exception_type((DockerAPIError, _StreamClosed)),
                before_sleep=self._log_retry)
            try:
                async for attempt in retrying:
                    with attempt:
                        await self._follow_once()
            except _HealthyStreamEnded as exc:
                # A stream that lived long reconnects at once, with the backoff reset.
                log.warning("docker_events_lost", service=self._service, error=str(exc),
                            retry_in_s=0)

    def _log_retry(self, state: tenacity.RetryCallState) -> None:
        exc = state.outcome.exception() if state.outcome else None
        wait = state.next_action.sleep if state.next_action else 0.0
        # One line per reconnect attempt: a state change of the stream, not a per-round line.
        log.warning("docker_events_lost", service=self._service, error=str(exc),
                    attempt=state.attempt_number, retry_in_s=round(wait, 2))
