"""The demo's council: who holds each role and how soon it activated; with `--keep`, a
newcomer kills a holder (`kill` on the demo's stdin) and watches the council degrade and heal.
"""

from __future__ import annotations

import asyncio
import contextlib
import sys
import time
from collections.abc import Callable, Iterator

import structlog
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg

from bridge.contract.messages import (
    COUNCIL_EVENT_DECODER,
    COUNCIL_STATE_DECODER,
    CouncilEvent,
    CouncilOpportunity,
    CouncilRequest,
    CouncilState,
    encode,
)
from bridge.contract.names import Names
from bridge.devkit.emulator import EmulatedSwarm
from bridge.devkit.sim import SimFleet
from bridge.errors import BridgeError

__all__ = ["CouncilWatch", "Newcomer"]

log = structlog.get_logger(__name__)

Say = Callable[[str], None]
WAIT = 30.0


class CouncilWatch:
    """A council's events as they come (printed when `loud`), and its state on request."""

    def __init__(self, nc: NATS, names: Names, opportunity: CouncilOpportunity, say: Say) -> None:
        self._nc, self._names, self._say = nc, names, say
        self.opportunity = opportunity
        self.events: list[tuple[float, CouncilEvent]] = []
        self.loud = False
        self._changed = asyncio.Event()

    async def start(self) -> None:
        await self._nc.subscribe(self._names.council_events(self.opportunity.id), cb=self._on)
        await self._nc.flush()

    async def _on(self, msg: Msg) -> None:
        event = COUNCIL_EVENT_DECODER.decode(msg.data)
        self.events.append((time.perf_counter(), event))
        self._changed.set()
        if self.loud:
            who = f" {event.role} ({event.agent_id})" if event.role else ""
            self._say(f"  event: {event.event}{who}")

    def count(self, name: str) -> int:
        return sum(event.event == name for _at, event in self.events)

    async def until(self, name: str, count: int = 1) -> float:
        """Wait for the `count`-th event `name`; when it came (time.perf_counter())."""
        async with asyncio.timeout(WAIT):
            while self.count(name) < count:
                self._changed.clear()
                await self._changed.wait()
        return [at for at, event in self.events if event.event == name][count - 1]

    async def state(self) -> CouncilState:
        request = encode(CouncilRequest(opportunity_id=self.opportunity.id))
        msg = await self._nc.request(self._names.council, request, timeout=WAIT)
        return COUNCIL_STATE_DECODER.decode(msg.data)

    def show(self, state: CouncilState) -> Iterator[str]:
        for role in state.roles:
            kind = "core role" if role.core else "role     "
            yield f"  {kind} {role.name:<26} held by {role.holder or '(nobody)'}"


class Newcomer:
    """`kill` (or `kill AGENT_ID`) on the demo's stdin: the agent's task leaves the emulated
    swarm and the agent the bus; the council loses its role, and an idle agent on the bus
    claims it."""

    def __init__(
        self, watch: CouncilWatch, swarm: EmulatedSwarm, fleet: SimFleet, say: Say
    ) -> None:
        self._watch, self._swarm, self._fleet, self._say = watch, swarm, fleet, say
        self._lines: asyncio.Queue[str] = asyncio.Queue()

    @contextlib.contextmanager
    def reading(self) -> Iterator[None]:
        """Read stdin lines while the context is open (a closed stdin reads nothing)."""
        loop = asyncio.get_running_loop()
        try:
            loop.add_reader(sys.stdin.fileno(), self._readable)
        except (OSError, ValueError, NotImplementedError):
            yield  # no stdin to read (a file that is not a pipe or a terminal)
            return
        try:
            yield
        finally:
            loop.remove_reader(sys.stdin.fileno())

    def _readable(self) -> None:
        line = sys.stdin.readline()
        if not line:  # end of input
            asyncio.get_running_loop().remove_reader(sys.stdin.fileno())
            return
        self._lines.put_nowait(line.strip())

    async def run(self) -> None:
        """Take `kill` commands until cancelled."""
        self._watch.loud = True
        while True:
            words = (await self._lines.get()).split()
            if not words or words[0] != "kill":
                self._say("  (type `kill` or `kill AGENT_ID`)")
                continue
            try:
                await self._kill(words[1] if len(words) > 1 else None)
            except (BridgeError, TimeoutError) as exc:
                self._say(f"  could not: {exc}")

    async def _kill(self, agent_id: str | None) -> None:
        state = await self._watch.state()
        held = {role.holder: role for role in state.roles if role.holder}
        if agent_id is None:
            core = [role for role in state.roles if role.core and role.holder]
            agent_id = core[0].holder if core else None
        role = held.get(agent_id) if agent_id is not None else None
        if agent_id is None or role is None:
            raise BridgeError(f"{agent_id or 'nobody'} holds no role of {state.opportunity_id}")
        self._say(f"  killing {agent_id} (holds {role.name}): its task leaves the swarm")
        await self._gone(agent_id, degrades=role.core and state.state == "active")
        idle = [a for a in self._fleet.bus_agents if a.present and a.id not in held]
        if idle:
            self._say(f"  {idle[0].id}, on the bus and idle, claims {role.name}")
            granted, activated = self._watch.count("granted"), self._watch.count("activated")
            await self._fleet.claim(idle[0].id, state.opportunity_id, role.name)
            await self._watch.until("granted", granted + 1)
            if role.core:
                await self._watch.until("activated", activated + 1)
        else:
            self._say(f"  no agent on the bus is idle to claim {role.name}")
        for line in self._watch.show(await self._watch.state()):
            self._say(line)

    async def _gone(self, agent_id: str, *, degrades: bool) -> None:
        """The agent's task leaves the swarm and the agent the bus; until its role is released
        (and the council degraded, when it loses a core role of an active council)."""
        released, degraded = self._watch.count("released"), self._watch.count("degraded")
        self._swarm.remove_task(agent_id)
        if self._fleet.agent(agent_id).on_bus:
            await self._fleet.leave(agent_id)
        await self._watch.until("released", released + 1)
        if degrades:
            await self._watch.until("degraded", degraded + 1)
