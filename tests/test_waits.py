"""bridge/waits.py: a stop is never lost, not even one that a library swallowed.

No test here waits on the clock: time limits are 0 (already out) or bound the test only."""

from __future__ import annotations

import asyncio
import sys

import pytest

from bridge.waits import cancel_and_wait, cancel_requested, raise_if_cancelled, wait_event
from tests.conftest import swallow_a_stop

# A test's own limit: long enough never to be reached when the guarantee holds.
LIMIT = 5.0


async def _ended(task: asyncio.Task[object]) -> bool:
    """Whether `task` ends within LIMIT; a task that does not is stopped for good."""
    done, _ = await asyncio.wait({task}, timeout=LIMIT)
    if not done:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
    return bool(done)


@pytest.mark.skipif(sys.version_info >= (3, 12), reason="wait_for is asyncio.timeout from 3.12")
async def test_wait_for_swallows_a_stop_that_comes_with_its_result() -> None:
    """The premise: a stop that arrives with the result is dropped, and stays pending."""
    reply: asyncio.Future[str] = asyncio.get_running_loop().create_future()
    waiting = asyncio.Event()

    async def request() -> tuple[str, bool]:
        waiting.set()
        got = await asyncio.wait_for(reply, LIMIT)
        return got, cancel_requested()

    task = asyncio.create_task(request())
    await waiting.wait()
    reply.set_result("answer")
    task.cancel()
    assert await task == ("answer", True)


async def test_a_timeout_hides_a_swallowed_stop() -> None:
    """The premise: asyncio.timeout then reports its own expiry, not the stop."""

    async def body() -> bool:
        await swallow_a_stop()
        with pytest.raises(TimeoutError):
            async with asyncio.timeout(0):
                await asyncio.Event().wait()
        return cancel_requested()

    assert await asyncio.create_task(body()) is True


async def test_a_loop_of_timeouts_ends_on_a_swallowed_stop() -> None:
    """raise_if_cancelled each round: the stop wins, before the first wait."""
    rounds = 0

    async def watch() -> None:
        nonlocal rounds
        await swallow_a_stop()
        while True:
            raise_if_cancelled()
            try:
                async with asyncio.timeout(0):
                    await asyncio.Event().wait()
            except TimeoutError:
                rounds += 1

    task = asyncio.create_task(watch())
    assert await _ended(task)
    assert task.cancelled() and rounds == 0


async def test_raise_if_cancelled_lets_a_task_not_asked_to_stop_go_on() -> None:
    raise_if_cancelled()
    assert not cancel_requested()


async def test_wait_event_tells_a_set_event_from_the_time_running_out() -> None:
    event = asyncio.Event()
    assert await wait_event(event, 0) is False
    event.set()
    assert await wait_event(event, 0) is True
    event.clear()
    asyncio.get_running_loop().call_soon(event.set)
    assert await wait_event(event, LIMIT) is True


async def test_wait_event_ends_on_a_stop_during_the_wait() -> None:
    waiting = asyncio.Event()

    async def wait() -> bool:
        waiting.set()
        return await wait_event(asyncio.Event(), LIMIT)

    task = asyncio.create_task(wait())
    await waiting.wait()
    task.cancel()
    assert await _ended(task)
    assert task.cancelled()


async def test_wait_event_ends_on_a_swallowed_stop() -> None:
    """Even with the event set: a loop on wait_event stops."""
    event = asyncio.Event()
    event.set()

    async def wait() -> bool:
        await swallow_a_stop()
        return await wait_event(event, LIMIT)

    task = asyncio.create_task(wait())
    assert await _ended(task)
    assert task.cancelled()


async def test_cancel_and_wait_ends_the_task() -> None:
    """The task is cancelled and has ended when cancel_and_wait returns."""
    task = asyncio.create_task(asyncio.Event().wait())
    await asyncio.sleep(0)  # the task is running
    await cancel_and_wait(task)
    assert task.cancelled()


async def test_cancel_and_wait_raises_what_the_task_ended_with() -> None:
    """A task that fails on its way out: the failure is the caller's, not lost."""

    async def fails_when_stopped() -> None:
        try:
            await asyncio.Event().wait()
        finally:
            raise RuntimeError("cleanup failed")

    task = asyncio.create_task(fails_when_stopped())
    await asyncio.sleep(0)  # the task is running
    with pytest.raises(RuntimeError, match="cleanup failed"):
        await cancel_and_wait(task)


async def test_cancel_and_wait_lets_a_stop_of_the_caller_through() -> None:
    """The caller is stopped while it waits for a task slow to end: the caller ends (a
    `suppress(CancelledError)` around `await task` would take the caller's stop for the
    task's and go on)."""
    release = asyncio.Event()

    async def slow_to_end() -> None:
        try:
            await asyncio.Event().wait()
        finally:
            await release.wait()

    slow = asyncio.create_task(slow_to_end())
    await asyncio.sleep(0)  # the task is running
    caller = asyncio.create_task(cancel_and_wait(slow))
    await asyncio.sleep(0)  # the caller is waiting for it
    caller.cancel()
    assert await _ended(caller)
    assert caller.cancelled() and not slow.done()
    release.set()
    await asyncio.gather(slow, return_exceptions=True)
