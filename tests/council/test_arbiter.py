"""The arbiter's answer at once (`Arbiter.answer_now`): from what the leader knows, only when
no change is under way and the claim needs no write; otherwise the locked way decides."""

from __future__ import annotations

from nats.aio.client import Client as NATS

from bridge.contract.messages import ClaimAnswer, CouncilOpportunity, Role
from bridge.contract.names import Names
from bridge.council.arbiter import Arbiter
from bridge.council.book import CouncilBook
from tests.council.support import AlwaysLeading, EveryoneIsAnAgent, loaded_book

OPPORTUNITY = CouncilOpportunity(
    id="council-9", roles=[Role(name="tpm", core=True), Role(name="qa")]
)


class Lease(AlwaysLeading):
    def __init__(self) -> None:
        self.leading = True

    def holds(self) -> bool:
        return self.leading


async def _arbiter(nc: NATS, unique: str, lease: Lease) -> tuple[Arbiter, CouncilBook]:
    names = Names(prefix=f"t{unique}", agents_bucket=f"agents_{unique}")
    book = await loaded_book(nc, names)
    arbiter = Arbiter(book, EveryoneIsAnAgent(), lease)
    await arbiter.record(OPPORTUNITY)
    return arbiter, book


async def test_a_claim_that_needs_no_write_is_answered_at_once(nc: NATS, unique: str) -> None:
    arbiter, _ = await _arbiter(nc, unique, Lease())
    granted = await arbiter.claim(OPPORTUNITY.id, "a1", "tpm", via="bus")
    assert granted == ClaimAnswer(granted=True, role="tpm", holder="a1")
    taken = ClaimAnswer(granted=False, role="tpm", holder="a1", reason="taken")
    assert arbiter.answer_now(OPPORTUNITY.id, "a2", "tpm") == taken
    assert arbiter.answer_now(OPPORTUNITY.id, "a1", "tpm") == granted  # held already
    assert arbiter.answer_now(OPPORTUNITY.id, "a1", "qa") == ClaimAnswer(
        granted=False, role="qa", holder=None, reason="holds another role"
    )
    assert arbiter.answer_now(OPPORTUNITY.id, "a2", "cto") == ClaimAnswer(
        granted=False, role="cto", holder=None, reason="unknown role"
    )


async def test_otherwise_the_locked_way_decides(nc: NATS, unique: str) -> None:
    lease = Lease()
    arbiter, book = await _arbiter(nc, unique, lease)
    await arbiter.claim(OPPORTUNITY.id, "a1", "tpm", via="bus")
    assert arbiter.answer_now(OPPORTUNITY.id, "a2", "qa") is None  # may be granted: a write
    assert arbiter.answer_now("council-never", "a2", "tpm") is None  # read before refusing
    async with book.lock:  # a change under way: its outcome may change the answer
        assert arbiter.answer_now(OPPORTUNITY.id, "a2", "tpm") is None
    lease.leading = False
    assert arbiter.answer_now(OPPORTUNITY.id, "a2", "tpm") is None
    assert await arbiter.claim(OPPORTUNITY.id, "a2", "tpm", via="bus") is None  # not leading
