"""`chorus-bridge run`: the composition root of the service.

`open_bridge()` builds every collaborator once, in dependency order, hands each what it needs,
and closes them all on exit; `Bridge.run()` (bridge/service.py) then runs them until asked to
stop. `run_bridge()` is the command's way in, `running_bridge()` the demo's and benchmarks'.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import structlog

from bridge.assembly import (
    broadcast_room,
    bus_state,
    council_room,
    discovery_room,
    requests_room,
    trust_room,
)
from bridge.config import Settings
from bridge.contract.names import Names
from bridge.discovery.dns import DnsDiscovery
from bridge.discovery.followup import SCHEDULE, Schedule
from bridge.discovery.managers import DockerManagers, Resolve
from bridge.edges.agent_http import AgentHTTP
from bridge.edges.nats_client import connect
from bridge.edges.nats_probe import NatsProbe
from bridge.edges.nats_server import EmbeddedNats
from bridge.ops.health import NATS_SILENCE_LIMIT
from bridge.ops.http import listening_socket, serve_http
from bridge.ops.metrics import Metrics
from bridge.service import Bridge
from bridge.trust.callout import CalloutKeys
from bridge.trust.issued import say_identity
from bridge.waits import cancel_and_wait

__all__ = ["Bridge", "nats_for", "open_bridge", "run_bridge", "running_bridge"]

log = structlog.get_logger(__name__)

# Seconds between the bridge's attempts to reconnect to NATS. Agents (bridge/edges/nats_client.py)
# try at once, then every 0.5 s, all from the moment the server went: after a restart, any of
# them that reaches the server before the bridge has subscribed again to the auth callout is
# refused (no one hears its request). The bridge trying every 20 ms is back, subscribed, within
# a few milliseconds of the server (measured: 1,000 agents, 10 restarts, none refused; at 0.1 s
# one restart in ten lost that race, bench/README.md). A refused connect costs nothing; the
# attempts last only as long as the server is away.
BRIDGE_RECONNECT_WAIT = 0.02


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


@contextlib.asynccontextmanager
async def open_bridge(
    settings: Settings,
    nats_url: str,
    *,
    metrics: Metrics | None = None,
    dns: DnsDiscovery | None = None,
    follow_events: bool = True,
    resolve: Resolve | None = None,
    schedule: Schedule = SCHEDULE,
    clock: Callable[[], float] = time.time,
) -> AsyncIterator[Bridge]:
    """Build a bridge connected to NATS at `nats_url`, and close all it opened on exit.

    follow_events=False: no Docker /events follower, rounds on the poll interval only (what
    bench/swarm_latency.py compares the bridge with). resolve: how WHOOSH_DOCKER_HOST's host
    names are resolved (default: the system resolver); schedule: the rounds' schedule between
    polls (bridge/discovery/followup.py); clock: the wall clock the auth callout reads requests
    with (tests give one that is off from the server's). Raises NatsError when NATS cannot be
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
    say_identity(settings.auth_callout, metrics)
    async with contextlib.AsyncExitStack() as stack:
        managers = (
            stack.enter_context(contextlib.closing(DockerManagers(settings, resolve=resolve)))
            if settings.docker_active
            else None
        )
        http = await stack.enter_async_context(AgentHTTP(settings))
        nc = await stack.enter_async_context(
            connect(
                settings,
                nats_url,
                on_reconnect=on_reconnect,
                on_state=metrics.nats_connected.set,
                reconnect_wait=BRIDGE_RECONNECT_WAIT,
            )
        )
        replicas = settings.kv_replicas
        state = bus_state(nc, names, replicas, metrics, presence_changed)
        discovery = discovery_room(
            settings,
            managers,
            http,
            dns or DnsDiscovery(settings),
            metrics,
            state.registry,
            schedule,
            follow_events=follow_events,
        )
        councils = council_room(nc, names, replicas, metrics, state, discovery.pipeline)
        acks, broadcaster = broadcast_room(
            nc, names, settings, http, state, councils.arbiter, metrics
        )
        trust = trust_room(nc, names, callout_keys, replicas, metrics, clock, state)
        requests = requests_room(nc, names, state, broadcaster, councils.book, metrics)
        sock = stack.enter_context(listening_socket(settings.listen_host, settings.listen_port))
        bridge = Bridge(
            settings=settings,
            nc=nc,
            # Whether NATS still answers: a connected client may no longer read (bus.py).
            probe=NatsProbe(nc, patience=NATS_SILENCE_LIMIT),
            metrics=metrics,
            presence=state.presence,
            registry=state.registry,
            election=state.election,
            pipeline=discovery.pipeline,
            service=requests.service,
            peers=requests.peers,
            councils=councils.duties,
            acks=acks,
            swarm=discovery.swarm,
            follower=discovery.follower,
            callout=trust.callout,
            evictions=trust.evictions,
            departures=trust.departures,
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
            await cancel_and_wait(service)
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
