"""Task-list filters resolved and matched the way a swarm manager does it.

Docker resolves `service` (name, ID or ID prefix) and `node` (ID, hostname or ID prefix) to IDs
first, answering 404 for an unknown one, then swarmkit matches: `id` and `name` by prefix (the
name is SERVICE.SLOT.TASK_ID), `label` against the service's labels, `desired-state` exactly.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterable, Iterator, Mapping

from bridge.devkit.emulator.filters import EngineError, FilterArgs, match_kv_list
from bridge.devkit.emulator.tasks import TASK_STATES, TaskRecord

__all__ = ["Identity", "TaskQuery"]

_ACCEPTED = frozenset(
    {"name", "id", "label", "service", "node", "desired-state", "runtime", "_up-to-date"}
)


@dataclasses.dataclass(frozen=True, slots=True)
class Identity:
    """Names and IDs that filter values may refer to: the service, and the nodes (ID ->
    hostname)."""

    service: str
    service_id: str
    nodes: Mapping[str, str]
    service_labels: Mapping[str, str]


def _resolve(value: str, kind: str, names: Mapping[str, str]) -> str:
    """The ID that `value` (an ID, a name or an ID prefix) names; 404 when none."""
    for object_id, name in names.items():
        if value in (object_id, name) or (value and object_id.startswith(value)):
            return object_id
    raise EngineError(404, f"{kind} {value} not found")


Check = Callable[[TaskRecord], bool]


@dataclasses.dataclass(frozen=True, slots=True)
class TaskQuery:
    """A validated, resolved task filter; `key` identifies it for caching."""

    key: tuple[tuple[str, tuple[str, ...]], ...]
    checks: tuple[Check, ...]
    nothing: bool  # a filter that no task of this swarm can pass

    @classmethod
    def build(cls, args: FilterArgs, who: Identity) -> TaskQuery:
        """Validate and resolve the filters; EngineError with Docker's status and message."""
        for name in args:
            if name not in _ACCEPTED:
                raise EngineError(400, f"invalid filter '{name}'")
        resolved = dict(args)
        if "service" in args:
            services = {who.service_id: who.service}
            resolved["service"] = frozenset(
                _resolve(v, "service", services) for v in args["service"]
            )
        if "node" in args:
            resolved["node"] = frozenset(_resolve(v, "node", who.nodes) for v in args["node"])
        if "desired-state" in args:
            # Docker skips empty values, so ["", "running"] means ["running"].
            resolved["desired-state"] = frozenset(
                state for v in args["desired-state"] if (state := _desired(v))
            )
        key = tuple(sorted((k, tuple(sorted(v))) for k, v in resolved.items() if v))
        nothing = not (
            _passes(resolved, "service", who.service_id)
            and (not resolved.get("runtime") or resolved["runtime"] & {"container", ""})
            and match_kv_list(resolved, "label", who.service_labels)
        )
        return cls(key=key, checks=tuple(_task_checks(resolved, who.service)), nothing=nothing)

    def select(self, records: Iterable[TaskRecord]) -> list[TaskRecord]:
        """The tasks that pass every filter (values of one key are alternatives)."""
        if self.nothing:
            return []
        selected = list(records)
        # One pass per filter over what is left: cheaper than a generator per task, and the
        # first filter (usually desired-state) leaves few for the next.
        for check in self.checks:
            selected = [r for r in selected if check(r)]
        return selected


def _passes(args: FilterArgs, key: str, value: str) -> bool:
    return not args.get(key) or value in args[key]


def _task_checks(args: FilterArgs, service: str) -> Iterator[Check]:
    """One predicate per filter key that depends on the task itself."""
    if ids := tuple(args.get("id", ())):
        yield lambda r: r.id.startswith(ids)
    if names := tuple(args.get("name", ())):
        yield lambda r: r.task_name(service).startswith(names)
    if states := args.get("desired-state"):
        yield lambda r: r.desired in states
    if nodes := args.get("node"):
        yield lambda r: r.node_id in nodes


def _desired(value: str) -> str:
    state = value.lower()
    if state in TASK_STATES or not value:
        return state
    # A plain error in Docker (not an invalid-parameter one), hence HTTP 500.
    raise EngineError(500, f"Invalid desired-state filter: '{value}'")
