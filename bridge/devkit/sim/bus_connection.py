"""Simulated agents on the bus, a connection's worth: how they authenticate, and the agents
that share one NATS connection, whose one subscription to the opportunities subject acks and
claims for all of them as the agent library would (bridge/devkit/sim/bus_agents.py runs them)."""

from __future__ import annotations

import dataclasses

import msgspec
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg

from bridge.agent import ack_message, claim_message
from bridge.config import Settings
from bridge.contract.messages import OPPORTUNITY_DECODER, CouncilOpportunity
from bridge.contract.names import Names
from bridge.devkit.sim.agent import ClaimPolicy, SimAgent, claimed_roles
from bridge.devkit.sim.claims import ClaimAsker
from bridge.devkit.sim.presence import PresenceWriter

__all__ = ["AgentsConnection", "BusAuth"]


@dataclasses.dataclass(frozen=True, kw_only=True)
class BusAuth:
    """How simulated agents authenticate to NATS (all None: no authentication, no TLS)."""

    user: str | None = None
    password: str | None = None
    token: str | None = None
    # TLS: the CA's path (NATS_TLS_CA), and a client certificate and key where one is used.
    tls_ca: str | None = None
    tls_cert: str | None = None
    tls_key: str | None = None

    def settings(self) -> Settings:
        return Settings(
            nats_user=self.user,
            nats_password=self.password,
            nats_token=self.token,
            nats_tls_ca=self.tls_ca,
            nats_tls_cert=self.tls_cert,
            nats_tls_key=self.tls_key,
        )


class AgentsConnection:
    """The agents sharing one NATS connection: one subscription answers for all of them."""

    def __init__(
        self,
        nc: NATS,
        names: Names,
        agents: list[SimAgent],
        *,
        claim_policy: ClaimPolicy | None,
        presence_ttl: int | None,
        asker: ClaimAsker | None,
        jetstream: bool,
    ) -> None:
        self.nc = nc
        self.agents = agents
        self.presence = PresenceWriter(nc, names, ttl=presence_ttl, confirm=jetstream)
        self._names = names
        self._claim_policy = claim_policy
        self.asker = asker
        self.invalid_messages = 0

    async def subscribe(self) -> None:
        if self.asker is not None:
            await self.asker.subscribe()
        await self.nc.subscribe(self._names.opportunities, cb=self._on_opportunity)

    async def _on_opportunity(self, msg: Msg) -> None:
        try:
            opportunity = OPPORTUNITY_DECODER.decode(msg.data)
        except msgspec.DecodeError:
            self.invalid_messages += 1
            return
        for agent in self.agents:
            if agent.present:
                await self._deliver(agent, opportunity)

    async def _deliver(self, agent: SimAgent, opportunity: CouncilOpportunity) -> None:
        agent.record("bus", opportunity)
        # The agent library's messages: each agent acks and claims on its own subjects.
        if agent.behaviour != "no_ack":
            subject, ack = ack_message(self._names, opportunity.id, agent.id)
            for _ in range(2 if agent.behaviour == "double_ack" else 1):
                await self.nc.publish(subject, ack)
                agent.acks += 1
        policy = self._claim_policy
        for role in claimed_roles(policy(agent, opportunity) if policy else None):
            if self.asker is not None:
                await self.asker.claim(agent, opportunity.id, role)
            else:
                await self.nc.publish(*claim_message(self._names, opportunity.id, agent.id, role))
