"""The discovery pipeline: discovery -> roster -> registry, round after round.

Not a part of discovery (which only finds agents) nor of the registry (which only writes the
bucket): it is what joins them, and decides when a round runs:
- at once when something asks (a Docker event, a NATS reconnect): the first event of a burst
  starts a round without waiting, and the events that arrive while it runs make one more
  round after it, however many they are;
- soon after a round that found tasks not running yet, then less and less often (FollowUps);
- otherwise on the poll interval, the safety net for what no event reports.
"""

from __future__ import annotations

import asyncio

import structlog

from bridge.bus.registry import AgentRegistry
from bridge.config import Settings
from bridge.discovery.followup import FollowUps
from bridge.discovery.methods import Discoverer, RoundResult
from bridge.discovery.roster import Roster
from bridge.waits import wait_event

__all__ = ["DiscoveryPipeline"]

log = structlog.get_logger(__name__)


class DiscoveryPipeline:
    """Runs rounds and folds each into the roster and the bucket, until cancelled."""

    def __init__(self, settings: Settings, discoverer: Discoverer, registry: AgentRegistry) -> None:
        self._settings = settings
        self._discoverer = discoverer
        self._registry = registry
        self._wake = asyncio.Event()
        self._followups = FollowUps(settings.poll_interval)
        self._reported: set[str] = set()  # tasks logged as stuck, until they are not
        self.rounds = 0
        self.last_success: float | None = None
        self.first_round = asyncio.Event()

    def trigger(self) -> None:
        """Ask for a round now; also starts the follow-up schedule over."""
        self._followups.restart(asyncio.get_running_loop().time())
        self._wake.set()

    async def run_round(self, roster: Roster) -> RoundResult:
        """One round, folded into the roster and written to the bucket."""
        result = await self._discoverer.round()
        roster.apply(swarm=result.swarm, dns=result.dns, swarm_expected=result.swarm_expected)
        synced = await self._registry.sync(roster.agents)
        self.rounds += 1
        # Healthy means the configured source answered: a DNS fallback keeps the bucket
        # useful, but a broken Docker API must still show on /healthz.
        if (
            (result.error is None)
            if result.swarm_expected
            else bool(result.dns and result.dns.complete)
        ):
            self.last_success = asyncio.get_running_loop().time()
        if synced.writes or synced.failed:
            log.info(
                "agents_changed",
                joined=synced.joined,
                updated=synced.updated,
                left=synced.left,
                failed_writes=synced.failed,
                agents=len(self._registry.published),
                round_ms=round(result.duration_s * 1000, 1),
            )
        self.first_round.set()
        return result

    async def run(self, roster: Roster) -> None:
        """Rounds into `roster` (a leader's term: seeded from the bucket) until cancelled."""
        loop = asyncio.get_running_loop()
        while True:
            # Cleared before the round: whatever asks while it runs gets a round after it.
            self._wake.clear()
            result = await self.run_round(roster)
            delay = self._followups.after_round(
                result.not_running,
                loop.time(),
                round_s=result.duration_s,
                failed=result.swarm_expected and result.swarm is None,
            )
            self._note_stuck(result)
            await self._wait(delay)

    def _note_stuck(self, result: RoundResult) -> None:
        """Log once each task that stays not running after the follow-ups backed off."""
        waiting = set(result.not_running)
        self._reported &= waiting
        if not self._followups.backed_off or result.swarm is None:
            return
        now = asyncio.get_running_loop().time()
        without_address = set(result.swarm.without_address)
        for task_id in sorted(waiting - self._reported):
            since = self._followups.waiting_since(task_id)
            log.warning(
                "task_not_running",
                task_id=task_id,
                reason="no address" if task_id in without_address else "not running",
                networks=",".join(self._settings.network_names) or "(any)",
                waiting_s=None if since is None else round(now - since, 1),
                recheck_s=self._settings.poll_interval,
            )
            self._reported.add(task_id)

    async def _wait(self, delay: float) -> None:
        await wait_event(self._wake, delay)
