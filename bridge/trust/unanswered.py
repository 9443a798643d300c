"""Clients the server refused because no callout answered in time: counted, never silent.

A request the server publishes while no bridge is subscribed (the moment after a NATS restart,
before the bridges' connections are back and subscribed again) reaches no one, and one the
bridge reached after the server stopped waiting was dropped as late: either way the server
refuses the client when its auth timeout (2 s by default) runs out, and no answer of the
bridge says so. The server does say it: an advisory on `$SYS.SERVER.<id>.CLIENT.AUTH.ERR`
(exported by SYS to the bridge's account, nats.conf) for every client it refused, with when
the client came and went. One whose refusal took the whole auth timeout got no answer (an
answer, admitting or refusing, comes within milliseconds, and always before the timeout).
Each is counted in `chorus_bridge_callouts_total{outcome="unanswered"}`, once across the
replicas (a queue group), and logged (the first of a burst, then how many every LOG_INTERVAL).
"""

from __future__ import annotations

import datetime as dt
import time
from collections.abc import Callable

import msgspec
import structlog
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg

from bridge.ops.metrics import Metrics

__all__ = ["AUTH_ERRORS", "Unanswered"]

log = structlog.get_logger(__name__)

AUTH_ERRORS = "$SYS.SERVER.*.CLIENT.AUTH.ERR"
QUEUE = "chorus-bridge"
LOG_INTERVAL = 10.0


class _Client(msgspec.Struct, kw_only=True):
    start: str = ""
    stop: str = ""
    host: str = ""


class _Advisory(msgspec.Struct, kw_only=True):
    client: _Client = msgspec.field(default_factory=_Client)
    reason: str = ""


_ADVISORY = msgspec.json.Decoder(_Advisory)


def _seconds(stamp: str) -> float | None:
    try:
        # nats-server writes nanoseconds; Python's parser takes microseconds.
        head, _, rest = stamp.rstrip("Z").partition(".")
        text = f"{head}.{rest[:6] or '0'}+00:00"
        return dt.datetime.fromisoformat(text).timestamp()
    except ValueError:
        return None


class Unanswered:
    """Follows the servers' refusals while `run()` runs; `timeout()` is the server's auth
    timeout in seconds (as the callout's requests show it)."""

    def __init__(self, nc: NATS, *, metrics: Metrics, timeout: Callable[[], float]) -> None:
        self._nc = nc
        self._metrics = metrics
        self._timeout = timeout
        self._since_logged = 0
        self._logged_at = -LOG_INTERVAL

    async def subscribe(self) -> None:
        """Follow the refusals (on the connection's life: nats-py subscribes again after a
        reconnect). Raises nats.errors.Error when the subscription is refused."""
        await self._nc.subscribe(AUTH_ERRORS, queue=QUEUE, cb=self._on_advisory)

    async def _on_advisory(self, msg: Msg) -> None:
        try:
            advisory = _ADVISORY.decode(msg.data)
        except msgspec.DecodeError:
            return
        start, stop = _seconds(advisory.client.start), _seconds(advisory.client.stop)
        if start is None or stop is None or stop - start < self._timeout() - 0.05:
            return  # refused at once: by the callout's answer, or before it (a bad user)
        self._metrics.callouts.labels(outcome="unanswered", reason="none").inc()
        self._since_logged += 1
        now = time.monotonic()
        if now - self._logged_at >= LOG_INTERVAL:
            log.warning(
                "callout_unanswered",
                address=advisory.client.host,
                refused=self._since_logged,
                waited_s=round(stop - start, 2),
                cause="no bridge was subscribed (NATS restarting) or the bridge was too late",
            )
            self._since_logged, self._logged_at = 0, now
