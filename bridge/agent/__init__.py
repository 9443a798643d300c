"""The agent library: how a CHORUS agent joins the bus, receives council opportunities, acks
and claims roles, finds its peers and messages them (DESIGN.md, "The bus", "Councils", "Agents
on the bus"). It needs nats-py and msgspec, and of this package only `bridge.contract`
(docs/agents.md says how it installs without the bridge's other dependencies).

    from bridge.agent import connect_agent, run

    async def main() -> None:
        async with connect_agent("nats://nats:4222", agent_id=os.environ["TASK_ID"],
                                 user="agent", password=os.environ["AGENT_PASS"]) as agent:
            async for opportunity in agent.opportunities():
                await agent.ack(opportunity.id)
                answer = await agent.claim(opportunity.id, "tpm")  # granted, or why not

    run(main)  # SIGTERM, SIGINT: the agent leaves the bus, exit status 0

While the context is open the agent keeps its presence entry (key: its agent id, which for a
Swarm task is its task ID, `{{.Task.ID}}`), rewritten every 5 s and at once after a
reconnection; leaving deletes it, so the bridge sees the agent go at once. Its connection's
inbox prefix is `_INBOX.<agent id>` and its name is the agent id (what the auth callout
admits). Errors are AgentErrors (bridge/agent/errors.py); nats-py's never escape.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Sequence

from bridge.agent.agent import REQUEST_TIMEOUT, BusAgent
from bridge.agent.connection import Credentials, Events, open_connection
from bridge.agent.errors import (
    AgentError,
    AgentPermissionError,
    BadAnswerError,
    ClosedError,
    ConnectError,
    InvalidArgumentError,
    NoAnswerError,
    ReplyRefusedError,
)
from bridge.agent.peer_message import PeerMessage, Reply
from bridge.agent.run import run
from bridge.agent.streams import QUEUE_LIMIT
from bridge.agent.wire import (
    AGENT_INBOX_PREFIX,
    LEAVE_HEADERS,
    PRESENCE_INTERVAL,
    ack_message,
    claim_message,
    inbox_prefix,
    is_reply_for,
    presence_subject,
)
from bridge.contract.agent_id import check_agent_id
from bridge.contract.messages import Announcement, ClaimAnswer, CouncilOpportunity
from bridge.contract.roster import Peer

__all__ = [
    "AGENT_INBOX_PREFIX",
    "LEAVE_HEADERS",
    "PRESENCE_INTERVAL",
    "QUEUE_LIMIT",
    "REQUEST_TIMEOUT",
    "AgentError",
    "AgentPermissionError",
    "Announcement",
    "BadAnswerError",
    "BusAgent",
    "ClaimAnswer",
    "ClosedError",
    "ConnectError",
    "CouncilOpportunity",
    "InvalidArgumentError",
    "NoAnswerError",
    "Peer",
    "PeerMessage",
    "Reply",
    "ReplyRefusedError",
    "ack_message",
    "check_agent_id",
    "claim_message",
    "connect_agent",
    "inbox_prefix",
    "is_reply_for",
    "presence_subject",
    "run",
]


@contextlib.asynccontextmanager
async def connect_agent(
    nats_url: str,
    agent_id: str,
    *,
    prefix: str = "chorus",
    user: str | None = None,
    password: str | None = None,
    token: str | None = None,
    creds: str | None = None,
    tls_ca: str | None = None,
    tls_cert: str | None = None,
    tls_key: str | None = None,
    task_id: str | None = None,
    endpoint: str | None = None,
    roles: Sequence[str] = (),
    presence_interval: float = PRESENCE_INTERVAL,
    request_timeout: float = REQUEST_TIMEOUT,
) -> AsyncIterator[BusAgent]:
    """Connect to NATS (`nats_url`, comma-separated for a cluster; `tls://` with `tls_ca`, the
    CA that signed the server's certificate) and put `agent_id` on the bus until the context
    closes. Reconnects forever once connected. InvalidArgumentError for a bad agent id or
    presence; ConnectError when NATS cannot be reached."""
    try:
        check_agent_id(agent_id)
    except ValueError as exc:
        raise InvalidArgumentError(str(exc)) from None
    credentials = Credentials(
        user=user,
        password=password,
        token=token,
        creds=creds,
        tls_ca=tls_ca,
        tls_cert=tls_cert,
        tls_key=tls_key,
    )
    events = Events(agent_id)
    inbox = inbox_prefix(agent_id)
    async with (
        open_connection(nats_url, agent_id, credentials, events, inbox=inbox) as nc,
        BusAgent(
            nc,
            agent_id,
            events,
            prefix=prefix,
            task_id=task_id,
            endpoint=endpoint,
            roles=roles,
            presence_interval=presence_interval,
            request_timeout=request_timeout,
        ) as agent,
    ):
        yield agent
