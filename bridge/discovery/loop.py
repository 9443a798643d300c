"""The discovery loop: rounds on the poll interval, at once after Docker events, and soon
after a change while tasks are still starting."""

from __future__ import annotations

import asyncio

import structlog

from bridge.config import Settings
from bridge.discovery.methods import Discoverer
from bridge.registry import AgentRegistry
from bridge.roster import Roster

__all__ = ["DiscoveryLoop"]

log = structlog.get_logger(__name__)

# A burst of Docker events (a scale of 10 makes dozens) becomes one round.
DEBOUNCE = 0.1
# While tasks are starting, re-check soon (no event says when a task turns running).
FOLLOWUP_MIN, FOLLOWUP_MAX = 0.25, 5.0


class DiscoveryLoop:
    """Runs rounds on the poll interval, at once after Docker events, and soon after changes."""

    def __init__(self, settings: Settings, discoverer: Discoverer, roster: Roster,
                 registry: AgentRegistry) -> None:
        self._settings = settings
        self._discoverer = discoverer
        self._roster = roster
        self._registry = registry
        self._wake = asyncio.Event()
        self.rounds = 0
        self.last_success: float | None = None
        self.first_round = asyncio.Event()

    def trigger(self) -> None:
        """Ask for a round now (debounced)."""
        self._wake.set()

    async def run_round(self) -> int:
        """One round, folded into the roster and written to the bucket; returns pending tasks."""
        result = await self._discoverer.round()
        self._roster.apply(swarm=result.swarm, dns=result.dns,
                           swarm_expected=result.swarm_expected)
        synced = await self._registry.sync(self._roster.agents)
        self.rounds += 1
        # Healthy means the configured source answered: a DNS fallback keeps the bucket
        # useful, but a broken Docker API must still show on /healthz.
        if (result.error is None) if result.swarm_expected else bool(
                result.dns and result.dns.complete):
            self.last_success = asyncio.get_running_loop().time()
        if synced.writes or synced.failed:
            log.info("agents_changed", joined=synced.joined, updated=synced.updated,
                     left=synced.left, failed_writes=synced.failed,
                     agents=len(self._registry.published),
                     round_ms=round(result.duration_s * 1000, 1))
        self.first_round.set()
        return result.pending

    async def run(self) -> None:
        followup = FOLLOWUP_MIN
        while True:
            pending = await self.run_round()
            if pending:
                delay = min(followup, self._settings.poll_interval)
                followup = min(followup * 2, FOLLOWUP_MAX)
            else:
                delay, followup = self._settings.poll_interval, FOLLOWUP_MIN
            await self._wait(delay)

    async def _wait(self, delay: float) -> None:
        try:
            async with asyncio.timeout(delay):
                await self._wake.wait()
        except TimeoutError:
            return
        await asyncio.sleep(DEBOUNCE)  # let the rest of the burst arrive
        self._wake.clear()
