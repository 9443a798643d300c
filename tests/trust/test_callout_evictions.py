"""Agents as the agent library connects them (nats-py, reconnecting by itself), from a task
whose address is 127.0.0.1: every reconnect goes through the callout; an agent whose task left
discovery loses the bus within a minute and is refused when it comes back; a new task at the
old address is the new agent, never the old one. What the server holds is read as an operator
would: the connections of AGENTS (`$SYS.REQ.ACCOUNT.AGENTS.CONNZ`, as `sys`)."""

from __future__ import annotations

import asyncio
import json
import os
import signal
from collections.abc import AsyncIterator, MutableMapping
from pathlib import Path
from typing import Any

import pytest

from bridge.agent import connect_agent
from bridge.config import Settings
from bridge.contract.messages import AGENT_DECODER
from bridge.devkit.emulator import DockerEmulator, EmulatedSwarm
from bridge.edges.nats_server import EmbeddedNats
from tests.callout_support import (
    AGENT_PASSWORD,
    CalloutFiles,
    bridge_settings,
    callout_server,
    callouts,
    make_keys,
    user,
)
from tests.conftest import RunningBridge, run_bridge, wait_for

pytestmark = pytest.mark.timeout(120)

HOME = "127.0.0.1"
# DESIGN.md: an agent whose task left discovery loses the bus within a minute.
EVICTION_LIMIT = 60.0


async def agents_connected(server: EmbeddedNats) -> list[tuple[str, str]]:
    """(user, address) of every connection the callout admitted, as the server lists them."""
    system = await user(server, "sys", "SYS_PASS")
    try:
        reply = await system.request("$SYS.REQ.ACCOUNT.AGENTS.CONNZ", b'{"auth": true}', timeout=5)
    finally:
        await system.close()
    connections = json.loads(reply.data)["data"]["connections"] or []
    return sorted((c["authorized_user"], c["ip"]) for c in connections if c.get("issuer_key"))


@pytest.fixture
def files(tmp_path: Path) -> CalloutFiles:
    return make_keys(tmp_path / "keys")


@pytest.fixture
async def server(tmp_path: Path, files: CalloutFiles) -> AsyncIterator[EmbeddedNats]:
    async with callout_server(tmp_path, files) as running:
        yield running


def agent(server: EmbeddedNats, agent_id: str) -> Any:
    return connect_agent(
        server.url, agent_id=agent_id, user="agent", password=AGENT_PASSWORD, task_id=agent_id
    )


async def until_connected(
    server: EmbeddedNats, expected: list[tuple[str, str]], timeout: float = 20.0
) -> None:
    async def there() -> bool:
        return await agents_connected(server) == expected

    await wait_for(there, timeout=timeout, interval=0.1, what=f"the server to hold {expected}")


async def wait_index(running: RunningBridge, agents: int) -> None:
    callout = running.bridge.callout
    assert callout is not None
    await wait_for(lambda: len(callout.agents) == agents, timeout=10, what="the callout's index")


async def test_each_reconnect_goes_through_the_callout_and_a_departed_agent_loses_the_bus(
    settings: Settings,
    files: CalloutFiles,
    server: EmbeddedNats,
    swarm: EmulatedSwarm,
    docker_api: DockerEmulator,
    logs: list[MutableMapping[str, Any]],
) -> None:
    """A NATS restart: the agent's reconnect is one more admission by the callout. Its task
    removed: the server no longer holds it within a minute (the bridge closed it), and its
    reconnects are refused."""
    (task,) = swarm.add_tasks(1, addresses=[HOME])
    async with run_bridge(bridge_settings(settings, files), server.url) as running:
        await wait_index(running, 1)
        async with agent(server, task):
            await until_connected(server, [(task, HOME)])
            before = await callouts(running)
            restarts = server.restarts
            assert server.pid is not None
            os.kill(server.pid, signal.SIGKILL)
            await wait_for(lambda: server.restarts > restarts, timeout=20, what="a restart")
            await until_connected(server, [(task, HOME)])
            after = await callouts(running)
            assert after[("admitted", "none")] - before[("admitted", "none")] == 1

            loop = asyncio.get_running_loop()
            swarm.remove_task(task)
            left = loop.time()
            await until_connected(server, [], timeout=EVICTION_LIMIT)
            assert loop.time() - left < EVICTION_LIMIT
            evicted = [e for e in logs if e["event"] == "callout_agent_evicted"]
            assert [(e["agent_id"], e["address"]) for e in evicted] == [(task, HOME)]

            async def refused_on_return() -> bool:
                now = await callouts(running)
                return now[("refused", "address")] > after[("refused", "address")]

            await wait_for(refused_on_return, timeout=10, what="its reconnect to be refused")
            assert await agents_connected(server) == []


