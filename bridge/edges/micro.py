"""The NATS micro service `chorus-bridge` (nats.micro, ADR-32): the only importer of nats.micro.

One service, whatever endpoints the rooms contribute (`broadcast`, `council`, ...): each room
hands an `Endpoint` (a name, a subject, a handler), and `MicroService.run()` serves them all,
so `nats micro ls|info|stats` show one service with every endpoint. Each request is handled in
a task of the service's TaskGroup (a broadcast takes seconds and must not hold up the next
request), and is counted here when its task ends, since nats.micro counts only the time its
handler takes to return.
"""

from __future__ import annotations

import asyncio
import dataclasses
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence

import nats.errors
import structlog
from nats.aio.client import Client as NATS
from nats.micro.request import Request as MicroRequest
from nats.micro.service import EndpointStats, Service, ServiceConfig

__all__ = ["QUEUE_GROUP", "STOP_TIMEOUT", "Endpoint", "MicroService", "Request"]

log = structlog.get_logger(__name__)

# Several bridges may subscribe; the queue group hands each request to one of them (and the
# service runs only on the leader, so that is the leader).
QUEUE_GROUP = "chorus-bridge"
# Stopping the service unsubscribes its endpoints and flushes: a millisecond when NATS answers.
# When it does not (a frozen server at SIGTERM), it is waited for this long: the whole shutdown
# must end well within Docker's 10 s (bridge/edges/nats_client.py bounds the rest). The stop is
# left to finish by itself, never cancelled: a cancelled flush leaves its PONG future queued,
# and the PONG of a server that answers again then ends nats-py's read loop. Left alone, the
# flush times out (10 s) only after the client's pings have replaced a connection that silent.
STOP_TIMEOUT = 1.5


class Request:
    """One request to an endpoint: its data, and the ways to answer it. An answer that cannot
    be sent (no reply subject, NATS gone) is logged, never raised: the requester then waits
    out its timeout, and nothing else can be done for it."""

    def __init__(self, request: MicroRequest) -> None:
        self._request = request
        self.error: str | None = None

    @property
    def data(self) -> bytes:
        return self._request.data

    async def respond(self, data: bytes, headers: dict[str, str] | None = None) -> None:
        await self._send(self._request.respond(data, headers=headers))

    async def respond_error(self, code: str, description: str, data: bytes) -> None:
        """An error answer: micro's headers Nats-Service-Error-Code and Nats-Service-Error
        (the description's first line), and `data` as the body; counted as an error."""
        first = description.splitlines()[0] if description else "refused"
        self.error = first
        await self._send(self._request.respond_error(code, first, data=data))

    async def _send(self, answer: Awaitable[None]) -> None:
        try:
            await answer
        except ValueError:
            return  # a publish without a reply inbox: nobody to answer
        except (nats.errors.Error, OSError) as exc:
            log.warning("micro_reply_failed", error=repr(exc))


Handler = Callable[[Request], Awaitable[None]]


@dataclasses.dataclass(frozen=True)
class Endpoint:
    """An endpoint a room contributes: `handle` answers one request (it may take its time)."""

    name: str
    subject: str
    handle: Handler


class _Counts:
    """One endpoint's requests, errors and time, for micro STATS."""

    def __init__(self) -> None:
        self.requests = self.errors = 0
        self.processing_ns = 0
        self.last_error = ""

    def done(self, started_ns: int, error: str | None) -> None:
        self.requests += 1
        self.processing_ns += time.perf_counter_ns() - started_ns
        if error is not None:
            self.errors += 1
            self.last_error = error

    def fill(self, stats: EndpointStats) -> dict[str, int]:
        stats.num_requests, stats.num_errors = self.requests, self.errors
        stats.processing_time = self.processing_ns
        stats.average_processing_time = self.processing_ns // max(self.requests, 1)
        stats.last_error = self.last_error or None
        return {"refused": self.errors}


class MicroService:
    """The service, serving `endpoints` while `run()` runs (on the leader, for its term)."""

    def __init__(
        self,
        nc: NATS,
        *,
        name: str,
        version: str,
        description: str,
        metadata: Mapping[str, str],
        endpoints: Sequence[Endpoint],
    ) -> None:
        self._nc = nc
        self._config = ServiceConfig(
            name=name,
            version=version,
            queue_group=QUEUE_GROUP,
            description=description,
            metadata=dict(metadata),
            stats_handler=self._fill,
        )
        self._endpoints = list(endpoints)
        self._counts = {endpoint.name: _Counts() for endpoint in self._endpoints}
        # Set while every endpoint is subscribed (tests and benchmarks wait for it).
        self.subscribed = asyncio.Event()

    def _fill(self, stats: EndpointStats) -> dict[str, int]:
        counts = self._counts.get(stats.name)
        return counts.fill(stats) if counts is not None else {}

    async def run(self) -> None:
        """Serve until cancelled; the service is gone from the bus when this returns."""
        service = Service(self._nc, self._config)
        try:
            async with asyncio.TaskGroup() as tg:
                # The endpoints first, then $SRV discovery (start() subscribes and flushes):
                # requests are taken from the earliest moment.
                for endpoint in self._endpoints:
                    await service.add_endpoint(
                        name=endpoint.name,
                        subject=endpoint.subject,
                        handler=self._spawner(tg, endpoint),
                    )
                await service.start()
                self.subscribed.set()
                log.info(
                    "micro_service_ready",
                    service=self._config.name,
                    service_id=service.id,
                    endpoints=",".join(e.subject for e in self._endpoints),
                )
                await asyncio.Event().wait()  # until cancelled
        finally:
            self.subscribed.clear()
            stopping = asyncio.ensure_future(service.stop())
            stopping.add_done_callback(_stopped)
            await asyncio.wait({stopping}, timeout=STOP_TIMEOUT)

    def _spawner(
        self, tg: asyncio.TaskGroup, endpoint: Endpoint
    ) -> Callable[[MicroRequest], Awaitable[None]]:
        counts = self._counts[endpoint.name]

        async def serve(request: Request, started: int) -> None:
            try:
                await endpoint.handle(request)
            except Exception as exc:  # a bug must cost this request, never the service
                log.exception("micro_request_failed", endpoint=endpoint.name)
                await request.respond_error("500", f"the bridge failed: {exc!r}", b"")
            finally:
                counts.done(started, request.error)

        async def spawn(raw: MicroRequest) -> None:
            # Returns at once; the request is served (and counted) in a task of its own.
            tg.create_task(serve(Request(raw), time.perf_counter_ns()))

        return spawn


def _stopped(stop: asyncio.Future[None]) -> None:
    """The service's stop ended: NATS errors are expected then (the connection may be gone)."""
    if stop.cancelled():
        return
    error = stop.exception()
    if error is not None and not isinstance(error, nats.errors.Error | OSError):
        log.warning("micro_service_stop_failed", error=repr(error))
