"""The rooms as the composition root (bridge/app.py) puts them together: the bus state,
discovery, the councils, the broadcaster, trust (the callout, evictions, departures), and the
micro service of every room's endpoint. Each function builds one group of collaborators from
what it is handed; nothing here runs, and nothing here opens a connection."""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import Callable

from nats.aio.client import Client as NATS

from bridge import __version__
from bridge.broadcast.acks import AckDesk
from bridge.broadcast.api import BroadcastEndpoint
from bridge.broadcast.broadcaster import Broadcaster
from bridge.broadcast.councils import Councils
from bridge.broadcast.targets import TargetPlan
from bridge.bus.councils import CouncilsBucket
from bridge.bus.departures import Departures
from bridge.bus.lease import LeaderElection
from bridge.bus.presence import Presence
from bridge.bus.registry import AgentRegistry
from bridge.config import Settings
from bridge.contract.buckets import councils_bucket
from bridge.contract.names import SERVICE_NAME, Names
from bridge.council.api import CouncilEndpoint
from bridge.council.arbiter import Arbiter
from bridge.council.book import CouncilBook
from bridge.council.claims import ClaimDesk
from bridge.council.duties import CouncilDuties
from bridge.council.members import Members
from bridge.council.upkeep import Upkeep
from bridge.discovery.dns import DnsDiscovery
from bridge.discovery.events import EventFollower
from bridge.discovery.followup import Schedule
from bridge.discovery.managers import DockerManagers
from bridge.discovery.methods import Discoverer
from bridge.discovery.pipeline import DiscoveryPipeline
from bridge.discovery.swarm import SwarmDiscovery
from bridge.edges.agent_http import AgentHTTP
from bridge.edges.micro import MicroService
from bridge.ops.metrics import Metrics
from bridge.peers.api import AgentsEndpoint
from bridge.peers.roster import RosterView
from bridge.trust.agent_index import AgentAddresses, normal_address
from bridge.trust.callout import AGENT_ACCOUNT, Callout, CalloutKeys, make_callout
from bridge.trust.evictions import Evictions

__all__ = [
    "BusState",
    "CouncilRoom",
    "DiscoveryRoom",
    "Requests",
    "TrustRoom",
    "broadcast_room",
    "bus_state",
    "council_room",
    "discovery_room",
    "requests_room",
    "trust_room",
]


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
class DiscoveryRoom:
    """Who the agents are: the swarm's tasks (None without Docker), the pipeline of rounds
    into the registry, and the Docker events follower (None without Docker, or when off)."""

    swarm: SwarmDiscovery | None
    pipeline: DiscoveryPipeline
    follower: EventFollower | None


def discovery_room(
    settings: Settings,
    managers: DockerManagers | None,
    http: AgentHTTP,
    dns: DnsDiscovery,
    metrics: Metrics,
    registry: AgentRegistry,
    schedule: Schedule,
    *,
    follow_events: bool,
) -> DiscoveryRoom:
    swarm = SwarmDiscovery(settings, managers) if managers is not None else None
    discoverer = Discoverer(settings, swarm=swarm, dns=dns, http=http, metrics=metrics)
    pipeline = DiscoveryPipeline(settings, discoverer, registry, schedule)
    follower = (
        EventFollower(
            swarm.managers,
            settings.service_name,
            on_event=pipeline.docker_event,
            catch_up=pipeline.trigger,
        )
        if swarm is not None and follow_events
        else None
    )
    return DiscoveryRoom(swarm, pipeline, follower)


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


def broadcast_room(
    nc: NATS,
    names: Names,
    settings: Settings,
    http: AgentHTTP,
    state: BusState,
    councils: Councils,
    metrics: Metrics,
) -> tuple[AckDesk, Broadcaster]:
    """The desk of agents' acks, and the broadcaster that waits on it."""
    acks = AckDesk(nc, names, metrics)
    broadcaster = Broadcaster(
        nc,
        names,
        settings,
        http,
        TargetPlan(state.registry, state.presence),
        acks=acks,
        councils=councils,
        metrics=metrics,
    )
    return acks, broadcaster


@dataclasses.dataclass(frozen=True)
class TrustRoom:
    """With the auth callout: the callout, the evictions of agents that left discovery, and
    the departures the server announces. All None without it."""

    callout: Callout | None
    evictions: Evictions | None
    departures: Departures | None


def trust_room(
    nc: NATS,
    names: Names,
    keys: CalloutKeys | None,
    replicas: int,
    metrics: Metrics,
    clock: Callable[[], float],
    state: BusState,
) -> TrustRoom:
    if keys is None:
        return TrustRoom(None, None, None)
    addresses = AgentAddresses(nc, names, replicas=replicas)
    callout = make_callout(nc, names, keys, addresses, metrics=metrics, clock=clock)
    return TrustRoom(
        callout,
        _evictions_for(nc, callout, state.registry, metrics),
        # The server tells which agent a connection is: its close is seen at once (without
        # the callout, agents share one user and the presence TTL applies).
        Departures(nc, state.presence, account=AGENT_ACCOUNT),
    )


def _evictions_for(
    nc: NATS, callout: Callout, registry: AgentRegistry, metrics: Metrics
) -> Evictions:
    """Closing the connections of agents that left discovery (on the leader), for whom
    discovery (the roster the registry was last handed) has no address."""

    def discovered(agent_id: str) -> str | None:
        agent = registry.desired.get(agent_id)
        return normal_address(agent.address) if agent is not None else None

    return Evictions(nc, callout.agents, discovered, metrics=metrics)


@dataclasses.dataclass(frozen=True)
class Requests:
    """What answers requests: the roster's endpoint, and the micro service chorus-bridge with
    the endpoint each room contributes."""

    peers: AgentsEndpoint
    service: MicroService


def requests_room(
    nc: NATS,
    names: Names,
    state: BusState,
    broadcaster: Broadcaster,
    book: CouncilBook,
    metrics: Metrics,
) -> Requests:
    # The roster, from what the leader writes and who is on the bus now.
    registry, presence = state.registry, state.presence
    roster = RosterView(
        lambda: registry.published,
        presence.entries,
        version=lambda: (registry.version, presence.version),
    )
    peers = AgentsEndpoint(nc, names, roster)
    service = MicroService(
        nc,
        name=SERVICE_NAME,
        version=__version__,
        description="Council opportunities to every agent, and the councils they form",
        metadata={"prefix": names.prefix},
        endpoints=[
            BroadcastEndpoint(nc, names, broadcaster, metrics=metrics).endpoint(),
            CouncilEndpoint(names, book).endpoint(),
            peers.endpoint(),
        ],
    )
    return Requests(peers, service)
