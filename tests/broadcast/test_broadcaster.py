"""Council opportunities reach every agent: a real bridge, nats-server and loopback agents."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import time
from collections.abc import AsyncIterator, Mapping
from typing import Any

import msgspec
import pytest
from nats.aio.client import Client as NATS

from bridge.config import Settings
from bridge.contract.messages import (
    CLAIM_DECODER,
    BroadcastReport,
    Claim,
    ErrorReply,
    decode_reply,
    encode,
)
from bridge.contract.names import Names
from bridge.devkit.emulator import EmulatedSwarm
from bridge.devkit.sim import Behaviour, SimFleet, allocate_addresses
from bridge.edges.nats_server import EmbeddedNats
from tests.conftest import OPPORTUNITY, RunningBridge, run_bridge, wait_for

_bases = iter(f"127.{30 + i}.0.1" for i in range(200))


class Stage:
    """A bridge whose Swarm service's tasks are simulated agents on loopback."""

    def __init__(
        self, running: RunningBridge, fleet: SimFleet, names: Names, settings: Settings
    ) -> None:
        self.running, self.fleet, self.names, self.settings = running, fleet, names, settings

    async def broadcast(self, nc: NATS, data: bytes | None = None) -> BroadcastReport:
        reply = decode_reply(await self.request(nc, data or encode(OPPORTUNITY)))
        assert isinstance(reply, BroadcastReport), reply
        return reply

    async def request(self, nc: NATS, data: bytes) -> bytes:
        msg = await nc.request(self.names.broadcast, data, timeout=20)
        return bytes(msg.data)

    def on_bus_in_bucket(self) -> set[str]:
        registry = self.running.bridge.registry
        assert registry is not None
        return {a.id for a in registry.published.values() if a.on_bus}


@contextlib.asynccontextmanager
async def stage(
    settings: Settings,
    server: EmbeddedNats,
    swarm: EmulatedSwarm,
    n: int,
    on_bus: int | set[int] = 0,
    behaviours: Mapping[int, Behaviour] | None = None,
    extra_bus: int = 0,
    ack_wait: float = 2.0,
    **fleet_args: Any,
) -> AsyncIterator[Stage]:
    """n agents as tasks of the emulated service (+ `extra_bus` bus agents that are no task)."""
    names = Names.from_settings(settings)
    base = next(_bases)
    addresses = allocate_addresses(n + extra_bus, base)
    task_ids = swarm.add_tasks(n, addresses=addresses[:n])
    bus = set(on_bus) if isinstance(on_bus, set) else set(range(1, 2 * on_bus, 2))
    bus |= set(range(n, n + extra_bus))
    ids = [*task_ids, *(f"bus-only-{i}" for i in range(extra_bus))]
    async with SimFleet(
        n + extra_bus,
        on_bus=bus,
        nats_url=server.url,
        names=names,
        base=base,
        ids=ids,
        behaviours=behaviours,
        opportunity_path=settings.opportunity_path,
        **fleet_args,
    ) as fleet:
        tuned = settings.replace(agent_port=fleet.port, bus_ack_wait=ack_wait, http_timeout=1.0)
        async with run_bridge(tuned, server.url) as running:
            result = Stage(running, fleet, names, tuned)
            await wait_for(
                lambda: len(result.on_bus_in_bucket()) == len(bus) - extra_bus,
                what="presence of the bus agents",
            )
            yield result


async def test_mixed_fleet_each_agent_gets_it_once(
    settings: Settings, nats_server: EmbeddedNats, swarm: EmulatedSwarm, nc: NATS
) -> None:
    """Half on the bus, half HTTP only: every agent gets the opportunity exactly once."""
    async with stage(settings, nats_server, swarm, 10, on_bus=5) as s:
        report = await s.broadcast(nc)
        assert (report.total_agents, report.success_count) == (10, 10)
        assert (report.via_bus, report.via_http, report.failed) == (5, 5, [])
        assert report.opportunity_id == "council-42" and report.unregistered_acks == 0
        for agent in s.fleet.agents:
            got = agent.got("council-42")
            assert len(got) == 1, (agent.id, got)
            assert got[0].via == ("bus" if agent.on_bus else "http")
            if got[0].via == "http":
                assert got[0].idempotency_key == "council-42"


async def test_bus_agent_without_ack_gets_http(
    settings: Settings, nats_server: EmbeddedNats, swarm: EmulatedSwarm, nc: NATS
) -> None:
    """A bus agent that does not ack within the wait gets the opportunity by HTTP."""
    async with stage(settings, nats_server, swarm, 4, on_bus={0, 1}, behaviours={1: "no_ack"}) as s:
        report = await s.broadcast(nc)
        assert (report.success_count, report.via_bus, report.via_http) == (4, 1, 3)
        silent = s.fleet.agents[1]
        assert [d.via for d in silent.got("council-42")] == ["bus", "http"]


