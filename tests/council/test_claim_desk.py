"""The claim desk on a real nats-server: a backlog of claims is answered in slices, so the
first agents hear back while the rest of the backlog is still being decided."""

from __future__ import annotations

import asyncio

import nats
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg

from bridge.contract.messages import CLAIM_ANSWER_DECODER, Claim, CouncilOpportunity, Role, encode
from bridge.contract.names import Names
from bridge.council.arbiter import Arbiter
from bridge.council.claims import ClaimDesk
from bridge.edges.nats_server import EmbeddedNats
from bridge.ops.metrics import Metrics
from tests.conftest import wait_for
from tests.council.support import AlwaysLeading, EveryoneIsAnAgent, loaded_book

OPPORTUNITY = CouncilOpportunity(id="council-7", roles=[Role(name="tpm", core=True)])
# 31 slices (bridge/council/claims.py's SLICE): deciding them all takes tens of milliseconds,
# and the server hands the first answers on well within that.
BACKLOG = 8_000


async def test_a_backlog_is_answered_while_it_is_decided(
    nc: NATS, nats_server: EmbeddedNats, unique: str
) -> None:
    """Every claim of the backlog is refused (`tpm` is held); the first answer reaches its
    agent before the last claim is decided. Without the turns of the event loop between
    slices, no answer left the bridge before the whole backlog was decided."""
    names = Names(prefix=f"t{unique}", agents_bucket=f"agents_{unique}")
    metrics = Metrics()
    book = await loaded_book(nc, names)
    arbiter = Arbiter(book, EveryoneIsAnAgent(), AlwaysLeading(), metrics=metrics)
    await arbiter.record(OPPORTUNITY)
    assert (await arbiter.claim(OPPORTUNITY.id, "holder", "tpm", via="bus")) is not None
    answers: list[str | None] = []
    decided_at_first_answer: list[int] = []

    async def on_answer(msg: Msg) -> None:
        if not answers:
            decided_at_first_answer.append(metrics.claims.value("refused", "taken"))
        answers.append(CLAIM_ANSWER_DECODER.decode(msg.data).reason)

    agents = await nats.connect(nats_server.url)
    try:
        await agents.subscribe("_INBOX.*.t.*", cb=on_answer)
        ready = asyncio.Event()
        async with ClaimDesk(nc, names, arbiter, metrics=metrics).taking(ready):
            await nc.flush()  # the desk's subscription is the server's before any claim
            await _claim_all(agents, names)
            await nc.flush()  # read before the server's PONG: every claim is queued, none decided
            ready.set()
            await wait_for(lambda: len(answers) == BACKLOG, timeout=30, what="every answer")
    finally:
        await agents.close()
    assert set(answers) == {"taken"}
    assert decided_at_first_answer[0] < BACKLOG, "no answer left before the backlog was decided"


async def _claim_all(agents: NATS, names: Names) -> None:
    """BACKLOG agents each claim `tpm`, answered on their own inboxes; returns once the
    server has routed every claim. (nats-py sends a flush's PING ahead of what it still
    buffers: the first flush writes the claims, the second returns after the server has
    taken them all.)"""
    for n in range(BACKLOG):
        agent_id = f"a{n}"
        claim = encode(Claim(role="tpm", agent_id=agent_id))
        subject = names.claims(OPPORTUNITY.id, agent_id)
        await agents.publish(subject, claim, reply=f"_INBOX.{agent_id}.t.{n}")
    await agents.flush()
    await agents.flush()
