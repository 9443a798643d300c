"""Simulated CHORUS agents: HTTP on loopback addresses, and on the NATS bus.

Used by `chorus-bridge demo`, by tests and benchmarks (`SimFleet`), and as the agent of a
test Swarm stack, one per container (`run_single_agent`).
"""

from bridge.devkit.sim.agent import (
    BEHAVIOURS,
    Behaviour,
    ClaimPolicy,
    Delivery,
    SimAgent,
    allocate_addresses,
    claim_core_role,
    spread_on_bus,
)
from bridge.devkit.sim.bus_agents import AGENTS_PER_CONNECTION, PRESENCE_INTERVAL, BusAgents
from bridge.devkit.sim.bus_connection import BusAuth
from bridge.devkit.sim.fleet import Progress, SimFleet
from bridge.devkit.sim.http_agents import DEFAULT_OPPORTUNITY_PATH, HUGE_BODY_BYTES, HttpAgents
from bridge.devkit.sim.presence import presence_bucket_config
from bridge.devkit.sim.single import run_single_agent

__all__ = [
    "AGENTS_PER_CONNECTION",
    "BEHAVIOURS",
    "DEFAULT_OPPORTUNITY_PATH",
    "HUGE_BODY_BYTES",
    "PRESENCE_INTERVAL",
    "Behaviour",
    "BusAgents",
    "BusAuth",
    "ClaimPolicy",
    "Delivery",
    "HttpAgents",
    "Progress",
    "SimAgent",
    "SimFleet",
    "allocate_addresses",
    "claim_core_role",
    "presence_bucket_config",
    "run_single_agent",
    "spread_on_bus",
]
