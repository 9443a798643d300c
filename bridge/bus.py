"""The NATS connection of the bridge: authentication, reconnects, and what they log."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import nats
import nats.errors
import structlog
from nats.aio.client import Client as NATS

from bridge.config import Settings
from bridge.errors import NatsError
from bridge.redact import redact_url

__all__ = ["connect", "nats_auth", "nats_servers"]

log = structlog.get_logger(__name__)

# Attempts of the first connection before giving up with a clear error; once connected,
# the client reconnects forever (a NATS restart must never end the bridge).
# 60 attempts 0.5 s apart: a bridge started with its NATS (a stack) waits ~30 s for it.
# Half a second between attempts on one server: after a NATS restart or the loss of a
# cluster member the bridge is back within about that (2 s cost a 2 s gap to every fault).
INITIAL_CONNECT_ATTEMPTS = 60
RECONNECT_WAIT = 0.5
# Draining on exit flushes what is buffered; it may not hold a shutdown longer than this
# (nats-py's default is 30 s, and SIGTERM must end the bridge within seconds).
DRAIN_TIMEOUT = 2.0


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
) -> AsyncIterator[NATS]:
    """A connected client, drained and closed on exit.

    on_reconnect runs after every reconnection (the registry re-publishes what changed while
    the connection was down); on_state(connected) follows the connection's state.
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

    async def error(exc: Exception) -> None:
        # nats-py reports each failed attempt here; one line per distinct error is enough.
        text = str(exc) or repr(exc)
        if text != last_error["text"] and not closing:
            last_error["text"] = text
            log.warning("nats_error", url=url, error=text)

    try:
        nc = await nats.connect(
            nats_servers(url),
            name=name,
            inbox_prefix=inbox_prefix,
            connect_timeout=2,
            drain_timeout=DRAIN_TIMEOUT,
            max_reconnect_attempts=INITIAL_CONNECT_ATTEMPTS,
            reconnect_time_wait=RECONNECT_WAIT,
            disconnected_cb=disconnected,
            reconnected_cb=reconnected,
            error_cb=error,
            **nats_auth(settings),
        )
    except (nats.errors.Error, OSError) as exc:
        raise NatsError(
            f"cannot connect to NATS at {url} ({exc!r}); check NATS_URL and the "
            "credentials (NATS_USER/NATS_PASSWORD, NATS_TOKEN or NATS_CREDS)"
        ) from exc
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
        # Draining flushes what is buffered; when the server is gone, that cannot work and
        # closing is all that is left.
        with contextlib.suppress(nats.errors.Error, OSError, TimeoutError):
            await nc.drain()
        if not nc.is_closed:
            with contextlib.suppress(nats.errors.Error, OSError, TimeoutError):
                await nc.close()
        if on_state is not None:
            on_state(False)
