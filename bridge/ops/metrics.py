"""Prometheus metrics of the bridge, on a registry of their own (tests make a fresh one).

Every labelled counter starts at 0 for each label value it can take, so that
`increase(...[10m])` sees the first error too (a series that appears at 1 has no increase).
"""

from __future__ import annotations

import importlib.metadata
import platform
from collections.abc import Iterable

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    GCCollector,
    Histogram,
    Info,
    PlatformCollector,
    ProcessCollector,
    disable_created_metrics,
)

from bridge import __version__
from bridge.contract.messages import Agent
from bridge.ops.tally import ClaimTally

__all__ = [
    "ACK_DROPS",
    "CALLOUTS",
    "CALLOUT_REFUSALS",
    "CALLOUT_REJECTIONS",
    "CLAIMS",
    "DOCKER_ERROR_KINDS",
    "Metrics",
]

# No `*_created` series: the start time is process_start_time_seconds, once.
disable_created_metrics()  # type: ignore[no-untyped-call]

# The label values each labelled metric can take.
METHODS = ("swarm", "dns", "auto")
ROUND_OUTCOMES = ("ok", "fallback", "failed")
SOURCES = ("swarm", "dns", "static")
EVENTS = ("joined", "updated", "left")
# DockerAPIError.kind (bridge/errors.py).
DOCKER_ERROR_KINDS = (
    "socket_missing",
    "permission_denied",
    "not_manager",
    "swarm_locked",
    "manager_not_ready",
    "no_leader",
    "forbidden",
    "service_not_found",
    "server_error",
    "bad_response",
    "timeout",
    "unreachable",
    "api_error",
)
KV_WRITES = (("put", "ok"), ("put", "error"), ("delete", "ok"), ("delete", "error"))
# busy: refused because as many broadcasts as the bridge serves at once were in flight and
# waiting (bridge/broadcast/api.py).
BROADCAST_OUTCOMES = ("ok", "refused", "error", "busy")
DELIVERIES = (("bus", "ok"), ("http", "ok"), ("any", "failed"))
# Why the auth callout refused a client (bridge/trust/callout.py): not the agent user, a wrong
# password, or an address that is not the address of one discovered agent.
CALLOUT_REFUSALS = ("user", "password", "address")
# Why it answered a request not at all (bridge/trust/requests.py): not a request it can
# read, not sealed where a curve key is set, not signed by a server of the cluster, expired.
CALLOUT_REJECTIONS = ("invalid", "unsealed", "issuer", "expired")
# Its answers: admitted, refused for one of those reasons; a request rejected as one that
# cannot be trusted, or reached after the server stopped waiting (late), and so not answered;
# a client the server refused for want of any answer (unanswered: the server's advisory,
# bridge/trust/unanswered.py). The address is in the logs, never in a label.
CALLOUTS = (
    ("admitted", "none"),
    *(("refused", reason) for reason in CALLOUT_REFUSALS),
    *(("rejected", reason) for reason in CALLOUT_REJECTIONS),
    ("late", "none"),
    ("unanswered", "none"),
)
# Acks (bridge/broadcast/broadcaster.py) dropped unread: larger than 4 KiB.
ACK_DROPS = ("too_large",)

# Claims (DESIGN.md, "Councils"): granted; refused, by the answer's reason (spaces as `_`);
# dropped unanswered: larger than 4 KiB, not a claim, or received by a bridge that no longer
# leads; failed: NATS failed while the grant was written (the claim is decided again later).
CLAIM_REFUSALS = (
    "taken",
    "expired",
    "unknown_opportunity",
    "unknown_role",
    "holds_another_role",
    "not_an_agent",
)
CLAIMS = (
    ("granted", "none"),
    *(("refused", reason) for reason in CLAIM_REFUSALS),
    ("dropped", "too_large"),
    ("dropped", "invalid"),
    ("dropped", "not_leading"),
    ("failed", "nats"),
)
COUNCIL_STATES = ("forming", "active", "degraded", "expired")
COUNCIL_EVENTS = ("granted", "released", "activated", "degraded", "expired")


