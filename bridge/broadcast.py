"""The broadcaster: a council opportunity reaches every agent, over the bus or by HTTP.

1. The opportunity is published on `<prefix>.council.opportunities` with a reply inbox; agents on
   the bus ack there. Acks are gathered until every agent on the bus has acked, or
   BRIDGE_BUS_ACK_WAIT passes.
2. Every agent not on the bus, and every bus agent that did not ack, gets an HTTP POST (one pooled
   client, BRIDGE_HTTP_CONCURRENCY in flight, BRIDGE_HTTP_TIMEOUT each, `Idempotency-Key`, one
   retry on a connection error). A role claim in the answer is republished on the claims subject.
3. The report counts each agent once, whatever paths reached it.
Agents marked `healthy: false` are not called: they are reported as failed, "unhealthy".
"""

from __future__ import annotations

import asyncio
import dataclasses
import time
from collections.abc import Callable, Sequence

import aiohttp
import httpx
import msgspec
import nats.errors
import structlog
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg

from bridge.agent_http import AgentHTTP
from bridge.config import Settings
from bridge.gc_tuning import fewer_collections
from bridge.metrics import Metrics
from bridge.models import (
    ACK_DECODER,
    CLAIM_DECODER,
    BroadcastReport,
    CouncilOpportunity,
    FailedDelivery,
    encode,
    now_rfc3339,
)
from bridge.subjects import Names

__all__ = ["Broadcaster", "Target"]

log = structlog.get_logger(__name__)


@dataclasses.dataclass(frozen=True)
class Target:
    """One agent to reach. `bus_id` is its presence id when it is on the bus."""

    agent_id: str
    endpoint: str | None
    bus_id: str | None = None
    healthy: bool | None = None


@dataclasses.dataclass
class _Delivery:
    via_bus: set[str] = dataclasses.field(default_factory=set)
    via_http: set[str] = dataclasses.field(default_factory=set)
    failed: dict[str, FailedDelivery] = dataclasses.field(default_factory=dict)
    unregistered_acks: int = 0


def _error_text(exc: BaseException) -> str:
    cause = exc.__cause__
    if isinstance(exc, httpx.TimeoutException | TimeoutError) and not isinstance(
            cause, aiohttp.ClientConnectionError | OSError):
        return "timeout"
    if isinstance(cause, aiohttp.ServerDisconnectedError | ConnectionResetError) or isinstance(
            exc, httpx.RemoteProtocolError | httpx.ReadError):
        return "connection reset"
    if isinstance(exc, httpx.ConnectError) or isinstance(cause, aiohttp.ClientConnectorError):
        reason = str(cause or exc)
        return f"connection failed: {reason}" if reason else "connection failed"
    return f"{type(exc).__name__}: {exc}"


