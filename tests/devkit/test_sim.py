"""Simulated agents: HTTP on loopback addresses, presence and acks on a real nats-server."""

from __future__ import annotations

import asyncio
import resource
import socket
from collections.abc import AsyncIterator

import httpx
import msgspec
import pytest
from nats.aio.client import Client as NATS
from nats.js.kv import KeyValue

from bridge.contract.messages import (
    ACK_DECODER,
    CLAIM_DECODER,
    PRESENCE_DECODER,
    Ack,
    CouncilOpportunity,
    PresenceEntry,
    encode,
)
from bridge.contract.names import Names
from bridge.devkit.sim import (
    DEFAULT_OPPORTUNITY_PATH,
    HUGE_BODY_BYTES,
    Behaviour,
    SimFleet,
    allocate_addresses,
    presence_bucket_config,
    run_single_agent,
    spread_on_bus,
)
from bridge.devkit.sim.errors import SimulationError
from bridge.edges.kv import snapshot_of
from bridge.edges.nats_server import EmbeddedNats
from tests.conftest import OPPORTUNITY, wait_for

# Loopback addresses only; each test uses its own range so that tests running side by side
# never share an address and port.
PATH = DEFAULT_OPPORTUNITY_PATH


@pytest.fixture
def names(unique: str) -> Names:
    """Subject and bucket names of a deployment of its own."""
    return Names(prefix=f"t{unique}", agents_bucket=f"t{unique}_agents")


@pytest.fixture
async def http() -> AsyncIterator[httpx.AsyncClient]:
    """An HTTP client that ignores proxy settings, so requests stay on loopback."""
    async with httpx.AsyncClient(trust_env=False, timeout=5) as client:
        yield client


async def post(
    http: httpx.AsyncClient, endpoint: str, key: str | None = "council-42", timeout: float = 5
) -> httpx.Response:
    headers = {"Idempotency-Key": key} if key else {}
    return await http.post(
        endpoint + PATH, content=encode(OPPORTUNITY), headers=headers, timeout=timeout
    )


async def presence_entries(nc: NATS, names: Names) -> dict[str, PresenceEntry]:
    """The live entries of the presence bucket (purged and expired ones left out).

    Read through the bridge's snapshot: a bare nats-py watch may mark "no more current
    values" before delivering the first one when the machine is loaded.
    """
    kv = await nc.jetstream().key_value(names.presence_bucket)
    entries = await snapshot_of(kv, timeout=10, name=names.presence_bucket)
    return {
        key: PRESENCE_DECODER.decode(entry.value)
        for key, entry in entries.items()
        if entry.operation is None and entry.value
    }


async def collect_acks(
    nc: NATS, names: Names, opportunity: CouncilOpportunity, last_id: str, deadline: float = 5.0
) -> list[Ack]:
    """Publish; gather acks on the opportunity's ack subjects until `last_id` (the last agent)
    has acked. Each ack's subject names the agent that sent it, as its body does.

    With one connection, agents answer in index order over one socket, so the last agent's
    ack comes after every ack the others sent.
    """
    sub = await nc.subscribe(names.acks(opportunity.id, "*"))
    await nc.publish(names.opportunities, encode(opportunity))
    acks: list[Ack] = []
    async with asyncio.timeout(deadline):
        while not acks or acks[-1].agent_id != last_id:
            msg = await sub.next_msg(timeout=deadline)
            ack = ACK_DECODER.decode(msg.data)
            assert msg.subject == names.acks(opportunity.id, ack.agent_id)
            acks.append(ack)
    await sub.unsubscribe()
    return acks


class TestAddresses:
    def test_addresses_skip_zero_and_broadcast(self) -> None:
        """Allocated addresses are distinct loopback addresses, never ending in .0 or .255."""
        addresses = allocate_addresses(600, "127.60.0.250")

        assert len(set(addresses)) == 600
        assert addresses[:6] == [
            "127.60.0.250",
            "127.60.0.251",
            "127.60.0.252",
            "127.60.0.253",
            "127.60.0.254",
            "127.60.1.1",
        ]
        assert not any(a.endswith((".0", ".255")) for a in addresses)

    def test_non_loopback_base_is_refused(self) -> None:
        """A base outside 127.0.0.0/8 is refused, so no agent ever listens elsewhere."""
        with pytest.raises(ValueError, match="loopback"):
            allocate_addresses(2, "10.0.1.1")

    def test_bus_agents_are_spread_evenly(self) -> None:
        """17 of 34 agents on the bus are every other agent; all and none work too."""
        assert spread_on_bus(34, 17) == set(range(1, 34, 2))
        assert spread_on_bus(5, 5) == set(range(5))
        assert spread_on_bus(5, 0) == set()


