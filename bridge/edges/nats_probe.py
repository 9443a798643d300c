"""The probe behind /healthz: whether the NATS connection still reads (a PING at a time)."""

from __future__ import annotations

import asyncio

import nats.errors
import structlog
from nats.aio.client import Client as NATS

__all__ = ["NatsProbe"]

log = structlog.get_logger(__name__)

# The probe behind /healthz: one round trip (a PING) at a time, one every PROBE_INTERVAL s.
PROBE_INTERVAL = 2.0
# How long a probe waits for its PONG before giving up. nats-py's rtt() and flush() cancel their
# PONG future when their timeout fires, and leave it queued: the PONG that comes after it then
# fails on the cancelled future and kills the read loop (InvalidStateError), which is how a NATS
# freeze of 15 s made the bridge deaf. Given longer than the pings' staleness bound, a probe
# times out only once the connection was found stale and reconnected (a new PONG queue), when
# the cancelled future can never be answered.
PROBE_GIVE_UP = 60
# A probe still unanswered when the bridge stops is waited for this long, never cancelled while
# its connection lives (that would kill the read loop during the drain); the stops of the other
# tasks run meanwhile.
PROBE_LET_GO = 1.0


class NatsProbe:
    """Whether the connection still reads: a PING every PROBE_INTERVAL seconds (one at a time),
    and how long the one still waiting for its PONG has waited. `is_connected` stays true while
    nats-py's read loop is dead; the probe's PONG does not come then. Logs one line when NATS
    stops answering (after `patience` seconds) and one when it answers again."""

    def __init__(
        self,
        nc: NATS,
        *,
        patience: float,
        interval: float = PROBE_INTERVAL,
        give_up: int = PROBE_GIVE_UP,
    ) -> None:
        self._nc = nc
        self._patience = patience
        self._interval = interval
        self._give_up = give_up
        self._pending: asyncio.Task[None] | None = None
        self._sent_at = 0.0
        # nc.stats["reconnects"] when the pending probe was sent: its PONG future is in the
        # queue of that connection, which a reconnect replaces.
        self._generation = 0
        # When the probe that NATS did not answer was sent, once that has been logged; it
        # holds across reconnects until a probe is answered.
        self._silent_since: float | None = None

    def silent_for(self) -> float:
        """Seconds the probe has waited for its PONG: 0 while NATS answers (and for a probe
        sent on a connection that was replaced since: the new one is probed next)."""
        if self._pending is None or self._pending.done():
            return 0.0
        if self._generation != self._nc.stats["reconnects"]:
            return 0.0
        return self._now() - self._sent_at

    async def run(self) -> None:
        """Probe until cancelled."""
        try:
            while True:
                self._tick()
                await asyncio.sleep(self._interval)
        finally:
            await self._let_go()

    def _tick(self) -> None:
        pending = self._pending
        if pending is not None and not pending.done():
            if self._generation != self._nc.stats["reconnects"]:
                # Sent on a connection since replaced: no PONG will come, and cancelling its
                # future is safe (no read loop will ever see it). Probe the new one.
                pending.cancel()
            else:
                silent = self._now() - self._sent_at
                if silent >= self._patience and self._silent_since is None:
                    self._silent_since = self._sent_at
                    log.warning("nats_not_answering", silent_s=round(silent, 1))
                return
        if self._nc.is_connected:
            self._sent_at = self._now()
            self._generation = self._nc.stats["reconnects"]
            self._pending = asyncio.ensure_future(self._round_trip())

    async def _round_trip(self) -> None:
        try:
            await self._nc.rtt(timeout=self._give_up)
        except (nats.errors.Error, OSError):
            return  # closed, or no PONG within give_up: the next tick probes again
        if self._silent_since is not None:
            log.info("nats_answering", silent_s=round(self._now() - self._silent_since, 1))
            self._silent_since = None

    async def _let_go(self) -> None:
        pending = self._pending
        if pending is None or pending.done():
            return
        if self._generation == self._nc.stats["reconnects"] and not self._nc.is_closed:
            await asyncio.wait({pending}, timeout=PROBE_LET_GO)
        # Still unanswered: that server does not answer, and the connection is closed next.
        pending.cancel()

    def _now(self) -> float:
        return asyncio.get_running_loop().time()
