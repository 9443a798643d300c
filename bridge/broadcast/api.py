"""The broadcast API: CouncilOpportunity requests on `<prefix>.bridge.broadcast`.

A request is validated before anything is sent: one that is not JSON, breaks the schema, or is
larger than 64 KiB gets `{"error": ..., "field": ...}` back and reaches no agent.

Broadcasts are served MAX_IN_FLIGHT at a time, and at most MAX_WAITING more wait their turn
(in the order they came); beyond that a request is refused at once (`Nats-Service-Error-Code`
503, "busy", nothing sent): a burst of requests, or a coordinator that retries in a loop, then
costs the bridge a bounded amount of memory and its agents a bounded number of POSTs at once,
and the coordinator learns at once to send it again, rather than after its timeout. The endpoint
`broadcast` belongs to the NATS micro service `chorus-bridge` (bridge/edges/micro.py serves
it, with the other rooms' endpoints), so `nats micro ls|info|stats` find it.
"""

from __future__ import annotations

import asyncio
import contextlib
import re

import msgspec
import structlog
from nats.aio.client import Client as NATS

from bridge.broadcast.broadcaster import Broadcaster
from bridge.broadcast.councils import CouncilRefusedError
from bridge.contract.messages import (
    MAX_OPPORTUNITY_BYTES,
    OPPORTUNITY_DECODER,
    BroadcastReport,
    CouncilOpportunity,
    ErrorReply,
    encode,
    rfc3339_seconds,
)
from bridge.contract.names import Names
from bridge.edges.micro import QUEUE_GROUP, Endpoint, Request
from bridge.errors import LeaseLostError, NatsError
from bridge.ops.metrics import Metrics

__all__ = [
    "BROADCAST_QUEUE",
    "ENDPOINT_NAME",
    "BroadcastEndpoint",
    "encode_report",
    "validate_request",
]

log = structlog.get_logger(__name__)

# The queue group of the service's endpoints (kept under this name for tooling).
BROADCAST_QUEUE = QUEUE_GROUP
# The endpoint of the NATS micro service `chorus-bridge` (DESIGN.md, "Running it").
ENDPOINT_NAME = "broadcast"
# Broadcasts at once, and waiting for their turn (see above). Each fans out to every agent,
# under BRIDGE_HTTP_CONCURRENCY calls shared by all of them.
MAX_IN_FLIGHT = 4
MAX_WAITING = 16
_AT_PATH = re.compile(r" - at `(?P<path>[^`]*)`$")


def validate_request(data: bytes) -> CouncilOpportunity | ErrorReply:
    """The opportunity in a request, or the error reply that refuses it."""
    if len(data) > MAX_OPPORTUNITY_BYTES:
        return ErrorReply(
            error=f"request is {len(data)} bytes; the limit is {MAX_OPPORTUNITY_BYTES} (64 KiB)",
            field="$",
        )
    try:
        opportunity = OPPORTUNITY_DECODER.decode(data)
    except msgspec.ValidationError as exc:
        text = str(exc)
        match = _AT_PATH.search(text)
        field = match.group("path") if match else "$"
        message = text[: match.start()] if match else text
        if "regex" in message and field == "$.id":
            message = "id must match [A-Za-z0-9_-]{1,128}"
        elif "regex" in message and field.endswith(".name"):
            message = "a role name must match [A-Za-z0-9_-]{1,64}"
        return ErrorReply(error=message, field=field)
    except msgspec.DecodeError as exc:
        return ErrorReply(error=f"request is not valid JSON: {exc}", field="$")
    return _council_rules(opportunity) or opportunity


def _council_rules(opportunity: CouncilOpportunity) -> ErrorReply | None:
    """What the schema cannot say (DESIGN.md, "Councils"): role names are unique, and a
    deadline is an RFC 3339 time (the council expires then)."""
    seen: set[str] = set()
    for index, role in enumerate(opportunity.roles):
        if role.name in seen:
            return ErrorReply(
                error=f"role {role.name!r} is named twice; role names are unique",
                field=f"$.roles[{index}].name",
            )
        seen.add(role.name)
    if opportunity.deadline is not None:
        try:
            rfc3339_seconds(opportunity.deadline)
        except ValueError as exc:
            return ErrorReply(error=f"deadline is no RFC 3339 time: {exc}", field="$.deadline")
    return None


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