class TestHttpAgents:
    async def test_agents_listen_on_distinct_addresses_and_one_port(
        self, http: httpx.AsyncClient
    ) -> None:
        """Each agent answers on its own address, all on the one port the fleet chose."""
        async with SimFleet(3, base="127.60.1.1") as fleet:
            assert fleet.addresses == ["127.60.1.1", "127.60.1.2", "127.60.1.3"]
            assert {agent.port for agent in fleet.agents} == {fleet.port}
            for agent in fleet.agents:
                response = await http.get(agent.endpoint + "/health")
                assert response.status_code == 200
                assert response.json()["agent_id"] == agent.id

    async def test_opportunity_is_recorded_with_its_idempotency_key(
        self, http: httpx.AsyncClient
    ) -> None:
        """A POSTed opportunity is recorded by that agent only, with its Idempotency-Key."""
        async with SimFleet(3, base="127.60.2.1", claim_policy=None) as fleet:
            response = await post(http, fleet.agents[2].endpoint)

            assert response.status_code == 200
            assert response.json() == {"status": "received"}
            [delivery] = fleet.agents[2].received
            assert delivery.via == "http"
            assert delivery.opportunity == OPPORTUNITY
            assert delivery.idempotency_key == "council-42"
            assert fleet.agents[0].received == fleet.agents[1].received == []
            assert fleet.reached("council-42") == {"sim-2"}

    async def test_agents_claim_core_roles_by_index(self, http: httpx.AsyncClient) -> None:
        """Agent i answers a claim of core role i; agents beyond the core roles just receive."""
        async with SimFleet(3, base="127.60.3.1") as fleet:
            answers = [(await post(http, agent.endpoint)).json() for agent in fleet.agents]

        claims = [CLAIM_DECODER.decode(msgspec.json.encode(a)) for a in answers[:2]]
        assert [(c.role, c.agent_id) for c in claims] == [
            ("tpm", "sim-0"),
            ("senior-software-architect", "sim-1"),
        ]
        assert answers[2] == {"status": "received"}

    async def test_invalid_opportunity_is_refused(self, http: httpx.AsyncClient) -> None:
        """A body that is not a valid opportunity gets 400 and is not recorded."""
        async with SimFleet(1, base="127.60.4.1") as fleet:
            agent = fleet.agents[0]
            response = await http.post(agent.endpoint + PATH, json={"id": "x", "roles": []})

            assert response.status_code == 400
            assert "roles" in response.json()["error"]
            assert agent.received == []

    async def test_caller_ids_and_task_ids(self) -> None:
        """Agents take the ids the caller gives; task ids are also their task_id."""
        async with SimFleet(2, base="127.60.5.1", task_ids=["t0abc", "t1abc"]) as fleet:
            assert [(a.id, a.task_id) for a in fleet.agents] == [
                ("t0abc", "t0abc"),
                ("t1abc", "t1abc"),
            ]
            assert fleet.agent("t1abc").index == 1
        async with SimFleet(1, base="127.60.5.9", ids=["alpha"]) as fleet:
            assert (fleet.agents[0].id, fleet.agents[0].task_id) == ("alpha", None)

    async def test_taken_port_is_a_clear_error(self) -> None:
        """A fleet asked for a port another socket holds on its addresses fails clearly."""
        with socket.socket() as taken:
            taken.bind(("127.60.6.2", 0))
            taken.listen()
            port = taken.getsockname()[1]
            with pytest.raises(SimulationError, match=f"port {port}"):
                async with SimFleet(3, base="127.60.6.1", port=port):
                    pass


