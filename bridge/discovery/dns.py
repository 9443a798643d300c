"""DNS fallback: agents from the addresses of DNS names, plus the known endpoints.

In Swarm, `tasks.<service>` resolves to the address of every task; the bare service name
resolves to one virtual IP, which is why `tasks.<service>` is the default name. Each
configured name is resolved concurrently, for A and AAAA records; a name may also be a
literal IP address.

Swarm's embedded DNS truncates UDP answers at 512 bytes (about 30 addresses) and sets the
TC bit, and some resolvers cut them without setting it. So `tasks.*` names, whose answers
are the long ones, are asked over TCP, where nothing is cut: 40 tasks stay 40 agents. Other
names go over UDP, and a TC answer makes dnspython retry over TCP. The tests check both
against a server that truncates over UDP, with and without TC.

How a name's answer counts for the round:
- addresses, an empty answer or NXDOMAIN: the name answered (an empty answer is a fact);
- a timeout, SERVFAIL, REFUSED or any other error: the name failed, the round is
  incomplete (`DnsRound.complete` is False, so nothing may be counted as missing) and the
  name is in `DnsRound.failures` with a short reason. Addresses that the other names (or the
  other record type) returned are still in the round.

Each name gets at most `timeout` seconds (DNS_NAME_TIMEOUT by default), A and AAAA
together, TCP retry included.

Known endpoints (`http(s)://host:port`) are always included, as source `static`. An address
that a name resolved and that is also a known endpoint is one agent, the `static` one: it is
configured, so its port and scheme win. Agents are sorted by id.
"""

from __future__ import annotations

import asyncio
import ipaddress
from urllib.parse import urlsplit

import dns.asyncresolver
import dns.exception
import dns.rdatatype
import dns.resolver
import structlog

from bridge.config import Settings
from bridge.contract.messages import Agent
from bridge.discovery.base import DnsRound, endpoint_for, host_agent_id
from bridge.errors import ConfigError

__all__ = ["DNS_NAME_TIMEOUT", "DnsDiscovery"]

log = structlog.get_logger(__name__)

# Seconds one name may take, A and AAAA and a TCP retry included. Swarm's DNS answers from
# memory in milliseconds; a name that takes longer than this is treated as failed.
DNS_NAME_TIMEOUT = 3.0

_RECORD_TYPES = (dns.rdatatype.A, dns.rdatatype.AAAA)


class DnsDiscovery:
    """Resolves the configured names and known endpoints into a `DnsRound`.

    `resolver` defaults to the system's (/etc/resolv.conf), read on first use. The object
    remembers which names are failing, to log once when a name starts failing and once
    when it recovers.
    """

    def __init__(
        self,
        settings: Settings,
        resolver: dns.asyncresolver.Resolver | None = None,
        *,
        timeout: float = DNS_NAME_TIMEOUT,
    ) -> None:
        self._names = settings.dns_names
        self._own = f"tasks.{settings.service_name}".lower()
        self._port = settings.agent_port
        self._static = tuple(_static_agent(url) for url in settings.known_endpoints)
        self._resolver = resolver
        self._resolver_lock = asyncio.Lock()
        self._timeout = timeout
        self._failing: dict[str, str] = {}

    def is_own(self, name: str) -> bool:
        """Whether `name` is the service's own `tasks.<service>` (what a Swarm round covers)."""
        return name.rstrip(".").lower() == self._own

    async def discover(self, *, own: bool = True) -> DnsRound:
        """One round: the names resolved concurrently, plus the known endpoints.

        own=False leaves out the service's own `tasks.<service>`: when a Swarm round
        succeeded, Swarm is the authority on the service's tasks, and that name only adds
        addresses Swarm's DNS still answers for tasks that are gone.
        """
        names = self._names if own else tuple(n for n in self._names if not self.is_own(n))
        results = await asyncio.gather(*(self._lookup(name) for name in names))
        failures: dict[str, str] = {}
        addresses: set[str] = set()
        for name, (found, failure) in zip(names, results, strict=True):
            addresses.update(found)
            if failure is not None:
                failures[name] = failure
            self._note(name, failure)
        agents = _merge(self._static, [self._dns_agent(ip) for ip in addresses])
        return DnsRound(agents=agents, complete=not failures, failures=failures)

    async def _lookup(self, name: str) -> tuple[list[str], str | None]:
        """The addresses of one name, and why it failed (None when it answered)."""
        literal = _literal_ip(name)
        if literal is not None:
            return [literal], None
        try:
            resolver = await self._get_resolver()
        except (dns.exception.DNSException, OSError) as exc:
            return [], _reason(exc)
        try:
            async with asyncio.timeout(self._timeout):
                answers = await asyncio.gather(
                    *(self._query(resolver, name, rdtype) for rdtype in _RECORD_TYPES),
                    return_exceptions=True,
                )
        except TimeoutError:
            return [], "timeout"
        found = [ip for answer in answers if isinstance(answer, list) for ip in answer]
        errors = [a for a in answers if isinstance(a, BaseException)]
        for error in errors:
            if not isinstance(error, Exception):
                raise error  # cancellation and the like are not answers
        return found, (_reason(errors[0]) if errors else None)

    async def _query(
        self, resolver: dns.asyncresolver.Resolver, name: str, rdtype: dns.rdatatype.RdataType
    ) -> list[str]:
        try:
            answer = await resolver.resolve(
                name, rdtype, tcp=_over_tcp(name), lifetime=self._timeout, raise_on_no_answer=False
            )
        except dns.resolver.NXDOMAIN:
            return []
        if answer.rrset is None:
            return []
        return [_normalise(rdata.to_text()) for rdata in answer.rrset]

    async def _get_resolver(self) -> dns.asyncresolver.Resolver:
        """The resolver, built on first use (a failure is retried the next round)."""
        async with self._resolver_lock:
            if self._resolver is None:
                # Reading /etc/resolv.conf is file I/O: kept off the event loop.
                self._resolver = await asyncio.to_thread(dns.asyncresolver.Resolver)
            return self._resolver

    def _dns_agent(self, ip: str) -> Agent:
        return Agent(
            id=host_agent_id(ip, self._port),
            endpoint=endpoint_for(ip, self._port),
            address=ip,
            port=self._port,
            source="dns",
        )

    def _note(self, name: str, failure: str | None) -> None:
        """Log a name's change of state: starts failing, or recovers."""
        if failure is not None and name not in self._failing:
            log.warning("dns_name_failing", name=name, reason=failure)
        elif failure is None and name in self._failing:
            log.info("dns_name_recovered", name=name, was=self._failing[name])
        if failure is None:
            self._failing.pop(name, None)
        else:
            self._failing[name] = failure


