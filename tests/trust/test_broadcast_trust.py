"""Agents are not trusted (DESIGN.md, "Trust"): what any agent can publish in open mode (NATS
without auth) never makes the bridge call an address, skip an agent, or count one as reached.

Real bridge, real nats-server, simulated agents and an HTTP recorder on loopback.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from typing import Any

import pytest
import structlog
from aiohttp import web
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg

from bridge.broadcast.acks import AckDesk
from bridge.broadcast.broadcaster import Broadcaster
from bridge.broadcast.targets import Target
from bridge.config import Settings
from bridge.contract.buckets import MAX_PRESENCE_BYTES
from bridge.contract.messages import (
    CLAIM_DECODER,
    Ack,
    BroadcastReport,
    Claim,
    FailedDelivery,
    PresenceEntry,
    encode,
    now_rfc3339,
)
from bridge.contract.names import Names
from bridge.devkit.emulator import EmulatedSwarm
from bridge.edges.agent_http import AgentHTTP
from bridge.edges.nats_server import EmbeddedNats
from bridge.environment import load_settings
from bridge.errors import ConfigError
from tests.broadcast.test_broadcaster import Stage, stage
from tests.conftest import OPPORTUNITY, RecordedCouncils, wait_for

RECORDER_HOST = "127.40.0.50"


@contextlib.asynccontextmanager
async def recorder(host: str = RECORDER_HOST) -> AsyncIterator[tuple[int, list[str]]]:
    """An HTTP server on a loopback address that records every request: (port, 'METHOD url')."""
    seen: list[str] = []

    async def record(request: web.Request) -> web.Response:
        seen.append(f"{request.method} {request.url}")
        return web.json_response({"role": "tpm", "agent_id": "intruder"})

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", record)
    runner = web.AppRunner(app, shutdown_timeout=0.1)
    await runner.setup()
    try:
        await web.TCPSite(runner, host, 0).start()
        yield runner.addresses[0][1], seen
    finally:
        await runner.cleanup()


async def put_presence(nc: NATS, names: Names, key: str, entry: PresenceEntry) -> None:
    """Write a presence entry as any agent can in open mode."""
    kv = await nc.jetstream().key_value(names.presence_bucket)
    await kv.put(key, encode(entry))


async def wait_present(s: Stage, key: str) -> None:
    presence = s.running.bridge.presence
    assert presence is not None
    await wait_for(lambda: key in presence.present_ids(), what=f"{key} on the bus")


def reached(report: BroadcastReport) -> int:
    return report.via_bus + report.via_http


async def test_a_presence_endpoint_is_never_called(
    settings: Settings, nats_server: EmbeddedNats, swarm: EmulatedSwarm, nc: NATS
) -> None:
    """Attack 1: an entry on the bus only, whose `endpoint` is a URL of the writer's choosing
    (a `#` would drop the opportunity path), never acking. No request reaches that URL; every
    discovered agent is reached; the intruder is reported failed, 'no ack on the bus'."""
    async with recorder() as (port, seen), stage(settings, nats_server, swarm, 4, on_bus=2) as s:
        url = f"http://{RECORDER_HOST}:{port}/admin/drop-all?confirm=yes#"
        await put_presence(
            nc,
            s.names,
            "intruder",
            PresenceEntry(agent_id="intruder", endpoint=url, at=now_rfc3339()),
        )
        await wait_present(s, "intruder")
        report = await s.broadcast(nc)
    assert seen == []
    assert all(len(agent.got(OPPORTUNITY.id)) == 1 for agent in s.fleet.agents)
    assert (report.total_agents, report.success_count, report.via_bus, report.via_http) == (
        5,
        4,
        2,
        2,
    )
    assert report.failed == [
        FailedDelivery(agent_id="intruder", endpoint=None, error="no ack on the bus")
    ]


async def test_an_ack_naming_another_agent_does_not_count_for_it(
    settings: Settings, nats_server: EmbeddedNats, swarm: EmulatedSwarm, nc: NATS
) -> None:
    """Attack 2: an intruder on the bus acks every opportunity on its own subject with a body
    that names a victim (on the bus, not acking). The victim still gets its HTTP fallback, and
    the report counts the intruder's ack for the intruder only."""
    async with stage(settings, nats_server, swarm, 3, on_bus={0, 1}, behaviours={1: "no_ack"}) as s:
        victim = s.fleet.agents[1]

        async def ack_as_victim(msg: Msg) -> None:
            body = Ack(agent_id=victim.id, opportunity_id=OPPORTUNITY.id)
            await nc.publish(s.names.acks(OPPORTUNITY.id, "intruder"), encode(body))

        await nc.subscribe(s.names.opportunities, cb=ack_as_victim)
        await put_presence(
            nc, s.names, "intruder", PresenceEntry(agent_id=victim.id, at=now_rfc3339())
        )
        await wait_present(s, "intruder")
        report = await s.broadcast(nc)
    assert [d.via for d in victim.got(OPPORTUNITY.id)] == ["bus", "http"]
    assert (report.total_agents, report.success_count, report.failed) == (4, 4, [])
    # Via the bus: agent 0 and the intruder (each by its own ack); by HTTP: 1 (victim) and 2.
    assert (report.via_bus, report.via_http, report.unregistered_acks) == (2, 2, 0)


