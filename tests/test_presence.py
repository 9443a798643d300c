"""Presence: matching entries to agents, and entries that go stale without a delete."""

from __future__ import annotations

import asyncio

from nats.aio.client import Client as NATS
from nats.js.api import KeyValueConfig

from bridge.models import PresenceEntry, encode, now_rfc3339
from bridge.presence import Presence, match_presence
from bridge.subjects import Names
from tests.conftest import wait_for
from tests.test_roster import A, B, D


def test_match_on_task_id_then_endpoint_then_id() -> None:
    """Each entry goes to the agent with its task id, else its endpoint, else its id."""
    by_task = PresenceEntry(agent_id="hostname-1", task_id=A.task_id, endpoint="http://x:1")
    by_endpoint = PresenceEntry(agent_id="hostname-2", endpoint=B.endpoint)
    by_id = PresenceEntry(agent_id=D.id)
    stranger = PresenceEntry(agent_id="elsewhere", endpoint="http://127.9.9.9:8080")
    matched = match_presence([A, B, D], [by_task, by_endpoint, by_id, stranger])
    assert matched.by_agent == {A.id: by_task, B.id: by_endpoint, D.id: by_id}
    assert matched.bus_only == (stranger,)


async def test_stale_entry_counts_as_absent_without_a_delete(nc: NATS, unique: str) -> None:
    """In a bucket without TTL (no marker ever comes), an entry not refreshed goes absent."""
    names = Names(prefix=f"p{unique}", agents_bucket=f"agents_{unique}")
    kv = await nc.jetstream().create_key_value(KeyValueConfig(bucket=names.presence_bucket))
    presence = Presence(nc, names, ttl=1.0)
    changes = 0

    def changed() -> None:
        nonlocal changes
        changes += 1

    presence.changed = changed
    task = asyncio.create_task(presence.run())
    try:
        entry = PresenceEntry(agent_id=A.id, task_id=A.task_id, at=now_rfc3339())
        await kv.put(A.id, encode(entry))
        await wait_for(lambda: presence.bus_ids([A, B]) == {A.id}, what="the agent on the bus")
        await wait_for(lambda: presence.bus_ids([A, B]) == frozenset(), timeout=4,
                       what="the stale entry to count as absent")
        # The bridge is told, so it re-publishes on_bus.
        await wait_for(lambda: changes == 2, timeout=2, what="the change to be signalled")
        await kv.put(A.id, encode(entry))
        await wait_for(lambda: presence.bus_ids([A]) == {A.id}, what="the agent back")
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
