"""The councils' upkeep, on the leader, every TICK seconds:
- a holder whose agent is gone (its task left discovery and it is not on the bus) loses the
  role: Holder deleted, `released`, and an active council `degraded`;
- a council whose deadline passed before it was ever active is `expired`;
- an expired council's records are removed a day after its deadline (COUNCIL_RETENTION);
- a Seat that no Holder backs (a grant cut short by a crash or a failed write) is cleared;
- every AUDIT_INTERVAL, the bucket's last sequence: when someone else wrote it (or it was lost
  and made again), it is read afresh and what changed is announced.
"""

from __future__ import annotations

import asyncio
import time
from typing import Protocol

import structlog

from bridge.bus.councils import Council
from bridge.contract.buckets import COUNCIL_RETENTION
from bridge.council.arbiter import Lease
from bridge.council.book import CouncilBook
from bridge.council.rules import stale_seats, state_of
from bridge.errors import LeaseLostError, NatsError, WrongRevisionError
from bridge.waits import raise_if_cancelled

__all__ = ["Departures", "Upkeep"]

log = structlog.get_logger(__name__)

TICK = 0.25
AUDIT_INTERVAL = 2.0
# Purge markers of a removed council expire after this many seconds.
REMOVAL_MARKER_TTL = 60


class Departures(Protocol):
    """Whose agent is gone (bridge/council/members.py's Members)."""

    def gone(self, agent_id: str) -> bool: ...


class Upkeep:
    """Runs the upkeep until cancelled (one term of the leader)."""

    def __init__(
        self,
        book: CouncilBook,
        members: Departures,
        lease: Lease,
        *,
        tick: float = TICK,
        retention: float = COUNCIL_RETENTION,
    ) -> None:
        self._book = book
        self._members = members
        self._lease = lease
        self._tick = tick
        self._retention = retention
        self._failing = False

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        next_audit = loop.time() + AUDIT_INTERVAL
        while True:
            raise_if_cancelled()  # a stop the last round's NATS calls swallowed (bridge/waits.py)
            await asyncio.sleep(self._tick)
            audit = loop.time() >= next_audit
            if audit:
                next_audit = loop.time() + AUDIT_INTERVAL
            try:
                async with self._book.lock:
                    await self.once(audit=audit)
            except LeaseLostError:
                continue  # the term ends; the election says so
            except NatsError as exc:
                if not self._failing:
                    log.warning("council_upkeep_failing", error=str(exc))
                self._failing = True
                continue
            if self._failing:
                log.info("council_upkeep_recovered")
                self._failing = False

    async def once(self, *, audit: bool = False) -> None:
        """One round of the upkeep; the caller holds the book's lock. Raises NatsError."""
        book = self._book
        if audit and await book.bucket.audit():
            for council in list(book.bucket.councils.values()):
                await book.reconcile(council, council.id)
        now = time.time()
        for council in list(book.bucket.councils.values()):
            if not self._lease.holds():
                return
            try:
                await self._keep(council, now)
            except WrongRevisionError:
                await book.bucket.reread(council.keys())
                await book.reconcile(book.council(council.id), council.id)

    async def _keep(self, council: Council, now: float) -> None:
        book = self._book
        state = state_of(council, now)
        deadline = council.deadline
        if state == "expired" and deadline is not None and now >= deadline + self._retention:
            await self._lease.confirm()
            await book.bucket.remove(council, REMOVAL_MARKER_TTL)
            book.forget(council.id)
            log.info("council_removed", opportunity_id=council.id, deadline=council.record.deadline)
            return
        gone = [role for role, h in council.holders.items() if self._members.gone(h.agent_id)]
        if gone:
            await self._lease.confirm()
        for role in gone:
            await book.release(council, role)
        stale = stale_seats(council)  # after the releases, which take their Seats along
        if stale:
            await self._lease.confirm()
        for agent_id in stale:
            await book.clear_seat(council, agent_id)
        if gone or state != council.record.state:
            await book.reconcile(council, council.id)
