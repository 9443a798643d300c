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
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import hmac
import time
from pathlib import Path
from typing import Any

import msgspec
import nats.errors
import structlog
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg

from bridge.config import Settings
from bridge.contract.kv_wire import key_subject
from bridge.contract.names import Names
from bridge.edges.nkeys_jwt import CurveKey, SigningKey, decode_verified
from bridge.errors import CalloutKeyError, CalloutRequestError, ConfigError
from bridge.ops.metrics import Metrics
from bridge.trust.agent_index import AgentAddresses

__all__ = [
    "AGENT_USER",
    "AUTH_SUBJECT",
    "CALLOUT_QUEUE",
    "Callout",
    "CalloutKeys",
    "agent_permissions",
    "user_claims",
]

log = structlog.get_logger(__name__)

AUTH_SUBJECT = "$SYS.REQ.USER.AUTH"
# The queue group of every bridge replica (nats.conf allows the bridge this one).
CALLOUT_QUEUE = "chorus-bridge"
AGENT_USER = "agent"
# nats.conf's account of the agents (the user JWT's `aud`): no JetStream, and nothing of the
# bridge's account but the streams nats.conf exports and imports.
AGENT_ACCOUNT = "AGENTS"
SERVER_XKEY_HEADER = "Nats-Server-Xkey"
# The answer is read by the server at once.
RESPONSE_TTL = 10
# Seconds an issued user lives (DESIGN.md: at most 10 minutes). The server then closes the
# connection and the client reconnects through the callout, which checks its address again.
USER_TTL = 600
# Refusals are logged once per address and reason, not on every retry of a client.
MAX_REMEMBERED_REFUSALS = 4096


class ClientInfo(msgspec.Struct, kw_only=True):
    host: str = ""
    name: str = ""


class ConnectOptions(msgspec.Struct, kw_only=True):
    user: str = ""
    password: str = msgspec.field(default="", name="pass")
    name: str = ""


class ServerId(msgspec.Struct, kw_only=True):
    id: str
    name: str = ""


class AuthRequest(msgspec.Struct, kw_only=True):
    """The `nats` claim of an authorization request (nats-io/jwt v2)."""

    type: str
    user_nkey: str
    server_id: ServerId
    client_info: ClientInfo = msgspec.field(default_factory=ClientInfo)
    connect_opts: ConnectOptions = msgspec.field(default_factory=ConnectOptions)


def _read(path: str, variable: str) -> bytes:
    try:
        return Path(path).read_bytes().strip()
    except OSError as exc:
        raise ConfigError(variable, path, f"cannot read it ({exc.strerror})") from None


@dataclasses.dataclass(frozen=True, kw_only=True)
class CalloutKeys:
    """What the callout signs and opens with; `agent_password` None: not checked."""

    issuer: SigningKey
    xkey: CurveKey | None = None
    agent_password: str | None = None

    @classmethod
    def load(cls, settings: Settings) -> CalloutKeys:
        """Read the seed files. Raises ConfigError naming the variable of a bad one."""
        if not settings.callout_issuer_seed:
            raise ConfigError(
                "BRIDGE_CALLOUT_ISSUER_SEED", "", "must be set when BRIDGE_AUTH_CALLOUT is true"
            )
        path, variable = settings.callout_issuer_seed, "BRIDGE_CALLOUT_ISSUER_SEED"
        try:
            issuer = SigningKey(_read(path, variable))
            xkey = None
            if settings.callout_xkey_seed:
                path, variable = settings.callout_xkey_seed, "BRIDGE_CALLOUT_XKEY_SEED"
                xkey = CurveKey(_read(path, variable))
        except CalloutKeyError as exc:
            raise ConfigError(variable, path, str(exc)) from None
        password = None
        if settings.callout_agent_password_file:
            password = _read(
                settings.callout_agent_password_file, "BRIDGE_CALLOUT_AGENT_PASSWORD_FILE"
            ).decode()
        return cls(issuer=issuer, xkey=xkey, agent_password=password)


def agent_permissions(names: Names, agent_id: str) -> dict[str, Any]:
    """The `pub`/`sub` permissions of an admitted agent (docs/trust-design.md): an allow-list
    of its own subjects to publish (its presence key, acks and claims, messages as their
    sender, the roster request, and replies to a peer's inbox under its own id), nothing of
    `$JS.API` or `$SYS` (both still answer in an account without JetStream); to read, what
    agents read, its own messages and its own inbox."""
    return {
        "pub": {
            "allow": [
                key_subject(names.presence_bucket, agent_id),
                names.acks("*", agent_id),
                names.claims("*", agent_id),
                names.messages("*", agent_id),
                names.roster,
                f"_INBOX.*.{agent_id}.>",
            ]
        },
        "sub": {
            "allow": [
                names.opportunities,
                names.announce,
                names.council_events("*"),
                names.messages(agent_id, "*"),
                f"{names.agent_inbox(agent_id)}.>",
            ]
        },
    }


