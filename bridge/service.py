"""The running bridge: what every replica runs, and a leader's duties for as long as it leads.

`Bridge.run()` runs, in one TaskGroup until asked to stop:
- on every replica: presence, the leader election, the NATS probe (for /healthz) and
  (BRIDGE_AUTH_CALLOUT) the auth callout and the agents' connection advisories;
- on the leader only, for as long as its term lasts: discovery rounds into the bucket, the
  presence sync, agents' acks, the micro service chorus-bridge (its endpoints: broadcast,
  council, agents), agents' roster requests, the council duties (claims, holders whose agents
  are gone, expiry), the bucket's audit and the Docker events follower.
Its collaborators are built and passed in by bridge/app.py's `open_bridge`.
"""

from __future__ import annotations

import asyncio

import nats.errors
import structlog
from nats.aio.client import Client as NATS

from bridge.broadcast.acks import AckDesk
from bridge.bus.departures import Departures
from bridge.bus.lease import LeaderElection
from bridge.bus.presence import Presence
from bridge.bus.registry import AgentRegistry
from bridge.config import Settings
from bridge.council.duties import CouncilDuties
from bridge.discovery.events import EventFollower
from bridge.discovery.pipeline import DiscoveryPipeline
from bridge.discovery.roster import Roster
from bridge.discovery.swarm import SwarmDiscovery
from bridge.edges.micro import MicroService
from bridge.edges.nats_probe import NatsProbe
from bridge.errors import DockerAPIError, NatsError
from bridge.ops.health import NATS_SILENCE_LIMIT, Observed, assess
from bridge.ops.metrics import Metrics
from bridge.peers.api import AgentsEndpoint
from bridge.trust.callout import Callout
from bridge.trust.evictions import Evictions
from bridge.waits import raise_if_cancelled

__all__ = ["Bridge"]

log = structlog.get_logger(__name__)

# Presence changes of a fleet joining at once are one sync.
PRESENCE_DEBOUNCE = 0.1
# After a NATS failure while taking up the leader's duties, campaign again after this long.
DUTIES_RETRY = 1.0


