"""The emulated swarm's records: its service's tasks, its nodes, the cached task-list bodies,
the events it publishes, and the operations its mutations (bridge/devkit/emulator/state.py) are
made of.

Mutations may come from the server's loop or from another thread: they take the lock, drop the
cached task-list bodies and wake whoever waits on a change (a hung request).
"""

from __future__ import annotations

import collections
import itertools
import threading
from collections.abc import Callable, Iterable, Mapping
from operator import attrgetter
from typing import Any

from bridge.devkit.emulator.addresses import AddressPool
from bridge.devkit.emulator.events import EventHub, TaskEvents
from bridge.devkit.emulator.faults import FaultSwitch
from bridge.devkit.emulator.filters import FilterArgs
from bridge.devkit.emulator.nodes import NodeRecord
from bridge.devkit.emulator.query import Identity, TaskQuery
from bridge.devkit.emulator.tasks import TASK_STATES, IdSource, TaskRecord, TaskShape, rfc3339_now

__all__ = ["SwarmStore", "check_state"]

_MAX_CACHED_BODIES = 32


class SwarmStore:
    """The records of a swarm serving one replicated service (EmulatedSwarm adds what a test
    does to it; DockerEmulator serves it over HTTP).

    Addresses come sequentially from `subnet` (skipping its network address and gateway), which
    is on loopback by default so that nothing ever sends traffic off this machine; a
    non-loopback subnet or address needs `allow_non_loopback=True`.
    """

    def __init__(
        self,
        service: str = "CHORUS_chorus",
        network: str = "chorus_default",
        subnet: str = "127.10.0.0/16",
        manager: bool = True,
        *,
        active: bool = True,
        hostname: str = "chorus-node-1",
        service_labels: Mapping[str, str] | None = None,
        seed: int | None = None,
        allow_non_loopback: bool = False,
        commit_delay: float = 0.0,
    ) -> None:
        self._lock = threading.RLock()
        self._ids = IdSource(seed)
        self.service, self.network, self.hostname = service, network, hostname
        self.active = active  # False: swarm mode off on this engine
        self._addresses = AddressPool(subnet, allow_non_loopback=allow_non_loopback)
        self.subnet, self.gateway = self._addresses.subnet, self._addresses.gateway
        self.service_id, self.node_id = self._ids.object_id(), self._ids.object_id()
        self.network_id, self.cluster_id = self._ids.object_id(), self._ids.object_id()
        self.manager_node_id = self._ids.object_id()  # the remote manager a worker knows
        self.created_at = rfc3339_now()
        # The first node is the one a DockerEmulator serves unless told another.
        self.nodes: dict[str, NodeRecord] = {
            self.node_id: NodeRecord(self.node_id, hostname, "manager" if manager else "worker")
        }
        self._labels = dict(service_labels or {})
        self._shape = TaskShape(
            service_id=self.service_id,
            network_id=self.network_id,
            network=network,
            subnet=str(self.subnet),
            gateway=self.gateway,
            created_at=self.created_at,
        )
        self._events = TaskEvents(
            service=service,
            service_id=self.service_id,
            network=network,
            network_id=self.network_id,
            image=self._shape.image,
        )
        self._tasks: dict[str, TaskRecord] = {}
        # Tasks of a service since removed, with its ID: their late events can still come.
        self._gone: dict[str, tuple[TaskRecord, str]] = {}
        self._version = 12
        self._bodies: dict[Any, bytes] = {}
        self.faults = FaultSwitch(self._notify)
        self.commit_delay = commit_delay
        self._commits: set[threading.Timer] = set()
        self._watchers: list[Callable[[], None]] = []
        self.hub = EventHub()
        self.requests: collections.Counter[str] = collections.Counter()
        self.unexpected: list[str] = []

    # -- reading --------------------------------------------------------------------------

    @property
    def replicas(self) -> int:
        """Tasks whose desired state is running (the service's replica count)."""
        with self._lock:
            return sum(1 for r in self._tasks.values() if r.desired == "running")

    def running_ids(self) -> list[str]:
        """IDs of the tasks desired running, by slot."""
        return [r.id for r in self._desired_running()]

    def task(self, task_id: str) -> dict[str, Any]:
        """One task as GET /tasks shows it."""
        with self._lock:
            return self._shape.render(self._get(task_id))

    def tasks(self) -> list[dict[str, Any]]:
        """Every task, history included, as GET /tasks shows them."""
        with self._lock:
            return [self._shape.render(r) for r in self._tasks.values()]

    def address_of(self, task_id: str) -> str | None:
        """The task's address on the network, without its /prefix (None: it has none)."""
        with self._lock:
            address = self._get(task_id).address
        return address.split("/", 1)[0] if address else None

    @property
    def identity(self) -> Identity:
        """What filter values may name: the service, its labels and the nodes."""
        nodes = {n.id: n.hostname for n in self.nodes.values()}
        return Identity(self.service, self.service_id, nodes, self._labels)

    def tasks_body(self, args: FilterArgs) -> bytes:
        """The JSON body of GET /tasks for these filters (EngineError as Docker would fail)."""
        with self._lock:
            query = TaskQuery.build(args, self.identity)
            body = self._bodies.get(query.key)
            if body is None:
                encode = self._shape.encode
                # Sorted by ID, as Docker lists them (its store is indexed by ID).
                selected = sorted(query.select(self._tasks.values()), key=attrgetter("id"))
                parts = [encode(r) for r in selected]
                # The brackets go onto the end parts, so 13 MB of tasks are copied only once.
                if parts:
                    parts[0] = b"[" + parts[0]
                    parts[-1] += b"]\n"  # the same part as the first when there is one
                body = b",".join(parts) if parts else b"[]\n"
                if len(self._bodies) >= _MAX_CACHED_BODIES:
                    self._bodies.clear()
                self._bodies[query.key] = body
            return body

    # -- internals ------------------------------------------------------------------------

    def _get(self, task_id: str, *, desired_running: bool = False) -> TaskRecord:
        try:
            record = self._tasks[task_id]
        except KeyError:
            raise KeyError(f"no task {task_id!r} in the emulated swarm") from None
        if desired_running and record.desired != "running":
            raise ValueError(
                f"task {task_id} is already desired {record.desired!r}; only a "
                "task desired running can be removed or failed"
            )
        return record

    def _desired_running(self) -> list[TaskRecord]:
        with self._lock:
            running = [r for r in self._tasks.values() if r.desired == "running"]
        return sorted(running, key=lambda r: r.slot)

    def _free_slots(self, n: int) -> list[int]:
        used = {r.slot for r in self._tasks.values() if r.desired == "running"}
        slots: list[int] = []
        candidate = 1
        while len(slots) < n:
            if candidate not in used:
                slots.append(candidate)
            candidate += 1
        return slots

    def _node(self, node_id: str) -> NodeRecord:
        try:
            return self.nodes[node_id]
        except KeyError:
            raise KeyError(f"no node {node_id!r} in the emulated swarm") from None

    def _place(self, placing: Iterable[TaskRecord] = ()) -> str:
        """A schedulable node for a new task: the one with the fewest tasks desired running
        or ready (counting `placing`, placed and not yet listed), by join order; "" when none
        is (the task then waits unassigned, as in Swarm)."""
        tasks = itertools.chain(self._tasks.values(), placing)
        load = collections.Counter(r.node_id for r in tasks if r.desired in ("running", "ready"))
        candidates = [n.id for n in self.nodes.values() if n.schedulable]
        return min(candidates, key=lambda n: load[n]) if candidates else ""

    def _displace(self, node_id: str, *, state: str | None) -> list[str]:
        """Tasks desired running on the node become desired shutdown (and `state`, if given);
        each gets a replacement in its slot, desired ready, pending, on another node."""
        now = rfc3339_now()
        displaced = [r for r in self._desired_running() if r.node_id == node_id]
        for record in displaced:
            record.desired = "shutdown"
            if state is not None:
                record.state = state
            record.touch(self._next_version())
        replacements = []
        for record in displaced:
            new = self._new_task(record.slot, None, "pending", now, self._place(), "ready")
            self._tasks[new.id] = new
            replacements.append(new.id)
        self._changed()
        return replacements

    def _commit(self, change: Callable[[], None]) -> None:
        """Apply a change to the task list now, or `commit_delay` seconds from now."""
        if self.commit_delay <= 0:
            change()
            return

        def later() -> None:
            try:
                change()
            finally:
                with self._lock:
                    self._commits.discard(timer)

        timer = threading.Timer(self.commit_delay, later)
        timer.daemon = True
        with self._lock:
            self._commits.add(timer)
        timer.start()

    def _insert(self, records: list[TaskRecord]) -> None:
        with self._lock:
            for record in records:
                self._tasks[record.id] = record
            self._changed()
        for record in records:
            self.hub.publish(self._events.started(record), node=record.node_id)

    def _next_version(self) -> int:
        self._version += 1
        return self._version

    def _new_task(
        self,
        slot: int,
        address: str | None,
        state: str,
        now: str,
        node: str | None = None,
        desired: str = "running",
    ) -> TaskRecord:
        """A new task record (not yet in the task list)."""
        record = TaskRecord(
            id=self._ids.object_id(),
            slot=slot,
            node_id=self._place() if node is None else node,
            container_id=self._ids.container_id(),
            pid=self._ids.pid(),
            address=(self._addresses.claim(address) if address else self._addresses.allocate()),
            created_at=now,
            updated_at=now,
            version=self._next_version(),
            state=state,
            desired=desired,
        )
        self._shape.encode(record)  # now, so that the first task list is served at once
        return record

    def _end(
        self, record: TaskRecord, *, state: str, desired: str, exit_code: int, err: str = ""
    ) -> None:
        record.state, record.desired, record.exit_code, record.err = state, desired, exit_code, err
        record.touch(self._next_version())
        # The address stays in the history record but is free for another task.
        self._addresses.release(record.address)

    def _remove(self, records: list[TaskRecord]) -> None:
        old = self.replicas
        self.hub.publish([self._events.scaled(old, old - len(records))])

        def commit() -> None:
            with self._lock:
                for record in records:
                    # Docker 20.10 marks a scaled-down task "remove"; its container is killed.
                    self._end(record, state="shutdown", desired="remove", exit_code=137)
                self._changed()
            for record in records:
                self.hub.publish(self._events.stopped(record), node=record.node_id)

        self._commit(commit)

    def _changed(self) -> None:
        self._bodies.clear()
        self._notify()

    def _notify(self) -> None:
        for callback in list(self._watchers):
            callback()


def check_state(state: str) -> None:
    if state not in TASK_STATES:
        raise ValueError(f"unknown task state {state!r}; use one of {TASK_STATES}")
