"""Every subject and bucket name, derived from the subject prefix in one place."""

from __future__ import annotations

import dataclasses
import re
from typing import Protocol

__all__ = ["ANSWER_MAPPING", "SERVICE_NAME", "Names"]

# The NATS micro service the bridge's request endpoints belong to (`nats micro ls` shows it).
SERVICE_NAME = "chorus-bridge"
# An agent's inbox as a reply subject: `_INBOX.<agent id>.<rest>`, the rest one or more
# tokens, none empty, none a wildcard, no white space (one match per answer: every claim of a
# race asks it). \Z, not $: $ also matches before a final newline.
_AGENT_REPLY = re.compile(r"_INBOX\.([^.*>\s]+)\.([^.*>\s]+(?:\.[^.*>\s]+)*)\Z")


# The subject mapping that delivers the bridge's answers onto agents' inboxes in a server of
# one account (the embedded one, a test's), as nats.conf's import into the agents' account
# does: `<prefix>.bridge.answers.<agent id>.<rest>` -> `_INBOX.<agent id>.<rest>`, any prefix.
ANSWER_MAPPING = {"*.bridge.answers.*.>": "_INBOX.{{wildcard(2)}}.>"}


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
    def roster(self) -> str:
        """`<prefix>.bridge.agents`: the roster, asked by agents and coordinators."""
        return f"{self.prefix}.bridge.agents"

    @property
    def roster_from_agents(self) -> str:
        """`<prefix>.bridge.agents.from_agents`: agents' roster requests, as they arrive in the
        bridge's account (nats.conf imports them there, apart from coordinators' requests)."""
        return f"{self.roster}.from_agents"

    def messages(self, recipient: str, sender: str) -> str:
        """`<prefix>.agents.<recipient>.messages.<sender>` (`*`: any agent's)."""
        return f"{self.prefix}.agents.{recipient}.messages.{sender}"

    @property
    def presence_bucket(self) -> str:
        return f"{self.prefix}_presence"

    @property
    def presence_inbound(self) -> str:
        """The stream agents' presence writes land in, which the presence bucket sources."""
        return f"{self.presence_bucket}_in"

    def presence_in(self, agent_id: str) -> str:
        """`<prefix>.presence.in.<agent id>` (`*`: every agent's): where an agent's write of
        its presence key arrives in the bridge's account (nats.conf's import maps it there)."""
        return f"{self.prefix}.presence.in.{agent_id}"

    @staticmethod
    def agent_inbox(agent_id: str) -> str:
        """`_INBOX.<agent id>`: the agent's inbox prefix, in the agents' account."""
        return f"_INBOX.{agent_id}"

    def answer_subject(self, agent_id: str, reply: str) -> str | None:
        """Where the bridge publishes its answer to a request of agent `agent_id` (a claim:
        the agent its subject names) whose reply subject is `reply`: on
        `<prefix>.bridge.answers.<agent id>.<rest>` when `reply` is that agent's inbox,
        `_INBOX.<agent id>.<rest>`; None otherwise, and then there is no answer.

        nats.conf exports that subject to the agents' account as `_INBOX.<agent id>.<rest>`
        only: whatever a request names, its answer can land on no other subject, in no other
        account (DESIGN.md, "Trust"; docs/trust-design.md)."""
        found = _AGENT_REPLY.match(reply)
        if found is None or found.group(1) != agent_id:
            return None
        return f"{self.prefix}.bridge.answers.{agent_id}.{found.group(2)}"

    @staticmethod
    def connect_advisories(account: str) -> str:
        """`$SYS.ACCOUNT.<account>.CONNECT`: the server's advisory of each connection made in
        `account` (nats.conf imports the agents' account's into the bridge's)."""
        return f"$SYS.ACCOUNT.{account}.CONNECT"

    @staticmethod
    def disconnect_advisories(account: str) -> str:
        """`$SYS.ACCOUNT.<account>.DISCONNECT`: the server's advisory of each connection of
        `account` that closed."""
        return f"$SYS.ACCOUNT.{account}.DISCONNECT"

    @property
    def leader_bucket(self) -> str:
        return f"{self.prefix}_bridge"

    @property
    def councils_bucket(self) -> str:
        return f"{self.prefix}_councils"
