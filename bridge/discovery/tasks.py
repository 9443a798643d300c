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

import msgspec
import structlog

from bridge.config import Settings
from bridge.contract.messages import Agent
from bridge.discovery.base import SwarmRound
from bridge.discovery.task import (
    Skipped,
    SkipReason,
    Task,
    all_addresses,
    classify_task,
    decode_task,
)

__all__ = ["MixedServicesError", "TaskListDecoder"]

log = structlog.get_logger(__name__)


# Built once: reused for every list.
_SPLIT = msgspec.json.Decoder(list[msgspec.Raw])
# How many tasks of the previous list are tried for each task of a new one (see _match).
_LOOKAHEAD = 8


@dataclasses.dataclass(frozen=True, slots=True)
class _Outcome:
    """What one task of a list is: an agent or why not, its service, all its addresses."""

    result: Agent | Skipped
    service_id: str
    addresses: tuple[str, ...]


class MixedServicesError(ValueError):
    """The list holds tasks of several services and the service's own ID is not known."""


def _outcome(task: Task, settings: Settings) -> _Outcome:
    return _Outcome(classify_task(task, settings), task.ServiceID, all_addresses(task))


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
                append(_outcome(decode_task(raw), settings))
                decoded += 1
        self.decoded = decoded
        return outcomes
