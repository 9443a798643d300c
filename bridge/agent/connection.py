"""An agent's NATS connection: credentials, TLS, its inbox prefix and name, reconnects, and
what its events log.

The connection's name is the agent id: where several discovered agents share an address
(known endpoints on several ports), the auth callout admits a connection from there as the
agent its name names, and only as one of them (bridge/trust/agent_index.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import ssl
from collections.abc import AsyncIterator
from typing import Any

import nats.errors
from nats.aio.client import Client as NATS

from bridge.agent.errors import ConnectError
from bridge.agent.logs import INFO, WARNING, say

__all__ = ["Credentials", "Events", "open_connection", "redact"]


# How long the first connection is tried, an attempt every half second whatever each attempt's
# failure. An agent started with its stack waits for NATS and, with the auth callout, for a
# bridge to lead and a discovery round to list its task: until then it is refused ("no
# discovered agent"). Measured on a stack of a 3-server NATS cluster and 2 bridges on a loaded
# machine: refused for 15 s and more, where 30 attempts gave up for good. Once connected the
# client reconnects forever.
FIRST_CONNECTION_WINDOW = 60.0
RECONNECT_WAIT = 0.5
CONNECT_TIMEOUT = 5.0
# Pings find a server that stopped answering in 10 to 15 s (nats-py's default: 6 minutes).
PING_INTERVAL = 5
MAX_OUTSTANDING_PINGS = 2
# Leaving: the drain and the close, each bounded (docker stop gives 10 s before SIGKILL).
DRAIN_TIMEOUT = 2.0
CLOSE_TIMEOUT = 1.0
# Distinct errors said in one outage, at most (the rest are not said again until it ends).
SAID_LIMIT = 16


@dataclasses.dataclass(frozen=True, kw_only=True)
class Credentials:
    """How the agent authenticates and verifies the server: a user and password, a token or a
    credentials file; `tls_ca` the CA that signed the server's certificate (NATS_TLS_CA),
    `tls_cert` and `tls_key` a client certificate where the server asks for one."""

    user: str | None = None
    password: str | None = None
    token: str | None = None
    creds: str | None = None
    tls_ca: str | None = None
    tls_cert: str | None = None
    tls_key: str | None = None

    def options(self) -> dict[str, Any]:
        """nats.connect() keyword arguments. ConnectError for a TLS file it cannot read."""
        options: dict[str, Any] = {}
        if self.creds:
            options["user_credentials"] = self.creds
        elif self.user:
            options.update(user=self.user, password=self.password)
        elif self.token:
            options["token"] = self.token
        if self.tls_ca or self.tls_cert:
            try:
                context = ssl.create_default_context(cafile=self.tls_ca)
                if self.tls_cert:
                    context.load_cert_chain(self.tls_cert, self.tls_key)
            except (OSError, ssl.SSLError) as exc:
                raise ConnectError(f"cannot read the TLS files ({exc}): check tls_ca") from exc
            options["tls"] = context
        return options


class Events:
    """What the connection goes through, for the agent: `reconnected` is set on each
    reconnection (and cleared by whoever acts on it). The callbacks log one line per change."""

    def __init__(self, agent_id: str) -> None:
        self.agent_id = agent_id
        self.reconnected = asyncio.Event()
        self.connected = False
        self.closing = False
        self._last_error = ""
        # Errors said during this outage: attempts that fail two ways in turn (a refusal, then
        # the closed socket) are still one line each, not one per attempt.
        self._said: set[str] = set()

    @property
    def last_error(self) -> str:
        """The last error nats-py reported ("" since the last connection)."""
        return self._last_error

    def on_connected(self) -> None:
        """The first connection is made: from now on, errors are those of a connection."""
        self.connected = True
        self._last_error = ""
        self._said.clear()

    async def disconnected(self) -> None:
        # Before the first connection, a failed attempt is no disconnection.
        if self.connected and not self.closing:
            say(WARNING, "agent_disconnected", agent_id=self.agent_id)

    async def on_reconnected(self) -> None:
        self._last_error = ""
        self._said.clear()
        say(INFO, "agent_reconnected", agent_id=self.agent_id)
        self.reconnected.set()

    async def error(self, exc: Exception) -> None:
        # nats-py reports each failed attempt and each refused subject here: one line per
        # distinct error, never a traceback.
        if not self.connected and isinstance(exc, ssl.SSLCertVerificationError):
            # A certificate the CA does not vouch for stays so: no point in trying again.
            # Raised from here, it ends nats-py's first connection (open_connection).
            raise _CertificateRefused(exc) from exc
        text = str(exc) or repr(exc)
        self._last_error = text
        if text not in self._said and not self.closing and len(self._said) < SAID_LIMIT:
            self._said.add(text)
            say(WARNING, "agent_nats_error", agent_id=self.agent_id, error=text)


class _CertificateRefused(Exception):
    """The server's certificate is not one `tls_ca` vouches for (or no CA was given)."""


