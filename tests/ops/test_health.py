"""The /healthz policy (bridge/ops/health.py): what the bridge observes, and what it answers."""

from __future__ import annotations

from bridge.ops.health import NATS_SILENCE_LIMIT, Observed, assess


def observed(**changes: object) -> Observed:
    base: dict[str, object] = {
        "nats_connected": True,
        "leading": False,
        "leader": "other",
        "last_round_age": None,
        "agents": 3,
    }
    return Observed(**{**base, **changes})  # type: ignore[arg-type]


def test_a_standby_whose_nats_answers_is_healthy() -> None:
    ok, details = assess(observed(nats_silent_for=NATS_SILENCE_LIMIT - 1), 10)
    assert ok and details["nats"] == "connected" and "reasons" not in details


def test_nats_connected_but_not_answering_is_unhealthy() -> None:
    ok, details = assess(observed(nats_silent_for=12.4), 10)
    assert not ok
    assert details["nats"] == "not answering"
    assert details["reasons"] == ["NATS not answering for 12s"]


def test_not_connected_is_said_once() -> None:
    """A probe left unanswered by a connection that dropped is no second reason."""
    ok, details = assess(observed(nats_connected=False, nats_silent_for=30), 10)
    assert not ok
    assert details["nats"] == "disconnected"
    assert details["reasons"] == ["NATS is not connected"]


def test_a_leader_not_answering_has_every_reason() -> None:
    ok, details = assess(observed(leading=True, last_round_age=45.0, nats_silent_for=6), 10)
    assert not ok
    assert details["reasons"] == [
        "NATS not answering for 6s",
        "no discovery round has succeeded for 45s",
    ]


def test_the_docker_apis_own_error_is_a_reason_once_rounds_are_stale() -> None:
    """The Docker API failing (every manager): its error, named as what it is, is a reason
    when no round has succeeded yet or for 3 poll intervals; before that it is a hiccup."""
    problem = "tcp://10.0.0.5:2375 is not a manager: it is a worker node (HTTP 503: ...)"
    ok, details = assess(observed(leading=True, last_round_age=None, docker_problem=problem), 10)
    assert not ok and details["reasons"] == [
        "no discovery round has succeeded yet",
        f"Docker API: {problem}",
    ]
    ok, details = assess(observed(leading=True, last_round_age=31.0, docker_problem=problem), 10)
    assert not ok and f"Docker API: {problem}" in details["reasons"]  # type: ignore[operator]
    ok, _ = assess(observed(leading=True, last_round_age=12.0, docker_problem=problem), 10)
    assert ok
    ok, _ = assess(observed(leading=False, docker_problem=problem), 10)
    assert ok  # a standby reads no Docker API
