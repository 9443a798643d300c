"""`chorus-bridge asyncapi`: the bus contract as an AsyncAPI 3.0 document, from the wire models.

Subjects and bucket names come from bridge/contract/names.py (`Names`), payload schemas from the
msgspec models (msgspec.json.schema_components), so the document follows the code. The
document describes the bridge as an application: what it sends and what it receives.
docs/asyncapi.yaml is this module's output for the default names.
"""

from __future__ import annotations

import inspect
from typing import Any

import msgspec

from bridge import __version__
from bridge.contract.messages import (
    Ack,
    Agent,
    Announcement,
    BroadcastReport,
    Claim,
    CouncilOpportunity,
    ErrorReply,
    Lease,
    PresenceEntry,
)
from bridge.contract.names import SERVICE_NAME, Names

__all__ = ["asyncapi_document", "asyncapi_yaml"]


# The NATS micro protocol's answers (ADR-32) as nats-py sends them for the service
# chorus-bridge; nats-py has no msgspec models of them, so they are described here.
class MicroEndpointInfo(msgspec.Struct, kw_only=True):
    name: str
    subject: str
    queue_group: str
    metadata: dict[str, str] | None = None


class MicroInfo(msgspec.Struct, kw_only=True):
    """`nats micro info chorus-bridge`: the service and its endpoint."""

    type: str = "io.nats.micro.v1.info_response"
    name: str
    id: str
    version: str
    description: str | None = None
    metadata: dict[str, str] = msgspec.field(default_factory=dict)
    endpoints: list[MicroEndpointInfo] = msgspec.field(default_factory=list)


class MicroEndpointStats(msgspec.Struct, kw_only=True):
    name: str
    subject: str
    queue_group: str
    num_requests: int
    num_errors: int
    last_error: str
    processing_time: int  # nanoseconds
    average_processing_time: int  # nanoseconds
    data: dict[str, int] | None = None


class MicroStats(msgspec.Struct, kw_only=True):
    """`nats micro stats chorus-bridge`: requests, errors and time of the endpoint."""

    type: str = "io.nats.micro.v1.stats_response"
    name: str
    id: str
    version: str
    started: str
    metadata: dict[str, str] = msgspec.field(default_factory=dict)
    endpoints: list[MicroEndpointStats] = msgspec.field(default_factory=list)


class MicroPing(msgspec.Struct, kw_only=True):
    """`nats micro ls`, `nats micro ping`: one answer per running instance."""

    type: str = "io.nats.micro.v1.ping_response"
    name: str
    id: str
    version: str
    metadata: dict[str, str] = msgspec.field(default_factory=dict)


OPPORTUNITY_ID, AGENT_ID = "{opportunityId}", "{agentId}"
_PLACEHOLDERS = (OPPORTUNITY_ID, AGENT_ID)
_REF = "#/components/schemas/{name}"
_PARAMETERS = {
    "opportunityId": {"description": "The opportunity's id, [A-Za-z0-9_-]{1,128}."},
    "agentId": {
        "description": "The agent's id: its Swarm task ID, or dns-<ip>-<port>. The id "
        "in the subject is the one that counts."
    },
}


def _subject(names: Names, attribute: str, fallback: str) -> str:
    """A name of `Names` with the channel parameters in place of its arguments, or `fallback`
    when Names has no such name or it does not carry every parameter of `fallback`."""
    member = getattr(names, attribute, None)
    if callable(member):
        arity = len(inspect.signature(member).parameters)
        member = member(*_PLACEHOLDERS[:arity]) if arity <= len(_PLACEHOLDERS) else None
    if not isinstance(member, str):
        return fallback
    wanted = [p for p in _PLACEHOLDERS if p in fallback]
    return member if all(p in member for p in wanted) else fallback


def _channels(names: Names) -> dict[str, Any]:
    council = f"{names.prefix}.council"
    spec: dict[str, tuple[str, str, tuple[type[msgspec.Struct], ...]]] = {
        "announce": (
            names.announce,
            "One message per change of the agents bucket, after the "
            "write; for `left`, the agent's last record.",
            (Announcement,),
        ),
        "broadcast": (
            names.broadcast,
            "Requests of coordinators: an opportunity to send to "
            "every agent. The NATS micro service chorus-bridge, endpoint broadcast, "
            "queue group chorus-bridge: the leader answers.",
            (CouncilOpportunity,),
        ),
        "broadcastReply": (
            "",
            "The reply to a broadcast request, on the requester's inbox: the "
            "report, or the error that refused it (with the headers "
            "Nats-Service-Error and Nats-Service-Error-Code).",
            (BroadcastReport, ErrorReply),
        ),
        "opportunities": (
            names.opportunities,
            "Opportunities sent to the agents on the bus.",
            (CouncilOpportunity,),
        ),
        "acks": (
            _subject(names, "acks", f"{council}.{OPPORTUNITY_ID}.acks.{AGENT_ID}"),
            "An agent on the bus acks an opportunity on its own subject.",
            (Ack,),
        ),
        "claims": (
            _subject(names, "claims", f"{council}.{OPPORTUNITY_ID}.claims.{AGENT_ID}"),
            "An agent claims a role on its own subject; the bridge republishes here the "
            "claims of agents' HTTP answers, under the answering agent's id.",
            (Claim,),
        ),
        "agentsBucket": (
            f"$KV.{names.agents_bucket}.{AGENT_ID}",
            f"JetStream KV bucket `{names.agents_bucket}`, key: the agent id; value: the agent.",
            (Agent,),
        ),
        "presenceBucket": (
            f"$KV.{names.presence_bucket}.{AGENT_ID}",
            "JetStream KV bucket "
            f"`{names.presence_bucket}` (15 s TTL, limit markers): agents on "
            "the bus, under their own id, refreshed at least every 5 s.",
            (PresenceEntry,),
        ),
        "leaderBucket": (
            f"$KV.{names.leader_bucket}.leader",
            "JetStream KV bucket "
            f"`{names.leader_bucket}`, key `leader`: the lease of the bridge "
            "that leads.",
            (Lease,),
        ),
    }
    for verb, model in (("PING", MicroPing), ("INFO", MicroInfo), ("STATS", MicroStats)):
        spec[f"micro{verb.title()}"] = (
            f"$SRV.{verb}.{SERVICE_NAME}",
            f"NATS micro discovery ({verb}) of the service "
            f"{SERVICE_NAME}; the request is empty, the leader answers on the requester's "
            "inbox.",
            (model,),
        )
    channels: dict[str, Any] = {}
    for channel_id, (address, description, models) in spec.items():
        channel: dict[str, Any] = {
            "address": address or None,
            "description": description,
            "messages": {
                m.__name__: {"$ref": f"#/components/messages/{m.__name__}"} for m in models
            },
        }
        parameters = {p: _PARAMETERS[p] for p in _PARAMETERS if f"{{{p}}}" in address}
        if parameters:
            channel["parameters"] = parameters
        channels[channel_id] = channel
    return channels


