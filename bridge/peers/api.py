"""The roster on request (DESIGN.md, "Agents on the bus"): the endpoint `agents` of the micro
service chorus-bridge on `<prefix>.bridge.agents`, for coordinators, and agents' requests.

Agents' requests arrive apart, on `<prefix>.bridge.agents.from_agents` (nats.conf imports them
there from the agents' account), and are answered only through `Names.answer_subject`: on the
asking agent's inbox, `_INBOX.<agent id>.<rest>`, never on the reply subject they name
(docs/trust-design.md). Where everything is one account (no nats.conf) agents' requests reach
the endpoint itself, whose answer goes to the reply subject in that same account.

Both answer a page of the roster (bridge/contract/roster.py): a body that is empty or
`{"after": "<id>"}`, a JSON list of Peers, and `Chorus-Roster-Next` while more follow. A request
that is not one gets `{"error", "field"}` (code 400 on the endpoint; agents get the same body).
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator

import msgspec
import nats.errors
import structlog
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg

from bridge.contract.agent_id import is_agent_id
from bridge.contract.messages import ErrorReply, encode
from bridge.contract.names import Names
from bridge.contract.roster import (
    MAX_ROSTER_REQUEST_BYTES,
    ROSTER_NEXT_HEADER,
    ROSTER_REQUEST_DECODER,
    RosterRequest,
)
from bridge.edges.micro import QUEUE_GROUP, Endpoint, Request
from bridge.peers.roster import RosterView

__all__ = ["ENDPOINT_NAME", "AgentsEndpoint"]

log = structlog.get_logger(__name__)

ENDPOINT_NAME = "agents"
# Agents' requests waiting for an answer, at most (each answer is up to a max payload): past
# this nats-py drops them, and their askers time out and ask again.
PENDING_LIMIT = 1024


def _read(data: bytes) -> RosterRequest | ErrorReply:
    if len(data) > MAX_ROSTER_REQUEST_BYTES:
        return ErrorReply(error=f"request is larger than {MAX_ROSTER_REQUEST_BYTES} bytes")
    if not data.strip():
        return RosterRequest()
    try:
        return ROSTER_REQUEST_DECODER.decode(data)
    except msgspec.DecodeError as exc:
        return ErrorReply(error=f"not a roster request: {exc}", field="$.after")


class AgentsEndpoint:
    """Answers roster requests from the leader's view of the fleet."""

    def __init__(self, nc: NATS, names: Names, roster: RosterView) -> None:
        self._nc = nc
        self._names = names
        self._roster = roster

    def endpoint(self) -> Endpoint:
        return Endpoint(name=ENDPOINT_NAME, subject=self._names.roster, handle=self.handle)

    def answer(self, data: bytes) -> tuple[bytes, dict[str, str] | None, ErrorReply | None]:
        """(body, headers, the refusal or None) of the answer to a request's `data`."""
        request = _read(data)
        if isinstance(request, ErrorReply):
            return encode(request), None, request
        body, after = self._roster.page(request.after, self._nc.max_payload)
        return body, ({ROSTER_NEXT_HEADER: after} if after is not None else None), None

    async def handle(self, request: Request) -> None:
        """A coordinator's request (or an agent's, where everything is one account)."""
        body, headers, refusal = self.answer(request.data)
        if refusal is not None:
            await request.respond_error("400", refusal.error, body)
            return
        await request.respond(body, headers=headers)

    @contextlib.asynccontextmanager
    async def answering_agents(self) -> AsyncIterator[None]:
        """Agents' requests are answered while the context is open (the leader's term), in the
        replicas' queue group. Raises nats-py's errors when it cannot subscribe."""
        sub = await self._nc.subscribe(
            self._names.roster_from_agents,
            queue=QUEUE_GROUP,
            cb=self._from_agent,
            pending_msgs_limit=PENDING_LIMIT,
        )
        try:
            yield
        finally:
            with contextlib.suppress(nats.errors.Error, OSError):
                await sub.unsubscribe()

    async def _from_agent(self, msg: Msg) -> None:
        # The agent is the one whose inbox the reply names: the answer can reach no one else.
        tokens = msg.reply.split(".", 2) if msg.reply else []
        asker = tokens[1] if len(tokens) == 3 and is_agent_id(tokens[1]) else None
        route = self._names.answer_subject(asker, msg.reply) if asker is not None else None
        if route is None:
            log.debug("roster_answer_withheld", reply=(msg.reply or "")[:200])
            return
        try:
            body, headers, _refusal = self.answer(msg.data)
            await self._nc.publish(route, body, headers=headers)
        except (nats.errors.Error, OSError) as exc:
            log.warning("roster_answer_failed", error=repr(exc))
        except Exception:  # a bug must cost this request, never the bridge
            log.exception("roster_request_failed")