async def test_a_reused_address_is_the_new_task(
    settings: Settings,
    files: CalloutFiles,
    server: EmbeddedNats,
    swarm: EmulatedSwarm,
    docker_api: DockerEmulator,
) -> None:
    """A new task at a departed task's address: the old agent's connection is closed, the
    server holds no connection as the old agent, and the new agent is admitted as itself,
    writes its own presence and is on the bus in the agents bucket."""
    (old,) = swarm.add_tasks(1, addresses=[HOME])
    async with run_bridge(bridge_settings(settings, files), server.url) as running:
        await wait_index(running, 1)
        async with agent(server, old):
            await until_connected(server, [(old, HOME)])
            swarm.remove_task(old)
            (new,) = swarm.add_tasks(1, addresses=[HOME])

            async def old_gone() -> bool:
                return all(name != old for name, _ in await agents_connected(server))

            await wait_for(old_gone, timeout=EVICTION_LIMIT, what="the old agent's connection")
            async with agent(server, new):
                coordinator = await user(server, "coordinator", "COORD_PASS", "_INBOX.coord")
                bucket = await coordinator.jetstream().key_value("chorus_agents")

                async def new_on_bus() -> bool:
                    try:
                        entry = await bucket.get(new)
                    except Exception:
                        return False
                    return entry.value is not None and AGENT_DECODER.decode(entry.value).on_bus

                await wait_for(new_on_bus, timeout=20, interval=0.1, what="the new agent on bus")
                await coordinator.close()
                assert {name for name, _ in await agents_connected(server)} == {new}


async def test_an_agent_refused_until_discovery_lists_it_joins_then(
    settings: Settings,
    files: CalloutFiles,
    server: EmbeddedNats,
    swarm: EmulatedSwarm,
    docker_api: DockerEmulator,
) -> None:
    """A stack starts its agents with the bridge: an agent's first connection is refused ("no
    discovered agent") until a round lists its task, which on a starting swarm can take longer
    than the client's first attempts (32 refusals here, 16 s at the library's pace). It keeps
    trying for its first-connection window and joins once listed, on the bus in the bucket."""
    (task,) = swarm.add_tasks(1, addresses=[HOME], state="starting")
    async with run_bridge(bridge_settings(settings, files), server.url) as running:
        await wait_index(running, 0)
        joining = asyncio.create_task(_joins(server, task))

        async def refused_enough() -> bool:
            if joining.done():
                return True  # its error is raised below
            return (await callouts(running)).get(("refused", "address"), 0) >= 32

        await wait_for(refused_enough, timeout=40, interval=0.2, what="32 refusals")
        assert not joining.done(), joining.result()
        swarm.set_state(task, "running")
        await asyncio.wait_for(joining, timeout=30)


async def _joins(server: EmbeddedNats, task: str) -> None:
    """The agent library's first connection, then its presence: on the bus in the bucket."""
    async with agent(server, task):
        await until_connected(server, [(task, HOME)])
        coordinator = await user(server, "coordinator", "COORD_PASS", "_INBOX.coord")
        try:
            bucket = await coordinator.jetstream().key_value("chorus_agents")

            async def on_bus() -> bool:
                try:
                    entry = await bucket.get(task)
                except Exception:
                    return False
                return entry.value is not None and AGENT_DECODER.decode(entry.value).on_bus

            await wait_for(on_bus, timeout=20, interval=0.1, what="the agent on the bus")
        finally:
            await coordinator.close()
