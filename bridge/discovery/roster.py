"""The roster: who the agents are now, from discovery rounds and the removal policy.

DESIGN.md's rules live here and nowhere else:
- one task is one agent: an address that DNS (or a known endpoint) gives and that belongs to
  any of a task's network attachments, on any network, is that task, and the Swarm record wins;
- a successful Swarm round is authoritative: a Swarm agent it no longer lists is removed at once;
- a DNS-only agent is removed after it is missing from 2 successful rounds in a row;
- a failed round removes nothing, so an outage of the Docker API never empties the registry.
"""

from __future__ import annotations

from collections.abc import Iterable

from bridge.contract.messages import Agent
from bridge.discovery.base import DnsRound, SwarmRound

__all__ = ["DNS_MISSES_BEFORE_REMOVAL", "Roster"]

DNS_MISSES_BEFORE_REMOVAL = 2


class Roster:
    """The agents that should be published, keyed by agent id."""

    def __init__(self, agents: Iterable[Agent] = ()) -> None:
        # Seeded from the bucket at start, so a restart during an outage keeps everyone.
        self.agents: dict[str, Agent] = {a.id: a for a in agents}
        self._misses: dict[str, int] = {}
        # Every address of the tasks of the last successful Swarm round, any network.
        self._task_addresses: frozenset[str] = frozenset()

    def _swarm_addresses(self, swarm: SwarmRound | None) -> set[str]:
        if swarm is not None:
            self._task_addresses = swarm.addresses
            return {a.address for a in swarm.agents} | swarm.addresses
        # The Swarm round failed: the Swarm records we already hold still win over DNS.
        held = {a.address for a in self.agents.values() if a.source == "swarm"}
        return held | self._task_addresses

    def apply(
        self, *, swarm: SwarmRound | None, dns: DnsRound | None, swarm_expected: bool
    ) -> None:
        """Fold one round in.

        swarm: the Swarm round's result, or None when it failed or did not run.
        dns: the DNS round's result, or None when DNS did not run.
        swarm_expected: whether a Swarm round was attempted (False in dns mode).
        """
        found: dict[str, Agent] = {a.id: a for a in swarm.agents} if swarm else {}
        if swarm is not None and dns is None and self._only_swarm():
            # The common round of a swarm-only fleet: the rules below come down to "the agents
            # are the round's", and at 10,000 agents skipping them saves most of the cost.
            self.agents = found
            self._misses.clear()
            self._task_addresses = swarm.addresses
            return
        taken = self._swarm_addresses(swarm)
        if dns is not None:
            found.update((a.id, a) for a in dns.agents if a.address not in taken)
        swarm_ok = swarm is not None
        dns_ok = dns is None or dns.complete
        # Only a round that fully succeeded may count an agent as missing.
        successful = dns_ok and (swarm_ok or not swarm_expected)
        for agent_id, agent in list(self.agents.items()):
            if agent_id in found:
                continue
            superseded = agent.source != "swarm" and swarm_ok and agent.address in taken
            if (agent.source == "swarm" and swarm_ok) or superseded:
                self._remove(agent_id)
            elif successful:
                self._misses[agent_id] = self._misses.get(agent_id, 0) + 1
                if self._misses[agent_id] >= DNS_MISSES_BEFORE_REMOVAL:
                    self._remove(agent_id)
        if self._misses:
            for agent_id in found:
                self._misses.pop(agent_id, None)
        self.agents.update(found)

    def _only_swarm(self) -> bool:
        return all(a.source == "swarm" for a in self.agents.values())

    def _remove(self, agent_id: str) -> None:
        del self.agents[agent_id]
        self._misses.pop(agent_id, None)
