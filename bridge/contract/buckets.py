"""Every KV bucket of the contract, and what it must be: one definition each.

DESIGN.md, "The bus": `chorus_agents` (BRIDGE_KV_BUCKET) keeps its records for good (no TTL,
no max age); `chorus_presence` expires an entry 15 s after its last write, with limit markers
so that watchers see it go, and takes agents' writes through an inbound stream (below);
`chorus_bridge` holds the leader lease, whose messages expire after the lease.

An inbound stream is where writers that must get no answer write (DESIGN.md, "Trust"): agents,
whose presence writes nats.conf maps from `$KV.<bucket>.<id>` in their account onto
`<prefix>.presence.in.<id>` in the bridge's. It acknowledges nothing (a PubAck goes to whatever
reply subject the writer named), refuses rollups (a bucket with limit markers must allow them,
and `Nats-Rollup: all` on one's own key would empty it) and per-message TTLs, and holds one
message per key for as long as an entry lives; the bucket sources it, the key's token mapped
onto `$KV.<bucket>.<key>`. Where everyone shares one account (no nats.conf), agents write the
bucket's own subjects and the inbound stream stays empty.

The bridge creates each when missing, as defined here; a tool that creates one (the demo's
simulated agents, tests, benchmarks) takes the same definition. The KV edge (bridge/edges/kv/)
turns a `BucketSpec` into nats-py's configuration.
"""

from __future__ import annotations

import dataclasses

from bridge.contract.names import Names

__all__ = [
    "COUNCIL_RETENTION",
    "LEADER_KEY",
    "LEASE",
    "MAX_PRESENCE_BYTES",
    "PRESENCE_INTERVAL",
    "PRESENCE_MARKER_TTL",
    "PRESENCE_TTL",
    "PURGE_MARKER_TTL",
    "BucketSpec",
    "Inbound",
    "agents_bucket",
    "council_key",
    "councils_bucket",
    "holder_key",
    "lease_bucket",
    "presence_bucket",
    "seat_key",
    "split_council_key",
]

# DESIGN.md: an agent rewrites its presence at least every 5 s; 15 s without one is absence.
PRESENCE_INTERVAL = 5.0
PRESENCE_TTL = 15.0
# Markers left by presence expiries live this long, so a late watcher still sees the agent go.
PRESENCE_MARKER_TTL = 5
# DESIGN.md, "Trust": a presence value is at most 4 KiB, refused by the server beyond it.
MAX_PRESENCE_BYTES = 4096
# A departed agent's purge marker expires after this many seconds (DESIGN.md: about an hour).
PURGE_MARKER_TTL = 3600
# The leader lease, in seconds: the lease bucket's max age, renewed 5 times per lease.
LEASE = 10.0
LEADER_KEY = "leader"
# An expired council's records are removed this many seconds after its deadline (a day).
COUNCIL_RETENTION = 86400
# The token between an opportunity and an agent id in a seat's key (see seat_key).
_SEATS = "agents"


@dataclasses.dataclass(frozen=True)
class Inbound:
    """The inbound stream a bucket sources (see above): its name, and its subject, whose one
    `*` token is the key."""

    stream: str
    subject: str


@dataclasses.dataclass(frozen=True)
class BucketSpec:
    """What a bucket must be. `ttl` (max age) and `marker_ttl` in seconds. `keeps_records`:
    a TTL or max age would lose records, so an existing bucket with one is refused (DESIGN.md:
    the bridge refuses to write there and /healthz says why). `max_value_size` in bytes (None:
    the server's max payload). `inbound`: the stream the bucket sources writes from."""

    name: str
    description: str
    memory: bool = False
    replicas: int = 1
    ttl: float | None = None
    marker_ttl: int | None = None
    keeps_records: bool = True
    max_value_size: int | None = None
    inbound: Inbound | None = None


def agents_bucket(names: Names, *, replicas: int = 1) -> BucketSpec:
    """The agents bucket (BRIDGE_KV_BUCKET): file storage, records kept for good."""
    return BucketSpec(
        name=names.agents_bucket,
        replicas=replicas,
        description="chorus-bridge: agents found by discovery",
    )


def presence_bucket(names: Names, *, replicas: int = 1, ttl: float = PRESENCE_TTL) -> BucketSpec:
    """The presence bucket: in memory, entries of at most 4 KiB expire `ttl` s after their
    last write; agents' writes come in through its inbound stream."""
    return BucketSpec(
        name=names.presence_bucket,
        ttl=ttl,
        marker_ttl=PRESENCE_MARKER_TTL,
        memory=True,
        replicas=replicas,
        keeps_records=False,
        description="chorus-bridge: agents present on the bus",
        max_value_size=MAX_PRESENCE_BYTES,
        inbound=Inbound(stream=names.presence_inbound, subject=names.presence_in("*")),
    )


def lease_bucket(names: Names, *, replicas: int = 1, lease: float = LEASE) -> BucketSpec:
    """The leader lease's bucket: in memory, its messages expire `lease` s after a write."""
    return BucketSpec(
        name=names.leader_bucket,
        ttl=lease,
        memory=True,
        replicas=replicas,
        keeps_records=False,
        description="chorus-bridge: leader lease",
    )


def councils_bucket(names: Names, *, replicas: int = 1) -> BucketSpec:
    """The councils bucket: file storage, records kept until the bridge removes them."""
    return BucketSpec(
        name=names.councils_bucket,
        replicas=replicas,
        description="chorus-bridge: council opportunities and the holders of their roles",
    )


def council_key(opportunity_id: str) -> str:
    """`<opportunity id>`: the opportunity as the bridge recorded it (DESIGN.md)."""
    return opportunity_id


def holder_key(opportunity_id: str, role: str) -> str:
    """`<opportunity id>.<role>`: the Holder of that role (DESIGN.md)."""
    return f"{opportunity_id}.{role}"


def seat_key(opportunity_id: str, agent_id: str) -> str:
    """`<opportunity id>.agents.<agent id>`: the one role an agent holds in that council, or
    is being granted (a Seat). Created before the Holder, with a write that expects the key
    to hold nothing: what makes "one role per agent" hold under two bridges (README,
    "Councils"). Three tokens, so it is never a role's key (two)."""
    return f"{opportunity_id}.{_SEATS}.{agent_id}"


def split_council_key(key: str) -> tuple[str, str | None, str | None]:
    """(opportunity id, role, agent id) of a councils bucket key: (id, None, None) for an
    opportunity, (id, role, None) for a Holder, (id, None, agent) for a Seat. ValueError for
    a key of no such shape."""
    tokens = key.split(".")
    if len(tokens) == 1:
        return tokens[0], None, None
    if len(tokens) == 2:
        return tokens[0], tokens[1], None
    if len(tokens) == 3 and tokens[1] == _SEATS:
        return tokens[0], None, tokens[2]
    raise ValueError(f"{key!r} is no key of the councils bucket")
