"""One agent on the bus (DESIGN.md, "The bus", "Councils", "Agents on the bus"): presence,
council opportunities, acks, claims with the council's answer, peers and the fleet's changes,
messages between agents, and a clean leave."""

from __future__ import annotations

import asyncio
import contextlib
import signal
from collections.abc import AsyncIterator, Sequence
from types import TracebackType
from typing import Self

import msgspec
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg

from bridge.agent.connection import Events
from bridge.agent.errors import BadAnswerError, InvalidArgumentError, NoAnswerError
from bridge.agent.inbox import Inbox, publish
from bridge.agent.logs import DEBUG, INFO, say
from bridge.agent.peer_message import PeerMessage, Reply
from bridge.agent.presence import PresenceWriter
from bridge.agent.streams import Stream
from bridge.agent.wire import ack_message, claim_message, names_for
from bridge.contract.agent_id import check_agent_id, is_agent_id
from bridge.contract.messages import (
    ANNOUNCEMENT_DECODER,
    CLAIM_ANSWER_DECODER,
    ERROR_DECODER,
    OPPORTUNITY_DECODER,
    Announcement,
    ClaimAnswer,
    CouncilOpportunity,
    encode,
)
from bridge.contract.roster import PEERS_DECODER, ROSTER_NEXT_HEADER, Peer, RosterRequest

__all__ = ["REQUEST_TIMEOUT", "BusAgent"]


# Seconds a claim, the roster or a peer's answer is waited for, unless told otherwise.
REQUEST_TIMEOUT = 5.0
# Pages of the roster asked for at most (10,000 agents are 2): a bridge that keeps answering
# "more" is not followed for good.
MAX_ROSTER_PAGES = 1000


