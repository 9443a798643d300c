"""The NATS auth callout, served by the bridge to a real nats-server running nats-callout.conf:
agents are admitted by the address they connect from, each only as itself."""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import structlog

from bridge.config import Settings
from bridge.contract.names import Names
from bridge.devkit.emulator import DockerEmulator, EmulatedSwarm
from bridge.edges.nats_server import EmbeddedNats
from bridge.trust.callout import AGENT_ACCOUNT, user_claims
from tests.callout_support import (
    CALLOUT_LABELS,
    CalloutFiles,
    admitted,
    bridge_settings,
    callout_server,
    callouts,
    make_keys,
    refused,
    user,
)
from tests.conftest import RunningBridge, live_keys, run_bridge, wait_for

STRANGER = "127.10.255.254"  # on the emulated swarm's subnet, but no task has it


@pytest.fixture
def files(tmp_path: Path) -> CalloutFiles:
    return make_keys(tmp_path / "keys")


@pytest.fixture
async def server(tmp_path: Path, files: CalloutFiles) -> AsyncIterator[EmbeddedNats]:
    async with callout_server(tmp_path, files) as running:
        yield running


@pytest.fixture
async def bridge(
    settings: Settings,
    files: CalloutFiles,
    server: EmbeddedNats,
    swarm: EmulatedSwarm,
    docker_api: DockerEmulator,
) -> AsyncIterator[RunningBridge]:
    swarm.add_tasks(2)
    async with run_bridge(bridge_settings(settings, files), server.url) as running:
        yield running


def tasks(swarm: EmulatedSwarm) -> list[tuple[str, str]]:
    """(task id, address) of the running tasks."""
    return sorted((t, swarm.address_of(t) or "") for t in swarm.running_ids())


async def test_admitted_agent_writes_its_presence_acks_and_claims_as_itself(
    bridge: RunningBridge, server: EmbeddedNats, swarm: EmulatedSwarm
) -> None:
    """An agent connecting from its task's address writes its own presence key (which
    answers nothing: the agent has no JetStream), acks and claims as itself; the server denies
    it another agent's key, ack, claim and inbox, and JetStream."""
    (me, address), (other, _) = tasks(swarm)
    ops = await user(server, "ops", "OPS_PASS")
    seen = await ops.subscribe("chorus.council.>")
    await ops.flush()
    async with admitted(server, address) as agent:
        assert agent.source == address
        inbox = await agent.subscribe(f"_INBOX.{me}.t1")
        entry = json.dumps({"agent_id": me, "task_id": me}).encode()
        await agent.publish(f"$KV.chorus_presence.{me}", entry, reply=f"_INBOX.{me}.t1")
        with pytest.raises(TimeoutError):
            await agent.next_msg(inbox, timeout=0.5)  # stored without an answer
        await agent.publish(f"chorus.council.c1.acks.{me}", b'{"opportunity_id": "c1"}')
        await agent.publish(f"chorus.council.c1.claims.{me}", b'{"role": "tpm"}')
        assert await agent.sync() == []

        denied = [
            f"$KV.chorus_presence.{other}",
            f"chorus.council.c1.acks.{other}",
            f"chorus.council.c1.claims.{other}",
            "chorus.council.c1.claims",
            f"$KV.chorus_agents.{me}",
            "chorus.council.opportunities",
            "$JS.API.INFO",
            f"_INBOX.{other}.x",
        ]
        for subject in denied:
            await agent.publish(subject, b"{}")
        errors = await agent.sync()
        assert errors == [f'Permissions Violation for Publish to "{s}"' for s in denied]

    received = [(await seen.next_msg(timeout=5)).subject for _ in range(2)]
    assert received == [f"chorus.council.c1.acks.{me}", f"chorus.council.c1.claims.{me}"]
    await ops.flush()
    assert seen.pending_msgs == 0  # nothing as the other agent got through
    presence = await ops.jetstream().key_value("chorus_presence")

    async def only_mine() -> bool:
        return await live_keys(presence) == [me]

    await wait_for(only_mine, what="the agent's own presence entry, and no other")
    await ops.close()


async def test_agent_reads_what_agents_read(
    bridge: RunningBridge, server: EmbeddedNats, swarm: EmulatedSwarm
) -> None:
    """An admitted agent receives opportunities and announcements on its subscriptions."""
    (_, address), _ = tasks(swarm)
    ops = await user(server, "ops", "OPS_PASS")
    async with admitted(server, address) as agent:
        opportunities = await agent.subscribe("chorus.council.opportunities")
        await agent.subscribe("chorus.agents.announce")
        await agent.subscribe("chorus.bridge.broadcast")  # not for agents
        errors = await agent.sync()
        assert errors == ['Permissions Violation for Subscription to "chorus.bridge.broadcast"']
        await ops.publish("chorus.council.opportunities", b'{"id": "c2"}')
        assert await agent.next_msg(opportunities) == (
            "chorus.council.opportunities",
            b'{"id": "c2"}',
        )
    await ops.close()


