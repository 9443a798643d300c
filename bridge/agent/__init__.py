"""The agent library: how a CHORUS agent joins the bus, receives council opportunities, acks
and claims roles (DESIGN.md, "The bus").

    from bridge.agent import connect_agent

    async with connect_agent("nats://nats:4222", agent_id=os.environ["TASK_ID"],
                             user="agent", password=os.environ["AGENT_PASS"]) as agent:
        async for opportunity in agent.opportunities():
            await agent.ack(opportunity.id)
            if any(role.name == "tpm" for role in opportunity.roles):
                answer = await agent.claim(opportunity.id, "tpm")  # granted, or why not

While the context is open the agent keeps its presence entry (key: its agent id, which for a
Swarm task is its task ID, `{{.Task.ID}}`) in the presence bucket, rewritten every 5 s; the
bucket's 15 s TTL removes it if the agent dies. Leaving the context deletes the entry, so the
bridge sees the agent go at once. Presence is a plain publish on the key's subject, answered by
no one (agents have no JetStream, and the stream their writes land in acknowledges nothing:
DESIGN.md, "Trust"): an agent sees itself on the bus in its `updated` announcement. The
connection's inbox prefix is `_INBOX.<agent id>`, the only one the auth callout lets an agent
read. Acks and claims go to the agent's own
subjects, `<prefix>.council.<opportunity id>.acks.<agent id>` and `....claims.<agent id>`:
the bridge counts an ack for the agent its subject names, and with the NATS auth callout on,
those are the only ack and claim subjects the agent may publish to.

The message helpers (`ack_message`, `claim_message`, `presence_subject`) are public too, for
programs that speak for many agents over one connection (the simulated fleet does).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Sequence
from types import TracebackType
from typing import Self

import msgspec
import nats.errors
import structlog
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg

from bridge.config import Settings
from bridge.contract.agent_id import check_agent_id
from bridge.contract.buckets import PRESENCE_INTERVAL
from bridge.contract.kv_wire import delete_headers, key_subject
from bridge.contract.messages import (
    CLAIM_ANSWER_DECODER,
    OPPORTUNITY_DECODER,
    Ack,
    Claim,
    ClaimAnswer,
    CouncilOpportunity,
    PresenceEntry,
    encode,
    now_rfc3339,
)
from bridge.contract.names import Names
from bridge.edges.nats_client import connect
from bridge.errors import NatsError
from bridge.waits import cancel_and_wait, raise_if_cancelled

__all__ = [
    "AGENT_INBOX_PREFIX",
    "LEAVE_HEADERS",
    "PRESENCE_INTERVAL",
    "BusAgent",
    "ack_message",
    "check_agent_id",
    "claim_message",
    "connect_agent",
    "presence_subject",
]

log = structlog.get_logger(__name__)

# The inbox prefix of a connection that speaks for many agents (the simulated fleet), which
# only the shared `agent` user of the open mode may read; one agent's is `_INBOX.<its id>`.
AGENT_INBOX_PREFIX = "_INBOX.agent"
# A leave: a KV delete, which watchers see as DEL. Not a purge: that is a rollup, which the
# stream agents' writes land in refuses (docs/trust-design.md).
LEAVE_HEADERS = delete_headers()
# Opportunities received and not yet taken by `opportunities()`; past this, the oldest go.
QUEUE_LIMIT = 1024
# Seconds a presence write may take to reach the server.
WRITE_TIMEOUT = 5
# Seconds a claim waits for the bridge's answer.
CLAIM_TIMEOUT = 5.0


def ack_message(names: Names, opportunity_id: str, agent_id: str) -> tuple[str, bytes]:
    """(subject, body) of `agent_id`'s ack of an opportunity."""
    body = encode(Ack(agent_id=agent_id, opportunity_id=opportunity_id))
    return names.acks(opportunity_id, agent_id), body


def claim_message(names: Names, opportunity_id: str, agent_id: str, role: str) -> tuple[str, bytes]:
    """(subject, body) of `agent_id`'s claim of `role`."""
    return names.claims(opportunity_id, agent_id), encode(Claim(role=role, agent_id=agent_id))


