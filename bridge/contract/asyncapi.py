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
from bridge.contract.asyncapi_channels import AGENT_MESSAGE, ROSTER, channels_of, operations_of
from bridge.contract.messages import (
    Ack,
    Agent,
    Announcement,
    BroadcastReport,
    Claim,
    ClaimAnswer,
    CouncilEvent,
    CouncilOpportunity,
    CouncilRecord,
    CouncilRequest,
    CouncilState,
    ErrorReply,
    Holder,
    Lease,
    PresenceEntry,
    Seat,
)
from bridge.contract.micro_answers import MicroInfo, MicroPing, MicroStats
from bridge.contract.names import Names
from bridge.contract.roster import Peer, RosterRequest

__all__ = ["asyncapi_document", "asyncapi_yaml"]


_REF = "#/components/schemas/{name}"
_MODELS: tuple[type[msgspec.Struct], ...] = (
    Agent,
    Announcement,
    PresenceEntry,
    CouncilOpportunity,
    Ack,
    Claim,
    ClaimAnswer,
    BroadcastReport,
    ErrorReply,
    Lease,
    CouncilRecord,
    Holder,
    Seat,
    CouncilRequest,
    CouncilState,
    CouncilEvent,
    MicroPing,
    MicroInfo,
    MicroStats,
    Peer,
    RosterRequest,
)
# Messages whose payload is no model of their own: (summary, payload schema).
_OTHER_MESSAGES = {
    ROSTER: (
        "A page of the roster: the agents, sorted by id, without endpoints or addresses.",
        {"type": "array", "items": {"$ref": _REF.format(name="Peer")}},
    ),
    AGENT_MESSAGE: (
        "A message between agents: whatever the sender wrote, at most the server's max "
        "payload; the sender is the subject's last token.",
        {},
    ),
}


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
    for name, (summary, payload) in _OTHER_MESSAGES.items():
        messages[name] = {"name": name, "title": name, "summary": summary, "payload": payload}
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
    channels = channels_of(names)
    return {
        "asyncapi": "3.0.0",
        "info": {
            "title": "chorus-bridge",
            "version": __version__,
            "description": "Every replica of a Docker Swarm service of agents, on a NATS "
            "bus: the agents bucket, announcements, presence, council "
            "opportunities, acks, claims and broadcast reports, and the councils they form "
            '(DESIGN.md, "The bus" and "Councils").',
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
        "operations": operations_of(channels),
        "components": _components(),
    }


def asyncapi_yaml(names: Names) -> str:
    """The document as YAML text (what docs/asyncapi.yaml holds for the default names)."""
    return msgspec.yaml.encode(asyncapi_document(names)).decode()
