"""The agents bucket against a real nats-server: writes, announcements, reconcile."""

from __future__ import annotations

import asyncio
import contextlib

import msgspec
import pytest
from nats.aio.client import Client as NATS
from nats.js.api import KeyValueConfig

from bridge.bus.registry import AgentRegistry, read_bucket
from bridge.contract.messages import ANNOUNCEMENT_DECODER, Announcement, encode
from bridge.contract.names import Names
from bridge.errors import LeaseLostError
from tests.conftest import wait_for
from tests.discovery.test_roster import A, B, D


@pytest.fixture
def names(unique: str) -> Names:
    return Names(prefix=f"t{unique}", agents_bucket=f"agents_{unique}")


async def _announcements(nc: NATS, names: Names) -> list[Announcement]:
    seen: list[Announcement] = []

    async def on(msg):  # type: ignore[no-untyped-def]
        seen.append(ANNOUNCEMENT_DECODER.decode(msg.data))

    await nc.subscribe(names.announce, cb=on)
    await nc.flush()
    return seen


async def test_writes_only_changes_and_announces_each(nc: NATS, names: Names) -> None:
    """Joins, an update and a leave each cost one write and one announcement; a quiet sync none."""
    seen = await _announcements(nc, names)
    registry = AgentRegistry(nc, names)
    assert await registry.open() == {}
    first = await registry.sync({a.id: a for a in (A, B)})
    assert (first.joined, first.updated, first.left) == (2, 0, 0)
    kv = await nc.jetstream().key_value(names.agents_bucket)
    seq = (await kv.status()).stream_info.state.last_seq
    quiet = await registry.sync({a.id: a for a in (A, B)})
    assert quiet.writes == 0
    assert (await kv.status()).stream_info.state.last_seq == seq
    moved = msgspec.structs.replace(B, address="127.0.0.3", endpoint="http://127.0.0.3:8080")
    second = await registry.sync({A.id: A, B.id: moved})
    assert (second.updated, second.joined) == (1, 0)
    third = await registry.sync({B.id: moved})
    assert third.left == 1
    await wait_for(lambda: len(seen) == 4, what="4 announcements")
    assert [(s.event, s.agent.id) for s in seen] == [
        ("joined", A.id),
        ("joined", B.id),
        ("updated", B.id),
        ("left", A.id),
    ]
    stored, _ = await read_bucket(kv)
    assert set(stored) == {B.id}
    assert stored[B.id].address == "127.0.0.3"
    assert stored[B.id].first_seen == seen[1].agent.first_seen != ""


async def test_the_same_agent_object_is_written_again_when_its_facts_change(
    nc: NATS, names: Names
) -> None:
    """Records are reused by identity only while nothing they depend on changed: a flip of
    on_bus, or a leave and a return of the very same Agent object, are still written."""
    seen = await _announcements(nc, names)
    on_bus: set[str] = set()
    registry = AgentRegistry(nc, names, bus_ids=lambda agents: frozenset(on_bus))
    await registry.open()
    desired = {A.id: A, B.id: B}
    assert (await registry.sync(desired)).joined == 2
    on_bus.add(A.id)
    assert (await registry.sync(desired)).updated == 1
    assert registry.published[A.id].on_bus is True
    assert (await registry.sync({B.id: B})).left == 1
    back = await registry.sync(desired)
    assert (back.joined, back.updated) == (1, 0)
    assert (await registry.sync(desired)).writes == 0
    await wait_for(lambda: len(seen) == 5, what="5 announcements")
    assert [(s.event, s.agent.id, s.agent.on_bus) for s in seen[2:]] == [
        ("updated", A.id, True),
        ("left", A.id, True),
        ("joined", A.id, True),
    ]
    stored, _ = await read_bucket(await nc.jetstream().key_value(names.agents_bucket))
    assert stored[A.id].on_bus is True
    # A newcomer after its leave: first seen again, not the first sighting of the old record.
    assert seen[4].agent.first_seen >= seen[0].agent.first_seen


async def test_restart_resumes_without_writes(nc: NATS, names: Names) -> None:
    """A new registry over the same bucket writes nothing for the same agents."""
    registry = AgentRegistry(nc, names)
    await registry.open()
    await registry.sync({a.id: a for a in (A, B, D)})
    again = AgentRegistry(nc, names)
    loaded = await again.open()
    assert set(loaded) == {A.id, B.id, D.id}
    assert (await again.sync(loaded)).writes == 0
    assert (await again.sync({a.id: a for a in (A, B, D)})).writes == 0


async def test_invalid_values_are_removed(nc: NATS, names: Names) -> None:
    """A key whose value is not an agent is deleted at the first sync."""
    js = nc.jetstream()
    registry = AgentRegistry(nc, names)
    await registry.open()
    kv = await js.key_value(names.agents_bucket)
    await kv.put("garbage", b"not json")
    registry = AgentRegistry(nc, names)
    await registry.open()
    await registry.sync({A.id: A})
    stored, invalid = await read_bucket(kv)
    assert set(stored) == {A.id} and invalid == set()


