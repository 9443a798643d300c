"""What the agents' benchmarks share: a real nats-server running the stack's configuration (the
callout one, or nats.conf alone), `chorus-bridge run` in a process of its own whose agents are
known endpoints on 127.0.0.1 (so the callout admits each agent by its connection's name), a
coordinator following the announcements, and agents written with bridge.agent."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import os
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path

import nats
from common import REPO, child_process
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg

from bridge.contract.messages import ANNOUNCEMENT_DECODER
from bridge.contract.roster import PEERS_DECODER
from bridge.discovery.base import host_agent_id
from bridge.edges.nats_server import EmbeddedNats
from tests.callout_support import PASSWORDS
from tests.trust.support import shipped_server

__all__ = ["FIRST_PORT", "Stack", "agent_env", "agent_ids", "agent_script", "stack"]

FIRST_PORT = 19101
# `chorus-bridge run` with WHOOSH_KNOWN_ENDPOINTS read from a file: 10,000 endpoints are more
# than one environment variable may hold (128 KiB on Linux).
_RUN_WITH_ENDPOINTS = (
    "import os, sys; "
    "os.environ['WHOOSH_KNOWN_ENDPOINTS'] = open(sys.argv[1]).read(); "
    "sys.argv = ['chorus-bridge', 'run']; "
    "from bridge.cli.main import main; main()"
)


def agent_ids(count: int) -> list[str]:
    return [host_agent_id("127.0.0.1", FIRST_PORT + i) for i in range(count)]


@dataclasses.dataclass
class Stack:
    """The server, a coordinator, and when each agent was last announced off the bus
    (`time.perf_counter()`)."""

    server: EmbeddedNats
    coordinator: NATS
    off_bus_at: dict[str, float]
    on_bus: set[str]


def _bridge_env(url: str, keys: Path, *, callout: bool) -> dict[str, str]:
    own = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("BRIDGE_", "WHOOSH_", "NATS_", "DISCOVERY_", "DOCKER_"))
    }
    env = {
        **own,
        "DISCOVERY_METHOD": "dns",
        "WHOOSH_DOCKER_ENABLED": "false",
        "WHOOSH_DNS_NAMES": "",
        "NATS_URL": url,
        "NATS_USER": "bridge",
        "NATS_PASSWORD": PASSWORDS["BRIDGE_PASS"],
        "BRIDGE_LISTEN": "127.0.0.1:0",
        "BRIDGE_LOG_LEVEL": "warning",
    }
    if callout:
        env |= {
            "BRIDGE_AUTH_CALLOUT": "true",
            "BRIDGE_CALLOUT_ISSUER_SEED": str(keys / "issuer.seed"),
            "BRIDGE_CALLOUT_XKEY_SEED": str(keys / "xkey.seed"),
            "BRIDGE_CALLOUT_AGENT_PASSWORD_FILE": str(keys / "agent.password"),
        }
    return env


@contextlib.asynccontextmanager
async def stack(directory: Path, count: int, *, callout: bool) -> AsyncIterator[Stack]:
    """The server (nats-callout.conf, or nats.conf without the callout) and the bridge with
    `count` agents; yields once the bridge answers the roster with all of them."""
    await asyncio.to_thread(directory.mkdir, parents=True, exist_ok=True)
    async with shipped_server(directory, callout=callout) as server:
        if callout:
            password = directory / "keys" / "agent.password"
            await asyncio.to_thread(password.write_text, PASSWORDS["AGENT_PASS"])
        env = _bridge_env(server.url, directory / "keys", callout=callout)
        endpoints = directory / "endpoints"
        await asyncio.to_thread(
            endpoints.write_text,
            ",".join(f"http://127.0.0.1:{FIRST_PORT + i}" for i in range(count)),
        )
        async with child_process(
            "bridge",
            [sys.executable, "-c", _RUN_WITH_ENDPOINTS, str(endpoints)],
            env=env,
            stderr_to=directory / "bridge.log",
        ):
            coordinator = await nats.connect(
                server.url,
                user="coordinator",
                password=PASSWORDS["COORD_PASS"],
                inbox_prefix="_INBOX.coord",
            )
            seen = Stack(server, coordinator, {}, set())

            async def heard(msg: Msg) -> None:
                agent = ANNOUNCEMENT_DECODER.decode(msg.data).agent
                if agent.on_bus:
                    seen.on_bus.add(agent.id)
                else:
                    seen.on_bus.discard(agent.id)
                    seen.off_bus_at[agent.id] = time.perf_counter()

            await coordinator.subscribe("chorus.agents.announce", cb=heard)
            try:
                await _until_roster(coordinator, count)
                yield seen
            finally:
                await coordinator.close()


async def _until_roster(nc: NATS, count: int, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        with contextlib.suppress(nats.errors.Error):
            msg = await nc.request("chorus.bridge.agents", b"", timeout=2)
            if len(PEERS_DECODER.decode(msg.data)) == count:
                return
        if time.monotonic() > deadline:
            raise TimeoutError(f"the bridge did not list {count} agents within {timeout:.0f} s")
        await asyncio.sleep(0.2)


def agent_script() -> list[str]:
    """The documented example agent (docs/examples/agent.py), run with this interpreter."""
    return [sys.executable, str(REPO / "docs" / "examples" / "agent.py")]


def agent_env(server: EmbeddedNats, agent_id: str) -> dict[str, str]:
    return {
        "NATS_URL": server.url,
        "AGENT_ID": agent_id,
        "AGENT_PASS": PASSWORDS["AGENT_PASS"],
        "AGENT_ROLES": "tpm",
        "PYTHONPATH": str(REPO),
    }