class TestMisbehaviour:
    @pytest.fixture
    async def fleet(self) -> AsyncIterator[SimFleet]:
        """One agent per misbehaviour; agent 0 behaves."""
        behaviours: dict[int, Behaviour] = {
            1: "500",
            2: "reset",
            3: "hang",
            4: "down",
            5: "slow",
            6: "huge",
            7: "unhealthy",
        }
        async with SimFleet(
            8, base="127.60.7.1", behaviours=behaviours, slow_delay=0.3, claim_policy=None
        ) as sim:
            yield sim

    async def test_500(self, fleet: SimFleet, http: httpx.AsyncClient) -> None:
        """A "500" agent answers 500 (and did receive the opportunity)."""
        response = await post(http, fleet.agents[1].endpoint)

        assert response.status_code == 500
        assert len(fleet.agents[1].received) == 1

    async def test_reset(self, fleet: SimFleet, http: httpx.AsyncClient) -> None:
        """A "reset" agent drops the connection without any response."""
        with pytest.raises((httpx.RemoteProtocolError, httpx.ReadError)):
            await post(http, fleet.agents[2].endpoint)

    async def test_hang(self, fleet: SimFleet, http: httpx.AsyncClient) -> None:
        """A "hang" agent never answers: the client times out."""
        with pytest.raises(httpx.ReadTimeout):
            await post(http, fleet.agents[3].endpoint, timeout=0.3)
        assert len(fleet.agents[3].received) == 1

    async def test_down(self, fleet: SimFleet, http: httpx.AsyncClient) -> None:
        """Nothing listens on a "down" agent's address: connection refused."""
        with pytest.raises(httpx.ConnectError):
            await post(http, fleet.agents[4].endpoint)

    async def test_slow(self, fleet: SimFleet, http: httpx.AsyncClient) -> None:
        """A "slow" agent answers 200, after its delay: a shorter timeout fails, a longer works."""
        with pytest.raises(httpx.ReadTimeout):
            await post(http, fleet.agents[5].endpoint, timeout=0.05)
        response = await post(http, fleet.agents[5].endpoint, timeout=5)

        assert response.status_code == 200
        assert response.elapsed.total_seconds() >= 0.25

    async def test_huge(self, fleet: SimFleet, http: httpx.AsyncClient) -> None:
        """A "huge" agent answers 200 with a body of about 10 MiB, streamed."""
        async with http.stream(
            "POST", fleet.agents[6].endpoint + PATH, content=encode(OPPORTUNITY)
        ) as response:
            size = sum([len(chunk) async for chunk in response.aiter_bytes()])

        assert response.status_code == 200
        assert size == HUGE_BODY_BYTES

    async def test_huge_body_abandoned_by_client(
        self, fleet: SimFleet, http: httpx.AsyncClient
    ) -> None:
        """A client that stops reading a huge body early leaves the agent serving others."""
        async with http.stream(
            "POST", fleet.agents[6].endpoint + PATH, content=encode(OPPORTUNITY)
        ) as response:
            await anext(response.aiter_bytes())

        assert (await http.get(fleet.agents[6].endpoint + "/health")).status_code == 200

    async def test_unhealthy(self, fleet: SimFleet, http: httpx.AsyncClient) -> None:
        """An "unhealthy" agent fails its health check but still takes opportunities."""
        agent = fleet.agents[7]

        assert (await http.get(agent.endpoint + "/health")).status_code == 503
        assert (await post(http, agent.endpoint)).status_code == 200

    async def test_unknown_behaviour_is_refused(self) -> None:
        """A misspelt behaviour is refused before anything starts."""
        with pytest.raises(ValueError, match="unknown behaviour"):
            SimFleet(2, behaviours={1: "hung"})  # type: ignore[dict-item]


