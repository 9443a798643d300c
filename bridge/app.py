"""`chorus-bridge run`: the composition root of the service.

`open_bridge()` builds every collaborator once, in dependency order, hands each what it needs,
and closes them all on exit; `Bridge.run()` then runs them in one TaskGroup until asked to stop:
- on every replica: presence, the leader election and (BRIDGE_AUTH_CALLOUT) the auth callout;
- on the leader only, for as long as its term lasts: discovery rounds into the bucket, the
  presence sync, the broadcast API, the bucket's audit and the Docker events follower.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from pathlib import Path

import structlog
from nats.aio.client import Client as NATS

from bridge.agent_http import AgentHTTP
from bridge.broadcast import Broadcaster
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
from bridge.health import Observed, assess
from bridge.http_api import listening_socket, serve_http
from bridge.leader import LeaderElection
from bridge.metrics import Metrics
from bridge.pipeline import DiscoveryPipeline
from bridge.presence import Presence
from bridge.registry import AgentRegistry
from bridge.roster import Roster
from bridge.subjects import Names
from bridge.targets import TargetPlan

__all__ = ["Bridge", "nats_for", "open_bridge", "run_bridge", "running_bridge"]

log = structlog.get_logger(__name__)

# Presence changes of a fleet joining at once are one sync.
PRESENCE_DEBOUNCE = 0.1
# After a NATS failure while taking up the leader's duties, campaign again after this long.
DUTIES_RETRY = 1.0


@contextlib.asynccontextmanager
async def nats_for(settings: Settings, state_dir: Path | None = None) -> AsyncIterator[str]:
    """The NATS URL to use: NATS_URL, or an embedded nats-server started here."""
    if settings.nats_url:
        yield settings.nats_url
        return
    async with EmbeddedNats(store_dir=state_dir) as server:
        log.info(
            "nats_embedded",
            url=server.url,
            store_dir=str(server.store_dir),
            hint=f"NATS_URL={server.url} chorus-bridge agents",
        )
        yield server.url


class Bridge:
    """The service, built by open_bridge(): every collaborator is passed in, none is optional
    but those that a setting turns off (the Docker API, the events follower, the callout)."""

    def __init__(
        self,
        *,
        settings: Settings,
        nc: NATS,
        metrics: Metrics,
        presence: Presence,
        registry: AgentRegistry,
        election: LeaderElection,
        pipeline: DiscoveryPipeline,
        api: BroadcastService,
        swarm: SwarmDiscovery | None,
        follower: EventFollower | None,
        callout: Callout | None,
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
        self.api = api
        self.swarm = swarm
        self.follower = follower
        self.callout = callout
        self._reconnected = reconnected
        self._presence_changed = presence_changed
        self.http_port = http_port
        # Set once every task runs (a standby is then ready; a leader's first round may follow).
        self.ready = asyncio.Event()

    async def run(self, stop: asyncio.Event) -> None:
        """Run until `stop` is set, then cancel everything and return (a clean shutdown)."""
        async with asyncio.TaskGroup() as tg:
            tasks = [
                tg.create_task(self.presence.run(), name="presence"),
                tg.create_task(self.election.run(), name="election"),
                tg.create_task(self._lead_when_elected(), name="leadership"),
            ]
            if self.callout is not None:
                tasks.append(tg.create_task(self.callout.run(), name="auth-callout"))
            self.ready.set()
            await stop.wait()
            log.info("bridge_stopping")
            for task in tasks:
                task.cancel()

    async def _lead_when_elected(self) -> None:
        """Only the leader writes the agents bucket and answers broadcasts."""
        while True:
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
        if self.swarm is not None:
            await _check_engine(self.swarm, self.settings)
        async with asyncio.TaskGroup() as tg:
            tg.create_task(self.pipeline.run(roster), name="discovery")
            tg.create_task(self._follow_presence(), name="presence-sync")
            tg.create_task(self._resync_after_reconnects(), name="resync")
            tg.create_task(self.api.run(), name="broadcast-api")
            tg.create_task(self.registry.run(), name="registry-audit")
            if self.follower is not None:
                tg.create_task(self.follower.run(), name="docker-events")

    async def _follow_presence(self) -> None:
        """Re-publish on_bus flags when presence changes (not a discovery round)."""
        await self.pipeline.first_round.wait()
        while True:
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

    async def _resync_after_reconnects(self) -> None:
        """A round after each reconnect re-publishes whatever changed while NATS was away."""
        while True:
            await self._reconnected.wait()
            self._reconnected.clear()
            self.pipeline.trigger()

    def health(self) -> tuple[bool, dict[str, object]]:
        """(healthy, details) for /healthz: the policy is bridge/health.py's."""
        leading = self.election.is_leader.is_set()
        last = self.pipeline.last_success
        now = asyncio.get_running_loop().time()
        observed = Observed(
            nats_connected=self.nc.is_connected,
            leading=leading,
            leader=self.election.leader,
            last_round_age=None if last is None else now - last,
            agents=len(self.registry.published),
            problems=(self.registry.problem,) if self.registry.problem else (),
        )
        return assess(observed, self.settings.poll_interval)


