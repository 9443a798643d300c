"""The commands' NATS client: short-lived, fails fast, and says plainly what the server refused.

nats-py reports a permission violation only through its error callback (and lower-cased), while
the request that caused it waits for its timeout. A `Session` turns the first violation into a
NatsError that names the user and the subject, at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
from collections.abc import AsyncIterator, Awaitable, Iterable
from typing import TypeVar
from urllib.parse import urlsplit

import nats
import nats.errors
from nats.aio.client import Client as NATS

from bridge.config import Settings
from bridge.edges.nats_client import nats_auth, nats_servers
from bridge.edges.nats_tls import nats_tls, require_tls, tls_failure, tls_failure_message
from bridge.errors import NatsError
from bridge.ops.redact import redact_text, redact_url

__all__ = ["DEFAULT_CLIENT_URL", "Session", "inbox_prefix_for", "open_session"]

T = TypeVar("T")

DEFAULT_CLIENT_URL = "nats://127.0.0.1:4222"
# The inbox prefix each user of nats.conf may subscribe to; any other user gets _INBOX.coord,
# which an unrestricted user (ops) may use as well.
INBOX_PREFIXES = {"bridge": "_INBOX.bridge", "agent": "_INBOX.agent", "coordinator": "_INBOX.coord"}
_VIOLATION = re.compile(
    r"permissions violation for (?P<kind>publish|subscription) to "
    r'"(?P<subject>[^"]*)"',
    re.IGNORECASE,
)
# Tokens of JetStream's API subjects, to give a lower-cased subject back its case.
_API_TOKENS = (
    "$JS",
    "API",
    "INFO",
    "STREAM",
    "CONSUMER",
    "CREATE",
    "DELETE",
    "UPDATE",
    "PURGE",
    "MSG",
    "GET",
    "DIRECT",
    "NAMES",
    "LIST",
    "$KV",
    "$SRV",
    "PING",
    "STATS",
    "_INBOX",
    "FC",
    "ACK",
)


def _user(settings: Settings) -> str | None:
    """The NATS user name: NATS_USER, or the user of NATS_URL (nats://user:password@host)."""
    if settings.nats_user:
        return settings.nats_user
    try:
        parts = urlsplit((settings.nats_url or "").split(",")[0].strip())
    except ValueError:
        return None
    # nats://user:password@host names a user; nats://secret@host is a token.
    return parts.username if parts.password is not None else None


def inbox_prefix_for(settings: Settings) -> str:
    """The inbox prefix nats.conf lets this user subscribe to."""
    return INBOX_PREFIXES.get(_user(settings) or "", "_INBOX.coord")


def who(settings: Settings) -> str:
    """The NATS identity of these settings, as an operator would name it (never a secret)."""
    if settings.nats_creds:
        return f"the user of {settings.nats_creds}"
    user = _user(settings)
    if user:
        return f"user {user!r}"
    return "the token user" if settings.nats_token else "the anonymous user"


def _restore_case(subject: str, names: Iterable[str]) -> str:
    vocabulary = {token.lower(): token for token in _API_TOKENS}
    for name in names:
        vocabulary.update({token.lower(): token for token in name.split(".")})
        vocabulary[f"kv_{name.lower()}"] = f"KV_{name}"
    return ".".join(vocabulary.get(token, token) for token in subject.split("."))


class Reported:
    """What nats-py reported through its error callback: violations apart from other errors."""

    def __init__(self) -> None:
        self.violations: asyncio.Queue[str] = asyncio.Queue()
        self.errors: list[str] = []
        self.lost = asyncio.Event()

    async def on_disconnect(self) -> None:
        # Commands do not reconnect: a lost connection ends what they wait for.
        self.lost.set()

    async def on_error(self, exc: Exception) -> None:
        # Collected for one line, instead of nats-py's logged traceback.
        text = str(exc) or type(exc).__name__
        if _VIOLATION.search(text):
            self.violations.put_nowait(text)
        else:
            self.errors.append(text)


class Session:
    """A connected client plus what the server refused it."""

    def __init__(
        self, nc: NATS, settings: Settings, url: str, names: Iterable[str], reported: Reported
    ) -> None:
        self.nc = nc
        self.url = url
        self._settings = settings
        self._names = tuple(names)
        self._violations = reported.violations
        self._lost = reported.lost

    def denial(self, text: str) -> NatsError:
        """The one-line error of a permission violation."""
        match = _VIOLATION.search(text)
        assert match is not None
        kind = "publish to" if match["kind"].lower() == "publish" else "subscribe to"
        subject = _restore_case(match["subject"], self._names)
        return NatsError(
            f"permission denied: NATS {who(self._settings)} may not {kind} "
            f"{subject} on {redact_url(self.url)} (see the user's permissions "
            "in nats.conf)"
        )

    async def guard(self, operation: Awaitable[T]) -> T:
        """Await `operation`, unless the server refuses this client something meanwhile: then
        raise NatsError naming the user and the subject (instead of waiting for a timeout);
        NatsError too when the connection is lost meanwhile."""
        work = asyncio.ensure_future(operation)
        denied = asyncio.ensure_future(self._violations.get())
        lost = asyncio.ensure_future(self._lost.wait())
        try:
            await asyncio.wait({work, denied, lost}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in (work, denied, lost):
                task.cancel()
        if work.done() and not work.cancelled():
            return work.result()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await work
        if denied.done() and not denied.cancelled():
            raise self.denial(denied.result())
        raise NatsError(f"lost the connection to NATS at {redact_url(self.url)}")

    async def settle(self) -> None:
        """Round-trip to the server, so that a refusal of what was just sent is known."""
        await self.guard(self.nc.flush(timeout=5))
        if not self._violations.empty():
            raise self.denial(self._violations.get_nowait())


@contextlib.asynccontextmanager
async def open_session(
    settings: Settings, names: Iterable[str], *, inbox_prefix: str | None = None
) -> AsyncIterator[Session]:
    """A connected Session for one command; NatsError when NATS cannot be had."""
    url = settings.nats_url or DEFAULT_CLIENT_URL
    reported = Reported()
    tls = nats_tls(settings)
    if tls:
        await require_tls(nats_servers(url), settings, 2)
    try:
        nc = await nats.connect(
            nats_servers(url),
            connect_timeout=2,
            max_reconnect_attempts=1,
            allow_reconnect=False,
            inbox_prefix=inbox_prefix or inbox_prefix_for(settings),
            name="chorus-bridge-cli",
            error_cb=reported.on_error,
            disconnected_cb=reported.on_disconnect,
            **nats_auth(settings),
            **tls,
        )
    except (nats.errors.Error, OSError) as exc:
        failed = tls_failure(exc)
        if failed is not None:
            raise NatsError(tls_failure_message(url, failed, settings)) from None
        last = reported.errors[-1] if reported.errors else (str(exc) or type(exc).__name__)
        reason = redact_text(last).removeprefix("nats: ").strip("'")
        if "authorization violation" in reason.lower():
            raise NatsError(
                f"NATS at {redact_url(url)} refused {who(settings)} ({reason}): "
                "check NATS_USER/NATS_PASSWORD, NATS_TOKEN or NATS_CREDS"
            ) from None
        raise NatsError(
            f"cannot connect to NATS at {redact_url(url)} ({reason}); is NATS "
            "running there? Set NATS_URL or --nats-url"
        ) from None
    try:
        yield Session(nc, settings, url, names, reported)
    finally:
        with contextlib.suppress(nats.errors.Error, OSError, TimeoutError):
            await nc.close()
