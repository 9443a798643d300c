"""A bucket deleted under a running bridge (`nats kv del`, a clean-up script run against the
wrong server): the bridge creates it again and fills it by itself, and /healthz says 200."""

from __future__ import annotations

import asyncio

import nats.js.errors
import pytest
from nats.aio.client import Client as NATS

from bridge.config import Settings
from bridge.contract.names import Names
from bridge.devkit.emulator import DockerEmulator, EmulatedSwarm
from bridge.edges.nats_server import EmbeddedNats
from tests.chaos.support import bucket_agents, healthz, on_the_bus, try_broadcast
from tests.conftest import run_bridge, wait_for

# DESIGN.md: a lost bucket is ensured again on any "no stream" answer; seconds, not for good.
RECOVERY = 10.0


def bucket_of(kind: str, settings: Settings) -> str:
    names = Names.from_settings(settings)
    return {
        "agents": names.agents_bucket,
        "presence": names.presence_bucket,
        "lease": names.leader_bucket,
    }[kind]


async def bucket_exists(nc: NATS, name: str) -> bool:
    """Whether the server has the bucket (`nats kv info NAME` answers)."""
    try:
        await nc.jetstream().stream_info(f"KV_{name}")
    except nats.js.errors.NotFoundError:
        return False
    return True


@pytest.mark.parametrize("kind", ["agents", "presence", "lease"])
async def test_a_deleted_bucket_comes_back(
    kind: str,
    settings: Settings,
    nats_server: EmbeddedNats,
    nc: NATS,
    swarm: EmulatedSwarm,
    docker_api: DockerEmulator,
) -> None:
    """Three tasks, one agent on the bus; the agents, presence or lease bucket is deleted.
    Within 10 s, with no change of the fleet to help: the bucket is there again, the agents
    bucket holds the three tasks with the agent on_bus, /healthz is 200 and says leader, a
    broadcast gets a report of the three. Then an agent that joins the bus is on_bus:
    presence is followed again."""
    swarm.add_tasks(3)
    first, second = swarm.running_ids()[:2]
    url = nats_server.url
    name = bucket_of(kind, settings)
    loop = asyncio.get_running_loop()
    async with run_bridge(settings, url) as running, on_the_bus(url, settings, first):
        port = running.bridge.http_port
        assert port is not None

        async def published(*on_bus: str) -> bool:
            agents = await bucket_agents(url, settings)
            return set(agents) == set(swarm.running_ids()) and all(agents[a].on_bus for a in on_bus)

        await wait_for(lambda: published(first), timeout=RECOVERY, what="three agents, one on bus")
        assert await bucket_exists(nc, name)

        assert await nc.jetstream().delete_key_value(name)
        assert not await bucket_exists(nc, name)
        deleted = loop.time()

        async def recovered() -> bool:
            return await bucket_exists(nc, name) and await published(first)

        await wait_for(recovered, timeout=RECOVERY, interval=0.1, what=f"{name} back and filled")
        took = loop.time() - deleted
        status, body = await healthz(port)
        assert status == 200 and body["role"] == "leader", body
        report = await try_broadcast(url, settings, f"after-{kind}-deleted")
        assert report is not None and report.total_agents == 3, report

        async with on_the_bus(url, settings, second):
            await wait_for(
                lambda: published(first, second),
                timeout=RECOVERY,
                interval=0.1,
                what="an agent that joined the bus after the deletion on_bus",
            )
        print(f"{kind} bucket deleted: back and filled {took:.1f}s after")
