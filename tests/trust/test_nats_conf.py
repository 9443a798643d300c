"""nats.conf, run by a real nats-server: each role can do its job and nothing it must not."""

from __future__ import annotations

import asyncio
import contextlib
import re
import socket
from collections.abc import AsyncIterator
from pathlib import Path

import nats
import nats.errors
import pytest
from nats import micro
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.js.api import KeyValueConfig
from nats.js.kv import KeyValue
from nats.micro.request import Request

from bridge.broadcast.api import BROADCAST_QUEUE
from bridge.bus.presence import Presence
from bridge.bus.registry import AgentRegistry, open_bucket
from bridge.config import Settings
from bridge.contract.buckets import councils_bucket
from bridge.contract.messages import COUNCIL_STATE_DECODER, HOLDER_DECODER
from bridge.contract.names import Names
from bridge.devkit.emulator import EmulatedSwarm
from bridge.devkit.sim import SimFleet, allocate_addresses
from bridge.edges.kv import bucket_config
from bridge.edges.nats_server import EmbeddedNats
from tests.conftest import RunningBridge, run_bridge, wait_for
from tests.trust.support import HEARD_WAIT, until_heard

NATS_CONF = Path(__file__).resolve().parents[2] / "nats.conf"
PASSWORDS = {
    "BRIDGE_PASS": "bridge-secret",
    "AGENT_PASS": "agent-secret",
    "COORD_PASS": "coord-secret",
    "OPS_PASS": "ops-secret",
    "SYS_PASS": "sys-secret",
}
ROLES = {  # user -> (password variable, inbox prefix)
    "bridge": ("BRIDGE_PASS", "_INBOX.bridge"),
    "agent": ("AGENT_PASS", "_INBOX.agent"),
    "coordinator": ("COORD_PASS", "_INBOX.coord"),
}
NAMES = Names(prefix="chorus", agents_bucket="chorus_agents")
AGENTS, PRESENCE, LEADER = NAMES.agents_bucket, NAMES.presence_bucket, NAMES.leader_bucket
COUNCILS = NAMES.councils_bucket
DENIAL_WAIT = 5.0


def _test_copy_of_conf(directory: Path) -> Path:
    """nats.conf as shipped, less the two lines that only make sense in the container.

    The server takes its store directory from EmbeddedNats's flags (a second store_dir is an
    error), and monitoring is off so that nothing listens beyond loopback.
    """
    text = NATS_CONF.read_text()
    for line in (r"^\s*store_dir: /data\s*$", r"^\s*http: [0-9.]+:8222\s*$"):
        text, count = re.subn(line, "", text, flags=re.MULTILINE)
        assert count == 1, f"nats.conf no longer has exactly one line matching {line!r}"
    path = directory / "nats-test.conf"
    path.write_text(text)
    return path


class Peer:
    """A client connected as one role, collecting the permission violations the server reports."""

    def __init__(self, nc: NATS, violations: asyncio.Queue[str]) -> None:
        self.nc = nc
        self.js = nc.jetstream(timeout=2)
        self._violations = violations

    async def violation(self, kind: str, subject: str) -> None:
        """Waits, with a deadline, for the server to report a denied `kind` on `subject`.

        kind is "publish" or "subscription"; nats-py hands the message over in lower case.
        """
        async with asyncio.timeout(DENIAL_WAIT):
            message = await self._violations.get()
        assert f'permissions violation for {kind} to "{subject.lower()}"' in message.lower()

    def no_violations(self) -> bool:
        return self._violations.empty()


@pytest.fixture
async def secured_server(tmp_path: Path) -> AsyncIterator[EmbeddedNats]:
    """A real nats-server running this repository's nats.conf with test passwords."""
    conf = _test_copy_of_conf(tmp_path)
    async with EmbeddedNats(
        port=0, store_dir=tmp_path / "nats", config_file=conf, env=PASSWORDS
    ) as server:
        yield server


