"""The callout's index of discovered agents by address, kept by a watch of a real bucket."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import nats
import nats.js.errors
import pytest
from nats.aio.client import Client as NATS
from nats.js.api import KeyValueConfig
from nats.js.kv import KeyValue

from bridge.contract.messages import Agent, encode
from bridge.contract.names import Names
from bridge.edges.nats_server import EmbeddedNats
from bridge.trust import agent_index as callout_agents
from bridge.trust.agent_index import AgentAddresses, normal_address
from tests.conftest import ends_cancelled, swallow_a_stop, wait_for


def agent(agent_id: str, address: str, port: int = 8080) -> bytes:
    return encode(
        Agent(
            id=agent_id,
            endpoint=f"http://{address}:{port}",
            address=address,
            port=port,
            source="static",
        )
    )


@pytest.fixture
async def bucket(nc: NATS, unique: str) -> KeyValue:
    return await nc.jetstream().create_key_value(KeyValueConfig(bucket=f"agents_{unique}"))


@pytest.fixture
async def index(nc: NATS, bucket: KeyValue, unique: str) -> AsyncIterator[AgentAddresses]:
    addresses = AgentAddresses(nc, Names(prefix=f"t{unique}", agents_bucket=f"agents_{unique}"))
    task = asyncio.create_task(addresses.run())
    async with asyncio.timeout(5):
        await addresses.loaded.wait()
    yield addresses
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task


async def test_follows_joins_moves_and_departures(bucket: KeyValue, index: AgentAddresses) -> None:
    """An agent is found at its address once written, at its new one once moved, and nowhere
    once deleted; a record under another key, or without an IP, admits no one."""
    await bucket.put("a1", agent("a1", "127.20.0.1"))
    await bucket.put("forged", agent("a2", "127.20.0.2"))  # the id is not the key
    await bucket.put("named", agent("named", "agent-host"))  # not an address
    await wait_for(lambda: index.agent_at("127.20.0.1") == ("a1", ""), what="a1")
    assert index.agent_at("127.20.0.2")[0] is None and len(index) == 1
    await bucket.put("a1", agent("a1", "127.20.0.9"))
    await wait_for(lambda: index.agent_at("127.20.0.9") == ("a1", ""), what="a1 moved")
    assert index.agent_at("127.20.0.1") == (None, "address 127.20.0.1 is no discovered agent")
    await bucket.delete("a1")
    await wait_for(lambda: len(index) == 0, what="a1 gone")
    assert index.agent_at("127.20.0.9")[0] is None


async def test_a_deleted_bucket_is_watched_again_once_made_anew(
    nc: NATS, bucket: KeyValue, index: AgentAddresses, unique: str
) -> None:
    """The agents bucket deleted (`nats kv del`) and made again, as the leader does: agents
    written to the new bucket are admitted; a watch of the old stream would have waited for
    good, and new agents would have been refused until NATS reconnected."""
    await bucket.put("a1", agent("a1", "127.20.0.11"))
    await wait_for(lambda: index.agent_at("127.20.0.11")[0] == "a1", what="a1")
    js = nc.jetstream()
    await js.delete_key_value(f"agents_{unique}")

    async def written_anew() -> bool:
        try:
            again = await js.key_value(f"agents_{unique}")
        except nats.js.errors.BucketNotFoundError:
            return False  # not made again yet (the index ensures it, as the leader would)
        await again.put("a2", agent("a2", "127.20.0.12"))
        return True

    await wait_for(written_anew, timeout=10, what="the bucket made anew")
    await wait_for(
        lambda: index.agent_at("127.20.0.12")[0] == "a2", timeout=10, what="a2 in the new bucket"
    )


async def test_several_agents_at_one_address_are_told_apart_by_the_connection_name(
    bucket: KeyValue, index: AgentAddresses
) -> None:
    """Two known endpoints on one host: only a connection naming one of them is admitted,
    and only as one of the agents at that address."""
    await bucket.put("dns-127-20-0-5-8080", agent("dns-127-20-0-5-8080", "127.20.0.5"))
    await bucket.put("dns-127-20-0-5-9090", agent("dns-127-20-0-5-9090", "127.20.0.5", 9090))
    await bucket.put("elsewhere", agent("elsewhere", "127.20.0.6"))
    await wait_for(lambda: len(index) == 3, what="three agents")
    assert index.agent_at("127.20.0.5", "dns-127-20-0-5-9090") == ("dns-127-20-0-5-9090", "")
    assert index.agent_at("127.20.0.5", "elsewhere")[0] is None
    assert "2 agents" in index.agent_at("127.20.0.5")[1]


def test_addresses_are_compared_in_one_spelling() -> None:
    """An IPv4-mapped IPv6 address is its IPv4 address; a name is no address."""
    assert normal_address("::ffff:10.0.2.7") == "10.0.2.7"
    assert normal_address("[::1]") == "::1"
    assert normal_address("agent-host") is None


async def test_a_nats_restart_that_lost_the_bucket_is_followed(tmp_path: Path, unique: str) -> None:
    """After NATS restarts without its state, the watch starts again on the bucket the
    leader makes anew: agents written there are found, those of before are not."""
    names = Names(prefix=f"t{unique}", agents_bucket=f"agents_{unique}")
    config = KeyValueConfig(bucket=names.agents_bucket)
    async with EmbeddedNats(port=0, store_dir=tmp_path / "one") as first:
        port = int(first.url.rpartition(":")[2])
        nc = await nats.connect(first.url, max_reconnect_attempts=-1, reconnect_time_wait=0.2)
        await (await nc.jetstream().create_key_value(config)).put("a1", agent("a1", "127.20.1.1"))
        index = AgentAddresses(nc, names)
        task = asyncio.create_task(index.run())
        await wait_for(lambda: index.agent_at("127.20.1.1")[0] == "a1", what="a1")
    async with EmbeddedNats(port=port, store_dir=tmp_path / "two"):
        await wait_for(lambda: nc.is_connected, timeout=10, what="the reconnection")

        async def made_again() -> bool:  # by the index's own watch, as the leader would
            streams = await nc.jetstream().streams_info()
            return f"KV_{names.agents_bucket}" in [info.config.name for info in streams]

        await wait_for(made_again, timeout=10, what="the bucket made again")
        kv = await nc.jetstream().key_value(names.agents_bucket)
        await kv.put("b1", agent("b1", "127.20.1.2"))
        await wait_for(
            lambda: index.agent_at("127.20.1.2")[0] == "b1",
            timeout=10,
            what="the agent written after the restart",
        )
        assert index.agent_at("127.20.1.1")[0] is None
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        await nc.close()


async def test_a_stop_that_a_nats_call_swallowed_ends_the_watch(
    nc: NATS, bucket: KeyValue, unique: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A stop lost in opening the bucket (nats-py's wait_for, Python 3.11) ends the watch at
    once, where its timeouts would have hidden it for good."""

    ensure_bucket = vars(callout_agents)["ensure_bucket"]

    async def ensure_then_swallow(*args: Any) -> Any:
        opened = await ensure_bucket(*args)
        await swallow_a_stop()
        return opened

    monkeypatch.setattr(callout_agents, "ensure_bucket", ensure_then_swallow)
    index = AgentAddresses(nc, Names(prefix=f"t{unique}", agents_bucket=f"agents_{unique}"))
    assert await ends_cancelled(index.run())
