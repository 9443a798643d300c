"""The schedule of rounds between polls, on a fake clock: bursts after events, rounds well under
1 s apart while tasks wait, a stuck task backing off to the poll, failures retried."""

from __future__ import annotations

import collections
import itertools
from collections.abc import Callable, Iterable

from bridge.discovery.followup import SCHEDULE, FollowUps

POLL = 30.0
S = SCHEDULE


def rounds(
    schedule: FollowUps,
    waiting: Callable[[float], Iterable[str]],
    start: float,
    until: float,
    *,
    failed: bool = False,
) -> list[float]:
    """When rounds run (a fake clock), each finding `waiting(now)`, from `start` to `until`."""
    now, times = start, []
    while now < until:
        times.append(now)
        now += schedule.after_round(waiting(now), now, failed=failed)
    return times


def per_minute(times: list[float]) -> list[int]:
    counts = collections.Counter(int(t // 60) for t in times)
    return [counts[minute] for minute in range(max(counts) + 1)]


def gaps(times: list[float]) -> list[float]:
    return [b - a for a, b in itertools.pairwise(times)]


def test_a_stuck_task_costs_what_the_poll_costs_after_a_normal_wait() -> None:
    """One task waiting for good: rounds every 0.25 s for the 15 s such a wait normally
    lasts, then a backoff to the poll interval: 67 GET /tasks in its first minute, then 2 a
    minute (the poll), however long it stays stuck (the first minute counts the first round)."""
    schedule = FollowUps(POLL)
    times = rounds(schedule, lambda _: ["slot 1"], 0.0, 600.0)
    early = [t for t in times if t < S.wait_normal]
    assert max(gaps(early)) <= S.wait_every
    assert per_minute(times)[0] == 67
    assert all(count <= 60 / POLL for count in per_minute(times)[2:])
    assert gaps(times)[-5:] == [POLL] * 5
    assert schedule.backed_off


def test_stuck_slots_do_not_add_up() -> None:
    """Ten tasks stuck in ten slots cost what one does: the schedule is one for all."""
    one = rounds(FollowUps(POLL), lambda _: ["slot 1"], 0.0, 300.0)
    ten = rounds(FollowUps(POLL), lambda _: [f"slot {i}" for i in range(10)], 0.0, 300.0)
    assert len(ten) == len(one)


def test_a_crash_loop_in_one_slot_is_one_wait() -> None:
    """An image that cannot start: every 5 s a new task ID in the same slot, running a moment
    in between. The slot's wait goes on across its tasks: past the normal wait it backs off
    like any stuck task, instead of 4 rounds a second for ever."""
    schedule = FollowUps(POLL)

    def crash_loop(now: float) -> list[str]:
        return [] if now % 7.0 > 5.0 else ["slot 3"]  # waiting 5 s, running 2 s, again

    times = rounds(schedule, crash_loop, 0.0, 600.0)
    minutes = per_minute(times)
    assert sum(minutes[:2]) <= 2 * (S.wait_normal / S.wait_every) + 10
    assert all(count <= 60 / POLL + 1 for count in minutes[2:]), minutes


def test_a_new_wait_is_checked_often_again_an_old_one_is_not() -> None:
    """A slot that starts waiting while another is stuck brings rounds back under 1 s; a
    slot waiting again a minute after its last wait starts afresh."""
    schedule = FollowUps(POLL)
    rounds(schedule, lambda _: ["slot 1"], 0.0, 120.0)
    assert schedule.after_round(["slot 1", "slot 2"], 120.0) == S.wait_every
    rounds(schedule, lambda _: [], 121.0, 200.0)
    assert schedule.after_round(["slot 1"], 200.0) == S.wait_every


def test_an_event_opens_one_burst_whatever_follows() -> None:
    """An event: a round at once and at the burst's offsets, whether or not tasks wait; the
    events that follow within the burst (each container of the change) open nothing."""
    schedule = FollowUps(POLL)
    assert schedule.event(100.0)
    times = rounds(schedule, lambda _: [], 100.0, 100.0 + S.burst[-1] + 0.01)
    assert [round(t - 100.0, 3) for t in times] == [0.0, *S.burst]
    schedule2 = FollowUps(POLL)
    assert schedule2.event(0.0)
    assert [schedule2.event(t / 10) for t in range(1, 20)] == [False] * 19
    assert schedule2.event(1.9 + S.burst[-1])  # the next change, once the burst is over


def test_an_event_late_in_a_burst_makes_it_last_at_its_ends_pace() -> None:
    """A change announced late in a burst (its tasks committed up to 0.3 s later) is still
    looked at: the burst goes on until burst[-1] after that event, at the pace of its end,
    never starting over at its fast pace."""
    schedule = FollowUps(POLL)
    assert schedule.event(0.0)
    late = S.burst[-1] - 0.1
    times: list[float] = []
    now = 0.0
    while now < 40.0:
        if times and times[-1] < late <= now:
            assert not schedule.event(late)
        times.append(now)
        now += schedule.after_round([], now)
    tail = [t for t in times if S.burst[-1] < t < POLL]
    assert tail and late + S.burst[-1] - max(tail) < 1e-9
    assert gaps(times)[-1] == POLL  # then the poll
    pace = S.burst[-1] - S.burst[-2]
    assert all(gap <= pace + 1e-9 for gap in gaps([S.burst[-1], *tail]))


def test_events_every_second_never_keep_rounds_fast_by_themselves() -> None:
    """Events that keep coming cost at most one burst each per burst length: no event
    reopens a burst while one is open (today's exec events reopened 0.5 s of 10 ms rounds
    each second: 1,164 task lists in 25 s with one task pending)."""
    schedule = FollowUps(POLL)
    now, times, next_event = 0.0, [], 0.0
    while now < 25.0:
        if now >= next_event:
            schedule.event(now)
            next_event += 1.0
        times.append(now)
        now += min(schedule.after_round(["slot 1"], now), max(0.0, next_event - now) or 1e-3)
    assert len(times) < 25 * (len(S.burst) + 1) / S.burst[-1] + 25 / S.wait_every


def test_a_round_never_waits_less_than_it_took() -> None:
    schedule = FollowUps(POLL)
    schedule.event(0.0)
    assert schedule.after_round(["slot 1"], 0.0, round_s=0.4) == 0.4


def test_a_failed_round_that_waited_on_hung_managers_is_retried_at_once() -> None:
    """Every manager failed after 20 s of timeouts (the read one dead, the others hung in
    their election): the retry comes retry_every later, not 20 s later, when a manager may
    answer again (seen: tasks listed 5 s after such a round, in the bucket 15 s later)."""
    schedule = FollowUps(POLL)
    assert schedule.after_round([], 20.0, failed=True, round_s=20.0) == S.retry_every


def test_failed_rounds_are_retried_every_second_for_an_election_then_back_off() -> None:
    """Every manager failing: a round a second for 15 s (a manager election takes about
    10 s), then a backoff to the poll interval; a success ends it."""
    schedule = FollowUps(POLL)
    times = rounds(schedule, lambda _: [], 0.0, 300.0, failed=True)
    early = [t for t in times if t < S.retry_normal]
    assert gaps(early) == [S.retry_every] * (len(early) - 1)
    assert gaps(times)[-3:] == [POLL] * 3
    assert schedule.after_round([], 301.0) == POLL
    assert schedule.after_round([], 331.0, failed=True) == S.retry_every