@pytest.mark.parametrize(
    ("behaviour", "error"),
    [
        ("down", "connection refused"),
        ("hang", "timeout"),
        ("reset", "connection reset"),
        ("500", "HTTP 500"),
    ],
)
async def test_misbehaving_agent_costs_its_own_timeout(
    settings: Settings,
    nats_server: EmbeddedNats,
    swarm: EmulatedSwarm,
    nc: NATS,
    behaviour: Behaviour,
    error: str,
) -> None:
    """An agent that is down, hangs, resets or fails is reported with its error; the others
    are reached, and the broadcast takes about one HTTP timeout, not more."""
    async with stage(settings, nats_server, swarm, 6, behaviours={2: behaviour}) as s:
        thresholds = gc.get_threshold()
        started = time.perf_counter()
        report = await s.broadcast(nc)
        elapsed = time.perf_counter() - started
        # The broadcast widens the collector's generation 0 while it runs, and only then.
        assert gc.get_threshold() == thresholds
        assert report.success_count == 5 and report.via_http == 5
        (failure,) = report.failed
        assert failure.agent_id == s.fleet.agents[2].id
        assert failure.endpoint == s.fleet.agents[2].endpoint
        assert failure.error.startswith(error), failure.error
        assert elapsed < s.settings.http_timeout * 2 + 2.0


async def test_huge_answer_is_read_no_further_than_64_kib(
    settings: Settings, nats_server: EmbeddedNats, swarm: EmulatedSwarm, nc: NATS
) -> None:
    """A 10 MiB answer counts as delivered and costs no more than a normal one."""
    async with stage(settings, nats_server, swarm, 3, behaviours={0: "huge"}) as s:
        report = await s.broadcast(nc)
        assert report.success_count == 3 and report.failed == []
        assert report.duration_ms < 3000


async def test_double_ack_counts_once(
    settings: Settings, nats_server: EmbeddedNats, swarm: EmulatedSwarm, nc: NATS
) -> None:
    """An agent that acks twice is one agent reached, and no unknown ack."""
    async with stage(
        settings, nats_server, swarm, 3, on_bus={0, 1, 2}, behaviours={0: "double_ack"}
    ) as s:
        report = await s.broadcast(nc)
        assert (report.total_agents, report.via_bus, report.unregistered_acks) == (3, 3, 0)


async def test_the_report_comes_once_every_agent_on_the_bus_acked(
    settings: Settings, nats_server: EmbeddedNats, swarm: EmulatedSwarm, nc: NATS
) -> None:
    """The ack window ends as soon as every agent on the bus has acked, not after
    BRIDGE_BUS_ACK_WAIT (15 s here)."""
    async with stage(settings, nats_server, swarm, 3, on_bus={0, 1, 2}, ack_wait=15.0) as s:
        report = await s.broadcast(nc)
        assert (report.via_bus, report.success_count, report.failed) == (3, 3, [])
        assert report.duration_ms < 15_000


async def test_a_broadcast_cut_short_by_a_stop_is_answered(
    settings: Settings, nats_server: EmbeddedNats, swarm: EmulatedSwarm, nc: NATS
) -> None:
    """The bridge stops while a broadcast waits on an agent that never answers: the
    coordinator gets an error answer (code 503: send it again) at once, not silence until
    its own timeout."""
    async with stage(settings, nats_server, swarm, 2, behaviours={0: "hang"}) as s:
        asked = asyncio.create_task(nc.request(s.names.broadcast, encode(OPPORTUNITY), timeout=20))
        await wait_for(lambda: bool(s.fleet.agents[0].got(OPPORTUNITY.id)), what="the POST")
        await s.running.stop()
        msg = await asked
    assert (msg.headers or {}).get("Nats-Service-Error-Code") == "503"
    reply = decode_reply(msg.data)
    assert isinstance(reply, ErrorReply) and "send it again" in reply.error


async def test_agents_on_the_bus_only_are_reached(
    settings: Settings, nats_server: EmbeddedNats, swarm: EmulatedSwarm, nc: NATS
) -> None:
    """An agent on the bus that is no task of the service is counted and reached."""
    async with stage(settings, nats_server, swarm, 2, extra_bus=2) as s:
        report = await s.broadcast(nc)
        assert (report.total_agents, report.via_bus, report.via_http) == (4, 2, 2)


async def test_rebroadcast_is_reported_again(
    settings: Settings, nats_server: EmbeddedNats, swarm: EmulatedSwarm, nc: NATS
) -> None:
    """The same opportunity sent twice reaches everyone twice, with the same idempotency key."""
    async with stage(settings, nats_server, swarm, 3, on_bus=1) as s:
        first = await s.broadcast(nc)
        second = await s.broadcast(nc)
        assert first.success_count == second.success_count == 3
        http_agent = next(a for a in s.fleet.agents if not a.on_bus)
        assert [d.idempotency_key for d in http_agent.got("council-42")] == ["council-42"] * 2