class BusAgent:
    """One agent on the bus over a connection it is given (`connect_agent` makes both).

    Entering subscribes (opportunities, its messages, its inbox) and writes the presence
    entry; leaving deletes the entry (a DEL) so that the bridge sees it go at once, and ends
    `opportunities()` and `messages()`."""

    def __init__(
        self,
        nc: NATS,
        agent_id: str,
        events: Events,
        *,
        prefix: str = "chorus",
        task_id: str | None = None,
        endpoint: str | None = None,
        roles: Sequence[str] = (),
        presence_interval: float | None = None,
        request_timeout: float = REQUEST_TIMEOUT,
    ) -> None:
        self.id = check_agent_id(agent_id)
        self.names = names_for(prefix)
        self._nc = nc
        self._timeout = request_timeout
        self._presence = PresenceWriter(
            nc,
            self.names,
            self.id,
            events,
            task_id=task_id,
            endpoint=endpoint,
            roles=roles,
            **({"interval": presence_interval} if presence_interval is not None else {}),
        )
        self._inbox = Inbox(nc, self.id)
        self._opportunities: Stream[CouncilOpportunity] = Stream("opportunity", self.id)
        self._messages: Stream[PeerMessage] = Stream("message", self.id)
        self._announcements: set[Stream[Announcement]] = set()
        self._stack = contextlib.AsyncExitStack()

    @property
    def nc(self) -> NATS:
        """The NATS connection (nats-py), for what this library does not do."""
        return self._nc

    async def __aenter__(self) -> Self:
        stack = self._stack
        try:
            await stack.enter_async_context(self._inbox.open())
            for subject, received in (
                (self.names.opportunities, self._opportunity),
                (self.names.messages(self.id, "*"), self._message),
            ):
                sub = await self._nc.subscribe(subject, cb=received)
                stack.push_async_callback(sub.unsubscribe)
            await self._presence.write()  # subscribed first: on the bus means receiving
            stack.push_async_callback(self._presence.delete)
            writer = asyncio.create_task(self._presence.run(), name=f"presence-{self.id}")
            stack.push_async_callback(_cancel, writer)
        except BaseException:
            await stack.aclose()
            raise
        say(INFO, "agent_joined_bus", agent_id=self.id)
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.end_streams()
        with contextlib.suppress(Exception):  # the leave never raises: the TTL is its fallback
            await self._stack.aclose()
        say(INFO, "agent_left_bus", agent_id=self.id)

    def end_streams(self) -> None:
        """End `opportunities()`, `messages()` and the announcements: their loops end."""
        self._opportunities.end()
        self._messages.end()
        for stream in self._announcements:
            stream.end()

    def leave_on_signals(self, signals: Sequence[signal.Signals] = ()) -> None:
        """On SIGTERM or SIGINT (or `signals`), end this agent's streams, so that a program
        whose loop reads `opportunities()` or `messages()` leaves its `async with` and the
        agent leaves the bus (no traceback, exit status 0). For a program that waits on
        anything else, `bridge.agent.run(main)` stops `main` itself."""
        loop = asyncio.get_running_loop()
        for signum in signals or (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, self._on_signal, signum)

    def _on_signal(self, signum: signal.Signals) -> None:
        say(INFO, "agent_leaving_on_signal", agent_id=self.id, signal=signum.name)
        self.end_streams()

    def opportunities(self) -> AsyncIterator[CouncilOpportunity]:
        """Council opportunities as they arrive, until the agent leaves (one reader at a
        time). What is not a valid opportunity is skipped."""
        return self._opportunities

    def messages(self) -> AsyncIterator[PeerMessage]:
        """Messages from peers, until the agent leaves (one reader at a time). The sender is
        the subject's last token; `message.reply()` answers on the sender's inbox only."""
        return self._messages

    @contextlib.asynccontextmanager
    async def announcements(self) -> AsyncIterator[AsyncIterator[Announcement]]:
        """Joins, updates and leaves of the fleet as they happen (`<prefix>.agents.announce`),
        while the context is open: `async with agent.announcements() as changes:
        async for change in changes: ...`. For who is there now, `peers()`."""
        stream: Stream[Announcement] = Stream("announcement", self.id)

        async def received(msg: Msg) -> None:
            with contextlib.suppress(msgspec.DecodeError):
                stream.put(ANNOUNCEMENT_DECODER.decode(msg.data))

        sub = await self._nc.subscribe(self.names.announce, cb=received)
        self._announcements.add(stream)
        try:
            yield stream
        finally:
            self._announcements.discard(stream)
            with contextlib.suppress(Exception):
                await sub.unsubscribe()

    async def ack(self, opportunity_id: str) -> None:
        """Tell the bridge this agent received the opportunity (within BRIDGE_BUS_ACK_WAIT,
        1 s by default, or it is also sent by HTTP). ClosedError after the leave."""
        await publish(self._nc, *ack_message(self.names, opportunity_id, self.id))

    async def claim(
        self, opportunity_id: str, role: str, *, timeout: float | None = None
    ) -> ClaimAnswer:
        """Claim `role` of the opportunity's council, as this agent, and return the council's
        answer: granted, or refused with its `reason` and the role's `holder` (DESIGN.md,
        "Councils"). It comes on this agent's inbox. NoAnswerError when no bridge answers in
        time; BadAnswerError when the answer is no claim answer."""
        subject, body = claim_message(self.names, opportunity_id, self.id, role)
        msg = await self._ask_bridge(subject, body, timeout, "the claim")
        try:
            return CLAIM_ANSWER_DECODER.decode(msg.data)
        except msgspec.DecodeError:
            raise _bad_answer(msg, "the claim") from None

    async def peers(self, *, timeout: float | None = None) -> list[Peer]:
        """The roster (`<prefix>.bridge.agents`): every agent the bridge knows, `{id, on_bus,
        healthy, source, roles}`, no endpoints or addresses; every page of it. Errors as
        `claim`."""
        peers: list[Peer] = []
        after: str | None = None
        for _ in range(MAX_ROSTER_PAGES):
            msg = await self._ask_bridge(
                self.names.roster, encode(RosterRequest(after=after)), timeout, "the roster"
            )
            try:
                peers += PEERS_DECODER.decode(msg.data)
            except msgspec.DecodeError:
                raise _bad_answer(msg, "the roster request") from None
            after = (msg.headers or {}).get(ROSTER_NEXT_HEADER)
            if not after:
                return peers
        raise BadAnswerError(f"the roster did not end within {MAX_ROSTER_PAGES} pages")

    async def send(self, recipient: str, data: bytes | str) -> None:
        """Send `data` to agent `recipient` on `<prefix>.agents.<recipient>.messages.<self>`.
        InvalidArgumentError for a bad recipient id or data over the server's max payload."""
        await publish(self._nc, self._to(recipient), _bytes(data))

    async def request(
        self, recipient: str, data: bytes | str, *, timeout: float | None = None
    ) -> Reply:
        """Send `data` to `recipient` as a request and return its answer, which comes on this
        agent's own inbox, `_INBOX.<self>.<recipient>.<token>` (only that peer may publish
        there). NoAnswerError when it does not listen or answer in time; errors as `send`."""
        msg = await self._inbox.request(
            self._to(recipient), _bytes(data), timeout=timeout or self._timeout, peer=recipient
        )
        return Reply(msg.data)

    async def write_presence(self) -> None:
        """Write the presence entry now (it is rewritten every 5 s anyway)."""
        await self._presence.write()

    def _to(self, recipient: str) -> str:
        if not is_agent_id(recipient):
            raise InvalidArgumentError(
                f"recipient {recipient[:300]!r}: an agent id is 1 to 256 letters, digits, '-' "
                "or '_'"
            )
        return self.names.messages(recipient, self.id)

    async def _ask_bridge(self, subject: str, body: bytes, timeout: float | None, what: str) -> Msg:
        try:
            return await self._inbox.request(subject, body, timeout=timeout or self._timeout)
        except NoAnswerError as exc:
            raise NoAnswerError(
                f"no answer to {what}: {exc}; is the bridge running (and leading)?",
                exc.subject,
                no_responders=exc.no_responders,
            ) from exc

    async def _opportunity(self, msg: Msg) -> None:
        try:
            self._opportunities.put(OPPORTUNITY_DECODER.decode(msg.data))
        except msgspec.DecodeError:
            say(DEBUG, "agent_opportunity_invalid", agent_id=self.id)

    async def _message(self, msg: Msg) -> None:
        sender = msg.subject.rsplit(".", 1)[-1]
        if msg.subject != self.names.messages(self.id, sender) or not is_agent_id(sender):
            return
        self._messages.put(
            PeerMessage(
                sender=sender,
                recipient=self.id,
                subject=msg.subject,
                data=msg.data,
                reply_to=msg.reply or None,
                _respond=lambda reply, data: publish(self._nc, reply, data),
            )
        )


def _bytes(data: bytes | str) -> bytes:
    return data.encode() if isinstance(data, str) else data


def _bad_answer(msg: Msg, what: str) -> BadAnswerError:
    """What came instead of an answer: the bridge's refusal, or something else."""
    try:
        refusal: str | None = ERROR_DECODER.decode(msg.data).error
    except msgspec.DecodeError:
        refusal = (msg.headers or {}).get("Nats-Service-Error")
    if refusal:
        return BadAnswerError(f"the bridge refused {what}: {refusal}")
    return BadAnswerError(f"the answer to {what} is not what the contract says: {msg.data[:200]!r}")


async def _cancel(task: asyncio.Task[None]) -> None:
    task.cancel()
    await asyncio.wait({task})
