"""Two bridges arbitrating one council at once, each believing it leads (what a leader paused
past its lease and woken up is, until it finds out): the writes alone keep one holder per
role and one role per agent. No lease here: the arbiters' lease always holds, on purpose."""

from __future__ import annotations

import asyncio
import random

import nats
import pytest
from nats.aio.client import Client as NATS

from bridge.contract.messages import (
    ClaimAnswer,
    CouncilOpportunity,
    Holder,
    Role,
    Seat,
    now_rfc3339,
)
from bridge.contract.names import Names
from bridge.council.arbiter import Arbiter
from bridge.council.book import CouncilBook
from bridge.edges.nats_server import EmbeddedNats
from bridge.errors import WrongRevisionError
from tests.council.support import (
    AlwaysLeading,
    EveryoneIsAnAgent,
    Race,
    loaded_book,
    read_council,
)

OPPORTUNITY = CouncilOpportunity(
    id="council-7",
    roles=[Role(name="tpm", core=True), Role(name="architect", core=True), Role(name="qa")],
)
ROLES = [role.name for role in OPPORTUNITY.roles]


async def _arbiter(nc: NATS, names: Names) -> tuple[Arbiter, CouncilBook]:
    book = await loaded_book(nc, names)
    return Arbiter(book, EveryoneIsAnAgent(), AlwaysLeading()), book


@pytest.mark.parametrize("agents", [34, 1000])
async def test_two_arbiters_racing_grant_each_role_once(
    nats_server: EmbeddedNats, unique: str, agents: int
) -> None:
    names = Names(prefix=f"t{unique}", agents_bucket=f"agents_{unique}")
    first_nc = await nats.connect(nats_server.url)
    second_nc = await nats.connect(nats_server.url)
    try:
        first, _ = await _arbiter(first_nc, names)
        second, second_book = await _arbiter(second_nc, names)
        await first.record(OPPORTUNITY)
        # The second read the bucket before the opportunity was recorded: its belief is
        # stale, as a paused leader's is.
        assert second_book.council(OPPORTUNITY.id) is None
        claims = [(f"agent-{i}", role) for i in range(agents) for role in ROLES]
        random.Random(agents).shuffle(claims)
        half = len(claims) // 2
        answers: dict[str, list[ClaimAnswer]] = {}

        async def run(arbiter: Arbiter, mine: list[tuple[str, str]]) -> None:
            for agent_id, role in mine:
                answer = await arbiter.claim(OPPORTUNITY.id, agent_id, role, via="bus")
                if answer is not None:
                    answers.setdefault(agent_id, []).append(answer)

        await asyncio.gather(run(first, claims[:half]), run(second, claims[half:]))
        holders, seats = await read_council(first_nc, names, OPPORTUNITY.id)
    finally:
        await first_nc.close()
        await second_nc.close()
    race = Race(ROLES, holders, seats)
    race.check_bucket()
    assert set(holders) == set(ROLES)
    for agent_id, heard in answers.items():
        race.check_answers(agent_id, heard)
    granted = [(a.role, agent) for agent, heard in answers.items() for a in heard if a.granted]
    assert sorted(granted) == sorted((r, h.agent_id) for r, h in holders.items())


async def test_a_grant_cut_short_is_fenced_before_its_seat_is_cleared(
    nats_server: EmbeddedNats, unique: str
) -> None:
    """A bridge wrote an agent's Seat and paused before its Holder. Another clears the Seat
    (the role fenced first) and grants the agent another role; the paused bridge's Holder,
    written on waking, is refused: the agent holds one role."""
    names = Names(prefix=f"t{unique}", agents_bucket=f"agents_{unique}")
    nc = await nats.connect(nats_server.url)
    try:
        paused, paused_book = await _arbiter(nc, names)
        await paused.record(OPPORTUNITY)
        council = paused_book.council(OPPORTUNITY.id)
        assert council is not None
        seat = Seat(opportunity_id=council.id, agent_id="agent-1", role="tpm", taken_at="")
        await paused_book.bucket.put_seat(council, seat)  # ... and it pauses here

        awake, _ = await _arbiter(nc, names)
        answer = await awake.claim(OPPORTUNITY.id, "agent-1", "architect", via="bus")
        assert answer == ClaimAnswer(granted=True, role="architect", holder="agent-1")

        late = Holder(
            opportunity_id=council.id,
            role="tpm",
            core=True,
            agent_id="agent-1",
            via="bus",
            granted_at=now_rfc3339(),
        )
        with pytest.raises(WrongRevisionError):
            await paused_book.bucket.put_holder(council, late)
        holders, seats = await read_council(nc, names, OPPORTUNITY.id)
    finally:
        await nc.close()
    assert {r: h.agent_id for r, h in holders.items()} == {"architect": "agent-1"}
    Race(ROLES, holders, seats).check_bucket()
