"""Buckets made by someone else with settings that would lose or refuse records, and writes
the server refuses: said at once, with the setting or the server's words, on /healthz too."""

from __future__ import annotations

import asyncio

import pytest
import structlog
from nats.aio.client import Client as NATS
from nats.js.api import KeyValueConfig

from bridge.bus.registry import read_bucket
from bridge.config import Settings
from bridge.contract.messages import Agent, encode
from bridge.devkit.emulator import DockerEmulator, EmulatedSwarm
from bridge.edges.nats_server import EmbeddedNats
from tests.chaos.support import healthz
from tests.conftest import announcements, run_bridge, wait_for


@pytest.mark.parametrize("setting", ["max_age", "max_value_size"])
async def test_a_bucket_that_would_lose_records_is_refused(
    setting: str,
    settings: Settings,
    nats_server: EmbeddedNats,
    nc: NATS,
    swarm: EmulatedSwarm,
    docker_api: DockerEmulator,
) -> None:
    """The bridge names the setting once, writes nothing there, and /healthz is 503 with it."""
    config = (
        KeyValueConfig(bucket=settings.kv_bucket, ttl=4)
        if setting == "max_age"
        else KeyValueConfig(bucket=settings.kv_bucket, max_value_size=100)
    )
    await nc.jetstream().create_key_value(config)
    swarm.add_tasks(3)
    with structlog.testing.capture_logs() as logs:
        async with run_bridge(settings, nats_server.url) as running:
            assert running.bridge.http_port is not None
            status, body = await healthz(running.bridge.http_port)
            assert status == 503
            assert any(setting in r for r in body["reasons"]), body
            kv = await nc.jetstream().key_value(settings.kv_bucket)
            assert (await kv.status()).values == 0
    refused = [e for e in logs if e["event"] == "kv_bucket_refused"]
    assert len(refused) == 1 and refused[0]["setting"] == setting


async def test_a_refused_write_says_why_at_once(
    settings: Settings,
    nats_server: EmbeddedNats,
    nc: NATS,
    swarm: EmulatedSwarm,
    docker_api: DockerEmulator,
) -> None:
    """A bucket too small for the fleet: the server's own text, no ack-timeout stall, and
    /healthz 503 while writes fail."""
    await nc.jetstream().create_key_value(KeyValueConfig(bucket=settings.kv_bucket, max_bytes=1200))
    swarm.add_tasks(8)
    loop = asyncio.get_running_loop()
    started = loop.time()
    with structlog.testing.capture_logs() as logs:
        async with run_bridge(settings, nats_server.url) as running:
            await wait_for(
                lambda: any(e["event"] == "kv_write_refused" for e in logs),
                timeout=9,
                what="the refusal",
            )
            took = loop.time() - started
            assert running.bridge.http_port is not None
            status, body = await healthz(running.bridge.http_port)
    refused = next(e for e in logs if e["event"] == "kv_write_refused")
    assert "maximum bytes" in refused["error"] or "resources" in refused["error"], refused
    # From before the bridge starts; the old path waited 10 s for an ack that never came.
    assert took < 9
    assert status == 503 and any("refused" in r for r in body["reasons"]), body


async def test_odd_keys_are_reconciled_without_churn(
    settings: Settings,
    nats_server: EmbeddedNats,
    nc: NATS,
    swarm: EmulatedSwarm,
    docker_api: DockerEmulator,
) -> None:
    """A running task's Agent under another key, an empty value and garbage in the bucket
    before the bridge starts: after a few rounds the bucket holds each task under its own id,
    the odd keys are gone, and no task was announced as leaving (no write/delete churn)."""
    ids = swarm.add_tasks(2)
    address = swarm.address_of(ids[0]) or ""
    stray = Agent(
        id=ids[0],
        endpoint=f"http://{address}:8080",
        address=address,
        port=8080,
        source="swarm",
        task_id=ids[0],
    )
    kv = await nc.jetstream().create_key_value(KeyValueConfig(bucket=settings.kv_bucket))
    await kv.put("elsewhere", encode(stray))
    await kv.put("empty", b"")
    await kv.put("junk", b"{not json")
    seen = await announcements(nc, settings)
    async with run_bridge(settings, nats_server.url) as running:
        loop = running.bridge.pipeline
        target = loop.rounds + 3

        def rounds_done() -> bool:
            loop.trigger()
            return loop.rounds >= target

        await wait_for(rounds_done, timeout=10, interval=0.3, what="three more rounds")
        agents, invalid = await read_bucket(kv)
        assert set(agents) == set(ids) and invalid == set()
    assert sorted((a.event, a.agent.id) for a in seen) == sorted(("joined", i) for i in ids)