def redact(url: str) -> str:
    """URLs without their user info (`nats://user:secret@host` -> `nats://host`)."""
    return ",".join(_without_user_info(part) for part in url.split(","))


def _without_user_info(url: str) -> str:
    scheme, sep, rest = url.rpartition("://")
    return scheme + sep + rest.rpartition("@")[2]


@contextlib.asynccontextmanager
async def open_connection(
    servers: str, agent_id: str, credentials: Credentials, events: Events, *, inbox: str
) -> AsyncIterator[NATS]:
    """A client connected as `agent_id` with inbox prefix `inbox`, drained and closed on exit
    (within DRAIN_TIMEOUT + CLOSE_TIMEOUT). ConnectError when NATS cannot be reached (or does
    not admit the agent) within FIRST_CONNECTION_WINDOW seconds, or at once for a certificate
    the CA does not vouch for."""
    urls = [server.strip() for server in servers.split(",") if server.strip()]
    # nats-py types these as int; it takes fractions of a second all the same.
    options: dict[str, Any] = {
        "name": agent_id,
        "inbox_prefix": inbox,
        "ping_interval": PING_INTERVAL,
        "max_outstanding_pings": MAX_OUTSTANDING_PINGS,
        "max_reconnect_attempts": -1,  # the window bounds the first connection
        "connect_timeout": CONNECT_TIMEOUT,
        "reconnect_time_wait": RECONNECT_WAIT,
        "drain_timeout": DRAIN_TIMEOUT,
        "disconnected_cb": events.disconnected,
        "reconnected_cb": events.on_reconnected,
        "error_cb": events.error,
        **credentials.options(),
    }
    try:
        nc = await _first_connection(urls, options, events)
    except (nats.errors.Error, OSError, ssl.SSLError, _CertificateRefused) as exc:
        # TimeoutError (an OSError): the window ran out; nats-py retries its own timeouts.
        cause = exc.__cause__ if isinstance(exc, _CertificateRefused) else exc
        why = (
            f"not within {FIRST_CONNECTION_WINDOW:g} s; last error: {events.last_error or 'none'}"
            if isinstance(exc, TimeoutError)
            else repr(cause)
        )
        raise ConnectError(
            f"cannot connect to NATS at {redact(servers)} ({why}); check the URL, the "
            "credentials and the TLS CA"
        ) from exc
    events.on_connected()
    try:
        yield nc
    finally:
        events.closing = True
        await _close(nc)


async def _first_connection(urls: list[str], options: dict[str, Any], events: Events) -> NATS:
    """A client connected within FIRST_CONNECTION_WINDOW (TimeoutError beyond it).

    nats-py's connect() also returns when the server closed the connection before its PONG
    (with TLS, a callout that did not answer within the server's auth timeout: seen on a
    starting stack), and that client then closes for good: no connection, so a new client
    tries again, within the same window.
    """
    loop = asyncio.get_running_loop()
    deadline = loop.time() + FIRST_CONNECTION_WINDOW
    while True:
        nc = NATS()  # made here, so that an attempt that fails is closed here too
        try:
            async with asyncio.timeout_at(deadline):
                await nc.connect(urls, **options)
        except BaseException:
            await _close(nc)
            raise
        if nc.is_connected:
            return nc
        await _close(nc)
        await events.error(ConnectionError("the server closed the connection as it began"))
        if loop.time() + RECONNECT_WAIT >= deadline:
            raise TimeoutError
        await asyncio.sleep(RECONNECT_WAIT)


async def _close(nc: NATS) -> None:
    """Drain (what was published reaches the server), then close; each bounded."""
    for step, seconds in ((nc.drain, DRAIN_TIMEOUT + CLOSE_TIMEOUT), (nc.close, CLOSE_TIMEOUT)):
        if nc.is_closed or (step == nc.drain and not nc.is_connected):
            continue
        task = asyncio.ensure_future(step())
        task.add_done_callback(_consume)
        done, _ = await asyncio.wait({task}, timeout=seconds)
        if task not in done:
            task.cancel()


def _consume(task: asyncio.Future[None]) -> None:
    if not task.cancelled():
        task.exception()  # a NATS error on the way out says nothing more than the close
