"""The health policy behind /healthz: what must hold for the bridge to count as healthy.

DESIGN.md: healthy while NATS is connected and, on the leader, while discovery succeeds (a
round within 3 poll intervals) and the bucket takes its writes. A standby is healthy while it
is connected: it has nothing to discover. A problem the bucket reports (settings that would
lose records, writes the server refuses) makes the bridge unhealthy until it clears.
"""

from __future__ import annotations

import dataclasses

__all__ = ["ROUNDS_BEFORE_UNHEALTHY", "Observed", "assess"]

# A leader whose last successful round is older than this many poll intervals is unhealthy:
# one missed round is a hiccup, three are an outage.
ROUNDS_BEFORE_UNHEALTHY = 3


@dataclasses.dataclass(frozen=True, kw_only=True)
class Observed:
    """What the bridge sees of itself at one moment."""

    nats_connected: bool
    leading: bool
    leader: str | None
    # Seconds since the last successful discovery round; None when none has succeeded yet.
    last_round_age: float | None
    agents: int
    # The bucket's own reasons to be unhealthy (refused settings, refused writes).
    problems: tuple[str, ...] = ()


def assess(observed: Observed, poll_interval: float) -> tuple[bool, dict[str, object]]:
    """(healthy, details): the details are /healthz's JSON body; `reasons` lists what is wrong.

    poll_interval is BRIDGE_POLL_INTERVAL, in seconds.
    """
    reasons: list[str] = []
    if not observed.nats_connected:
        reasons.append("NATS is not connected")
    age = observed.last_round_age
    if observed.leading:
        if age is None:
            reasons.append("no discovery round has succeeded yet")
        elif age > ROUNDS_BEFORE_UNHEALTHY * poll_interval:
            reasons.append(f"no discovery round has succeeded for {age:.0f}s")
        reasons.extend(observed.problems)
    details: dict[str, object] = {
        "role": "leader" if observed.leading else "standby",
        "leader": observed.leader,
        "nats": "connected" if observed.nats_connected else "disconnected",
        "last_round_s_ago": None if age is None or not observed.leading else round(age, 1),
        "agents": observed.agents,
    }
    if reasons:
        details["reasons"] = reasons
    return not reasons, details
