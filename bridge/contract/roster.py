"""The roster: every agent the bridge knows, as `<prefix>.bridge.agents` answers it (DESIGN.md,
"Agents on the bus"), and how it is paged so that any fleet fits the server's max payload.

The answer is a JSON list of Peers, `[{"id", "on_bus", "healthy", "source", "roles"}]`, sorted
by id: no endpoint, no address. A Peer is about 100 bytes (a Swarm task id, a role or two), so
10,000 agents are about 1 MB, the server's default max payload, and an agent's roles may take
up to 4 KiB of its presence entry: the roster is paged. A request's body is empty (the first
page) or `{"after": "<id>"}` (the agents after that id); an answer holds as many Peers as fit
in the server's max payload, less PAGE_MARGIN, and, when more follow, the header
`Chorus-Roster-Next` with the id to ask `after`. A reader asks until an answer has no such
header. Pages are cut from the roster as it is at each request: an agent that joins or leaves
between two requests may be missing or listed once (never twice: ids only grow along the pages).
"""

from __future__ import annotations

import bisect
from collections.abc import Sequence
from typing import Literal

import msgspec

from bridge.contract.messages import WireDecoder

__all__ = [
    "MAX_ROSTER_REQUEST_BYTES",
    "PAGE_MARGIN",
    "PEERS_DECODER",
    "ROSTER_NEXT_HEADER",
    "ROSTER_REQUEST_DECODER",
    "Peer",
    "RosterRequest",
    "page",
]

# The header of a page that is not the last: the id to ask `after` for the next one.
ROSTER_NEXT_HEADER = "Chorus-Roster-Next"
# Bytes of a page kept free under the max payload for the message's headers (the next id, at
# most 256 bytes, and micro's or the route's own).
PAGE_MARGIN = 4096
# A roster request is `{"after": "<id>"}` at most: larger ones are refused.
MAX_ROSTER_REQUEST_BYTES = 1024


class Peer(msgspec.Struct, kw_only=True, frozen=True, gc=False):
    """One agent of the roster. `source` is null for an agent on the bus only (its presence key
    is no discovered agent); `healthy` is null unless WHOOSH_VERIFY_HEALTH checks it; `roles`
    are what its presence entry says (none when it is not on the bus).

    Untracked by the garbage collector (`gc=False`: it holds no container that could make a
    cycle), and its roles a tuple: decoding a roster of 10,000 made 20,000 tracked objects, and
    the collections they set off took a decode from 6 ms to 30 ms and more (measured)."""

    id: str
    on_bus: bool
    healthy: bool | None = None
    source: Literal["swarm", "dns", "static"] | None = None
    roles: tuple[str, ...] = ()


class RosterRequest(msgspec.Struct, kw_only=True, frozen=True):
    """A roster request: `after` None (or an empty body) for the first page."""

    after: str | None = None


PEERS_DECODER = WireDecoder(list[Peer])
ROSTER_REQUEST_DECODER = WireDecoder(RosterRequest)


def page(
    ids: Sequence[str], encoded: Sequence[bytes], after: str | None, limit: int
) -> tuple[bytes, str | None]:
    """One page of the roster: (the JSON list of the Peers after `after`, as many as fit in
    `limit` bytes, at least one; the id to ask `after` next, or None when this is the last).

    `ids` are sorted and `encoded[i]` is the JSON of the Peer `ids[i]`."""
    start = 0 if after is None else bisect.bisect_right(ids, after)
    size, end = 2, start  # the brackets
    while end < len(ids):
        grown = size + len(encoded[end]) + (end > start)  # the comma
        if grown > limit and end > start:
            break
        size, end = grown, end + 1
    body = b"[" + b",".join(encoded[start:end]) + b"]"
    return body, (ids[end - 1] if end < len(ids) else None)