# (operation id, action of the bridge, channel, summary)
_OPERATIONS = (
    ("announceChange", "send", "announce", "Announce a join, an update or a leave."),
    ("serveBroadcast", "receive", "broadcast", "Take a coordinator's broadcast request."),
    ("sendOpportunity", "send", "opportunities", "Send an opportunity to the agents on the bus."),
    ("receiveAck", "receive", "acks", "Count an agent's ack."),
    ("receiveClaim", "receive", "claims", "Take an agent's claim."),
    ("republishClaim", "send", "claims", "Republish the claim of an agent's HTTP answer."),
    ("writeAgent", "send", "agentsBucket", "Put (or delete) an agent in the agents bucket."),
    ("watchPresence", "receive", "presenceBucket", "Follow the agents on the bus."),
    ("holdLease", "send", "leaderBucket", "Take and renew the leader lease."),
    ("answerMicroPing", "send", "microPing", "Answer a micro PING while leading."),
    ("answerMicroInfo", "send", "microInfo", "Answer a micro INFO while leading."),
    ("answerMicroStats", "send", "microStats", "Answer a micro STATS while leading."),
)


def _operations(channels: dict[str, Any]) -> dict[str, Any]:
    operations: dict[str, Any] = {}
    for op_id, action, channel_id, summary in _OPERATIONS:
        operation: dict[str, Any] = {
            "action": action,
            "summary": summary,
            "channel": {"$ref": f"#/channels/{channel_id}"},
            "messages": [
                {"$ref": f"#/channels/{channel_id}/messages/{name}"}
                for name in channels[channel_id]["messages"]
            ],
        }
        if op_id == "serveBroadcast":
            operation["reply"] = {
                "channel": {"$ref": "#/channels/broadcastReply"},
                "messages": [
                    {"$ref": f"#/channels/broadcastReply/messages/{name}"}
                    for name in channels["broadcastReply"]["messages"]
                ],
            }
        operations[op_id] = operation
    return operations


_MODELS: tuple[type[msgspec.Struct], ...] = (
    Agent,
    Announcement,
    PresenceEntry,
    CouncilOpportunity,
    Ack,
    Claim,
    BroadcastReport,
    ErrorReply,
    Lease,
    MicroPing,
    MicroInfo,
    MicroStats,
)


def _components() -> dict[str, Any]:
    _, schemas = msgspec.json.schema_components(_MODELS, ref_template=_REF)
    _ecmascript_patterns(schemas)
    messages = {
        m.__name__: {
            "name": m.__name__,
            "title": m.__name__,
            "summary": (inspect.getdoc(m) or m.__name__).splitlines()[0],
            "contentType": "application/json",
            "payload": {"$ref": _REF.format(name=m.__name__)},
        }
        for m in _MODELS
    }
    return {"schemas": schemas, "messages": messages}


def _ecmascript_patterns(schema: Any) -> None:
    """JSON Schema patterns are ECMAScript's, where `$` is the end of the string (Python's
    `$` also matches before a final newline, so the models end theirs in `\\Z`, which
    ECMAScript has not)."""
    if isinstance(schema, dict):
        pattern = schema.get("pattern")
        if isinstance(pattern, str) and pattern.endswith("\\Z"):
            schema["pattern"] = pattern[:-2] + "$"
        for value in schema.values():
            _ecmascript_patterns(value)
    elif isinstance(schema, list):
        for value in schema:
            _ecmascript_patterns(value)


def asyncapi_document(names: Names) -> dict[str, Any]:
    """The AsyncAPI 3.0 document of the deployment named by `names`, as plain data."""
    channels = _channels(names)
    return {
        "asyncapi": "3.0.0",
        "info": {
            "title": "chorus-bridge",
            "version": __version__,
            "description": "Every replica of a Docker Swarm service of agents, on a NATS "
            "bus: the agents bucket, announcements, presence, council "
            "opportunities, acks, claims and broadcast reports "
            '(DESIGN.md, "The bus").',
        },
        "defaultContentType": "application/json",
        "servers": {
            "nats": {
                "host": "localhost:4222",
                "protocol": "nats",
                "description": "NATS with JetStream (NATS_URL).",
            }
        },
        "channels": channels,
        "operations": _operations(channels),
        "components": _components(),
    }


def asyncapi_yaml(names: Names) -> str:
    """The document as YAML text (what docs/asyncapi.yaml holds for the default names)."""
    return msgspec.yaml.encode(asyncapi_document(names)).decode()
