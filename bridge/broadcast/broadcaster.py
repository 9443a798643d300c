"""The broadcaster: a council opportunity reaches every agent, over the bus or by HTTP.

1. The opportunity is published on `<prefix>.council.opportunities`; agents on the bus ack on
   `<prefix>.council.<id>.acks.<agent id>`. Acks are gathered until every agent on the bus has
   acked, or BRIDGE_BUS_ACK_WAIT passes.
2. Every discovered agent not on the bus, and every one on the bus that did not ack, gets an
   HTTP POST at its discovered endpoint (one pooled client, BRIDGE_HTTP_CONCURRENCY in flight,
   BRIDGE_HTTP_TIMEOUT each, `Idempotency-Key`, one retry when no answer came). A role claim in
   the answer is republished on `<prefix>.council.<id>.claims.<agent id>` of the agent that
   answered.
   The claim is arbitrated first (bridge/council/, through `Councils`), like a claim on the bus;
   the republished copy carries the header `Chorus-Via: http`, so that it is not taken again.
3. The report counts each agent once, whatever paths reached it.
Before anything is sent, the opportunity is recorded in the councils bucket (`Councils.record`):
an opportunity that cannot be recorded reaches nobody.
Agents marked `healthy: false` are not called: they are reported as failed, "unhealthy".

Trust (DESIGN.md): an ack counts for the agent its subject names, whatever its body says, and
only for an agent on the bus: every discovered agent not on the bus is called by HTTP, so an ack
published on its subject by another cannot hide it. The only URLs called are discovered endpoints
(`Target.endpoint`, never a presence entry's); an agent is `via_bus` only by its own ack and
`via_http` only by its own endpoint's 2xx.
"""

from __future__ import annotations

import asyncio
import dataclasses
import time
from collections.abc import Callable, Sequence

import msgspec
import nats.errors
import structlog
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg

from bridge.broadcast.councils import Councils
from bridge.broadcast.gc_tuning import fewer_collections
from bridge.broadcast.targets import Target
from bridge.config import Settings
from bridge.contract.messages import (
    CLAIM_DECODER,
    MAX_ACK_BYTES,
    MAX_CLAIM_BYTES,
    VIA_HEADER,
    BroadcastReport,
    Claim,
    CouncilOpportunity,
    FailedDelivery,
    encode,
    now_rfc3339,
)
from bridge.contract.names import Names
from bridge.edges.agent_http import AgentHTTP, AgentURL, PostHeaders, agent_url
from bridge.errors import AgentHTTPError
from bridge.ops.metrics import Metrics

__all__ = ["Broadcaster"]

log = structlog.get_logger(__name__)


@dataclasses.dataclass
class _Delivery:
    via_bus: set[str] = dataclasses.field(default_factory=set)
    via_http: set[str] = dataclasses.field(default_factory=set)
    failed: dict[str, FailedDelivery] = dataclasses.field(default_factory=dict)
    unregistered_acks: int = 0