async def test_an_ack_on_an_http_only_agents_subject_does_not_skip_it(
    settings: Settings, nats_server: EmbeddedNats, swarm: EmulatedSwarm, nc: NATS
) -> None:
    """Attack 2b, without the auth callout (anyone may publish anywhere): a forger acks on the
    subject of an agent that is not on the bus. That agent still gets its POST and counts as
    reached by HTTP; the forged ack counts for nobody."""
    async with stage(settings, nats_server, swarm, 2, on_bus={1}, behaviours={1: "no_ack"}) as s:
        victim = s.fleet.agents[0]

        async def forge(msg: Msg) -> None:
            body = Ack(agent_id=victim.id, opportunity_id=OPPORTUNITY.id)
            await nc.publish(s.names.acks(OPPORTUNITY.id, victim.id), encode(body))

        await nc.subscribe(s.names.opportunities, cb=forge)
        await nc.flush()
        report = await s.broadcast(nc)
    assert [d.via for d in victim.got(OPPORTUNITY.id)] == ["http"]
    # Agent 1 is on the bus and does not ack: its fallback POST reaches it too.
    assert (report.total_agents, report.success_count, report.failed) == (2, 2, [])
    assert (report.via_bus, report.via_http, report.unregistered_acks) == (0, 2, 0)


async def test_a_presence_value_nested_too_deeply_costs_nothing(
    settings: Settings, nats_server: EmbeddedNats, swarm: EmulatedSwarm, nc: NATS
) -> None:
    """Attack 4: a presence value nested 2,000 deep, within the bucket's 4 KiB (msgspec raises
    RecursionError for it, which is no DecodeError). The entry is ignored as invalid, the
    bridge keeps running, and a broadcast reaches everyone."""
    deep = b'{"agent_id": "x", "z": ' + b"[" * 2000 + b"]" * 2000 + b"}"
    assert len(deep) <= MAX_PRESENCE_BYTES
    with structlog.testing.capture_logs() as logs:
        async with stage(settings, nats_server, swarm, 2, on_bus={1}) as s:
            kv = await nc.jetstream().key_value(s.names.presence_bucket)
            await kv.put("deep-one", deep)
            await wait_for(
                lambda: any(e["event"] == "presence_entry_invalid" for e in logs),
                what="the entry read and refused",
            )
            report = await s.broadcast(nc)
            assert not s.running.task.done()
    assert (report.total_agents, report.success_count, report.failed) == (2, 2, [])


async def test_an_entry_carrying_another_agents_task_id_does_not_skip_it(
    settings: Settings, nats_server: EmbeddedNats, swarm: EmulatedSwarm, nc: NATS
) -> None:
    """Attack 3: an entry under the writer's own key, carrying an HTTP-only agent's task id and
    endpoint. The HTTP-only agent is still sent the opportunity by HTTP, and not counted as
    on the bus; the writer acks as itself and counts as itself."""
    async with stage(settings, nats_server, swarm, 3) as s:
        victim = s.fleet.agents[0]

        async def ack_as_self(msg: Msg) -> None:
            body = Ack(agent_id="intruder", opportunity_id=OPPORTUNITY.id)
            await nc.publish(s.names.acks(OPPORTUNITY.id, "intruder"), encode(body))

        await nc.subscribe(s.names.opportunities, cb=ack_as_self)
        await put_presence(
            nc,
            s.names,
            "intruder",
            PresenceEntry(
                agent_id=victim.id, task_id=victim.id, endpoint=victim.endpoint, at=now_rfc3339()
            ),
        )
        await wait_present(s, "intruder")
        assert victim.id not in s.on_bus_in_bucket()
        report = await s.broadcast(nc)
    assert [d.via for d in victim.got(OPPORTUNITY.id)] == ["http"]
    assert (report.total_agents, report.success_count, report.failed) == (4, 4, [])
    assert (report.via_bus, report.via_http) == (1, 3)


