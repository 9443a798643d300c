"""The agents' side against the real thing: nats-server running nats-callout.conf (the stack's
accounts and the callout), the real bridge serving the callout, and agents in processes of
their own, written with either library.

The bridge discovers its agents as known endpoints on 127.0.0.1 (DNS discovery, no Docker):
several agents at one address, so the callout admits a connection from 127.0.0.1 as the agent
its connection's name names (the libraries name it after the agent), and as no other. No HTTP
is sent to them unless a broadcast finds one that did not ack; nothing listens there.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import os
import shutil
import signal
import subprocess
import sys
from collections.abc import AsyncIterator, Callable, Sequence
from pathlib import Path
from typing import Any

import nats
from nats.aio.client import Client as NATS

from bridge.config import Settings
from bridge.contract.messages import ANNOUNCEMENT_DECODER, Announcement
from bridge.contract.names import Names
from bridge.discovery.base import host_agent_id
from bridge.edges.nats_server import EmbeddedNats
from tests.callout_support import PASSWORDS, bridge_settings, callout_server, make_keys
from tests.conftest import RunningBridge, run_bridge, wait_for
from tests.js_support import unavailable

ROOT = Path(__file__).resolve().parents[2]
AGENT_TS = ROOT / "agent-ts"
NAMES = Names(prefix="chorus", agents_bucket="chorus_agents")
FIRST_PORT = 18101
LIBRARIES = ("python", "ts")
LINE_WAIT = 20.0


@dataclasses.dataclass
class Stack:
    """The server, the bridge, the ids of its agents, and a coordinator's view."""

    server: EmbeddedNats
    bridge: RunningBridge
    agent_ids: list[str]
    coordinator: NATS
    announcements: list[Announcement]

    def on_bus(self) -> set[str]:
        """The agents the bucket holds as on the bus."""
        return {a.id for a in self.bridge.bridge.registry.published.values() if a.on_bus}

    def announced(self, agent_id: str, on_bus: bool) -> Callable[[], bool]:
        def seen() -> bool:
            return any(
                a.agent.id == agent_id and a.agent.on_bus is on_bus for a in self.announcements
            )

        return seen


def bridge_base(count: int, ports: Sequence[int] = ()) -> tuple[Settings, list[str]]:
    """Settings of a bridge whose agents are `count` known endpoints on 127.0.0.1 (and one
    more on each of `ports`), and their ids."""
    every = [FIRST_PORT + i for i in range(count)] + list(ports)
    endpoints = [f"http://127.0.0.1:{port}" for port in every]
    settings = Settings(
        discovery_method="dns",
        docker_enabled=False,
        known_endpoints=tuple(endpoints),
        dns_names=(),
        poll_interval=60.0,
        listen_host="127.0.0.1",
        listen_port=0,
        bus_ack_wait=2.0,
        http_timeout=1.0,
    )
    return settings, [host_agent_id("127.0.0.1", port) for port in every]


@contextlib.asynccontextmanager
async def callout_stack(
    directory: Path, count: int, ports: Sequence[int] = ()
) -> AsyncIterator[Stack]:
    """nats-callout.conf, the real bridge (callout on) with `count` agents (and one on each of
    `ports`: an HTTP agent listening there), a coordinator."""
    files = make_keys(directory / "keys")
    base, ids = bridge_base(count, ports)
    async with (
        callout_server(directory, files) as server,
        run_bridge(bridge_settings(base, files), server.url) as running,
    ):
        coordinator = await nats.connect(
            server.url,
            user="coordinator",
            password=PASSWORDS["COORD_PASS"],
            inbox_prefix="_INBOX.coord",
            max_reconnect_attempts=1,
        )
        seen: list[Announcement] = []

        async def heard(msg: Any) -> None:
            seen.append(ANNOUNCEMENT_DECODER.decode(msg.data))

        await coordinator.subscribe(NAMES.announce, cb=heard)
        await coordinator.flush()
        callout = running.bridge.callout
        assert callout is not None
        try:
            await wait_for(lambda: len(running.bridge.registry.published) == len(ids), timeout=15)
            yield Stack(server, running, ids, coordinator, seen)
        finally:
            await coordinator.close()


class AgentProcess:
    """One scenario agent (tests/agents/scenario_agent.py or its TypeScript twin)."""

    def __init__(self, proc: asyncio.subprocess.Process, agent_id: str) -> None:
        self.proc, self.id = proc, agent_id
        self.lines: list[dict[str, Any]] = []

    async def line(self, match: Callable[[dict[str, Any]], bool]) -> dict[str, Any]:
        """The first line (kept or to come) that `match`es; fails after LINE_WAIT s."""
        for line in self.lines:
            if match(line):
                return line
        assert self.proc.stdout is not None
        async with asyncio.timeout(LINE_WAIT):
            while raw := await self.proc.stdout.readline():
                heard: dict[str, Any] = json.loads(raw)
                self.lines.append(heard)
                if match(heard):
                    return heard
        raise AssertionError(f"agent {self.id} ended (status {await self.proc.wait()})")

    async def do(self, **command: Any) -> dict[str, Any]:
        """Send a command and return the line that says it was done."""
        assert self.proc.stdin is not None
        self.proc.stdin.write(json.dumps(command).encode() + b"\n")
        await self.proc.stdin.drain()
        done = await self.line(lambda line: line.get("did") == command["do"])
        self.lines.remove(done)  # the next one of the same kind is another
        return done

    async def stop(self, signum: int = signal.SIGTERM) -> tuple[int, str]:
        """Send `signum` and return the exit status and what it wrote on stderr."""
        if self.proc.returncode is None:
            self.proc.send_signal(signum)
        assert self.proc.stderr is not None
        async with asyncio.timeout(15):
            err = await self.proc.stderr.read()
            return await self.proc.wait(), err.decode(errors="replace")


def agent_command(library: str) -> list[str]:
    if library == "python":
        return [sys.executable, str(ROOT / "tests" / "agents" / "scenario_agent.py")]
    return [node(), str(AGENT_TS / "build" / "test" / "scenario-agent.js")]


@contextlib.asynccontextmanager
async def agent_process(
    library: str, server: EmbeddedNats, agent_id: str, roles: str = ""
) -> AsyncIterator[AgentProcess]:
    """A scenario agent of `library`, joined (it said so); killed on the way out if still
    running."""
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "PYTHONPATH": str(ROOT),
        "NATS_URL": server.url,
        "AGENT_ID": agent_id,
        "AGENT_USER": "agent",
        "AGENT_PASSWORD": PASSWORDS["AGENT_PASS"],
        "AGENT_ROLES": roles,
        "BRIDGE_SUBJECT_PREFIX": NAMES.prefix,
    }
    proc = await asyncio.create_subprocess_exec(
        *agent_command(library),
        env=env,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    agent = AgentProcess(proc, agent_id)
    try:
        await agent.line(lambda line: line.get("event") == "joined")
        yield agent
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()


def node() -> str:
    """The node binary (skipped without it; failed under CI=true)."""
    return shutil.which("node") or unavailable("node is not installed")


def build_ts() -> None:
    """agent-ts built with its tests (`npm run build:all`): the sources as they are now."""
    node()
    if not (AGENT_TS / "node_modules").is_dir():
        unavailable("agent-ts/node_modules is missing (run `npm ci` in agent-ts)")
    subprocess.run(
        ["npm", "run", "--silent", "build:all"], cwd=AGENT_TS, check=True, capture_output=True
    )
