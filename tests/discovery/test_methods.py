"""DESIGN.md's discovery rules, on the real bridge with an emulated Docker API, a loopback
DNS server and a real nats-server: no DNS ghosts, one task one agent, stuck tasks logged once."""

from __future__ import annotations

import asyncio

import structlog
from nats.aio.client import Client as NATS

from bridge.bus.registry import read_bucket
from bridge.config import Settings
from bridge.contract.messages import Agent
from bridge.devkit.emulator import DockerEmulator, EmulatedSwarm
from bridge.discovery.followup import Schedule
from bridge.edges.nats_server import EmbeddedNats
from tests.conftest import dns_discovery, rounds_pass, run_bridge, wait_for
from tests.dns_server import DnsTestServer

TASKS_NAME = "tasks.CHORUS_chorus"
GHOST = "127.50.0.99"


async def bucket(nc: NATS, settings: Settings) -> dict[str, Agent]:
    kv = await nc.jetstream().key_value(settings.kv_bucket)
    agents, _ = await read_bucket(kv)
    return agents


async def test_auto_publishes_no_dns_ghost(
    settings: Settings,
    docker_api: DockerEmulator,
    swarm: EmulatedSwarm,
    dns_server: DnsTestServer,
    nats_server: EmbeddedNats,
    nc: NATS,
) -> None:
    """auto, Swarm answering: the address tasks.<service> still gives for a gone task is not
    an agent; when the Swarm call fails, tasks.<service> is the fallback again."""
    tasks = swarm.add_tasks(3)
    dns_server.set(TASKS_NAME, [*(swarm.address_of(t) or "" for t in tasks), GHOST])
    auto = settings.replace(discovery_method="auto", dns_names=(TASKS_NAME,))
    async with run_bridge(auto, nats_server.url, dns=dns_discovery(auto, dns_server)) as running:
        await rounds_pass(running, 3)
        assert set(await bucket(nc, auto)) == set(tasks)

        swarm.set_error("server_error")
        await rounds_pass(running, 1)
        assert set(await bucket(nc, auto)) == {*tasks, "dns-127-50-0-99-8080"}


async def test_one_task_is_one_agent_on_any_of_its_networks(
    settings: Settings,
    docker_api: DockerEmulator,
    swarm: EmulatedSwarm,
    dns_server: DnsTestServer,
    nats_server: EmbeddedNats,
    nc: NATS,
) -> None:
    """A task on chorus_default and on backend, whose backend address DNS gives, is one
    agent: in auto (another DNS name) and in a swarm round's DNS fallback."""
    (task,) = swarm.add_tasks(1)
    swarm.attach(task, "backend", "127.51.0.2")
    dns_server.set("agents.backend", ["127.51.0.2"])
    dns_server.set(TASKS_NAME, ["127.51.0.2"])
    auto = settings.replace(discovery_method="auto", dns_names=("agents.backend",))
    async with run_bridge(auto, nats_server.url, dns=dns_discovery(auto, dns_server)) as running:
        await rounds_pass(running, 3)
        agents = await bucket(nc, auto)
    assert set(agents) == {task}
    assert agents[task].address == swarm.address_of(task)

    fallback = settings.replace(dns_names=(TASKS_NAME,))
    async with run_bridge(
        fallback, nats_server.url, dns=dns_discovery(fallback, dns_server)
    ) as running:
        swarm.set_error("server_error")
        await rounds_pass(running, 3)
        assert set(await bucket(nc, fallback)) == {task}


# The stuck-task case, on a short schedule (the real one is checked on a fake clock in
# test_followup.py): a wait normally lasts 2 s, re-checked every 0.25 s meanwhile, then a
# backoff from 0.2 s doubling to the 3.2 s poll; /tasks calls are counted over 12 s.
STUCK_POLL = 3.2
STUCK = Schedule(wait_every=0.25, wait_normal=2.0, backoff_start=0.2)
STUCK_WINDOW = 12.0


def recheck_times(schedule: Schedule, poll: float, until: float) -> list[float]:
    """When tasks waiting from the first round on are re-checked, in seconds after it, up to
    `until`: every `wait_every` while the wait is normal, then after `backoff_start`, each
    delay twice the last, capped at `poll`."""
    times, now = [], 0.0
    while now < schedule.wait_normal:
        now += schedule.wait_every
        times.append(now)
    delay = schedule.backoff_start
    while now + delay <= until:
        now += delay
        times.append(now)
        delay = min(delay * 2, poll)
    return [t for t in times if t <= until]


