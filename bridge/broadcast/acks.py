"""Agents' acks of opportunities: one subscription for a leader's whole term.

Every ack (`<prefix>.council.<opportunity id>.acks.<agent id>`) arrives on one subscription to
`<prefix>.council.*.acks.*`, opened when the term begins, and goes to the broadcasts of that
opportunity in progress (an ack for none is dropped: it came too late, or for nothing sent).

Not a subscription per broadcast: on a NATS cluster, a new subscription reaches the other
servers over the route connection of its account, and the agents live in an account of their
own (nats.conf's AGENTS: acks reach the bridge's account through a stream import). Routes are
pooled (3 connections per pair of servers by default, an account to each), so the opportunity
and the news of the new subscription travel over different connections, and an agent on
another server could ack before its server knew that anyone listened: the ack was dropped, and
the agent got HTTP. Measured on nats-server 2.15.1, a cluster of three running
nats-cluster.conf, the bridge on one member and an agent on another: 3 to 8 acks of 300
broadcasts lost (with nats-py or a client writing the protocol itself), none with one route
connection (`pool_size: 1`) or with the subscription made in advance.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Callable, Iterator

import nats.errors
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg

from bridge.contract.messages import MAX_ACK_BYTES
from bridge.contract.names import Names
from bridge.errors import NatsError
from bridge.ops.metrics import Metrics

__all__ = ["AckDesk", "AckHandler"]

# Called with the agent id an ack's subject names (the body decides nothing).
AckHandler = Callable[[str], None]


class AckDesk:
    """Takes every ack while `taking()` is open; `gathering()` hands one opportunity's acks
    to a broadcast."""

    def __init__(self, nc: NATS, names: Names, metrics: Metrics | None = None) -> None:
        self._nc = nc
        self._names = names
        self._metrics = metrics
        self._head = f"{names.prefix}.council."
        self._gathering: dict[str, list[AckHandler]] = {}
        self._taking = False

    @contextlib.asynccontextmanager
    async def taking(self) -> AsyncIterator[None]:
        """Acks are taken while the context is open (a leader's term). Raises NatsError when
        it cannot subscribe."""
        try:
            sub = await self._nc.subscribe(self._names.acks("*", "*"), cb=self._take)
        except nats.errors.Error as exc:
            raise NatsError(f"cannot take agents' acks: {exc!r}") from exc
        self._taking = True
        try:
            yield
        finally:
            self._taking = False
            with contextlib.suppress(nats.errors.Error, OSError):
                await sub.unsubscribe()

    @contextlib.contextmanager
    def gathering(self, opportunity_id: str, on_ack: AckHandler) -> Iterator[None]:
        """`on_ack(agent id)` for each ack of `opportunity_id` that arrives while the context
        is open. NatsError when acks are not being taken (outside `taking()`): a broadcast
        would then count no ack at all."""
        if not self._taking:
            raise NatsError("agents' acks are not being taken: a broadcast runs only in a term")
        handlers = self._gathering.setdefault(opportunity_id, [])
        handlers.append(on_ack)
        try:
            yield
        finally:
            handlers.remove(on_ack)
            if not handlers:
                del self._gathering[opportunity_id]

    async def _take(self, msg: Msg) -> None:
        # <prefix>.council.<opportunity id>.acks.<agent id>: the subscription's own shape (an
        # opportunity id has no dot).
        opportunity_id = msg.subject[len(self._head) :].split(".", 1)[0]
        handlers = self._gathering.get(opportunity_id)
        if not handlers:
            return
        if len(msg.data) > MAX_ACK_BYTES:
            # Acks are bounded (DESIGN.md, "Trust"): one this large is no ack.
            if self._metrics is not None:
                self._metrics.acks_dropped.labels(reason="too_large").inc()
            return
        agent_id = self._names.agent_of(msg.subject, opportunity_id, "acks")
        if agent_id is None:
            return
        for on_ack in list(handlers):
            on_ack(agent_id)
