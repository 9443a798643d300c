"""Claims one at a time, through a real bridge: each rule of DESIGN.md ("Councils"), the
answer only on the claiming agent's inbox, claims that are dropped, and re-broadcasts."""

from __future__ import annotations

import json

from nats.aio.client import Client as NATS
from nats.aio.msg import Msg

from bridge.config import Settings
from bridge.contract.messages import (
    CLAIM_ANSWER_DECODER,
    Claim,
    ClaimAnswer,
    CouncilOpportunity,
    ErrorReply,
    Role,
    decode_reply,
    encode,
)
from bridge.devkit.emulator import EmulatedSwarm
from bridge.edges.nats_server import EmbeddedNats
from tests.broadcast.test_broadcaster import Stage, stage
from tests.conftest import wait_for
from tests.council.support import council_events, council_state, read_council, wants

OPPORTUNITY = CouncilOpportunity(
    id="council-9",
    roles=[Role(name="tpm", core=True), Role(name="qa", core=False)],
)


class Asker:
    """Claims as any agent would send them, with the reply subject a test chooses; answers
    are read in order on one connection (a later answer proves an earlier one never came)."""

    def __init__(self, nc: NATS, s: Stage) -> None:
        self.nc, self.s = nc, s
        self.answers: dict[str, ClaimAnswer] = {}
        self._n = 0

    async def start(self) -> None:
        async def on(msg: Msg) -> None:
            self.answers[msg.subject] = CLAIM_ANSWER_DECODER.decode(msg.data)

        await self.nc.subscribe("_INBOX.>", cb=on)
        await self.nc.flush()

    async def send(
        self, agent_id: str, role: str, *, opportunity_id: str = OPPORTUNITY.id, **kw: str
    ) -> str:
        self._n += 1
        reply = kw.get("reply", f"_INBOX.{agent_id}.t.{self._n}")
        body = kw.get("body", encode(Claim(role=role, agent_id=agent_id)).decode())
        await self.nc.publish(
            self.s.names.claims(opportunity_id, agent_id), body.encode(), reply=reply
        )
        return reply

    async def ask(self, agent_id: str, role: str, **kw: str) -> ClaimAnswer:
        reply = await self.send(agent_id, role, **kw)
        await wait_for(lambda: reply in self.answers, timeout=10, what=f"the answer on {reply}")
        return self.answers[reply]


async def test_each_rule_and_its_reason(
    settings: Settings, nats_server: EmbeddedNats, swarm: EmulatedSwarm, nc: NATS
) -> None:
    async with stage(settings, nats_server, swarm, 4, on_bus=2, claim_policy=None) as s:
        asker = Asker(nc, s)
        await asker.start()
        ids = [agent.id for agent in s.fleet.agents]
        a, b, c = ids[0], ids[1], ids[2]
        never = await asker.ask(a, "tpm", opportunity_id="council-never-broadcast")
        assert never == ClaimAnswer(
            granted=False, role="tpm", holder=None, reason="unknown opportunity"
        )
        await s.broadcast(nc, encode(OPPORTUNITY))
        assert (await asker.ask(a, "chef")).reason == "unknown role"
        ghost = await asker.ask("ghost-1", "tpm")
        assert ghost == ClaimAnswer(granted=False, role="tpm", holder=None, reason="not an agent")
        # A body naming another agent counts for the agent of the subject.
        body = encode(Claim(role="tpm", agent_id=b)).decode()
        assert await asker.ask(a, "tpm", body=body) == ClaimAnswer(
            granted=True, role="tpm", holder=a
        )
        assert await asker.ask(a, "tpm") == ClaimAnswer(granted=True, role="tpm", holder=a)
        assert await asker.ask(b, "tpm") == ClaimAnswer(
            granted=False, role="tpm", holder=a, reason="taken"
        )
        assert (await asker.ask(a, "qa")).reason == "holds another role"
        assert await asker.ask(c, "qa") == ClaimAnswer(granted=True, role="qa", holder=c)
        holders, _seats = await read_council(nc, s.names, OPPORTUNITY.id)
        assert {r: h.agent_id for r, h in holders.items()} == {"tpm": a, "qa": c}
        assert holders["tpm"].via == "bus" and holders["tpm"].core


