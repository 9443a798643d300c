"""Agents whose task left discovery lose the bus within a minute (DESIGN.md, "Trust").

A user the callout issued lives 10 minutes, and a connection outlives whatever the bridge
learns meanwhile: without this, a departed agent (or a new task that took its address and
connected before its departure was known) would keep the old agent's rights until then. So
the leader looks at the connections of the account AGENTS (`$SYS.REQ.ACCOUNT.AGENTS.CONNZ`),
and closes (`$SYS.REQ.SERVER.<server id>.KICK`, by connection id) each one the callout issued
(`issuer_key` set: static users have none) whose agent is no longer there: the callout would
not admit it as that agent from that address now (bridge/trust/agent_index.py), and discovery
has no such agent at that address either (so a lost bucket, refilled by the leader a moment
later, never closes anyone). The client reconnects through the callout, which refuses it, or,
at a reused address, admits it as the agent that is there now.

Why closing, and not a shorter expiry: a user that lives a minute would make every agent
reconnect every minute (a thousand callouts a minute, and the messages each reconnect misses)
to catch what happens a few times a day. Closing costs the bridge's user three subjects of
SYS, imported into its account by nats.conf: the servers' ids, AGENTS' connections, and
closing a connection by its id. That last one can close any client of the server, not only an
agent's: a power to disrupt, not to read or write anything, which the bridge has anyway over
agents (it refuses their callouts) and coordinators (it answers their requests).

Each departure (the index saw an agent go or move) starts a look at once; a look every
SWEEP_INTERVAL catches anything else.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import Callable
from typing import Any

import nats.errors
import structlog
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg

from bridge.ops.metrics import Metrics
from bridge.trust.agent_index import AgentAddresses, normal_address
from bridge.waits import raise_if_cancelled

__all__ = ["CONNZ_SUBJECT", "Evictions", "kick_subject"]

log = structlog.get_logger(__name__)

CONNZ_SUBJECT = "$SYS.REQ.ACCOUNT.AGENTS.CONNZ"
SWEEP_INTERVAL = 15.0
# A burst of departures is one look.
DEBOUNCE = 0.2
# How long the servers' answers are gathered (each server of a cluster answers).
GATHER = 0.5
# Connections per answer (nats-server's page size).
PAGE = 1024

# Where the discovered agent `agent_id` is: its address, or None when discovery has none.
Discovered = Callable[[str], str | None]


def kick_subject(server_id: str) -> str:
    return f"$SYS.REQ.SERVER.{server_id}.KICK"


class Evictions:
    """Closes the connections of agents that are gone, while `run()` runs (on the leader)."""

    def __init__(
        self, nc: NATS, agents: AgentAddresses, discovered: Discovered, *, metrics: Metrics
    ) -> None:
        self._nc = nc
        self._agents = agents
        self._discovered = discovered
        self._metrics = metrics
        self._failing = ""

    async def run(self) -> None:
        await self._agents.loaded.wait()
        while True:
            raise_if_cancelled()  # a stop some NATS call swallowed (bridge/waits.py)
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(SWEEP_INTERVAL):
                    await self._agents.departed.wait()
                    await asyncio.sleep(DEBOUNCE)
            self._agents.departed.clear()
            await self.sweep()

    async def sweep(self) -> int:
        """One look at every connection of AGENTS; how many were closed."""
        try:
            answers = await self._gather_all()
        except (nats.errors.Error, OSError) as exc:
            self._say(f"listing the agents' connections failed: {exc!r}")
            return 0
        if not answers:
            self._say(f"no server answered {CONNZ_SUBJECT} (see nats.conf's SYS exports)")
            return 0
        self._say("")
        closed = 0
        for server_id, connection in answers:
            if self._gone(connection) and await self._kick(server_id, connection):
                closed += 1
        return closed

    def _gone(self, connection: dict[str, Any]) -> bool:
        """A connection the callout admitted whose agent is not at its address any more."""
        agent_id = connection.get("authorized_user")
        if not connection.get("issuer_key") or not isinstance(agent_id, str):
            return False  # a static user of AGENTS (agents-ops), or not yet authorized
        address = normal_address(str(connection.get("ip", "")))
        admitted, _ = self._agents.agent_at(address or "", agent_id)
        return admitted != agent_id and self._discovered(agent_id) != address

    async def _kick(self, server_id: str, connection: dict[str, Any]) -> bool:
        agent_id, address = connection.get("authorized_user"), connection.get("ip")
        payload = json.dumps({"cid": connection.get("cid")}).encode()
        try:
            await self._nc.request(kick_subject(server_id), payload, timeout=GATHER)
        except (nats.errors.Error, OSError) as exc:
            log.warning("callout_eviction_failed", agent_id=agent_id, error=repr(exc))
            return False
        self._metrics.callout_evictions.inc()
        log.info(
            "callout_agent_evicted",
            agent_id=agent_id,
            address=address,
            reason="its task left discovery, or its address is another agent's now",
        )
        return True

    async def _gather_all(self) -> list[tuple[str, dict[str, Any]]]:
        """(server id, connection) of every open connection of AGENTS, page by page."""
        found: list[tuple[str, dict[str, Any]]] = []
        offset = 0
        while True:
            pages = await self._gather({"auth": True, "offset": offset, "limit": PAGE})
            more = False
            for server_id, data in pages:
                connections = data.get("connections") or []
                found += [(server_id, c) for c in connections if isinstance(c, dict)]
                more |= offset + len(connections) < int(data.get("total") or 0)
            if not more:
                return found
            offset += PAGE

    async def _gather(self, options: dict[str, object]) -> list[tuple[str, dict[str, Any]]]:
        answers: list[tuple[str, dict[str, Any]]] = []

        async def on_answer(msg: Msg) -> None:
            with contextlib.suppress(ValueError, TypeError, AttributeError):
                body = json.loads(msg.data)
                answers.append((str(body["server"]["id"]), dict(body["data"])))

        inbox = self._nc.new_inbox()
        sub = await self._nc.subscribe(inbox, cb=on_answer)
        try:
            await self._nc.publish(CONNZ_SUBJECT, json.dumps(options).encode(), reply=inbox)
            # Every server of a cluster answers, and how many there are is not known here:
            # what came within the window is the answer.
            await asyncio.sleep(GATHER)
        finally:
            with contextlib.suppress(nats.errors.Error):
                await sub.unsubscribe()
        return answers

    def _say(self, failure: str) -> None:
        if failure and failure != self._failing:
            log.warning("callout_evictions_failing", error=failure, retry_in_s=SWEEP_INTERVAL)
        elif not failure and self._failing:
            log.info("callout_evictions_working")
        self._failing = failure
