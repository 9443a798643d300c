"""The upkeep on a real nats-server: a council expires at its deadline and its records go a
retention after it; a holder whose agent is gone is released; a Seat no Holder backs is
cleared, its role fenced first. A stop that a NATS call swallowed ends the council duties."""

from __future__ import annotations

import datetime as dt

import nats
import pytest
from nats.aio.client import Client as NATS

from bridge.bus.councils import CouncilsBucket
from bridge.bus.presence import Presence
from bridge.bus.registry import AgentRegistry
from bridge.contract.buckets import councils_bucket, holder_key
from bridge.contract.messages import CouncilEvent, CouncilOpportunity, Role, Seat
from bridge.contract.names import Names
from bridge.council.arbiter import Arbiter
from bridge.council.book import CouncilBook
from bridge.council.claims import ClaimDesk
from bridge.council.duties import CouncilDuties
from bridge.council.members import Members
from bridge.council.upkeep import Upkeep
from bridge.edges.kv import snapshot_of
from bridge.edges.nats_server import EmbeddedNats
from tests.conftest import ends_cancelled, swallow_a_stop, wait_for
from tests.council.support import (
    AlwaysLeading,
    EveryoneIsAnAgent,
    council_events,
    loaded_book,
    read_council,
)

ROLES = [Role(name="tpm", core=True), Role(name="qa")]


class Gone:
    def __init__(self) -> None:
        self.ids: set[str] = set()

    def gone(self, agent_id: str) -> bool:
        return agent_id in self.ids


async def test_expiry_then_removal_a_retention_after_the_deadline(
    nats_server: EmbeddedNats, nc: NATS, unique: str
) -> None:
    names = Names(prefix=f"t{unique}", agents_bucket=f"agents_{unique}")
    deadline = (dt.datetime.now(dt.UTC) + dt.timedelta(seconds=0.5)).isoformat()
    late = CouncilOpportunity(id="council-late", roles=ROLES, deadline=deadline)
    events = await council_events(nc, names, late.id)
    book = await loaded_book(nc, names)
    await Arbiter(book, EveryoneIsAnAgent(), AlwaysLeading()).record(late)
    upkeep = Upkeep(book, Gone(), AlwaysLeading(), retention=1.0)

    async def kept() -> bool:
        async with book.lock:
            await upkeep.once()
        return book.council(late.id) is None

    await wait_for(kept, timeout=10, interval=0.1, what="the council removed")
    kv = await nc.jetstream().key_value(names.councils_bucket)
    live = [k for k, e in (await snapshot_of(kv, 5)).items() if e.operation is None]
    assert live == []
    await nc.flush()
    assert [e.event for e in events] == ["expired"]


async def test_a_gone_holder_is_released_and_a_stale_seat_cleared(
    nats_server: EmbeddedNats, nc: NATS, unique: str
) -> None:
    names = Names(prefix=f"t{unique}", agents_bucket=f"agents_{unique}")
    council = CouncilOpportunity(id="council-1", roles=ROLES)
    events: list[CouncilEvent] = await council_events(nc, names, council.id)
    other = await nats.connect(nats_server.url)
    try:
        book = await loaded_book(other, names)
        arbiter = Arbiter(book, EveryoneIsAnAgent(), AlwaysLeading())
        await arbiter.record(council)
        assert (await arbiter.claim(council.id, "a1", "tpm", via="http")) is not None
        recorded = book.council(council.id)
        assert recorded is not None
        # A grant cut short: a2's Seat for qa, with no Holder.
        await book.bucket.put_seat(
            recorded, Seat(opportunity_id=council.id, agent_id="a2", role="qa", taken_at="")
        )
        qa_before = book.bucket.revisions.get(holder_key(council.id, "qa"), 0)
        gone = Gone()
        gone.ids.add("a1")
        async with book.lock:
            await Upkeep(book, gone, AlwaysLeading()).once()
        fenced = book.bucket.revisions[holder_key(council.id, "qa")]
    finally:
        await other.close()
    holders, seats = await read_council(nc, names, council.id)
    assert holders == {} and seats == {}
    assert fenced > qa_before  # the role's key was written: a late Holder for a2 is refused
    await nc.flush()
    assert [(e.event, e.role, e.agent_id) for e in events] == [
        ("granted", "tpm", "a1"),
        ("activated", None, None),
        ("released", "tpm", "a1"),
        ("degraded", None, None),
    ]


async def test_a_stop_that_a_nats_call_swallowed_ends_the_upkeep(
    nats_server: EmbeddedNats, nc: NATS, unique: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A stop lost in a round's NATS calls (nats-py's wait_for, Python 3.11) ends the upkeep,
    where its ticks would have gone on for good (a bridge that did not stop)."""
    book = await loaded_book(nc, Names(prefix=f"t{unique}", agents_bucket=f"agents_{unique}"))
    upkeep = Upkeep(book, Gone(), AlwaysLeading(), tick=0.01)

    async def swallowing_round(*, audit: bool = False) -> None:
        await swallow_a_stop()

    monkeypatch.setattr(upkeep, "once", swallowing_round)
    assert await ends_cancelled(upkeep.run())


async def test_a_stop_swallowed_reading_the_councils_ends_the_duties(
    nats_server: EmbeddedNats, nc: NATS, unique: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A stop lost as a term's first read of the councils bucket ends (seen: a bridge stopped
    right after it started): the duties end, and do not go on to wait for presence, which
    nothing would ever end."""
    names = Names(prefix=f"t{unique}", agents_bucket=f"agents_{unique}")
    book = CouncilBook(nc, names, CouncilsBucket(nc, councils_bucket(names)))
    read = book.begin_term

    async def read_then_swallow() -> None:
        await read()
        await swallow_a_stop()

    monkeypatch.setattr(book, "begin_term", read_then_swallow)
    presence = Presence(nc, names)  # never run: who is on the bus is never known
    members = Members(AgentRegistry(nc, names), presence, rounds=lambda: 0)
    desk = ClaimDesk(nc, names, Arbiter(book, members, AlwaysLeading()))
    duties = CouncilDuties(book, desk, Upkeep(book, members, AlwaysLeading()), members)
    assert await ends_cancelled(duties.run())