async def test_http_claims_are_republished(
    settings: Settings, nats_server: EmbeddedNats, swarm: EmulatedSwarm, nc: NATS
) -> None:
    """A role claim in an HTTP answer appears on the opportunity's claims subject."""
    claims: list[Claim] = []

    async def on_claim(msg: Any) -> None:
        claims.append(CLAIM_DECODER.decode(msg.data))

    async with stage(settings, nats_server, swarm, 2) as s:
        await nc.subscribe(s.names.claims("council-42", "*"), cb=on_claim)
        await nc.flush()
        await s.broadcast(nc)
        await wait_for(lambda: len(claims) == 2, what="2 claims")
    assert sorted(c.role for c in claims) == ["senior-software-architect", "tpm"]
    assert {c.agent_id for c in claims} == {a.id for a in s.fleet.agents}


async def test_unhealthy_agent_is_not_called(
    settings: Settings, nats_server: EmbeddedNats, swarm: EmulatedSwarm, nc: NATS
) -> None:
    """With health verification, an agent failing /health is marked and left out."""
    checked = settings.replace(verify_health=True)
    async with stage(checked, nats_server, swarm, 3, behaviours={1: "unhealthy"}) as s:
        sick = s.fleet.agents[1]
        registry = s.running.bridge.registry
        assert registry is not None
        assert registry.published[sick.id].healthy is False
        report = await s.broadcast(nc)
        assert report.success_count == 2
        assert [(f.agent_id, f.error) for f in report.failed] == [
            (sick.id, "unhealthy: not called")
        ]
        assert sick.got("council-42") == []


@pytest.mark.parametrize(
    ("body", "field"),
    [
        (b"not json", "$"),
        (b'{"id": 7, "roles": [{"name": "tpm"}]}', "$.id"),
        (b'{"id": "c1", "roles": []}', "$.roles"),
        (b'{"id": "bad id", "roles": [{"name": "tpm"}]}', "$.id"),
        (
            b'{"id": "c1", "roles": [{"name": "tpm"}], "details": {"x": "'
            + b"a" * 1_000_000
            + b'"}}',
            "$",
        ),
    ],
)
async def test_bad_request_is_refused_and_nothing_sent(
    settings: Settings,
    nats_server: EmbeddedNats,
    swarm: EmulatedSwarm,
    nc: NATS,
    body: bytes,
    field: str,
) -> None:
    """A bad request gets the error reply, reaches no agent, and the bridge keeps serving."""
    async with stage(settings, nats_server, swarm, 2, on_bus=1) as s:
        reply = msgspec.json.decode(await s.request(nc, body), type=ErrorReply)
        assert reply.field == field and reply.error
        assert all(a.received == [] for a in s.fleet.agents)
        assert (await s.broadcast(nc)).success_count == 2


async def test_presence_expiry_and_return_flip_on_bus(
    settings: Settings, nats_server: EmbeddedNats, swarm: EmulatedSwarm, nc: NATS
) -> None:
    """An agent whose presence expires is off the bus; when it returns, it is on again."""
    async with stage(
        settings, nats_server, swarm, 2, on_bus={0, 1}, presence_ttl=1, presence_interval=0.25
    ) as s:
        leaving = s.fleet.agents[0]
        await s.fleet.leave(leaving.id, purge=False)
        await wait_for(
            lambda: leaving.id not in s.on_bus_in_bucket(),
            timeout=8,
            what="the expired agent to be off the bus",
        )
        report = await s.broadcast(nc)
        assert (report.via_bus, report.via_http) == (1, 1)
        await s.fleet.rejoin(leaving.id)
        await wait_for(
            lambda: leaving.id in s.on_bus_in_bucket(), timeout=8, what="the agent back on the bus"
        )


async def test_an_ack_over_4_kib_is_dropped_and_counted(
    settings: Settings, nats_server: EmbeddedNats, swarm: EmulatedSwarm, nc: NATS
) -> None:
    """An ack larger than 4 KiB on an agent's own subject is no ack (DESIGN.md, "Trust"): the
    agent gets its POST, and the drop is counted; a small one on the same subject counts."""
    async with stage(
        settings, nats_server, swarm, 1, on_bus={0}, behaviours={0: "no_ack"}, ack_wait=2.0
    ) as s:
        (agent_id,) = s.on_bus_in_bucket()
        bodies = iter([b"x" * (5 * 1024), b'{"opportunity_id": "council-42"}'])

        async def ack(msg: Any) -> None:
            await nc.publish(s.names.acks(OPPORTUNITY.id, agent_id), next(bodies))

        await nc.subscribe(s.names.opportunities, cb=ack)
        await nc.flush()
        first = await s.broadcast(nc)
        assert (first.via_bus, first.via_http) == (0, 1)
        registry = s.running.bridge.metrics.registry
        sample = registry.get_sample_value(
            "chorus_bridge_acks_dropped_total", {"reason": "too_large"}
        )
        assert sample == 1
        second = await s.broadcast(nc)
        assert (second.via_bus, second.via_http) == (1, 0)
