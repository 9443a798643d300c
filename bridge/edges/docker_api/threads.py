"""A blocking call of the SDK in a daemon thread of its own, awaited: cancelling the await
abandons the thread, which ends by itself within the call's timeout (every call is bounded)."""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import Callable
from typing import TypeVar

__all__ = ["in_thread"]

T = TypeVar("T")


async def in_thread(fn: Callable[[], T], abandon: Callable[[T], None] | None = None) -> T:
    """fn() in a daemon thread of its own; cancelling abandons the thread (it is bounded).

    `abandon` gets a result that arrives after the caller gave up (to close it).
    """
    loop = asyncio.get_running_loop()
    future: asyncio.Future[T] = loop.create_future()

    def settle(result: T | None, error: BaseException | None) -> None:
        if future.done():  # the caller gave up (cancelled)
            if result is not None and abandon is not None:
                abandon(result)
            return
        if error is not None:
            future.set_exception(error)
        else:
            future.set_result(result)  # type: ignore[arg-type]

    def run() -> None:
        try:
            result = fn()
        except BaseException as exc:
            with contextlib.suppress(RuntimeError):  # the loop is closed: nobody waits
                loop.call_soon_threadsafe(settle, None, exc)
            return
        with contextlib.suppress(RuntimeError):
            loop.call_soon_threadsafe(settle, result, None)

    threading.Thread(target=run, name="docker-api", daemon=True).start()
    return await future