async def test_connection_from_an_address_no_agent_has_is_refused(
    bridge: RunningBridge, server: EmbeddedNats, swarm: EmulatedSwarm
) -> None:
    """The agent credentials from an address that no discovered agent has are refused, and
    so is a wrong password from an agent's own address; the bridge says why in one line."""
    (me, address), _ = tasks(swarm)
    with structlog.testing.capture_logs() as logs:
        async with admitted(server, address):
            pass  # the bridge knows the agents: what follows is refused for its own reason
        assert "Authorization Violation" in await refused(server, STRANGER)
        assert "Authorization Violation" in await refused(server, address, password="guess")
        assert "Authorization Violation" in await refused(server, "127.0.0.1")
    refusals = {(e["address"], e["reason"]) for e in logs if e["event"] == "callout_refused"}
    assert (STRANGER, f"address {STRANGER} is no discovered agent") in refusals
    assert (address, "wrong password for the agent user") in refusals
    assert ("127.0.0.1", "address 127.0.0.1 is no discovered agent") in refusals
    assert any(e["event"] == "callout_admitted" and e["agent_id"] == me for e in logs)


async def test_callouts_are_counted_on_metrics(
    bridge: RunningBridge, server: EmbeddedNats, swarm: EmulatedSwarm
) -> None:
    """/metrics counts every answer by outcome and, for a refusal, by its reason; a client
    has its answer only once the bridge counted it, so each count is there when it returns."""
    (_, address), _ = tasks(swarm)
    async with admitted(server, address):
        pass  # the bridge knows the agents (refusals while it learnt them are counted too)
    before = await callouts(bridge)
    assert set(before) == CALLOUT_LABELS
    async with admitted(server, address, timeout=0):  # one attempt, admitted
        pass
    assert "Authorization Violation" in await refused(server, address, password="guess")
    assert "Authorization Violation" in await refused(server, STRANGER)
    assert "Authorization Violation" in await refused(server, address, user_name="intruder")
    after = await callouts(bridge)
    assert {labels: after[labels] - before[labels] for labels in CALLOUT_LABELS} == {
        **dict.fromkeys(CALLOUT_LABELS, 0),
        ("admitted", "none"): 1,
        ("refused", "password"): 1,
        ("refused", "address"): 1,
        ("refused", "user"): 1,
    }


async def test_bridge_coordinator_and_ops_are_unaffected(
    bridge: RunningBridge, server: EmbeddedNats
) -> None:
    """With the callout on, the static users (bridge, coordinator, ops, sys) connect as before,
    with their own permissions."""
    assert bridge.bridge.nc is not None and bridge.bridge.nc.is_connected
    coordinator = await user(server, "coordinator", "COORD_PASS", "_INBOX.coord")
    agents = await coordinator.jetstream().key_value("chorus_agents")

    async def written() -> bool:
        return bool(await live_keys(agents))

    await wait_for(written, timeout=10, what="the bridge to write its agents")
    assert len(await live_keys(agents)) == 2
    ops = await user(server, "ops", "OPS_PASS")
    await ops.publish("anything.at.all", b"")
    await ops.flush()
    system = await user(server, "sys", "SYS_PASS")
    await system.request("$SYS.REQ.SERVER.PING", b"", timeout=5)
    assert ops.is_connected and coordinator.is_connected and system.is_connected
    for client in (ops, coordinator, system):
        await client.close()


async def test_departed_agent_is_no_longer_admitted(
    bridge: RunningBridge, server: EmbeddedNats, swarm: EmulatedSwarm
) -> None:
    """When discovery no longer finds an agent, its address is refused on the next connect."""
    (me, address), _ = tasks(swarm)
    async with admitted(server, address):
        pass
    swarm.remove_task(me)

    async def gone() -> bool:
        try:
            await refused(server, address)
        except AssertionError:
            return False
        return True

    await wait_for(gone, timeout=10, what="the departed agent's address to be refused")


async def test_the_admitted_agent_is_in_agents_as_itself(
    bridge: RunningBridge, server: EmbeddedNats, swarm: EmulatedSwarm
) -> None:
    """The server holds the admitted connection in the account AGENTS, as the agent at its
    address (the system account's view of connections)."""
    (me, address), _ = tasks(swarm)
    sys_user = await user(server, "sys", "SYS_PASS")
    try:
        async with admitted(server, address) as agent:
            await agent.sync()
            reply = await sys_user.request(
                "$SYS.REQ.SERVER.PING.CONNZ", b'{"auth": true}', timeout=5
            )
    finally:
        await sys_user.close()
    connections = json.loads(reply.data)["data"]["connections"]
    mine = [c for c in connections if c["ip"] == address]
    assert [(c["account"], c["authorized_user"]) for c in mine] == [(AGENT_ACCOUNT, me)]


def test_the_issued_user_expires_and_holds_the_agent_to_its_own_subjects() -> None:
    """The user JWT: in AGENTS, expiring within 10 minutes (DESIGN.md), publishing only the
    agent's own subjects (nothing of JetStream or $SYS, which still answer in AGENTS) and
    reading only what agents read, its own messages and its own inbox."""
    names = Names(prefix="chorus", agents_bucket="chorus_agents")
    before = time.time()
    claims = user_claims(names, "t1", "UKEY")
    assert (claims["aud"], claims["name"], claims["sub"]) == (AGENT_ACCOUNT, "t1", "UKEY")
    assert before + 60 <= claims["exp"] <= time.time() + 600
    assert claims["nats"]["pub"] == {
        "allow": [
            "$KV.chorus_presence.t1",
            "chorus.council.*.acks.t1",
            "chorus.council.*.claims.t1",
            "chorus.agents.*.messages.t1",
            "chorus.bridge.agents",
            "_INBOX.*.t1.>",
        ]
    }
    assert claims["nats"]["sub"] == {
        "allow": [
            "chorus.council.opportunities",
            "chorus.agents.announce",
            "chorus.council.*.events",
            "chorus.agents.t1.messages.*",
            "_INBOX.t1.>",
        ]
    }
