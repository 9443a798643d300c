"""The registry cannot go back in time unseen: a stream that lost its messages under a running
bridge (a truncated block file, as a crash on a full disk leaves it) is noticed and the agents
are written again; a bucket that cannot be made again (the account's JetStream memory full)
turns /healthz 503 with the server's reason."""

from __future__ import annotations

import json
import os
from collections.abc import MutableMapping
from pathlib import Path
from typing import Any

import httpx
import nats
import pytest
from nats.js.api import StorageType, StreamConfig

from bridge.config import Settings
from bridge.devkit.emulator import DockerEmulator, EmulatedSwarm
from bridge.edges.nats_server import EmbeddedNats
from tests.conftest import RunningBridge, live_keys, run_bridge, wait_for
from tests.nats_cluster import NatsProcess

pytestmark = pytest.mark.timeout(90)

AGENTS = 15


async def healthz(running: RunningBridge) -> tuple[int, dict[str, Any]]:
    async with httpx.AsyncClient(trust_env=False) as client:
        response = await client.get(f"http://127.0.0.1:{running.bridge.http_port}/healthz")
    return response.status_code, json.loads(response.text)


async def test_a_truncated_block_is_noticed_and_the_agents_written_again(
    tmp_path: Path,
    settings: Settings,
    swarm: EmulatedSwarm,
    docker_api: DockerEmulator,
    logs: list[MutableMapping[str, Any]],
) -> None:
    """nats-server stopped, the agents stream's block file truncated, started again: the
    stream is empty with the same last sequence. The bridge notices within a few audits and
    the bucket holds the 15 agents again."""
    swarm.add_tasks(AGENTS)
    server = NatsProcess(tmp_path / "store")
    server.start()
    try:
        await server.ready()
        async with run_bridge(settings, server.url):
            nc = await nats.connect(server.url, max_reconnect_attempts=-1)
            bucket = await nc.jetstream().key_value(settings.kv_bucket)

            async def all_there() -> bool:
                return len(await live_keys(bucket)) == AGENTS

            await wait_for(all_there, timeout=10, what="the agents in the bucket")
            await server.stop()
            stream = (
                tmp_path / "store" / "jetstream" / "$G" / "streams" / f"KV_{settings.kv_bucket}"
            )
            blocks = list(stream.glob("msgs/*.blk"))
            assert blocks, "no block file to truncate"
            for block in blocks:
                os.truncate(block, 0)
            server.start()
            await server.ready()
            await wait_for(all_there, timeout=20, interval=0.2, what="the agents written again")
            info = await nc.jetstream().stream_info(f"KV_{settings.kv_bucket}")
            # Written again: the first records (sequences 1 to 15) were lost with the block.
            assert info.state.first_seq > AGENTS
            await nc.close()
    finally:
        await server.stop()
    lost = [e for e in logs if e["event"] == "kv_bucket_lost_records"]
    assert lost and lost[0]["believed"] == AGENTS


async def test_a_bucket_the_account_has_no_memory_for_turns_healthz_503(
    tmp_path: Path,
    settings: Settings,
    swarm: EmulatedSwarm,
    docker_api: DockerEmulator,
) -> None:
    """JetStream memory full (a stream reserves all of it), then the leader lease's bucket (in
    memory) is lost: it cannot be made again, and /healthz says 503 with the server's words."""
    swarm.add_tasks(2)
    conf = tmp_path / "small.conf"
    conf.write_text("jetstream { max_memory_store: 4MB }\n")
    async with (
        EmbeddedNats(port=0, store_dir=tmp_path / "nats", config_file=conf) as server,
        run_bridge(settings, server.url) as running,
    ):
        await wait_for(lambda: running.bridge.election.is_leader.is_set(), what="a leader")
        assert (await healthz(running))[0] == 200
        nc = await nats.connect(server.url)
        js = nc.jetstream()
        await js.add_stream(
            StreamConfig(
                name="filler",
                subjects=["filler"],
                storage=StorageType.MEMORY,
                max_bytes=4 * 1024 * 1024,
            )
        )
        await js.delete_stream(f"KV_{settings.subject_prefix}_bridge")

        async def unhealthy() -> bool:
            return (await healthz(running))[0] == 503

        await wait_for(unhealthy, timeout=30, interval=0.25, what="/healthz 503")
        _, body = await healthz(running)
        await nc.close()
    assert any("insufficient memory resources" in reason for reason in body["reasons"]), body
