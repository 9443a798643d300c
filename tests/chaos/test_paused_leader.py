"""A leader paused past its lease (SIGSTOP), a standby taking over, the fleet changing, the
old leader resumed (SIGCONT): it must write nothing, and the bucket stays right."""

from __future__ import annotations

import asyncio
import signal
from pathlib import Path

import msgspec
import structlog
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg

from bridge.config import Settings
from bridge.contract.messages import Lease, now_rfc3339
from bridge.devkit.emulator import DockerEmulator, EmulatedSwarm
from bridge.edges.nats_server import EmbeddedNats
from tests.chaos.bridges import bridge_process
from tests.chaos.support import bucket_agents, on_the_bus
from tests.conftest import run_bridge, wait_for


async def test_a_resumed_leader_writes_nothing(
    tmp_path: Path,
    settings: Settings,
    nats_server: EmbeddedNats,
    nc: NATS,
    swarm: EmulatedSwarm,
    docker_api: DockerEmulator,
) -> None:
    url = nats_server.url
    swarm.add_tasks(4)
    on_bus = swarm.running_ids()[1]

    async def matches() -> bool:
        agents = await bucket_agents(url, settings)
        return set(agents) == set(swarm.running_ids()) and agents[on_bus].on_bus is True

    async with (
        on_the_bus(url, settings, on_bus),
        bridge_process(settings, url, tmp_path / "a.log") as first,
    ):

        async def first_leads() -> bool:
            return await first.role() == "leader"

        await wait_for(first_leads, timeout=20, interval=0.2, what="the first bridge to lead")
        await wait_for(matches, timeout=10, interval=0.2, what="the first fleet in the bucket")
        async with bridge_process(settings, url, tmp_path / "b.log") as second:

            async def second_stands_by() -> bool:
                return await second.role() == "standby"

            await wait_for(second_stands_by, timeout=20, interval=0.2, what="a standby")
            first.send(signal.SIGSTOP)

            async def second_leads() -> bool:
                return await second.role() == "leader"

            await wait_for(second_leads, timeout=25, interval=0.2, what="the takeover")
            gone = swarm.running_ids()[0]
            swarm.remove_task(gone)
            swarm.add_tasks(2)
            await wait_for(matches, timeout=10, interval=0.2, what="the new fleet in the bucket")

            writes: list[str] = []

            async def on_write(msg: Msg) -> None:
                writes.append(msg.subject)

            await nc.subscribe(f"$KV.{settings.kv_bucket}.>", cb=on_write)
            await nc.flush()
            first.send(signal.SIGCONT)

            async def first_stands_by() -> bool:
                return await first.role() == "standby"

            await wait_for(
                first_stands_by, timeout=20, interval=0.2, what="the old leader to stand by"
            )
            # Its discovery rounds (1 s poll) had every chance to write by now.
            await wait_for(
                lambda: second.proc is not None and second.proc.poll() is None,
                what="the new leader still running",
            )
            assert writes == [], f"writes after the old leader resumed: {writes}"
            assert await matches()  # the agent on the bus is still on_bus
            assert await second.role() == "leader"
    log = (tmp_path / "a.log").read_text()
    assert "leader_lease_lost" in log


async def test_a_leader_that_lost_its_lease_unawares_writes_nothing(
    settings: Settings,
    nats_server: EmbeddedNats,
    nc: NATS,
    swarm: EmulatedSwarm,
    docker_api: DockerEmulator,
) -> None:
    """Another bridge took the lease and this one has not renewed since (what a pause or a
    partition leaves behind): a change of the fleet reaches its discovery at once, and the
    fence keeps its write from the bucket until it finds out and stands by."""
    swarm.add_tasks(2)
    with structlog.testing.capture_logs() as logs:
        async with run_bridge(settings, nats_server.url) as running:
            election = running.bridge.election
            assert election is not None and election.is_leader.is_set()
            lease = await nc.jetstream().key_value(f"{settings.subject_prefix}_bridge")
            await lease.put(
                "leader",
                msgspec.json.encode(Lease(bridge_id="another-bridge", since=now_rfc3339())),
            )
            writes: list[str] = []

            async def on_write(msg: Msg) -> None:
                writes.append(msg.subject)

            await nc.subscribe(f"$KV.{settings.kv_bucket}.>", cb=on_write)
            await nc.flush()
            swarm.add_tasks(1)
            await wait_for(
                lambda: any(e["event"] == "kv_write_fenced" for e in logs),
                timeout=5,
                what="a round that tried to write",
            )
            async with asyncio.timeout(8):  # the bridge stands by
                await election.lost.wait()
            assert writes == []
