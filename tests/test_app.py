"""The bridge end to end on an emulated Docker Engine and a real nats-server."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest
import structlog
from nats.aio.client import Client as NATS

from bridge.bus.registry import read_bucket
from bridge.config import Settings
from bridge.contract.messages import Agent
from bridge.devkit.emulator import DockerEmulator, EmulatedSwarm
from bridge.edges.nats_server import EmbeddedNats
from tests.conftest import (
    RunningBridge,
    announcements,
    dns_discovery,
    rounds_pass,
    run_bridge,
    wait_for,
)
from tests.dns_server import DnsTestServer

ALLOWED_DOCKER_PATHS = {"/_ping", "/version", "/info", "/tasks", "/events"}


async def bucket(nc: NATS, settings: Settings) -> dict[str, Agent]:
    kv = await nc.jetstream().key_value(settings.kv_bucket)
    agents, _ = await read_bucket(kv)
    return agents


def expected(swarm: EmulatedSwarm) -> dict[str, str]:
    """task id -> address of the running tasks, as Docker reports them."""
    return {t: swarm.address_of(t) or "" for t in swarm.running_ids()}


async def addresses(nc: NATS, settings: Settings) -> dict[str, str]:
    return {key: agent.address for key, agent in (await bucket(nc, settings)).items()}


async def until_bucket_matches(
    nc: NATS, settings: Settings, swarm: EmulatedSwarm, timeout: float = 5.0
) -> None:
    async def same() -> bool:
        return await addresses(nc, settings) == expected(swarm)

    await wait_for(same, timeout=timeout, what="the bucket to match the running tasks")


@pytest.fixture
async def running(
    settings: Settings, nats_server: EmbeddedNats, swarm: EmulatedSwarm, docker_api: DockerEmulator
) -> AsyncIterator[RunningBridge]:
    swarm.add_tasks(5)
    async with run_bridge(settings, nats_server.url) as bridge:
        yield bridge


async def test_running_tasks_are_published(
    running: RunningBridge, nc: NATS, settings: Settings, swarm: EmulatedSwarm
) -> None:
    """Every running task is in the bucket with its address, port and endpoint."""
    agents = await bucket(nc, settings)
    assert {a: x.address for a, x in agents.items()} == expected(swarm)
    for agent in agents.values():
        assert agent.endpoint == f"http://{agent.address}:8080"
        assert agent.source == "swarm" and agent.first_seen
    assert set(swarm.requests) <= ALLOWED_DOCKER_PATHS
    assert swarm.unexpected == []


async def test_without_the_events_follower_only_the_poll_finds_tasks(
    nats_server: EmbeddedNats,
    nc: NATS,
    settings: Settings,
    swarm: EmulatedSwarm,
    docker_api: DockerEmulator,
) -> None:
    """follow_events=False (the latency benchmark's baseline): /events is never asked, and
    a new task waits for the next poll."""
    swarm.add_tasks(2)
    quick = settings.replace(poll_interval=0.5)
    async with run_bridge(quick, nats_server.url, follow_events=False):
        new = swarm.add_tasks(1)

        async def listed() -> bool:
            return new[0] in await bucket(nc, settings)

        await wait_for(listed, what="a poll to find the new task")
        assert swarm.requests["/tasks"] >= 2
        assert swarm.requests["/events"] == 0


async def test_join_and_leave_follow_events(
    running: RunningBridge, nc: NATS, settings: Settings, swarm: EmulatedSwarm
) -> None:
    """A scale-up and a scale-down reach the bucket through events, long before the poll."""
    seen = await announcements(nc, settings)
    new = swarm.add_tasks(2)
    await until_bucket_matches(nc, settings, swarm, timeout=20)
    gone = swarm.running_ids()[0]
    gone_address = swarm.address_of(gone)
    swarm.remove_task(gone)
    await until_bucket_matches(nc, settings, swarm, timeout=20)
    await wait_for(lambda: len(seen) == 3, what="3 announcements")
    assert sorted((s.event, s.agent.id) for s in seen) == sorted(
        [("joined", new[0]), ("joined", new[1]), ("left", gone)]
    )
    # A `left` announcement carries the agent's last record: its address as it was published.
    left = next(s for s in seen if s.event == "left")
    assert left.agent.address == gone_address and left.agent.source == "swarm"


async def test_starting_task_is_published_once_running(
    running: RunningBridge, nc: NATS, settings: Settings, swarm: EmulatedSwarm
) -> None:
    """A task still starting is left out, and published soon after it runs (no event needed)."""
    (task,) = swarm.add_tasks(1, state="starting")
    await rounds_pass(running)
    assert task not in await bucket(nc, settings)
    swarm.set_state(task, "running")
    await until_bucket_matches(nc, settings, swarm, timeout=4)


async def test_task_that_loses_its_address(
    running: RunningBridge, nc: NATS, settings: Settings, swarm: EmulatedSwarm
) -> None:
    """A task without an address on the network is no agent; once it has one again, it is."""
    task = swarm.running_ids()[0]
    address = swarm.address_of(task)
    assert address is not None
    swarm.drop_address(task)
    await rounds_pass(running)
    assert task not in await bucket(nc, settings)
    swarm.set_address(task, address)
    await until_bucket_matches(nc, settings, swarm, timeout=8)


@pytest.mark.parametrize(
    "mode", ["not_manager", "server_error", "service_not_found", "bad_json", "hang"]
)
async def test_docker_outage_keeps_the_bucket(
    running: RunningBridge, nc: NATS, settings: Settings, swarm: EmulatedSwarm, mode: Any
) -> None:
    """Whatever the Docker API does wrong, the bucket keeps its agents; one line says so."""
    before = await addresses(nc, settings)
    with structlog.testing.capture_logs() as logs:
        swarm.set_error(mode)
        await rounds_pass(running, 3)
        assert await addresses(nc, settings) == before
        failing = [e for e in logs if e["event"] == "docker_api_failing"]
        assert len(failing) == 1, failing
        swarm.set_error(None)
        swarm.add_tasks(1)
        await until_bucket_matches(nc, settings, swarm, timeout=8)
    assert [e["event"] for e in logs].count("docker_api_recovered") == 1


async def test_socket_gone_keeps_the_bucket(
    settings: Settings,
    nats_server: EmbeddedNats,
    nc: NATS,
    swarm: EmulatedSwarm,
    docker_api: DockerEmulator,
) -> None:
    """With the Docker socket gone, rounds fail with socket_missing and remove nothing."""
    swarm.add_tasks(3)
    async with run_bridge(settings, nats_server.url) as running:
        before = await addresses(nc, settings)
        with structlog.testing.capture_logs() as logs:
            await docker_api.stop()
            await rounds_pass(running, 2)
        assert await addresses(nc, settings) == before == expected(swarm)
        kinds = [e.get("kind") for e in logs if e["event"] == "docker_api_failing"]
        assert kinds in (["socket_missing"], ["unreachable"])


async def test_restart_removes_stale_keys(
    settings: Settings,
    nats_server: EmbeddedNats,
    nc: NATS,
    swarm: EmulatedSwarm,
    docker_api: DockerEmulator,
) -> None:
    """Tasks that went away while the bridge was down are gone after its first round."""
    swarm.add_tasks(4)
    async with run_bridge(settings, nats_server.url):
        await until_bucket_matches(nc, settings, swarm)
    for task in swarm.running_ids()[:2]:
        swarm.remove_task(task)
    swarm.add_tasks(1)
    async with run_bridge(settings, nats_server.url):
        await until_bucket_matches(nc, settings, swarm, timeout=20)


async def test_quiet_restart_writes_nothing(
    settings: Settings,
    nats_server: EmbeddedNats,
    nc: NATS,
    swarm: EmulatedSwarm,
    docker_api: DockerEmulator,
) -> None:
    """A restart over an unchanged fleet makes no KV write (first_seen is kept)."""
    swarm.add_tasks(6)
    async with run_bridge(settings, nats_server.url):
        await until_bucket_matches(nc, settings, swarm)
    kv = await nc.jetstream().key_value(settings.kv_bucket)
    seq = (await kv.status()).stream_info.state.last_seq
    async with run_bridge(settings, nats_server.url) as running:
        await rounds_pass(running, 2)
    assert (await kv.status()).stream_info.state.last_seq == seq


async def test_dns_method_never_opens_docker(
    settings: Settings,
    nats_server: EmbeddedNats,
    nc: NATS,
    swarm: EmulatedSwarm,
    dns_server: DnsTestServer,
) -> None:
    """DISCOVERY_METHOD=dns publishes DNS and known agents, and never calls the Docker API."""
    swarm.add_tasks(3)
    dns_server.set("tasks.CHORUS_chorus", ["127.20.0.1", "127.20.0.2"])
    dns_settings = settings.replace(
        discovery_method="dns",
        dns_names=("tasks.CHORUS_chorus",),
        known_endpoints=("http://127.20.0.9:9000",),
    )
    async with run_bridge(
        dns_settings, nats_server.url, dns=dns_discovery(dns_settings, dns_server)
    ):
        agents = await bucket(nc, settings)
    assert set(agents) == {"dns-127-20-0-1-8080", "dns-127-20-0-2-8080", "dns-127-20-0-9-9000"}
    assert agents["dns-127-20-0-9-9000"].source == "static"
    assert agents["dns-127-20-0-1-8080"].source == "dns"
    assert sum(swarm.requests.values()) == 0


async def test_auto_merges_an_address_found_both_ways(
    settings: Settings,
    nats_server: EmbeddedNats,
    nc: NATS,
    swarm: EmulatedSwarm,
    dns_server: DnsTestServer,
) -> None:
    """In auto mode an address from Swarm and DNS is one agent, the Swarm record.

    (A name other than the service's own tasks.<service>, which a Swarm round replaces.)
    """
    tasks = swarm.add_tasks(2)
    both = swarm.address_of(tasks[0])
    assert both is not None
    dns_server.set("agents.example", [both, "127.20.0.5"])
    auto = settings.replace(discovery_method="auto", dns_names=("agents.example",))
    async with run_bridge(auto, nats_server.url, dns=dns_discovery(auto, dns_server)):
        agents = await bucket(nc, settings)
    assert set(agents) == {*tasks, "dns-127-20-0-5-8080"}
    assert agents[tasks[0]].source == "swarm"


async def test_swarm_method_falls_back_to_dns(
    settings: Settings,
    nats_server: EmbeddedNats,
    nc: NATS,
    swarm: EmulatedSwarm,
    dns_server: DnsTestServer,
) -> None:
    """In swarm mode a failed round adds what DNS finds, and removes nothing."""
    tasks = swarm.add_tasks(2)
    dns_server.set("tasks.CHORUS_chorus", [swarm.address_of(tasks[0]) or "", "127.20.0.7"])
    with_dns = settings.replace(dns_names=("tasks.CHORUS_chorus",))
    async with run_bridge(
        with_dns, nats_server.url, dns=dns_discovery(with_dns, dns_server)
    ) as running:
        assert set(await bucket(nc, settings)) == set(tasks)
        swarm.set_error("server_error")
        await rounds_pass(running)
        # The task found by DNS is still the Swarm record; the other address joins via DNS.
        assert set(await bucket(nc, settings)) == {*tasks, "dns-127-20-0-7-8080"}


async def test_nats_restart_republishes_changes(
    settings: Settings, tmp_path: Any, nc: NATS, swarm: EmulatedSwarm, docker_api: DockerEmulator
) -> None:
    """Changes made while NATS was away reach the bucket after it comes back."""
    store = tmp_path / "restartable"
    async with EmbeddedNats(port=0, store_dir=store) as first:
        port = first.port
        swarm.add_tasks(3)
        async with run_bridge(settings, first.url) as running:
            await first.__aexit__(None, None, None)
            swarm.add_tasks(2)
            await rounds_pass(running, 1)
            async with EmbeddedNats(port=port, store_dir=store) as second:
                import nats

                client = await nats.connect(second.url)
                try:
                    await until_bucket_matches(client, settings, swarm, timeout=15)
                finally:
                    await client.close()


async def test_stop_while_nats_is_down(
    settings: Settings, tmp_path: Any, swarm: EmulatedSwarm, docker_api: DockerEmulator
) -> None:
    """The bridge stops cleanly even when NATS went away first."""
    async with EmbeddedNats(port=0, store_dir=tmp_path / "gone") as server:
        swarm.add_tasks(1)
        async with run_bridge(settings, server.url) as running:
            await server.__aexit__(None, None, None)
            await wait_for(
                lambda: running.bridge.nc is not None and not running.bridge.nc.is_connected,
                what="the disconnection",
            )
            ok, details = running.bridge.health()
            assert not ok and details["nats"] == "disconnected"
            await running.stop()
            assert running.task.exception() is None


async def test_event_stream_reconnects(
    running: RunningBridge, nc: NATS, settings: Settings, swarm: EmulatedSwarm
) -> None:
    """When the daemon closes the event stream, the bridge reconnects and events work again."""
    await wait_for(lambda: swarm.event_streams == 1, what="the event stream")
    with structlog.testing.capture_logs() as logs:
        swarm.close_event_streams()
        await wait_for(
            lambda: any(e["event"] == "docker_events_connected" for e in logs),
            timeout=10,
            what="the stream to reconnect",
        )
    assert any(e["event"] == "docker_events_lost" for e in logs)
    await wait_for(lambda: swarm.event_streams == 1, what="one open stream")
    swarm.add_tasks(1)
    await until_bucket_matches(nc, settings, swarm, timeout=20)
