"""The Docker events follower: a hung daemon never blocks shutdown; an outage is two lines;
events that say nothing about the tasks trigger nothing; one change is one burst of rounds; a
late event never makes the engine's list another service's."""

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
from bridge.discovery.events import RETRY_MAX, RETRY_MIN, STABLE
from bridge.discovery.followup import SCHEDULE
from bridge.edges.docker_api import DockerAPI, EventStream
from bridge.edges.nats_server import EmbeddedNats
from tests.conftest import rounds_pass, run_bridge, wait_for

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


# --- events from the field ------------------------------------------------------------------

PROBE_EVERY = 0.2
PROBE_WINDOW = 5.0


async def test_healthcheck_exec_events_trigger_nothing(
    settings: Settings, docker_api: DockerEmulator, swarm: EmulatedSwarm, nats_server: EmbeddedNats
) -> None:
    """A HEALTHCHECK probe's exec events (every 0.2 s here) say nothing about the tasks: with
    one task pending, /tasks is asked as the wait asks (every 0.25 s), not once per event.
    (Each exec event used to reopen 0.5 s of rounds 10 ms apart: 1,164 task lists in 25 s.)"""
    (probed,) = swarm.add_tasks(1)
    swarm.add_tasks(1, state="pending")
    async with run_bridge(settings, nats_server.url) as running:
        follower = running.bridge.follower
        assert follower is not None
        await wait_for(follower.connected.is_set, what="the event stream")
        loop = asyncio.get_running_loop()
        before, started = swarm.requests["/tasks"], loop.time()
        while loop.time() - started < PROBE_WINDOW:  # the scenario: a probe every 0.2 s
            swarm.probe(probed)
            await asyncio.sleep(PROBE_EVERY)
        calls = swarm.requests["/tasks"] - before
    bound = PROBE_WINDOW / SCHEDULE.wait_every + 2
    print(f"{calls} GET /tasks in {PROBE_WINDOW:g}s of probes every {PROBE_EVERY:g}s")
    assert calls <= bound, f"{calls} GET /tasks in {PROBE_WINDOW:g}s (at most {bound:g})"


async def test_a_burst_of_events_is_one_burst_of_rounds(
    settings: Settings, docker_api: DockerEmulator, swarm: EmulatedSwarm, nats_server: EmbeddedNats
) -> None:
    """A scale of 10 on the bridge's own node: a service event and 20 container events, one
    burst of rounds (not one per event), and the 10 agents are in."""
    swarm.add_tasks(1)
    async with run_bridge(settings, nats_server.url) as running:
        follower = running.bridge.follower
        assert follower is not None
        await wait_for(follower.connected.is_set, what="the event stream")
        await wait_for(lambda: running.bridge.pipeline.rounds >= 2, what="the catch-up round")
        before, streams = swarm.requests["/tasks"], swarm.requests["/events"]
        loop = asyncio.get_running_loop()
        scaled = loop.time()
        swarm.scale(11)
        await wait_for(
            lambda: len(running.bridge.registry.published) == 11, what="the 10 new agents"
        )
        took = loop.time() - scaled
        # The whole burst, and then some: nothing waits, so nothing else asks.
        await asyncio.sleep(SCHEDULE.burst[-1] + 0.5)
        calls = swarm.requests["/tasks"] - before
        # What tells the causes of an excess apart: a stream opened again, agents slow to come.
        opened = swarm.requests["/events"] - streams
    assert calls <= len(SCHEDULE.burst) + 1, (
        f"{calls} GET /tasks; {opened} GET /events in the window; the agents in {took:.2f}s"
    )


async def test_a_late_event_of_a_removed_services_container_empties_nothing(
    settings: Settings,
    docker_api: DockerEmulator,
    swarm: EmulatedSwarm,
    nats_server: EmbeddedNats,
    nc: NATS,
) -> None:
    """A stack removed and deployed again, then one late `destroy` event of an old container,
    labelled with the old service's ID: the engine's filtered list stays the truth (the 3 new
    agents stay, after a poll too). It used to make the current list "another service's" and
    empty the bucket."""
    old = swarm.add_tasks(3)
    async with run_bridge(settings, nats_server.url) as running:
        follower = running.bridge.follower
        assert follower is not None
        await wait_for(follower.connected.is_set, what="the event stream")
        new = swarm.recreate_service()

        async def holds_new() -> bool:
            return await bucket_ids(nc, settings.kv_bucket) == set(new)

        await wait_for(holds_new, what="the re-deployed service's agents")
        rounds = running.bridge.pipeline.rounds
        swarm.late_event(old[0], "destroy")
        await wait_for(lambda: running.bridge.pipeline.rounds > rounds, what="its round")
        await rounds_pass(running, 2)  # and the poll's
        assert await bucket_ids(nc, settings.kv_bucket) == set(new)


CLOSING_WINDOW = 10.0


async def test_a_stream_that_closes_at_once_backs_off_and_is_one_line(
    settings: Settings, docker_api: DockerEmulator, swarm: EmulatedSwarm, nats_server: EmbeddedNats
) -> None:
    """An /events stream closed as soon as it opens: opened again less and less often (from
    0.1 s, doubling), one `docker_events_lost` line, and no line saying it came back until a
    stream stays open. (It used to be reopened every 2 s with a warning each time: 19 in
    30 s.)"""
    swarm.add_tasks(1)
    docker_api.set_error("close", paths={"/events"})
    with structlog.testing.capture_logs() as logs:
        async with run_bridge(settings, nats_server.url) as running:
            loop = asyncio.get_running_loop()
            started, before = loop.time(), docker_api.requests["/events"]
            await asyncio.sleep(CLOSING_WINDOW)  # the observation window
            opened = docker_api.requests["/events"] - before
            lines = [dict(e) for e in logs if str(e["event"]).startswith("docker_events")]
            docker_api.set_error(None)
            follower = running.bridge.follower
            assert follower is not None

            def came_back() -> bool:
                return any(e["event"] == "docker_events_connected" and "was" in e for e in logs)

            await wait_for(came_back, timeout=RETRY_MAX + STABLE + 5, what="the stream back")
    # Attempts 0.1 s apart at first (less 20 % jitter), each delay twice the last.
    bound, delay, at = 0, RETRY_MIN * 0.8, 0.0
    while at + delay <= loop.time() - started:
        at, bound, delay = at + delay, bound + 1, delay * 2
    print(f"{opened} streams opened in {CLOSING_WINDOW:g}s; lines: {[e['event'] for e in lines]}")
    assert opened <= bound + 1, (opened, bound)
    assert [e["event"] for e in lines if e["event"] == "docker_events_lost"] == [
        "docker_events_lost"
    ]
    assert not [e for e in lines if e["event"] == "docker_events_connected" and "was" in e]
