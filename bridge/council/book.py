"""The councils as the leader keeps them: the bucket's records (bridge/bus/councils.py), one
lock for every change, and the events that follow each change, in order.

Events come from comparing what the bucket holds with what was last announced, after every
write or read of a council: a Holder not yet announced is `granted`, an announced one that is
gone is `released`; then the council's state (bridge/council/rules.py) is compared with the
state its record last announced, and a change is written into the record first, then
published (`activated`, `degraded`, `expired`). So each change is one event whichever path
found it (a grant, a release, a read after a write whose answer never came, a new term), and a
new leader announces nothing the bucket already held when its term began.

The release and clearing writes keep "one role per agent" under two bridges (README,
"Councils"): a Holder is deleted before its Seat; a Seat that no Holder backs is cleared only
after a tombstone on its role's key, so that a grant still on its way from a paused bridge
(expecting the role's earlier revision) is refused.
"""

from __future__ import annotations

import asyncio
import time

import msgspec
import nats.errors
import structlog
from nats.aio.client import Client as NATS

from bridge.bus.councils import Council, CouncilsBucket
from bridge.contract.messages import (
    CouncilEvent,
    CouncilEventName,
    CouncilStateName,
    encode,
    now_rfc3339,
    rfc3339_seconds,
)
from bridge.contract.names import Names
from bridge.council.rules import state_of
from bridge.errors import WrongRevisionError
from bridge.ops.metrics import Metrics

__all__ = ["CouncilBook"]

log = structlog.get_logger(__name__)

_EVENT_OF: dict[CouncilStateName, CouncilEventName | None] = {
    "active": "activated",
    "degraded": "degraded",
    "expired": "expired",
    "forming": None,
}


class CouncilBook:
    """The leader's councils. `lock` is held around every change (claims, releases, expiry,
    reads), so each council's events go out in the order of its changes."""

    def __init__(
        self, nc: NATS, names: Names, bucket: CouncilsBucket, *, metrics: Metrics | None = None
    ) -> None:
        self._nc = nc
        self._names = names
        self.bucket = bucket
        self._metrics = metrics
        self.lock = asyncio.Lock()
        # Set while this term's councils have been read (state requests wait for it).
        self.loaded = asyncio.Event()
        # opportunity id -> role -> the agent whose holding was last announced.
        self._announced: dict[str, dict[str, str]] = {}

    def council(self, opportunity_id: str) -> Council | None:
        return self.bucket.councils.get(opportunity_id)

    async def begin_term(self) -> None:
        """Read the bucket afresh; what it holds counts as announced (by the last leader).
        The caller holds the lock. Raises NatsError."""
        await self.bucket.load()
        self._announced = {
            council.id: {role: holder.agent_id for role, holder in council.holders.items()}
            for council in self.bucket.councils.values()
        }
        self._count_states()
        self.loaded.set()

    async def reconcile(self, council: Council | None, opportunity_id: str) -> None:
        """After a change or a read: the events of what changed, then the state's. Raises
        NatsError when the record cannot be written (tried again at the next change)."""
        for event, role, agent_id in self._holder_changes(council, opportunity_id):
            await self.publish(opportunity_id, event, role, agent_id)
        if council is not None:
            await self._settle(council)
        self._count_states()

    def _holder_changes(
        self, council: Council | None, opportunity_id: str
    ) -> list[tuple[CouncilEventName, str, str]]:
        holders = council.holders if council is not None else {}
        announced = self._announced.setdefault(opportunity_id, {})
        changes: list[tuple[CouncilEventName, str, str]] = []
        for role, agent_id in list(announced.items()):
            held = holders.get(role)
            if held is None or held.agent_id != agent_id:
                del announced[role]
                changes.append(("released", role, agent_id))
        for role, holder in holders.items():
            if role not in announced:
                announced[role] = holder.agent_id
                changes.append(("granted", role, holder.agent_id))
        if council is None:
            del self._announced[opportunity_id]
        return changes

    def forget(self, opportunity_id: str) -> None:
        """A council removed from the bucket: nothing of it is announced any more."""
        self._announced.pop(opportunity_id, None)

    async def _settle(self, council: Council) -> None:
        """Write the state the council is in now into its record, then announce it."""
        for _attempt in range(3):
            record = council.record
            state = state_of(council, time.time())
            if state == record.state:
                return
            activated_at = now_rfc3339() if state == "active" else record.activated_at
            changed = msgspec.structs.replace(record, state=state, activated_at=activated_at)
            try:
                await self.bucket.put_record(council, changed)
            except WrongRevisionError:
                await self.bucket.reread([council.id])  # another writer: decide on its record
                continue
            if state == "active" and record.activated_at is None:
                self._observe_activation(changed.recorded_at)
            event = _EVENT_OF[state]
            log.info("council_state", opportunity_id=council.id, state=state, was=record.state)
            if event is not None:
                await self.publish(council.id, event, None, None)
            return

    async def release(self, council: Council, role: str) -> None:
        """Take `role` from its holder: the Holder, then its Seat. Raises NatsError
        (WrongRevisionError: someone wrote either meanwhile; read them again)."""
        holder = council.holders[role]
        await self.bucket.drop_holder(council, role)
        seat = council.seats.get(holder.agent_id)
        if seat is not None and seat.role == role:
            await self.bucket.drop_seat(council, holder.agent_id)
        log.info(
            "council_role_released", opportunity_id=council.id, role=role, agent_id=holder.agent_id
        )

    async def clear_seat(self, council: Council, agent_id: str) -> None:
        """Clear a Seat that no Holder backs (a grant cut short): a tombstone on its role's
        key when the role has no holder, then the Seat. Raises NatsError."""
        seat = council.seats[agent_id]
        held = council.holders.get(seat.role)
        if held is not None and held.agent_id == agent_id:
            return  # backed: not stale
        if held is None:
            await self.bucket.drop_holder(council, seat.role)
        await self.bucket.drop_seat(council, agent_id)
        log.info(
            "council_seat_cleared", opportunity_id=council.id, agent_id=agent_id, role=seat.role
        )

    async def publish(
        self,
        opportunity_id: str,
        event: CouncilEventName,
        role: str | None,
        agent_id: str | None,
    ) -> None:
        """One event on `<prefix>.council.<id>.events` (core NATS: at most once)."""
        message = CouncilEvent(
            event=event,
            opportunity_id=opportunity_id,
            role=role,
            agent_id=agent_id,
            at=now_rfc3339(),
        )
        if self._metrics is not None:
            self._metrics.council_events.labels(event=event).inc()
        try:
            await self._nc.publish(self._names.council_events(opportunity_id), encode(message))
        except (nats.errors.Error, OSError) as exc:
            log.warning(
                "council_event_failed", event=event, opportunity_id=opportunity_id, error=repr(exc)
            )

    def _observe_activation(self, recorded_at: str) -> None:
        if self._metrics is None or not recorded_at:
            return
        try:
            self._metrics.activation.observe(max(0.0, time.time() - rfc3339_seconds(recorded_at)))
        except ValueError:
            return

    def _count_states(self) -> None:
        if self._metrics is not None:
            now = time.time()
            self._metrics.set_councils(state_of(c, now) for c in self.bucket.councils.values())
