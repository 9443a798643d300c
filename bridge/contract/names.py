"""Every subject and bucket name, derived from the subject prefix in one place."""

from __future__ import annotations

import dataclasses
from typing import Protocol

__all__ = ["SERVICE_NAME", "SHARED_AGENT_INBOX", "Names"]

# The NATS micro service the bridge's request endpoints belong to (`nats micro ls` shows it).
SERVICE_NAME = "chorus-bridge"
# The inbox prefix of nats.conf's shared `agent` user (open mode: every agent shares it). With
# the auth callout each agent has its own, `_INBOX.<agent id>`.
SHARED_AGENT_INBOX = "_INBOX.agent"


class _Deployment(Protocol):
    """What names derive from (bridge/config.py's Settings is one)."""

    @property
    def subject_prefix(self) -> str: ...

    @property
    def kv_bucket(self) -> str: ...


@dataclasses.dataclass(frozen=True)
class Names:
    """The NATS names of one deployment (DESIGN.md, "The bus").

    With the default prefix `chorus`: chorus.agents.announce, chorus.bridge.broadcast,
    chorus.bridge.council, chorus.council.opportunities, chorus.council.<id>.acks.<agent id>,
    chorus.council.<id>.claims.<agent id>, chorus.council.<id>.events, and the buckets
    chorus_agents (BRIDGE_KV_BUCKET), chorus_presence, chorus_bridge (the leader lease) and
    chorus_councils (opportunities and their holders).

    Acks and claims name their agent in the subject's last token: that is the agent they count
    for (DESIGN.md, "Trust"), and what the NATS server's permissions can hold an agent to.
    With `agent_id="*"`, `acks`/`claims` give the subject that matches every agent's.
    """

    prefix: str
    agents_bucket: str

    @classmethod
    def from_settings(cls, settings: _Deployment) -> Names:
        return cls(prefix=settings.subject_prefix, agents_bucket=settings.kv_bucket)

    @property
    def announce(self) -> str:
        return f"{self.prefix}.agents.announce"

    @property
    def broadcast(self) -> str:
        return f"{self.prefix}.bridge.broadcast"

    @property
    def council(self) -> str:
        """Requests for a council's state (micro endpoint `council`)."""
        return f"{self.prefix}.bridge.council"

    @property
    def opportunities(self) -> str:
        return f"{self.prefix}.council.opportunities"

    def acks(self, opportunity_id: str, agent_id: str) -> str:
        """`<prefix>.council.<opportunity id>.acks.<agent id>` (`*`: every agent's)."""
        return f"{self.prefix}.council.{opportunity_id}.acks.{agent_id}"

    def claims(self, opportunity_id: str, agent_id: str) -> str:
        """`<prefix>.council.<opportunity id>.claims.<agent id>` (`*`: every agent's)."""
        return f"{self.prefix}.council.{opportunity_id}.claims.{agent_id}"

    def council_events(self, opportunity_id: str) -> str:
        """`<prefix>.council.<opportunity id>.events` (`*`: every council's)."""
        return f"{self.prefix}.council.{opportunity_id}.events"

    def agent_of(self, subject: str, opportunity_id: str, kind: str) -> str | None:
        """The agent id an ack (`kind="acks"`) or claim subject names, or None if `subject`
        is not one of that opportunity's."""
        head = f"{self.prefix}.council.{opportunity_id}.{kind}."
        agent_id = subject[len(head) :] if subject.startswith(head) else ""
        return agent_id if agent_id and "." not in agent_id else None

    @property
    def presence_bucket(self) -> str:
        return f"{self.prefix}_presence"

    @property
    def leader_bucket(self) -> str:
        return f"{self.prefix}_bridge"

    @property
    def councils_bucket(self) -> str:
        return f"{self.prefix}_councils"
