"""What arrives for the agent (opportunities, peers' messages, announcements), queued until
read: at most QUEUE_LIMIT wait (then the oldest go, and a line says so), and the stream ends
when the agent leaves."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Generic, TypeVar

from bridge.agent.logs import WARNING, say

__all__ = ["QUEUE_LIMIT", "Stream"]


# Items received and not yet read; past this, the oldest go.
QUEUE_LIMIT = 1024

T = TypeVar("T")


class Stream(Generic[T]):
    """An async iterator over items `put` into it, until `end()`. One reader at a time; a
    reader that leaves its loop can read on later."""

    def __init__(self, name: str, agent_id: str) -> None:
        self._name, self._agent_id = name, agent_id
        self._queue: asyncio.Queue[T | None] = asyncio.Queue(QUEUE_LIMIT)
        self._ended = False

    def put(self, item: T | None) -> None:
        """Queue `item` (None ends the stream) without waiting: a slow reader loses the oldest
        item, not the newest."""
        if self._ended:
            return
        if self._queue.full():
            self._queue.get_nowait()
            say(WARNING, "agent_item_dropped", agent_id=self._agent_id, stream=self._name)
        self._queue.put_nowait(item)

    def end(self) -> None:
        """End the stream: a reader's loop ends once it has read what is queued."""
        self.put(None)
        self._ended = True

    def __aiter__(self) -> AsyncIterator[T]:
        return self

    async def __anext__(self) -> T:
        item = await self._queue.get()
        if item is None:
            self._queue.put_nowait(None)  # ended for every later reader too
            raise StopAsyncIteration
        return item
