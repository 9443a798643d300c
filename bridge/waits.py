"""Waiting on an event with a time limit, without ever losing a cancellation.

On Python 3.11, `asyncio.timeout` takes a cancellation that arrives just as its time runs out
for its own timeout: the caller sees TimeoutError, the stop request is lost, and a loop that
waits again (discovery rounds, write retries: short waits, so this is likely) never ends. Seen
as a bridge that did not stop. `asyncio.wait` has no such race. nats-py's own `asyncio.wait_for`
can lose a cancellation the same way; the task's request stays pending (`Task.cancelling()`),
so waits check it first.
"""

from __future__ import annotations

import asyncio

__all__ = ["cancel_requested", "wait_event"]


async def wait_event(event: asyncio.Event, timeout: float) -> bool:
    """True when `event` is set within `timeout` seconds, False when the time ran out.
    Cancelling the caller cancels the wait (CancelledError), whatever the timing, and so does
    a stop request that a library swallowed before the wait (nats-py's `wait_for` on 3.11)."""
    if cancel_requested():
        raise asyncio.CancelledError
    if event.is_set():
        return True
    waiter = asyncio.ensure_future(event.wait())
    try:
        done, _ = await asyncio.wait({waiter}, timeout=timeout)
    finally:
        waiter.cancel()
    return waiter in done


def cancel_requested() -> bool:
    """Whether the current task was asked to stop (for code that caught a TimeoutError from
    `asyncio.timeout`, which may have been a cancellation: see the module doc)."""
    task = asyncio.current_task()
    return task is not None and task.cancelling() > 0
