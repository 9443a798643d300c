"""The arbiter: records each opportunity a broadcast accepts, and decides every claim.

A grant is two writes, each expecting the revision this bridge last saw of its key:
1. the agent's Seat, `<opportunity id>.agents.<agent id>` (expects the key to hold nothing);
2. the Holder, `<opportunity id>.<role>` (expects the role's key to hold nothing).
If (2) is refused (the role was written meanwhile), the Seat is given back. Why neither a role
with two holders nor an agent with two roles can come of two bridges, or of a leader woken
from a pause with its old beliefs, is in README ("Councils"). A write refused for its revision
means this bridge believed something stale: it reads the council's keys again and decides
anew. A write whose answer never came (NATS failed) leaves the claim unanswered; the keys are
read again, and what they hold is announced then (bridge/council/book.py).

Only the leader arbitrates: `Lease.holds()` (its own clock: a bridge woken from a pause finds
out at once) before each claim and again before a grant's writes; `Lease.confirm()` (a read of
the lease key) before recording an opportunity. A grant does not read the key: its writes are
safe whoever makes them (the revisions they expect), and the read would cost every council a
round trip on its way to `activated`.
"""

from __future__ import annotations

import time
from typing import Protocol

import msgspec
import structlog

from bridge.bus.councils import Council
from bridge.contract.buckets import council_key, holder_key, seat_key
from bridge.contract.messages import (
    ClaimAnswer,
    CouncilOpportunity,
    CouncilRecord,
    Holder,
    Seat,
    Via,
    is_opportunity_id,
    now_rfc3339,
)
from bridge.council.book import CouncilBook
from bridge.council.rules import Decision, decide
from bridge.errors import CouncilRefusedError, LeaseLostError, NatsError, WrongRevisionError
from bridge.ops.metrics import Metrics

__all__ = ["Arbiter", "Lease", "Membership"]

log = structlog.get_logger(__name__)

# Decisions per claim: each retry follows a write refused for its revision (another writer)
# or a stale Seat cleared; more than this means the bucket is being fought over.
ATTEMPTS = 4


class Lease(Protocol):
    """The leader lease, as the arbiter sees it (bridge/bus/lease.py's LeaderElection)."""

    def holds(self) -> bool: ...

    async def confirm(self) -> None: ...


class Membership(Protocol):
    """Who is an agent (bridge/council/members.py's Members)."""

    def is_agent(self, agent_id: str) -> bool: ...