class Broadcaster:
    """Sends opportunities to the targets that `targets()` returns at the time of the call."""

    def __init__(self, nc: NATS, names: Names, settings: Settings, http: AgentHTTP,
                 targets: Callable[[], Sequence[Target]], *,
                 metrics: Metrics | None = None) -> None:
        self._nc = nc
        self._names = names
        self._settings = settings
        self._http = http
        self._targets = targets
        self._metrics = metrics
        self._limit = asyncio.Semaphore(settings.http_concurrency)

    async def broadcast(self, opportunity: CouncilOpportunity) -> BroadcastReport:
        """Deliver one opportunity to every target and report who got it."""
        started = time.perf_counter()
        targets = list({t.agent_id: t for t in self._targets()}.values())
        payload = encode(opportunity)
        result = _Delivery()
        with fewer_collections():
            await self._over_bus(opportunity, payload, targets, result)
            await self._over_http(opportunity, payload, targets, result)
        report = BroadcastReport(
            opportunity_id=opportunity.id, total_agents=len(targets),
            success_count=len(result.via_bus) + len(result.via_http),
            via_bus=len(result.via_bus), via_http=len(result.via_http),
            failed=sorted(result.failed.values(), key=lambda f: f.agent_id),
            unregistered_acks=result.unregistered_acks,
            duration_ms=round((time.perf_counter() - started) * 1000, 1), at=now_rfc3339())
        self._count(report)
        log.info("broadcast_done", opportunity_id=opportunity.id, total=report.total_agents,
                 via_bus=report.via_bus, via_http=report.via_http, failed=len(report.failed),
                 duration_ms=report.duration_ms)
        return report

    def _count(self, report: BroadcastReport) -> None:
        if self._metrics is None:
            return
        self._metrics.deliveries.labels(path="bus", outcome="ok").inc(report.via_bus)
        self._metrics.deliveries.labels(path="http", outcome="ok").inc(report.via_http)
        self._metrics.deliveries.labels(path="any", outcome="failed").inc(len(report.failed))

    async def _over_bus(self, opportunity: CouncilOpportunity, payload: bytes,
                        targets: list[Target], result: _Delivery) -> None:
        waiting = {t.bus_id: t.agent_id for t in targets if t.bus_id}
        known = set(waiting)
        inbox = self._nc.new_inbox()
        everyone = asyncio.Event()
        if not waiting:
            everyone.set()

        async def on_ack(msg: Msg) -> None:
            try:
                ack = ACK_DECODER.decode(msg.data)
            except msgspec.DecodeError:
                return
            if ack.opportunity_id != opportunity.id:
                return
            agent_id = waiting.pop(ack.agent_id, None)
            if agent_id is not None:
                result.via_bus.add(agent_id)
                if not waiting:
                    everyone.set()
            elif ack.agent_id not in known:
                result.unregistered_acks += 1  # a second ack of a known agent is not counted

        sub = await self._nc.subscribe(inbox, cb=on_ack)
        try:
            await self._nc.publish(self._names.opportunities, payload, reply=inbox)
            # Without bus agents, an unregistered listener may still ack: keep the window short.
            wait = self._settings.bus_ack_wait if waiting else 0.0
            try:
                async with asyncio.timeout(wait):
                    await everyone.wait()
            except TimeoutError:
                pass
        except (nats.errors.Error, OSError) as exc:
            log.warning("broadcast_bus_failed", opportunity_id=opportunity.id, error=repr(exc))
        finally:
            await sub.unsubscribe()

    async def _over_http(self, opportunity: CouncilOpportunity, payload: bytes,
                         targets: list[Target], result: _Delivery) -> None:
        headers = self._http.post_headers(payload, {"Idempotency-Key": opportunity.id})
        calls: list[Target] = []
        for target in targets:
            if target.agent_id in result.via_bus:
                continue
            if target.healthy is False:
                result.failed[target.agent_id] = FailedDelivery(
                    agent_id=target.agent_id, endpoint=target.endpoint,
                    error="unhealthy: not called")
            elif not target.endpoint:
                result.failed[target.agent_id] = FailedDelivery(
                    agent_id=target.agent_id, endpoint=None,
                    error="no ack on the bus and no endpoint")
            else:
                calls.append(target)
        # As many workers as calls may be in flight, each taking the next target: the tasks of
        # a broadcast are bounded by BRIDGE_HTTP_CONCURRENCY, not by the size of the fleet.
        pending = iter(calls)

        async def worker() -> None:
            for target in pending:
                await self._post(opportunity, payload, headers, target, result)

        async with asyncio.TaskGroup() as group:
            for _ in range(min(self._settings.http_concurrency, len(calls))):
                group.create_task(worker())

    async def _post(self, opportunity: CouncilOpportunity, payload: bytes,
                    headers: httpx.Headers, target: Target, result: _Delivery) -> None:
        assert target.endpoint is not None
        url = target.endpoint + self._settings.opportunity_path
        async with self._limit:
            started = time.perf_counter()
            try:
                status, body = await self._send(url, payload, headers)
            except (httpx.HTTPError, OSError) as exc:
                result.failed[target.agent_id] = FailedDelivery(
                    agent_id=target.agent_id, endpoint=target.endpoint, error=_error_text(exc))
                return
            finally:
                if self._metrics is not None:
                    self._metrics.http_latency.observe(time.perf_counter() - started)
        if not 200 <= status < 300:
            result.failed[target.agent_id] = FailedDelivery(
                agent_id=target.agent_id, endpoint=target.endpoint, error=f"HTTP {status}")
            return
        result.via_http.add(target.agent_id)
        await self._republish_claim(opportunity, body)

    async def _send(self, url: str, payload: bytes, headers: httpx.Headers) -> tuple[int, bytes]:
        """POST once, and once more if the connection failed; the body is read up to 64 KiB.

        Each attempt has BRIDGE_HTTP_TIMEOUT for the whole call, body included (AgentHTTP.post).
        """
        for attempt in (1, 2):
            try:
                return await self._http.post(url, payload, headers)
            except httpx.ConnectError:
                if attempt == 2:
                    raise
            except httpx.TransportError as exc:
                # aiohttp reports a refused or dropped connection as a connection error.
                if attempt == 2 or not isinstance(exc.__cause__, aiohttp.ClientConnectionError):
                    raise
        raise AssertionError("unreachable")

    async def _republish_claim(self, opportunity: CouncilOpportunity, body: bytes) -> None:
        if not body.lstrip().startswith(b"{"):
            return
        try:
            claim = CLAIM_DECODER.decode(body)
        except msgspec.DecodeError:
            return  # an answer that is not a claim is just an acknowledgement
        try:
            await self._nc.publish(self._names.claims(opportunity.id), encode(claim))
        except (nats.errors.Error, OSError) as exc:
            log.warning("claim_republish_failed", opportunity_id=opportunity.id,
                        agent_id=claim.agent_id, error=repr(exc))