class TestBusAgents:
    async def test_presence_entries_are_in_the_bucket(
        self, nats_server: EmbeddedNats, nc: NATS, names: Names
    ) -> None:
        """Each agent on the bus has an entry under its id, with its endpoint and task id."""
        async with SimFleet(
            4,
            on_bus=2,
            nats_url=nats_server.url,
            names=names,
            base="127.60.10.1",
            task_ids=["ta", "tb", "tc", "td"],
        ) as fleet:
            entries = await presence_entries(nc, names)

            assert set(entries) == {"tb", "td"} == {a.id for a in fleet.bus_agents}
            entry = entries["tb"]
            assert (entry.agent_id, entry.task_id) == ("tb", "tb")
            assert entry.endpoint == f"http://127.60.10.2:{fleet.port}"
            assert entry.at.endswith("Z")

    async def test_presence_bucket_is_created_with_ttl_and_markers(
        self, nats_server: EmbeddedNats, nc: NATS, names: Names
    ) -> None:
        """A missing presence bucket is created with the 15 s TTL and limit markers."""
        async with SimFleet(1, on_bus=1, nats_url=nats_server.url, names=names, base="127.60.11.1"):
            kv = await nc.jetstream().key_value(names.presence_bucket)
            config = (await kv.status()).stream_info.config

        assert config.max_age == 15
        assert config.subject_delete_marker_ttl == 5

    async def test_agents_ack_and_claim(
        self, nats_server: EmbeddedNats, nc: NATS, names: Names
    ) -> None:
        """Every present agent acks once; no_ack never acks; double_ack acks twice."""
        claims = await nc.subscribe(names.claims(OPPORTUNITY.id, "*"))
        async with SimFleet(
            5,
            on_bus=5,
            nats_url=nats_server.url,
            names=names,
            base="127.60.12.1",
            connections=1,
            behaviours={2: "no_ack", 3: "double_ack"},
        ) as fleet:
            acks = await collect_acks(nc, names, OPPORTUNITY, last_id="sim-4")

            assert [a.agent_id for a in acks] == ["sim-0", "sim-1", "sim-3", "sim-3", "sim-4"]
            assert {a.opportunity_id for a in acks} == {OPPORTUNITY.id}
            assert [a.acks for a in fleet.agents] == [1, 1, 0, 2, 1]
            assert fleet.reached(OPPORTUNITY.id) == {a.id for a in fleet.agents}
            first = CLAIM_DECODER.decode((await claims.next_msg(timeout=5)).data)
            second = CLAIM_DECODER.decode((await claims.next_msg(timeout=5)).data)
            assert {(first.role, first.agent_id), (second.role, second.agent_id)} == {
                ("tpm", "sim-0"),
                ("senior-software-architect", "sim-1"),
            }

    async def test_agents_share_connections(
        self, nats_server: EmbeddedNats, nc: NATS, names: Names
    ) -> None:
        """Bus agents are split over the requested connections and all of them ack."""
        async with SimFleet(
            7, on_bus=7, nats_url=nats_server.url, names=names, base="127.60.13.1", connections=3
        ) as fleet:
            sub = await nc.subscribe(names.acks(OPPORTUNITY.id, "*"))
            await nc.publish(names.opportunities, encode(OPPORTUNITY))
            acked = {(await sub.next_msg(timeout=5)).subject.rsplit(".", 1)[1] for _ in range(7)}

            assert fleet.connections == 3
            assert acked == {a.id for a in fleet.agents}

    async def test_leave_purges_and_rejoin_restores(
        self, nats_server: EmbeddedNats, nc: NATS, names: Names
    ) -> None:
        """An agent that leaves loses its entry and stops acking; rejoining brings both back."""
        async with SimFleet(
            3, on_bus=3, nats_url=nats_server.url, names=names, base="127.60.14.1", connections=1
        ) as fleet:
            await fleet.leave("sim-1")

            assert set(await presence_entries(nc, names)) == {"sim-0", "sim-2"}
            acks = await collect_acks(nc, names, OPPORTUNITY, last_id="sim-2")
            assert [a.agent_id for a in acks] == ["sim-0", "sim-2"]
            assert fleet.agent("sim-1").received == []

            await fleet.rejoin("sim-1")

            assert set(await presence_entries(nc, names)) == {"sim-0", "sim-1", "sim-2"}

    async def test_agent_that_stops_refreshing_expires(
        self, nats_server: EmbeddedNats, nc: NATS, names: Names
    ) -> None:
        """A "leave" agent's entry expires (watchers see a PURGE) while others stay fresh."""
        async with SimFleet(
            2,
            on_bus=2,
            nats_url=nats_server.url,
            names=names,
            base="127.60.15.1",
            behaviours={1: "leave"},
            presence_ttl=1,
            presence_interval=0.2,
        ):
            kv: KeyValue = await nc.jetstream().key_value(names.presence_bucket)
            watcher = await kv.watch("sim-1")
            async with asyncio.timeout(5):
                async for entry in watcher:
                    if entry is not None and entry.operation == "PURGE":
                        break
            await watcher.stop()  # type: ignore[no-untyped-call]

            assert set(await presence_entries(nc, names)) == {"sim-0"}

    async def test_leave_without_purge_expires(
        self, nats_server: EmbeddedNats, nc: NATS, names: Names
    ) -> None:
        """leave(purge=False) keeps the entry until its TTL runs out, then it is gone."""
        async with SimFleet(
            2,
            on_bus=2,
            nats_url=nats_server.url,
            names=names,
            base="127.60.16.1",
            presence_ttl=1,
            presence_interval=0.2,
        ) as fleet:
            await fleet.leave("sim-0", purge=False)
            assert "sim-0" in await presence_entries(nc, names)

            async def gone() -> bool:
                return set(await presence_entries(nc, names)) == {"sim-1"}

            await wait_for(gone, timeout=5, interval=0.2, what="sim-0's entry to expire")


