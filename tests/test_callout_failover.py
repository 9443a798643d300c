"""A standby bridge answers the auth callout while the leader is down (killed with SIGKILL)."""

from __future__ import annotations

import asyncio
import contextlib
import os
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import structlog

from bridge.config import Settings
from bridge.embedded import EmbeddedNats
from bridge.emulator import DockerEmulator, EmulatedSwarm
from tests.callout_support import (
    PASSWORDS,
    CalloutFiles,
    admitted,
    bridge_settings,
    callout_server,
    make_keys,
    user,
)
from tests.conftest import run_bridge, wait_for

pytestmark = pytest.mark.timeout(90)


def _leader_env(files: CalloutFiles, server: EmbeddedNats, docker: DockerEmulator,
                ) -> dict[str, str]:
    own = {k: v for k, v in os.environ.items()
           if not k.startswith(("BRIDGE_", "WHOOSH_", "NATS_", "DISCOVERY_", "DOCKER_"))}
    return {**own, "DISCOVERY_METHOD": "swarm", "WHOOSH_DOCKER_HOST": docker.base_url,
            "WHOOSH_DNS_NAMES": "", "NATS_URL": server.url, "NATS_USER": "bridge",
            "NATS_PASSWORD": PASSWORDS["BRIDGE_PASS"], "BRIDGE_LISTEN": "127.0.0.1:0",
            "BRIDGE_POLL_INTERVAL": "60", "BRIDGE_AUTH_CALLOUT": "true",
            "BRIDGE_CALLOUT_ISSUER_SEED": str(files.issuer_seed),
            "BRIDGE_CALLOUT_XKEY_SEED": str(files.xkey_seed),
            "BRIDGE_CALLOUT_AGENT_PASSWORD_FILE": str(files.agent_password)}


@contextlib.asynccontextmanager
async def leader_process(env: dict[str, str], log: Path,
                         ) -> AsyncIterator[asyncio.subprocess.Process]:
    """`chorus-bridge run` in a process of its own, so that it can be killed for real."""
    with log.open("wb") as out:
        process = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "bridge", "run", env=env, stdout=out,
            stderr=asyncio.subprocess.STDOUT)
        try:
            yield process
        finally:
            if process.returncode is None:
                process.kill()
            async with asyncio.timeout(10):
                await process.wait()


async def test_standby_answers_the_callout_while_the_leader_is_down(
        tmp_path: Path, settings: Settings, swarm: EmulatedSwarm,
        docker_api: DockerEmulator) -> None:
    """With the leader killed (its lease not yet expired), the standby admits an agent."""
    files = make_keys(tmp_path / "keys")
    (me, address), = [(t, swarm.address_of(t) or "") for t in swarm.add_tasks(1)]
    async with callout_server(tmp_path, files) as server:
        env = _leader_env(files, server, docker_api)
        async with leader_process(env, tmp_path / "leader.log") as leader:
            async with admitted(server, address, timeout=30):
                pass  # the leader is up and answers
            coordinator = await user(server, "coordinator", "COORD_PASS", "_INBOX.coord")
            agents = await coordinator.jetstream().key_value("chorus_agents")
            async def written() -> bool:
                return bool(await agents.keys())

            await wait_for(written, timeout=10, what="the leader's agents")
            await coordinator.close()

            with structlog.testing.capture_logs() as logs:
                async with run_bridge(bridge_settings(settings, files), server.url,
                                      first_round=False) as running:
                    standby = running.bridge

                    def standing_by() -> bool:
                        return standby.election.leader is not None and any(
                            e["event"] == "callout_serving" and e["agents"] == 1 for e in logs)

                    await wait_for(standing_by, timeout=15,
                                   what="the standby to load the agents")
                    assert not standby.election.is_leader.is_set()

                    leader.kill()  # SIGKILL: no resignation, the lease stays until it expires
                    async with asyncio.timeout(10):
                        await leader.wait()
                    async with admitted(server, address, timeout=10):
                        assert not standby.election.is_leader.is_set(), "the lease expired first"
    answered = [e for e in logs if e["event"] == "callout_admitted"]
    assert [(e["agent_id"], e["address"]) for e in answered] == [(me, address)]
