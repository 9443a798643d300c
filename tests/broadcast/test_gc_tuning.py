"""fewer_collections: a wider generation 0 within the block, the thresholds as they were after."""

from __future__ import annotations

import asyncio
import gc
from collections.abc import Iterator

import pytest

from bridge.broadcast.gc_tuning import BURST_THRESHOLD, fewer_collections


@pytest.fixture(autouse=True)
def default_thresholds() -> Iterator[tuple[int, int, int]]:
    saved = gc.get_threshold()
    gc.set_threshold(700, 10, 10)
    yield gc.get_threshold()
    gc.set_threshold(*saved)


def test_raises_generation_zero_and_restores(default_thresholds: tuple[int, int, int]) -> None:
    with fewer_collections():
        assert gc.get_threshold() == (BURST_THRESHOLD, 10, 10)
    assert gc.get_threshold() == default_thresholds


def test_collections_are_rarer_within_the_block() -> None:
    def collections_while_allocating() -> int:
        before = int(gc.get_stats()[0]["collections"])
        keep = [[index] for index in range(20_000)]  # tracked objects that stay alive
        del keep
        return int(gc.get_stats()[0]["collections"]) - before

    gc.collect()
    outside = collections_while_allocating()
    gc.collect()
    with fewer_collections():
        inside = collections_while_allocating()
    assert outside >= 20  # one collection per 700 net allocations
    assert inside == 0


def test_restored_when_the_block_raises(default_thresholds: tuple[int, int, int]) -> None:
    with pytest.raises(RuntimeError), fewer_collections():
        raise RuntimeError("boom")
    assert gc.get_threshold() == default_thresholds


def test_a_higher_threshold_is_kept() -> None:
    gc.set_threshold(500_000, 10, 10)
    with fewer_collections():
        assert gc.get_threshold() == (500_000, 10, 10)
    assert gc.get_threshold() == (500_000, 10, 10)


def test_a_collector_turned_off_stays_off() -> None:
    gc.set_threshold(0, 10, 10)
    with fewer_collections():
        assert gc.get_threshold()[0] == 0
    assert gc.get_threshold() == (0, 10, 10)


async def test_concurrent_blocks_restore_when_the_last_one_ends(
    default_thresholds: tuple[int, int, int],
) -> None:
    first_in = asyncio.Event()
    release_first = asyncio.Event()

    async def first() -> None:
        with fewer_collections():
            first_in.set()
            await release_first.wait()

    async with asyncio.TaskGroup() as group:
        group.create_task(first())
        await first_in.wait()
        with fewer_collections():
            assert gc.get_threshold()[0] == BURST_THRESHOLD
        # The second block ended while the first is still in: the window stays open.
        assert gc.get_threshold()[0] == BURST_THRESHOLD
        release_first.set()
    assert gc.get_threshold() == default_thresholds