class Broadcaster:
    """Sends opportunities to the targets that `targets()` returns at the time of the call."""

    def __init__(
        self,
        nc: NATS,
        names: Names,
        settings: Settings,
        http: AgentHTTP,
        targets: Callable[[], Sequence[Target]],
        *,
        councils: Councils,
        metrics: Metrics | None = None,
    ) -> None:
        self._nc = nc
        self._councils = councils
        self._names = names
        self._settings = settings
        self._http = http
        self._targets = targets
        self._metrics = metrics
        self._limit = asyncio.Semaphore(settings.http_concurrency)

    async def broadcast(self, opportunity: CouncilOpportunity) -> BroadcastReport:
        """Record one opportunity, deliver it to every target and report who got it.
        CouncilRefusedError or NatsError (from `Councils.record`) when it cannot be recorded:
        then it was sent to nobody."""
        started = time.perf_counter()
        await self._councils.record(opportunity)
        targets = list({t.agent_id: t for t in self._targets()}.values())
        payload = encode(opportunity)
        result = _Delivery()
        with fewer_collections():
            await self._over_bus(opportunity, payload, targets, result)
            await self._over_http(opportunity, payload, targets, result)
        report = BroadcastReport(
            opportunity_id=opportunity.id,
            total_agents=len(targets),
            success_count=len(result.via_bus) + len(result.via_http),
            via_bus=len(result.via_bus),
            via_http=len(result.via_http),
            failed=sorted(result.failed.values(), key=lambda f: f.agent_id),
            unregistered_acks=result.unregistered_acks,
            duration_ms=round((time.perf_counter() - started) * 1000, 1),
            at=now_rfc3339(),
        )
        self._count(report)
        log.info(
            "broadcast_done",
            opportunity_id=opportunity.id,
            total=report.total_agents,
            via_bus=report.via_bus,
            via_http=report.via_http,
            failed=len(report.failed),
            duration_ms=report.duration_ms,
        )
        return report

    def _count(self, report: BroadcastReport) -> None:
        if self._metrics is None:
            return
        self._metrics.deliveries.labels(path="bus", outcome="ok").inc(report.via_bus)
        self._metrics.deliveries.labels(path="http", outcome="ok").inc(report.via_http)
        self._metrics.deliveries.labels(path="any", outcome="failed").inc(len(report.failed))

    async def _over_bus(
        self,
        opportunity: CouncilOpportunity,
        payload: bytes,
        targets: list[Target],
        result: _Delivery,
    ) -> None:
        on_bus = {t.agent_id for t in targets if t.on_bus}
        waiting = set(on_bus)
        known = {t.agent_id for t in targets}
        strangers: set[str] = set()
        everyone = asyncio.Event()
        if not waiting:
            everyone.set()

        async def on_ack(msg: Msg) -> None:
            if len(msg.data) > MAX_ACK_BYTES:
                # Acks are bounded (DESIGN.md, "Trust"): one this large is no ack.
                if self._metrics is not None:
                    self._metrics.acks_dropped.labels(reason="too_large").inc()
                return
            # The subject names the agent; the body is that agent's word and decides nothing.
            agent_id = self._names.agent_of(msg.subject, opportunity.id, "acks")
            if agent_id is None:
                return
            if agent_id in on_bus:
                result.via_bus.add(agent_id)
                waiting.discard(agent_id)
                if not waiting:
                    everyone.set()
            elif agent_id in known:
                # An agent not on the bus gets its POST whatever is said on its subject: without
                # the auth callout anyone may publish there, and presence is the bus's own word.
                return
            elif agent_id not in strangers:
                strangers.add(agent_id)
                result.unregistered_acks += 1

        sub = await self._nc.subscribe(self._names.acks(opportunity.id, "*"), cb=on_ack)
        try:
            await self._nc.publish(self._names.opportunities, payload)
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

    async def _over_http(
        self,
        opportunity: CouncilOpportunity,
        payload: bytes,
        targets: list[Target],
        result: _Delivery,
    ) -> None:
        headers = self._http.post_headers(payload, {"Idempotency-Key": opportunity.id})
        calls: list[Target] = []
        for target in targets:
            if target.agent_id in result.via_bus:
                continue
            if target.healthy is False:
                result.failed[target.agent_id] = FailedDelivery(
                    agent_id=target.agent_id,
                    endpoint=target.endpoint,
                    error="unhealthy: not called",
                )
            elif not target.endpoint:
                result.failed[target.agent_id] = FailedDelivery(
                    agent_id=target.agent_id, endpoint=None, error="no ack on the bus"
                )
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

    async def _post(
        self,
        opportunity: CouncilOpportunity,
        payload: bytes,
        headers: PostHeaders,
        target: Target,
        result: _Delivery,
    ) -> None:
        assert target.endpoint is not None
        async with self._limit:
            started = time.perf_counter()
            try:
                url = agent_url(target.endpoint, self._settings.opportunity_path)
                status, body = await self._send(url, payload, headers)
            except AgentHTTPError as exc:
                result.failed[target.agent_id] = FailedDelivery(
                    agent_id=target.agent_id, endpoint=target.endpoint, error=exc.reason
                )
                return
            finally:
                if self._metrics is not None:
                    self._metrics.http_latency.observe(time.perf_counter() - started)
        if not 200 <= status < 300:
            result.failed[target.agent_id] = FailedDelivery(
                agent_id=target.agent_id, endpoint=target.endpoint, error=f"HTTP {status}"
            )
            return
        result.via_http.add(target.agent_id)
        await self._republish_claim(opportunity, target.agent_id, body)

    async def _send(self, url: AgentURL, payload: bytes, headers: PostHeaders) -> tuple[int, bytes]:
        """POST once, and once more if no answer came (refused, reset); the body is read up
        to 64 KiB. Each attempt has BRIDGE_HTTP_TIMEOUT for the whole call (AgentHTTP.post).
        """
        try:
            return await self._http.post(url, payload, headers)
        except AgentHTTPError as exc:
            if not exc.retryable:
                raise
        return await self._http.post(url, payload, headers)

    async def _republish_claim(
        self, opportunity: CouncilOpportunity, agent_id: str, body: bytes
    ) -> None:
        """A claim in an HTTP answer, on the claims subject of the agent that answered, and in
        its name: whatever agent the body names, that is who claimed."""
        if not body.lstrip().startswith(b"{"):
            return
        if len(body) > MAX_CLAIM_BYTES:
            # Claims are bounded (DESIGN.md, "Trust"); an answer this long is no claim.
            if self._metrics is not None:
                self._metrics.count_claim("dropped", "too_large")
            return
        try:
            claimed = CLAIM_DECODER.decode(body)
        except msgspec.DecodeError:
            return  # an answer that is not a claim is just an acknowledgement
        if claimed.agent_id != agent_id:
            log.warning(
                "claim_names_another_agent",
                opportunity_id=opportunity.id,
                agent_id=agent_id,
                named=claimed.agent_id[:128],
            )
        await self._councils.claim(opportunity.id, agent_id, claimed.role, via="http")
        claim = Claim(role=claimed.role, agent_id=agent_id)
        try:
            await self._nc.publish(
                self._names.claims(opportunity.id, agent_id),
                encode(claim),
                headers={VIA_HEADER: "http"},
            )
        except (nats.errors.Error, OSError) as exc:
            log.warning(
                "claim_republish_failed",
                opportunity_id=opportunity.id,
                agent_id=agent_id,
                error=repr(exc),
            )
