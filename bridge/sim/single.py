"""One simulated agent in its own container (a Swarm task), until told to stop."""

from __future__ import annotations

import asyncio
import contextlib
import socket

import structlog

from bridge.errors import NatsError
from bridge.sim.agent import Behaviour, ClaimPolicy, SimAgent, claim_core_role
from bridge.sim.bus_agents import AGENT_INBOX_PREFIX, BusAgents, BusAuth
from bridge.sim.http_agents import DEFAULT_OPPORTUNITY_PATH, HttpAgents
from bridge.subjects import Names

__all__ = ["run_single_agent"]

log = structlog.get_logger(__name__)

# Backoff between attempts to reach NATS, in seconds.
RETRY_MIN, RETRY_MAX = 1.0, 30.0


async def run_single_agent(*, names: Names, stop: asyncio.Event, host: str = "0.0.0.0",
                           port: int = 8080, agent_id: str | None = None,
                           nats_url: str | None = None, nats_user: str | None = None,
                           nats_password: str | None = None, nats_token: str | None = None,
                           opportunity_path: str = DEFAULT_OPPORTUNITY_PATH,
                           endpoint: str | None = None, index: int | None = None,
                           behaviour: Behaviour = "ok",
                           inbox_prefix: str = AGENT_INBOX_PREFIX) -> None:
    """Serve one agent's HTTP API on host:port, and put it on the bus when `nats_url` is set.

    The agent id defaults to the hostname (a Swarm stack sets it to the task id, which is
    also written as the presence entry's task_id). `endpoint` is what presence advertises
    (None: left out; the bridge then matches the entry by task id). With `index` i, the agent
    claims core role number i of each opportunity; without it, it claims nothing. NATS
    failures are logged and retried; the agent keeps serving HTTP until `stop` is set.
    """
    name = agent_id or socket.gethostname()
    agent = SimAgent(index=index if index is not None else 0, id=name, address=host,
                     task_id=name, behaviour=behaviour, on_bus=nats_url is not None,
                     advertised_endpoint=endpoint)
    serving = asyncio.create_task(_serve(
        agent, names=names, port=port, opportunity_path=opportunity_path,
        claims=index is not None, nats_url=nats_url, inbox_prefix=inbox_prefix,
        auth=BusAuth(user=nats_user, password=nats_password, token=nats_token)),
        name=f"sim-agent-{name}")
    stopping = asyncio.create_task(stop.wait())
    try:
        await asyncio.wait({serving, stopping}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in (serving, stopping):
            task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await stopping
        with contextlib.suppress(asyncio.CancelledError):
            await serving
    log.info("sim_agent_stopped", agent_id=name)


async def _serve(agent: SimAgent, *, names: Names, port: int, opportunity_path: str,
                 claims: bool, nats_url: str | None, inbox_prefix: str, auth: BusAuth) -> None:
    """Runs until cancelled; leaving cancels it, which purges the presence entry and drains."""
    policy = claim_core_role if claims else None
    async with HttpAgents([agent], opportunity_path=opportunity_path, claim_policy=policy,
                          port=port):
        log.info("sim_agent_listening", agent_id=agent.id, host=agent.address, port=port)
        if nats_url is None:
            await asyncio.Event().wait()
            return
        await _stay_on_bus(agent, names=names, nats_url=nats_url, auth=auth,
                           policy=policy, inbox_prefix=inbox_prefix)


async def _stay_on_bus(agent: SimAgent, *, names: Names, nats_url: str, auth: BusAuth,
                       policy: ClaimPolicy | None, inbox_prefix: str) -> None:
    """On the bus until cancelled; a NATS server that cannot be reached is retried."""
    delay = RETRY_MIN
    while True:
        try:
            async with BusAgents([agent], nats_url=nats_url, names=names, auth=auth,
                                 claim_policy=policy, inbox_prefix=inbox_prefix,
                                 client_name=f"chorus-sim-{agent.id}", resilient=True):
                await asyncio.Event().wait()
        except NatsError as exc:
            log.warning("sim_agent_bus_unavailable", agent_id=agent.id, error=str(exc),
                        retry_in=delay)
        await asyncio.sleep(delay)
        delay = min(delay * 2, RETRY_MAX)
