"""Every message that crosses the wire, as msgspec Structs (DESIGN.md, "The bus").

Wire messages tolerate change: unknown fields are ignored and new fields get defaults, so
older and newer peers interoperate. Encoders and decoders are built once, here, and reused.
"""

from __future__ import annotations

import datetime as dt
import re
from typing import Annotated, Any, Generic, Literal, TypeVar

import msgspec

__all__ = [
    "AGENT_DECODER",
    "ANNOUNCEMENT_DECODER",
    "Ack",
    "Agent",
    "Announcement",
    "BroadcastReport",
    "Claim",
    "ClaimAnswer",
    "CouncilEvent",
    "CouncilOpportunity",
    "CouncilRecord",
    "CouncilRequest",
    "CouncilState",
    "ErrorReply",
    "FailedDelivery",
    "Holder",
    "Lease",
    "PresenceEntry",
    "Role",
    "RoleState",
    "Seat",
    "WireDecoder",
    "encode",
    "is_opportunity_id",
    "now_rfc3339",
]

Source = Literal["swarm", "dns", "static"]
AnnounceEvent = Literal["joined", "updated", "left"]
# DESIGN.md, "Councils".
Via = Literal["bus", "http"]
CouncilStateName = Literal["forming", "active", "degraded", "expired"]
CouncilEventName = Literal["granted", "released", "activated", "degraded", "expired"]
ClaimRefusal = Literal[
    "taken", "expired", "unknown opportunity", "unknown role", "holds another role", "not an agent"
]

# DESIGN.md: an opportunity id is [A-Za-z0-9_-]{1,128}; a request is at most 64 KiB.
# \Z, not $: msgspec searches with re, whose $ also matches before a final newline.
OPPORTUNITY_ID_PATTERN = r"^[A-Za-z0-9_-]{1,128}\Z"
_OPPORTUNITY_ID = re.compile(OPPORTUNITY_ID_PATTERN)
MAX_OPPORTUNITY_BYTES = 64 * 1024
# DESIGN.md, "Councils": a role name is [A-Za-z0-9_-]{1,64} (a KV key token); "Trust": acks
# and claims larger than 4 KiB are dropped and counted.
ROLE_NAME_PATTERN = r"^[A-Za-z0-9_-]{1,64}\Z"
MAX_CLAIM_BYTES = 4 * 1024
# DESIGN.md, "Trust": an ack larger than this is dropped (and counted), like a claim.
MAX_ACK_BYTES = 4 * 1024
# The header of a claim the bridge republishes from an agent's HTTP answer (already arbitrated
# when it is published; an agent that sets it on its own claim only has it ignored).
VIA_HEADER = "Chorus-Via"


def now_rfc3339() -> str:
    """The current time as RFC 3339 UTC with microseconds and a Z suffix."""
    return dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def rfc3339_seconds(text: str) -> float:
    """Seconds since the epoch of an RFC 3339 time, which must name its offset (`Z` or
    `+01:00`). ValueError when it is no such time."""
    moment = dt.datetime.fromisoformat(text)
    if moment.tzinfo is None:
        raise ValueError(f"{text!r} has no time zone offset (RFC 3339 needs one, e.g. Z)")
    return moment.timestamp()


class Agent(msgspec.Struct, kw_only=True, frozen=True):
    """One agent in the agents bucket. Only facts: no per-round timestamps."""

    id: str
    endpoint: str
    address: str
    port: int
    source: Source
    service: str | None = None
    network: str | None = None
    task_id: str | None = None
    slot: int | None = None
    node_id: str | None = None
    container_id: str | None = None
    healthy: bool | None = None
    on_bus: bool = False
    first_seen: str = ""


class Announcement(msgspec.Struct, kw_only=True, frozen=True):
    """A change in the agents bucket, on `<prefix>.agents.announce`."""

    event: AnnounceEvent
    agent: Agent
    at: str


class PresenceEntry(msgspec.Struct, kw_only=True, frozen=True):
    """What an agent on the bus keeps under its id in the presence bucket."""

    agent_id: str
    task_id: str | None = None
    endpoint: str | None = None
    roles: list[str] = msgspec.field(default_factory=list)
    at: str = ""


class Role(msgspec.Struct, kw_only=True, frozen=True):
    """A role of a council; names are unique within an opportunity."""

    name: Annotated[str, msgspec.Meta(pattern=ROLE_NAME_PATTERN)]
    core: bool = False


class CouncilOpportunity(msgspec.Struct, kw_only=True, frozen=True):
    """A council offered to every agent."""

    id: Annotated[str, msgspec.Meta(pattern=OPPORTUNITY_ID_PATTERN)]
    roles: Annotated[list[Role], msgspec.Meta(min_length=1)]
    project: str = ""
    title: str = ""
    deadline: str | None = None
    details: dict[str, Any] = msgspec.field(default_factory=dict)


class CouncilRecord(CouncilOpportunity, kw_only=True, frozen=True):
    """The value under `<opportunity id>` in the councils bucket: the opportunity as the
    coordinator sent it (a reader that decodes a CouncilOpportunity gets exactly that), and
    what the bridge adds: when it recorded it, the council's state as last announced, and
    when it last became active (RFC 3339 UTC)."""

    recorded_at: str = ""
    state: CouncilStateName = "forming"
    activated_at: str | None = None


class Holder(msgspec.Struct, kw_only=True, frozen=True):
    """The value under `<opportunity id>.<role>`: who holds the role, granted how and when."""

    opportunity_id: str
    role: str
    core: bool
    agent_id: str
    via: Via
    granted_at: str


