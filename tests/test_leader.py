"""Several bridges against one NATS: one leader, and a standby that takes over."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
import time
from pathlib import Path

import httpx
import pytest
from nats.aio.client import Client as NATS

from bridge.embedded import EmbeddedNats
from bridge.emulator import DockerEmulator, EmulatedSwarm
from bridge.registry import read_bucket
from tests.conftest import wait_for

pytestmark = pytest.mark.timeout(120)


class BridgeProcess:
    """`chorus-bridge run` as a child process, its JSON log lines collected."""

    def __init__(self, proc: asyncio.subprocess.Process) -> None:
        self.proc = proc
        self.lines: list[dict[str, object]] = []
        self.reader = asyncio.create_task(self._read())

    async def _read(self) -> None:
        assert self.proc.stderr is not None
        async for raw in self.proc.stderr:
            try:
                self.lines.append(json.loads(raw))
            except ValueError:
                continue

    def saw(self, event: str) -> bool:
        return any(line.get("event") == event for line in self.lines)

    @property
    def http_port(self) -> int:
        return next(int(str(line["port"])) for line in self.lines
                    if line.get("event") == "http_listening")

    async def health(self) -> tuple[int, dict[str, object]]:
        async with httpx.AsyncClient(trust_env=False) as client:
            response = await client.get(f"http://127.0.0.1:{self.http_port}/healthz")
        return response.status_code, response.json()


async def start(nats_url: str, docker_host: str, unique: str) -> BridgeProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("NATS_", "BRIDGE_"))}
    env.update(NATS_URL=nats_url, WHOOSH_DOCKER_HOST=docker_host, DISCOVERY_METHOD="swarm",
               WHOOSH_DNS_NAMES="", BRIDGE_LISTEN="127.0.0.1:0", BRIDGE_POLL_INTERVAL="30",
               BRIDGE_SUBJECT_PREFIX=f"l{unique}", BRIDGE_KV_BUCKET=f"agents_{unique}")
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "bridge", "run", env=env, stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE)
    return BridgeProcess(proc)


async def test_standby_takes_over_after_sigkill(nats_server: EmbeddedNats, nc: NATS,
                                                tmp_path: Path, unique: str) -> None:
    """Kill the leader with SIGKILL: the standby leads within 15 s; the bucket stays right."""
    swarm = EmulatedSwarm()
    swarm.add_tasks(4)
    async with DockerEmulator(tmp_path / "docker.sock", swarm) as emulator:
        first = await start(nats_server.url, emulator.base_url, unique)
        await wait_for(lambda: first.saw("agents_changed"), timeout=20, what="the first leader")
        second = await start(nats_server.url, emulator.base_url, unique)
        try:
            await wait_for(lambda: second.saw("bridge_standby"), timeout=20, what="a standby")
            assert not second.saw("bridge_leader")
            code, health = await second.health()
            assert code == 200 and health["role"] == "standby"
            code, health = await first.health()
            assert code == 200 and health["role"] == "leader"
            kv = await nc.jetstream().key_value(f"agents_{unique}")

            async def bucket_right() -> bool:
                agents, _ = await read_bucket(kv)
                return {k: a.address for k, a in agents.items()} == {
                    t: swarm.address_of(t) for t in swarm.running_ids()}

            assert await bucket_right()
            first.proc.send_signal(signal.SIGKILL)
            killed = time.monotonic()
            await wait_for(lambda: second.saw("bridge_leader"), timeout=15 + 1,
                           what="the standby to take over")
            takeover = time.monotonic() - killed
            assert takeover < 15, takeover
            print(f"takeover after SIGKILL: {takeover:.1f} s")
            assert await bucket_right()
            swarm.add_tasks(2)
            await wait_for(bucket_right, timeout=5, what="the new leader to follow a scale-up")
            code, health = await second.health()
            assert code == 200 and health["role"] == "leader"
        finally:
            for bridge in (first, second):
                if bridge.proc.returncode is None:
                    bridge.proc.send_signal(signal.SIGTERM)
                    await asyncio.wait_for(bridge.proc.wait(), 15)
                await bridge.reader
        assert second.proc.returncode == 0
