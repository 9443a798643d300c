"""Watching a bucket: current values, then one "done" marker, then changes; and a snapshot."""

from __future__ import annotations

import asyncio
from typing import cast

import pytest
from nats.aio.client import Client as NATS
from nats.js.kv import KeyValue

from bridge.contract.buckets import BucketSpec
from bridge.edges.kv import Bucket, Entry, Watcher, Write, ensure_bucket, snapshot_of


@pytest.fixture
async def bucket(nc: NATS, unique: str) -> Bucket:
    return await ensure_bucket(nc, BucketSpec(f"watch_{unique}", "watch tests", memory=True))


async def _until_marker(watcher: Watcher) -> list[Entry]:
    entries = []
    async with asyncio.timeout(5):
        while (entry := await watcher.next()) is not None:
            entries.append(entry)
    return entries


async def test_empty_bucket_gives_the_marker_at_once(bucket: Bucket) -> None:
    """A watch of an empty bucket says "current values done" first; then it gives changes."""
    async with bucket.watch() as watcher:
        assert await _until_marker(watcher) == []
        await bucket.write(Write("a", b"1"))
        async with asyncio.timeout(5):
            change = await watcher.next()
    assert change is not None and (change.key, change.value) == ("a", b"1")


async def test_current_values_then_the_marker_then_changes(bucket: Bucket) -> None:
    """Every key's latest message (a deleted key as a DEL), the marker once, then changes."""
    for key, value in (("a", b"1"), ("b", b"2"), ("a", b"3"), ("c", b"4")):
        await bucket.write(Write(key, value))
    await bucket.write(Write("c", None))
    async with bucket.watch() as watcher:
        current = await _until_marker(watcher)
        await bucket.write(Write("d", b"5"))
        async with asyncio.timeout(5):
            change = await watcher.next()
    assert [(e.key, e.value, e.operation) for e in current] == [
        ("b", b"2", None),
        ("a", b"3", None),
        ("c", b"", "DEL"),
    ]
    assert change is not None and change.key == "d"


class _Replayed:
    """What nats-py's KeyWatcher gave when the server had pushed a bucket's values before
    nats-py counted them as pending: its "done" marker (None) first, then the values."""

    def __init__(self, updates: list[KeyValue.Entry | None]) -> None:
        self._updates = list(updates)
        self._more = asyncio.Event()

    async def updates(self, timeout: float | None = None) -> KeyValue.Entry | None:
        if not self._updates:
            await self._more.wait()  # a quiet bucket: no change comes
        return self._updates.pop(0)


def _raw(key: str, delta: int) -> KeyValue.Entry:
    return KeyValue.Entry("b", key, b"v", revision=1, delta=delta, created=None, operation=None)


def _watcher(updates: list[KeyValue.Entry | None], holding: int) -> Watcher:
    return Watcher(cast(KeyValue.KeyWatcher, _Replayed(updates)), "b", holding)


async def test_an_early_marker_of_nats_py_is_not_taken_for_an_empty_bucket() -> None:
    """The marker comes after the values that nats-py delivered late, and only once."""
    watcher = _watcher([None, _raw("a", 1), _raw("b", 0), None], holding=2)
    assert [e.key for e in await _until_marker(watcher)] == ["a", "b"]
    with pytest.raises(TimeoutError):
        async with asyncio.timeout(0.2):
            await watcher.next()  # nats-py's own marker, late, is not given again


async def test_a_bucket_whose_messages_went_before_the_watch_ends_its_values() -> None:
    """A bucket that held messages which expired before the watch began: the marker comes
    after a bounded wait (FIRST_ENTRY_WAIT), not never."""
    watcher = _watcher([None], holding=1)
    assert await _until_marker(watcher) == []


async def test_snapshot_reads_every_current_value(nc: NATS, bucket: Bucket) -> None:
    """A snapshot through nats-py's own handle holds each key's latest message."""
    for i in range(50):
        await bucket.write(Write(f"k{i}", str(i).encode()))
    raw = await nc.jetstream().key_value(bucket.name)
    entries = await snapshot_of(raw, timeout=5, name=bucket.name)
    assert {k: e.value for k, e in entries.items()} == {f"k{i}": str(i).encode() for i in range(50)}
