"""Every agent claims every role at once, on the bus (as requests) and in its HTTP answer,
through a real bridge and nats-server: one holder per role, no agent with two roles, each
answer right, `activated` exactly once."""

from __future__ import annotations

import pytest
from nats.aio.client import Client as NATS

from bridge.config import Settings
from bridge.contract.messages import CouncilOpportunity, Role, encode
from bridge.devkit.emulator import EmulatedSwarm
from bridge.devkit.sim import SimAgent
from bridge.edges.nats_server import EmbeddedNats
from tests.broadcast.test_broadcaster import stage
from tests.conftest import wait_for
from tests.council.support import Race, council_events, council_state, read_council, wants

OPPORTUNITY = CouncilOpportunity(
    id="council-42",
    roles=[
        Role(name="tpm", core=True),
        Role(name="senior-software-architect", core=True),
        Role(name="qa-engineer", core=False),
    ],
)
ROLES = [role.name for role in OPPORTUNITY.roles]


def every_role(agent: SimAgent, opportunity: CouncilOpportunity) -> list[str]:
    """On the bus: every role, each agent starting at another one (HTTP: that first one)."""
    names = [role.name for role in opportunity.roles]
    start = agent.index % len(names)
    return names[start:] + names[:start]


@pytest.mark.parametrize(("agents", "on_bus"), [(34, 17), (1000, 500)])
async def test_a_race_for_every_role(
    settings: Settings,
    nats_server: EmbeddedNats,
    swarm: EmulatedSwarm,
    nc: NATS,
    agents: int,
    on_bus: int,
) -> None:
    async with stage(
        settings,
        nats_server,
        swarm,
        agents,
        on_bus=on_bus,
        claim_policy=every_role,
        ask_claims=True,
        ack_wait=1.0,
    ) as s:
        events = await council_events(nc, s.names, OPPORTUNITY.id)
        report = await s.broadcast(nc, encode(OPPORTUNITY))
        assert report.success_count == agents
        bus_agents = s.fleet.bus_agents
        await wait_for(
            lambda: all(len(a.answers) == len(ROLES) for a in bus_agents),
            timeout=30,
            what="an answer to every claim on the bus",
        )
        await wait_for(lambda: len(wants(events, "activated")) == 1, what="activated")
        holders, seats = await read_council(nc, s.names, OPPORTUNITY.id)
        race = Race(ROLES, holders, seats)
        race.check_bucket()
        assert set(holders) == set(ROLES)
        for agent in bus_agents:
            race.check_answers(agent.id, [answer for _opp, answer in agent.answers])
        state = await council_state(nc, s.names, OPPORTUNITY.id)
        await nc.flush()
    assert state.state == "active"
    assert {r.name: r.holder for r in state.roles} == {r: h.agent_id for r, h in holders.items()}
    granted = wants(events, "granted")
    assert sorted((e.role, e.agent_id) for e in granted) == sorted(
        (r, h.agent_id) for r, h in holders.items()
    )
    assert [e.event for e in events if e.event not in ("granted", "activated")] == []
    (activated,) = wants(events, "activated")
    core_granted = [events.index(e) for e in granted if e.role != "qa-engineer"]
    assert events.index(activated) > max(core_granted)
    refused = sum(not a.granted for agent in bus_agents for _o, a in agent.answers)
    assert refused == len(bus_agents) * len(ROLES) - sum(h.via == "bus" for h in holders.values())