class Metrics:
    """Every metric the bridge exports, named `chorus_bridge_*`."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        r = self.registry
        self.rounds = Counter(
            "chorus_bridge_discovery_rounds_total",
            "Discovery rounds, by method and outcome",
            ["method", "outcome"],
            registry=r,
        )
        self.round_duration = Histogram(
            "chorus_bridge_discovery_round_duration_seconds",
            "Duration of a discovery round",
            ["method"],
            registry=r,
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
        )
        self.agents = Gauge(
            "chorus_bridge_agents", "Agents in the bucket, by source", ["source"], registry=r
        )
        self.agents_on_bus = Gauge(
            "chorus_bridge_agents_on_bus", "Agents present on the bus", registry=r
        )
        self.changes = Counter(
            "chorus_bridge_agent_changes_total",
            "Agents joined, updated and left",
            ["event"],
            registry=r,
        )
        self.docker_errors = Counter(
            "chorus_bridge_docker_api_errors_total",
            "Docker API errors, by kind",
            ["kind"],
            registry=r,
        )
        self.kv_writes = Counter(
            "chorus_bridge_kv_writes_total",
            "Writes to the agents bucket, by operation and outcome",
            ["op", "outcome"],
            registry=r,
        )
        self.broadcasts = Counter(
            "chorus_bridge_broadcasts_total",
            "Broadcast requests, by outcome",
            ["outcome"],
            registry=r,
        )
        self.deliveries = Counter(
            "chorus_bridge_deliveries_total",
            "Deliveries of opportunities, by path and outcome",
            ["path", "outcome"],
            registry=r,
        )
        self.callouts = Counter(
            "chorus_bridge_callouts_total",
            "Auth callout requests, by outcome and the reason of a refusal",
            ["outcome", "reason"],
            registry=r,
        )
        self.callout_clock_skew = Gauge(
            "chorus_bridge_callout_clock_skew_seconds",
            "The bridge's clock minus the NATS server's, from the auth callout's requests",
            registry=r,
        )
        self.callout_evictions = Counter(
            "chorus_bridge_callout_evictions_total",
            "Connections of agents that left discovery closed by the bridge",
            registry=r,
        )
        self.agent_identity_enforced = Gauge(
            "chorus_bridge_agent_identity_enforced",
            "1 when the auth callout makes each agent act only as itself, 0 in the open mode",
            registry=r,
        )
        self.acks_dropped = Counter(
            "chorus_bridge_acks_dropped_total",
            "Acks of opportunities dropped unread, by reason",
            ["reason"],
            registry=r,
        )
        self.http_latency = Histogram(
            "chorus_bridge_http_delivery_duration_seconds",
            "Latency of one HTTP delivery to an agent",
            registry=r,
            buckets=(0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
        )
        self.claims = ClaimTally(r, CLAIMS)
        self.councils = Gauge(
            "chorus_bridge_councils",
            "Councils in the councils bucket, by state (on the leader)",
            ["state"],
            registry=r,
        )
        self.council_events = Counter(
            "chorus_bridge_council_events_total",
            "Council events published, by event",
            ["event"],
            registry=r,
        )
        self.activation = Histogram(
            "chorus_bridge_council_activation_seconds",
            "Time from recording an opportunity (its broadcast) to its council's first activation",
            registry=r,
            buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 900, 3600),
        )
        self.leader = Gauge("chorus_bridge_leader", "1 when this bridge is the leader", registry=r)
        self.nats_connected = Gauge(
            "chorus_bridge_nats_connected", "1 while connected to NATS", registry=r
        )
        self.build = Info(
            "chorus_bridge_build", "Version of the bridge and of its runtime", registry=r
        )
        self.build.info(
            {
                "version": __version__,
                "python": platform.python_version(),
                "nats_py": _version("nats-py"),
            }
        )
        self._register_runtime(r)
        self._start_at_zero()

    @staticmethod
    def _register_runtime(registry: CollectorRegistry) -> None:
        """process_*, python_info and python_gc_*, on this registry (not the global one)."""
        ProcessCollector(registry=registry)
        PlatformCollector(registry=registry)
        GCCollector(registry=registry)

    def _start_at_zero(self) -> None:
        for method in METHODS:
            self.round_duration.labels(method=method)
            for outcome in ROUND_OUTCOMES:
                self.rounds.labels(method=method, outcome=outcome)
        for source in SOURCES:
            self.agents.labels(source=source)
        for event in EVENTS:
            self.changes.labels(event=event)
        for kind in DOCKER_ERROR_KINDS:
            self.docker_errors.labels(kind=kind)
        for op, outcome in KV_WRITES:
            self.kv_writes.labels(op=op, outcome=outcome)
        for outcome in BROADCAST_OUTCOMES:
            self.broadcasts.labels(outcome=outcome)
        for path, outcome in DELIVERIES:
            self.deliveries.labels(path=path, outcome=outcome)
        for outcome, reason in CALLOUTS:
            self.callouts.labels(outcome=outcome, reason=reason)
        for reason in ACK_DROPS:
            self.acks_dropped.labels(reason=reason)
        for state in COUNCIL_STATES:
            self.councils.labels(state=state)
        for event in COUNCIL_EVENTS:
            self.council_events.labels(event=event)

    def count_claim(self, outcome: str, reason: str = "none") -> None:
        """Count one claim: outcome granted|refused|dropped|failed, reason as in CLAIMS (a
        refusal's reason as the answer says it, spaces and all, is accepted too)."""
        self.claims.count(outcome, reason)

    def set_councils(self, states: Iterable[str]) -> None:
        """The councils' states now (one item per council)."""
        counts = dict.fromkeys(COUNCIL_STATES, 0)
        for state in states:
            counts[state] = counts.get(state, 0) + 1
        for state, count in counts.items():
            self.councils.labels(state=state).set(count)

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


def _version(distribution: str) -> str:
    try:
        return importlib.metadata.version(distribution)
    except importlib.metadata.PackageNotFoundError:
        return "unknown"
