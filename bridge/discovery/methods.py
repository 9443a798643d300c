"""DISCOVERY_METHOD semantics: which sources a round asks, and what a failure falls back to.

- swarm: the Swarm API only; a round whose Swarm call fails falls back to DNS.
- auto: the Swarm API, plus the DNS names other than the service's own `tasks.<service>`,
  plus the known endpoints (the roster merges them; the Swarm record wins). When the Swarm
  round succeeds it is the authority on the service's tasks, so `tasks.<service>` is not
  asked (Swarm's DNS keeps answering a gone task's address for a while: a ghost); when it
  fails, `tasks.<service>` is the fallback, as in swarm.
- dns: DNS and known endpoints only; the Docker API is never opened.
WHOOSH_DOCKER_ENABLED=false makes swarm and auto behave as dns.
"""

from __future__ import annotations

import asyncio
import dataclasses
import time

import structlog

from bridge.config import Settings
from bridge.discovery.base import DnsRound, SwarmRound
from bridge.discovery.dns import DnsDiscovery
from bridge.discovery.health import check_health, with_health
from bridge.discovery.swarm import SwarmDiscovery
from bridge.edges.agent_http import AgentHTTP
from bridge.errors import DockerAPIError
from bridge.ops.metrics import Metrics

__all__ = ["Discoverer", "RoundResult"]

log = structlog.get_logger(__name__)


@dataclasses.dataclass(frozen=True)
class RoundResult:
    """One discovery round, ready for Roster.apply."""

    swarm: SwarmRound | None
    dns: DnsRound | None
    swarm_expected: bool
    error: DockerAPIError | None
    duration_s: float

    @property
    def not_running(self) -> tuple[str, ...]:
        """Tasks that should be agents soon (not running yet, or without an address)."""
        return () if self.swarm is None else self.swarm.not_running

    @property
    def outcome(self) -> str:
        """ok, fallback (the Swarm call failed, DNS answered instead) or failed."""
        if self.error is None:
            return "ok"
        return "fallback" if self.dns is not None else "failed"


class Discoverer:
    """Runs discovery rounds with the configured method; logs a Docker outage once."""

    def __init__(
        self,
        settings: Settings,
        *,
        swarm: SwarmDiscovery | None,
        dns: DnsDiscovery,
        http: AgentHTTP | None = None,
        metrics: Metrics | None = None,
    ) -> None:
        self._settings = settings
        self._swarm = swarm if settings.docker_active else None
        self._dns = dns
        self._http = http
        self._metrics = metrics
        self._docker_error: str | None = None
        # The Docker outage under way: its latest error, and since when (loop time).
        self._outage: tuple[DockerAPIError, float] | None = None

    @property
    def docker_outage(self) -> tuple[DockerAPIError, float] | None:
        """(the latest error, since when on the loop's clock) while the Swarm API fails."""
        return self._outage

    @property
    def method(self) -> str:
        return "dns" if self._swarm is None else self._settings.discovery_method

    async def _swarm_round(self) -> tuple[SwarmRound | None, DockerAPIError | None]:
        assert self._swarm is not None
        try:
            found = await self._swarm.discover()
        except DockerAPIError as exc:
            self._note_docker_error(exc)
            return None, exc
        self._note_docker_ok()
        return found, None

    def _note_docker_error(self, exc: DockerAPIError) -> None:
        if self._metrics is not None:
            self._metrics.docker_errors.labels(kind=exc.kind).inc()
        # One line per outage, however its cause changes on the way (a daemon that stops
        # closes its socket, then the socket is gone): the recovery line names the last one.
        if self._docker_error is None:
            fallback = (
                "dns"
                if self.method == "swarm"
                else ("dns only" if self.method == "auto" else "none")
            )
            log.warning(
                "docker_api_failing",
                kind=exc.kind,
                error=str(exc),
                fallback=fallback,
                removals="suspended",
            )
        self._docker_error = exc.kind
        since = self._outage[1] if self._outage else asyncio.get_running_loop().time()
        self._outage = (exc, since)

    def _note_docker_ok(self) -> None:
        if self._docker_error is not None:
            log.info("docker_api_recovered", after=self._docker_error)
            self._docker_error = None
        self._outage = None

    async def _auto(self) -> tuple[SwarmRound | None, DockerAPIError | None, DnsRound]:
        (swarm, error), dns = await asyncio.gather(
            self._swarm_round(), self._dns.discover(own=False)
        )
        if swarm is None:
            dns = await self._dns.discover()  # the service's own name is the fallback
        return swarm, error, dns

    async def round(self) -> RoundResult:
        """One round with the configured method."""
        started = time.perf_counter()
        swarm: SwarmRound | None = None
        dns: DnsRound | None = None
        error: DockerAPIError | None = None
        if self.method == "dns":
            dns = await self._dns.discover()
        elif self.method == "auto":
            swarm, error, dns = await self._auto()
        else:
            swarm, error = await self._swarm_round()
            if swarm is None:
                dns = await self._dns.discover()
        if self._settings.verify_health and self._http is not None:
            swarm, dns = await self._verify(swarm, dns)
        duration = time.perf_counter() - started
        result = RoundResult(
            swarm=swarm,
            dns=dns,
            swarm_expected=self._swarm is not None,
            error=error,
            duration_s=duration,
        )
        if self._metrics is not None:
            self._metrics.observe_round(self.method, result.outcome, duration)
        return result

    async def _verify(
        self,
        swarm: SwarmRound | None,
        dns: DnsRound | None,
    ) -> tuple[SwarmRound | None, DnsRound | None]:
        assert self._http is not None
        agents = [*(swarm.agents if swarm else ()), *(dns.agents if dns else ())]
        results = await check_health(
            self._http,
            agents,
            timeout=self._settings.http_timeout,
            concurrency=self._settings.http_concurrency,
        )
        if swarm is not None:
            swarm = dataclasses.replace(swarm, agents=with_health(swarm.agents, results))
        if dns is not None:
            dns = dataclasses.replace(dns, agents=with_health(dns.agents, results))
        return swarm, dns
