"""DESIGN.md's discovery rules, on the real bridge with an emulated Docker API, a loopback
DNS server and a real nats-server: no DNS ghosts, one task one agent, stuck tasks logged once."""

from __future__ import annotations

import asyncio

import structlog
from nats.aio.client import Client as NATS

from bridge.config import Settings
from bridge.embedded import EmbeddedNats
from bridge.emulator import DockerEmulator, EmulatedSwarm
from bridge.models import Agent
from bridge.registry import read_bucket
from tests.conftest import dns_discovery, rounds_pass, run_bridge, wait_for
from tests.dns_server import DnsTestServer

TASKS_NAME = "tasks.CHORUS_chorus"
GHOST = "127.50.0.99"


async def bucket(nc: NATS, settings: Settings) -> dict[str, Agent]:
    kv = await nc.jetstream().key_value(settings.kv_bucket)
    agents, _ = await read_bucket(kv)
    return agents


async def test_auto_publishes_no_dns_ghost(
    settings: Settings,
    docker_api: DockerEmulator,
    swarm: EmulatedSwarm,
    dns_server: DnsTestServer,
    nats_server: EmbeddedNats,
    nc: NATS,
) -> None:
    """auto, Swarm answering: the address tasks.<service> still gives for a gone task is not
    an agent; when the Swarm call fails, tasks.<service> is the fallback again."""
    tasks = swarm.add_tasks(3)
    dns_server.set(TASKS_NAME, [*(swarm.address_of(t) or "" for t in tasks), GHOST])
    auto = settings.replace(discovery_method="auto", dns_names=(TASKS_NAME,))
    async with run_bridge(auto, nats_server.url, dns=dns_discovery(auto, dns_server)) as running:
        await rounds_pass(running, 3)
        assert set(await bucket(nc, auto)) == set(tasks)

        swarm.set_error("server_error")
        await rounds_pass(running, 1)
        assert set(await bucket(nc, auto)) == {*tasks, "dns-127-50-0-99-8080"}


async def test_one_task_is_one_agent_on_any_of_its_networks(
    settings: Settings,
    docker_api: DockerEmulator,
    swarm: EmulatedSwarm,
    dns_server: DnsTestServer,
    nats_server: EmbeddedNats,
    nc: NATS,
) -> None:
    """A task on chorus_default and on backend, whose backend address DNS gives, is one
    agent: in auto (another DNS name) and in a swarm round's DNS fallback."""
    (task,) = swarm.add_tasks(1)
    swarm.attach(task, "backend", "127.51.0.2")
    dns_server.set("agents.backend", ["127.51.0.2"])
    dns_server.set(TASKS_NAME, ["127.51.0.2"])
    auto = settings.replace(discovery_method="auto", dns_names=("agents.backend",))
    async with run_bridge(auto, nats_server.url, dns=dns_discovery(auto, dns_server)) as running:
        await rounds_pass(running, 3)
        agents = await bucket(nc, auto)
    assert set(agents) == {task}
    assert agents[task].address == swarm.address_of(task)

    fallback = settings.replace(dns_names=(TASKS_NAME,))
    async with run_bridge(
        fallback, nats_server.url, dns=dns_discovery(fallback, dns_server)
    ) as running:
        swarm.set_error("server_error")
        await rounds_pass(running, 3)
        assert set(await bucket(nc, fallback)) == {task}


async def test_stuck_task_is_logged_once_and_backs_off(
    settings: Settings, docker_api: DockerEmulator, swarm: EmulatedSwarm, nats_server: EmbeddedNats
) -> None:
    """A task that stays pending is logged once, and then re-checked on the poll interval."""
    swarm.add_tasks(1)
    (stuck,) = swarm.add_tasks(1, state="pending")
    quick = settings.replace(poll_interval=1.0)
    with structlog.testing.capture_logs() as logs:
        async with run_bridge(quick, nats_server.url) as running:
            loop = running.bridge.pipeline
            await wait_for(
                lambda: any(e["event"] == "task_not_running" for e in logs),
                timeout=10,
                what="the stuck task to be logged",
            )
            start, started = loop.rounds, asyncio.get_running_loop().time()
            await wait_for(lambda: loop.rounds >= start + 4, timeout=10, what="4 more rounds")
            elapsed = asyncio.get_running_loop().time() - started
    stuck_lines = [e for e in logs if e["event"] == "task_not_running"]
    assert [e["task_id"] for e in stuck_lines] == [stuck]
    # Backed off to the poll interval: 4 rounds took about 4 poll intervals.
    assert elapsed > 3 * quick.poll_interval