@contextlib.asynccontextmanager
async def _peer(server: EmbeddedNats, user: str) -> AsyncIterator[Peer]:
    variable, inbox = ROLES[user]
    violations: asyncio.Queue[str] = asyncio.Queue()

    async def on_error(exc: Exception) -> None:
        violations.put_nowait(str(exc))

    nc = await nats.connect(
        server.url,
        user=user,
        password=PASSWORDS[variable],
        inbox_prefix=inbox,
        error_cb=on_error,
        max_reconnect_attempts=1,
        connect_timeout=2,
    )
    try:
        yield Peer(nc, violations)
    finally:
        await nc.close()


@pytest.fixture
async def bridge(secured_server: EmbeddedNats) -> AsyncIterator[Peer]:
    """The bridge's user, with the four buckets created as the bridge creates them."""
    async with _peer(secured_server, "bridge") as peer:
        await open_bucket(peer.js, AgentRegistry(peer.nc, NAMES).bucket_config())
        await open_bucket(peer.js, bucket_config(councils_bucket(NAMES)))
        await open_bucket(peer.js, Presence(peer.nc, NAMES).bucket_config())
        await open_bucket(peer.js, KeyValueConfig(bucket=LEADER, history=1, ttl=10))
        yield peer


@pytest.fixture
async def agent(secured_server: EmbeddedNats) -> AsyncIterator[Peer]:
    """An agent's user."""
    async with _peer(secured_server, "agent") as peer:
        yield peer


@pytest.fixture
async def coordinator(secured_server: EmbeddedNats) -> AsyncIterator[Peer]:
    """A coordinator's user."""
    async with _peer(secured_server, "coordinator") as peer:
        yield peer


async def _next_value(watcher: KeyValue.KeyWatcher, key: str) -> bytes:
    """The value of the next update of `key` a watcher sees (its end-of-history marker skipped)."""
    async with asyncio.timeout(5):
        while True:
            entry = await watcher.updates(timeout=5)  # type: ignore[no-untyped-call]
            if entry is not None and entry.key == key and entry.value:
                value: bytes = entry.value
                return value


async def test_bridge_manages_its_four_buckets(bridge: Peer) -> None:
    """The bridge can put, get, watch and delete in the agents, presence, leader and councils
    buckets."""
    for bucket in (AGENTS, PRESENCE, LEADER, COUNCILS):
        kv = await bridge.js.key_value(bucket)
        watcher = await kv.watchall()
        await kv.put("task1", b'{"id": "task1"}')
        assert (await kv.get("task1")).value == b'{"id": "task1"}'
        assert await _next_value(watcher, "task1") == b'{"id": "task1"}'
        await kv.delete("task1")
        with pytest.raises(nats.js.errors.KeyNotFoundError):
            await kv.get("task1")
        await watcher.stop()  # type: ignore[no-untyped-call]
    assert bridge.no_violations()


async def test_bridge_announces_and_serves_broadcast_requests(
    bridge: Peer, coordinator: Peer
) -> None:
    """The bridge publishes announcements and answers a coordinator's broadcast request."""
    announcements = await coordinator.nc.subscribe("chorus.agents.announce")
    await coordinator.nc.flush()  # subscribed on the server before anyone publishes

    async def serve(msg: Msg) -> None:
        await msg.respond(b'{"opportunity_id": "council-1", "total_agents": 0}')

    await bridge.nc.subscribe("chorus.bridge.broadcast", queue=BROADCAST_QUEUE, cb=serve)
    await bridge.nc.flush()
    await bridge.nc.publish("chorus.agents.announce", b'{"event": "joined"}')
    assert (await announcements.next_msg(timeout=5)).data == b'{"event": "joined"}'
    reply = await coordinator.nc.request(
        "chorus.bridge.broadcast", b'{"id": "council-1"}', timeout=5
    )
    assert reply.data == b'{"opportunity_id": "council-1", "total_agents": 0}'
    assert bridge.no_violations() and coordinator.no_violations()