def user_claims(
    names: Names, agent_id: str, user_nkey: str, *, account: str = AGENT_ACCOUNT
) -> dict[str, Any]:
    """The claims of the user JWT that admits agent `agent_id` on the connection whose key is
    `user_nkey`: in `account` (`aud`), named after the agent, expiring USER_TTL seconds from
    now, with `agent_permissions`."""
    return {
        "sub": user_nkey,
        "aud": account,
        "name": agent_id,
        "exp": int(time.time()) + USER_TTL,
        "nats": {
            "type": "user",
            "version": 2,
            "subs": -1,
            "data": -1,
            "payload": -1,
            **agent_permissions(names, agent_id),
        },
    }


class Callout:
    """Answers the server's authorization requests until cancelled (`run`)."""

    def __init__(
        self,
        nc: NATS,
        names: Names,
        keys: CalloutKeys,
        agents: AgentAddresses,
        *,
        metrics: Metrics,
        account: str = AGENT_ACCOUNT,
    ) -> None:
        self._nc = nc
        self._names = names
        self._keys = keys
        self._agents = agents
        self._metrics = metrics
        self._account = account
        self._refused: dict[str, str] = {}
        self._warned_plain = False

    async def run(self) -> None:
        """Follow the agents bucket and, once its agents are loaded, answer requests in the
        replicas' queue group until cancelled. A replica that cannot answer yet stays out of
        the group, so it takes no request that a loaded replica would admit."""
        sub = None
        try:
            async with asyncio.TaskGroup() as tg:
                tg.create_task(self._agents.run(), name="callout-agents")
                await self._agents.loaded.wait()
                sub = await self._nc.subscribe(
                    AUTH_SUBJECT, queue=CALLOUT_QUEUE, cb=self._on_request
                )
                with contextlib.suppress(nats.errors.Error):
                    await self._nc.flush(timeout=5)  # the server has the subscription now
                log.info(
                    "callout_serving",
                    subject=AUTH_SUBJECT,
                    queue=CALLOUT_QUEUE,
                    agents=len(self._agents),
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
        try:
            answer = self.answer(msg.data, msg.headers or {})
        except CalloutRequestError as exc:
            # Without a trusted request there is no one to answer: the server times it out.
            self._metrics.callouts.labels(outcome="rejected", reason="none").inc()
            log.warning("callout_request_rejected", error=str(exc))
            return
        try:
            await msg.respond(answer)
        except nats.errors.Error as exc:
            log.warning("callout_answer_failed", error=repr(exc))

    def answer(self, data: bytes, headers: dict[str, str]) -> bytes:
        """The answer to one request: a signed response admitting or refusing the client.

        Raises CalloutRequestError when the request cannot be trusted (signature, expiry,
        sealing, shape)."""
        server_xkey = headers.get(SERVER_XKEY_HEADER)
        request = self._request(data, server_xkey)
        agent_id, reason = self.decide(request)
        response: dict[str, Any] = {"type": "authorization_response", "version": 2}
        if agent_id is not None:
            response["jwt"] = self._user(request, agent_id)
        else:
            response["error"] = reason
        token = self._keys.issuer.encode(
            {
                "sub": request.user_nkey,
                "aud": request.server_id.id,
                "exp": int(time.time()) + RESPONSE_TTL,
                "nats": response,
            }
        ).encode()
        if server_xkey and self._keys.xkey is not None:
            return self._keys.xkey.seal(token, server_xkey)
        return token

    def _request(self, data: bytes, server_xkey: str | None) -> AuthRequest:
        if not data.startswith(b"eyJ"):  # not a JWT: sealed to our curve key
            if self._keys.xkey is None or not server_xkey:
                raise CalloutRequestError(
                    "the server encrypts its callout requests (xkey in nats.conf): set "
                    "BRIDGE_CALLOUT_XKEY_SEED to the curve seed of that xkey"
                )
            data = self._keys.xkey.open(data, server_xkey)
        elif self._keys.xkey is not None and not self._warned_plain:
            self._warned_plain = True
            log.warning(
                "callout_requests_not_encrypted",
                hint="add the xkey of BRIDGE_CALLOUT_XKEY_SEED to nats.conf's auth_callout",
            )
        claims = decode_verified(data.decode(errors="replace"))
        if claims.get("aud") != "nats-authorization-request":
            raise CalloutRequestError(f"not an authorization request: {claims.get('aud')!r}")
        if claims.get("sub") != self._keys.issuer.public_key:
            raise CalloutRequestError(
                f"the server's callout issuer is {claims.get('sub')}, not ours "
                f"({self._keys.issuer.public_key}): BRIDGE_CALLOUT_ISSUER_SEED is not the seed "
                "of nats-callout.conf's issuer"
            )
        try:
            request = msgspec.convert(claims.get("nats"), AuthRequest)
        except msgspec.ValidationError as exc:
            raise CalloutRequestError(f"a malformed authorization request: {exc}") from None
        if request.type != "authorization_request":
            raise CalloutRequestError(f"not an authorization request: {request.type!r}")
        return request

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
            agent_id, reason = self._agents.agent_at(host, opts.name)
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

    def _user(self, request: AuthRequest, agent_id: str) -> str:
        claims = user_claims(self._names, agent_id, request.user_nkey, account=self._account)
        return self._keys.issuer.encode(claims)
