"""Claims on the bus: `<prefix>.council.<opportunity id>.claims.<agent id>`, taken one after
another while this bridge leads, decided by the arbiter, and answered on the claiming agent's
own inbox (bridge/council/answers.py) when sent as a request.

Trust (DESIGN.md): a claim counts for the agent its subject names, whatever its body says; a
claim larger than 4 KiB, or that is not a claim, is dropped and counted; a claim the bridge
republished from an HTTP answer (header `Chorus-Via: http`) was arbitrated before it was
published, and is not taken again.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

import msgspec
import nats.errors
import structlog
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg

from bridge.contract.agent_id import is_agent_id
from bridge.contract.messages import CLAIM_DECODER, MAX_CLAIM_BYTES, VIA_HEADER, encode
from bridge.contract.names import Names
from bridge.council.answers import answer_claim
from bridge.council.arbiter import Arbiter
from bridge.ops.metrics import Metrics

__all__ = ["ClaimDesk"]

log = structlog.get_logger(__name__)

# Claims waiting to be decided, at most (nats-py drops beyond its own limits; this bounds the
# bridge's memory at 4 KiB each: 64 MiB).
PENDING_LIMIT = 16_384

# Claims decided between two turns of the event loop, at most. nats-py hands a callback every
# claim already read without a turn in between, so a burst's answers would all wait in the
# client's buffer until the whole burst was decided: the agents and the server idle while the
# bridge works, then the reverse. A turn every SLICE claims lets the answers decided so far
# leave while the rest are decided. `python bench/council.py` on the bench machine, 15 runs:
# arbitration 1.19x-1.47x a bare KV create, median 1.31x (1.38x-1.57x in 5 runs without),
# activation of 1,000 agents p95 72-89 ms (91-141 ms); 64, 128 and 512 did no better.
SLICE = 256


class ClaimDesk:
    """Takes the claims of every council while its subscription is open."""

    def __init__(
        self,
        nc: NATS,
        names: Names,
        arbiter: Arbiter,
        *,
        metrics: Metrics | None = None,
    ) -> None:
        self._nc = nc
        self._names = names
        self._arbiter = arbiter
        self._metrics = metrics

    @contextlib.asynccontextmanager
    async def taking(self, ready: asyncio.Event) -> AsyncIterator[None]:
        """Claims are taken while the context is open, one after another, once `ready` is
        set (until then they are kept: the subscription opens before the councils are read).
        Not in a queue group, so that a paused bridge's subscription takes none from the
        leader. Raises nats-py's errors when it cannot subscribe.

        A callback, not nats-py's message iterator: the iterator makes a task and a turn of
        the event loop per message, so every answer went out in a write of its own; with a
        callback, the claims that arrive together are decided together and their answers
        leave in one write; after every SLICE of them, a turn of the event loop lets those
        answers leave while the rest are decided."""

        taken = 0

        async def on_claim(msg: Msg) -> None:
            nonlocal taken
            if not ready.is_set():
                await ready.wait()
            try:
                await self.take(msg)
            except Exception:  # a bug must cost this claim, never the bridge
                log.exception("claim_failed", subject=msg.subject[:200])
            taken += 1
            if taken % SLICE == 0:
                await asyncio.sleep(0)

        sub = await self._nc.subscribe(
            self._names.claims("*", "*"), cb=on_claim, pending_msgs_limit=PENDING_LIMIT
        )
        try:
            yield
        finally:
            with contextlib.suppress(nats.errors.Error, OSError):
                await sub.unsubscribe()

    async def take(self, msg: Msg) -> None:
        """One claim: bounded, read, decided, answered."""
        if len(msg.data) > MAX_CLAIM_BYTES:
            self._drop("too_large", msg.subject)
            return
        if msg.headers and msg.headers.get(VIA_HEADER) == "http":
            return  # republished by a bridge from an HTTP answer: decided already
        # <prefix>.council.<opportunity id>.claims.<agent id>: the subscription's own shape.
        _prefix, _council, opportunity_id, _claims, agent_id = msg.subject.split(".")
        if not is_agent_id(agent_id):
            self._drop("invalid", msg.subject)
            return
        try:
            claim = CLAIM_DECODER.decode(msg.data)
        except msgspec.DecodeError:
            self._drop("invalid", msg.subject)
            return
        if claim.agent_id != agent_id:
            # The subject names the agent; the body is its word and decides nothing.
            log.debug("claim_names_another_agent", agent_id=agent_id, named=claim.agent_id[:128])
        answer = self._arbiter.answer_now(opportunity_id, agent_id, claim.role)
        if answer is None:  # not decided at once: perhaps a grant
            answer = await self._arbiter.claim(opportunity_id, agent_id, claim.role, via="bus")
        if answer is not None:
            await answer_claim(self._nc, self._names, msg.reply, agent_id, encode(answer))

    def _drop(self, reason: str, subject: str) -> None:
        log.debug("claim_dropped", reason=reason, subject=subject[:200])
        if self._metrics is not None:
            self._metrics.count_claim("dropped", reason)