class Bridge:
    """The service, built by open_bridge(): every collaborator is passed in, none is optional
    but those that a setting turns off (the Docker API, the events follower, the callout)."""

    def __init__(
        self,
        *,
        settings: Settings,
        nc: NATS,
        probe: NatsProbe,
        metrics: Metrics,
        presence: Presence,
        registry: AgentRegistry,
        election: LeaderElection,
        pipeline: DiscoveryPipeline,
        service: MicroService,
        peers: AgentsEndpoint,
        councils: CouncilDuties,
        acks: AckDesk,
        swarm: SwarmDiscovery | None,
        follower: EventFollower | None,
        callout: Callout | None,
        evictions: Evictions | None,
        departures: Departures | None,
        reconnected: asyncio.Event,
        presence_changed: asyncio.Event,
        http_port: int,
    ) -> None:
        self.settings = settings
        self.nc = nc
        self.metrics = metrics
        self.presence = presence
        self.registry = registry
        self.election = election
        self.pipeline = pipeline
        self.service = service
        self.peers = peers
        self.departures = departures
        self.councils = councils
        self.acks = acks
        self.swarm = swarm
        self.follower = follower
        self.callout = callout
        self.evictions = evictions
        self._reconnected = reconnected
        self._presence_changed = presence_changed
        self.http_port = http_port
        self.probe = probe
        # Set once every task runs (a standby is then ready; a leader's first round may follow).
        self.ready = asyncio.Event()

    async def run(self, stop: asyncio.Event) -> None:
        """Run until `stop` is set, then cancel everything and return (a clean shutdown)."""
        async with asyncio.TaskGroup() as tg:
            tasks = [
                tg.create_task(self.presence.run(), name="presence"),
                tg.create_task(self.election.run(), name="election"),
                tg.create_task(self._lead_when_elected(), name="leadership"),
                tg.create_task(self.probe.run(), name="nats-probe"),
            ]
            if self.callout is not None:
                tasks.append(tg.create_task(self.callout.run(), name="auth-callout"))
            if self.departures is not None:
                tasks.append(tg.create_task(self.departures.run(), name="departures"))
            self.ready.set()
            await stop.wait()
            log.info("bridge_stopping")
            for task in tasks:
                task.cancel()

    async def _lead_when_elected(self) -> None:
        """Only the leader writes the agents bucket and answers broadcasts."""
        while True:
            raise_if_cancelled()  # a stop a NATS call swallowed (bridge/waits.py)
            await self.election.is_leader.wait()
            try:
                async with asyncio.TaskGroup() as tg:
                    duties = tg.create_task(self._lead())
                    await self.election.lost.wait()
                    duties.cancel()
            except* NatsError as group:
                # A NATS failure while taking up the duties: drop them and campaign again.
                log.warning("leader_duties_failed", error=str(group.exceptions[0]))
                await asyncio.sleep(DUTIES_RETRY)

    async def _lead(self) -> None:
        """One term: resume from the bucket, then run the leader's duties until cancelled."""
        roster = Roster((await self.registry.open()).values())
        async with asyncio.TaskGroup() as tg:
            if self.swarm is not None:
                tg.create_task(_check_engine(self.swarm), name="docker-engines")
            tg.create_task(self.pipeline.run(roster), name="discovery")
            tg.create_task(self._follow_presence(), name="presence-sync")
            tg.create_task(self._resync_after_reconnects(), name="resync")
            tg.create_task(self.councils.run(), name="councils")
            # Before the service: its subscription is sent first, so no broadcast comes
            # before the acks are taken.
            tg.create_task(self._take_acks(), name="acks")
            tg.create_task(self.service.run(), name="micro-service")
            tg.create_task(self._answer_agents(), name="roster-for-agents")
            tg.create_task(self.registry.run(), name="registry-audit")
            if self.follower is not None:
                tg.create_task(self.follower.run(), name="docker-events")
            if self.evictions is not None:
                tg.create_task(self.evictions.run(), name="callout-evictions")

    async def _follow_presence(self) -> None:
        """Re-publish on_bus flags when presence changes (not a discovery round)."""
        await self.pipeline.first_round.wait()
        while True:
            raise_if_cancelled()  # a stop the sync's NATS calls swallowed (bridge/waits.py)
            await self._presence_changed.wait()
            await asyncio.sleep(PRESENCE_DEBOUNCE)
            self._presence_changed.clear()
            result = await self.registry.sync()
            if result.writes:
                on_bus = sum(a.on_bus for a in self.registry.published.values())
                log.info(
                    "presence_changed",
                    on_bus=on_bus,
                    updated=result.updated,
                    failed_writes=result.failed,
                )

    async def _answer_agents(self) -> None:
        """Agents' roster requests, for as long as this term lasts."""
        try:
            async with self.peers.answering_agents():
                await asyncio.Event().wait()
        except nats.errors.Error as exc:
            raise NatsError(f"cannot take agents' roster requests: {exc!r}") from exc

    async def _take_acks(self) -> None:
        """Agents' acks, for every broadcast of this term (bridge/broadcast/acks.py)."""
        async with self.acks.taking():
            await asyncio.Event().wait()

    async def _resync_after_reconnects(self) -> None:
        """A round after each reconnect re-publishes whatever changed while NATS was away."""
        while True:
            await self._reconnected.wait()
            self._reconnected.clear()
            self.pipeline.trigger()

    def health(self) -> tuple[bool, dict[str, object]]:
        """(healthy, details) for /healthz: the policy is bridge/ops/health.py's."""
        leading = self.election.is_leader.is_set()
        last = self.pipeline.last_success
        now = asyncio.get_running_loop().time()
        observed = Observed(
            nats_connected=self.nc.is_connected,
            nats_silent_for=self.probe.silent_for(),
            leading=leading,
            leader=self.election.leader,
            last_round_age=None if last is None else now - last,
            agents=len(self.registry.published),
            problems=(self.registry.problem,) if self.registry.problem else (),
            docker_problem=str(outage[0])
            if (outage := self.pipeline.discoverer.docker_outage)
            else None,
            replica_problems=self._replica_problems(),
            extra=self._extra(),
        )
        return assess(observed, self.settings.poll_interval)

    def _replica_problems(self) -> tuple[str, ...]:
        """What keeps any replica from doing its part, once it has lasted a few seconds: the
        lease or presence bucket the server cannot make or serve (its reason), the bridge's
        clock far from the server's."""
        lasting = (
            self.election.trouble.lasting(NATS_SILENCE_LIMIT),
            self.presence.trouble.lasting(NATS_SILENCE_LIMIT),
            self.callout.skew.problem() if self.callout is not None else None,
        )
        return tuple(problem for problem in lasting if problem)

    def _extra(self) -> tuple[tuple[str, object], ...]:
        skew = self.callout.skew.seconds if self.callout is not None else None
        identity = ("agent_identity", "enforced" if self.callout else "not enforced")
        if skew is None:
            return (identity,)
        return (identity, ("callout_clock_skew_s", round(skew, 1)))


async def _check_engine(swarm: SwarmDiscovery) -> None:
    """Say once, at the start of a term, what each engine WHOOSH_DOCKER_HOST names is: a swarm
    manager (the task list is manager-only), or what else (GET /info)."""
    for address, info in await swarm.managers.infos():
        if isinstance(info, DockerAPIError):
            log.warning("docker_engine_unavailable", host=address, kind=info.kind, error=str(info))
            continue
        state = info.get("Swarm") if isinstance(info.get("Swarm"), dict) else {}
        assert isinstance(state, dict)
        if state.get("ControlAvailable"):
            log.info("docker_engine_manager", host=address)
            continue
        node_state = str(state.get("LocalNodeState") or "inactive")
        log.warning(
            "docker_engine_not_manager",
            host=address,
            swarm=node_state,
            hint=_NOT_MANAGER_HINTS.get(node_state, _NOT_MANAGER_HINTS["active"]),
        )


_NOT_MANAGER_HINTS = {
    "active": "a worker, not a manager: the task list is manager-only; point WHOOSH_DOCKER_HOST "
    "at the managers (the stack's docker-api proxy runs on them)",
    "locked": "the swarm is locked on that manager: run `docker swarm unlock` there",
    "pending": "the node is joining the swarm: it is not a manager yet",
    "inactive": "not part of a swarm: point WHOOSH_DOCKER_HOST at a swarm manager",
    "error": "the node's swarm is in error: see `docker info` there",
}
