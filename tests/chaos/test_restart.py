"""A NATS restart, with its store kept or wiped: the bridge comes back by itself."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from bridge.config import Settings
from bridge.devkit.emulator import DockerEmulator, EmulatedSwarm
from tests.chaos.support import bucket_agents, on_the_bus, try_broadcast
from tests.conftest import run_bridge, wait_for
from tests.nats_cluster import nats_process

# DESIGN.md: a restart costs at most a few seconds; the bound for a test is 30 s.
RECOVERY = 30.0


@pytest.mark.parametrize("store", ["kept", "wiped"])
async def test_restart_of_nats(
    store: str, tmp_path: Path, settings: Settings, swarm: EmulatedSwarm, docker_api: DockerEmulator
) -> None:
    """Within 30 s of NATS answering again: a new task reaches the bucket, a broadcast gets
    a report, an agent on the bus is on_bus again."""
    swarm.add_tasks(3)
    bus_agent = swarm.running_ids()[0]
    async with (
        nats_process(tmp_path / "nats") as server,
        run_bridge(settings, server.url),
        on_the_bus(server.url, settings, bus_agent),
    ):

        async def settled() -> bool:
            agents = await bucket_agents(server.url, settings)
            return set(agents) == set(swarm.running_ids()) and agents[bus_agent].on_bus is True

        await wait_for(settled, timeout=15, what="three agents, one on the bus")
        await server.stop()
        if store == "wiped":
            server.wipe()
        server.start()
        await server.ready()
        answered = asyncio.get_running_loop().time()
        new = swarm.add_tasks(1)[0]

        async def recovered() -> bool:
            agents = await bucket_agents(server.url, settings)
            return set(agents) == set(swarm.running_ids()) and agents[bus_agent].on_bus is True

        await wait_for(
            recovered,
            timeout=RECOVERY,
            interval=0.2,
            what="the new task in the bucket and the bus agent on_bus",
        )
        assert new in await bucket_agents(server.url, settings)

        async def reported() -> bool:
            report = await try_broadcast(server.url, settings, f"after-restart-{store}", 3)
            return report is not None and report.total_agents == len(swarm.running_ids())

        await wait_for(reported, timeout=RECOVERY, interval=0.2, what="a broadcast report")
        took = asyncio.get_running_loop().time() - answered
        print(f"store {store}: recovered {took:.1f}s after NATS answered")
        assert took < RECOVERY
