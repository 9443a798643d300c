"""What a broadcast needs of the councils (bridge/council/): the opportunity recorded before
it is sent anywhere, and the claims of agents' HTTP answers arbitrated like any other.

A Protocol, so that the broadcast room does not import the council room: bridge/app.py hands
the broadcaster the council's arbiter, which is one.
"""

from __future__ import annotations

from typing import Protocol

from bridge.contract.messages import ClaimAnswer, CouncilOpportunity, Via

__all__ = ["CouncilRefusedError", "Councils"]

from bridge.errors import CouncilRefusedError


class Councils(Protocol):
    """The councils' side of a broadcast."""

    async def record(self, opportunity: CouncilOpportunity) -> None:
        """Record the opportunity before it is sent. CouncilRefusedError when its id is
        recorded with other roles or another deadline; NatsError when it cannot be written
        (then nothing may be sent)."""

    async def claim(
        self, opportunity_id: str, agent_id: str, role: str, *, via: Via
    ) -> ClaimAnswer | None:
        """Arbitrate `agent_id`'s claim of `role`; the answer, or None when none could be
        decided (this bridge leads no more, NATS failed)."""
