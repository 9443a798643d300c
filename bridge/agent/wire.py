"""What an agent puts on the wire, and where (DESIGN.md, "The bus", "Councils", "Agents on the
bus"): the subjects and bodies of its presence, acks, claims and its leave, and the inbox rule.

Public for programs that speak for many agents over one connection (the simulated fleet).
"""

from __future__ import annotations

import re

from bridge.contract.buckets import PRESENCE_INTERVAL, PRESENCE_TTL
from bridge.contract.kv_wire import delete_headers, key_subject
from bridge.contract.messages import Ack, Claim, encode
from bridge.contract.names import Names

__all__ = [
    "AGENT_INBOX_PREFIX",
    "LEAVE_HEADERS",
    "PRESENCE_INTERVAL",
    "PRESENCE_TTL",
    "ack_message",
    "claim_message",
    "inbox_prefix",
    "is_reply_for",
    "names_for",
    "presence_subject",
]

# The inbox prefix of a connection that speaks for many agents (the simulated fleet), which
# only the shared `agent` user of the open mode may read; one agent's is `_INBOX.<its id>`.
AGENT_INBOX_PREFIX = "_INBOX.agent"
# A leave: a KV delete, which watchers see as DEL. Not a purge: that is a rollup, which the
# stream agents' writes land in refuses (docs/trust-design.md).
LEAVE_HEADERS = delete_headers()
# One token of a reply subject: not empty, no wildcard, no whitespace.
_TOKEN = re.compile(r"^[^.*>\s]+\Z")


def names_for(prefix: str) -> Names:
    """The names of a deployment whose subject prefix is `prefix` (BRIDGE_SUBJECT_PREFIX)."""
    return Names(prefix=prefix, agents_bucket=f"{prefix}_agents")


def inbox_prefix(agent_id: str) -> str:
    """`_INBOX.<agent id>`: the agent's inbox prefix, the only one the auth callout lets it
    read, where the bridge answers its claims and roster requests."""
    return Names.agent_inbox(agent_id)


def is_reply_for(reply: str, sender: str, recipient: str) -> bool:
    """Whether `reply` is `sender`'s inbox for an answer from `recipient`:
    `_INBOX.<sender>.<recipient>.<token>...`. With the auth callout `recipient` may publish
    only `_INBOX.*.<recipient>.>`, so an answer carries its sender as a message does; an agent
    answers nowhere else (a reply subject elsewhere would make it publish where the asker
    chose)."""
    head = f"{inbox_prefix(sender)}.{recipient}."
    rest = reply[len(head) :] if reply.startswith(head) else ""
    return bool(rest) and all(_TOKEN.match(token) for token in rest.split("."))


def ack_message(names: Names, opportunity_id: str, agent_id: str) -> tuple[str, bytes]:
    """(subject, body) of `agent_id`'s ack of an opportunity."""
    body = encode(Ack(agent_id=agent_id, opportunity_id=opportunity_id))
    return names.acks(opportunity_id, agent_id), body


def claim_message(names: Names, opportunity_id: str, agent_id: str, role: str) -> tuple[str, bytes]:
    """(subject, body) of `agent_id`'s claim of `role`."""
    return names.claims(opportunity_id, agent_id), encode(Claim(role=role, agent_id=agent_id))


def presence_subject(names: Names, agent_id: str) -> str:
    """The subject a presence entry is written on: the key `agent_id` of the presence bucket."""
    return key_subject(names.presence_bucket, agent_id)
