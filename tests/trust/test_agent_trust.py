"""The agent library (`bridge.agent`) against a real bridge and nats-server: presence under
the agent's id, opportunities, acks and claims on its own subjects, a clean leave."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from pathlib import Path

import nats.js.errors
import pytest
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg

from bridge.agent import BusAgent, check_agent_id, connect_agent
from bridge.agent.presence import PresenceWriter
from bridge.config import Settings
from bridge.contract.messages import (
    CLAIM_DECODER,
    PRESENCE_DECODER,
    Claim,
    ClaimAnswer,
    CouncilOpportunity,
)
from bridge.contract.names import Names
from bridge.devkit.emulator import EmulatedSwarm
from bridge.devkit.sim.presence import ensure_presence_bucket
from bridge.edges.nats_server import EmbeddedNats
from tests.broadcast.test_broadcaster import stage
from tests.conftest import OPPORTUNITY, wait_for
from tests.trust.test_nats_conf import PASSWORDS, _peer, _test_copy_of_conf


async def test_an_agent_joins_acks_claims_and_leaves(
    settings: Settings, nats_server: EmbeddedNats, swarm: EmulatedSwarm, nc: NATS
) -> None:
    """A discovered agent that joins through the library is on the bus under its own id, is
    reached by its own ack (no HTTP), claims as itself, and is off the bus as soon as it
    leaves (not after the 15 s TTL)."""
    claims: list[tuple[str, Claim]] = []

    async def on_claim(msg: Msg) -> None:
        claims.append((msg.subject, CLAIM_DECODER.decode(msg.data)))

    async with stage(settings, nats_server, swarm, 2, claim_policy=None) as s:
        me = s.fleet.agents[0]
        await nc.subscribe(s.names.claims(OPPORTUNITY.id, "*"), cb=on_claim)
        received: list[CouncilOpportunity] = []
        answers: list[ClaimAnswer] = []

        async def answer(agent: BusAgent) -> None:
            async for opportunity in agent.opportunities():
                received.append(opportunity)
                await agent.ack(opportunity.id)
                answers.append(await agent.claim(opportunity.id, "tpm"))
                # The bridge's answer to the claim: granted; asked again, granted again.
                answers.append(await agent.claim(opportunity.id, "tpm"))

        async with connect_agent(
            nats_server.url,
            me.id,
            prefix=s.names.prefix,
            task_id=me.id,
            endpoint=me.endpoint,
            roles=["tpm"],
        ) as agent:
            kv = await nc.jetstream().key_value(s.names.presence_bucket)

            async def stored() -> bool:  # a plain publish: stored a moment after the join
                with contextlib.suppress(nats.js.errors.KeyNotFoundError):
                    return bool((await kv.get(me.id)).value)
                return False

            await wait_for(stored, what="the presence entry stored")
            entry = PRESENCE_DECODER.decode((await kv.get(me.id)).value or b"")
            assert (entry.agent_id, entry.task_id, entry.roles) == (me.id, me.id, ["tpm"])
            await wait_for(lambda: me.id in s.on_bus_in_bucket(), what="the agent on the bus")
            answering = asyncio.create_task(answer(agent))
            report = await s.broadcast(nc)
            await wait_for(lambda: len(answers) == 2, what="the answers to the claims")
        async with asyncio.timeout(5):
            await answering  # opportunities() ends when the agent leaves
        await wait_for(
            lambda: me.id not in s.on_bus_in_bucket(),
            timeout=5,
            what="the agent off the bus after leaving",
        )
        with pytest.raises(nats.js.errors.KeyNotFoundError):
            await kv.get(me.id)  # deleted, not left to expire
    assert [o.id for o in received] == [OPPORTUNITY.id]
    assert (report.via_bus, report.via_http, report.failed) == (1, 1, [])
    assert me.got(OPPORTUNITY.id) == []  # reached on the bus: no HTTP fallback
    assert claims == 2 * [
        (s.names.claims(OPPORTUNITY.id, me.id), Claim(role="tpm", agent_id=me.id))
    ]
    assert answers == 2 * [ClaimAnswer(granted=True, role="tpm", holder=me.id)]


async def test_joining_waits_for_no_answer(nats_server: EmbeddedNats, unique: str) -> None:
    """Presence is a plain publish that nobody answers (agents have no JetStream in their own
    account): an agent joins and leaves whether or not a bridge made the bucket yet."""
    async with connect_agent(nats_server.url, "agent-1", prefix=f"t{unique}") as agent:
        assert agent.id == "agent-1"


async def test_leaving_ends_when_a_presence_write_swallowed_the_stop(
    nats_server: EmbeddedNats, nc: NATS, unique: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The leave's stop comes as a presence refresh is being answered, and the NATS call
    swallows it (nats-py's wait_for on Python 3.11): the agent still leaves, at once."""
    names = Names(prefix=f"t{unique}", agents_bucket=f"agents_{unique}")
    await ensure_presence_bucket(nc, names)  # what the bridge does
    refreshing = asyncio.Event()

    async def write_that_swallows_the_stop(_writer: PresenceWriter) -> None:
        answer = asyncio.get_running_loop().create_future()  # never answered
        if refreshing.is_set():
            await answer  # a second write would wait for good: the leave must not make one
        refreshing.set()
        with contextlib.suppress(asyncio.CancelledError):
            await answer  # the leave's stop comes with the answer, and is lost

    async with asyncio.timeout(10):
        async with connect_agent(
            nats_server.url, "agent-1", prefix=names.prefix, presence_interval=0.05
        ):
            monkeypatch.setattr(PresenceWriter, "write", write_that_swallows_the_stop)
            await refreshing.wait()
    kv = await nc.jetstream().key_value(names.presence_bucket)
    with pytest.raises(nats.js.errors.KeyNotFoundError):
        await kv.get("agent-1")  # and its entry was deleted on the way out


