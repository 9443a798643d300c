"""DNS fallback against a real DNS server on loopback (UDP and TCP)."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator

import dns.asyncquery
import dns.asyncresolver
import dns.flags
import dns.message
import dns.nameserver
import pytest
from structlog.testing import capture_logs

from bridge.config import Settings
from bridge.contract.messages import Agent
from bridge.discovery.dns import DnsDiscovery
from tests.dns_server import DnsTestServer

TASKS = "tasks.CHORUS_chorus"
OTHER = "tasks.CHORUS_other"
# DNS data only: no traffic is ever sent to these addresses.
SWARM_IPS = [f"10.0.1.{n}" for n in range(2, 36)]


@pytest.fixture
async def server() -> AsyncIterator[DnsTestServer]:
    """A DNS server on 127.0.0.1 that truncates UDP answers at 512 bytes."""
    async with DnsTestServer() as dns_server:
        yield dns_server


def discovery(
    server: DnsTestServer, *names: str, known: tuple[str, ...] = (), timeout: float = 2.0
) -> DnsDiscovery:
    resolver = dns.asyncresolver.Resolver(configure=False)
    resolver.nameservers = [dns.nameserver.Do53Nameserver(server.host, server.port)]
    settings = Settings(dns_names=names, known_endpoints=known, agent_port=8080)
    return DnsDiscovery(settings, resolver, timeout=timeout)


async def test_truncated_udp_answer_is_retried_over_tcp(server: DnsTestServer) -> None:
    """34 tasks behind a DNS that truncates UDP at 512 bytes are 34 agents, not ~29."""
    server.set(TASKS, SWARM_IPS)
    query = dns.message.make_query(TASKS, "A")
    udp = await dns.asyncquery.udp(query, server.host, port=server.port, timeout=2)
    assert udp.flags & dns.flags.TC and len(udp.answer[0]) < 34  # the server does truncate

    result = await discovery(server, TASKS).discover()

    assert sorted(a.address for a in result.agents) == sorted(SWARM_IPS)
    assert result.complete and result.failures == {}
    assert server.tcp_queries >= 1


async def test_agent_fields_match_the_contract(server: DnsTestServer) -> None:
    """A resolved address becomes `dns-10-0-1-6-8080` at `http://10.0.1.6:8080`, facts only."""
    server.set(TASKS, ["10.0.1.6"])

    result = await discovery(server, TASKS).discover()

    assert result.agents == (
        Agent(
            id="dns-10-0-1-6-8080",
            endpoint="http://10.0.1.6:8080",
            address="10.0.1.6",
            port=8080,
            source="dns",
        ),
    )
    agent = result.agents[0]
    assert agent.healthy is None and agent.on_bus is False and agent.first_seen == ""
    assert all(
        value is None
        for value in (
            agent.service,
            agent.network,
            agent.task_id,
            agent.slot,
            agent.node_id,
            agent.container_id,
        )
    )


async def test_ipv6_addresses_get_dashed_ids_and_bracketed_endpoints(server: DnsTestServer) -> None:
    """AAAA records are agents too, keyed `dns-fd00--1-8080`, next to the A records."""
    server.set(TASKS, ["10.0.1.6", "fd00::1"])

    result = await discovery(server, TASKS).discover()

    by_id = {a.id: a for a in result.agents}
    assert set(by_id) == {"dns-10-0-1-6-8080", "dns-fd00--1-8080"}
    assert by_id["dns-fd00--1-8080"].endpoint == "http://[fd00::1]:8080"
    assert by_id["dns-fd00--1-8080"].address == "fd00::1"


async def test_nxdomain_is_an_empty_complete_round(server: DnsTestServer) -> None:
    """A name that does not exist answers "nobody": the round is complete and empty."""
    server.fail(TASKS, "nxdomain")

    result = await discovery(server, TASKS).discover()

    assert result.agents == () and result.complete and result.failures == {}


async def test_name_without_addresses_is_a_complete_round(server: DnsTestServer) -> None:
    """A name that exists with no address (scaled to zero) is an empty answer, not a failure."""
    server.set(TASKS, [])

    result = await discovery(server, TASKS).discover()

    assert result.agents == () and result.complete


@pytest.mark.parametrize(
    ("behaviour", "reason"), [("servfail", "SERVFAIL"), ("refused", "REFUSED")]
)
async def test_server_failure_makes_the_round_incomplete(
    server: DnsTestServer, behaviour: str, reason: str
) -> None:
    """SERVFAIL or REFUSED fails the name, named in `failures`, and the round is incomplete."""
    server.fail(TASKS, behaviour)  # type: ignore[arg-type]

    result = await discovery(server, TASKS).discover()

    assert not result.complete
    assert result.failures == {TASKS: reason}


async def test_silent_names_time_out_concurrently(server: DnsTestServer) -> None:
    """Names whose server never answers fail as "timeout", together in about one timeout."""
    server.fail(TASKS, "drop")
    server.fail(OTHER, "drop")
    started = time.monotonic()

    result = await discovery(server, TASKS, OTHER, timeout=2.0).discover()

    # One after the other would take at least 4 s.
    assert time.monotonic() - started < 3.5
    assert not result.complete
    assert result.failures == {TASKS: "timeout", OTHER: "timeout"}


async def test_failed_name_keeps_the_other_names_agents(server: DnsTestServer) -> None:
    """One failing name makes the round incomplete but the other name's agents are kept."""
    server.set(TASKS, ["10.0.1.2", "10.0.1.3"])
    server.fail(OTHER, "servfail")

    result = await discovery(server, TASKS, OTHER).discover()

    assert [a.address for a in result.agents] == ["10.0.1.2", "10.0.1.3"]
    assert not result.complete and set(result.failures) == {OTHER}


