"""Docker's task list into agents, decoding only what changed since the previous list.

A service of 10,000 tasks makes a 13.8 MB task list. Decoding all of it into task structs
costs about as much as fetching it, yet most rounds see a list that has not changed, or that
changed in a few tasks. So:
- a list byte-identical to the previous one gives the previous round back (one memcmp);
- otherwise the list is only split into its tasks (msgspec.Raw: no objects built), and a task
  is decoded only when its bytes differ from its place in the previous list. An unchanged
  task keeps its Agent object, which lets the roster and the registry skip it by identity.
Nothing is assumed of Docker here: equal bytes are the same task in the same state.
"""

from __future__ import annotations

import dataclasses
from typing import Literal

import msgspec
import structlog

from bridge.config import Settings
from bridge.contract.messages import Agent
from bridge.discovery.base import SwarmRound, endpoint_for

__all__ = ["MixedServicesError", "Skipped", "TaskListDecoder", "classify_task"]

log = structlog.get_logger(__name__)


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


class _Task(msgspec.Struct, gc=False):
    """The fields of a Docker task that discovery reads; the rest is skipped while decoding."""

    ID: str
    ServiceID: str = ""
    Status: _Status = msgspec.field(default_factory=_Status)
    DesiredState: str = ""
    Slot: int | None = None
    NodeID: str | None = None
    NetworksAttachments: tuple[_Attachment, ...] | None = None


# Built once: decoders are reused for every list and every task.
_SPLIT = msgspec.json.Decoder(list[msgspec.Raw])
_TASK = msgspec.json.Decoder(_Task)
# How many tasks of the previous list are tried for each task of a new one (see _match).
_LOOKAHEAD = 8


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


@dataclasses.dataclass(frozen=True, slots=True)
class _Outcome:
    """What one task of a list is: an agent or why not, its service, all its addresses."""

    result: Agent | Skipped
    service_id: str
    addresses: tuple[str, ...]


def _slot(task: _Task) -> str:
    if task.Slot:
        return f"slot {task.Slot}"
    return f"node {task.NodeID}" if task.NodeID else f"task {task.ID}"


def _host_mode(task: _Task) -> SkipReason | None:
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


class MixedServicesError(ValueError):
    """The list holds tasks of several services and the service's own ID is not known."""


def _is_ingress(spec: _NetworkSpec) -> bool:
    # No container is reachable at its address on the routing mesh's network.
    return spec.Ingress or spec.Name == "ingress"


def _all_addresses(task: _Task) -> tuple[str, ...]:
    """Every address of the task, on every network, without its /prefix."""
    return tuple(
        address.split("/", 1)[0]
        for attachment in task.NetworksAttachments or ()
        for address in attachment.Addresses or ()
    )


def _address(task: _Task, networks: tuple[str, ...]) -> tuple[str, str] | None:
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


def classify_task(task: _Task, settings: Settings) -> Agent | Skipped:
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


def _outcome(task: _Task, settings: Settings) -> _Outcome:
    return _Outcome(classify_task(task, settings), task.ServiceID, _all_addresses(task))


class TaskListDecoder:
    """Turns task lists (GET /tasks bodies) into SwarmRounds, reusing the previous list's work.

    Only tasks of the service count, whatever the engine's filter let through. The service's
    ID is what its filtered lists show: the engine resolves the filter's name to one service,
    so a list whose tasks all share an ID is that service's (a new ID: the service was
    re-created, `docker stack rm` and deploy, and the change is said in one line). Nothing else
    tells it: a Docker event can name an old ID (a late event of a container of a removed
    service), and taking it would make the current list "another service's". decode() raises
    msgspec.DecodeError when the body is not a JSON list of tasks, and MixedServicesError when
    it mixes services before the service's own ID is known; the state of the previous list is
    then kept as it was.
    """

    def __init__(self, settings: Settings) -> None:
        self._settings = settings
        self._body: bytes | None = None
        self._round: SwarmRound | None = None
        # The previous list's tasks (views into its body) and what each of them was.
        self._raws: list[msgspec.Raw] = []
        self._outcomes: list[_Outcome] = []
        self.service_id: str | None = None
        self.decoded = 0  # tasks decoded by the last decode(): 0 when nothing changed

    def decode(self, body: bytes) -> SwarmRound:
        if self._round is not None and body == self._body:
            self.decoded = 0
            return self._round
        raws = _SPLIT.decode(body)
        outcomes = self._match(raws)
        found = self._round_of(outcomes)
        self._body, self._round, self._raws, self._outcomes = body, found, raws, outcomes
        return found

    def _own_service(self, outcomes: list[_Outcome]) -> str | None:
        """The ID whose tasks count (None: the list is empty)."""
        if not outcomes:
            return self.service_id
        first = outcomes[0].service_id
        if all(o.service_id == first for o in outcomes):
            if first != self.service_id:
                if self.service_id is not None:
                    log.warning(
                        "docker_service_id_changed",
                        service=self._settings.service_name,
                        old=self.service_id,
                        new=first,
                    )
                self.service_id = first
            return self.service_id
        if self.service_id is None:
            raise MixedServicesError(
                f"the task list holds tasks of {len({o.service_id for o in outcomes})} "
                f"services, and the ID of {self._settings.service_name!r} is not known yet"
            )
        return self.service_id

    def _round_of(self, outcomes: list[_Outcome]) -> SwarmRound:
        own = self._own_service(outcomes)
        agents: list[Agent] = []
        waiting: dict[SkipReason, list[str]] = {"pending": [], "without_address": [], "ready": []}
        slots: dict[str, str] = {}
        on_host: list[tuple[str, str]] = []
        addresses: list[str] = []
        for outcome in outcomes:
            if outcome.service_id != own:
                continue  # another service's task: the engine's filter let it through
            result = outcome.result
            if isinstance(result, Agent):
                agents.append(result)
            elif result.waiting:
                waiting[result.reason].append(result.task_id)
                slots[result.task_id] = result.slot
            elif result.reason in ("host_network", "host_port"):
                on_host.append((result.task_id, result.reason))
            addresses.extend(outcome.addresses)
        return SwarmRound(
            agents=tuple(agents),
            without_address=tuple(waiting["without_address"]),
            pending=tuple(waiting["pending"]),
            ready=tuple(waiting["ready"]),
            slots=slots,
            on_host=tuple(on_host),
            addresses=frozenset(addresses),
        )

    def _match(self, raws: list[msgspec.Raw]) -> list[_Outcome]:
        """What each task is, reusing the previous list's answer for a task with equal bytes.

        Docker lists tasks sorted by ID (as in the recorded responses), so the previous list
        is walked alongside: a task equal to the next one there costs one comparison. A few
        tasks ahead are tried too, which steps over tasks that went away; anything else (a
        new or changed task, or a list in another order) is decoded.
        """
        previous, answers, settings = self._raws, self._outcomes, self._settings
        outcomes: list[_Outcome] = []
        at, end, decoded = 0, len(previous), 0
        append = outcomes.append
        for raw in raws:
            if at < end and raw == previous[at]:  # the usual case, kept cheap
                append(answers[at])
                at += 1
                continue
            for index in range(at + 1, min(at + _LOOKAHEAD, end)):
                if raw == previous[index]:
                    append(answers[index])
                    at = index + 1
                    break
            else:
                append(_outcome(_TASK.decode(raw), settings))
                decoded += 1
        self.decoded = decoded
        return outcomes
