"""One simulated agent: who it is, where it listens, how it misbehaves, what it received."""

from __future__ import annotations

import dataclasses
import ipaddress
import re
import time
from collections.abc import Callable, Collection, Iterator, Mapping, Sequence
from typing import Literal, get_args

from bridge.contract.messages import ClaimAnswer, CouncilOpportunity, PresenceEntry, now_rfc3339

__all__ = [
    "BEHAVIOURS",
    "Behaviour",
    "ClaimPolicy",
    "Delivery",
    "SimAgent",
    "allocate_addresses",
    "build_agents",
    "claim_core_role",
    "claimed_roles",
    "spread_on_bus",
]

Behaviour = Literal[
    "ok",  # answers at once
    "slow",  # HTTP: answers after the fleet's slow_delay
    "hang",  # HTTP: never answers (until the fleet stops)
    "500",  # HTTP: answers 500
    "reset",  # HTTP: closes the connection without a response
    "huge",  # HTTP: answers 200 with a ~10 MiB streamed body
    "down",  # HTTP: nothing listens on its address
    "unhealthy",  # HTTP: GET /health answers 503; opportunities are served normally
    "no_ack",  # bus: receives opportunities but never acks
    "double_ack",  # bus: acks every opportunity twice
    "leave",  # bus: writes its presence once and never refreshes it, so it expires
]
BEHAVIOURS: frozenset[str] = frozenset(get_args(Behaviour))

Via = Literal["http", "bus"]

# NATS KV keys: the agent id is the presence key.
_KEY_RE = re.compile(r"^[-/_=.a-zA-Z0-9]+$")


@dataclasses.dataclass(frozen=True)
class Delivery:
    """One opportunity as an agent received it."""

    via: Via
    opportunity: CouncilOpportunity
    idempotency_key: str | None
    at: float  # time.monotonic() on arrival


@dataclasses.dataclass(eq=False)
class SimAgent:
    """A simulated agent. Mutable: the fleet updates it as things happen."""

    index: int
    id: str
    address: str
    task_id: str | None = None
    behaviour: Behaviour = "ok"
    on_bus: bool = False
    port: int = 0
    roles: list[str] = dataclasses.field(default_factory=list)
    # The endpoint written in presence entries; None leaves it out (matching by task id/id).
    advertised_endpoint: str | None = None
    received: list[Delivery] = dataclasses.field(default_factory=list)
    acks: int = 0
    # Answers to its claims sent as requests: (opportunity id, answer), as they came.
    answers: list[tuple[str, ClaimAnswer]] = dataclasses.field(default_factory=list)
    # On the bus right now: acks opportunities and has its presence refreshed.
    present: bool = False

    @property
    def endpoint(self) -> str:
        return f"http://{self.address}:{self.port}"

    @property
    def http_received(self) -> list[Delivery]:
        return [d for d in self.received if d.via == "http"]

    @property
    def bus_received(self) -> list[Delivery]:
        return [d for d in self.received if d.via == "bus"]

    def got(self, opportunity_id: str) -> list[Delivery]:
        """Every delivery of that opportunity, by any path."""
        return [d for d in self.received if d.opportunity.id == opportunity_id]

    def record(
        self, via: Via, opportunity: CouncilOpportunity, idempotency_key: str | None = None
    ) -> None:
        self.received.append(Delivery(via, opportunity, idempotency_key, time.monotonic()))

    def presence_entry(self) -> PresenceEntry:
        return PresenceEntry(
            agent_id=self.id,
            task_id=self.task_id,
            endpoint=self.advertised_endpoint,
            roles=list(self.roles),
            at=now_rfc3339(),
        )


# The role (or roles, claimed one after another on the bus) an agent claims; an HTTP answer
# carries one claim: the first.
ClaimPolicy = Callable[[SimAgent, CouncilOpportunity], str | Sequence[str] | None]


