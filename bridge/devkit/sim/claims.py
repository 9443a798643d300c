"""Claims of simulated agents sent as requests, many agents over one connection.

A real agent asks with its own connection (`BusAgent.claim`, whose reply inbox is its own).
Simulated agents share a connection, so each claim names its agent's inbox by hand
(`_INBOX.<agent id>.…`, the only inbox the bridge answers an agent on), and one wildcard
subscription per connection takes every answer. Answers land on the agent (`SimAgent.answers`).
"""

from __future__ import annotations

import itertools
import uuid

import msgspec
import structlog
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg

from bridge.agent import claim_message
from bridge.contract.messages import CLAIM_ANSWER_DECODER
from bridge.contract.names import Names
from bridge.devkit.sim.agent import SimAgent

__all__ = ["ClaimAsker"]

log = structlog.get_logger(__name__)


class ClaimAsker:
    """Sends claims as requests over `nc` and files each answer with its agent."""

    def __init__(self, nc: NATS, names: Names) -> None:
        self._nc = nc
        self._names = names
        self._token = uuid.uuid4().hex[:12]
        self._numbers = itertools.count()
        self._pending: dict[str, tuple[SimAgent, str, str]] = {}

    async def subscribe(self) -> None:
        await self._nc.subscribe(f"_INBOX.*.{self._token}.*", cb=self._on_answer)

    def _reply(self, agent: SimAgent) -> str:
        return f"{self._names.agent_inbox(agent.id)}.{self._token}.{next(self._numbers)}"

    async def claim(self, agent: SimAgent, opportunity_id: str, role: str) -> None:
        """Publish `agent`'s claim of `role` with a reply inbox; the answer comes later."""
        reply = self._reply(agent)
        self._pending[reply] = (agent, opportunity_id, role)
        subject, body = claim_message(self._names, opportunity_id, agent.id, role)
        await self._nc.publish(subject, body, reply=reply)

    @property
    def unanswered(self) -> int:
        return len(self._pending)

    async def ask_again(self) -> int:
        """Send every claim still unanswered once more (an agent retrying after its
        timeout); an answer to the earlier request is ignored then. How many were sent."""
        pending, self._pending = self._pending, {}
        for agent, opportunity_id, role in pending.values():
            await self.claim(agent, opportunity_id, role)
        return len(pending)

    async def _on_answer(self, msg: Msg) -> None:
        if msg.headers and msg.headers.get("Status") == "503":
            return  # no responders (no bridge subscribed yet): still unanswered
        asked = self._pending.pop(msg.subject, None)
        if asked is None:
            return
        agent, opportunity_id, _role = asked
        try:
            answer = CLAIM_ANSWER_DECODER.decode(msg.data)
        except msgspec.DecodeError:
            log.warning("sim_claim_answer_invalid", agent_id=agent.id, data=msg.data[:200])
            return
        agent.answers.append((opportunity_id, answer))
