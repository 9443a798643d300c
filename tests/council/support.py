"""What the council tests look at, as a coordinator or operator would: the council's events,
the councils bucket, the state endpoint; and the checks every race must pass."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable

from nats.aio.client import Client as NATS
from nats.aio.msg import Msg

from bridge.bus.councils import CouncilsBucket
from bridge.contract.buckets import councils_bucket
from bridge.contract.messages import (
    COUNCIL_EVENT_DECODER,
    COUNCIL_STATE_DECODER,
    ClaimAnswer,
    CouncilEvent,
    CouncilRequest,
    CouncilState,
    Holder,
    Seat,
    encode,
)
from bridge.contract.names import Names
from bridge.council.book import CouncilBook

__all__ = [
    "AlwaysLeading",
    "EveryoneIsAnAgent",
    "Race",
    "council_events",
    "council_state",
    "loaded_book",
    "read_council",
    "wants",
]


class AlwaysLeading:
    """A lease that always holds (an arbiter that acts as the leader whatever happens)."""

    def holds(self) -> bool:
        return True

    async def confirm(self) -> None:
        return None


class EveryoneIsAnAgent:
    def is_agent(self, agent_id: str) -> bool:
        return True


async def loaded_book(nc: NATS, names: Names) -> CouncilBook:
    """A leader's book of the councils bucket, its term begun (the bucket read)."""
    book = CouncilBook(nc, names, CouncilsBucket(nc, councils_bucket(names)))
    async with book.lock:
        await book.begin_term()
    return book


async def council_events(nc: NATS, names: Names, opportunity_id: str) -> list[CouncilEvent]:
    """Subscribe to a council's events; the list fills as they come."""
    seen: list[CouncilEvent] = []

    async def on(msg: Msg) -> None:
        seen.append(COUNCIL_EVENT_DECODER.decode(msg.data))

    await nc.subscribe(names.council_events(opportunity_id), cb=on)
    await nc.flush()
    return seen


async def council_state(nc: NATS, names: Names, opportunity_id: str) -> CouncilState:
    msg = await nc.request(
        names.council, encode(CouncilRequest(opportunity_id=opportunity_id)), timeout=10
    )
    return COUNCIL_STATE_DECODER.decode(msg.data)


async def read_council(
    nc: NATS, names: Names, opportunity_id: str
) -> tuple[dict[str, Holder], dict[str, Seat]]:
    """The Holders (by role) and Seats (by agent) of a council, as a fresh reader of the
    bucket finds them."""
    bucket = CouncilsBucket(nc, councils_bucket(names))
    await bucket.load()
    council = bucket.councils.get(opportunity_id)
    if council is None:
        return {}, {}
    return dict(council.holders), dict(council.seats)


def wants(events: Iterable[CouncilEvent], event: str) -> list[CouncilEvent]:
    return [e for e in events if e.event == event]


@dataclasses.dataclass
class Race:
    """The outcome of claims that raced: what the bucket holds and what each agent heard."""

    roles: list[str]
    holders: dict[str, Holder]
    seats: dict[str, Seat]

    def check_bucket(self) -> None:
        """One holder per role, no agent with two roles, every Seat backed by its Holder."""
        agents = [h.agent_id for h in self.holders.values()]
        assert len(agents) == len(set(agents)), f"an agent holds two roles: {agents}"
        assert all(role == h.role for role, h in self.holders.items())
        backed = {h.agent_id: h.role for h in self.holders.values()}
        assert {a: s.role for a, s in self.seats.items()} == backed, (self.seats, backed)

    def check_answers(self, agent_id: str, answers: list[ClaimAnswer]) -> None:
        """Each answer is right by the final holders (nobody lost a role during the race):
        granted only to the holder; `taken` names the holder; `holds another role` only for
        an agent that holds one while the role was free."""
        mine = next((r for r, h in self.holders.items() if h.agent_id == agent_id), None)
        for answer in answers:
            holder = self.holders.get(answer.role)
            if answer.granted:
                assert holder is not None and holder.agent_id == agent_id, answer
                assert answer.holder == agent_id
            elif answer.reason == "taken":
                assert holder is not None and answer.holder == holder.agent_id != agent_id
            elif answer.reason == "holds another role":
                assert mine is not None and mine != answer.role, (agent_id, answer)
                assert answer.holder is None
            else:
                raise AssertionError(f"{agent_id}: a refusal for no reason of the race: {answer}")