async def test_existing_bucket_is_used_as_configured(nc: NATS, names: Names) -> None:
    """A bucket made by an operator with other settings is kept, not re-created."""
    js = nc.jetstream()
    await js.create_key_value(KeyValueConfig(bucket=names.agents_bucket, history=5))
    registry = AgentRegistry(nc, names)
    await registry.open()
    await registry.sync({A.id: A})
    kv = await js.key_value(names.agents_bucket)
    assert (await kv.status()).history == 5


async def test_read_bucket_of_tombstones_only(nc: NATS, names: Names) -> None:
    """A bucket whose keys were all deleted reads as empty, at once."""
    registry = AgentRegistry(nc, names)
    await registry.open()
    await registry.sync({A.id: A, B.id: B})
    await registry.sync({})
    kv = await nc.jetstream().key_value(names.agents_bucket)
    assert (await kv.status()).values > 0  # the tombstones
    agents, invalid = await read_bucket(kv, timeout=2)
    assert agents == {} and invalid == set()


async def test_reconcile_is_by_key(nc: NATS, names: Names) -> None:
    """A running task's Agent under another key, an empty value and garbage: the odd keys go,
    the agent is written under its own id once, and later syncs write nothing."""
    seen = await _announcements(nc, names)
    registry = AgentRegistry(nc, names)
    await registry.open()
    kv = await nc.jetstream().key_value(names.agents_bucket)
    await kv.put("elsewhere", encode(A))
    await kv.put("empty", b"")
    await kv.put("junk", b"not json")
    registry = AgentRegistry(nc, names)
    await registry.open()
    first = await registry.sync({A.id: A})
    assert (first.joined, first.failed) == (1, 0)
    for _ in range(3):
        assert (await registry.sync({A.id: A})).writes == 0
    stored, invalid = await read_bucket(kv)
    assert set(stored) == {A.id} and invalid == set()
    await wait_for(lambda: len(seen) == 1, what="one announcement")
    assert [(s.event, s.agent.id) for s in seen] == [("joined", A.id)]


async def test_departed_agents_leave_markers_that_expire(nc: NATS, names: Names) -> None:
    """Deletes are purges whose markers expire: the stream comes back to the live keys."""
    registry = AgentRegistry(nc, names, marker_ttl=1)
    await registry.open()
    kv = await nc.jetstream().key_value(names.agents_bucket)
    for round_ in range(5):  # five rolling updates of two agents
        agents = [
            msgspec.structs.replace(A, id=f"a{round_}-{i}", task_id=f"a{round_}-{i}")
            for i in range(2)
        ]
        assert (await registry.sync({a.id: a for a in agents})).failed == 0

    async def near_live() -> bool:
        return (await kv.status()).values == 2

    await wait_for(near_live, timeout=10, what="the stream to hold the two live keys only")


async def test_foreign_writes_are_repaired(nc: NATS, names: Names) -> None:
    """Someone else overwrites one record and deletes another: the registry notices within
    seconds and writes them back."""
    registry = AgentRegistry(nc, names)
    await registry.open()
    await registry.sync({A.id: A, B.id: B})
    kv = await nc.jetstream().key_value(names.agents_bucket)
    audit = asyncio.create_task(registry.run())
    try:
        await kv.put(A.id, encode(msgspec.structs.replace(A, address="127.9.9.9")))
        await kv.delete(B.id)

        async def repaired() -> bool:
            stored, _ = await read_bucket(kv)
            return set(stored) == {A.id, B.id} and stored[A.id].address == A.address

        await wait_for(repaired, timeout=8, what="the foreign writes to be repaired")
    finally:
        audit.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await audit


async def test_fenced_registry_writes_nothing(nc: NATS, names: Names) -> None:
    """A bridge that lost the lease writes nothing, whatever discovery says."""

    async def lost() -> None:
        raise LeaseLostError("another bridge leads")

    registry = AgentRegistry(nc, names, fence=lost)
    await registry.open()
    result = await registry.sync({A.id: A})
    assert result.writes == 0 and result.failed == 1
    kv = await nc.jetstream().key_value(names.agents_bucket)
    assert (await kv.status()).values == 0


async def test_a_racing_write_fails_on_its_expected_revision(nc: NATS, names: Names) -> None:
    """A record written by another bridge after this one read the bucket is not overwritten
    blindly: the write fails, the key is re-read, and the next sync writes on its revision."""
    registry = AgentRegistry(nc, names)
    await registry.open()
    await registry.sync({A.id: A})
    kv = await nc.jetstream().key_value(names.agents_bucket)
    newer = msgspec.structs.replace(A, address="127.9.9.9")
    await kv.put(A.id, encode(newer))
    moved = msgspec.structs.replace(A, address="127.0.0.7")
    first = await registry.sync({A.id: moved})
    assert first.failed == 1
    assert registry.published[A.id].address == "127.9.9.9"  # what the bucket holds now
    assert (await registry.sync({A.id: moved})).updated == 1
    stored, _ = await read_bucket(kv)
    assert stored[A.id].address == "127.0.0.7"
