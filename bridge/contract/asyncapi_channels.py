"""The channels and operations of the AsyncAPI document (bridge/contract/asyncapi.py): every
subject and bucket key of the contract, with the messages that travel there, named by `Names`."""

from __future__ import annotations

import inspect
from typing import Any

import msgspec

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
from bridge.contract.names import SERVICE_NAME, Names
from bridge.contract.roster import ROSTER_NEXT_HEADER, RosterRequest

__all__ = ["AGENT_MESSAGE", "ROSTER", "channels_of", "operations_of"]


OPPORTUNITY_ID, AGENT_ID, ROLE = "{opportunityId}", "{agentId}", "{role}"
_PLACEHOLDERS = (OPPORTUNITY_ID, AGENT_ID)
RECIPIENT = "{recipient}"
# Messages without a model of their own (asyncapi.py writes their payload schemas).
ROSTER, AGENT_MESSAGE = "Roster", "AgentMessage"
Model = type[msgspec.Struct] | str
_PARAMETERS = {
    "opportunityId": {"description": "The opportunity's id, [A-Za-z0-9_-]{1,128}."},
    "agentId": {
        "description": "The agent's id: its Swarm task ID, or dns-<ip>-<port>. The id "
        "in the subject is the one that counts."
    },
    "role": {"description": "A role's name, [A-Za-z0-9_-]{1,64}."},
    "recipient": {"description": "The id of the agent a message is for."},
    "rest": {"description": "The rest of the asking agent's reply subject, after its inbox."},
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


def _name(model: Model) -> str:
    return model if isinstance(model, str) else model.__name__


def channels_of(names: Names) -> dict[str, Any]:
    council = f"{names.prefix}.council"
    spec: dict[str, tuple[str, str, tuple[Model, ...]]] = {
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
            "An agent claims a role on its own subject, as a request to have the answer "
            "(on the claiming agent's own inbox only: `_INBOX.<agent id>.…`). The bridge "
            "republishes here the "
            "claims of agents' HTTP answers, under the answering agent's id, with the "
            "header `Chorus-Via: http` (decided already; not taken again).",
            (Claim,),
        ),
        "claimAnswer": (
            "",
            "The answer to a claim sent as a request, on the claiming agent's inbox only.",
            (ClaimAnswer,),
        ),
        "roster": (
            names.roster,
            "Requests for the roster (the NATS micro service chorus-bridge, endpoint agents, "
            "queue group chorus-bridge: the leader answers). Empty for the first page, or "
            '`{"after": "<agent id>"}` for the page after it.',
            (RosterRequest,),
        ),
        "rosterReply": (
            "",
            "A page of the roster, sorted by id, without endpoints or addresses; the header "
            f"`{ROSTER_NEXT_HEADER}` names the id to ask `after` when more pages follow.",
            (ROSTER, ErrorReply),
        ),
        "rosterFromAgents": (
            names.roster_from_agents,
            "Agents' roster requests as they reach the bridge's account (nats.conf imports "
            f"the agents' `{names.roster}` here, apart from coordinators'). Answered on "
            "the asking agent's own inbox only.",
            (RosterRequest,),
        ),
        "agentAnswers": (
            f"{names.prefix}.bridge.answers.{AGENT_ID}.{{rest}}",
            "The bridge's answers to an agent's requests (a claim, the roster): nats.conf "
            "delivers them into the agents' account as `_INBOX.<agent id>.<rest>` only, "
            "never on any other subject the request named.",
            (ClaimAnswer, ROSTER),
        ),
        "agentMessages": (
            names.messages(RECIPIENT, AGENT_ID),
            "Messages among agents, published or sent as requests by the agent the last "
            "token names (the server enforces it in the callout mode); the recipient "
            "subscribes to its own. A reply goes to the sender's inbox "
            "`_INBOX.<sender>.<recipient>.…`. The bridge neither sends nor reads them.",
            (AGENT_MESSAGE,),
        ),
        "council": (
            names.council,
            "Requests for a council's state. The NATS micro service chorus-bridge, endpoint "
            "council, queue group chorus-bridge: the leader answers.",
            (CouncilRequest,),
        ),
        "councilReply": (
            "",
            "The reply to a council request: its state, or the error (404: no such "
            "council; 400: not a request).",
            (CouncilState, ErrorReply),
        ),
        "councilEvents": (
            _subject(names, "council_events", f"{council}.{OPPORTUNITY_ID}.events"),
            "One message per change of a council, in order: granted, released, "
            "activated (every core role held), degraded, expired.",
            (CouncilEvent,),
        ),
        "councilsBucket": (
            f"$KV.{names.councils_bucket}.{OPPORTUNITY_ID}",
            f"JetStream KV bucket `{names.councils_bucket}`, key: the opportunity id; value: "
            "the opportunity as recorded before its broadcast, with its council's state.",
            (CouncilRecord,),
        ),
        "holdersBucket": (
            f"$KV.{names.councils_bucket}.{OPPORTUNITY_ID}.{ROLE}",
            f"`{names.councils_bucket}`, key `<opportunity id>.<role>`: the role's holder, "
            "created with a write that expects no previous value.",
            (Holder,),
        ),
        "seatsBucket": (
            f"$KV.{names.councils_bucket}.{OPPORTUNITY_ID}.agents.{AGENT_ID}",
            f"`{names.councils_bucket}`, key `<opportunity id>.agents.<agent id>`: the one "
            "role an agent holds in a council, written before its Holder.",
            (Seat,),
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
            "messages": {_name(m): {"$ref": f"#/components/messages/{_name(m)}"} for m in models},
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
    ("serveRoster", "receive", "roster", "Answer a coordinator's request for the roster."),
    ("serveAgentsRoster", "receive", "rosterFromAgents", "Take an agent's roster request."),
    ("answerAgent", "send", "agentAnswers", "Answer an agent's claim or roster request."),
    ("serveCouncil", "receive", "council", "Answer a request for a council's state."),
    ("publishCouncilEvent", "send", "councilEvents", "Announce a change of a council."),
    ("writeCouncil", "send", "councilsBucket", "Record an opportunity before its broadcast."),
    ("writeHolder", "send", "holdersBucket", "Grant (create) or release (delete) a role."),
    ("writeSeat", "send", "seatsBucket", "Seat an agent in a council, before its Holder."),
    ("writeAgent", "send", "agentsBucket", "Put (or delete) an agent in the agents bucket."),
    ("watchPresence", "receive", "presenceBucket", "Follow the agents on the bus."),
    ("holdLease", "send", "leaderBucket", "Take and renew the leader lease."),
    ("answerMicroPing", "send", "microPing", "Answer a micro PING while leading."),
    ("answerMicroInfo", "send", "microInfo", "Answer a micro INFO while leading."),
    ("answerMicroStats", "send", "microStats", "Answer a micro STATS while leading."),
)


# Operations answered on the requester's inbox, and the channel of the answer.
_REPLIES = {
    "serveBroadcast": "broadcastReply",
    "receiveClaim": "claimAnswer",
    "serveCouncil": "councilReply",
    "serveRoster": "rosterReply",
}


def operations_of(channels: dict[str, Any]) -> dict[str, Any]:
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
        reply = _REPLIES.get(op_id)
        if reply is not None:
            operation["reply"] = {
                "channel": {"$ref": f"#/channels/{reply}"},
                "messages": [
                    {"$ref": f"#/channels/{reply}/messages/{name}"}
                    for name in channels[reply]["messages"]
                ],
            }
        operations[op_id] = operation
    return operations
