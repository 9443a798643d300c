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

from bridge.config import Settings
from bridge.discovery.base import SwarmRound, endpoint_for
from bridge.models import Agent

__all__ = ["Skipped", "TaskListDecoder", "classify_task"]


# gc=False: these only ever hold strings, numbers and each other, never a cycle, so the
# garbage collector need not traverse them.
class _NetworkSpec(msgspec.Struct, gc=False):
    Name: str = ""


class _Network(msgspec.Struct, gc=False):
    Spec: _NetworkSpec = msgspec.field(default_factory=_NetworkSpec)


class _Attachment(msgspec.Struct, gc=False):
    Network: _Network = msgspec.field(default_factory=_Network)
    Addresses: tuple[str, ...] | None = None


class _ContainerStatus(msgspec.Struct, gc=False):
    ContainerID: str | None = None


class _Status(msgspec.Struct, gc=False):
    State: str = ""
    ContainerStatus: _ContainerStatus | None = None


class _Task(msgspec.Struct, gc=False):
    """The fields of a Docker task that discovery reads; the rest is skipped while decoding."""

    ID: str
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


@dataclasses.dataclass(frozen=True, slots=True)
class Skipped:
    """A task that is not an agent in this round, and why."""

    task_id: str
    # not_desired: desired state is not running (the filter should have left it out);
    # pending: desired running but not running yet (preparing, starting, ...);
    # without_address: running, but with no address on the configured network(s).
    reason: Literal["not_desired", "pending", "without_address"]


def _address(task: _Task, networks: tuple[str, ...]) -> tuple[str, str] | None:
    """(address without its /prefix, network name) on the first configured network, in order."""
    attachments = task.NetworksAttachments or ()
    if not networks:
        for attachment in attachments:
            if attachment.Addresses:
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
    """The agent a task is (running, with an address on the configured network), or why not."""
    if task.DesiredState != "running":
        return Skipped(task.ID, "not_desired")
    if task.Status.State != "running":
        return Skipped(task.ID, "pending")
    found = _address(task, settings.network_names)
    if found is None:
        return Skipped(task.ID, "without_address")
    address, network = found
    status = task.Status.ContainerStatus
    return Agent(
        id=task.ID, endpoint=_endpoint(address, settings.agent_port), address=address,
        port=settings.agent_port, source="swarm", service=settings.service_name,
        network=network, task_id=task.ID, slot=task.Slot, node_id=task.NodeID or None,
        container_id=(status.ContainerID or None) if status else None)


class TaskListDecoder:
    """Turns task lists (GET /tasks bodies) into SwarmRounds, reusing the previous list's work.

    decode() raises msgspec.DecodeError when the body is not a JSON list of tasks; the state
    of the previous list is then kept as it was.
    """

    def __init__(self, settings: Settings) -> None:
        self._settings = settings
        self._body: bytes | None = None
        self._round: SwarmRound | None = None
        # The previous list's tasks (views into its body) and what each of them was.
        self._raws: list[msgspec.Raw] = []
        self._outcomes: list[Agent | Skipped] = []
        self.decoded = 0  # tasks decoded by the last decode(): 0 when nothing changed

    def decode(self, body: bytes) -> SwarmRound:
        if self._round is not None and body == self._body:
            self.decoded = 0
            return self._round
        raws = _SPLIT.decode(body)
        outcomes = self._match(raws)
        agents: list[Agent] = []
        without_address: list[str] = []
        pending = 0
        for outcome in outcomes:
            if isinstance(outcome, Agent):
                agents.append(outcome)
            elif outcome.reason == "pending":
                pending += 1  # a later round picks it up
            elif outcome.reason == "without_address":
                without_address.append(outcome.task_id)
        found = SwarmRound(agents=tuple(agents), without_address=tuple(without_address),
                           pending=pending)
        self._body, self._round, self._raws, self._outcomes = body, found, raws, outcomes
        return found

    def _match(self, raws: list[msgspec.Raw]) -> list[Agent | Skipped]:
        """What each task is, reusing the previous list's answer for a task with equal bytes.

        Docker lists tasks sorted by ID (as in the recorded responses), so the previous list
        is walked alongside: a task equal to the next one there costs one comparison. A few
        tasks ahead are tried too, which steps over tasks that went away; anything else (a
        new or changed task, or a list in another order) is decoded.
        """
        previous, answers, settings = self._raws, self._outcomes, self._settings
        outcomes: list[Agent | Skipped] = []
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
                append(classify_task(_TASK.decode(raw), settings))
                decoded += 1
        self.decoded = decoded
        return outcomes
