"""Health verification of discovered agents (WHOOSH_VERIFY_HEALTH=true).

Policy: an agent whose `GET {endpoint}/health` does not answer 2xx within the HTTP timeout
is still published, marked `healthy: false`, and left out of HTTP broadcasts; an agent that
answers 2xx is `healthy: true`. With verification off, `healthy` stays null. Publishing a
failing agent (rather than hiding it) keeps the registry a true picture of the fleet: an
operator sees which replicas are sick, and an agent that recovers only changes one field.

Checks run concurrently, at most `concurrency` at a time, each bounded by `timeout` in
total (connect, headers and all), so a hung agent costs one timeout, not a stalled round.
Only the status line is read; the body of /health is ignored.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping, Sequence

import msgspec

from bridge.contract.messages import Agent
from bridge.edges.agent_http import AgentHTTP, agent_url
from bridge.errors import AgentHTTPError

__all__ = ["HEALTH_PATH", "check_health", "with_health"]

HEALTH_PATH = "/health"


async def check_health(
    http: AgentHTTP, agents: Sequence[Agent], *, timeout: float, concurrency: int
) -> dict[str, bool]:
    """For each agent id, whether `GET {endpoint}/health` answered 2xx within `timeout`."""
    limit = asyncio.Semaphore(concurrency)

    async def check(agent: Agent) -> tuple[str, bool]:
        async with limit:
            return agent.id, await _healthy(http, agent.endpoint, timeout)

    results = await asyncio.gather(*(check(agent) for agent in agents))
    return dict(results)


async def _healthy(http: AgentHTTP, endpoint: str, timeout: float) -> bool:
    try:
        status = await http.get_status(agent_url(endpoint, HEALTH_PATH), timeout=timeout)
    except AgentHTTPError:
        # Refused, reset, timed out, not an endpoint, broken HTTP: all mean "not healthy".
        return False
    return 200 <= status < 300


def with_health(agents: Sequence[Agent], results: Mapping[str, bool]) -> tuple[Agent, ...]:
    """The agents with `healthy` set from `results`; an agent not checked is unchanged."""
    return tuple(
        msgspec.structs.replace(agent, healthy=results[agent.id]) if agent.id in results else agent
        for agent in agents
    )
