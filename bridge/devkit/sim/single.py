"""One simulated agent in its own container (a Swarm task), until told to stop."""

from __future__ import annotations

import asyncio
import socket

import structlog

from bridge.agent import PRESENCE_INTERVAL, AgentError, BusAgent, connect_agent
from bridge.contract.names import Names
from bridge.devkit.sim.agent import (
    Behaviour,
    ClaimPolicy,
    SimAgent,
    claim_core_role,
    claimed_roles,
)
from bridge.devkit.sim.bus_connection import BusAuth
from bridge.devkit.sim.http_agents import DEFAULT_OPPORTUNITY_PATH, HttpAgents
from bridge.waits import cancel_and_wait, raise_if_cancelled

__all__ = ["run_single_agent"]

log = structlog.get_logger(__name__)

# Backoff between attempts to reach NATS, in seconds.
RETRY_MIN, RETRY_MAX = 1.0, 10.0


async def run_single_agent(
    *,
    names: Names,
    stop: asyncio.Event,
    host: str = "0.0.0.0",
    port: int = 8080,
    agent_id: str | None = None,
    nats_url: str | None = None,
    auth: BusAuth | None = None,
    opportunity_path: str = DEFAULT_OPPORTUNITY_PATH,
    endpoint: str | None = None,
    index: int | None = None,
    behaviour: Behaviour = "ok",
) -> None:
    """Serve one agent's HTTP API on host:port, and put it on the bus when `nats_url` is set.

    The agent id defaults to the hostname (a Swarm stack sets it to the task id, which is
    also written as the presence entry's task_id). `endpoint` is what presence advertises
    (None: left out; the bridge then matches the entry by task id). With `index` i, the agent
    claims core role number i of each opportunity; without it, it claims nothing. NATS
    failures are logged and retried; the agent keeps serving HTTP until `stop` is set.
    """
    name = agent_id or socket.gethostname()
    agent = SimAgent(
        index=index if index is not None else 0,
        id=name,
        address=host,
        task_id=name,
        behaviour=behaviour,
        on_bus=nats_url is not None,
        advertised_endpoint=endpoint,
    )
    serving = asyncio.create_task(
        _serve(
            agent,
            names=names,
            port=port,
            opportunity_path=opportunity_path,
            claims=index is not None,
            nats_url=nats_url,
            auth=auth or BusAuth(),
        ),
        name=f"sim-agent-{name}",
    )
    stopping = asyncio.create_task(stop.wait())
    try:
        await asyncio.wait({serving, stopping}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        serving.cancel()  # both asked at once; then each waited for
        await cancel_and_wait(stopping)
        await cancel_and_wait(serving)
    log.info("sim_agent_stopped", agent_id=name)


async def _serve(
    agent: SimAgent,
    *,
    names: Names,
    port: int,
    opportunity_path: str,
    claims: bool,
    nats_url: str | None,
    auth: BusAuth,
) -> None:
    """Runs until cancelled; leaving cancels it, which purges the presence entry and drains."""
    policy = claim_core_role if claims else None
    async with HttpAgents(
        [agent], opportunity_path=opportunity_path, claim_policy=policy, port=port
    ):
        log.info("sim_agent_listening", agent_id=agent.id, host=agent.address, port=port)
        if nats_url is None:
            await asyncio.Event().wait()
            return
        await _stay_on_bus(
            agent,
            names=names,
            nats_url=nats_url,
            auth=auth,
            policy=policy,
        )


async def _stay_on_bus(
    agent: SimAgent,
    *,
    names: Names,
    nats_url: str,
    auth: BusAuth,
    policy: ClaimPolicy | None,
) -> None:
    """On the bus, through the agent library, until cancelled; a NATS server that cannot be
    reached (or a presence bucket that is not there yet) is retried with a backoff."""
    delay = RETRY_MIN
    # "leave": the presence entry is written once and left to expire.
    interval = 1e9 if agent.behaviour == "leave" else PRESENCE_INTERVAL
    last_error = ""
    while True:
        raise_if_cancelled()  # a stop that a NATS call swallowed (bridge/waits.py)
        try:
            async with connect_agent(
                nats_url,
                agent.id,
                prefix=names.prefix,
                user=auth.user,
                password=auth.password,
                token=auth.token,
                tls_ca=auth.tls_ca,
                tls_cert=auth.tls_cert,
                tls_key=auth.tls_key,
                task_id=agent.task_id,
                endpoint=agent.advertised_endpoint,
                presence_interval=interval,
            ) as bus:
                agent.present = True
                delay, last_error = RETRY_MIN, ""
                await _answer(agent, bus, policy)
        except AgentError as exc:
            if str(exc) != last_error:  # one line per outage, not one per attempt
                last_error = str(exc)
                log.warning("sim_agent_bus_unavailable", agent_id=agent.id, error=last_error)
        finally:
            agent.present = False
        await asyncio.sleep(delay)
        delay = min(delay * 2, RETRY_MAX)


async def _answer(agent: SimAgent, bus: BusAgent, policy: ClaimPolicy | None) -> None:
    async for opportunity in bus.opportunities():
        agent.record("bus", opportunity)
        if agent.behaviour != "no_ack":
            for _ in range(2 if agent.behaviour == "double_ack" else 1):
                await bus.ack(opportunity.id)
                agent.acks += 1
        for role in claimed_roles(policy(agent, opportunity) if policy is not None else None):
            try:
                answer = await bus.claim(opportunity.id, role)
            except AgentError as exc:
                log.warning("sim_agent_claim_unanswered", agent_id=agent.id, error=str(exc))
                continue
            agent.answers.append((opportunity.id, answer))
