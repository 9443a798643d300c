"""The rooms as the composition root (bridge/app.py) puts them together: the bus state, the
councils, the evictions of departed agents, and the micro service of every room's endpoint.
Each function builds one group of collaborators from what it is handed; nothing here runs."""

from __future__ import annotations

import asyncio
import dataclasses

from nats.aio.client import Client as NATS

from bridge import __version__
from bridge.bus.councils import CouncilsBucket
from bridge.bus.lease import LeaderElection
from bridge.bus.presence import Presence
from bridge.bus.registry import AgentRegistry
from bridge.contract.buckets import councils_bucket
from bridge.contract.names import SERVICE_NAME, Names
from bridge.council.arbiter import Arbiter
from bridge.council.book import CouncilBook
from bridge.council.claims import ClaimDesk
from bridge.council.duties import CouncilDuties
from bridge.council.members import Members
from bridge.council.upkeep import Upkeep
from bridge.discovery.pipeline import DiscoveryPipeline
from bridge.edges.micro import Endpoint, MicroService
from bridge.ops.metrics import Metrics
from bridge.trust.agent_index import normal_address
from bridge.trust.callout import Callout
from bridge.trust.evictions import Evictions

__all__ = ["BusState", "CouncilRoom", "bus_state", "council_room", "evictions_for", "micro_service"]


@dataclasses.dataclass(frozen=True)
class BusState:
    """What the bridge keeps on the bus: the lease, presence, and the agents bucket."""

    election: LeaderElection
    presence: Presence
    registry: AgentRegistry


def bus_state(
    nc: NATS, names: Names, replicas: int, metrics: Metrics, presence_changed: asyncio.Event
) -> BusState:
    election = LeaderElection(nc, names, replicas=replicas, metrics=metrics)
    presence = Presence(nc, names, replicas=replicas, on_change=presence_changed.set)
    # The lease fences the registry's writes: a bridge that lost it writes nothing.
    registry = AgentRegistry(
        nc,
        names,
        replicas=replicas,
        metrics=metrics,
        fence=election.confirm,
        bus_ids=presence.bus_ids,
    )
    return BusState(election, presence, registry)


@dataclasses.dataclass(frozen=True)
class CouncilRoom:
    """The councils: their record, the arbiter of claims, and the leader's duties."""

    book: CouncilBook
    arbiter: Arbiter
    duties: CouncilDuties


def council_room(
    nc: NATS,
    names: Names,
    replicas: int,
    metrics: Metrics,
    state: BusState,
    pipeline: DiscoveryPipeline,
) -> CouncilRoom:
    bucket = CouncilsBucket(nc, councils_bucket(names, replicas=replicas))
    book = CouncilBook(nc, names, bucket, metrics=metrics)
    members = Members(state.registry, state.presence, rounds=lambda: pipeline.rounds)
    arbiter = Arbiter(book, members, state.election, metrics=metrics)
    desk = ClaimDesk(nc, names, arbiter, metrics=metrics)
    upkeep = Upkeep(book, members, state.election)
    return CouncilRoom(book, arbiter, CouncilDuties(book, desk, upkeep, members))


def evictions_for(
    nc: NATS, callout: Callout | None, registry: AgentRegistry, metrics: Metrics
) -> Evictions | None:
    """With the callout: closing the connections of agents that left discovery (on the
    leader), for whom discovery (the roster the registry was last handed) has no address."""
    if callout is None:
        return None

    def discovered(agent_id: str) -> str | None:
        agent = registry.desired.get(agent_id)
        return normal_address(agent.address) if agent is not None else None

    return Evictions(nc, callout.agents, discovered, metrics=metrics)


def micro_service(nc: NATS, names: Names, endpoints: list[Endpoint]) -> MicroService:
    """The NATS micro service chorus-bridge, with the endpoint each room contributes."""
    return MicroService(
        nc,
        name=SERVICE_NAME,
        version=__version__,
        description="Council opportunities to every agent, and the councils they form",
        metadata={"prefix": names.prefix},
        endpoints=endpoints,
    )
