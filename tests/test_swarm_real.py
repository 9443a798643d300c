"""The bridge against the real Docker Engine in swarm mode, with a real nats-server.

Each test makes its own service of busybox httpd agents on the overlay network chorus_default
and removes it afterwards. The agents' overlay addresses are only read from the Docker API and
compared with the bucket: nothing connects to them (no health checks, no broadcasts, no DNS).
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import docker
import pytest
from nats.aio.client import Client as NATS

from bridge.config import Settings
from bridge.embedded import EmbeddedNats
from bridge.models import Agent
from bridge.registry import read_bucket
from tests.conftest import announcements, run_bridge, wait_for
from tests.swarm_support import NETWORK, AgentService, connect_engine, engine_host

pytestmark = [pytest.mark.swarm, pytest.mark.timeout(180)]

POLL_INTERVAL = 30.0
# A change must reach the bucket well before the poll would have found it.
FOLLOW_DEADLINE = POLL_INTERVAL / 2


@pytest.fixture(scope="session")
def engine() -> Iterator[tuple[str, docker.DockerClient]]:
    """The real engine (skipped without one; a failure under CI=true)."""
    host = engine_host()
    client = connect_engine(host)
    yield host, client
    client.close()


@pytest.fixture
def agents(engine: tuple[str, docker.DockerClient], unique: str) -> Iterator[AgentService]:
    """A service of 3 running agents with a unique name, removed at the end."""
    service = AgentService(engine[1], f"chorus-test-{unique}")
    try:
        service.create(3)
        service.wait_running(3)
        yield service
    finally:
        service.remove()


@pytest.fixture
def real_settings(engine: tuple[str, docker.DockerClient], agents: AgentService,
                  unique: str) -> Settings:
    """A bridge on the real engine: Swarm only, no DNS, the 30 s poll, names of its own."""
    return Settings(docker_host=engine[0], discovery_method="swarm", service_name=agents.name,
                    network_names=(NETWORK,), dns_names=(), poll_interval=POLL_INTERVAL,
                    subject_prefix=f"t{unique}", kv_bucket=f"agents_{unique}",
                    listen_host="127.0.0.1", listen_port=0)


async def bucket(nc: NATS, settings: Settings) -> dict[str, Agent]:
    kv = await nc.jetstream().key_value(settings.kv_bucket)
    agents, _ = await read_bucket(kv)
    return agents


async def addresses(nc: NATS, settings: Settings) -> dict[str, str]:
    return {key: agent.address for key, agent in (await bucket(nc, settings)).items()}


async def running(agents: AgentService) -> dict[str, str]:
    return await asyncio.to_thread(agents.running)


async def until_bucket_is(nc: NATS, settings: Settings, agents: AgentService, count: int,
                          timeout: float) -> dict[str, Agent]:
    """Wait until Docker runs `count` tasks and the bucket holds exactly those addresses.

    Reading the bucket is retried until the deadline: a KV watch may announce the end of the
    current values before delivering them (nats-py), which reads as an empty bucket.
    """
    seen: dict[str, Agent] = {}

    async def same() -> bool:
        tasks = await running(agents)
        seen.clear()
        seen.update(await bucket(nc, settings))
        return len(tasks) == count and {k: a.address for k, a in seen.items()} == tasks

    await wait_for(same, timeout=timeout, interval=0.1,
                   what=f"the bucket to hold the {count} running tasks")
    return dict(seen)


async def test_bucket_holds_the_running_tasks(real_settings: Settings, agents: AgentService,
                                              nats_server: EmbeddedNats, nc: NATS) -> None:
    """After its first round the bucket holds exactly the running tasks, as Docker reports them."""
    async with run_bridge(real_settings, nats_server.url):
        # No event comes after the first round: matching now means that round found them all.
        published = await until_bucket_is(nc, real_settings, agents, 3, timeout=2)
        tasks = {t["ID"]: t for t in await asyncio.to_thread(agents.tasks)}
    assert len(published) == 3
    for key, agent in published.items():
        task = tasks[key]
        assert agent.task_id == key and agent.source == "swarm"
        assert agent.endpoint == f"http://{agent.address}:8080" and "/" not in agent.address
        assert (agent.service, agent.network) == (agents.name, NETWORK)
        assert agent.slot == task["Slot"] and agent.node_id == task["NodeID"]
        assert agent.container_id == task["Status"]["ContainerStatus"]["ContainerID"]


async def test_scaling_reaches_the_bucket_before_the_poll(
        real_settings: Settings, agents: AgentService, nats_server: EmbeddedNats,
        nc: NATS) -> None:
    """A scale-up (3 to 6) and a scale-down (6 to 2) are in the bucket long before the poll."""
    async with run_bridge(real_settings, nats_server.url):
        seen = await announcements(nc, real_settings)
        before = set(await running(agents))
        await asyncio.to_thread(agents.scale, 6)
        await until_bucket_is(nc, real_settings, agents, 6, timeout=FOLLOW_DEADLINE)
        six = set(await running(agents))
        await wait_for(lambda: len(seen) == 3, what="3 announcements")
        assert sorted((s.event, s.agent.id) for s in seen) == sorted(
            ("joined", task) for task in six - before)

        seen.clear()
        await asyncio.to_thread(agents.scale, 2)
        await until_bucket_is(nc, real_settings, agents, 2, timeout=FOLLOW_DEADLINE)
        two = set(await running(agents))
        await wait_for(lambda: len(seen) == 4, what="4 announcements")
        assert sorted((s.event, s.agent.id) for s in seen) == sorted(
            ("left", task) for task in six - two)


async def test_restart_leaves_no_stale_key(real_settings: Settings, agents: AgentService,
                                           nats_server: EmbeddedNats, nc: NATS) -> None:
    """Tasks removed while the bridge was down are gone from the bucket after its first round."""
    async with run_bridge(real_settings, nats_server.url):
        before = await until_bucket_is(nc, real_settings, agents, 3, timeout=5)
    await asyncio.to_thread(agents.scale, 1)
    await asyncio.to_thread(agents.wait_running, 1)
    async with run_bridge(real_settings, nats_server.url):
        # Far below the 30 s poll: only the first round can have removed the two stale keys.
        after = await until_bucket_is(nc, real_settings, agents, 1, timeout=2)
    assert set(after) < set(before)