def claimed_roles(claimed: str | Sequence[str] | None) -> list[str]:
    """What a ClaimPolicy gave, as a list of roles."""
    if claimed is None:
        return []
    return [claimed] if isinstance(claimed, str) else list(claimed)


def claim_core_role(agent: SimAgent, opportunity: CouncilOpportunity) -> str | None:
    """Agent number i claims core role number i, so a fleet fills every core role once."""
    core = [role.name for role in opportunity.roles if role.core]
    return core[agent.index] if agent.index < len(core) else None


def _usable_addresses(base: str) -> Iterator[str]:
    address = ipaddress.IPv4Address(base)
    if not address.is_loopback:
        raise ValueError(f"base address {base} is not on loopback (127.0.0.0/8)")
    value = int(address)
    while ipaddress.IPv4Address(value).is_loopback:
        # .0 and .255 look like network and broadcast addresses to many tools: skip them.
        if value & 0xFF not in (0, 0xFF):
            yield str(ipaddress.IPv4Address(value))
        value += 1


def allocate_addresses(n: int, base: str = "127.0.1.1") -> list[str]:
    """`n` distinct loopback addresses from `base` upward, skipping .0 and .255."""
    addresses: list[str] = []
    for address in _usable_addresses(base):
        if len(addresses) == n:
            break
        addresses.append(address)
    if len(addresses) < n:
        raise ValueError(f"only {len(addresses)} loopback addresses from {base}; need {n}")
    return addresses


def spread_on_bus(n: int, on_bus: int) -> set[int]:
    """Indices of `on_bus` of `n` agents, spread evenly (17 of 34: every odd index)."""
    if not 0 <= on_bus <= n:
        raise ValueError(f"on_bus={on_bus} must be between 0 and the number of agents ({n})")
    return {i for i in range(n) if (i + 1) * on_bus // n > i * on_bus // n}


def _check_ids(ids: Sequence[str], n: int) -> None:
    if len(ids) != n:
        raise ValueError(f"{len(ids)} agent ids given for {n} agents")
    if len(set(ids)) != n:
        raise ValueError("agent ids must be distinct")
    bad = [agent_id for agent_id in ids if not _KEY_RE.match(agent_id)]
    if bad:
        raise ValueError(f"agent ids must be valid NATS KV keys ([-/_=.a-zA-Z0-9]): {bad[:3]}")


def _check_behaviours(behaviours: Mapping[int, str], n: int) -> None:
    for index, behaviour in behaviours.items():
        if not 0 <= index < n:
            raise ValueError(f"behaviour for agent {index}, but agents are 0..{n - 1}")
        if behaviour not in BEHAVIOURS:
            raise ValueError(f"unknown behaviour {behaviour!r}; one of {sorted(BEHAVIOURS)}")


def build_agents(
    n: int,
    *,
    base: str,
    on_bus: int | Collection[int],
    behaviours: Mapping[int, Behaviour],
    ids: Sequence[str] | None,
    task_ids: Sequence[str] | None,
) -> list[SimAgent]:
    """The agents of a fleet, before anything listens. `task_ids` are ids that are task ids."""
    if n < 0:
        raise ValueError(f"n={n}: the number of agents cannot be negative")
    if ids is not None and task_ids is not None:
        raise ValueError("give either ids or task_ids, not both")
    chosen = task_ids if task_ids is not None else ids
    if chosen is None:
        chosen = [f"sim-{i}" for i in range(n)]
    _check_ids(chosen, n)
    _check_behaviours(behaviours, n)
    bus = spread_on_bus(n, on_bus) if isinstance(on_bus, int) else set(on_bus)
    if not bus <= set(range(n)):
        raise ValueError(f"on_bus indices outside 0..{n - 1}: {sorted(bus - set(range(n)))[:3]}")
    return [
        SimAgent(
            index=i,
            id=chosen[i],
            address=address,
            task_id=chosen[i] if task_ids is not None else None,
            behaviour=behaviours.get(i, "ok"),
            on_bus=i in bus,
        )
        for i, address in enumerate(allocate_addresses(n, base))
    ]
