"""The follow-up schedule: soon after events and new tasks, then back off to the poll."""

from __future__ import annotations

from bridge.discovery.followup import BACKOFF_START, FAST, FAST_WINDOW, FollowUps

POLL = 30.0


def delays(
    schedule: FollowUps,
    tasks: tuple[str, ...],
    start: float,
    until: float,
) -> list[float]:
    """The delays the schedule asks for while `tasks` stay not running, on a fake clock."""
    now, out = start, []
    while now < until:
        delay = schedule.after_round(tasks, now)
        out.append(delay)
        now += delay
    return out


def test_a_stuck_task_backs_off_to_the_poll_interval() -> None:
    """A task pending for good costs what the poll costs once the schedule backed off
    (the old schedule stayed at 5 s for ever: 11 calls in 40 s)."""
    schedule = FollowUps(POLL)
    asked = delays(schedule, ("t1",), 0.0, 600.0)
    assert asked[0] == BACKOFF_START
    assert asked[-5:] == [POLL] * 5
    assert sorted(asked) == asked  # never sooner again
    assert len(asked) < 600 / POLL + 12  # ~20 polls + the backoff steps
    assert schedule.backed_off


def test_an_event_starts_the_schedule_over() -> None:
    """After any Docker event: re-checked every FAST seconds for FAST_WINDOW seconds."""
    schedule = FollowUps(POLL)
    delays(schedule, ("t1",), 0.0, 120.0)
    schedule.restart(200.0)
    asked = delays(schedule, ("t1",), 200.0, 200.0 + FAST_WINDOW)
    assert asked == [FAST] * len(asked) and len(asked) >= FAST_WINDOW / FAST - 1
    assert schedule.after_round(("t1",), 200.0 + FAST_WINDOW) == BACKOFF_START


def test_a_new_task_is_checked_soon_and_nothing_waiting_means_the_poll() -> None:
    schedule = FollowUps(POLL)
    delays(schedule, ("t1",), 0.0, 120.0)
    assert schedule.after_round(("t1", "t2"), 120.0) == BACKOFF_START
    assert schedule.after_round((), 121.0) == POLL
    assert not schedule.backed_off


def test_a_round_never_waits_less_than_it_took() -> None:
    schedule = FollowUps(POLL)
    schedule.restart(0.0)
    assert schedule.after_round(("t1",), 0.0, round_s=0.2) == 0.2


def test_failed_rounds_are_retried_with_backoff() -> None:
    schedule = FollowUps(POLL)
    asked = [schedule.after_round((), float(i), failed=True) for i in range(10)]
    assert asked[0] < 1.0 and asked[-1] == POLL and sorted(asked) == asked
    assert schedule.after_round((), 11.0) == POLL
