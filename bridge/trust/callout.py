"""The NATS auth callout: an agent is admitted as the discovered agent whose address it has.

With BRIDGE_AUTH_CALLOUT=true the NATS server sends every connection that is not one of its
`auth_users` (bridge, coordinator, ops) to `$SYS.REQ.USER.AUTH`, as a JWT it signs (sealed to
our curve key when the server has `xkey` set). A connection with the shared agent credentials
whose address (`client_info.host`) is the address of exactly one agent in the agents bucket is
admitted as that agent: a user JWT, signed with the issuer seed, in the account AGENTS (its
`aud`), expiring within 10 minutes, that may publish only that agent's own subjects and read
what agents read, its own messages and its own inbox (`agent_permissions`). Anything else gets
an error answer, which the server turns into "Authorization Violation". Every request is
counted in `chorus_bridge_callouts_total` (bridge/ops/metrics.py), before it is answered.

Every bridge replica, leader or standby, answers from its own watch of the agents bucket, in
one queue group, so a leader change does not lock agents out (DESIGN.md, "Trust").

Only requests that can be trusted are answered (bridge/trust/requests.py: sealed where a curve
key is set, signed by a server of the cluster, not expired); what is issued counts from the
request's own `iat`, the server's clock, so the bridge's clock may be off by any amount without
a user or an answer being expired, or not yet valid, when the server reads it. Each reconnect
of a client is a new connection, and so a new request: the address is checked again every
time (bridge/trust/evictions.py closes the connections of agents that are gone).
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import time
from collections.abc import Callable
from typing import Any

import nats.errors
import structlog
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg

from bridge.contract.names import Names
from bridge.errors import CalloutRequestError
from bridge.ops.metrics import Metrics
from bridge.trust.agent_index import AgentAddresses
from bridge.trust.clock import ClockSkew
from bridge.trust.issued import (
    AGENT_ACCOUNT,
    AGENT_USER,
    USER_TTL,
    CalloutKeys,
    agent_permissions,
    user_claims,
)
from bridge.trust.requests import AuthRequest, Dropped, Request, RequestReader
from bridge.trust.servers import KnownServers
from bridge.trust.unanswered import Unanswered

__all__ = [
    "AGENT_ACCOUNT",
    "AGENT_USER",
    "AUTH_SUBJECT",
    "CALLOUT_QUEUE",
    "USER_TTL",
    "Callout",
    "CalloutKeys",
    "agent_permissions",
    "make_callout",
    "user_claims",
]

log = structlog.get_logger(__name__)

AUTH_SUBJECT = "$SYS.REQ.USER.AUTH"
# The queue group of every bridge replica (nats.conf allows the bridge this one).
CALLOUT_QUEUE = "chorus-bridge"
# The answer is read by the server at once (within its auth timeout, 2 s by default).
RESPONSE_TTL = 10
# Refusals are logged once per address and reason, not on every retry of a client.
MAX_REMEMBERED_REFUSALS = 4096
# Requests dropped unanswered are logged once per reason and this many seconds.
DROP_LOG_INTERVAL = 10.0


class Callout:
    """Answers the server's authorization requests until cancelled (`run`). Built by
    `make_callout`."""

    def __init__(
        self,
        nc: NATS,
        names: Names,
        keys: CalloutKeys,
        agents: AgentAddresses,
        *,
        metrics: Metrics,
        servers: KnownServers,
        reader: RequestReader,
        unanswered: Unanswered,
        account: str = AGENT_ACCOUNT,
    ) -> None:
        self._nc = nc
        self._names = names
        self._keys = keys
        self.agents = agents
        self._metrics = metrics
        self._servers = servers
        self._reader = reader
        self._unanswered = unanswered
        self._account = account
        self._refused: dict[str, str] = {}
        self._dropped_logged: dict[str, float] = {}

    @property
    def skew(self) -> ClockSkew:
        """The bridge's clock against the server's, as the requests show it."""
        return self._reader.skew

    async def run(self) -> None:
        """Follow the agents bucket and, once its agents are loaded, answer requests in the
        replicas' queue group until cancelled. A replica that cannot answer yet stays out of
        the group, so it takes no request that a loaded replica would admit."""
        sub = None
        try:
            async with asyncio.TaskGroup() as tg:
                tg.create_task(self.agents.run(), name="callout-agents")
                await self.agents.loaded.wait()
                # The servers are asked for when a request names one not known yet (it is
                # answered as soon as its server answers): nothing to wait for here.
                await self._unanswered.subscribe()
                sub = await self._nc.subscribe(
                    AUTH_SUBJECT, queue=CALLOUT_QUEUE, cb=self._on_request
                )
                with contextlib.suppress(nats.errors.Error):
                    await self._nc.flush(timeout=5)  # the server has the subscription now
                log.info(
                    "callout_serving",
                    subject=AUTH_SUBJECT,
                    queue=CALLOUT_QUEUE,
                    agents=len(self.agents),
                    issuer=self._keys.issuer.public_key,
                    xkey=self._keys.xkey.public_key if self._keys.xkey else None,
                    password_checked=self._keys.agent_password is not None,
                )
        finally:
            if sub is not None:
                try:
                    await sub.unsubscribe()
                except nats.errors.Error as exc:
                    log.debug("callout_unsubscribe_failed", error=repr(exc))

    async def _on_request(self, msg: Msg) -> None:
        answer = await self.handle(msg.data, msg.headers or {})
        if answer is None:
            return
        try:
            await msg.respond(answer)
        except nats.errors.Error as exc:
            log.warning("callout_answer_failed", error=repr(exc))

    async def handle(self, data: bytes, headers: dict[str, str]) -> bytes | None:
        """The answer to one request (`data`, with its headers), or None when it gets none:
        a request that cannot be trusted, or that the server stopped waiting for. Counted."""
        try:
            request = await self._reader.read(data, headers)
        except Dropped as exc:
            # Without a trusted request there is no one to answer: the server times it out.
            self._metrics.callouts.labels(outcome=exc.outcome, reason=exc.reason).inc()
            self._log_dropped(exc.outcome, exc.reason, str(exc))
            return None
        except CalloutRequestError as exc:
            self._metrics.callouts.labels(outcome="rejected", reason="invalid").inc()
            self._log_dropped("rejected", "invalid", str(exc))
            return None
        return self.answer(request)

    def answer(self, request: Request) -> bytes:
        """The answer to a trusted request: a signed response admitting or refusing the
        client, sealed to the server's curve key when the request was sealed. Its times are
        the request's `iat` and after: the server's clock."""
        nats_request = request.nats
        agent_id, reason = self.decide(nats_request)
        response: dict[str, Any] = {"type": "authorization_response", "version": 2}
        if agent_id is not None:
            claims = user_claims(
                self._names,
                agent_id,
                nats_request.user_nkey,
                account=self._account,
                issued_at=request.issued_at,
            )
            response["jwt"] = self._keys.issuer.encode(claims, iat=request.issued_at)
        else:
            response["error"] = reason
        token = self._keys.issuer.encode(
            {
                "sub": nats_request.user_nkey,
                "aud": nats_request.server_id.id,
                "exp": request.issued_at + RESPONSE_TTL,
                "nats": response,
            },
            iat=request.issued_at,
        ).encode()
        if request.server_xkey and self._keys.xkey is not None:
            return self._keys.xkey.seal(token, request.server_xkey)
        return token

    def decide(self, request: AuthRequest) -> tuple[str | None, str]:
        """(the agent id to admit, "") or (None, why the client is refused); counted."""
        host, opts = request.client_info.host, request.connect_opts
        agent_id, reason = None, ""
        # The refusal's label in chorus_bridge_callouts_total (metrics.CALLOUT_REFUSALS).
        if opts.user != AGENT_USER:
            refusal, reason = "user", f"user {opts.user!r} is not the agent user"
        elif self._keys.agent_password is not None and not hmac.compare_digest(
            opts.password.encode(), self._keys.agent_password.encode()
        ):
            refusal, reason = "password", "wrong password for the agent user"
        else:
            # No agent there, several and the connection name none of theirs, or an id that
            # cannot be a subject token: the address names no one agent to admit.
            refusal = "address"
            agent_id, reason = self.agents.agent_at(host, opts.name)
        if agent_id is not None:
            self._metrics.callouts.labels(outcome="admitted", reason="none").inc()
            self._refused.pop(host, None)
            log.info(
                "callout_admitted", agent_id=agent_id, address=host, server=request.server_id.name
            )
        else:
            self._metrics.callouts.labels(outcome="refused", reason=refusal).inc()
            self._log_refusal(host, opts.user, reason)
        return agent_id, reason

    def _log_refusal(self, host: str, user: str, reason: str) -> None:
        if self._refused.get(host) == reason:
            log.debug("callout_refused", address=host, user=user, reason=reason)
            return
        if len(self._refused) >= MAX_REMEMBERED_REFUSALS:
            self._refused.clear()
        self._refused[host] = reason
        log.warning("callout_refused", address=host, user=user, reason=reason)

    def _log_dropped(self, outcome: str, reason: str, error: str) -> None:
        now = time.monotonic()
        key = f"{outcome}/{reason}"
        if now - self._dropped_logged.get(key, -DROP_LOG_INTERVAL) < DROP_LOG_INTERVAL:
            log.debug("callout_request_dropped", outcome=outcome, reason=reason, error=error)
            return
        self._dropped_logged[key] = now
        event = "callout_request_late" if outcome == "late" else "callout_request_rejected"
        log.warning(event, reason=reason, error=error)


def make_callout(
    nc: NATS,
    names: Names,
    keys: CalloutKeys,
    agents: AgentAddresses,
    *,
    metrics: Metrics,
    clock: Callable[[], float] = time.time,
    account: str = AGENT_ACCOUNT,
) -> Callout:
    """The callout and its parts: the servers it serves, its reading of requests (on `clock`,
    the bridge's wall clock: tests give one that is off), the count of what it never heard."""
    skew = ClockSkew(clock=clock, on_change=metrics.callout_clock_skew.set)
    servers = KnownServers(nc)
    reader = RequestReader(
        issuer=keys.issuer.public_key, xkey=keys.xkey, servers=servers, skew=skew
    )
    unanswered = Unanswered(nc, metrics=metrics, timeout=lambda: reader.auth_timeout)
    return Callout(
        nc,
        names,
        keys,
        agents,
        metrics=metrics,
        servers=servers,
        reader=reader,
        unanswered=unanswered,
        account=account,
    )