class Seat(msgspec.Struct, kw_only=True, frozen=True):
    """The value under `<opportunity id>.agents.<agent id>`: the one role an agent holds in a
    council (or is being granted: it is written before the Holder)."""

    opportunity_id: str
    agent_id: str
    role: str
    taken_at: str


class ClaimAnswer(msgspec.Struct, kw_only=True, frozen=True, omit_defaults=True):
    """The answer to a claim sent as a request: `{"granted": true, "role", "holder"}`, or
    `{"granted": false, "role", "reason", "holder"}` where `holder` is the role's holder (an
    agent id) or null."""

    granted: bool
    role: str
    holder: str | None
    reason: ClaimRefusal | None = None


class CouncilEvent(msgspec.Struct, kw_only=True, frozen=True):
    """One change of a council, on `<prefix>.council.<opportunity id>.events`."""

    event: CouncilEventName
    opportunity_id: str
    role: str | None = None
    agent_id: str | None = None
    at: str


class CouncilRequest(msgspec.Struct, kw_only=True, frozen=True):
    """A request for a council's state on `<prefix>.bridge.council`."""

    opportunity_id: str


class RoleState(msgspec.Struct, kw_only=True, frozen=True):
    name: str
    core: bool
    holder: str | None


class CouncilState(msgspec.Struct, kw_only=True, frozen=True):
    """The answer on `<prefix>.bridge.council`: the council's state and who holds each role."""

    opportunity_id: str
    state: CouncilStateName
    roles: list[RoleState]
    activated_at: str | None


class Ack(msgspec.Struct, kw_only=True, frozen=True):
    """An agent on the bus confirms it received an opportunity."""

    agent_id: str
    opportunity_id: str


class Claim(msgspec.Struct, kw_only=True, frozen=True):
    """An agent claims a role of a council."""

    role: str
    agent_id: str


class FailedDelivery(msgspec.Struct, kw_only=True, frozen=True):
    agent_id: str
    endpoint: str | None
    error: str


class BroadcastReport(msgspec.Struct, kw_only=True, frozen=True):
    """Who got an opportunity, returned to the coordinator."""

    opportunity_id: str
    total_agents: int
    success_count: int
    via_bus: int
    via_http: int
    failed: list[FailedDelivery]
    unregistered_acks: int
    duration_ms: float
    at: str


class Lease(msgspec.Struct, kw_only=True, frozen=True):
    """The value of the leader key: who leads, since when (set once per term), and when the
    lease was last renewed (RFC 3339 UTC)."""

    bridge_id: str
    since: str
    renewed_at: str | None = None


class ErrorReply(msgspec.Struct, kw_only=True, frozen=True):
    """The answer to a request that was refused; nothing was sent to anyone."""

    error: str
    field: str | None = None


T = TypeVar("T")


class WireDecoder(Generic[T]):
    """msgspec's JSON decoder of one wire message, for bytes anyone may have written.

    JSON nested too deeply makes msgspec raise RecursionError, which is no DecodeError: a
    10 KB presence value or claim of nested lists would escape every `except DecodeError`
    and end the process. Here it is a DecodeError like any other bad input. Raises
    msgspec.DecodeError (msgspec.ValidationError when the JSON does not fit the type)."""

    def __init__(self, message_type: type[T]) -> None:
        self._decoder = msgspec.json.Decoder(message_type)

    def decode(self, data: bytes | bytearray | memoryview | str) -> T:
        try:
            return self._decoder.decode(data)
        except RecursionError:
            raise msgspec.DecodeError("JSON nested too deeply") from None


_ENCODER = msgspec.json.Encoder()
AGENT_DECODER = WireDecoder(Agent)
ANNOUNCEMENT_DECODER = WireDecoder(Announcement)
PRESENCE_DECODER = WireDecoder(PresenceEntry)
OPPORTUNITY_DECODER = WireDecoder(CouncilOpportunity)
ACK_DECODER = WireDecoder(Ack)
CLAIM_DECODER = WireDecoder(Claim)
REPORT_DECODER = WireDecoder(BroadcastReport)
ERROR_DECODER = WireDecoder(ErrorReply)
LEASE_DECODER = WireDecoder(Lease)
COUNCIL_RECORD_DECODER = WireDecoder(CouncilRecord)
HOLDER_DECODER = WireDecoder(Holder)
SEAT_DECODER = WireDecoder(Seat)
CLAIM_ANSWER_DECODER = WireDecoder(ClaimAnswer)
COUNCIL_EVENT_DECODER = WireDecoder(CouncilEvent)
COUNCIL_REQUEST_DECODER = WireDecoder(CouncilRequest)
COUNCIL_STATE_DECODER = WireDecoder(CouncilState)


def decode_reply(data: bytes) -> BroadcastReport | ErrorReply:
    """A broadcast's reply: its report, or the error that refused it."""
    try:
        return REPORT_DECODER.decode(data)
    except msgspec.ValidationError:
        return ERROR_DECODER.decode(data)


def encode(message: msgspec.Struct) -> bytes:
    """JSON bytes of a wire message."""
    return _ENCODER.encode(message)


def is_opportunity_id(text: str) -> bool:
    """True when `text` is an opportunity id by DESIGN.md's rule (OPPORTUNITY_ID_PATTERN)."""
    return _OPPORTUNITY_ID.match(text) is not None
