"""Councils under faults, with real bridge processes: a leader paused (SIGSTOP) mid-race and
woken after the standby took over, a leader killed mid-race, NATS restarted mid-race. Agents
retry the claims nobody answered, as an agent would after its timeout. Whatever happens: one
holder per role, no agent with two roles, each answer right, each council activated once."""

from __future__ import annotations

import contextlib
import signal
import urllib.request
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import nats
import pytest
from nats.aio.client import Client as NATS

from bridge.config import Settings
from bridge.contract.messages import (
    REPORT_DECODER,
    ClaimAnswer,
    CouncilEvent,
    CouncilOpportunity,
    Role,
    encode,
)
from bridge.contract.names import Names
from bridge.devkit.emulator import DockerEmulator, EmulatedSwarm
from bridge.devkit.sim import SimFleet, allocate_addresses
from bridge.edges.nats_server import EmbeddedNats
from tests.chaos.bridges import BridgeProcess, bridge_process
from tests.conftest import run_bridge, wait_for
from tests.council.support import Race, council_events, council_state, read_council, wants
from tests.nats_cluster import nats_process

AGENTS, ON_BUS = 34, 17
ROLES = [Role(name="tpm", core=True), Role(name="architect", core=True), Role(name="qa")]
FORMED = CouncilOpportunity(id="council-formed", roles=ROLES)
RACED = CouncilOpportunity(id="council-raced", roles=ROLES)
CORE = ["tpm", "architect"]


@contextlib.asynccontextmanager
async def fleet_of(
    settings: Settings, url: str, swarm: EmulatedSwarm, base: str
) -> AsyncIterator[tuple[SimFleet, Settings]]:
    """34 tasks of the emulated service; 17 of them on the bus, claiming as requests."""
    addresses = allocate_addresses(AGENTS, base)
    task_ids = swarm.add_tasks(AGENTS, addresses=addresses)
    async with SimFleet(
        AGENTS,
        on_bus=ON_BUS,
        nats_url=url,
        names=Names.from_settings(settings),
        base=base,
        ids=task_ids,
        claim_policy=None,
        ask_claims=True,
        opportunity_path=settings.opportunity_path,
    ) as fleet:
        yield fleet, settings.replace(agent_port=fleet.port)


async def broadcast(nc: NATS, names: Names, opportunity: CouncilOpportunity) -> None:
    msg = await nc.request(names.broadcast, encode(opportunity), timeout=30)
    assert REPORT_DECODER.decode(msg.data).opportunity_id == opportunity.id


async def wave(fleet: SimFleet, opportunity: CouncilOpportunity, roles: list[str]) -> None:
    """Every agent on the bus claims each of `roles`, at once."""
    for agent in fleet.bus_agents:
        for role in roles:
            await fleet.claim(agent.id, opportunity.id, role)


async def answered(fleet: SimFleet, timeout: float = 60.0) -> None:
    """Until every claim is answered: claims unanswered for 2 s are sent again."""
    deadline = timeout
    while fleet.unanswered:
        with contextlib.suppress(AssertionError):
            await wait_for(lambda: fleet.unanswered == 0, timeout=2, what="answers")
        deadline -= 2
        assert deadline > 0, f"{fleet.unanswered} claims never answered"
        await fleet.ask_again()


def answers_for(fleet: SimFleet, opportunity_id: str) -> dict[str, list[ClaimAnswer]]:
    return {
        agent.id: [answer for opp, answer in agent.answers if opp == opportunity_id]
        for agent in fleet.bus_agents
    }


async def check(nc: NATS, names: Names, fleet: SimFleet, opportunity_id: str) -> None:
    holders, seats = await read_council(nc, names, opportunity_id)
    race = Race([r.name for r in ROLES], holders, seats)
    race.check_bucket()
    assert set(holders) == {r.name for r in ROLES}
    for agent_id, heard in answers_for(fleet, opportunity_id).items():
        race.check_answers(agent_id, heard)


def metric(port: int, line_start: str) -> float:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        text = response.read().decode()
    return sum(float(line.split()[-1]) for line in text.splitlines() if line.startswith(line_start))


