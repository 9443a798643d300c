"""The discovery pipeline: discovery -> roster -> registry, round after round.

Not a part of discovery (which only finds agents) nor of the registry (which only writes the
bucket): it is what joins them, and decides when a round runs:
- at once when something asks (trigger(): a NATS reconnect, an event stream opened again), and
  on a Docker event about the service's tasks (docker_event()), which also starts a burst of
  rounds unless one is open; whatever asks while a round runs makes one more round after it;
- while tasks wait, at most a quarter of a second apart for as long as a wait normally lasts,
  then less and less often (FollowUps, bridge/discovery/followup.py);
- otherwise on the poll interval, the safety net for what no event reports.
Tasks that stay waiting past a normal wait are logged once per slot, and a running task that can
only be reached on its node's own network once per task, with what to do.
"""

from __future__ import annotations

import asyncio

import structlog

from bridge.bus.registry import AgentRegistry
from bridge.config import Settings
from bridge.discovery.base import SwarmRound
from bridge.discovery.followup import SCHEDULE, FollowUps, Schedule
from bridge.discovery.methods import Discoverer, RoundResult
from bridge.discovery.roster import Roster
from bridge.waits import wait_event

__all__ = ["DiscoveryPipeline"]

log = structlog.get_logger(__name__)

_WHY = {"ready": "waiting to start", "pending": "not running", "without_address": "no address"}
_ON_HOST = {
    "host_network": "on the host network (--network host): no address on an overlay network",
    "host_port": "reached only through a host-mode published port: no overlay network",
}


class DiscoveryPipeline:
    """Runs rounds and folds each into the roster and the bucket, until cancelled."""

    def __init__(
        self,
        settings: Settings,
        discoverer: Discoverer,
        registry: AgentRegistry,
        schedule: Schedule = SCHEDULE,
    ) -> None:
        self._settings = settings
        self._discoverer = discoverer
        self._registry = registry
        self._wake = asyncio.Event()
        self._followups = FollowUps(settings.poll_interval, schedule)
        self._reported: set[str] = set()  # slots logged as stuck, while remembered
        self._on_host: set[str] = set()  # tasks logged as reached on their node's network
        self.rounds = 0
        self.last_success: float | None = None
        self.first_round = asyncio.Event()

    @property
    def discoverer(self) -> Discoverer:
        return self._discoverer

    def trigger(self) -> None:
        """Ask for a round now."""
        self._wake.set()

    def docker_event(self) -> None:
        """A Docker event about the service's tasks: a round now and a burst after it, unless
        a burst is open (one change, however many events announce it, is one burst)."""
        if self._followups.event(asyncio.get_running_loop().time()):
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
            swarm = result.swarm
            delay = self._followups.after_round(
                swarm.slots.values() if swarm else (),
                loop.time(),
                round_s=result.duration_s,
                failed=result.swarm_expected and swarm is None,
            )
            if swarm is not None:
                self._note_stuck(swarm, loop.time())
                self._note_on_host(swarm)
            await wait_event(self._wake, delay)

    def _note_stuck(self, swarm: SwarmRound, now: float) -> None:
        """Log once each slot whose task stays waiting past a normal wait (until the slot is
        forgotten: it has not waited for a while)."""
        self._reported = {s for s in self._reported if self._followups.remembers(s)}
        reasons = {task: "ready" for task in swarm.ready}
        reasons.update((task, "pending") for task in swarm.pending)
        reasons.update((task, "without_address") for task in swarm.without_address)
        for task_id, slot in sorted(swarm.slots.items()):
            if slot in self._reported or not self._followups.stuck(slot, now):
                continue
            since = self._followups.waiting_since(slot)
            log.warning(
                "task_not_running",
                task_id=task_id,
                slot=slot,
                reason=_WHY[reasons.get(task_id, "pending")],
                networks=",".join(self._settings.network_names) or "(any)",
                waiting_s=None if since is None else round(now - since, 1),
                recheck_s=self._settings.poll_interval,
            )
            self._reported.add(slot)

    def _note_on_host(self, swarm: SwarmRound) -> None:
        """Log once each running task that has no address on an overlay network and never
        will: it runs on its node's own network."""
        networks = self._settings.network_names
        network = networks[0] if networks else "an overlay network"
        for task_id, how in swarm.on_host:
            if task_id in self._on_host:
                continue
            log.warning(
                "task_on_host_network",
                task_id=task_id,
                reason=_ON_HOST[how],
                hint=(
                    f"attach the service to {network} (`docker service update --network-add "
                    f"{network} {self._settings.service_name}`, or `networks:` in the stack): "
                    "an agent is reached at its address there"
                ),
            )
            self._on_host.add(task_id)
        self._on_host &= {task_id for task_id, _ in swarm.on_host}