async def test_bridge_takes_broadcasts_only_in_its_queue_group(bridge: Peer) -> None:
    """A plain subscription to the broadcast subject is refused: replicas share it in a queue."""
    await bridge.nc.subscribe("chorus.bridge.broadcast")
    await bridge.nc.flush()
    await bridge.violation("subscription", "chorus.bridge.broadcast")


async def test_agent_acks_opportunities_and_claims_roles(
    bridge: Peer, agent: Peer, coordinator: Peer
) -> None:
    """An agent (account AGENTS) receives the bridge's opportunity and acks and claims on its
    own subjects; the bridge hears the ack and a coordinator the claim, in CHORUS."""
    acks = await bridge.nc.subscribe("chorus.council.*.acks.*")
    claims = await coordinator.nc.subscribe("chorus.council.*.claims.*")
    await bridge.nc.flush()  # subscribed on the server before anyone publishes
    await coordinator.nc.flush()
    ack_body = b'{"agent_id": "a1", "opportunity_id": "council-1"}'
    claim_body = b'{"role": "tpm", "agent_id": "a1"}'

    async def on_opportunity(msg: Msg) -> None:
        assert msg.data == b'{"id": "council-1"}'
        await agent.nc.publish("chorus.council.council-1.acks.a1", ack_body)
        await agent.nc.publish("chorus.council.council-1.claims.a1", claim_body)

    await agent.nc.subscribe("chorus.council.opportunities", cb=on_opportunity)
    await agent.nc.flush()
    ack = await until_heard(
        lambda: bridge.nc.publish("chorus.council.opportunities", b'{"id": "council-1"}'),
        lambda: acks.next_msg(timeout=HEARD_WAIT),
    )
    assert (ack.subject, ack.data) == ("chorus.council.council-1.acks.a1", ack_body)
    claim = await claims.next_msg(timeout=5)
    assert (claim.subject, claim.data) == ("chorus.council.council-1.claims.a1", claim_body)
    assert agent.no_violations() and bridge.no_violations()


async def test_agent_hears_announcements_and_writes_presence_without_jetstream(
    bridge: Peer, agent: Peer, coordinator: Peer
) -> None:
    """An agent hears announcements and council events; its presence write is a plain
    publish that reaches the bridge's account (where the presence bucket's inbound stream
    takes it: tests/trust/test_agents_account.py); JetStream is no part of its account."""
    heard = await agent.nc.subscribe("chorus.agents.announce")
    events = await agent.nc.subscribe("chorus.council.*.events")
    await agent.nc.flush()  # subscribed on the server before anyone publishes
    announcement = await until_heard(
        lambda: bridge.nc.publish("chorus.agents.announce", b'{"event": "joined"}'),
        lambda: heard.next_msg(timeout=HEARD_WAIT),
    )
    assert announcement.data == b'{"event": "joined"}'
    event = await until_heard(
        lambda: bridge.nc.publish("chorus.council.council-1.events", b'{"event": "activated"}'),
        lambda: events.next_msg(timeout=HEARD_WAIT),
    )
    assert (event.subject, event.data) == (
        "chorus.council.council-1.events",
        b'{"event": "activated"}',
    )

    arrived = await coordinator.nc.subscribe("chorus.presence.in.task1")
    await coordinator.nc.flush()
    write = await until_heard(
        lambda: agent.nc.publish("$KV.chorus_presence.task1", b'{"agent_id": "task1"}'),
        lambda: arrived.next_msg(timeout=HEARD_WAIT),
    )
    assert write.data == b'{"agent_id": "task1"}'
    assert agent.no_violations()

    with pytest.raises(nats.errors.TimeoutError):
        await agent.js.key_value(AGENTS)
    await agent.violation("publish", f"$JS.API.STREAM.INFO.KV_{AGENTS}")


