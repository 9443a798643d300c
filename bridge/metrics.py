"""Prometheus metrics of the bridge, on a registry of their own (tests make a fresh one)."""

from __future__ import annotations

from collections.abc import Iterable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from bridge.models import Agent

__all__ = ["Metrics"]


class Metrics:
    """Every metric the bridge exports, named `chorus_bridge_*`."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        r = self.registry
        self.rounds = Counter("chorus_bridge_discovery_rounds_total",
                              "Discovery rounds, by method and outcome",
                              ["method", "outcome"], registry=r)
        self.round_duration = Histogram(
            "chorus_bridge_discovery_round_duration_seconds", "Duration of a discovery round",
            ["method"], registry=r,
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10))
        self.agents = Gauge("chorus_bridge_agents", "Agents in the bucket, by source",
                            ["source"], registry=r)
        self.agents_on_bus = Gauge("chorus_bridge_agents_on_bus", "Agents present on the bus",
                                   registry=r)
        self.changes = Counter("chorus_bridge_agent_changes_total",
                               "Agents joined, updated and left", ["event"], registry=r)
        self.docker_errors = Counter("chorus_bridge_docker_api_errors_total",
                                     "Docker API errors, by kind", ["kind"], registry=r)
        self.kv_writes = Counter("chorus_bridge_kv_writes_total",
                                 "Writes to the agents bucket, by operation and outcome",
                                 ["op", "outcome"], registry=r)
        self.broadcasts = Counter("chorus_bridge_broadcasts_total",
                                  "Broadcast requests, by outcome", ["outcome"], registry=r)
        self.deliveries = Counter("chorus_bridge_deliveries_total",
                                  "Deliveries of opportunities, by path and outcome",
                                  ["path", "outcome"], registry=r)
        self.http_latency = Histogram(
            "chorus_bridge_http_delivery_duration_seconds",
            "Latency of one HTTP delivery to an agent", registry=r,
            buckets=(0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10))
        self.leader = Gauge("chorus_bridge_leader", "1 when this bridge is the leader",
                            registry=r)
        self.nats_connected = Gauge("chorus_bridge_nats_connected",
                                    "1 while connected to NATS", registry=r)

    def observe_round(self, method: str, outcome: str, duration_s: float) -> None:
        """Count one discovery round: method swarm|dns|auto, outcome ok|fallback|failed."""
        self.rounds.labels(method=method, outcome=outcome).inc()
        self.round_duration.labels(method=method).observe(duration_s)

    def set_agents(self, agents: Iterable[Agent]) -> None:
        counts = {"swarm": 0, "dns": 0, "static": 0}
        on_bus = 0
        for agent in agents:
            counts[agent.source] += 1
            on_bus += agent.on_bus
        for source, count in counts.items():
            self.agents.labels(source=source).set(count)
        self.agents_on_bus.set(on_bus)