class Arbiter:
    """Records opportunities and arbitrates claims on the leader; satisfies the broadcast
    room's `Councils` (bridge/broadcast/councils.py)."""

    def __init__(
        self,
        book: CouncilBook,
        members: Membership,
        lease: Lease,
        *,
        metrics: Metrics | None = None,
    ) -> None:
        self._book = book
        self._members = members
        self._lease = lease
        self._metrics = metrics

    async def record(self, opportunity: CouncilOpportunity) -> None:
        """Record the opportunity under its id (before it is sent anywhere). The same
        opportunity again (a coordinator sending it anew) is recorded already.
        CouncilRefusedError: its id is recorded with other roles or another deadline.
        NatsError (LeaseLostError too): it could not be written."""
        async with self._book.lock:
            for _attempt in range(ATTEMPTS):
                council = self._book.council(opportunity.id)
                if council is not None:
                    _check_same(council.record, opportunity)
                    return
                await self._lease.confirm()
                record = CouncilRecord(
                    **msgspec.structs.asdict(opportunity), recorded_at=now_rfc3339()
                )
                try:
                    council = await self._book.bucket.create(record)
                except WrongRevisionError:
                    await self._book.bucket.reread([council_key(opportunity.id)])
                    continue
                log.info("council_recorded", opportunity_id=opportunity.id, roles=len(record.roles))
                await self._book.reconcile(council, council.id)
                return
        raise NatsError(f"opportunity {opportunity.id!r}: the councils bucket keeps changing")

    async def claim(
        self, opportunity_id: str, agent_id: str, role: str, *, via: Via
    ) -> ClaimAnswer | None:
        """Decide `agent_id`'s claim of `role` (DESIGN.md, "Councils"); the answer, or None
        when none could be decided (this bridge leads no more; NATS failed mid-grant)."""
        if not self._lease.holds():
            self._count("dropped", "not_leading")
            return None
        known = self.answer_now(opportunity_id, agent_id, role)
        if known is not None:
            return known
        async with self._book.lock:
            try:
                return await self._decided(opportunity_id, agent_id, role, via)
            except LeaseLostError:
                self._count("dropped", "not_leading")
            except NatsError as exc:
                log.warning(
                    "council_claim_failed",
                    opportunity_id=opportunity_id,
                    agent_id=agent_id,
                    role=role,
                    error=str(exc),
                )
                self._count("failed", "nats")
                await self._read_after_failure(opportunity_id, agent_id, role)
        return None

    def answer_now(self, opportunity_id: str, agent_id: str, role: str) -> ClaimAnswer | None:
        """The answer to a claim that needs no write (refused, or the role held by the agent
        already), decided at once; None when `claim` must decide it: it may be granted, a
        change is under way, the opportunity is not known here yet, or this bridge does not
        lead. Most claims of a race are refused by what this bridge knows already; with the
        lock free and nothing awaited, the answer is the one the lock would have given."""
        council = self._book.council(opportunity_id)
        if council is None or self._book.lock.locked() or not self._lease.holds():
            return None
        is_agent = self._members.is_agent(agent_id)
        decision = decide(council, role, agent_id, is_agent=is_agent, now=time.time())
        return self._answer(role, decision) if decision.refusal or decision.again else None

    async def _decided(
        self, opportunity_id: str, agent_id: str, role: str, via: Via
    ) -> ClaimAnswer | None:
        if self._book.council(opportunity_id) is None and is_opportunity_id(opportunity_id):
            # Recorded by another bridge since this one read the bucket? Read before refusing.
            await self._book.bucket.reread([council_key(opportunity_id)])
        for _attempt in range(ATTEMPTS):
            council = self._book.council(opportunity_id)
            decision = decide(
                council,
                role,
                agent_id,
                is_agent=self._members.is_agent(agent_id),
                now=time.time(),
            )
            if decision.refusal is not None or decision.again:
                return self._answer(role, decision)
            assert council is not None
            try:
                if decision.stale_seat:
                    await self._lease.confirm()
                    await self._book.clear_seat(council, agent_id)
                    continue
                await self._grant(council, role, agent_id, via)
            except WrongRevisionError:
                await self._reread(council, role, agent_id)
                continue
            await self._book.reconcile(council, council.id)
            self._count("granted")
            return ClaimAnswer(granted=True, role=role, holder=agent_id)
        raise NatsError(f"claim of {role!r} in {opportunity_id!r}: the bucket keeps changing")

    async def _grant(self, council: Council, role: str, agent_id: str, via: Via) -> None:
        """The Seat, then the Holder; the Seat given back when the Holder is refused."""
        if not self._lease.holds():
            raise LeaseLostError("the lease ran out on this bridge's clock")
        core = bool((found := council.role(role)) and found.core)
        now = now_rfc3339()
        seat = Seat(opportunity_id=council.id, agent_id=agent_id, role=role, taken_at=now)
        await self._book.bucket.put_seat(council, seat)
        holder = Holder(
            opportunity_id=council.id,
            role=role,
            core=core,
            agent_id=agent_id,
            via=via,
            granted_at=now,
        )
        try:
            await self._book.bucket.put_holder(council, holder)
        except WrongRevisionError:
            try:
                await self._book.bucket.drop_seat(council, agent_id)
            except NatsError as exc:  # left for the next claim or the upkeep to clear
                log.info(
                    "council_seat_left",
                    opportunity_id=council.id,
                    agent_id=agent_id,
                    error=str(exc),
                )
            raise
        log.info(
            "council_role_granted", opportunity_id=council.id, role=role, agent_id=agent_id, via=via
        )

    async def _reread(self, council: Council, role: str, agent_id: str) -> None:
        keys = {
            council_key(council.id),
            holder_key(council.id, role),
            seat_key(council.id, agent_id),
        }
        seat = council.seats.get(agent_id)
        if seat is not None:
            keys.add(holder_key(council.id, seat.role))
        await self._book.bucket.reread(sorted(keys))

    async def _read_after_failure(self, opportunity_id: str, agent_id: str, role: str) -> None:
        """A write whose answer never came may have been stored: read its keys, and
        announce what they hold. Failing that, the upkeep's audit reads the bucket."""
        council = self._book.council(opportunity_id)
        if council is None:
            return
        try:
            await self._reread(council, role, agent_id)
            await self._book.reconcile(self._book.council(opportunity_id), opportunity_id)
        except NatsError as exc:
            log.debug("council_reread_failed", opportunity_id=opportunity_id, error=str(exc))

    def _answer(self, role: str, decision: Decision) -> ClaimAnswer:
        if decision.refusal is None:
            self._count("granted")
            return ClaimAnswer(granted=True, role=role, holder=decision.holder)
        self._count("refused", decision.refusal)
        return ClaimAnswer(
            granted=False, role=role, holder=decision.holder, reason=decision.refusal
        )

    def _count(self, outcome: str, reason: str = "none") -> None:
        if self._metrics is not None:
            self._metrics.count_claim(outcome, reason)


def _check_same(recorded: CouncilRecord, opportunity: CouncilOpportunity) -> None:
    """CouncilRefusedError unless `opportunity` is the one recorded under its id."""
    if recorded.roles != opportunity.roles or recorded.deadline != opportunity.deadline:
        raise CouncilRefusedError(
            f"opportunity {opportunity.id!r} is recorded already with other roles or "
            "another deadline; a new council needs a new id"
        )