def _over_tcp(name: str) -> bool:
    """`tasks.<service>` names are asked over TCP: their answers are the long ones, and some
    resolvers cut a UDP answer at 512 bytes without setting TC, which no retry can notice.
    Other names go over UDP, where a TC answer makes dnspython retry over TCP."""
    return name.lower().startswith("tasks.")


def _merge(static: tuple[Agent, ...], resolved: list[Agent]) -> tuple[Agent, ...]:
    """One agent per id; a resolved address that is also a known endpoint stays static."""
    by_id = {agent.id: agent for agent in static}
    configured = {agent.address for agent in static}
    for agent in resolved:
        if agent.address not in configured:
            by_id.setdefault(agent.id, agent)
    return tuple(by_id[key] for key in sorted(by_id))


def _static_agent(url: str) -> Agent:
    """A known endpoint (already validated as http(s)://host:port) as an agent."""
    parts = urlsplit(url)
    host, port = parts.hostname, parts.port
    if host is None or port is None:
        raise ConfigError(
            "WHOOSH_KNOWN_ENDPOINTS", url, "each endpoint must look like http://host:port"
        )
    address = _literal_ip(host) or host
    return Agent(
        id=host_agent_id(address, port), endpoint=url, address=address, port=port, source="static"
    )


def _literal_ip(name: str) -> str | None:
    """The canonical text of `name` when it is an IP address (brackets allowed)."""
    try:
        return _normalise(name.strip("[]"))
    except ValueError:
        return None


def _normalise(ip: str) -> str:
    # One spelling per address (fd00::1, not FD00:0::1), so that ids match across sources.
    return ipaddress.ip_address(ip).compressed


def _reason(exc: BaseException) -> str:
    """A short reason for a failed name: timeout, SERVFAIL, REFUSED, ..."""
    if isinstance(exc, TimeoutError | dns.exception.Timeout):
        return "timeout"
    if isinstance(exc, dns.resolver.NoNameservers):
        return _nameserver_errors(exc)
    if isinstance(exc, dns.resolver.NoResolverConfiguration):
        return "no DNS resolver configured (/etc/resolv.conf)"
    return f"{type(exc).__name__}: {exc}"


def _nameserver_errors(exc: dns.resolver.NoNameservers) -> str:
    reasons: list[str] = []
    for error in exc.kwargs.get("errors", []):
        # Each error is (server, tcp, port, rcode text or exception, response).
        what = error[3]
        text = what if isinstance(what, str) else _reason(what)
        if text not in reasons:
            reasons.append(text)
    return ", ".join(reasons) or "no nameserver answered"
