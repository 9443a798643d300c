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
import contextlib
import dataclasses
import ipaddress
from collections.abc import AsyncIterator, Iterator

from tests.callout_client import Refused, raw_connect
from tests.callout_support import AGENT_PASSWORD

__all__ = ["Storm", "storm", "storm_addresses"]

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

    def __init__(self, port: int, addresses: list[str], *, wait: float = RECONNECT_WAIT) -> None:
        self._port = port
        self._wait = wait
        self.agents = [_Agent(address) for address in addresses]
        self.refusal_texts: list[str] = []

    @property
    def refusals(self) -> int:
        return sum(agent.refusals for agent in self.agents)

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
                    self._port, source=agent.address, user="agent", password=AGENT_PASSWORD
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
                    agent.failures += 1
            except (OSError, TimeoutError):
                agent.failures += 1
            await asyncio.sleep(max(0.0, started + self._wait - loop.time()))


@contextlib.asynccontextmanager
async def storm(port: int, addresses: list[str]) -> AsyncIterator[Storm]:
    """A running Storm of agents at `addresses` against the server on `port`."""
    fleet = Storm(port, addresses)
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