def has_role(bridge: BridgeProcess, role: str) -> Callable[[], Awaitable[bool]]:
    async def check() -> bool:
        return await bridge.role() == role

    return check


@pytest.mark.parametrize("fault", ["paused", "killed"])
async def test_a_leader_lost_mid_race(
    fault: str,
    tmp_path: Path,
    settings: Settings,
    nats_server: EmbeddedNats,
    nc: NATS,
    swarm: EmulatedSwarm,
    docker_api: DockerEmulator,
) -> None:
    """One council formed before the fault (the new leader announces nothing of it again),
    one whose core roles are claimed while the leader is gone."""
    url = nats_server.url
    names = Names.from_settings(settings)
    async with (
        fleet_of(settings, url, swarm, "127.80.0.1") as (fleet, tuned),
        bridge_process(tuned, url, tmp_path / "first.log") as first,
    ):
        await wait_for(has_role(first, "leader"), timeout=20, interval=0.2, what="a leader")
        async with bridge_process(tuned, url, tmp_path / "second.log") as second:
            await wait_for(has_role(second, "standby"), timeout=20, interval=0.2, what="standby")
            formed = await council_events(nc, names, FORMED.id)
            raced = await council_events(nc, names, RACED.id)
            await broadcast(nc, names, FORMED)
            await broadcast(nc, names, RACED)
            await wave(fleet, FORMED, [r.name for r in ROLES])
            await wave(fleet, RACED, ["qa"])
            await answered(fleet)
            await wait_for(lambda: bool(wants(formed, "activated")), what="the formed council")
            granted = 'chorus_bridge_claims_total{outcome="granted"'
            before = metric(first.port, granted)
            first.send(signal.SIGSTOP if fault == "paused" else signal.SIGKILL)
            await wave(fleet, RACED, CORE)  # to a leader that is gone
            await wait_for(has_role(second, "leader"), timeout=30, interval=0.2, what="takeover")
            await answered(fleet)
            if fault == "paused":
                first.send(signal.SIGCONT)
                await wait_for(has_role(first, "standby"), timeout=20, interval=0.2, what="standby")
                # Woken, it granted none of the claims it had received while paused.
                assert metric(first.port, granted) == before == 4
            await wait_for(lambda: bool(wants(raced, "activated")), what="the raced council")
            await check(nc, names, fleet, FORMED.id)
            await check(nc, names, fleet, RACED.id)
            await nc.flush()
    assert_once(formed)
    assert_once(raced)


def assert_once(events: list[CouncilEvent]) -> None:
    """Three roles granted once each, activated once, and nothing else."""
    assert sorted(e.role or "" for e in wants(events, "granted")) == ["architect", "qa", "tpm"]
    assert len(wants(events, "activated")) == 1
    assert [e.event for e in events if e.event not in ("granted", "activated")] == []


async def test_nats_restarted_mid_race(
    tmp_path: Path, settings: Settings, swarm: EmulatedSwarm, docker_api: DockerEmulator
) -> None:
    """The core claims are sent while NATS is down (the agents' clients buffer them); after
    the restart (its store kept), every claim is answered and the council is active."""
    names = Names.from_settings(settings)
    async with (
        nats_process(tmp_path / "nats") as server,
        fleet_of(settings, server.url, swarm, "127.81.0.1") as (fleet, tuned),
        run_bridge(tuned, server.url),
    ):
        nc = await nats.connect(server.url, max_reconnect_attempts=-1, reconnect_time_wait=0.2)
        try:
            events = await council_events(nc, names, RACED.id)
            await broadcast(nc, names, RACED)
            await wave(fleet, RACED, ["qa"])
            await answered(fleet)
            await server.stop()
            await wave(fleet, RACED, CORE)
            server.start()
            await server.ready()
            await answered(fleet)
            await check(nc, names, fleet, RACED.id)
            state = await council_state(nc, names, RACED.id)
        finally:
            await nc.close()
    assert state.state == "active" and state.activated_at is not None
    # Events published while this client was away are lost to it (core NATS): at most one.
    assert len(wants(events, "activated")) <= 1
