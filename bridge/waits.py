"""Waiting with a time limit, without ever losing a cancellation (a stop).

On Python 3.11, `asyncio.wait_for` swallows a cancellation that arrives just as what it awaits
finishes: it returns the result and the task goes on. nats-py waits for every reply that way,
so any NATS call may eat a stop. The request stays pending (`Task.cancelling()` > 0), but
nothing raises it again: `asyncio.timeout` counts it as older than itself and reports its own
expiry as TimeoutError, so a loop that catches that and waits again (discovery rounds, write
retries, watches) never ends. Seen as a bridge that did not stop.

So: no `asyncio.wait_for` in the bridge's own loops (`asyncio.timeout` or `asyncio.wait`
instead, which let a new stop through), and every loop that waits with a time limit honours a
pending request: `wait_event` does it itself, other loops call `raise_if_cancelled` each round.
"""

from __future__ import annotations

import asyncio
from typing import Any

__all__ = ["cancel_and_wait", "cancel_requested", "raise_if_cancelled", "wait_event"]


async def wait_event(event: asyncio.Event, timeout: float) -> bool:
    """True when `event` is set within `timeout` seconds, False when the time ran out.
    Cancelling the caller cancels the wait (CancelledError), whatever the timing, and so does
    a stop request that a library swallowed before the wait (nats-py's `wait_for` on 3.11)."""
    raise_if_cancelled()
    if event.is_set():
        return True
    waiter = asyncio.ensure_future(event.wait())
    try:
        done, _ = await asyncio.wait({waiter}, timeout=timeout)
    finally:
        waiter.cancel()
    return waiter in done


def cancel_requested() -> bool:
    """Whether the current task was asked to stop, though nothing may have raised it (see the
    module doc)."""
    task = asyncio.current_task()
    return task is not None and task.cancelling() > 0


def raise_if_cancelled() -> None:
    """CancelledError when the current task was asked to stop: for each round of a loop that
    waits with `asyncio.timeout` and goes on after a TimeoutError (see the module doc)."""
    if cancel_requested():
        raise asyncio.CancelledError


async def cancel_and_wait(task: asyncio.Task[Any]) -> None:
    """Cancel `task` and wait until it has ended. Unlike `await task` inside
    `suppress(CancelledError)`, a stop of the caller itself is not lost on the way. An
    exception the task ended with, other than its cancellation, is raised here."""
    task.cancel()
    await asyncio.wait({task})
    if not task.cancelled() and (exc := task.exception()) is not None:
        raise exc