class TestFleet:
    async def test_200_agents_start_and_stop_cleanly(
        self, nats_server: EmbeddedNats, nc: NATS, names: Names, http: httpx.AsyncClient
    ) -> None:
        """200 agents report progress, serve, and leave nothing behind: tasks, entries, ports."""
        await nc.jetstream().account_info()  # the observer's own request inbox, made now
        before = asyncio.all_tasks()
        seen: list[tuple[int, int]] = []
        fleet = SimFleet(
            200,
            on_bus=100,
            nats_url=nats_server.url,
            names=names,
            base="127.60.20.1",
            connections=2,
            progress=lambda started, total: seen.append((started, total)),
        )
        async with fleet:
            assert len(await presence_entries(nc, names)) == 100
            last = fleet.agents[-1]
            assert (await http.get(last.endpoint + "/health")).status_code == 200

        # Tasks of the observer's own watchers end within a loop turn; the fleet's must too.
        await wait_for(
            lambda: not asyncio.all_tasks() - before,
            timeout=2,
            what=f"tasks to end: {asyncio.all_tasks() - before}",
        )
        assert seen[-1] == (200, 200)
        assert [s for s, _ in seen] == sorted(s for s, _ in seen)
        assert await presence_entries(nc, names) == {}
        with pytest.raises(httpx.ConnectError):
            await http.get(last.endpoint + "/health")

    async def test_low_fd_limit_is_raised(self) -> None:
        """A soft descriptor limit too low for the fleet is raised towards the hard limit."""
        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        if hard != resource.RLIM_INFINITY and hard < 2048:
            pytest.skip(f"the hard descriptor limit ({hard}) leaves no room to raise")
        resource.setrlimit(resource.RLIMIT_NOFILE, (1024, hard))
        try:
            async with SimFleet(300, base="127.60.21.1"):
                assert resource.getrlimit(resource.RLIMIT_NOFILE)[0] > 1024
        finally:
            resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))

    async def test_bus_agents_need_a_nats_url(self) -> None:
        """Asking for agents on the bus without a NATS URL is refused at once."""
        with pytest.raises(ValueError, match="nats_url"):
            SimFleet(4, on_bus=2)


class TestSingleAgent:
    async def test_single_agent_serves_http_and_presence_until_stopped(
        self, nats_server: EmbeddedNats, nc: NATS, names: Names, http: httpx.AsyncClient
    ) -> None:
        """One agent serves its API and presence (task id = its id), and leaves when stopped."""
        with socket.socket() as probe:
            probe.bind(("127.60.30.1", 0))
            port = probe.getsockname()[1]
        stop = asyncio.Event()
        # The bridge creates the presence bucket; an agent only writes its own key.
        await nc.jetstream().create_key_value(presence_bucket_config(names))
        runner = asyncio.create_task(
            run_single_agent(
                names=names,
                stop=stop,
                host="127.60.30.1",
                port=port,
                agent_id="task0abc",
                nats_url=nats_server.url,
                index=0,
                endpoint=f"http://127.60.30.1:{port}",
            )
        )
        endpoint = f"http://127.60.30.1:{port}"

        async def present() -> bool:
            return "task0abc" in await presence_entries(nc, names)

        await wait_for(lambda: _has_bucket(nc, names), what="the presence bucket")
        await wait_for(present, what="the agent's presence entry")
        entry = (await presence_entries(nc, names))["task0abc"]
        claim = (await post(http, endpoint)).json()

        assert (entry.task_id, entry.endpoint) == ("task0abc", endpoint)
        assert claim == {"role": "tpm", "agent_id": "task0abc"}

        stop.set()
        async with asyncio.timeout(5):
            await runner
        assert await presence_entries(nc, names) == {}
        with pytest.raises(httpx.ConnectError):
            await http.get(endpoint + "/health")


async def _has_bucket(nc: NATS, names: Names) -> bool:
    try:
        await nc.jetstream().key_value(names.presence_bucket)
    except Exception:
        return False
    return True
