"""The agent id: the one rule every reader and writer of an agent id applies.

An agent id is the key of its record in the agents and presence buckets and the last token of
its ack, claim and message subjects (DESIGN.md, "The bus" and "Trust"), so it must be a KV key
and a subject token at once: letters, digits, `-` and `_`, 1 to 256 of them. A Swarm task ID
(25 lowercase letters and digits) and a DNS agent's `dns-<ip>-<port>` are both such ids.
NATS keys also allow `=`, `/` and `.`, and subjects most other characters; an id outside this
rule could be written by one side and refused by the other, so it is refused everywhere.
"""

from __future__ import annotations

import re
from typing import Annotated

import msgspec

__all__ = ["AGENT_ID_PATTERN", "AgentId", "check_agent_id", "is_agent_id"]

# \Z, not $: re's $ also matches before a final newline, and "a\n" is no subject token.
AGENT_ID_PATTERN = r"^[A-Za-z0-9_-]{1,256}\Z"
_AGENT_ID = re.compile(AGENT_ID_PATTERN)

AgentId = Annotated[str, msgspec.Meta(pattern=AGENT_ID_PATTERN)]
"""An agent id in a msgspec Struct: decoding refuses any other string."""


def is_agent_id(text: str) -> bool:
    """True when `text` is an agent id by the rule above."""
    return _AGENT_ID.match(text) is not None


def check_agent_id(text: str) -> str:
    """`text` if it is an agent id. Raises ValueError naming the rule otherwise."""
    if not is_agent_id(text):
        raise ValueError(
            f"agent id {text!r}: use 1 to 256 letters, digits, '-' or '_' "
            "(a Swarm task ID, {{.Task.ID}}, is one)"
        )
    return text
