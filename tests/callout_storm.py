"""Many agents that stay connected through the auth callout, each from its own loopback
address, and reconnect as the agent library does (bridge/edges/nats_client.py: a first
attempt at once, then one every RECONNECT_WAIT seconds from the start of the last): what a
NATS restart under a fleet looks like to the callout.

Each agent is the raw protocol client of tests/callout_client.py (nats-py cannot choose its
source address), so a thousand of them cost one process little. The storm counts what an
operator would: refusals ("Authorization Violation"), and when each agent was back.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import dataclasses
import ipaddress
import os
import socket
import ssl
import sys
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import httpx
from prometheus_client.parser import text_string_to_metric_families

from tests.callout_client import Refused, raw_connect
from tests.callout_support import AGENT_PASSWORD, PASSWORDS, CalloutFiles

__all__ = [
    "BridgeProcess",
    "Storm",
    "bridge_env",
    "bridge_process",
    "storm",
    "storm_addresses",
]

# The agent library's wait between attempts on one server (bridge/edges/nats_client.py).
RECONNECT_WAIT = 0.5


def storm_addresses(count: int, network: str = "127.60.0.0/16") -> list[str]:
    """`count` loopback addresses, one per agent (the known endpoints' addresses)."""
    hosts = ipaddress.ip_network(network).hosts()
    return [str(next(hosts)) for _ in range(count)]


@dataclasses.dataclass
class _Agent:
    address: str
    connected: asyncio.Event = dataclasses.field(default_factory=asyncio.Event)
    back_at: float | None = None  # loop time of the last admission
    refusals: int = 0
    failures: int = 0  # no answer at all (the server down)


class Storm:
    """The fleet; `run()` keeps every agent connected until cancelled."""

    def __init__(
        self,
        port: int,
        addresses: list[str],
        *,
        wait: float = RECONNECT_WAIT,
        user: str = "agent",
        password: str = AGENT_PASSWORD,
        tls: ssl.SSLContext | None = None,
    ) -> None:
        self._port = port
        self._tls = tls
        self._wait = wait
        self._user, self._password = user, password
        self.agents = [_Agent(address) for address in addresses]
        self.refusal_texts: list[str] = []
        # What the attempts without an answer met, by kind ("ConnectionRefusedError", ...).
        self.failure_kinds: collections.Counter[str] = collections.Counter()
        self.failure_times: list[float] = []  # loop time of each, in order

    @property
    def refusals(self) -> int:
        return sum(agent.refusals for agent in self.agents)

    @property
    def failures(self) -> int:
        """Attempts that got no answer: the server down, or over TLS a handshake cut short."""
        return sum(agent.failures for agent in self.agents)

    @property
    def connected(self) -> int:
        return sum(agent.connected.is_set() for agent in self.agents)

    def back_since(self, since: float) -> list[float]:
        """Seconds from `since` (loop time) to each agent's admission after it; agents not
        back since are left out."""
        return sorted(
            agent.back_at - since
            for agent in self.agents
            if agent.back_at is not None and agent.back_at >= since and agent.connected.is_set()
        )

    async def all_connected(self) -> None:
        for agent in self.agents:
            await agent.connected.wait()

    async def run(self) -> None:
        async with asyncio.TaskGroup() as tg:
            for agent in self.agents:
                tg.create_task(self._keep(agent))

    async def _keep(self, agent: _Agent) -> None:
        loop = asyncio.get_running_loop()
        while True:
            started = loop.time()
            try:
                async with raw_connect(
                    self._port,
                    source=agent.address,
                    user=self._user,
                    password=self._password,
                    tls=self._tls,
                ) as client:
                    agent.back_at = loop.time()
                    agent.connected.set()
                    await client.closed.wait()
                    agent.connected.clear()
                    continue  # the library's first attempt after a loss is at once
            except Refused as exc:
                if "Authorization" in str(exc):
                    agent.refusals += 1
                    self.refusal_texts.append(str(exc))
                else:
                    self._failed(agent, exc)
            except (OSError, TimeoutError) as exc:  # ssl.SSLError included
                self._failed(agent, exc)
            await asyncio.sleep(max(0.0, started + self._wait - loop.time()))

    def _failed(self, agent: _Agent, exc: Exception) -> None:
        agent.failures += 1
        self.failure_times.append(asyncio.get_running_loop().time())
        detail = f": {exc}" if isinstance(exc, Refused) else ""
        self.failure_kinds[f"{type(exc).__name__}{detail}"] += 1


@contextlib.asynccontextmanager
async def storm(
    port: int,
    addresses: list[str],
    *,
    user: str = "agent",
    password: str = AGENT_PASSWORD,
    tls: ssl.SSLContext | None = None,
) -> AsyncIterator[Storm]:
    """A running Storm of clients at `addresses` against the server on `port` (agents, or a
    static user that skips the callout: a baseline); over TLS with `tls`."""
    fleet = Storm(port, addresses, user=user, password=password, tls=tls)
    task = asyncio.create_task(fleet.run(), name="storm")
    try:
        yield fleet
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


def known_endpoints(addresses: list[str]) -> str:
    """WHOOSH_KNOWN_ENDPOINTS for agents at `addresses` (never called: no HTTP is sent)."""
    return ",".join(f"http://{address}:8080" for address in addresses)


def chunks(items: list[str], size: int) -> Iterator[list[str]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclasses.dataclass
class BridgeProcess:
    """`chorus-bridge run` in a process of its own, serving the callout; its /metrics."""

    process: asyncio.subprocess.Process
    http_port: int

    async def callouts(self) -> dict[tuple[str, str], float]:
        async with httpx.AsyncClient(trust_env=False) as client:
            response = await client.get(f"http://127.0.0.1:{self.http_port}/metrics")
        return {
            (sample.labels["outcome"], sample.labels["reason"]): sample.value
            for family in text_string_to_metric_families(response.text)
            if family.name == "chorus_bridge_callouts"
            for sample in family.samples
            if sample.name == "chorus_bridge_callouts_total"
        }


def bridge_env(
    url: str,
    files: CalloutFiles,
    addresses: list[str],
    http_port: int,
    *,
    xkey: bool = True,
    tls_ca: Path | None = None,
) -> dict[str, str]:
    """The bridge of the stack's names as the `bridge` user, serving the callout (requests
    sealed with `xkey`): discovery `dns` with the agents as known endpoints (no Docker; no
    HTTP is ever sent); `tls_ca`: NATS_TLS_CA, for a server that requires TLS. `http_port` 0:
    any free port."""
    own = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("BRIDGE_", "WHOOSH_", "NATS_", "DISCOVERY_", "DOCKER_"))
    }
    return {
        **own,
        "DISCOVERY_METHOD": "dns",
        "WHOOSH_DNS_NAMES": "",
        "WHOOSH_KNOWN_ENDPOINTS": known_endpoints(addresses),
        "NATS_URL": url,
        "NATS_USER": "bridge",
        "NATS_PASSWORD": PASSWORDS["BRIDGE_PASS"],
        "BRIDGE_LISTEN": f"127.0.0.1:{http_port}",
        "BRIDGE_LOG_LEVEL": "warning",
        "BRIDGE_AUTH_CALLOUT": "true",
        "BRIDGE_CALLOUT_ISSUER_SEED": str(files.issuer_seed),
        "BRIDGE_CALLOUT_AGENT_PASSWORD_FILE": str(files.agent_password),
        **({"BRIDGE_CALLOUT_XKEY_SEED": str(files.xkey_seed)} if xkey else {}),
        **({"NATS_TLS_CA": str(tls_ca)} if tls_ca is not None else {}),
    }


@contextlib.asynccontextmanager
async def bridge_process(
    url: str, files: CalloutFiles, addresses: list[str], log: Path, *, tls_ca: Path | None = None
) -> AsyncIterator[BridgeProcess]:
    """The bridge in its own process (as in the stack: the agents' load is not its own),
    stopped with SIGTERM on exit (SIGKILL after 10 s); its log goes to `log`. `tls_ca`: the
    CA it verifies a server with TLS by (NATS_TLS_CA)."""
    port = _free_port()
    with log.open("wb") as out:
        process = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "bridge",
            "run",
            env=bridge_env(url, files, addresses, port, tls_ca=tls_ca),
            stdout=out,
            stderr=asyncio.subprocess.STDOUT,
        )
        try:
            yield BridgeProcess(process, port)
        finally:
            if process.returncode is None:
                process.terminate()
                try:
                    async with asyncio.timeout(10):
                        await process.wait()
                except TimeoutError:
                    process.kill()
                    await process.wait()
