"""Every bridge replica answers the auth callout: a standby while the leader is down (killed
with SIGKILL), and both while both are up."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import os
import sys
from collections.abc import AsyncIterator, MutableMapping
from pathlib import Path
from typing import Any

import pytest
import structlog

from bridge.app import Bridge
from bridge.config import Settings
from bridge.devkit.emulator import DockerEmulator, EmulatedSwarm
from bridge.edges.nats_server import EmbeddedNats
from tests.callout_support import (
    PASSWORDS,
    CalloutFiles,
    admitted,
    bridge_settings,
    callout_server,
    make_keys,
    user,
)
from tests.conftest import live_keys, run_bridge, wait_for

pytestmark = pytest.mark.timeout(90)


def _leader_env(
    files: CalloutFiles,
    server: EmbeddedNats,
    docker: DockerEmulator,
) -> dict[str, str]:
    own = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("BRIDGE_", "WHOOSH_", "NATS_", "DISCOVERY_", "DOCKER_"))
    }
    return {
        **own,
        "DISCOVERY_METHOD": "swarm",
        "WHOOSH_DOCKER_HOST": docker.base_url,
        "WHOOSH_DNS_NAMES": "",
        "NATS_URL": server.url,
        "NATS_USER": "bridge",
        "NATS_PASSWORD": PASSWORDS["BRIDGE_PASS"],
        "BRIDGE_LISTEN": "127.0.0.1:0",
        "BRIDGE_POLL_INTERVAL": "60",
        "BRIDGE_AUTH_CALLOUT": "true",
        "BRIDGE_CALLOUT_ISSUER_SEED": str(files.issuer_seed),
        "BRIDGE_CALLOUT_XKEY_SEED": str(files.xkey_seed),
        "BRIDGE_CALLOUT_AGENT_PASSWORD_FILE": str(files.agent_password),
    }


@contextlib.asynccontextmanager
async def leader_process(
    env: dict[str, str],
    log: Path,
) -> AsyncIterator[asyncio.subprocess.Process]:
    """`chorus-bridge run` in a process of its own, so that it can be killed for real."""
    with log.open("wb") as out:
        process = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "bridge",
            "run",
            env=env,
            stdout=out,
            stderr=asyncio.subprocess.STDOUT,
        )
        try:
            yield process
        finally:
            if process.returncode is None:
                process.kill()
            async with asyncio.timeout(10):
                await process.wait()


@dataclasses.dataclass
class Pair:
    """A leader in a process of its own and a standby in this one, both serving the callout."""

    server: EmbeddedNats
    leader: asyncio.subprocess.Process
    leader_log: Path
    standby: Bridge
    logs: list[MutableMapping[str, Any]]
    agent: tuple[str, str]  # (task id, address)


@contextlib.asynccontextmanager
async def leader_and_standby(
    tmp_path: Path, settings: Settings, swarm: EmulatedSwarm, docker_api: DockerEmulator
) -> AsyncIterator[Pair]:
    files = make_keys(tmp_path / "keys")
    ((me, address),) = [(t, swarm.address_of(t) or "") for t in swarm.add_tasks(1)]
    log_path = tmp_path / "leader.log"
    async with callout_server(tmp_path, files) as server:
        env = _leader_env(files, server, docker_api)
        async with leader_process(env, log_path) as leader:
            async with admitted(server, address, timeout=30):
                pass  # the leader is up and answers
            coordinator = await user(server, "coordinator", "COORD_PASS", "_INBOX.coord")
            agents = await coordinator.jetstream().key_value("chorus_agents")

            async def written() -> bool:
                return bool(await live_keys(agents))

            await wait_for(written, timeout=10, what="the leader's agents")
            await coordinator.close()

            with structlog.testing.capture_logs() as logs:
                async with run_bridge(
                    bridge_settings(settings, files), server.url, first_round=False
                ) as running:
                    standby = running.bridge

                    def standing_by() -> bool:
                        return standby.election.leader is not None and any(
                            e["event"] == "callout_serving" and e["agents"] == 1 for e in logs
                        )

                    await wait_for(standing_by, timeout=15, what="the standby to load the agents")
                    assert not standby.election.is_leader.is_set()
                    yield Pair(server, leader, log_path, standby, logs, (me, address))


def admissions(logs: list[MutableMapping[str, Any]]) -> list[tuple[str, str]]:
    return [(e["agent_id"], e["address"]) for e in logs if e["event"] == "callout_admitted"]


async def test_standby_answers_the_callout_while_the_leader_is_down(
    tmp_path: Path, settings: Settings, swarm: EmulatedSwarm, docker_api: DockerEmulator
) -> None:
    """With the leader killed (its lease not yet expired), the standby admits an agent."""
    async with leader_and_standby(tmp_path, settings, swarm, docker_api) as pair:
        pair.logs.clear()
        pair.leader.kill()  # SIGKILL: no resignation, the lease stays until it expires
        async with asyncio.timeout(10):
            await pair.leader.wait()
        async with admitted(pair.server, pair.agent[1], timeout=10):
            assert not pair.standby.election.is_leader.is_set(), "the lease expired first"
        assert admissions(pair.logs) == [pair.agent]


async def test_leader_and_standby_share_the_callout(
    tmp_path: Path, settings: Settings, swarm: EmulatedSwarm, docker_api: DockerEmulator
) -> None:
    """The replicas' queue group spreads the requests: of 20 connects, each replica answers
    some (all 20 to one of two would happen once in about 500,000 runs)."""
    async with leader_and_standby(tmp_path, settings, swarm, docker_api) as pair:
        pair.logs.clear()
        before = pair.leader_log.read_text().count('"callout_admitted"')
        for _ in range(20):
            async with admitted(pair.server, pair.agent[1], timeout=10):
                pass
        by_leader = pair.leader_log.read_text().count('"callout_admitted"') - before
        by_standby = len(admissions(pair.logs))
    assert by_leader + by_standby == 20
    assert by_leader > 0 and by_standby > 0, (by_leader, by_standby)
