"""What one discovery method hands back for one round."""

from __future__ import annotations

import dataclasses
import ipaddress
from collections.abc import Mapping

from bridge.contract.messages import Agent

__all__ = ["DnsRound", "SwarmRound", "endpoint_for", "host_agent_id"]


def host_agent_id(host: str, port: int) -> str:
    """Key of an agent found by DNS or listed as known: `dns-<ip with . and : as ->-<port>`."""
    return f"dns-{host.replace('.', '-').replace(':', '-')}-{port}"


def endpoint_for(host: str, port: int) -> str:
    """`http://host:port`, with brackets around an IPv6 address."""
    try:
        if ipaddress.ip_address(host).version == 6:
            return f"http://[{host}]:{port}"
    except ValueError:
        pass
    return f"http://{host}:{port}"


@dataclasses.dataclass(frozen=True)
class SwarmRound:
    """The running tasks of the service, as agents (first_seen and on_bus not yet set), and
    the tasks that are not agents yet."""

    agents: tuple[Agent, ...]
    # Tasks that are running but have no address on the configured network(s) yet.
    without_address: tuple[str, ...] = ()
    # Tasks desired running that are not running yet (preparing, starting): worth a re-check.
    pending: tuple[str, ...] = ()
    # Tasks desired ready: replacements waiting to start (a node down, a drain, a restart
    # delay): not agents yet, but a sign that more is coming.
    ready: tuple[str, ...] = ()
    # The slot ("slot N", or "node ID" for a global service) of each of the tasks above: what
    # a wait is measured on, since a replacement takes its predecessor's slot.
    slots: Mapping[str, str] = dataclasses.field(default_factory=dict)
    # Running tasks reached only on their node's own network: (task ID, "host_network" or
    # "host_port"). No address will come; the service must be attached to the network.
    on_host: tuple[tuple[str, str], ...] = ()
    # Every address of the service's listed tasks, on any network: an address DNS returns
    # that is one of these is that task, never an agent of its own.
    addresses: frozenset[str] = frozenset()

    @property
    def not_running(self) -> tuple[str, ...]:
        """Tasks that should be agents soon: waiting to start, not running yet, or running
        without an address yet."""
        return self.ready + self.pending + self.without_address


@dataclasses.dataclass(frozen=True)
class DnsRound:
    """Agents found by DNS names and known endpoints in one round.

    `complete` is True when every name got an answer (an empty answer, NXDOMAIN, counts):
    only a complete round may count an agent as missing.
    """

    agents: tuple[Agent, ...]
    complete: bool
    failures: dict[str, str] = dataclasses.field(default_factory=dict)