async def test_stuck_tasks_back_off_to_the_poll_interval(
    settings: Settings,
    docker_api: DockerEmulator,
    swarm: EmulatedSwarm,
    nats_server: EmbeddedNats,
    nc: NATS,
) -> None:
    """A task pending for good and a running task without an address: /tasks is asked well
    under a second apart while such a wait is normal, then less and less often up to the poll
    interval (two stuck tasks cost what one does); each is logged once; once it runs with an
    address it is in the bucket within a poll interval.

    Rounds only come later than the schedule (each takes time), and nothing else asks for one:
    the Docker events follower is off, since Swarm sends no event for a task that stays
    pending or gets an address.
    """
    swarm.add_tasks(1)
    (pending,) = swarm.add_tasks(1, state="pending")
    (unaddressed,) = swarm.add_tasks(1)
    address = swarm.address_of(unaddressed)
    assert address is not None
    swarm.drop_address(unaddressed)
    stuck = settings.replace(poll_interval=STUCK_POLL)
    loop = asyncio.get_running_loop()
    with structlog.testing.capture_logs() as logs:
        async with run_bridge(stuck, nats_server.url, follow_events=False, schedule=STUCK):
            before = swarm.requests["/tasks"]
            # The observation window: what is measured is how often /tasks is asked in it.
            await asyncio.sleep(STUCK_WINDOW)
            calls = swarm.requests["/tasks"] - before
            logged = [e for e in logs if e["event"] == "task_not_running"]

            swarm.set_state(pending, "running")
            swarm.set_address(unaddressed, address)
            fixed = loop.time()

            async def all_in_bucket() -> bool:
                return set(await bucket(nc, stuck)) == set(swarm.running_ids())

            await wait_for(all_in_bucket, timeout=STUCK_POLL + 1, what="both tasks in the bucket")
            took = loop.time() - fixed

    expected = recheck_times(STUCK, STUCK_POLL, STUCK_WINDOW)
    print(f"{calls} GET /tasks in {STUCK_WINDOW:g}s; both in the bucket {took:.1f}s after")
    schedule = ", ".join(f"{t:.2f}" for t in expected)
    assert calls <= len(expected), (
        f"{calls} GET /tasks in {STUCK_WINDOW:g}s; the schedule asks {len(expected)} times"
        f" (at {schedule} s)"
    )
    assert {e["task_id"]: e["reason"] for e in logged} == {
        pending: "not running",
        unaddressed: "no address",
    }
    assert all(e["recheck_s"] == STUCK_POLL for e in logged)
    # Once each, for the whole run.
    assert len([e for e in logs if e["event"] == "task_not_running"]) == 2


async def test_a_task_on_the_host_network_is_said_once_with_what_to_do(
    settings: Settings, docker_api: DockerEmulator, swarm: EmulatedSwarm, nats_server: EmbeddedNats
) -> None:
    """A running task on the host network, and one with only a host-mode port: no address on
    the service's network will ever come. Each is logged once as exactly that, with what to
    do (attach the service to the network), never as a task still waiting for an address, and
    neither is re-checked as one."""
    (agent,) = swarm.add_tasks(1)
    on_host, by_port = swarm.add_tasks(2)
    swarm.host_mode(on_host, "network")
    swarm.host_mode(by_port, "port")
    quick = settings.replace(poll_interval=0.5)
    with structlog.testing.capture_logs() as logs:
        async with run_bridge(quick, nats_server.url, schedule=STUCK) as running:
            await rounds_pass(running, 3)
            # Longer than a normal wait and its backoff: a waiting task would be logged.
            await wait_for(
                lambda: running.bridge.pipeline.rounds >= 12, timeout=20, what="more rounds"
            )
            assert set(running.bridge.registry.published) == {agent}
    said = {e["task_id"]: e for e in logs if e["event"] == "task_on_host_network"}
    assert set(said) == {on_host, by_port}
    assert len([e for e in logs if e["event"] == "task_on_host_network"]) == 2
    assert "host network" in said[on_host]["reason"]
    assert "host-mode published port" in said[by_port]["reason"]
    for entry in said.values():
        assert "docker service update --network-add chorus_default CHORUS_chorus" in entry["hint"]
    assert not [e for e in logs if e["event"] == "task_not_running"]