async def test_agent_cannot_write_the_agents_bucket(bridge: Peer, agent: Peer) -> None:
    """An agent's write on the agents bucket's subject is refused and changes nothing."""
    await agent.nc.publish("$KV.chorus_agents.forged", b'{"id": "forged"}')
    await agent.nc.flush()
    await agent.violation("publish", "$KV.chorus_agents.forged")
    with pytest.raises(nats.js.errors.KeyNotFoundError):
        await (await bridge.js.key_value(AGENTS)).get("forged")


async def test_agent_cannot_write_the_councils_bucket(
    bridge: Peer, agent: Peer, coordinator: Peer
) -> None:
    """Holders are the bridge's to write: an agent's put is refused (and it cannot read the
    bucket either); a coordinator reads it, and cannot write it."""
    with pytest.raises(nats.errors.TimeoutError):
        await agent.nc.request("$KV.chorus_councils.c-1.tpm", b'{"agent_id": "me"}', timeout=1)
    await agent.violation("publish", "$KV.chorus_councils.c-1.tpm")
    await (await bridge.js.key_value(COUNCILS)).put("c-1.tpm", b'{"agent_id": "a1"}')
    councils = await coordinator.js.key_value(COUNCILS)
    assert (await councils.get("c-1.tpm")).value == b'{"agent_id": "a1"}'
    with pytest.raises(nats.errors.TimeoutError):
        await councils.put("c-1.tpm", b'{"agent_id": "forged"}')
    await coordinator.violation("publish", "$KV.chorus_councils.c-1.tpm")


async def test_agent_cannot_request_a_broadcast(bridge: Peer, agent: Peer) -> None:
    """An agent's request on the broadcast subject is refused and never reaches the bridge."""
    received: list[Msg] = []

    async def serve(msg: Msg) -> None:
        received.append(msg)
        await msg.respond(b"{}")

    await bridge.nc.subscribe("chorus.bridge.broadcast", queue=BROADCAST_QUEUE, cb=serve)
    await bridge.nc.flush()
    with pytest.raises(nats.errors.TimeoutError):
        await agent.nc.request("chorus.bridge.broadcast", b'{"id": "council-1"}', timeout=1)
    await agent.violation("publish", "chorus.bridge.broadcast")
    await bridge.nc.flush()
    assert received == []


async def test_coordinator_reads_but_cannot_write_the_agents_bucket(
    bridge: Peer, coordinator: Peer
) -> None:
    """A coordinator reads and watches the agents and presence buckets but cannot put."""
    await (await bridge.js.key_value(AGENTS)).put("task1", b'{"id": "task1"}')
    await (await bridge.js.key_value(PRESENCE)).put("task1", b'{"agent_id": "task1"}')
    agents = await coordinator.js.key_value(AGENTS)
    assert (await agents.get("task1")).value == b'{"id": "task1"}'
    watcher = await agents.watchall()
    assert await _next_value(watcher, "task1") == b'{"id": "task1"}'
    await watcher.stop()  # type: ignore[no-untyped-call]
    presence = await coordinator.js.key_value(PRESENCE)
    assert (await presence.get("task1")).value == b'{"agent_id": "task1"}'
    assert coordinator.no_violations()

    with pytest.raises(nats.errors.TimeoutError):
        await agents.put("task1", b'{"id": "forged"}')
    await coordinator.violation("publish", "$KV.chorus_agents.task1")
    assert (await (await bridge.js.key_value(AGENTS)).get("task1")).value == b'{"id": "task1"}'


async def test_wrong_password_is_refused(secured_server: EmbeddedNats) -> None:
    """A client with a wrong password cannot connect at all."""
    with pytest.raises(nats.errors.Error, match=r"(?i)authorization violation"):
        await nats.connect(
            secured_server.url,
            user="agent",
            password="guess",
            allow_reconnect=False,
            connect_timeout=2,
        )


