"""The broadcast API: CouncilOpportunity requests on `<prefix>.bridge.broadcast`.

A request is validated before anything is sent: one that is not JSON, breaks the schema, or is
larger than 64 KiB gets `{"error": ..., "field": ...}` back and reaches no agent. Requests are
served concurrently, each in a task owned by the service's TaskGroup.
"""

from __future__ import annotations

import asyncio
import re

import msgspec
import nats.errors
import structlog
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg

from bridge.broadcast import Broadcaster
from bridge.metrics import Metrics
from bridge.models import (
    MAX_OPPORTUNITY_BYTES,
    OPPORTUNITY_DECODER,
    CouncilOpportunity,
    ErrorReply,
    encode,
)
from bridge.subjects import Names

__all__ = ["BROADCAST_QUEUE", "BroadcastService", "validate_request"]

log = structlog.get_logger(__name__)

# Several bridges may subscribe; the queue group hands each request to one of them.
BROADCAST_QUEUE = "chorus-bridge"
_AT_PATH = re.compile(r" - at `(?P<path>[^`]*)`$")


def validate_request(data: bytes) -> CouncilOpportunity | ErrorReply:
    """The opportunity in a request, or the error reply that refuses it."""
    if len(data) > MAX_OPPORTUNITY_BYTES:
        return ErrorReply(error=f"request is {len(data)} bytes; the limit is "
                          f"{MAX_OPPORTUNITY_BYTES} (64 KiB)", field="$")
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


class BroadcastService:
    """Answers broadcast requests with a BroadcastReport or an ErrorReply."""

    def __init__(self, nc: NATS, names: Names, broadcaster: Broadcaster, *,
                 metrics: Metrics | None = None) -> None:
        self._nc = nc
        self._names = names
        self._broadcaster = broadcaster
        self._metrics = metrics
        self.subscribed = asyncio.Event()

    async def run(self) -> None:
        sub = await self._nc.subscribe(self._names.broadcast, queue=BROADCAST_QUEUE)
        self.subscribed.set()
        log.info("broadcast_api_ready", subject=self._names.broadcast)
        try:
            async with asyncio.TaskGroup() as tg:
                async for msg in sub.messages:
                    tg.create_task(self._handle(msg))
        finally:
            self.subscribed.clear()
            await sub.unsubscribe()

    async def _handle(self, msg: Msg) -> None:
        request = validate_request(msg.data)
        if isinstance(request, ErrorReply):
            log.info("broadcast_refused", error=request.error, field=request.field)
            self._count("refused")
            await self._reply(msg, encode(request))
            return
        try:
            report = await self._broadcaster.broadcast(request)
        except Exception as exc:  # a bug must cost this request, never the bridge
            log.exception("broadcast_failed", opportunity_id=request.id)
            self._count("error")
            await self._reply(msg, encode(ErrorReply(error=f"broadcast failed: {exc!r}")))
            return
        self._count("ok")
        await self._reply(msg, encode(report))

    def _count(self, outcome: str) -> None:
        if self._metrics is not None:
            self._metrics.broadcasts.labels(outcome=outcome).inc()

    async def _reply(self, msg: Msg, data: bytes) -> None:
        if not msg.reply:
            return  # a publish without a reply inbox: nobody to answer
        try:
            await msg.respond(data)
        except (nats.errors.Error, OSError) as exc:
            log.warning("broadcast_reply_failed", error=repr(exc))
