"""Who a broadcast reaches: the agents bucket joined with presence (DESIGN.md, "Trust").

The join is by key only: a discovered agent is on the bus when a live presence entry sits under
its id; a live entry under any other key is an agent on the bus only, reached over the bus and
never by HTTP. Nothing an entry says inside (a task_id, an endpoint) is used.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable

from bridge.bus.presence import Presence
from bridge.bus.registry import AgentRegistry
from bridge.contract.messages import Agent

__all__ = ["Target", "TargetPlan", "plan_targets"]


@dataclasses.dataclass(frozen=True)
class Target:
    """One agent to reach. `endpoint` is the one discovery found (None: an agent on the bus
    only, never called by HTTP); `on_bus`: its presence entry is live, so an ack is awaited."""

    agent_id: str
    endpoint: str | None
    on_bus: bool = False
    healthy: bool | None = None


def plan_targets(agents: Iterable[Agent], present: Iterable[str]) -> list[Target]:
    """Every agent to reach: each discovered agent at its discovered endpoint (on the bus if
    its id is a present key), then each present key that is no discovered agent, with no
    endpoint. Nothing a presence entry says inside is used (DESIGN.md, "Trust")."""
    present = set(present)
    targets = [
        Target(agent_id=a.id, endpoint=a.endpoint, on_bus=a.id in present, healthy=a.healthy)
        for a in agents
    ]
    known = {t.agent_id for t in targets}
    targets += [Target(agent_id=key, endpoint=None, on_bus=True) for key in sorted(present - known)]
    return targets


class TargetPlan:
    """Callable: the targets of a broadcast at the time of the call, from what the registry
    has published and the presence entries that are live."""

    def __init__(self, registry: AgentRegistry, presence: Presence) -> None:
        self._registry = registry
        self._presence = presence

    def __call__(self) -> list[Target]:
        return plan_targets(self._registry.published.values(), self._presence.present_ids())