async def test_overlapping_names_are_deduplicated(server: DnsTestServer) -> None:
    """An address returned by two names is one agent; the output is sorted by id."""
    server.set(TASKS, ["10.0.1.4", "10.0.1.2", "10.0.1.3"])
    server.set(OTHER, ["10.0.1.3", "10.0.1.5"])

    result = await discovery(server, TASKS, OTHER).discover()

    ids = [a.id for a in result.agents]
    assert ids == [
        "dns-10-0-1-2-8080",
        "dns-10-0-1-3-8080",
        "dns-10-0-1-4-8080",
        "dns-10-0-1-5-8080",
    ]


async def test_known_endpoints_are_static_and_win_over_dns(server: DnsTestServer) -> None:
    """Known endpoints are always agents of source static, even when DNS also finds them."""
    server.set(TASKS, ["10.0.1.6", "10.0.1.7"])
    known = ("http://10.0.1.6:9000", "https://agent-a.example:8443")

    result = await discovery(server, TASKS, known=known).discover()

    assert result.agents == (
        Agent(
            id="dns-10-0-1-6-9000",
            endpoint="http://10.0.1.6:9000",
            address="10.0.1.6",
            port=9000,
            source="static",
        ),
        Agent(
            id="dns-10-0-1-7-8080",
            endpoint="http://10.0.1.7:8080",
            address="10.0.1.7",
            port=8080,
            source="dns",
        ),
        Agent(
            id="dns-agent-a-example-8443",
            endpoint="https://agent-a.example:8443",
            address="agent-a.example",
            port=8443,
            source="static",
        ),
    )


async def test_known_endpoints_survive_a_failed_round(server: DnsTestServer) -> None:
    """When every name fails, the known endpoints are still listed."""
    server.fail(TASKS, "servfail")

    result = await discovery(server, TASKS, known=("http://[FD00:0::2]:8080",)).discover()

    assert [(a.id, a.address, a.source) for a in result.agents] == [
        ("dns-fd00--2-8080", "fd00::2", "static")
    ]
    assert not result.complete


async def test_literal_ip_names_need_no_query(server: DnsTestServer) -> None:
    """A name that is an IP address is an agent as is, without asking the DNS server."""
    result = await discovery(server, "10.0.1.9", "fd00::9").discover()

    assert [a.id for a in result.agents] == ["dns-10-0-1-9-8080", "dns-fd00--9-8080"]
    assert result.complete
    assert server.udp_queries == server.tcp_queries == 0


async def test_failure_and_recovery_are_logged_once(server: DnsTestServer) -> None:
    """A failing name logs one line when it starts failing and one when it recovers."""
    source = discovery(server, TASKS)
    server.fail(TASKS, "servfail")
    with capture_logs() as logs:
        for _ in range(3):
            await source.discover()
        server.set(TASKS, ["10.0.1.2"])
        for _ in range(2):
            await source.discover()

    events = [(e["event"], e["name"]) for e in logs if e["event"].startswith("dns_name")]
    assert events == [("dns_name_failing", TASKS), ("dns_name_recovered", TASKS)]


async def test_answer_cut_without_tc_still_gives_every_task(server: DnsTestServer) -> None:
    """A resolver that cuts a 40-record UDP answer at 512 bytes without setting TC: the
    tasks.<service> name still gives 40 agents (it is asked over TCP)."""
    forty = [f"10.0.2.{n}" for n in range(2, 42)]
    server.set(TASKS, forty)
    server.set_tc = False
    query = dns.message.make_query(TASKS, "A")
    udp = await dns.asyncquery.udp(query, server.host, port=server.port, timeout=2)
    assert not udp.flags & dns.flags.TC and len(udp.answer[0]) < 40  # cut, silently

    result = await discovery(server, TASKS).discover()

    assert sorted(a.address for a in result.agents) == sorted(forty)
    assert result.complete


async def test_own_tasks_name_can_be_left_out(server: DnsTestServer) -> None:
    """discover(own=False) asks every name but the service's own tasks.<service>."""
    server.set(TASKS, ["10.0.3.2"])
    server.set("agents.example", ["10.0.3.3"])
    found = await discovery(server, TASKS, "agents.example").discover(own=False)
    assert [a.address for a in found.agents] == ["10.0.3.3"]
    everything = await discovery(server, TASKS, "agents.example").discover()
    assert sorted(a.address for a in everything.agents) == ["10.0.3.2", "10.0.3.3"]
