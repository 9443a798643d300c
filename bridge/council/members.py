"""Who is an agent, for the councils (DESIGN.md, "Councils"): an agent that discovery found,
or one on the bus (a live presence entry under its id)."""

from __future__ import annotations

from collections.abc import Callable

from bridge.bus.presence import Presence
from bridge.bus.registry import AgentRegistry

__all__ = ["Members"]


class Members:
    """`is_agent()` for claims; `gone()` for holders. `rounds()` counts discovery rounds
    (the pipeline's), so that a new term judges nobody gone before its first round."""

    def __init__(
        self, registry: AgentRegistry, presence: Presence, rounds: Callable[[], int]
    ) -> None:
        self._registry = registry
        self._presence = presence
        self._rounds = rounds
        self._term_began_at = 0

    def begin_term(self) -> None:
        """A term begins: what discovery knew before it may be old."""
        self._term_began_at = self._rounds()

    @property
    def ready(self) -> bool:
        """Whether who is on the bus is known (the presence watch has given every entry)."""
        return self._presence.loaded.is_set()

    async def wait_ready(self) -> None:
        await self._presence.loaded.wait()

    def is_agent(self, agent_id: str) -> bool:
        """Discovered (in the roster, or in the bucket as this term found it) or on the bus."""
        return (
            agent_id in self._registry.desired
            or agent_id in self._registry.published
            or self._presence.is_present(agent_id)
        )

    def gone(self, agent_id: str) -> bool:
        """The agent's task left discovery and it is not on the bus. False while that cannot
        be told yet (no discovery round in this term, presence not read yet)."""
        if not self.ready or self._rounds() <= self._term_began_at:
            return False
        return agent_id not in self._registry.desired and not self._presence.is_present(agent_id)