async def test_acks_from_unknown_agents_are_counted_apart_once_each(
    settings: Settings, nats_server: EmbeddedNats, swarm: EmulatedSwarm, nc: NATS
) -> None:
    """Acks on the subjects of agents the bridge does not know reach nobody in the report."""
    # The agent on the bus does not ack, so the bridge listens for the whole ack window.
    async with stage(settings, nats_server, swarm, 2, on_bus=1, behaviours={1: "no_ack"}) as s:

        async def strangers(msg: Msg) -> None:
            for name in ("ghost-1", "ghost-2", "ghost-1"):
                await nc.publish(s.names.acks(OPPORTUNITY.id, name), b"{}")

        await nc.subscribe(s.names.opportunities, cb=strangers)
        report = await s.broadcast(nc)
    assert (report.total_agents, report.success_count, report.unregistered_acks) == (2, 2, 2)


async def test_an_http_claim_is_republished_as_the_agent_that_answered(
    nats_server: EmbeddedNats, nc: NATS, unique: str
) -> None:
    """An HTTP answer claiming a role in another agent's name is republished on the claims
    subject of the agent that answered, in its own name."""
    names = Names(prefix=f"t{unique}", agents_bucket=f"agents_{unique}")
    claims: list[tuple[str, Claim]] = []
    councils = RecordedCouncils()

    async def on_claim(msg: Msg) -> None:
        claims.append((msg.subject, CLAIM_DECODER.decode(msg.data)))

    await nc.subscribe(names.claims(OPPORTUNITY.id, "*"), cb=on_claim)
    await nc.flush()
    async with recorder("127.40.0.51") as (port, seen):
        settings = Settings(subject_prefix=names.prefix, bus_ack_wait=0.1, opportunity_path="/op")
        target = Target(agent_id="agent-7", endpoint=f"http://127.40.0.51:{port}")
        acks = AckDesk(nc, names)
        async with AgentHTTP(settings) as http, acks.taking():
            broadcaster = Broadcaster(
                nc, names, settings, http, lambda: [target], acks=acks, councils=councils
            )
            report = await broadcaster.broadcast(OPPORTUNITY)
        await wait_for(lambda: len(claims) == 1, what="the claim")
    assert seen == [f"POST http://127.40.0.51:{port}/op"]
    assert report.via_http == 1
    assert claims == [
        (names.claims(OPPORTUNITY.id, "agent-7"), Claim(role="tpm", agent_id="agent-7"))
    ]
    # Recorded before it was sent; the claim arbitrated as the agent that answered, by HTTP.
    assert councils.recorded == [OPPORTUNITY.id]
    assert councils.claims == [(OPPORTUNITY.id, "agent-7", "tpm", "http")]


async def test_a_bad_discovered_endpoint_is_reported_not_called(
    nats_server: EmbeddedNats, nc: NATS, unique: str
) -> None:
    """Whatever enters as an endpoint, only scheme, host and port are ever called."""
    names = Names(prefix=f"t{unique}", agents_bucket=f"agents_{unique}")
    async with recorder("127.40.0.52") as (port, seen):
        settings = Settings(subject_prefix=names.prefix, bus_ack_wait=0.1)
        target = Target(agent_id="a1", endpoint=f"http://127.40.0.52:{port}/x?y=1#")
        acks = AckDesk(nc, names)
        async with AgentHTTP(settings) as http, acks.taking():
            broadcaster = Broadcaster(
                nc, names, settings, http, lambda: [target], acks=acks, councils=RecordedCouncils()
            )
            report = await broadcaster.broadcast(OPPORTUNITY)
    assert seen == []
    (failure,) = report.failed
    assert failure.error.startswith("not an endpoint")


@pytest.mark.parametrize(
    "endpoint",
    [
        "http://user:secret@127.0.0.5:8080",
        "http://127.0.0.5:8080?x=1",
        "http://127.0.0.5:8080#",
        "http://127.0.0.5:8080/admin#",
    ],
)
def test_a_known_endpoint_with_more_than_host_and_port_is_a_config_error(endpoint: str) -> None:
    env: dict[str, Any] = {"WHOOSH_KNOWN_ENDPOINTS": f"http://127.0.0.4:8080,{endpoint}"}
    with pytest.raises(ConfigError) as caught:
        load_settings(env)
    assert caught.value.variable == "WHOOSH_KNOWN_ENDPOINTS"
    assert "secret" not in str(caught.value)
