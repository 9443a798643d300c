"""The agents bucket against a real nats-server: writes, announcements, reconcile."""

from __future__ import annotations

import msgspec
import pytest
from nats.aio.client import Client as NATS
from nats.js.api import KeyValueConfig

from bridge.models import ANNOUNCEMENT_DECODER, Announcement
from bridge.registry import AgentRegistry, read_bucket
from bridge.subjects import Names
from tests.conftest import wait_for
from tests.test_roster import A, B, D


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
        ("joined", A.id), ("joined", B.id), ("updated", B.id), ("left", A.id)]
    stored, _ = await read_bucket(kv)
    assert set(stored) == {B.id}
    assert stored[B.id].address == "127.0.0.3"
    assert stored[B.id].first_seen == seen[1].agent.first_seen != ""


async def test_the_same_agent_object_is_written_again_when_its_facts_change(
        nc: NATS, names: Names) -> None:
    """Records are reused by identity only while nothing they depend on changed: a flip of
    on_bus, or a leave and a return of the very same Agent object, are still written."""
    seen = await _announcements(nc, names)
    registry = AgentRegistry(nc, names)
    await registry.open()
    on_bus: set[str] = set()
    registry.bus_ids = lambda agents: frozenset(on_bus)
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
        ("updated", A.id, True), ("left", A.id, True), ("joined", A.id, True)]
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
