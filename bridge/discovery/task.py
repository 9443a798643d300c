"""One Docker task: the fields of it that discovery reads, and what it is in a round (an
agent, or skipped and why). DESIGN.md ("Discovery"): a task is an agent when its desired state
and its state are both running and it has an address on the configured network(s); a task
desired `ready` is a replacement waiting to start.
"""

from __future__ import annotations

import dataclasses
from typing import Literal

import msgspec

from bridge.config import Settings
from bridge.contract.messages import Agent
from bridge.discovery.base import endpoint_for

__all__ = ["SkipReason", "Skipped", "Task", "all_addresses", "classify_task", "decode_task"]


# gc=False: these only ever hold strings, numbers and each other, never a cycle, so the
# garbage collector need not traverse them.
class _Driver(msgspec.Struct, gc=False):
    Name: str = ""


class _NetworkSpec(msgspec.Struct, gc=False):
    Name: str = ""
    Ingress: bool = False
    DriverConfiguration: _Driver | None = None


class _Network(msgspec.Struct, gc=False):
    Spec: _NetworkSpec = msgspec.field(default_factory=_NetworkSpec)


class _Attachment(msgspec.Struct, gc=False):
    Network: _Network = msgspec.field(default_factory=_Network)
    Addresses: tuple[str, ...] | None = None


class _ContainerStatus(msgspec.Struct, gc=False):
    ContainerID: str | None = None


class _Port(msgspec.Struct, gc=False):
    PublishMode: str = ""


class _PortStatus(msgspec.Struct, gc=False):
    Ports: tuple[_Port, ...] | None = None


class _Status(msgspec.Struct, gc=False):
    State: str = ""
    ContainerStatus: _ContainerStatus | None = None
    PortStatus: _PortStatus | None = None


class Task(msgspec.Struct, gc=False):
    """The fields of a Docker task that discovery reads; the rest is skipped while decoding."""

    ID: str
    ServiceID: str = ""
    Status: _Status = msgspec.field(default_factory=_Status)
    DesiredState: str = ""
    Slot: int | None = None
    NodeID: str | None = None
    NetworksAttachments: tuple[_Attachment, ...] | None = None


SkipReason = Literal[
    "not_desired", "ready", "pending", "without_address", "host_network", "host_port"
]


@dataclasses.dataclass(frozen=True, slots=True)
class Skipped:
    """A task that is not an agent in this round, and why.

    reason: not_desired: desired state neither running nor ready (the filter should have left
    it out); ready: desired ready, a replacement waiting to start (after a node went down, a
    drain, a restart delay); pending: desired running but not running yet (preparing,
    starting, ...); without_address: running, no address on the configured network(s) yet;
    host_network, host_port: running on the node's own network (`--network host`), or reached
    only through a host-mode published port: no address on the service's network will come.
    slot: what the task stands for, whichever task ID fills it (a replacement has its
    predecessor's): "slot N" of a replicated service, "node ID" of a global one.
    """

    task_id: str
    reason: SkipReason
    slot: str = ""

    @property
    def waiting(self) -> bool:
        """Whether an agent should come of it soon (worth re-checking)."""
        return self.reason in ("ready", "pending", "without_address")


def _slot(task: Task) -> str:
    if task.Slot:
        return f"slot {task.Slot}"
    return f"node {task.NodeID}" if task.NodeID else f"task {task.ID}"


def _host_mode(task: Task) -> SkipReason | None:
    """host_network or host_port when the task is reached on its node's own network."""
    attachments = task.NetworksAttachments or ()
    for attachment in attachments:
        spec = attachment.Network.Spec
        if spec.Name == "host" or (
            spec.DriverConfiguration and spec.DriverConfiguration.Name == "host"
        ):
            return "host_network"
    ports = task.Status.PortStatus.Ports if task.Status.PortStatus else None
    if not any(a.Addresses for a in attachments) and any(
        p.PublishMode == "host" for p in ports or ()
    ):
        return "host_port"
    return None


def _is_ingress(spec: _NetworkSpec) -> bool:
    # No container is reachable at its address on the routing mesh's network.
    return spec.Ingress or spec.Name == "ingress"


def all_addresses(task: Task) -> tuple[str, ...]:
    """Every address of the task, on every network, without its /prefix."""
    return tuple(
        address.split("/", 1)[0]
        for attachment in task.NetworksAttachments or ()
        for address in attachment.Addresses or ()
    )


def _address(task: Task, networks: tuple[str, ...]) -> tuple[str, str] | None:
    """(address without its /prefix, network name) on the first configured network, in order;
    with no network configured, the first address that is not on the ingress network."""
    attachments = task.NetworksAttachments or ()
    if not networks:
        for attachment in attachments:
            if attachment.Addresses and not _is_ingress(attachment.Network.Spec):
                return attachment.Addresses[0].split("/", 1)[0], attachment.Network.Spec.Name
        return None
    for wanted in networks:
        for attachment in attachments:
            if attachment.Addresses and attachment.Network.Spec.Name == wanted:
                return attachment.Addresses[0].split("/", 1)[0], wanted
    return None


def _endpoint(address: str, port: int) -> str:
    # Docker hands out IP literals: only an IPv6 one (it has a ':') needs endpoint_for's
    # brackets, and its parse of an IPv4 address costs more than the rest of building an agent.
    return endpoint_for(address, port) if ":" in address else f"http://{address}:{port}"


def classify_task(task: Task, settings: Settings) -> Agent | Skipped:
    """The agent a task is (desired and state running, with an address on the configured
    network), or why not."""
    if task.DesiredState != "running":
        reason: SkipReason = "ready" if task.DesiredState == "ready" else "not_desired"
        return Skipped(task.ID, reason, _slot(task))
    if task.Status.State != "running":
        return Skipped(task.ID, "pending", _slot(task))
    found = _address(task, settings.network_names)
    if found is None:
        return Skipped(task.ID, _host_mode(task) or "without_address", _slot(task))
    address, network = found
    status = task.Status.ContainerStatus
    return Agent(
        id=task.ID,
        endpoint=_endpoint(address, settings.agent_port),
        address=address,
        port=settings.agent_port,
        source="swarm",
        service=settings.service_name,
        network=network,
        task_id=task.ID,
        slot=task.Slot,
        node_id=task.NodeID or None,
        container_id=(status.ContainerID or None) if status else None,
    )


_TASK = msgspec.json.Decoder(Task)  # built once: reused for every task of every list


def decode_task(raw: bytes | msgspec.Raw) -> Task:
    """One task of a list. Raises msgspec.DecodeError when it is not a task."""
    return _TASK.decode(raw)
