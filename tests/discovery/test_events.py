"""The Docker events follower: a hung daemon never blocks shutdown; an outage is two lines."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
from pathlib import Path
from typing import Any

import structlog
from nats.aio.client import Client as NATS

from bridge.bus.registry import read_bucket
from bridge.config import Settings
from bridge.devkit.emulator import DockerEmulator, EmulatedSwarm
from bridge.edges.docker_api import DockerAPI, EventStream
from bridge.edges.nats_server import EmbeddedNats
from tests.conftest import run_bridge, wait_for

SHUTDOWN_LIMIT_S = 15.0
OUTAGE_S = 3.0


async def bucket_ids(nc: NATS, bucket: str) -> set[str]:
    kv = await nc.jetstream().key_value(bucket)
    agents, _ = await read_bucket(kv)
    return set(agents)


async def test_sigterm_ends_run_while_events_hang(
    docker_api: DockerEmulator,
    swarm: EmulatedSwarm,
    nats_server: EmbeddedNats,
    nc: NATS,
    unique: str,
    tmp_path: Path,
) -> None:
    """A daemon that accepts GET /events and never answers: SIGTERM still ends
    `chorus-bridge run` with exit 0 within 15 s."""
    tasks = swarm.add_tasks(2)
    swarm.set_error("hang", paths={"/events"})
    env = {
        **os.environ,
        "NATS_URL": nats_server.url,
        "DISCOVERY_METHOD": "swarm",
        "WHOOSH_DOCKER_HOST": docker_api.base_url,
        "WHOOSH_DNS_NAMES": "",
        "BRIDGE_SUBJECT_PREFIX": f"t{unique}",
        "BRIDGE_KV_BUCKET": f"agents_{unique}",
        "BRIDGE_LISTEN": "127.0.0.1:0",
        "BRIDGE_POLL_INTERVAL": "60",
    }
    log_file = (tmp_path / "bridge.log").open("wb")
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "bridge", "run", env=env, stdout=log_file, stderr=log_file
    )
    try:
        # Its first round is done and its event request is hanging in the daemon.
        await wait_for(
            lambda: swarm.requests["/events"] >= 1, timeout=20, what="the bridge to ask for events"
        )

        async def published() -> bool:
            try:
                return await bucket_ids(nc, f"agents_{unique}") == set(tasks)
            except Exception:
                return False

        await wait_for(published, timeout=20, what="the first round")
        process.send_signal(signal.SIGTERM)
        async with asyncio.timeout(SHUTDOWN_LIMIT_S):
            code = await process.wait()
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
        log_file.close()
    assert code == 0, (tmp_path / "bridge.log").read_text()


async def test_event_stream_outage_is_one_line_each_way(
    settings: Settings, docker_api: DockerEmulator, swarm: EmulatedSwarm, nats_server: EmbeddedNats
) -> None:
    """The daemon gone for a while: one `docker_events_lost` line, whatever the retries, one
    line when the stream is back, and no advice to set WHOOSH_DOCKER_HOST (it is set)."""
    async with run_bridge(settings, nats_server.url) as running:
        follower = running.bridge.follower
        assert follower is not None
        # Connected as the bridge sees it (its first line is written by then).
        await wait_for(follower.connected.is_set, what="the event stream")
        with structlog.testing.capture_logs() as logs:
            await docker_api.stop()
            await wait_for(
                lambda: any(e["event"] == "docker_events_lost" for e in logs),
                what="the loss to be logged",
            )
            # The outage lasts a few seconds: several attempts to open the stream again
            # fail meanwhile (0.1 s apart at first, doubling, at most 2 s apart).
            await asyncio.sleep(OUTAGE_S)
            await docker_api.start()
            await wait_for(
                lambda: swarm.event_streams == 1, timeout=10, what="the stream to come back"
            )
            await wait_for(
                lambda: any(e["event"] == "docker_events_connected" for e in logs),
                what="the return to be logged",
            )
    lost = [e for e in logs if e["event"] == "docker_events_lost"]
    back = [e for e in logs if e["event"] == "docker_events_connected"]
    assert len(lost) == 1 and len(back) == 1, [e["event"] for e in logs]
    # The daemon closed the stream first (it stopped), then its socket was gone.
    assert lost[0]["kind"] == back[0]["was"] == "unreachable"
    assert all("set WHOOSH_DOCKER_HOST" not in str(e.get("error")) for e in logs)


async def test_a_quiet_stream_is_asked_again_and_loses_no_event(
    docker_api: DockerEmulator, swarm: EmulatedSwarm
) -> None:
    """Each read of /events is bounded: a stream quiet for `docker_timeout` is asked again,
    with `since`, so an event that came while no stream was open still arrives, once."""
    api = DockerAPI(Settings(docker_host=docker_api.base_url, docker_timeout=0.5))
    seen: list[dict[str, Any]] = []

    async def read(stream: EventStream) -> None:
        async for event in stream:
            seen.append(event)

    try:
        async with api.events(json.dumps({"type": ["container"]})) as stream:
            reader = asyncio.create_task(read(stream))
            await wait_for(lambda: swarm.event_streams == 1, what="the stream")
            swarm.set_error("hang", paths={"/events"})
            # Quiet for 0.5 s: the stream ends, is asked again, and that request hangs.
            await wait_for(
                lambda: swarm.requests["/events"] == 2 and swarm.event_streams == 0,
                what="the stream to be asked again",
            )
            (task,) = swarm.add_tasks(1)  # while no stream is open
            swarm.set_error(None)
            await wait_for(lambda: started(seen, task) >= 1, what="the missed event")
            reader.cancel()
    finally:
        api.close()
    assert started(seen, task) == 1


def started(events: list[dict[str, Any]], task: str) -> int:
    return sum(
        e["Action"] == "start" and e["Actor"]["Attributes"].get("com.docker.swarm.task.id") == task
        for e in events
    )