async def test_answers_go_only_to_the_claimers_inbox(
    settings: Settings, nats_server: EmbeddedNats, swarm: EmulatedSwarm, nc: NATS
) -> None:
    """The answer goes to `_INBOX.<agent id>.…`, never to another agent's inbox nor any other
    subject (a shared `_INBOX.agent.…` neither), though the claim is decided; oversized or
    unreadable claims are dropped, unanswered, and counted."""
    async with stage(settings, nats_server, swarm, 3, on_bus=1, claim_policy=None) as s:
        asker = Asker(nc, s)
        await asker.start()
        lease = f"$KV.{settings.subject_prefix}_bridge.leader"
        elsewhere: list[Msg] = []

        async def on_elsewhere(msg: Msg) -> None:
            if b"granted" in msg.data:
                elsewhere.append(msg)

        for subject in (lease, s.names.announce):
            await nc.subscribe(subject, cb=on_elsewhere)
        a, b, c = (agent.id for agent in s.fleet.agents)
        await s.broadcast(nc, encode(OPPORTUNITY))
        for reply in (
            f"_INBOX.{b}.x.1",
            lease,
            f"_INBOX.{a}",
            s.names.announce,
            "_INBOX.agent.t.9",
        ):
            await asker.send(a, "qa", reply=reply)
        await asker.send(a, "tpm", body="x" * 5000)
        await asker.send(a, "tpm", body="not json")
        # Claims are decided in order: this answer proves that none came before it.
        assert (await asker.ask(b, "tpm")).granted
        assert [reply for reply in asker.answers if not reply.startswith(f"_INBOX.{b}.t.")] == []
        assert elsewhere == []
        taken = await asker.ask(c, "qa")
        holders, _seats = await read_council(nc, s.names, OPPORTUNITY.id)
        metrics = s.running.bridge.metrics
        dropped = {
            reason: metrics.registry.get_sample_value(
                "chorus_bridge_claims_total", {"outcome": "dropped", "reason": reason}
            )
            for reason in ("too_large", "invalid")
        }
    # The claims answered nowhere were decided all the same: a holds qa (the first of them).
    assert {r: h.agent_id for r, h in holders.items()} == {"qa": a, "tpm": b}
    assert taken == ClaimAnswer(granted=False, role="qa", holder=a, reason="taken")
    assert dropped == {"too_large": 1.0, "invalid": 1.0}


async def test_the_same_opportunity_again_is_sent_again_another_is_refused(
    settings: Settings, nats_server: EmbeddedNats, swarm: EmulatedSwarm, nc: NATS
) -> None:
    async with stage(settings, nats_server, swarm, 2, claim_policy=None) as s:
        first = await s.broadcast(nc, encode(OPPORTUNITY))
        again = await s.broadcast(nc, encode(OPPORTUNITY))
        assert first.success_count == again.success_count == 2
        other = CouncilOpportunity(id=OPPORTUNITY.id, roles=[Role(name="tpm", core=True)])
        msg = await nc.request(s.names.broadcast, encode(other), timeout=20)
        refused = decode_reply(msg.data)
        assert isinstance(refused, ErrorReply) and refused.field == "$.id"
        assert "recorded already" in refused.error
        assert msg.headers is not None and msg.headers["Nats-Service-Error-Code"] == "400"
        assert not any(agent.got(OPPORTUNITY.id)[2:] for agent in s.fleet.agents)


async def test_a_council_without_claims_expires_and_refuses_claims(
    settings: Settings, nats_server: EmbeddedNats, swarm: EmulatedSwarm, nc: NATS
) -> None:
    import datetime as dt

    deadline = (dt.datetime.now(dt.UTC) + dt.timedelta(seconds=1)).isoformat()
    expiring = CouncilOpportunity(id="council-late", roles=OPPORTUNITY.roles, deadline=deadline)
    async with stage(settings, nats_server, swarm, 2, claim_policy=None) as s:
        events = await council_events(nc, s.names, expiring.id)
        await s.broadcast(nc, encode(expiring))
        await wait_for(lambda: bool(wants(events, "expired")), timeout=10, what="expired")
        asker = Asker(nc, s)
        await asker.start()
        answer = await asker.ask(s.fleet.agents[0].id, "tpm", opportunity_id=expiring.id)
        state = await council_state(nc, s.names, expiring.id)
    assert answer == ClaimAnswer(granted=False, role="tpm", holder=None, reason="expired")
    assert [e.event for e in events] == ["expired"]
    assert state.state == "expired" and state.activated_at is None


async def test_state_of_an_unknown_council_is_404(
    settings: Settings, nats_server: EmbeddedNats, swarm: EmulatedSwarm, nc: NATS
) -> None:
    async with stage(settings, nats_server, swarm, 1, claim_policy=None) as s:
        msg = await nc.request(s.names.council, b'{"opportunity_id": "nope"}', timeout=10)
        bad = await nc.request(s.names.council, b"[]", timeout=10)
    assert msg.headers is not None and msg.headers["Nats-Service-Error-Code"] == "404"
    assert json.loads(msg.data)["field"] == "$.opportunity_id"
    assert bad.headers is not None and bad.headers["Nats-Service-Error-Code"] == "400"
