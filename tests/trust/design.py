"""docs/trust-design.md, written out where bridge/ does not do it yet.

Three pieces of the AGENTS account design need the bridge's code, and these are their exact
shapes, so the configuration can be proven against a real nats-server before the bridge
changes land (tests/trust/test_agents_account.py, and the `*-design` cases of
tests/trust/test_vehicles.py). Once bridge/ does each of them, its own code replaces the
function here and the test cases that use it.

- `agent_permissions`: the user the auth callout issues to an admitted agent (in AGENTS);
- `create_presence_streams`: the presence bucket and the stream agents' writes land in;
- `answer_subject`: where the bridge publishes its answer to an agent's request.
"""

from __future__ import annotations

import re
from typing import Any

from nats.aio.client import Client as NATS
from nats.js.api import (
    DiscardPolicy,
    StorageType,
    StreamConfig,
    StreamSource,
    SubjectTransform,
)

from bridge.contract.names import Names

__all__ = [
    "AGENTS_ACCOUNT",
    "AGENT_SIDE_PENDING",
    "MAX_PRESENCE_BYTES",
    "agent_permissions",
    "answer_subject",
    "create_presence_streams",
    "presence_in_stream",
    "presence_in_subject",
]

# Why tests of agents speaking through bridge/agent.py or bridge/sim against the shipped
# configuration wait: in AGENTS they have no JetStream.
AGENT_SIDE_PENDING = (
    "agents in AGENTS have no JetStream, but bridge/agent.py and bridge/sim still create the "
    "presence bucket, write presence with a JetStream publish that waits for an ack, leave with "
    "a purge (a rollup) and read the agents bucket (docs/trust-design.md, agent side)"
)
# The account of every agent: the static `agent` user, and every user the callout issues.
AGENTS_ACCOUNT = "AGENTS"
# DESIGN.md, "Trust": a presence value is at most 4 KiB, refused by the server beyond it.
MAX_PRESENCE_BYTES = 4096
# A token of an inbox subject: no wildcard, no space, not empty.
_TOKEN = re.compile(r"^[^.*>\s]+$")


def agent_permissions(names: Names, agent_id: str) -> dict[str, Any]:
    """The `pub`/`sub` of the user the callout issues to agent `agent_id`: an allow-list of
    its own subjects, and nothing of JetStream or $SYS (both still answer in AGENTS)."""
    p = names.prefix
    return {
        "pub": {
            "allow": [
                f"$KV.{names.presence_bucket}.{agent_id}",
                f"{p}.council.*.acks.{agent_id}",
                f"{p}.council.*.claims.{agent_id}",
                f"{p}.agents.*.messages.{agent_id}",
                f"{p}.bridge.agents",
                # a reply to a peer's request: the asker's inbox, under the replier's own id
                f"_INBOX.*.{agent_id}.>",
            ]
        },
        "sub": {
            "allow": [
                names.opportunities,
                names.announce,
                f"{p}.council.*.events",
                f"{p}.agents.{agent_id}.messages.*",
                f"_INBOX.{agent_id}.>",
            ]
        },
    }


def presence_in_stream(names: Names) -> str:
    """The stream agents' presence writes land in (`chorus_presence_in`)."""
    return f"{names.presence_bucket}_in"


def presence_in_subject(names: Names, key: str = "*") -> str:
    """Where an agent's write of `$KV.<presence bucket>.<key>` arrives in the bridge's account
    (nats.conf's import maps it there)."""
    return f"{names.prefix}.presence.in.{key}"


async def create_presence_streams(
    nc: NATS, names: Names, *, ttl: float = 15.0, marker_ttl: float = 5.0
) -> None:
    """The presence bucket (TTL, limit markers, 4 KiB values) sourcing the stream agents
    write to. That stream answers nothing (`no_ack`: a PubAck would go to whatever reply
    subject the writer named), refuses rollups (a bucket with limit markers must allow them,
    and `Nats-Rollup: all` on one's own key would empty it) and per-message TTLs, and keeps one
    message per key for as long as an entry lives."""
    js = nc.jetstream(timeout=5)
    inbound = presence_in_stream(names)
    await js.add_stream(
        StreamConfig(
            name=inbound,
            description="chorus-bridge: agents' presence writes, on their way to the bucket",
            subjects=[presence_in_subject(names)],
            storage=StorageType.MEMORY,
            no_ack=True,
            allow_rollup_hdrs=False,
            allow_msg_ttl=False,
            max_msgs_per_subject=1,
            max_msg_size=MAX_PRESENCE_BYTES,
            max_age=ttl,
            deny_delete=True,
            discard=DiscardPolicy.OLD,
        )
    )
    bucket = names.presence_bucket
    await js.add_stream(
        StreamConfig(
            name=f"KV_{bucket}",
            description="chorus-bridge: agents present on the bus",
            subjects=[f"$KV.{bucket}.>"],
            storage=StorageType.MEMORY,
            max_msgs_per_subject=1,
            max_msg_size=MAX_PRESENCE_BYTES,
            max_age=ttl,
            allow_msg_ttl=True,
            subject_delete_marker_ttl=marker_ttl,
            allow_rollup_hdrs=True,
            deny_delete=True,
            discard=DiscardPolicy.NEW,
            duplicate_window=min(ttl, 120.0),
            sources=[
                StreamSource(
                    name=inbound,
                    subject_transforms=[
                        SubjectTransform(src=presence_in_subject(names), dest=f"$KV.{bucket}.$1")
                    ],
                )
            ],
        )
    )


def answer_subject(names: Names, agent_id: str, reply: str) -> str | None:
    """The subject the bridge publishes its answer to `agent_id`'s request on, or None when the
    request's reply subject is not that agent's inbox (`_INBOX.<agent id>.<rest>`): then there
    is no answer. nats.conf exports `<prefix>.bridge.answers.<id>.<rest>` to AGENTS as
    `_INBOX.<id>.<rest>`, so the answer can land on no other subject whatever `rest` is."""
    head = f"_INBOX.{agent_id}."
    if not reply.startswith(head):
        return None
    rest = reply[len(head) :]
    if not rest or not all(_TOKEN.match(token) for token in rest.split(".")):
        return None
    return f"{names.prefix}.bridge.answers.{agent_id}.{rest}"
