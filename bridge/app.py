"""`chorus-bridge run`: discovery, the agents bucket, presence, broadcasts, all in one TaskGroup."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from pathlib import Path

import structlog
from nats.aio.client import Client as NATS

from bridge.agent_http import AgentHTTP
from bridge.broadcast import Broadcaster, Target, plan_targets
from bridge.broadcast_api import BroadcastService
from bridge.bus import connect
from bridge.callout import Callout, CalloutKeys
from bridge.callout_agents import AgentAddresses
from bridge.config import Settings
from bridge.discovery.dns import DnsDiscovery
from bridge.discovery.events import EventFollower
from bridge.discovery.methods import Discoverer
from bridge.discovery.swarm import SwarmDiscovery
from bridge.docker_api import DockerAPI
from bridge.embedded import EmbeddedNats
from bridge.errors import DockerAPIError, NatsError
from bridge.http_api import serve_http
from bridge.leader import LeaderElection
from bridge.metrics import Metrics
from bridge.pipeline import DiscoveryPipeline
from bridge.presence import Presence
from bridge.registry import AgentRegistry
from bridge.roster import Roster
from bridge.subjects import Names

__all__ = ["Bridge", "nats_for"]

log = structlog.get_logger(__name__)

# Presence changes of a fleet joining at once are one sync.
PRESENCE_DEBOUNCE = 0.1

@contextlib.asynccontextmanager
async def nats_for(settings: Settings, state_dir: Path | None = None) -> AsyncIterator[str]:
    """The NATS URL to use: NATS_URL, or an embedded nats-server started here."""
    if settings.nats_url:
        yield settings.nats_url
        return
    async with EmbeddedNats(store_dir=state_dir) as server:
        log.info("nats_embedded", url=server.url, store_dir=str(server.store_dir),
                 hint=f"NATS_URL={server.url} chorus-bridge agents")
        yield server.url


class Bridge:
    """The running service. `run(stop, url)` returns when `stop` is set, after a clean shutdown."""

    def __init__(self, settings: Settings, *, metrics: Metrics | None = None,
                 dns: DnsDiscovery | None = None, follow_events: bool = True) -> None:
        self.settings = settings
        # False: no Docker /events follower, rounds on the poll interval only (what
        # bench/swarm_latency.py compares the bridge with).
        self.follow_events = follow_events
        self.names = Names.from_settings(settings)
        self.metrics = metrics or Metrics()
        self._dns = dns or DnsDiscovery(settings)
        # Read at construction: a bad seed file stops the start with one line naming it.
        self._callout_keys = CalloutKeys.load(settings) if settings.auth_callout else None
        self.nc: NATS | None = None
        self.loop: DiscoveryPipeline | None = None
        self.registry: AgentRegistry | None = None
        self.presence: Presence | None = None
        self.broadcaster: Broadcaster | None = None
        self.election: LeaderElection | None = None
        self._discoverer: Discoverer | None = None
        self.http_port: int | None = None
        self.ready = asyncio.Event()
        self._presence_changed = asyncio.Event()

    async def _check_engine(self, swarm: SwarmDiscovery) -> None:
        try:
            manager = await swarm.check_manager()
        except DockerAPIError as exc:
            log.warning("docker_engine_unavailable", kind=exc.kind, error=str(exc),
                        fallback="dns")
            return
        if manager:
            log.info("docker_engine_manager", host=self.settings.docker_host)
        else:
            log.warning("docker_engine_not_manager", host=self.settings.docker_host,
                        hint="the task list is manager-only: place the bridge on a manager node")

    async def run(self, stop: asyncio.Event, nats_url: str) -> None:
        settings = self.settings
        docker_api = DockerAPI(settings) if settings.docker_active else None
        swarm = SwarmDiscovery(settings, docker_api) if docker_api else None
        log.info("bridge_starting", method=settings.discovery_method,
                 docker=settings.docker_active, service=settings.service_name,
                 networks=",".join(settings.network_names), bucket=settings.kv_bucket)
        try:
            async with contextlib.AsyncExitStack() as stack:
                http = await stack.enter_async_context(AgentHTTP(settings))
                self.http_port = await stack.enter_async_context(serve_http(
                    settings.listen_host, settings.listen_port, self.metrics, self.health))
                nc = await stack.enter_async_context(connect(
                    settings, nats_url, on_reconnect=self._resync,
                    on_state=self.metrics.nats_connected.set))
                self.nc = nc
                await self._open(nc, http, swarm)
                await self._serve(stop, swarm)
        finally:
            if docker_api is not None:
                docker_api.close()
        log.info("bridge_stopped")

    async def _open(self, nc: NATS, http: AgentHTTP,
                    swarm: SwarmDiscovery | None) -> None:
        replicas = self.settings.kv_replicas
        election = LeaderElection(nc, self.names, replicas=replicas, metrics=self.metrics)
        # The lease fences the registry's writes: a bridge that lost it writes nothing.
        registry = AgentRegistry(nc, self.names, replicas=replicas, metrics=self.metrics,
                                 fence=election.confirm)
        presence = Presence(nc, self.names, replicas=replicas)
        registry.bus_ids = presence.bus_ids
        presence.changed = self._presence_changed.set
        self.registry, self.presence = registry, presence
        await presence.open()
        self._discoverer = Discoverer(self.settings, swarm=swarm, dns=self._dns, http=http,
                                      metrics=self.metrics)
        self.broadcaster = Broadcaster(nc, self.names, self.settings, http, self.targets,
                                       metrics=self.metrics)
        self.election = election

    async def _serve(self, stop: asyncio.Event, swarm: SwarmDiscovery | None) -> None:
        assert self.presence is not None and self.election is not None
        async with asyncio.TaskGroup() as tg:
            tasks = [tg.create_task(self.presence.run(), name="presence"),
                     tg.create_task(self.election.run(), name="election"),
                     tg.create_task(self._lead_when_elected(swarm), name="leadership")]
            if self._callout_keys is not None and self.nc is not None:
                # Every replica answers the NATS auth callout, leader or standby.
                callout = Callout(self.nc, self.names, self._callout_keys,
                                  AgentAddresses(self.nc, self.names,
                                                 replicas=self.settings.kv_replicas))
                tasks.append(tg.create_task(callout.run(), name="auth-callout"))
            self.ready.set()
            await stop.wait()
            log.info("bridge_stopping")
            for task in tasks:
                task.cancel()

    async def _lead_when_elected(self, swarm: SwarmDiscovery | None) -> None:
        """Only the leader writes the agents bucket and answers broadcasts."""
        assert self.election is not None
        while True:
            await self.election.is_leader.wait()
            try:
                async with asyncio.TaskGroup() as tg:
                    duties = tg.create_task(self._lead(swarm))
                    await self.election.lost.wait()
                    duties.cancel()
            except* NatsError as group:
                # A NATS failure while taking up the duties: drop them and campaign again.
                log.warning("leader_duties_failed", error=str(group.exceptions[0]))
                await asyncio.sleep(1.0)

    async def _lead(self, swarm: SwarmDiscovery | None) -> None:
        assert self.registry and self.nc and self.broadcaster and self._discoverer
        roster = Roster((await self.registry.open()).values())
        self.loop = DiscoveryPipeline(self.settings, self._discoverer, roster, self.registry)
        api = BroadcastService(self.nc, self.names, self.broadcaster, metrics=self.metrics)
        if swarm is not None:
            await self._check_engine(swarm)
        async with asyncio.TaskGroup() as tg:
            tg.create_task(self.loop.run(), name="discovery")
            tg.create_task(self._follow_presence(self.loop), name="presence-sync")
            tg.create_task(api.run(), name="broadcast-api")
            tg.create_task(self.registry.run(), name="registry-audit")
            if swarm is not None and self.follow_events:
                follower = EventFollower(swarm, self.loop.trigger)
                tg.create_task(follower.run(), name="docker-events")

    async def _follow_presence(self, loop: DiscoveryPipeline) -> None:
        """Re-publish on_bus flags when presence changes (not a discovery round)."""
        assert self.registry is not None
        await loop.first_round.wait()
        while True:
            await self._presence_changed.wait()
            await asyncio.sleep(PRESENCE_DEBOUNCE)
            self._presence_changed.clear()
            result = await self.registry.sync()
            if result.writes:
                on_bus = sum(a.on_bus for a in self.registry.published.values())
                log.info("presence_changed", on_bus=on_bus, updated=result.updated,
                         failed_writes=result.failed)

    def targets(self) -> list[Target]:
        """Every agent to reach: the bucket's agents and the agents on the bus only."""
        assert self.registry is not None and self.presence is not None
        return plan_targets(self.registry.published.values(), self.presence.present_ids())

    def health(self) -> tuple[bool, dict[str, object]]:
        """Healthy when NATS is connected and a round succeeded within 3 poll intervals."""
        reasons = []
        nats_ok = self.nc is not None and self.nc.is_connected
        if not nats_ok:
            reasons.append("NATS is not connected")
        leading = self.election is not None and self.election.is_leader.is_set()
        last = self.loop.last_success if self.loop and leading else None
        now = asyncio.get_running_loop().time()
        if leading and last is None:
            reasons.append("no discovery round has succeeded yet")
        elif leading and last is not None and now - last > 3 * self.settings.poll_interval:
            reasons.append(f"no discovery round has succeeded for {now - last:.0f}s")
        if leading and self.registry is not None and self.registry.problem:
            reasons.append(self.registry.problem)
        details: dict[str, object] = {
            "role": "leader" if leading else "standby",
            "leader": self.election.leader if self.election else None,
            "nats": "connected" if nats_ok else "disconnected",
            "last_round_s_ago": None if last is None else round(now - last, 1),
            "agents": len(self.registry.published) if self.registry else 0}
        if reasons:
            details["reasons"] = reasons
        return not reasons, details

    async def _resync(self) -> None:
        # A round after a reconnect re-publishes whatever changed while NATS was away.
        if self.loop is not None:
            self.loop.trigger()
