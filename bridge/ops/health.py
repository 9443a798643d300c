"""The health policy behind /healthz: what must hold for the bridge to count as healthy.

DESIGN.md: healthy while NATS is connected and answers and, on the leader, while discovery
succeeds (a round within 3 poll intervals; when none did, the Docker API's error is a reason
too, named as what it is) and the bucket takes its writes. A standby is healthy
while NATS answers: it has nothing to discover. Connected is not enough: a client that no
longer reads stays connected, so the bridge probes the connection
(bridge/edges/nats_probe.py, NatsProbe)
and a probe unanswered for NATS_SILENCE_LIMIT seconds makes the bridge unhealthy. A problem the
bucket reports (settings that would lose records, writes the server refuses) makes the bridge
unhealthy until it clears.
"""

from __future__ import annotations

import dataclasses
import time

__all__ = ["NATS_SILENCE_LIMIT", "ROUNDS_BEFORE_UNHEALTHY", "Observed", "Trouble", "assess"]

# A leader whose last successful round is older than this many poll intervals is unhealthy:
# one missed round is a hiccup, three are an outage.
ROUNDS_BEFORE_UNHEALTHY = 3
# NATS answers a PING within milliseconds; no answer for this long is an outage (the lease,
# renewed every 2 s, has missed two renewals by then), not a hiccup.
NATS_SILENCE_LIMIT = 5.0


@dataclasses.dataclass(frozen=True, kw_only=True)
class Observed:
    """What the bridge sees of itself at one moment."""

    nats_connected: bool
    # Seconds the NATS round-trip probe has waited for its answer (0 while NATS answers).
    nats_silent_for: float = 0.0
    leading: bool
    leader: str | None
    # Seconds since the last successful discovery round; None when none has succeeded yet.
    last_round_age: float | None
    agents: int
    # The bucket's own reasons to be unhealthy (refused settings, refused writes).
    problems: tuple[str, ...] = ()
    # What the Docker API answers while discovery's Swarm calls fail (every manager failed),
    # named as what it is (not a manager, no leader, locked, refused by a proxy, ...).
    docker_problem: str | None = None
    # Reasons that hold whatever the role: a bucket every replica needs that cannot be made
    # (the lease: then no bridge leads), the clocks of the bridge and NATS far apart.
    replica_problems: tuple[str, ...] = ()
    # Extra details to show (the measured clock skew).
    extra: tuple[tuple[str, object], ...] = ()


class Trouble:
    """A failure that lasts: its text (the server's reason) and since when. `lasting(s)`
    is the text once it has lasted `s` seconds: a blip is no outage."""

    def __init__(self) -> None:
        self.text: str | None = None
        self._since = 0.0

    def set(self, text: str) -> None:
        if self.text is None:
            self._since = time.monotonic()
        self.text = text

    def clear(self) -> None:
        self.text = None

    def lasting(self, seconds: float) -> str | None:
        if self.text is None or time.monotonic() - self._since < seconds:
            return None
        return self.text


def assess(observed: Observed, poll_interval: float) -> tuple[bool, dict[str, object]]:
    """(healthy, details): the details are /healthz's JSON body; `reasons` lists what is wrong.

    poll_interval is BRIDGE_POLL_INTERVAL, in seconds.
    """
    reasons: list[str] = []
    if not observed.nats_connected:
        nats = "disconnected"
        reasons.append("NATS is not connected")
    elif observed.nats_silent_for >= NATS_SILENCE_LIMIT:
        nats = "not answering"
        reasons.append(f"NATS not answering for {observed.nats_silent_for:.0f}s")
    else:
        nats = "connected"
    age = observed.last_round_age
    if observed.leading:
        stale = age is None or age > ROUNDS_BEFORE_UNHEALTHY * poll_interval
        if age is None:
            reasons.append("no discovery round has succeeded yet")
        elif stale:
            reasons.append(f"no discovery round has succeeded for {age:.0f}s")
        if stale and observed.docker_problem:
            reasons.append(f"Docker API: {observed.docker_problem}")
        reasons.extend(observed.problems)
    reasons.extend(observed.replica_problems)
    details: dict[str, object] = {
        "role": "leader" if observed.leading else "standby",
        "leader": observed.leader,
        "nats": nats,
        "last_round_s_ago": None if age is None or not observed.leading else round(age, 1),
        "agents": observed.agents,
        **dict(observed.extra),
    }
    if reasons:
        details["reasons"] = reasons
    return not reasons, details