@pytest.mark.parametrize("agent_id", ["", "a.b", "a b", "a*", "a>", "é"])
def test_an_agent_id_must_be_a_key_and_a_subject_token(agent_id: str) -> None:
    with pytest.raises(ValueError, match="agent id"):
        check_agent_id(agent_id)


def test_names_give_each_agent_its_own_subjects() -> None:
    names = Names(prefix="chorus", agents_bucket="chorus_agents")
    assert names.acks("council-42", "t1") == "chorus.council.council-42.acks.t1"
    assert names.claims("council-42", "t1") == "chorus.council.council-42.claims.t1"
    assert names.agent_of("chorus.council.council-42.acks.t1", "council-42", "acks") == "t1"
    assert names.agent_of("chorus.council.council-42.acks.t1.x", "council-42", "acks") is None
    assert names.agent_of("chorus.council.other.acks.t1", "council-42", "acks") is None


@pytest.fixture
async def shipped_conf(tmp_path: Path) -> AsyncIterator[EmbeddedNats]:
    """A nats-server running this repository's nats.conf (its users and permissions)."""
    conf = _test_copy_of_conf(tmp_path)
    async with EmbeddedNats(
        port=0, store_dir=tmp_path / "nats", config_file=conf, env=PASSWORDS
    ) as server:
        yield server


async def test_an_agent_with_the_shipped_permissions_is_reached_on_the_bus(
    settings: Settings, shipped_conf: EmbeddedNats, swarm: EmulatedSwarm
) -> None:
    """nats.conf as shipped: the bridge user hears the agent user's ack and claim on their
    per-agent subjects, and the agent is reached on the bus, not by HTTP."""
    secured = settings.replace(
        subject_prefix="chorus",
        kv_bucket="chorus_agents",
        nats_user="bridge",
        nats_password=PASSWORDS["BRIDGE_PASS"],
    )
    async with (
        stage(secured, shipped_conf, swarm, 1, claim_policy=None) as s,
        _peer(shipped_conf, "coordinator") as coordinator,
    ):
        me = s.fleet.agents[0]
        claims = await coordinator.nc.subscribe(s.names.claims(OPPORTUNITY.id, "*"))
        async with connect_agent(
            shipped_conf.url, me.id, user="agent", password=PASSWORDS["AGENT_PASS"]
        ) as agent:
            await wait_for(lambda: me.id in s.on_bus_in_bucket(), what="the agent on the bus")

            async def answer() -> None:
                async for opportunity in agent.opportunities():
                    await agent.ack(opportunity.id)
                    await agent.claim(opportunity.id, "tpm")

            answering = asyncio.create_task(answer())
            report = await s.broadcast(coordinator.nc)
            claim = await claims.next_msg(timeout=5)
        async with asyncio.timeout(5):
            await answering
    assert (report.via_bus, report.via_http, report.failed) == (1, 0, [])
    assert claim.subject == s.names.claims(OPPORTUNITY.id, me.id)
    assert coordinator.no_violations()
