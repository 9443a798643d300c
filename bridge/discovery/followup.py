"""When to look again: the follow-up schedule of discovery rounds.

Swarm emits no event when a task turns running, so a task that is not running yet (pending,
starting) or has no address yet is re-checked. On the real engine a new task is listed
running 10 to 130 ms after its container's `start` event, so for FAST_WINDOW seconds after
any Docker event it is re-checked every FAST seconds (one GET /tasks each, and never more
than half the time spent fetching: a round that takes longer waits as long); otherwise, and
after that window, with a backoff that doubles from BACKOFF_START up to the poll interval, so
that a task stuck for good costs what the poll costs. Every Docker event starts the schedule
over, and a task newly seen not running starts the backoff over. A failed round is retried
with the same kind of backoff (a restarted daemon is seen again within seconds, a broken one
costs little).
"""

from __future__ import annotations

__all__ = ["BACKOFF_START", "FAST", "FAST_WINDOW", "FollowUps"]

FAST = 0.01
FAST_WINDOW = 0.5
BACKOFF_START = 0.1
# A failed round is tried again after this, doubling up to the poll interval.
RETRY_START = 0.5


class FollowUps:
    """The delay before the next round, given what the last one found (times in seconds)."""

    def __init__(self, poll_interval: float) -> None:
        self._poll = poll_interval
        self._fast_until = float("-inf")
        self._next = BACKOFF_START
        self._retry = RETRY_START
        self._waiting: dict[str, float] = {}  # task id -> when it was first seen not running

    def restart(self, now: float) -> None:
        """Something happened (a Docker event): check often again for a while."""
        self._fast_until = now + FAST_WINDOW
        self._next = BACKOFF_START

    def waiting_since(self, task_id: str) -> float | None:
        """When the task was first seen not running, if it still is."""
        return self._waiting.get(task_id)

    def after_round(
        self,
        not_running: tuple[str, ...],
        now: float,
        *,
        failed: bool = False,
        round_s: float = 0.0,
    ) -> float:
        """The delay until the next round, after one that found these tasks not running."""
        if failed:
            delay, self._retry = self._retry, min(self._retry * 2, self._poll)
            return min(delay, self._poll)
        self._retry = RETRY_START
        new = [task for task in not_running if task not in self._waiting]
        self._waiting = {task: self._waiting.get(task, now) for task in not_running}
        if not not_running:
            self._next = BACKOFF_START
            return self._poll
        if new:
            self._next = BACKOFF_START
        if now < self._fast_until:
            # Never more than half the time spent fetching, however long a round takes.
            return max(FAST, round_s)
        delay, self._next = self._next, min(self._next * 2, self._poll)
        return min(delay, self._poll)

    @property
    def backed_off(self) -> bool:
        """Whether the schedule has reached the poll interval (tasks waiting are stuck)."""
        return bool(self._waiting) and self._next >= self._poll
