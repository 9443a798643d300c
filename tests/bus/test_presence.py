"""Presence: entries matched to agents by key only, and freshness on the bridge's own clock."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest
import structlog
from nats.aio.client import Client as NATS
from nats.js.api import KeyValueConfig

from bridge.bus import presence as presence_module
from bridge.bus.presence import Presence, match_presence
from bridge.contract.messages import PresenceEntry, encode, now_rfc3339
from bridge.contract.names import Names
from bridge.errors import NatsError
from tests.conftest import ends_cancelled, swallow_a_stop, wait_for
from tests.discovery.test_roster import A, B, D


def test_match_by_key_only() -> None:
    """A key that is an agent's id puts that agent on the bus; a key that is none is on the bus
    only. What an entry says inside (task id, endpoint) is never matched."""
    matched = match_presence([A, B, D], [A.id, D.id, "elsewhere"])
    assert matched.on_bus == {A.id, D.id}
    assert matched.bus_only == ("elsewhere",)
    assert match_presence([A], []).on_bus == frozenset()


async def _present(
    nc: NATS, names: Names, presence: Presence, entries: dict[str, PresenceEntry]
) -> None:
    kv = await nc.jetstream().key_value(names.presence_bucket)
    for key, entry in entries.items():
        await kv.put(key, encode(entry))
    await wait_for(lambda: set(presence.entries()) == set(entries), what="the entries")


async def test_an_entry_naming_another_agent_counts_for_its_key_only(nc: NATS, unique: str) -> None:
    """An entry under key X that carries agent B's task id and endpoint (and says it is B)
    puts X on the bus, not B."""
    names = Names(prefix=f"p{unique}", agents_bucket=f"agents_{unique}")
    presence = Presence(nc, names)
    task = asyncio.create_task(presence.run())
    try:
        await wait_for(lambda: _bucket_exists(nc, names), what="the presence bucket")
        liar = PresenceEntry(
            agent_id=B.id, task_id=B.task_id, endpoint=B.endpoint, at=now_rfc3339()
        )
        await _present(nc, names, presence, {"intruder": liar})
        assert presence.bus_ids([A, B]) == frozenset()
        assert presence.match([A, B]).bus_only == ("intruder",)
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


async def test_invalid_entries_are_ignored_and_said_once(nc: NATS, unique: str) -> None:
    """200 invalid entries, as any agent may write them: values that are not entries, and keys
    that cannot be agent ids (a dot: the key could never ack on its own subject). None is on
    the bus, the log has one line for them all, and a valid entry after them is on the bus."""
    names = Names(prefix=f"p{unique}", agents_bucket=f"agents_{unique}")
    presence = Presence(nc, names)
    task = asyncio.create_task(presence.run())
    try:
        await wait_for(lambda: _bucket_exists(nc, names), what="the presence bucket")
        kv = await nc.jetstream().key_value(names.presence_bucket)
        entry = encode(PresenceEntry(agent_id="x", at=now_rfc3339()))
        with structlog.testing.capture_logs() as logs:
            for i in range(100):
                await kv.put(f"junk-{i}", b"not json")
                await kv.put(f"dotted.{i}", entry)
            await _present(nc, names, presence, {A.id: PresenceEntry(agent_id=A.id, at="")})
        invalid = [e for e in logs if e["event"] == "presence_entry_invalid"]
        assert len(invalid) == 1, invalid
        assert set(presence.entries()) == {A.id}
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


async def _bucket_exists(nc: NATS, names: Names) -> bool:
    try:
        await nc.jetstream().key_value(names.presence_bucket)
    except Exception:
        return False
    return True


async def test_freshness_is_measured_from_receipt_not_by_the_servers_clock(
    nc: NATS, unique: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The bridge's wall clock an hour ahead of the server's (and an entry's `at` a day old):
    the entry still counts as present when it arrives, and goes absent a TTL after it."""
    names = Names(prefix=f"p{unique}", agents_bucket=f"agents_{unique}")
    kv = await nc.jetstream().create_key_value(KeyValueConfig(bucket=names.presence_bucket))
    wall = time.time
    monkeypatch.setattr(time, "time", lambda: wall() + 3600)
    presence = Presence(nc, names, ttl=2.0)
    task = asyncio.create_task(presence.run())
    try:
        old = PresenceEntry(agent_id=A.id, at="2026-01-01T00:00:00Z")
        await kv.put(A.id, encode(old))
        await wait_for(lambda: presence.bus_ids([A]) == {A.id}, what="the agent on the bus")
        arrived = time.monotonic()
        await wait_for(
            lambda: presence.bus_ids([A]) == frozenset(), timeout=5, what="the entry to go stale"
        )
        assert time.monotonic() - arrived >= 1.5
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


async def test_stale_entry_counts_as_absent_without_a_delete(nc: NATS, unique: str) -> None:
    """In a bucket without TTL (no marker ever comes), an entry not refreshed goes absent."""
    names = Names(prefix=f"p{unique}", agents_bucket=f"agents_{unique}")
    kv = await nc.jetstream().create_key_value(KeyValueConfig(bucket=names.presence_bucket))
    changes = 0

    def changed() -> None:
        nonlocal changes
        changes += 1

    presence = Presence(nc, names, ttl=1.0, on_change=changed)
    task = asyncio.create_task(presence.run())
    try:
        entry = PresenceEntry(agent_id=A.id, task_id=A.task_id, at=now_rfc3339())
        await kv.put(A.id, encode(entry))
        await wait_for(lambda: presence.bus_ids([A, B]) == {A.id}, what="the agent on the bus")
        await wait_for(
            lambda: presence.bus_ids([A, B]) == frozenset(),
            timeout=4,
            what="the stale entry to count as absent",
        )
        # The bridge is told, so it re-publishes on_bus.
        await wait_for(lambda: changes == 2, timeout=2, what="the change to be signalled")
        await kv.put(A.id, encode(entry))
        await wait_for(lambda: presence.bus_ids([A]) == {A.id}, what="the agent back")
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


async def test_a_stop_that_a_nats_call_swallowed_ends_the_retries(
    nc: NATS, unique: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A bucket NATS keeps refusing, and a stop lost in asking for it (nats-py's wait_for,
    Python 3.11): the retries end, where their sleeps would have gone on for good."""

    async def swallow_then_refuse(*args: Any) -> Any:
        await swallow_a_stop()
        raise NatsError("refused")

    monkeypatch.setattr(presence_module, "ensure_bucket", swallow_then_refuse)
    presence = Presence(nc, Names(prefix=f"p{unique}", agents_bucket=f"agents_{unique}"))
    assert await ends_cancelled(presence.run())
