"""An authorization request of the NATS auth callout, read and judged before it is answered.

A request is answered only when it can be trusted (DESIGN.md, "Trust"): sealed to the bridge's
curve key when one is configured (an unsealed request is then refused: it came from something
that does not know the key, or from a server configured without it), a JWT signed by a server
of the cluster the bridge serves (`iss` is one of the servers' ids, bridge/trust/servers.py,
and the request's own `server_id`), for the bridge's issuer, and not expired: its `exp` (the
server's clock) at most SKEW_TOLERANCE seconds in the bridge's past. A request the server has
surely stopped waiting for (its `exp` behind the server's time as estimated from the
requests, bridge/trust/clock.py) is dropped unanswered: answering it would only hold up the
requests behind it, which is what a restart of NATS under a fleet makes (a thousand at once).

Every reason not to answer is a `Dropped` with the label it is counted under
(`chorus_bridge_callouts_total{outcome="rejected"|"late"}`).
"""

from __future__ import annotations

import dataclasses

import msgspec

from bridge.edges.nkeys_jwt import CurveKey, read_server_token
from bridge.errors import CalloutRequestError
from bridge.trust.clock import SKEW_TOLERANCE, ClockSkew
from bridge.trust.servers import KnownServers

__all__ = ["SERVER_XKEY_HEADER", "AuthRequest", "Dropped", "Request", "RequestReader"]

SERVER_XKEY_HEADER = "Nats-Server-Xkey"
# nats-server's default auth timeout, which its callout waits for an answer (until requests
# show the configured one: their `exp` minus their `iat`).
DEFAULT_AUTH_TIMEOUT = 2.0


class Dropped(CalloutRequestError):
    """A request that gets no answer: `outcome` rejected (not to be trusted) or late (the
    server stopped waiting), `reason` the metric's label."""

    def __init__(self, outcome: str, reason: str, message: str) -> None:
        super().__init__(message)
        self.outcome, self.reason = outcome, reason


class ClientInfo(msgspec.Struct, kw_only=True):
    host: str = ""
    id: int = 0
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


@dataclasses.dataclass(frozen=True)
class Request:
    """A trusted request; `issued_at` is the server's time when it made it (seconds since
    the epoch): what the callout's own times count from."""

    nats: AuthRequest
    issued_at: int
    server_xkey: str | None


class RequestReader:
    """Opens, reads and judges requests for the callout whose keys these are."""

    def __init__(
        self,
        *,
        issuer: str,
        xkey: CurveKey | None,
        servers: KnownServers,
        skew: ClockSkew,
    ) -> None:
        self._issuer = issuer
        self._xkey = xkey
        self._servers = servers
        self.skew = skew
        # The server's callout timeout, as the requests show it (exp - iat, whole seconds).
        self._timeout_seen = float("inf")

    @property
    def auth_timeout(self) -> float:
        """Seconds the server waits for an answer (its auth timeout)."""
        seen = self._timeout_seen
        return seen if seen != float("inf") else DEFAULT_AUTH_TIMEOUT

    async def read(self, data: bytes, headers: dict[str, str]) -> Request:
        """The request in a message; Dropped when it gets no answer."""
        server_xkey = headers.get(SERVER_XKEY_HEADER)
        token = read_server_token(self._open(data, server_xkey).decode(errors="replace"))
        claims = token.claims
        issued_at, expires = claims.get("iat"), claims.get("exp")
        if not isinstance(issued_at, int) or not isinstance(expires, int):
            raise Dropped("rejected", "invalid", "a request without iat and exp")
        now = self.skew.clock()
        self._check_late(now, expires)
        if claims.get("aud") != "nats-authorization-request":
            raise Dropped(
                "rejected", "invalid", f"not an authorization request: {claims.get('aud')!r}"
            )
        if claims.get("sub") != self._issuer:
            raise Dropped(
                "rejected",
                "invalid",
                f"the server's callout issuer is {claims.get('sub')}, not ours ({self._issuer}): "
                "BRIDGE_CALLOUT_ISSUER_SEED is not the seed of nats-callout.conf's issuer",
            )
        try:
            request = msgspec.convert(claims.get("nats"), AuthRequest)
        except msgspec.ValidationError as exc:
            raise Dropped(
                "rejected", "invalid", f"a malformed authorization request: {exc}"
            ) from None
        if request.type != "authorization_request":
            raise Dropped("rejected", "invalid", f"not an authorization request: {request.type!r}")
        await self._check_server(token.issuer, request)
        try:
            token.verify()
        except CalloutRequestError as exc:
            raise Dropped("rejected", "issuer", str(exc)) from None
        # Only a request the server signed says what its clock and its timeout are.
        self.skew.observe(issued_at, now)
        self._timeout_seen = min(self._timeout_seen, float(max(expires - issued_at, 1)))
        if expires + SKEW_TOLERANCE < now:
            raise Dropped(
                "rejected",
                "expired",
                f"the request expired {now - expires:.0f}s ago on the bridge's clock",
            )
        return Request(request, issued_at, server_xkey)

    def _open(self, data: bytes, server_xkey: str | None) -> bytes:
        if data.startswith(b"eyJ"):  # a JWT in the clear
            if self._xkey is not None:
                raise Dropped(
                    "rejected",
                    "unsealed",
                    "an unsealed request while BRIDGE_CALLOUT_XKEY_SEED is set: only a server "
                    "with the xkey of nats-callout.conf seals its requests (add the xkey line, "
                    "or unset BRIDGE_CALLOUT_XKEY_SEED to serve requests in the clear)",
                )
            return data
        if self._xkey is None or not server_xkey:
            raise Dropped(
                "rejected",
                "unsealed",
                "the server encrypts its callout requests (xkey in nats.conf): set "
                "BRIDGE_CALLOUT_XKEY_SEED to the curve seed of that xkey",
            )
        try:
            return self._xkey.open(data, server_xkey)
        except CalloutRequestError as exc:
            raise Dropped("rejected", "unsealed", str(exc)) from None

    def _check_late(self, now: float, expires: int) -> None:
        """Dropped when the server surely stopped waiting: the estimate of the bridge's lead
        is never below the true one, so this drops no request still awaited (and needs no
        signature: a request made up to look late only goes unanswered)."""
        lead = self.skew.seconds
        if lead is not None and expires < now - lead:
            raise Dropped(
                "late",
                "none",
                f"the server stopped waiting for the answer {now - lead - expires:.1f}s ago",
            )

    async def _check_server(self, issuer: str, request: AuthRequest) -> None:
        if issuer != request.server_id.id:
            raise Dropped(
                "rejected",
                "issuer",
                f"signed by {issuer[:12]}..., sent as {request.server_id.id[:12]}...",
            )
        if not await self._servers.knows(issuer):
            raise Dropped(
                "rejected",
                "issuer",
                f"signed by {issuer[:12]}..., which is no server of the cluster this bridge serves",
            )