@contextlib.asynccontextmanager
async def secured_fleet(
    server: EmbeddedNats, swarm: EmulatedSwarm, settings: Settings, base: str
) -> AsyncIterator[tuple[RunningBridge, list[str]]]:
    """A real bridge as user `bridge`, and 4 agents (2 on the bus, as user `agent`) on
    loopback addresses from `base`; yields once both bus agents are seen on the bus."""
    addresses = allocate_addresses(4, base)
    task_ids = swarm.add_tasks(4, addresses=addresses)
    with socket.socket() as probe:  # the agents' port, known before they start
        probe.bind((addresses[0], 0))
        port = probe.getsockname()[1]
    secured = settings.replace(
        subject_prefix="chorus",
        kv_bucket="chorus_agents",
        nats_user="bridge",
        nats_password=PASSWORDS["BRIDGE_PASS"],
        agent_port=port,
        bus_ack_wait=2.0,
    )
    # The bridge first: it creates the presence bucket, which agents may only use.
    async with (
        run_bridge(secured, server.url) as running,
        SimFleet(
            4,
            on_bus={0, 1},
            nats_url=server.url,
            names=NAMES,
            base=base,
            port=port,
            task_ids=task_ids,
            nats_user="agent",
            nats_password=PASSWORDS["AGENT_PASS"],
            jetstream=False,  # agents live in AGENTS
            connections=2,  # one connection per agent, as real agents have
        ),
    ):
        registry = running.bridge.registry
        assert registry is not None
        await wait_for(
            lambda: sum(a.on_bus for a in registry.published.values()) == 2,
            what="the two bus agents on the bus",
        )
        yield running, task_ids


async def test_real_bridge_works_with_its_user_alone(
    secured_server: EmbeddedNats, swarm: EmulatedSwarm, settings: Settings
) -> None:
    """The bridge as user `bridge`, agents as `agent`, a coordinator as `coordinator`: the
    bucket fills, presence is seen, a broadcast reaches everyone, and nothing is denied."""
    from bridge.contract.messages import BroadcastReport, decode_reply

    async with (
        secured_fleet(secured_server, swarm, settings, "127.28.0.1") as (running, task_ids),
        _peer(secured_server, "coordinator") as coordinator,
    ):
        registry = running.bridge.registry
        assert registry is not None
        assert set(registry.published) == set(task_ids)
        msg = await coordinator.nc.request(
            NAMES.broadcast, b'{"id": "c-9", "roles": [{"name": "tpm", "core": true}]}', timeout=10
        )
        report = decode_reply(msg.data)
        assert isinstance(report, BroadcastReport)
        assert (report.success_count, report.via_bus, report.via_http) == (4, 2, 2)
        # Agent 0 claimed tpm (its core role number 0) on the bus: the council is active.

        async def active() -> bool:
            reply = await coordinator.nc.request(
                NAMES.council, b'{"opportunity_id": "c-9"}', timeout=5
            )
            return COUNCIL_STATE_DECODER.decode(reply.data).state == "active"

        await wait_for(active, what="the council active")
        holder = await (await coordinator.js.key_value(COUNCILS)).get("c-9.tpm")
        assert HOLDER_DECODER.decode(holder.value or b"").agent_id == task_ids[0]
        assert coordinator.no_violations()


async def test_coordinator_reads_the_leader_key(bridge: Peer, coordinator: Peer) -> None:
    """`nats kv get chorus_bridge leader` as coordinator: the leader bucket is readable."""
    await (await bridge.js.key_value(LEADER)).put("leader", b'{"id": "bridge-1"}')
    leader = await coordinator.js.key_value(LEADER)
    assert (await leader.get("leader")).value == b'{"id": "bridge-1"}'
    assert coordinator.no_violations()
    with pytest.raises(nats.errors.TimeoutError):
        await leader.put("leader", b'{"id": "forged"}')
    await coordinator.violation("publish", "$KV.chorus_bridge.leader")


