"""When to look again: the schedule of discovery rounds between polls.

Swarm emits no event for a task's own state changes, and commits the tasks of a service change
0.03 to 0.3 s after the service event (measured on a real multi-node swarm, Docker 20.10: a round
run at the event usually sees nothing new yet). So:
- a Docker event about the service's tasks starts a burst: rounds at the event and at the
  `burst` offsets after it (fast at first), whether or not the first round saw a change. An
  event while a burst is open does not start it over: one change is one burst, however many
  events (a service event, then each container's) announce it. It only makes the burst last
  until `burst[-1]` after it, at the pace of the burst's end, so that a change announced late
  in a burst is still looked at once its tasks are committed;
- while tasks are waiting (desired `ready`, `pending`/`starting`, or running without an address
  yet), rounds are at most `wait_every` apart for as long as such a wait normally lasts
  (`wait_normal`: a restart delay is 5 s, a drain's stop-first about 13 s); a slot waiting
  longer is stuck, and rounds back off from `backoff_start`, doubling, to the poll interval.
  A wait is counted per slot, not per task ID: a replacement takes its predecessor's slot, so a
  slot whose tasks keep failing (an image that cannot be pulled) is one stuck slot, not a new
  wait every restart delay; and a slot that waits again within `wait_memory` of its last wait
  (a task that crashes again and again, running a moment in between) carries on counting from
  what it waited before. One stuck task costs what the poll costs;
- a failed round (every manager failed) is retried every `retry_every` for `retry_normal`
  (a manager election takes about 10 s), then with a backoff doubling to the poll interval;
- never sooner than the last successful round took (at most half the time is spent fetching;
  a failed round's time went to managers that did not answer), and never later than the poll
  interval.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable

__all__ = ["SCHEDULE", "FollowUps", "Schedule"]


@dataclasses.dataclass(frozen=True)
class Schedule:
    """The schedule's figures, in seconds (the module docstring says what each is for)."""

    burst: tuple[float, ...] = (0.05, 0.1, 0.2, 0.3, 0.5, 0.75, 1.0, 1.5, 2.0)
    wait_every: float = 0.25
    wait_normal: float = 15.0
    backoff_start: float = 0.5
    retry_every: float = 1.0
    retry_normal: float = 15.0
    wait_memory: float = 60.0


SCHEDULE = Schedule()


class FollowUps:
    """The delay before the next round, given what the last one found (times in seconds, on
    the caller's monotonic clock)."""

    def __init__(self, poll_interval: float, schedule: Schedule = SCHEDULE) -> None:
        self._poll = poll_interval
        self._s = schedule
        self._burst_at: float | None = None
        self._burst_end = 0.0
        self._since: dict[str, float] = {}  # slot -> when its wait began (less what it carried)
        self._ended: dict[str, tuple[float, float]] = {}  # slot -> (seconds waited, ended at)
        self._backoff = schedule.backoff_start
        self._failing_since: float | None = None
        self._retry = schedule.retry_every

    def event(self, now: float) -> bool:
        """A Docker event about the service's tasks: starts a burst unless one is open (which
        it makes last until burst[-1] from now). True when it started one (a round is due
        now)."""
        end = now + self._s.burst[-1]
        if self._burst_at is not None and now < self._burst_end:
            self._burst_end = max(self._burst_end, end)
            return False
        self._burst_at, self._burst_end = now, end
        return True

    def waiting_since(self, slot: str) -> float | None:
        """When the slot was first seen waiting, if it still is."""
        return self._since.get(slot)

    def stuck(self, slot: str, now: float) -> bool:
        """Whether the slot has waited longer than a wait normally lasts."""
        since = self._since.get(slot)
        return since is not None and now - since >= self._s.wait_normal

    def after_round(
        self,
        waiting: Iterable[str],
        now: float,
        *,
        failed: bool = False,
        round_s: float = 0.0,
    ) -> float:
        """The delay until the next round, after one that found these slots waiting (or
        failed: every manager failed)."""
        if failed:
            # Not held back by how long it took: a round in which every manager failed spent
            # its time waiting on managers that did not answer (10 s per hung call during an
            # election), not loading them, and one that answers now is one retry away.
            return min(self._after_failure(now), self._poll)
        self._failing_since, self._retry = None, self._s.retry_every
        if self._track(set(waiting), now):
            self._backoff = self._s.backoff_start  # a new wait: look often again
        slots = self._since
        delays = [self._poll]
        burst = self._next_burst(now)
        if burst is not None:
            delays.append(burst)
        if any(now - since < self._s.wait_normal for since in self._since.values()):
            delays.append(self._s.wait_every)
        elif slots:
            delays.append(self._backoff)
            self._backoff = min(self._backoff * 2, self._poll)
        # Never more than half the time fetching, however long a round takes.
        return max(min(delays), round_s)

    def _track(self, slots: set[str], now: float) -> bool:
        """Note which slots wait now; True when one began a wait that is not stuck."""
        for slot in self._since.keys() - slots:
            self._ended[slot] = (now - self._since[slot], now)
        memory = self._s.wait_memory
        self._ended = {slot: w for slot, w in self._ended.items() if now - w[1] < memory}
        fresh = False
        since: dict[str, float] = {}
        for slot in slots:
            if slot in self._since:
                since[slot] = self._since[slot]
                continue
            waited, _ = self._ended.pop(slot, (0.0, now))
            since[slot] = now - waited
            fresh = fresh or waited < self._s.wait_normal
        self._since = since
        return fresh

    def remembers(self, slot: str) -> bool:
        """Whether the slot waits, or waited recently enough for its wait to count again."""
        return slot in self._since or slot in self._ended

    def _next_burst(self, now: float) -> float | None:
        """Seconds until the burst's next round, if a burst is open."""
        if self._burst_at is None or now >= self._burst_end:
            self._burst_at = None
            return None
        for offset in self._s.burst:
            due = self._burst_at + offset
            if due > now:
                return due - now
        # Made longer by later events: on at the pace of its end.
        pace = self._s.burst[-1] - (self._s.burst[-2] if len(self._s.burst) > 1 else 0.0)
        return min(pace, self._burst_end - now)

    def _after_failure(self, now: float) -> float:
        if self._failing_since is None:
            self._failing_since = now
        if now - self._failing_since < self._s.retry_normal:
            return self._s.retry_every
        delay, self._retry = self._retry, min(self._retry * 2, self._poll)
        return delay

    @property
    def backed_off(self) -> bool:
        """Whether rounds have backed off to the poll interval with slots still waiting."""
        return bool(self._since) and self._backoff >= self._poll
