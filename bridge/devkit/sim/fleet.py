"""A fleet of simulated agents: HTTP on loopback addresses, a share of them also on the bus."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Collection, Mapping, Sequence
from types import TracebackType

import structlog

from bridge.config import Settings
from bridge.contract.names import Names
from bridge.devkit.sim.agent import Behaviour, ClaimPolicy, SimAgent, build_agents, claim_core_role
from bridge.devkit.sim.bus_agents import PRESENCE_INTERVAL, BusAgents
from bridge.devkit.sim.bus_connection import BusAuth
from bridge.devkit.sim.http_agents import DEFAULT_OPPORTUNITY_PATH, HttpAgents

__all__ = ["Progress", "SimFleet"]

log = structlog.get_logger(__name__)

Progress = Callable[[int, int], None]


class SimFleet:
    """`n` simulated agents for as long as the context is open.

    Agent i listens on the i-th loopback address from `base` (skipping .0 and .255), all on
    one port (`port=None`: a free one). `on_bus` agents (a count, spread evenly over the
    indices, or the exact indices) also speak NATS at `nats_url`. Ids are `sim-<i>` unless
    `ids` are given, or `task_ids` (ids that are Swarm task ids, also put in presence entries).
    `behaviours` maps an index to a misbehaviour (see `Behaviour`). `claim_policy` decides
    which role an agent claims (default: agent i claims core role i); None claims nothing.
    `progress(started, total)` is called as agents come up. `ask_claims`: agents on the bus
    send their claims as requests and keep the answers (`SimAgent.answers`), on their own
    inboxes (`_INBOX.<agent id>`). `jetstream=False`:
    the agents' NATS user has no JetStream (nats.conf's AGENTS account; see `BusAgents`).
    """

    def __init__(
        self,
        n: int,
        *,
        on_bus: int | Collection[int] = 0,
        nats_url: str | None = None,
        names: Names | None = None,
        nats_user: str | None = None,
        nats_password: str | None = None,
        nats_token: str | None = None,
        opportunity_path: str = DEFAULT_OPPORTUNITY_PATH,
        base: str = "127.0.1.1",
        port: int | None = None,
        behaviours: Mapping[int, Behaviour] | None = None,
        ids: Sequence[str] | None = None,
        task_ids: Sequence[str] | None = None,
        connections: int | None = None,
        progress: Progress | None = None,
        claim_policy: ClaimPolicy | None = claim_core_role,
        slow_delay: float = 2.0,
        presence_interval: float = PRESENCE_INTERVAL,
        presence_ttl: int | None = None,
        ask_claims: bool = False,
        jetstream: bool = True,
    ) -> None:
        self.agents: list[SimAgent] = build_agents(
            n, base=base, on_bus=on_bus, behaviours=behaviours or {}, ids=ids, task_ids=task_ids
        )
        if any(agent.on_bus for agent in self.agents) and nats_url is None:
            raise ValueError("agents on the bus need nats_url")
        self.names = names or Names.from_settings(Settings())
        self.progress = progress
        self._by_id = {agent.id: agent for agent in self.agents}
        self._http = HttpAgents(
            self.agents,
            opportunity_path=opportunity_path,
            claim_policy=claim_policy,
            slow_delay=slow_delay,
            port=port,
            on_started=self._http_started,
        )
        self._bus: BusAgents | None = None
        if nats_url is not None and self.bus_agents:
            self._bus = BusAgents(
                self.bus_agents,
                nats_url=nats_url,
                names=self.names,
                connections=connections,
                auth=BusAuth(user=nats_user, password=nats_password, token=nats_token),
                claim_policy=claim_policy,
                presence_ttl=presence_ttl,
                presence_interval=presence_interval,
                on_joined=self._tick,
                ask_claims=ask_claims,
                jetstream=jetstream,
            )
        self._stack = contextlib.AsyncExitStack()
        self._started = 0
        self._entered = False

    @property
    def addresses(self) -> list[str]:
        return [agent.address for agent in self.agents]

    @property
    def port(self) -> int:
        """The port every agent listens on (known once the fleet is started)."""
        return self._http.port

    @property
    def bus_agents(self) -> list[SimAgent]:
        return [agent for agent in self.agents if agent.on_bus]

    @property
    def http_only(self) -> list[SimAgent]:
        return [agent for agent in self.agents if not agent.on_bus]

    @property
    def connections(self) -> int:
        """NATS connections the bus agents share (0 when none is on the bus)."""
        return self._bus.connections if self._bus is not None else 0

    def agent(self, agent_id: str) -> SimAgent:
        try:
            return self._by_id[agent_id]
        except KeyError:
            raise KeyError(f"no simulated agent has the id {agent_id!r}") from None

    def reached(self, opportunity_id: str) -> set[str]:
        """Ids of the agents that received that opportunity, by any path."""
        return {agent.id for agent in self.agents if agent.got(opportunity_id)}

    def _tick(self, _agent: SimAgent) -> None:
        self._started += 1
        if self.progress is not None:
            self.progress(self._started, len(self.agents))

    def _http_started(self, agent: SimAgent) -> None:
        # An agent on the bus counts as started once its presence is written.
        if not agent.on_bus or self._bus is None:
            self._tick(agent)

    async def __aenter__(self) -> SimFleet:
        if self._entered:
            raise RuntimeError("a SimFleet can be started once; create a new one")
        self._entered = True
        began = time.monotonic()
        try:
            await self._stack.enter_async_context(self._http)
            for agent in self.agents:
                agent.advertised_endpoint = agent.endpoint
            if self._bus is not None:
                await self._stack.enter_async_context(self._bus)
        except BaseException:
            await self._stack.aclose()
            raise
        log.info(
            "sim_fleet_started",
            agents=len(self.agents),
            on_bus=len(self.bus_agents),
            port=self.port,
            first=self.agents[0].address if self.agents else None,
            seconds=round(time.monotonic() - began, 3),
        )
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self._stack.aclose()
        log.info("sim_fleet_stopped", agents=len(self.agents))

    async def leave(self, agent_id: str, *, purge: bool = True) -> None:
        """Take an agent off the bus (purge=False: its entry is left to expire)."""
        await self._bus_of(agent_id).leave(self.agent(agent_id), purge=purge)

    async def rejoin(self, agent_id: str) -> None:
        """Put an agent that left back on the bus."""
        await self._bus_of(agent_id).rejoin(self.agent(agent_id))

    async def claim(self, agent_id: str, opportunity_id: str, role: str) -> None:
        """Claim a role as an agent on the bus, now."""
        await self._bus_of(agent_id).claim(self.agent(agent_id), opportunity_id, role)

    async def ask_again(self) -> int:
        """Send the claims still unanswered once more (as agents retry after a timeout)."""
        return await self._bus.ask_again() if self._bus is not None else 0

    @property
    def unanswered(self) -> int:
        """Claims sent as requests whose answer has not come (yet)."""
        return self._bus.unanswered if self._bus is not None else 0

    async def refresh_presence(self) -> None:
        """Rewrite every bus agent's presence now, without waiting for the timer."""
        if self._bus is not None:
            await self._bus.refresh()

    def _bus_of(self, agent_id: str) -> BusAgents:
        if self._bus is None or not self.agent(agent_id).on_bus:
            raise ValueError(f"agent {agent_id!r} is not one of the agents on the bus")
        return self._bus