async def test_coordinator_finds_the_bridges_micro_service(
    secured_server: EmbeddedNats, bridge: Peer, coordinator: Peer
) -> None:
    """The bridge's user runs the micro service; a coordinator pings, gets its info and stats."""

    async def serve(request: Request) -> None:
        await request.respond(b"{}")

    service = await micro.add_service(
        bridge.nc, name="chorus-bridge", version="1.0.0", queue_group=BROADCAST_QUEUE
    )
    await service.add_endpoint(name="broadcast", subject="chorus.bridge.broadcast", handler=serve)
    # The subscriptions are the bridge connection's; a request on another connection finds
    # them only once the server has them (a loaded machine showed "no responders" without).
    await bridge.nc.flush()
    for verb in ("PING", "INFO", "STATS"):
        reply = await coordinator.nc.request(f"$SRV.{verb}.chorus-bridge", b"", timeout=5)
        assert b'"name": "chorus-bridge"' in reply.data
    assert (await coordinator.nc.request("chorus.bridge.broadcast", b"{}", timeout=5)).data == b"{}"
    await service.stop()
    assert bridge.no_violations() and coordinator.no_violations()


async def test_cli_names_the_user_and_subject_it_was_denied(
    secured_server: EmbeddedNats, bridge: Peer
) -> None:
    """`broadcast` and `agents` as agent: exit status 3 and one line naming the user and the
    subject (agents have no JetStream: they ask the bridge for the roster instead)."""
    from tests.cli.test_cli import command

    as_agent = {
        "NATS_URL": secured_server.url,
        "NATS_USER": "agent",
        "NATS_PASSWORD": PASSWORDS["AGENT_PASS"],
    }
    loop = asyncio.get_running_loop()
    started = loop.time()
    code, _, err = await command(
        "broadcast", "-", stdin=b'{"id": "c", "roles": [{"name": "a"}]}', **as_agent
    )
    print(
        f"broadcast as agent: denied, exit {code}, after {loop.time() - started:.2f} s "
        "(the command's timeout is 60 s)"
    )
    assert code == 3
    assert err.strip().splitlines() == [
        f"chorus-bridge: NatsError: permission denied: NATS user 'agent' may not publish to "
        f"chorus.bridge.broadcast on {secured_server.url} (see the user's permissions in "
        "nats.conf)"
    ]
    code, _, err = await command("agents", **as_agent)
    assert code == 3
    assert err.strip().splitlines() == [
        f"chorus-bridge: NatsError: permission denied: NATS user 'agent' may not publish to "
        f"$JS.API.STREAM.INFO.KV_chorus_agents on {secured_server.url} (see the user's "
        "permissions in nats.conf)"
    ]


async def test_cli_says_which_user_was_refused(secured_server: EmbeddedNats) -> None:
    """A wrong password, in the URL: exit status 3, one line naming the user, no password."""
    from tests.cli.test_cli import command

    url = secured_server.url.replace("nats://", "nats://coordinator:not-the-password@")
    code, _, err = await command("agents", NATS_URL=url)
    assert code == 3
    assert err.strip().splitlines() == [
        f"chorus-bridge: NatsError: NATS at {secured_server.url} refused user 'coordinator' "
        "(Authorization Violation): check NATS_USER/NATS_PASSWORD, NATS_TOKEN or NATS_CREDS"
    ]


def test_monitoring_listens_on_loopback_only() -> None:
    """Monitoring has no authentication and maps every client to its address: nats.conf puts
    it on 127.0.0.1 (the container's healthcheck reaches it there), and the callout and
    cluster configurations, which include nats.conf, open no other."""
    root = NATS_CONF.parent
    assert re.findall(r"^\s*http\s*:\s*(\S+)", NATS_CONF.read_text(), re.MULTILINE) == [
        "127.0.0.1:8222"
    ]
    for name in ("nats-callout.conf", "nats-cluster.conf", "nats-cluster-callout.conf"):
        text = (root / name).read_text()
        assert not re.search(r"^\s*(http|https|monitor_port)\s*:", text, re.MULTILINE), name