class BroadcastEndpoint:
    """The endpoint `broadcast`: answers each request with a BroadcastReport, or refuses it
    with an ErrorReply and the micro error headers (Nats-Service-Error-Code 400 for a bad
    request, 500 for a failure of the bridge, 503 when it stopped during the broadcast)."""

    def __init__(
        self, nc: NATS, names: Names, broadcaster: Broadcaster, *, metrics: Metrics | None = None
    ) -> None:
        self._nc = nc
        self._names = names
        self._broadcaster = broadcaster
        self._metrics = metrics
        self._slots = asyncio.Semaphore(MAX_IN_FLIGHT)
        self._admitted = 0  # in flight and waiting

    def endpoint(self) -> Endpoint:
        return Endpoint(name=ENDPOINT_NAME, subject=self._names.broadcast, handle=self.handle)

    async def handle(self, request: Request) -> None:
        opportunity = validate_request(request.data)
        if isinstance(opportunity, ErrorReply):
            log.info("broadcast_refused", error=opportunity.error, field=opportunity.field)
            await self._refuse(request, opportunity, "400", "refused")
            return
        if self._admitted >= MAX_IN_FLIGHT + MAX_WAITING:
            log.warning("broadcast_busy", opportunity_id=opportunity.id, in_flight=MAX_IN_FLIGHT)
            error = ErrorReply(
                error=f"busy: {MAX_IN_FLIGHT} broadcasts in flight and {MAX_WAITING} waiting; "
                "nothing was sent: send it again later",
            )
            await self._refuse(request, error, "503", "busy")
            return
        self._admitted += 1
        try:
            async with self._slots:
                await self._serve(request, opportunity)
        finally:
            self._admitted -= 1

    async def _serve(self, request: Request, opportunity: CouncilOpportunity) -> None:
        try:
            report = await self._broadcaster.broadcast(opportunity)
        except asyncio.CancelledError:
            # The bridge stops (or leads no more) mid-broadcast: say so, rather than leave
            # the coordinator waiting out its timeout.
            await asyncio.shield(self._stopped_during(request, opportunity.id))
            raise
        except CouncilRefusedError as exc:
            log.info("broadcast_refused", error=str(exc), field="$.id")
            await self._refuse(request, ErrorReply(error=str(exc), field="$.id"), "400", "refused")
            return
        except (NatsError, LeaseLostError) as exc:
            # The opportunity could not be recorded (or this bridge leads no more): nothing
            # was sent to anyone.
            log.warning("broadcast_not_recorded", opportunity_id=opportunity.id, error=str(exc))
            error = ErrorReply(
                error=f"the bridge could not record the opportunity ({exc}); nothing was "
                "sent: send it again"
            )
            await self._refuse(request, error, "503", "error")
            return
        except Exception as exc:  # a bug must cost this request, never the bridge
            log.exception("broadcast_failed", opportunity_id=opportunity.id)
            error = ErrorReply(error=f"broadcast failed: {exc!r}")
            await self._refuse(request, error, "500", "error")
            return
        self._count("ok")
        await request.respond(encode_report(report, self._nc.max_payload - _HEADROOM))

    async def _refuse(self, request: Request, error: ErrorReply, code: str, outcome: str) -> None:
        self._count(outcome)
        await request.respond_error(code, error.error, encode(error))

    async def _stopped_during(self, request: Request, opportunity_id: str) -> None:
        log.warning("broadcast_interrupted", opportunity_id=opportunity_id)
        error = ErrorReply(
            error="the bridge stopped before the broadcast ended; some agents may have got "
            "it: send it again"
        )
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(1.0):
                await request.respond_error("503", error.error, encode(error))

    def _count(self, outcome: str) -> None:
        if self._metrics is not None:
            self._metrics.broadcasts.labels(outcome=outcome).inc()
