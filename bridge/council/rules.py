"""The rules of a council (DESIGN.md, "Councils"), as pure functions of what the bucket holds.

A claim of `role` by `agent_id` is granted when the opportunity is recorded, the council has not
expired, the claiming agent is an agent (discovered or on the bus), the role is one of the
opportunity's and has no holder, and the agent holds no other role. When several of these fail
at once, the reason given is the first in that order. A claim of the role the agent already
holds is granted again (an agent that asks twice learns it holds it), and changes nothing.

A council is `forming` until every core role has a holder, then `active`; `degraded` when it
was active and a core role lost its holder; `expired` when its deadline passed before it was
ever active (for good: claims are refused from then on). A council without core roles is active
as soon as it is recorded.
"""

from __future__ import annotations

from typing import NamedTuple

from bridge.bus.councils import Council
from bridge.contract.messages import ClaimRefusal, CouncilStateName

__all__ = ["Decision", "decide", "expired", "stale_seats", "state_of", "whole"]


class Decision(NamedTuple):
    """What a claim gets: `refusal` None for a grant (`again`: the agent holds it already);
    `holder` the role's holder when refused (None when it has none). `stale_seat`: the agent
    has a Seat that no Holder backs (a grant cut short): it must be cleared first, then the
    claim decided again. A NamedTuple: one is made for every claim of a race."""

    refusal: ClaimRefusal | None
    holder: str | None = None
    again: bool = False
    stale_seat: bool = False


def whole(council: Council) -> bool:
    """Every core role has a holder."""
    return all(role.name in council.holders for role in council.record.roles if role.core)


def expired(council: Council, now: float) -> bool:
    """The council expired: so recorded, or never active and its deadline has passed."""
    if council.record.state == "expired":
        return True
    deadline = council.deadline
    never_active = council.record.activated_at is None
    return never_active and deadline is not None and now >= deadline and not whole(council)


def state_of(council: Council, now: float) -> CouncilStateName:
    """The state the council is in now, from its holders, record and deadline."""
    if expired(council, now):
        return "expired"
    if whole(council):
        return "active"
    return "forming" if council.record.activated_at is None else "degraded"


def decide(
    council: Council | None, role: str, agent_id: str, *, is_agent: bool, now: float
) -> Decision:
    """The decision on `agent_id`'s claim of `role`, by the rules above."""
    if council is None:
        return Decision("unknown opportunity")
    held = council.holders.get(role)
    holder = held.agent_id if held is not None else None
    if expired(council, now):
        return Decision("expired", holder)
    if not is_agent:
        return Decision("not an agent", holder)
    if council.role(role) is None:
        return Decision("unknown role")
    if holder == agent_id:
        return Decision(None, holder, again=True)
    if holder is not None:
        return Decision("taken", holder)
    seat = council.seats.get(agent_id)
    if seat is None:
        return Decision(None)
    backing = council.holders.get(seat.role)
    if backing is not None and backing.agent_id == agent_id:
        return Decision("holds another role", None)
    return Decision(None, stale_seat=True)


def stale_seats(council: Council) -> list[str]:
    """Agents whose Seat no Holder backs."""
    return [
        agent_id
        for agent_id, seat in council.seats.items()
        if (held := council.holders.get(seat.role)) is None or held.agent_id != agent_id
    ]