async def _check_engine(swarm: SwarmDiscovery, settings: Settings) -> None:
    """Say once, at the start of a term, whether the engine can list tasks (a manager)."""
    try:
        manager = await swarm.check_manager()
    except DockerAPIError as exc:
        log.warning("docker_engine_unavailable", kind=exc.kind, error=str(exc), fallback="dns")
        return
    if manager:
        log.info("docker_engine_manager", host=settings.docker_host)
    else:
        log.warning(
            "docker_engine_not_manager",
            host=settings.docker_host,
            hint="the task list is manager-only: place the bridge on a manager node",
        )


@contextlib.asynccontextmanager
async def open_bridge(
    settings: Settings,
    nats_url: str,
    *,
    metrics: Metrics | None = None,
    dns: DnsDiscovery | None = None,
    follow_events: bool = True,
) -> AsyncIterator[Bridge]:
    """Build a bridge connected to NATS at `nats_url`, and close all it opened on exit.

    follow_events=False: no Docker /events follower, rounds on the poll interval only (what
    bench/swarm_latency.py compares the bridge with). Raises NatsError when NATS cannot be
    reached, ConfigError for a bad setting found while opening (a seed file, BRIDGE_LISTEN).
    """
    metrics = metrics or Metrics()
    names = Names.from_settings(settings)
    # Read first: a bad seed file stops the start with one line naming it, before connecting.
    callout_keys = CalloutKeys.load(settings) if settings.auth_callout else None
    reconnected, presence_changed = asyncio.Event(), asyncio.Event()

    async def on_reconnect() -> None:
        reconnected.set()

    log.info(
        "bridge_starting",
        method=settings.discovery_method,
        docker=settings.docker_active,
        service=settings.service_name,
        networks=",".join(settings.network_names),
        bucket=settings.kv_bucket,
    )
    async with contextlib.AsyncExitStack() as stack:
        docker_api = (
            stack.enter_context(contextlib.closing(DockerAPI(settings)))
            if settings.docker_active
            else None
        )
        swarm = SwarmDiscovery(settings, docker_api) if docker_api is not None else None
        http = await stack.enter_async_context(AgentHTTP(settings))
        nc = await stack.enter_async_context(
            connect(
                settings, nats_url, on_reconnect=on_reconnect, on_state=metrics.nats_connected.set
            )
        )
        replicas = settings.kv_replicas
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
        discoverer = Discoverer(
            settings, swarm=swarm, dns=dns or DnsDiscovery(settings), http=http, metrics=metrics
        )
        pipeline = DiscoveryPipeline(settings, discoverer, registry)
        broadcaster = Broadcaster(
            nc, names, settings, http, TargetPlan(registry, presence), metrics=metrics
        )
        sock = stack.enter_context(listening_socket(settings.listen_host, settings.listen_port))
        bridge = Bridge(
            settings=settings,
            nc=nc,
            metrics=metrics,
            presence=presence,
            registry=registry,
            election=election,
            pipeline=pipeline,
            api=BroadcastService(nc, names, broadcaster, metrics=metrics),
            swarm=swarm,
            follower=EventFollower(swarm, pipeline.trigger)
            if swarm is not None and follow_events
            else None,
            callout=Callout(nc, names, callout_keys, AgentAddresses(nc, names, replicas=replicas))
            if callout_keys is not None
            else None,
            reconnected=reconnected,
            presence_changed=presence_changed,
            http_port=sock.getsockname()[1],
        )
        await stack.enter_async_context(serve_http(sock, metrics, bridge.health))
        yield bridge
    log.info("bridge_stopped")


async def run_bridge(settings: Settings, nats_url: str, stop: asyncio.Event) -> None:
    """`chorus-bridge run`: open a bridge, run it until `stop` is set, close it.

    A stop asked for while the bridge is still opening (NATS not answering yet, which can
    take up to ~30 s of connection attempts) ends the opening at once.
    """
    opened = asyncio.Event()

    async def serve() -> None:
        async with open_bridge(settings, nats_url) as bridge:
            opened.set()
            await bridge.run(stop)

    service = asyncio.ensure_future(serve())
    stopping = asyncio.ensure_future(stop.wait())
    try:
        await asyncio.wait({service, stopping}, return_when=asyncio.FIRST_COMPLETED)
        if not service.done() and not opened.is_set():
            log.info("bridge_stopped", reason="asked to stop while connecting to NATS")
            service.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await service
            return
        await service  # once open, the bridge stops by itself (and raises what it raised)
    finally:
        stopping.cancel()
        service.cancel()


@contextlib.asynccontextmanager
async def running_bridge(
    settings: Settings, nats_url: str, *, metrics: Metrics | None = None, follow_events: bool = True
) -> AsyncIterator[Bridge]:
    """A bridge running in a task of its own while the context is open, stopped cleanly on exit
    (the demo and the benchmarks drive one this way). Entered once the bridge is ready; a
    failure of the bridge cancels the body and is raised from here."""
    stop = asyncio.Event()
    async with (
        open_bridge(settings, nats_url, metrics=metrics, follow_events=follow_events) as bridge,
        asyncio.TaskGroup() as tg,
    ):
        tg.create_task(bridge.run(stop), name="bridge")
        await bridge.ready.wait()
        try:
            yield bridge
        finally:
            stop.set()
