"""The swarm's nodes: managers and workers, their state and availability, and their events.

Every manager emits a `node` event (scope swarm) when a node changes, in the shape of moby's
daemon/events.go (logNodeEvent): Action `update`, the node's ID, its `name`, and the attributes
that changed (`state.old`/`state.new`, `availability.old`/`availability.new`), lower-case.
"""

from __future__ import annotations

import dataclasses
import time
from typing import Any, Literal

__all__ = ["NodeRecord", "Role", "node_event"]

Role = Literal["manager", "worker"]


@dataclasses.dataclass(slots=True)
class NodeRecord:
    """One node of the emulated swarm."""

    id: str
    hostname: str
    role: Role = "manager"
    state: Literal["ready", "down"] = "ready"
    availability: Literal["active", "drain"] = "active"

    @property
    def schedulable(self) -> bool:
        """Whether new tasks may be placed on it."""
        return self.state == "ready" and self.availability == "active"


def node_event(node: NodeRecord, **changes: tuple[str, str]) -> dict[str, Any]:
    """A `node update` event; each change is attribute -> (old, new), e.g. state=("ready",
    "down")."""
    attributes = {"name": node.hostname}
    for name, (old, new) in changes.items():
        attributes[f"{name}.old"], attributes[f"{name}.new"] = old, new
    now = time.time_ns()
    return {
        "Type": "node",
        "Action": "update",
        "Actor": {"ID": node.id, "Attributes": dict(sorted(attributes.items()))},
        "scope": "swarm",
        "time": now // 1_000_000_000,
        "timeNano": now,
    }
