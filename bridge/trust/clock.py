"""How far the bridge's clock is from the NATS server's, measured from the callout's requests.

Each authorization request carries the server's `iat` (whole seconds, when it made the
request). `now - iat` on this clock is the bridge's lead over the server plus the time the
request took to reach the bridge plus the part of a second `iat` dropped: never less than the
true lead. The smallest value over the last WINDOW seconds is the estimate: at most about a
second above the true lead once a few requests came, never below it. So a request whose `exp`
is behind `now - estimate` is surely one the server stopped waiting for (bridge/trust/requests.py
drops it unanswered, and counts it).

Nothing the callout issues depends on this estimate: its times are the request's own
(bridge/trust/callout.py). A lead or lag beyond SKEW_WARN is logged once (and once more when it
ends); beyond SKEW_TOLERANCE it is a reason of /healthz: requests from a server whose clock is
that far behind the bridge's are refused as expired.
"""

from __future__ import annotations

import collections
import time
from collections.abc import Callable

import structlog

__all__ = ["SKEW_TOLERANCE", "SKEW_WARN", "ClockSkew"]

log = structlog.get_logger(__name__)

# Seconds of disagreement between the two clocks that requests are read with: a request whose
# `exp` is more than this in the bridge's past is expired (DESIGN.md: expired requests are
# refused; "a few seconds either way" admit everyone).
SKEW_TOLERANCE = 5.0
# Seconds of disagreement that are logged (the estimate reads up to a second high).
SKEW_WARN = 3.0
# Seconds of requests the estimate is the smallest of.
WINDOW = 60.0


class ClockSkew:
    """The bridge's clock minus the server's, in seconds (positive: the bridge is ahead);
    None until a request came. `clock` is the wall clock the bridge reads (injected in tests:
    a bridge whose clock is off), `monotonic` orders the window."""

    def __init__(
        self,
        *,
        clock: Callable[[], float] = time.time,
        monotonic: Callable[[], float] = time.monotonic,
        on_change: Callable[[float], None] = lambda _s: None,
    ) -> None:
        self.clock = clock
        self._monotonic = monotonic
        self._on_change = on_change
        # (monotonic time, now - iat): increasing in both, so the front is the minimum.
        self._samples: collections.deque[tuple[float, float]] = collections.deque()
        self._warned = False

    @property
    def seconds(self) -> float | None:
        return self._samples[0][1] if self._samples else None

    def observe(self, issued_at: int, now: float) -> None:
        """Note a request the server issued at `issued_at` (its `iat`) that the bridge read
        at `now` (its own clock, `clock()`)."""
        lead = now - issued_at
        mono = self._monotonic()
        while self._samples and self._samples[-1][1] >= lead:
            self._samples.pop()  # never the minimum again: a later, smaller sample came
        self._samples.append((mono, lead))
        while self._samples[0][0] < mono - WINDOW:
            self._samples.popleft()
        self._said(self._samples[0][1])

    def _said(self, estimate: float) -> None:
        self._on_change(estimate)
        if abs(estimate) > SKEW_WARN and not self._warned:
            self._warned = True
            log.warning(
                "callout_clock_skew",
                bridge_minus_server_s=round(estimate, 1),
                tolerated_s=SKEW_TOLERANCE,
                hint="synchronise the clocks of the bridge's and the NATS server's hosts (NTP)",
            )
        elif abs(estimate) <= SKEW_WARN and self._warned:
            self._warned = False
            log.info("callout_clock_skew_ended", bridge_minus_server_s=round(estimate, 1))

    def problem(self) -> str | None:
        """A /healthz reason while the clocks disagree by more than SKEW_TOLERANCE."""
        estimate = self.seconds
        if estimate is None or abs(estimate) <= SKEW_TOLERANCE:
            return None
        way = "ahead of" if estimate > 0 else "behind"
        return (
            f"the bridge's clock is {abs(estimate):.0f}s {way} the NATS server's (measured "
            f"from the auth callout's requests; tolerated: {SKEW_TOLERANCE:.0f}s): synchronise "
            "the clocks (NTP)"
        )