def presence_subject(names: Names, agent_id: str) -> str:
    """The subject a presence entry is written on: the key `agent_id` of the presence bucket."""
    return key_subject(names.presence_bucket, agent_id)


class BusAgent:
    """One agent on the bus over a connection it is given (`connect_agent` makes one).

    `endpoint` and `task_id` are written into the presence entry as information for operators;
    the bridge matches the entry by its key (`agent_id`) only. Entering writes the presence
    entry (NatsError if it does not reach the server) and subscribes to opportunities; leaving
    deletes the entry.
    """

    def __init__(
        self,
        nc: NATS,
        agent_id: str,
        *,
        prefix: str = "chorus",
        task_id: str | None = None,
        endpoint: str | None = None,
        roles: Sequence[str] = (),
        presence_interval: float = PRESENCE_INTERVAL,
    ) -> None:
        self.id = check_agent_id(agent_id)
        self.names = Names(prefix=prefix, agents_bucket=f"{prefix}_agents")
        self._nc = nc
        self._task_id, self._endpoint, self._roles = task_id, endpoint, list(roles)
        self._interval = presence_interval
        self._queue: asyncio.Queue[CouncilOpportunity | None] = asyncio.Queue(QUEUE_LIMIT)
        self._stack = contextlib.AsyncExitStack()
        self._healthy = True

    async def __aenter__(self) -> Self:
        try:
            await self.write_presence()
            self._stack.push_async_callback(self._leave)
            sub = await self._nc.subscribe(self.names.opportunities, cb=self._received)
            self._stack.push_async_callback(sub.unsubscribe)
            refresher = asyncio.create_task(self._refresh(), name=f"presence-{self.id}")
            self._stack.push_async_callback(cancel_and_wait, refresher)
        except BaseException:
            await self._stack.aclose()
            raise
        log.info("agent_joined_bus", agent_id=self.id, bucket=self.names.presence_bucket)
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self._stack.aclose()
        self._enqueue(None)  # ends opportunities()
        log.info("agent_left_bus", agent_id=self.id)

    async def opportunities(self) -> AsyncIterator[CouncilOpportunity]:
        """Opportunities as they arrive, until the agent leaves. A message that is not a
        valid opportunity is skipped."""
        while (opportunity := await self._queue.get()) is not None:
            yield opportunity

    async def ack(self, opportunity_id: str) -> None:
        """Tell the bridge this agent received the opportunity (within BRIDGE_BUS_ACK_WAIT,
        1 s by default, or it is also sent by HTTP)."""
        await self._publish(*ack_message(self.names, opportunity_id, self.id))

    async def claim(
        self, opportunity_id: str, role: str, *, timeout: float = CLAIM_TIMEOUT
    ) -> ClaimAnswer:
        """Claim `role` of the opportunity's council, as this agent, and return the bridge's
        answer: `granted`, or refused with its `reason` and the role's `holder` (DESIGN.md,
        "Councils"). The answer comes on this agent's inbox. NatsError when none comes
        within `timeout` seconds (no bridge running, NATS unreachable) or it is no answer."""
        subject, body = claim_message(self.names, opportunity_id, self.id, role)
        try:
            msg = await self._nc.request(subject, body, timeout=timeout)
        except nats.errors.NoRespondersError:
            raise NatsError(
                f"nobody answers the claim on {subject}: is the bridge running?"
            ) from None
        except (nats.errors.Error, OSError) as exc:
            raise NatsError(f"no answer to the claim on {subject}: {exc!r}") from exc
        try:
            return CLAIM_ANSWER_DECODER.decode(msg.data)
        except msgspec.DecodeError as exc:
            raise NatsError(
                f"the answer to the claim on {subject} is no claim answer: {msg.data[:200]!r}"
            ) from exc

    async def write_presence(self) -> None:
        """Write the presence entry now (NatsError if it does not reach the server within
        5 s). Done every `presence_interval` seconds while on the bus."""
        entry = PresenceEntry(
            agent_id=self.id,
            task_id=self._task_id,
            endpoint=self._endpoint,
            roles=self._roles,
            at=now_rfc3339(),
        )
        try:
            await self._nc.publish(presence_subject(self.names, self.id), encode(entry))
            await self._nc.flush(timeout=WRITE_TIMEOUT)
        except (nats.errors.Error, OSError) as exc:
            raise NatsError(
                f"cannot write the presence of agent {self.id!r} in "
                f"{self.names.presence_bucket!r}: {exc!r}; check that NATS is reachable"
            ) from exc

    async def _publish(self, subject: str, body: bytes) -> None:
        try:
            await self._nc.publish(subject, body)
        except (nats.errors.Error, OSError) as exc:
            raise NatsError(f"cannot publish on {subject}: {exc!r}") from exc

    async def _received(self, msg: Msg) -> None:
        try:
            opportunity = OPPORTUNITY_DECODER.decode(msg.data)
        except msgspec.DecodeError:
            log.debug("agent_opportunity_invalid", agent_id=self.id)
            return
        self._enqueue(opportunity)

    def _enqueue(self, item: CouncilOpportunity | None) -> None:
        if self._queue.full():  # a slow reader loses the oldest, not the newest
            self._queue.get_nowait()
            log.warning("agent_opportunity_dropped", agent_id=self.id, limit=QUEUE_LIMIT)
        self._queue.put_nowait(item)

    async def _refresh(self) -> None:
        while True:
            raise_if_cancelled()  # a leave that the write's NATS call swallowed (bridge/waits.py)
            await asyncio.sleep(self._interval)
            try:
                await self.write_presence()
            except NatsError as exc:
                self._set_healthy(False, str(exc))  # tried again at the next tick
            else:
                self._set_healthy(True)

    def _set_healthy(self, healthy: bool, error: str = "") -> None:
        if healthy == self._healthy:
            return
        self._healthy = healthy
        if healthy:
            log.info("agent_presence_recovered", agent_id=self.id)
        else:
            log.warning("agent_presence_failing", agent_id=self.id, error=error)

    async def _leave(self) -> None:
        if not self._nc.is_connected:
            return  # the entry expires on its own (15 s)
        try:
            subject = presence_subject(self.names, self.id)
            await self._nc.publish(subject, b"", headers=dict(LEAVE_HEADERS))
            await self._nc.flush(timeout=WRITE_TIMEOUT)
        except (nats.errors.Error, OSError) as exc:
            log.warning("agent_presence_not_deleted", agent_id=self.id, error=repr(exc))


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
    inbox_prefix: str | None = None,
) -> AsyncIterator[BusAgent]:
    """Connect to NATS (`nats_url`, comma-separated for a cluster; reconnects forever once
    connected) and put `agent_id` on the bus until the context closes. NatsError if NATS
    cannot be reached or the presence entry cannot be written. `inbox_prefix` None: the
    agent's own, `_INBOX.<agent id>`.

    TLS (the stack's): `tls_ca` is the path of the CA that signed the server's certificate
    (NATS_TLS_CA); the server must then speak TLS and its certificate verify, or NatsError
    says so at once. `tls_cert` and `tls_key`: a client certificate, where the server asks
    for one (NATS_TLS_CERT, NATS_TLS_KEY)."""
    auth = Settings(
        nats_user=user,
        nats_password=password,
        nats_token=token,
        nats_creds=creds,
        nats_tls_ca=tls_ca,
        nats_tls_cert=tls_cert,
        nats_tls_key=tls_key,
    )
    inbox = inbox_prefix or Names.agent_inbox(check_agent_id(agent_id))
    async with (
        connect(auth, nats_url, name=f"chorus-agent-{agent_id}", inbox_prefix=inbox) as nc,
        BusAgent(
            nc,
            agent_id,
            prefix=prefix,
            task_id=task_id,
            endpoint=endpoint,
            roles=roles,
            presence_interval=presence_interval,
        ) as agent,
    ):
        yield agent
