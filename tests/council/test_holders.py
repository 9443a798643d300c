"""A holder whose agent is gone loses its role: the task left discovery (the emulated Docker
API no longer lists it) and it is not on the bus. An active council is degraded, and active
again once a valid claim takes the role."""

from __future__ import annotations

from nats.aio.client import Client as NATS

from bridge.config import Settings
from bridge.contract.messages import ClaimAnswer, CouncilOpportunity, Role, encode
from bridge.devkit.emulator import EmulatedSwarm
from bridge.edges.nats_server import EmbeddedNats
from tests.broadcast.test_broadcaster import stage
from tests.conftest import wait_for
from tests.council.support import council_events, council_state, read_council, wants
from tests.council.test_claims import Asker

OPPORTUNITY = CouncilOpportunity(
    id="council-9",
    roles=[Role(name="tpm", core=True), Role(name="qa"), Role(name="docs")],
)


async def test_a_holder_whose_task_is_gone_is_released_and_the_council_heals(
    settings: Settings, nats_server: EmbeddedNats, swarm: EmulatedSwarm, nc: NATS
) -> None:
    async with stage(settings, nats_server, swarm, 3, on_bus=1, claim_policy=None) as s:
        asker = Asker(nc, s)
        await asker.start()
        events = await council_events(nc, s.names, OPPORTUNITY.id)
        a, _b, c = (agent.id for agent in s.fleet.agents)  # a and c: HTTP only
        await s.broadcast(nc, encode(OPPORTUNITY))
        assert (await asker.ask(a, "tpm", opportunity_id=OPPORTUNITY.id)).granted
        await wait_for(lambda: bool(wants(events, "activated")), what="activated")
        swarm.remove_task(a)
        await wait_for(lambda: bool(wants(events, "degraded")), timeout=10, what="degraded")
        degraded = await council_state(nc, s.names, OPPORTUNITY.id)
        again = await asker.ask(a, "tpm", opportunity_id=OPPORTUNITY.id)
        healed = await asker.ask(c, "tpm", opportunity_id=OPPORTUNITY.id)
        await wait_for(lambda: len(wants(events, "activated")) == 2, what="active again")
        state = await council_state(nc, s.names, OPPORTUNITY.id)
        holders, seats = await read_council(nc, s.names, OPPORTUNITY.id)
    assert [(e.event, e.role, e.agent_id) for e in events] == [
        ("granted", "tpm", a),
        ("activated", None, None),
        ("released", "tpm", a),
        ("degraded", None, None),
        ("granted", "tpm", c),
        ("activated", None, None),
    ]
    assert degraded.state == "degraded"
    assert [r.holder for r in degraded.roles] == [None, None, None]
    assert again == ClaimAnswer(granted=False, role="tpm", holder=None, reason="not an agent")
    assert healed == ClaimAnswer(granted=True, role="tpm", holder=c)
    assert state.state == "active" and state.activated_at is not None
    assert {r: h.agent_id for r, h in holders.items()} == {"tpm": c}
    assert set(seats) == {c}


async def test_leaving_the_bus_costs_a_role_only_to_an_agent_not_discovered(
    settings: Settings, nats_server: EmbeddedNats, swarm: EmulatedSwarm, nc: NATS
) -> None:
    """A discovered agent that leaves the bus is still an agent and keeps its role; an
    agent on the bus only is gone when it leaves."""
    async with stage(
        settings, nats_server, swarm, 2, on_bus={1}, extra_bus=1, claim_policy=None
    ) as s:
        asker = Asker(nc, s)
        await asker.start()
        events = await council_events(nc, s.names, OPPORTUNITY.id)
        a, b, bus_only = (agent.id for agent in s.fleet.agents)
        await s.broadcast(nc, encode(OPPORTUNITY))
        for agent_id, role in ((a, "tpm"), (b, "docs"), (bus_only, "qa")):
            assert (await asker.ask(agent_id, role, opportunity_id=OPPORTUNITY.id)).granted
        await s.fleet.leave(b)
        await s.fleet.leave(bus_only)  # after b, on the same connection: seen after b
        await wait_for(lambda: bool(wants(events, "released")), timeout=10, what="released")
        holders, _seats = await read_council(nc, s.names, OPPORTUNITY.id)
        state = await council_state(nc, s.names, OPPORTUNITY.id)
    assert [(e.role, e.agent_id) for e in wants(events, "released")] == [("qa", bus_only)]
    assert {r: h.agent_id for r, h in holders.items()} == {"tpm": a, "docs": b}
    assert state.state == "active"  # qa is no core role
    assert not wants(events, "degraded")
