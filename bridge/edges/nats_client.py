"""The NATS connection of the bridge: authentication, TLS, reconnects, and what they log; how
long closing it may take. (The probe that tells a connection that still reads from one that no
longer does: nats_probe.py.)"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import nats
import nats.errors
import structlog
from nats.aio.client import Client as NATS

from bridge.config import Settings
from bridge.edges.nats_tls import nats_tls, require_tls, tls_failure, tls_failure_message
from bridge.errors import NatsError
from bridge.ops.redact import redact_url

__all__ = ["connect", "nats_auth", "nats_servers"]

log = structlog.get_logger(__name__)

# Attempts of the first connection before giving up with a clear error; once connected,
# the client reconnects forever (a NATS restart must never end the bridge).
# 60 attempts 0.5 s apart: a bridge started with its NATS (a stack) waits ~30 s for it.
# Half a second between attempts on one server: after a NATS restart or the loss of a
# cluster member the bridge is back within about that (2 s cost a 2 s gap to every fault).
INITIAL_CONNECT_ATTEMPTS = 60
RECONNECT_WAIT = 0.5
CONNECT_TIMEOUT = 2.0
# Closing on exit (SIGTERM) is bounded: Docker sends SIGKILL 10 s after SIGTERM. First one round
# trip, within ANSWER_TIMEOUT: a server that does not answer it (frozen, or a client that no
# longer reads) cannot be drained, and the connection is closed at once. Else drained, within
# DRAIN_TIMEOUT (nats-py's default is 30 s; its drain_timeout bounds only the subscriptions,
# the flush that follows waits 10 s more), then closed within CLOSE_TIMEOUT (a socket whose
# peer is frozen can hold that too).
ANSWER_TIMEOUT = 1
DRAIN_TIMEOUT = 2.0
CLOSE_TIMEOUT = 1.0
# Finding a connection that no longer reads. nats-py's read loop can end without the client
# noticing (a subject that is not UTF-8 fails its parser; the late PONG of a flush that timed
# out raises InvalidStateError): it stops reading, and the connection is deaf until the client's
# pings find it stale, PING_INTERVAL * (MAX_OUTSTANDING_PINGS + 1) seconds after its last PONG
# at most. The default (120 s, 2) is 6 minutes without the lease, presence and broadcasts; 5 s
# and 2 make it 10 to 15 s. A PING and its PONG are 6 bytes each way, nothing to a server. The
# risk of short values is a busy server found stale when it is only slow (then the reconnect
# costs the watches' replays); but a server that answers no PING for 10 s has cost this bridge
# its lease (10 s) already, so waiting longer for it saves nothing.
PING_INTERVAL = 5
MAX_OUTSTANDING_PINGS = 2


def nats_servers(url: str) -> list[str]:
    """NATS_URL may list several servers of a cluster, comma-separated."""
    return [server.strip() for server in url.split(",") if server.strip()]


def nats_auth(settings: Settings) -> dict[str, Any]:
    """nats.connect() keyword arguments for the configured authentication."""
    if settings.nats_creds:
        return {"user_credentials": settings.nats_creds}
    if settings.nats_user:
        return {"user": settings.nats_user, "password": settings.nats_password}
    if settings.nats_token:
        return {"token": settings.nats_token}
    return {}


@contextlib.asynccontextmanager
async def connect(
    settings: Settings,
    url: str,
    *,
    name: str = "chorus-bridge",
    inbox_prefix: str = "_INBOX.bridge",
    on_reconnect: Callable[[], Awaitable[None]] | None = None,
    on_state: Callable[[bool], None] | None = None,
    reconnect_wait: float = RECONNECT_WAIT,
) -> AsyncIterator[NATS]:
    """A connected client, drained and closed on exit.

    on_reconnect runs after every reconnection (the registry re-publishes what changed while
    the connection was down); on_state(connected) follows the connection's state;
    reconnect_wait: seconds between attempts on one server.
    """
    last_error = {"text": ""}
    closing = False  # our own drain and close are not worth a warning

    async def disconnected() -> None:
        if not closing:
            log.warning("nats_disconnected", url=url)
        if on_state is not None:
            on_state(False)

    async def reconnected() -> None:
        last_error["text"] = ""
        log.info("nats_reconnected", url=url)
        if on_state is not None:
            on_state(True)
        if on_reconnect is not None:
            await on_reconnect()

    async def log_error(exc: Exception) -> None:
        # nats-py reports each failed attempt here; one line per distinct error is enough.
        text = str(exc) or repr(exc)
        if text != last_error["text"] and not closing:
            last_error["text"] = text
            log.warning("nats_error", url=url, error=text)

    tls = nats_tls(settings)
    if tls:
        await require_tls(nats_servers(url), settings, CONNECT_TIMEOUT)
    nc = NATS()
    # A certificate that does not verify ends the first connection at once (nats-py would try
    # it again for its whole budget); once connected, a failed handshake is one more error.
    tls_refused: asyncio.Future[str] = asyncio.get_running_loop().create_future()

    async def error(exc: Exception) -> None:
        reason = tls_failure(exc)
        if reason is not None and not nc.is_connected and not tls_refused.done():
            tls_refused.set_result(reason)
        await log_error(exc)

    options: dict[str, Any] = {
        "name": name,
        "inbox_prefix": inbox_prefix,
        "connect_timeout": CONNECT_TIMEOUT,
        "drain_timeout": DRAIN_TIMEOUT,
        "ping_interval": PING_INTERVAL,
        "max_outstanding_pings": MAX_OUTSTANDING_PINGS,
        "max_reconnect_attempts": INITIAL_CONNECT_ATTEMPTS,
        "reconnect_time_wait": reconnect_wait,
        "disconnected_cb": disconnected,
        "reconnected_cb": reconnected,
        "error_cb": error,
        **nats_auth(settings),
        **tls,
    }
    connecting = asyncio.ensure_future(nc.connect(nats_servers(url), **options))
    await _first_connection(nc, connecting, tls_refused, url, settings)
    # From now on, never give up: nats-py reads this option at each reconnect.
    nc.options["max_reconnect_attempts"] = -1
    log.info(
        "nats_connected",
        url=redact_url(url),
        server=nc.connected_url.netloc.rpartition("@")[2] if nc.connected_url else None,
    )
    if on_state is not None:
        on_state(True)
    try:
        yield nc
    finally:
        closing = True
        await _drain_and_close(nc, url)
        if on_state is not None:
            on_state(False)


async def _first_connection(
    nc: NATS,
    connecting: asyncio.Future[None],
    tls_refused: asyncio.Future[str],
    url: str,
    settings: Settings,
) -> None:
    """Wait for nats-py's first connection; NatsError when it gives up or a TLS handshake
    fails (then at once, the attempt cancelled and the client closed)."""
    either: list[asyncio.Future[Any]] = [connecting, tls_refused]
    try:
        await asyncio.wait(either, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for future in either:
            future.cancel()  # no-op for the one that is done
        await asyncio.wait([connecting])  # a cancelled attempt ends before the client closes
    refused = None if tls_refused.cancelled() else tls_refused.result()
    failure = None if connecting.cancelled() else connecting.exception()
    if refused is None and failure is None and not connecting.cancelled():
        return
    with contextlib.suppress(nats.errors.Error, OSError):
        await nc.close()
    reason = refused or (tls_failure(failure) if failure else None)
    if reason is not None:
        raise NatsError(tls_failure_message(url, reason, settings)) from failure
    raise NatsError(
        f"cannot connect to NATS at {redact_url(url)} ({failure!r}); check NATS_URL and the "
        "credentials (NATS_USER/NATS_PASSWORD, NATS_TOKEN or NATS_CREDS)"
    ) from failure


async def _drain_and_close(nc: NATS, url: str) -> None:
    """Drain (what is buffered reaches the server, what the subscriptions hold is handled),
    then close, each within its bound: a server that does not answer costs a second, never the
    10 s of a flush. When the server is gone, draining cannot work and closing is all that is
    left."""
    # nats-py's own drain_timeout (DRAIN_TIMEOUT) ends a stuck drain first; the bound here
    # covers the flush it does after that.
    drained_in = DRAIN_TIMEOUT + CLOSE_TIMEOUT
    if nc.is_connected and await _answers(nc, url) and not await _within(nc.drain(), drained_in):
        log.warning("nats_drain_unfinished", url=redact_url(url), after_s=drained_in)
    if not nc.is_closed and not await _within(nc.close(), CLOSE_TIMEOUT):
        log.warning("nats_close_unfinished", url=redact_url(url), after_s=CLOSE_TIMEOUT)


async def _answers(nc: NATS, url: str) -> bool:
    """Whether the server answers a PING within ANSWER_TIMEOUT. (The PONG future that rtt()
    cancels on its timeout would kill the read loop if the PONG came later: harmless here, the
    connection is closed right after.)"""
    try:
        await nc.rtt(timeout=ANSWER_TIMEOUT)
    except (nats.errors.Error, OSError):
        log.warning("nats_not_drained", url=redact_url(url), reason="NATS does not answer")
        return False
    return True


async def _within(call: Awaitable[None], seconds: float) -> bool:
    """Whether `call` ended within `seconds` (its NATS errors count as ended). One that did not
    is cancelled and left to end by itself: nats-py's drain swallows a cancellation and flushes
    on, so waiting for it again could take the full 10 s."""
    task = asyncio.ensure_future(call)
    task.add_done_callback(_consume)
    done, _ = await asyncio.wait({task}, timeout=seconds)
    if task in done:
        return True
    task.cancel()
    return False


def _consume(task: asyncio.Future[None]) -> None:
    """Take a shutdown call's outcome: its errors are expected (the server may be gone)."""
    if not task.cancelled():
        task.exception()
