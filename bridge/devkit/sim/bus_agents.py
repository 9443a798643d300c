"""Simulated agents on the bus: presence, acks of council opportunities, claims.

Each agent speaks as the agent library (`bridge.agent`) does: the same presence key, ack and
claim subjects and messages. Unlike a real agent, agents share a few NATS connections (by
default one per 500 agents): each connection has one subscription to the opportunities
subject that answers for all its agents, and its agents' presence entries are written in
batches, so 10,000 agents cost a handful of connections.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
from collections.abc import Awaitable, Callable, Sequence
from types import TracebackType

import nats.errors
import structlog

from bridge.agent import AGENT_INBOX_PREFIX, PRESENCE_INTERVAL, claim_message
from bridge.contract.names import Names
from bridge.devkit.sim.agent import ClaimPolicy, SimAgent
from bridge.devkit.sim.bus_connection import AgentsConnection, BusAuth
from bridge.devkit.sim.claims import ClaimAsker
from bridge.devkit.sim.presence import ensure_presence_bucket
from bridge.edges.nats_client import connect
from bridge.errors import NatsError
from bridge.waits import cancel_and_wait, raise_if_cancelled

__all__ = ["AGENTS_PER_CONNECTION", "PRESENCE_INTERVAL", "BusAgents"]

log = structlog.get_logger(__name__)

AGENTS_PER_CONNECTION = 500


class BusAgents:
    """Puts `agents` on the bus for as long as the context is open.

    On entry: connects, makes sure the presence bucket exists, subscribes, and writes every
    agent's presence (confirmed by the server; `on_joined` is called for each). Then presence
    is refreshed every `presence_interval` seconds. On exit: every entry is purged, so the
    agents leave cleanly, and the connections are drained.

    `resilient=True` (a long-running single agent) logs and retries bucket and presence
    failures on the next refresh instead of raising them on entry. `ask_claims`: claims go
    as requests and their answers land on the agents (`SimAgent.answers`), on each agent's
    own inbox.
    `jetstream=False`: the agents' user has no JetStream (nats.conf's AGENTS account): the
    bridge makes the bucket, and writes are flushed, not confirmed.
    """

    def __init__(
        self,
        agents: Sequence[SimAgent],
        *,
        nats_url: str,
        names: Names,
        auth: BusAuth | None = None,
        connections: int | None = None,
        claim_policy: ClaimPolicy | None = None,
        presence_ttl: int | None = None,
        presence_interval: float = PRESENCE_INTERVAL,
        on_joined: Callable[[SimAgent], None] | None = None,
        inbox_prefix: str = AGENT_INBOX_PREFIX,
        client_name: str = "chorus-sim",
        resilient: bool = False,
        ask_claims: bool = False,
        jetstream: bool = True,
    ) -> None:
        self._agents = list(agents)
        self._url = nats_url
        self._names = names
        self._auth = auth or BusAuth()
        count = connections or math.ceil(len(self._agents) / AGENTS_PER_CONNECTION)
        self._connection_count = max(1, min(count, len(self._agents) or 1))
        self._claim_policy = claim_policy
        self._presence_ttl = presence_ttl
        self._interval = presence_interval
        self._on_joined = on_joined
        self._inbox_prefix = inbox_prefix
        self._client_name = client_name
        self._resilient = resilient
        self._ask_claims = ask_claims
        self._jetstream = jetstream
        self._stack = contextlib.AsyncExitStack()
        self._connections: list[AgentsConnection] = []
        self._home: dict[str, AgentsConnection] = {}
        self._written: set[str] = set()  # ids whose entries may be live in the bucket
        self._refresher: asyncio.Task[None] | None = None
        self._healthy = True

    @property
    def connections(self) -> int:
        return len(self._connections)

    async def __aenter__(self) -> BusAgents:
        try:
            await self._start()
        except BaseException:
            try:
                await self._purge_all()
            finally:
                await self._stack.aclose()
            raise
        return self

    async def _start(self) -> None:
        for number, agents in enumerate(self._groups()):
            nc = await self._stack.enter_async_context(
                connect(
                    self._auth.settings(),
                    self._url,
                    name=f"{self._client_name}-{number}",
                    inbox_prefix=self._inbox_prefix,
                    on_reconnect=self._reconnected(number),
                )
            )
            connection = AgentsConnection(
                nc,
                self._names,
                agents,
                claim_policy=self._claim_policy,
                presence_ttl=self._presence_ttl,
                asker=ClaimAsker(nc, self._names) if self._ask_claims else None,
                jetstream=self._jetstream,
            )
            self._connections.append(connection)
            self._home.update((agent.id, connection) for agent in agents)
        await self._ensure_bucket()
        for connection in self._connections:
            await connection.subscribe()
        for connection in self._connections:
            await self._join(connection)
        self._refresher = asyncio.create_task(self._refresh_forever(), name="sim-presence")
        log.info(
            "sim_bus_agents_started",
            agents=len(self._agents),
            connections=len(self._connections),
            bucket=self._names.presence_bucket,
        )

    def _groups(self) -> list[list[SimAgent]]:
        """Consecutive agents, split as evenly as possible over the connections."""
        size, extra = divmod(len(self._agents), self._connection_count)
        groups, start = [], 0
        for number in range(self._connection_count):
            end = start + size + (1 if number < extra else 0)
            groups.append(self._agents[start:end])
            start = end
        return groups

    def _reconnected(self, number: int) -> Callable[[], Awaitable[None]]:
        async def rewrite() -> None:
            # Entries may have expired while the connection was down.
            if number < len(self._connections):
                await self._write_safely(self._connections[number], self._live(number))

        return rewrite

    def _live(self, number: int) -> list[SimAgent]:
        return [
            agent
            for agent in self._connections[number].agents
            if agent.present and agent.behaviour != "leave"
        ]

    async def _ensure_bucket(self) -> None:
        if not self._jetstream:
            return  # the bridge makes it
        try:
            await ensure_presence_bucket(self._connections[0].nc, self._names)
        except NatsError as exc:
            if not self._resilient:
                raise
            self._set_healthy(False, str(exc))

    async def _join(self, connection: AgentsConnection) -> None:
        for agent in connection.agents:
            agent.present = True
        if self._resilient:
            await self._write_safely(connection, connection.agents)
        else:
            await self._write(connection, connection.agents)
        if self._on_joined is not None:
            for agent in connection.agents:
                self._on_joined(agent)

    async def _write(self, connection: AgentsConnection, agents: Sequence[SimAgent]) -> None:
        self._written.update(agent.id for agent in agents)
        await connection.presence.write(agents)

    async def _write_safely(self, connection: AgentsConnection, agents: Sequence[SimAgent]) -> None:
        try:
            if not self._healthy and self._jetstream:
                await ensure_presence_bucket(connection.nc, self._names)
            await self._write(connection, agents)
        except (NatsError, nats.errors.Error) as exc:
            self._set_healthy(False, str(exc))
        else:
            self._set_healthy(True)

    def _set_healthy(self, healthy: bool, error: str = "") -> None:
        if healthy != self._healthy:
            self._healthy = healthy
            if healthy:
                log.info("sim_presence_recovered", bucket=self._names.presence_bucket)
            else:
                log.warning("sim_presence_failing", bucket=self._names.presence_bucket, error=error)

    async def _refresh_forever(self) -> None:
        while True:
            raise_if_cancelled()  # a stop that a write's NATS call swallowed (bridge/waits.py)
            await asyncio.sleep(self._interval)
            await self.refresh()

    async def refresh(self) -> None:
        """Rewrite the presence of every agent on the bus now (also done on a timer)."""
        for number, connection in enumerate(self._connections):
            agents = self._live(number)
            if not self._healthy or self._resilient:
                await self._write_safely(connection, agents)
                continue
            try:
                self._written.update(agent.id for agent in agents)
                await connection.presence.refresh(agents)
            except (nats.errors.Error, OSError) as exc:
                self._set_healthy(False, repr(exc))

    async def claim(self, agent: SimAgent, opportunity_id: str, role: str) -> None:
        """Claim `role` as `agent` now (as a request when the agents ask their claims)."""
        connection = self._home[agent.id]
        if connection.asker is not None:
            await connection.asker.claim(agent, opportunity_id, role)
        else:
            await connection.nc.publish(*claim_message(self._names, opportunity_id, agent.id, role))

    async def ask_again(self) -> int:
        """Send the claims still unanswered once more; how many."""
        return sum([await c.asker.ask_again() for c in self._connections if c.asker is not None])

    @property
    def unanswered(self) -> int:
        """Claims sent as requests whose answer has not come."""
        return sum(c.asker.unanswered for c in self._connections if c.asker is not None)

    async def leave(self, agent: SimAgent, *, purge: bool = True) -> None:
        """Take `agent` off the bus: no more acks or refreshes; purge=False lets it expire."""
        agent.present = False
        if purge:
            await self._home[agent.id].presence.purge([agent])
            self._written.discard(agent.id)
        log.info("sim_agent_left", agent_id=agent.id, purged=purge)

    async def rejoin(self, agent: SimAgent) -> None:
        """Put `agent` back on the bus: its presence is written at once."""
        agent.present = True
        await self._write(self._home[agent.id], [agent])
        log.info("sim_agent_rejoined", agent_id=agent.id)

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._refresher is not None:
            await cancel_and_wait(self._refresher)
        try:
            await self._purge_all()
        finally:
            for agent in self._agents:
                agent.present = False
            await self._stack.aclose()
        log.info("sim_bus_agents_stopped", agents=len(self._agents))

    async def _purge_all(self) -> None:
        for connection in self._connections:
            agents = [agent for agent in connection.agents if agent.id in self._written]
            if not agents or not connection.nc.is_connected:
                continue  # without a connection, the entries expire on their own
            try:
                await connection.presence.purge(agents)
            except NatsError as exc:
                log.warning("sim_presence_not_purged", agents=len(agents), error=str(exc))
            self._written.difference_update(agent.id for agent in agents)
