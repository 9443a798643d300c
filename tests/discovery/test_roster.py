"""The removal policy and the merge of Swarm and DNS records."""

from __future__ import annotations

from bridge.contract.messages import Agent
from bridge.discovery.base import DnsRound, SwarmRound, endpoint_for, host_agent_id
from bridge.discovery.roster import Roster


def swarm_agent(task_id: str, address: str) -> Agent:
    return Agent(
        id=task_id,
        endpoint=endpoint_for(address, 8080),
        address=address,
        port=8080,
        source="swarm",
        task_id=task_id,
    )


def dns_agent(address: str) -> Agent:
    return Agent(
        id=host_agent_id(address, 8080),
        endpoint=endpoint_for(address, 8080),
        address=address,
        port=8080,
        source="dns",
    )


def swarm(*agents: Agent) -> SwarmRound:
    return SwarmRound(agents=agents)


def dns(*agents: Agent, complete: bool = True) -> DnsRound:
    return DnsRound(agents=agents, complete=complete)


A, B = swarm_agent("task-a", "127.0.0.1"), swarm_agent("task-b", "127.0.0.2")
D = dns_agent("127.0.0.9")


def test_successful_swarm_round_is_authoritative() -> None:
    """A Swarm agent that a successful round no longer lists is removed at once."""
    roster = Roster()
    roster.apply(swarm=swarm(A, B), dns=None, swarm_expected=True)
    roster.apply(swarm=swarm(A), dns=None, swarm_expected=True)
    assert set(roster.agents) == {"task-a"}


def test_failed_round_removes_nothing() -> None:
    """A failed Swarm round, even with an empty DNS answer, keeps everyone."""
    roster = Roster([A, B, D])
    for _ in range(5):
        roster.apply(swarm=None, dns=dns(), swarm_expected=True)
    assert set(roster.agents) == {"task-a", "task-b", D.id}


def test_dns_agent_removed_after_two_missing_rounds() -> None:
    """A DNS-only agent survives one missing round and goes after the second."""
    roster = Roster()
    roster.apply(swarm=None, dns=dns(D), swarm_expected=False)
    roster.apply(swarm=None, dns=dns(), swarm_expected=False)
    assert D.id in roster.agents
    roster.apply(swarm=None, dns=dns(), swarm_expected=False)
    assert D.id not in roster.agents


def test_a_miss_is_forgotten_when_the_agent_returns() -> None:
    """Missing, found, missing again: still there (the misses must be in a row)."""
    roster = Roster([D])
    roster.apply(swarm=None, dns=dns(), swarm_expected=False)
    roster.apply(swarm=None, dns=dns(D), swarm_expected=False)
    roster.apply(swarm=None, dns=dns(), swarm_expected=False)
    assert D.id in roster.agents


def test_incomplete_dns_round_counts_no_miss() -> None:
    """A DNS round where a name failed does not count anyone as missing."""
    roster = Roster([D])
    for _ in range(3):
        roster.apply(swarm=None, dns=dns(complete=False), swarm_expected=False)
    assert D.id in roster.agents


def test_address_found_both_ways_is_one_agent_and_swarm_wins() -> None:
    """In auto mode a DNS address that is also a task's is the Swarm record only."""
    roster = Roster()
    roster.apply(swarm=swarm(A), dns=dns(dns_agent("127.0.0.1"), D), swarm_expected=True)
    assert set(roster.agents) == {"task-a", D.id}
    assert roster.agents["task-a"].source == "swarm"


def test_fallback_keeps_swarm_records_over_dns() -> None:
    """When the Swarm API fails, DNS does not duplicate the Swarm agents already known."""
    roster = Roster([A])
    roster.apply(swarm=None, dns=dns(dns_agent("127.0.0.1")), swarm_expected=True)
    assert set(roster.agents) == {"task-a"}


def test_dns_record_superseded_by_swarm_is_removed() -> None:
    """A DNS agent added during an outage goes once Swarm lists its address."""
    roster = Roster()
    roster.apply(swarm=None, dns=dns(dns_agent("127.0.0.1")), swarm_expected=True)
    assert set(roster.agents) == {dns_agent("127.0.0.1").id}
    roster.apply(swarm=swarm(A), dns=None, swarm_expected=True)
    assert set(roster.agents) == {"task-a"}


def test_swarm_rounds_still_count_a_held_dns_agent_as_missing() -> None:
    """A DNS agent held from an earlier fallback goes after 2 successful Swarm rounds, not 1,
    and the Swarm agents are exactly the round's."""
    roster = Roster([A, D])
    roster.apply(swarm=swarm(B), dns=None, swarm_expected=True)
    assert set(roster.agents) == {"task-b", D.id}
    roster.apply(swarm=swarm(B), dns=None, swarm_expected=True)
    assert set(roster.agents) == {"task-b"}
    roster.apply(swarm=swarm(A, B), dns=None, swarm_expected=True)
    assert roster.agents == {"task-a": A, "task-b": B}
