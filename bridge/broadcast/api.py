"""The broadcast API: CouncilOpportunity requests on `<prefix>.bridge.broadcast`.

A request is validated before anything is sent: one that is not JSON, breaks the schema, or is
larger than 64 KiB gets `{"error": ..., "field": ...}` back and reaches no agent. Requests are
served concurrently, each in a task owned by the service's TaskGroup. The endpoint belongs to
the NATS micro service `chorus-bridge`, so `nats micro ls|info|stats` find it.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import time

import msgspec
import nats.errors
import structlog
from nats.aio.client import Client as NATS
from nats.micro.request import Request
from nats.micro.service import EndpointStats, Service, ServiceConfig

from bridge import __version__
from bridge.broadcast.broadcaster import Broadcaster
from bridge.contract.messages import (
    MAX_OPPORTUNITY_BYTES,
    OPPORTUNITY_DECODER,
    BroadcastReport,
    CouncilOpportunity,
    ErrorReply,
    encode,
)
from bridge.contract.names import SERVICE_NAME, Names
from bridge.ops.metrics import Metrics

__all__ = [
    "BROADCAST_QUEUE",
    "ENDPOINT_NAME",
    "BroadcastService",
    "encode_report",
    "validate_request",
]

log = structlog.get_logger(__name__)

# Several bridges may subscribe; the queue group hands each request to one of them.
BROADCAST_QUEUE = "chorus-bridge"
# The NATS micro service (`nats micro ls`) and its one endpoint (DESIGN.md, "Running it").
ENDPOINT_NAME = "broadcast"
# Stopping the service unsubscribes its endpoints and flushes: a millisecond when NATS answers.
# When it does not (a frozen server at SIGTERM), it is waited for this long: the whole
# shutdown must end well within Docker's 10 s (bridge/edges/nats_client.py bounds the rest).
# The stop is
# left to finish by itself, never cancelled: a cancelled flush leaves its PONG future queued,
# and the PONG of a server that answers again then ends nats-py's read loop. Left alone, the
# flush times out (10 s) only after the client's pings have replaced a connection that silent.
STOP_TIMEOUT = 1.5
_AT_PATH = re.compile(r" - at `(?P<path>[^`]*)`$")


def validate_request(data: bytes) -> CouncilOpportunity | ErrorReply:
    """The opportunity in a request, or the error reply that refuses it."""
    if len(data) > MAX_OPPORTUNITY_BYTES:
        return ErrorReply(
            error=f"request is {len(data)} bytes; the limit is {MAX_OPPORTUNITY_BYTES} (64 KiB)",
            field="$",
        )
    try:
        return OPPORTUNITY_DECODER.decode(data)
    except msgspec.ValidationError as exc:
        text = str(exc)
        match = _AT_PATH.search(text)
        field = match.group("path") if match else "$"
        message = text[: match.start()] if match else text
        if "regex" in message and field == "$.id":
            message = "id must match [A-Za-z0-9_-]{1,128}"
        return ErrorReply(error=message, field=field)
    except msgspec.DecodeError as exc:
        return ErrorReply(error=f"request is not valid JSON: {exc}", field="$")


# Bytes of the server's max_payload left for the reply's own framing.
_HEADROOM = 1024


def encode_report(report: BroadcastReport, limit: int) -> bytes:
    """The report's JSON in at most `limit` bytes (about the server's max_payload, 1 MiB by
    default): a report the server refuses would reach nobody. When its `failed` list does not
    fit (11,500 agents that all refuse connections are over 1 MiB), it is cut to the first
    failures that fit, and a log line says so. The counts stay exact: total_agents minus
    success_count is how many failed."""
    data = encode(report)
    if len(data) <= limit:
        return data
    failed = report.failed
    fits, too_many = 0, len(failed)
    while too_many - fits > 1:  # bisect the number of failures listed
        middle = (fits + too_many) // 2
        if len(encode(msgspec.structs.replace(report, failed=failed[:middle]))) <= limit:
            fits = middle
        else:
            too_many = middle
    log.warning(
        "broadcast_report_cut",
        opportunity_id=report.opportunity_id,
        failed=len(failed),
        listed=fits,
        limit_bytes=limit,
    )
    return encode(msgspec.structs.replace(report, failed=failed[:fits]))


class _Counts:
    """The endpoint's own counts: requests are answered from tasks, after nats.micro's
    handler has returned, so its timing and error counts would miss them."""

    def __init__(self) -> None:
        self.requests = self.errors = 0
        self.processing_ns = 0
        self.last_error = ""

    def done(self, started_ns: int, error: str | None = None) -> None:
        self.requests += 1
        self.processing_ns += time.perf_counter_ns() - started_ns
        if error is not None:
            self.errors += 1
            self.last_error = error

    def fill(self, stats: EndpointStats) -> dict[str, int]:
        """The stats_handler of nats.micro: our counts into the STATS answer."""
        stats.num_requests, stats.num_errors = self.requests, self.errors
        stats.processing_time = self.processing_ns
        stats.average_processing_time = self.processing_ns // max(self.requests, 1)
        stats.last_error = self.last_error or None
        return {"refused": self.errors}


class BroadcastService:
    """The NATS micro service `chorus-bridge`, endpoint `broadcast`: answers each request with
    a BroadcastReport, or refuses it with an ErrorReply and the micro error headers
    (Nats-Service-Error-Code 400 for a bad request, 500 for a failure of the bridge).

    Its endpoint is in queue group `chorus-bridge`, and the service runs only while this
    bridge leads, so one bridge answers each request and `nats micro ls` shows the leader.
    """

    def __init__(
        self, nc: NATS, names: Names, broadcaster: Broadcaster, *, metrics: Metrics | None = None
    ) -> None:
        self._nc = nc
        self._names = names
        self._broadcaster = broadcaster
        self._metrics = metrics
        self._counts = _Counts()
        self.subscribed = asyncio.Event()

    async def run(self) -> None:
        """Serve until cancelled; the service is gone from the bus when this returns."""
        service = Service(
            self._nc,
            ServiceConfig(
                name=SERVICE_NAME,
                version=__version__,
                queue_group=BROADCAST_QUEUE,
                description="Council opportunities to every agent, over the bus or HTTP",
                metadata={"prefix": self._names.prefix},
                stats_handler=self._counts.fill,
            ),
        )
        try:
            async with asyncio.TaskGroup() as tg:

                async def handle(request: Request) -> None:
                    # Returns at once: a broadcast takes seconds and must not hold up the next.
                    tg.create_task(self._handle(request))

                # The endpoint first, then $SRV discovery (start() subscribes and flushes):
                # requests are taken from the earliest moment, as a plain subscription was.
                await service.add_endpoint(
                    name=ENDPOINT_NAME, subject=self._names.broadcast, handler=handle
                )
                await service.start()
                self.subscribed.set()
                log.info(
                    "broadcast_api_ready",
                    subject=self._names.broadcast,
                    service=SERVICE_NAME,
                    service_id=service.id,
                )
                await asyncio.Event().wait()  # until cancelled
        finally:
            self.subscribed.clear()
            stopping = asyncio.ensure_future(service.stop())
            stopping.add_done_callback(_stopped)
            await asyncio.wait({stopping}, timeout=STOP_TIMEOUT)

    async def _handle(self, request: Request) -> None:
        started = time.perf_counter_ns()
        opportunity = validate_request(request.data)
        if isinstance(opportunity, ErrorReply):
            log.info("broadcast_refused", error=opportunity.error, field=opportunity.field)
            self._count("refused")
            self._counts.done(started, opportunity.error)
            await self._reply(
                request, encode(opportunity), code="400", description=opportunity.error
            )
            return
        try:
            report = await self._broadcaster.broadcast(opportunity)
        except asyncio.CancelledError:
            # The bridge stops (or leads no more) mid-broadcast: say so, rather than leave
            # the coordinator waiting out its timeout.
            await asyncio.shield(self._stopped_during(request, opportunity.id))
            raise
        except Exception as exc:  # a bug must cost this request, never the bridge
            log.exception("broadcast_failed", opportunity_id=opportunity.id)
            self._count("error")
            self._counts.done(started, repr(exc))
            error = ErrorReply(error=f"broadcast failed: {exc!r}")
            await self._reply(request, encode(error), code="500", description=error.error)
            return
        self._count("ok")
        self._counts.done(started)
        await self._reply(request, encode_report(report, self._nc.max_payload - _HEADROOM))

    async def _stopped_during(self, request: Request, opportunity_id: str) -> None:
        log.warning("broadcast_interrupted", opportunity_id=opportunity_id)
        error = ErrorReply(
            error="the bridge stopped before the broadcast ended; some agents may have got "
            "it: send it again"
        )
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(1.0):
                await self._reply(request, encode(error), code="503", description=error.error)

    def _count(self, outcome: str) -> None:
        if self._metrics is not None:
            self._metrics.broadcasts.labels(outcome=outcome).inc()

    async def _reply(
        self, request: Request, data: bytes, *, code: str | None = None, description: str = ""
    ) -> None:
        try:
            if code is None:
                await request.respond(data)
            else:
                # Header values are one line: the description is the error's first line.
                first = description.splitlines()[0] if description else "refused"
                await request.respond_error(code, first, data=data)
        except ValueError:
            return  # a publish without a reply inbox: nobody to answer
        except (nats.errors.Error, OSError) as exc:
            log.warning("broadcast_reply_failed", error=repr(exc))


def _stopped(stop: asyncio.Future[None]) -> None:
    """The service's stop ended: NATS errors are expected then (the connection may be gone)."""
    if stop.cancelled():
        return
    error = stop.exception()
    if error is not None and not isinstance(error, nats.errors.Error | OSError):
        log.warning("broadcast_api_stop_failed", error=repr(error))
