"""The emulated swarm: one service, its tasks on one network, and the switches a test flips.

Mutations may come from the server's loop or from another thread: they take a lock, drop the
cached task-list bodies, wake whoever waits on a change (a hung request) and publish the events
Docker would publish. Task state changes alone publish nothing, as in Swarm, which has no task
events.
"""

from __future__ import annotations

import collections
import ipaddress
import itertools
import threading
from collections.abc import Callable, Iterable, Mapping, Sequence
from operator import attrgetter
from typing import Any, Literal, get_args

from bridge.devkit.emulator.addresses import AddressPool
from bridge.devkit.emulator.events import EventHub, TaskEvents
from bridge.devkit.emulator.filters import FilterArgs
from bridge.devkit.emulator.query import Identity, TaskQuery
from bridge.devkit.emulator.tasks import (
    TASK_STATES,
    IdSource,
    TaskRecord,
    TaskShape,
    rfc3339_now,
)

__all__ = ["ERROR_MODES", "EmulatedSwarm", "ErrorMode"]

ErrorMode = Literal["not_manager", "service_not_found", "server_error", "bad_json", "hang"]
ERROR_MODES: tuple[str, ...] = get_args(ErrorMode)
_MAX_CACHED_BODIES = 32


class EmulatedSwarm:
    """A swarm node serving one replicated service; see DockerEmulator for the HTTP side.

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
    ) -> None:
        self._lock = threading.RLock()
        self._ids = IdSource(seed)
        self.service, self.network, self.hostname = service, network, hostname
        self.manager = manager  # False: a worker node (ControlAvailable false, /tasks 503)
        self.active = active  # False: swarm mode off on this engine
        self._addresses = AddressPool(subnet, allow_non_loopback=allow_non_loopback)
        self.subnet, self.gateway = self._addresses.subnet, self._addresses.gateway
        self.service_id, self.node_id = self._ids.object_id(), self._ids.object_id()
        self.network_id, self.cluster_id = self._ids.object_id(), self._ids.object_id()
        self.manager_node_id = self._ids.object_id()  # the remote manager a worker knows
        self.created_at = rfc3339_now()
        self.identity = Identity(
            service, self.service_id, self.node_id, hostname, dict(service_labels or {})
        )
        self._shape = TaskShape(
            service_id=self.service_id,
            node_id=self.node_id,
            network_id=self.network_id,
            network=network,
            subnet=str(self.subnet),
            gateway=self.gateway,
            created_at=self.created_at,
        )
        self._events = TaskEvents(
            service=service,
            service_id=self.service_id,
            node_id=self.node_id,
            network=network,
            network_id=self.network_id,
            image=self._shape.image,
        )
        self._tasks: dict[str, TaskRecord] = {}
        self._version = 12
        self._bodies: dict[Any, bytes] = {}
        self._error: ErrorMode | None = None
        self.error_paths: frozenset[str] | None = frozenset({"/tasks"})
        self._watchers: list[Callable[[], None]] = []
        self.hub = EventHub()
        self.requests: collections.Counter[str] = collections.Counter()
        self.unexpected: list[str] = []

    # -- switches -------------------------------------------------------------------------

    @property
    def error(self) -> ErrorMode | None:
        """The failure the engine answers with (None: healthy); see set_error."""
        return self._error

    @error.setter
    def error(self, mode: ErrorMode | None) -> None:
        if mode is not None and mode not in ERROR_MODES:
            raise ValueError(f"unknown error mode {mode!r}; use one of {ERROR_MODES} or None")
        self._error = mode
        self._notify()

    def set_error(
        self, mode: ErrorMode | None, *, paths: Iterable[str] | None = ("/tasks",)
    ) -> None:
        """Make the paths (without version prefix; None: every path) fail with `mode`."""
        self.error_paths = None if paths is None else frozenset(paths)
        self.error = mode

    def error_for(self, path: str) -> ErrorMode | None:
        """The failure a request to `path` gets, if any."""
        if self._error is None or (self.error_paths is not None and path not in self.error_paths):
            return None
        return self._error

    def add_watcher(self, callback: Callable[[], None]) -> None:
        """Call `callback` (from the mutating thread) after every change."""
        self._watchers.append(callback)

    def remove_watcher(self, callback: Callable[[], None]) -> None:
        self._watchers.remove(callback)

    @property
    def event_streams(self) -> int:
        """How many /events streams are open."""
        return self.hub.count

    def close_event_streams(self) -> None:
        """End every open /events stream, as a daemon restart would."""
        self.hub.close_all()

    def record_request(self, method: str, path: str, *, expected: bool) -> None:
        """Count a request by its path (version prefix stripped); keep the unexpected ones."""
        with self._lock:
            self.requests[path] += 1
            if not expected:
                self.unexpected.append(f"{method} {path}")

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

    # -- mutations ------------------------------------------------------------------------

    def add_tasks(
        self, n: int, *, addresses: Sequence[str] | None = None, state: str = "running"
    ) -> list[str]:
        """Scale up by n tasks (desired running, in `state`); returns their IDs."""
        if addresses is not None and len(addresses) != n:
            raise ValueError(f"add_tasks({n}) got {len(addresses)} addresses")
        _check_state(state)
        with self._lock:
            old = self.replicas
            slots = self._free_slots(n)
            now = rfc3339_now()
            added = [
                self._new_task(slot, addresses[i] if addresses else None, state, now)
                for i, slot in enumerate(slots)
            ]
            self._changed()
        self.hub.publish(self._events.scaled(old, old + n, added, []))
        return [r.id for r in added]

    def remove_task(self, task_id: str) -> None:
        """Scale down by this task: desired state "remove", state "shutdown", kept as history."""
        with self._lock:
            self._remove([self._get(task_id, desired_running=True)])

    def scale(self, n: int) -> list[str]:
        """Set the replica count; returns the IDs added or removed (highest slots go first)."""
        with self._lock:
            running = self._desired_running()
            if n >= len(running):
                return self.add_tasks(n - len(running)) if n > len(running) else []
            gone = running[n:]
            self._remove(gone)
            return [r.id for r in gone]

    def replace_tasks(self, n: int) -> list[str]:
        """Replace the n least recently changed tasks with new ones in their slots (as a
        rolling update does); returns the new tasks' IDs."""
        with self._lock:
            running = sorted(self._desired_running(), key=lambda r: r.version)[:n]
            self._remove(running)
            return self.add_tasks(len(running))

    def fail_task(self, task_id: str, *, exit_code: int = 1, replace: bool = False) -> str | None:
        """The task's container exits: state "failed", desired "shutdown".

        With replace=True a new task takes its slot (as the orchestrator would); its ID is
        returned. No service event: Swarm reports none for a crash.
        """
        with self._lock:
            record = self._get(task_id, desired_running=True)
            self._end(
                record,
                state="failed",
                desired="shutdown",
                exit_code=exit_code,
                err=f"task: non-zero exit ({exit_code})",
            )
            new = (
                self._new_task(record.slot, None, "running", record.updated_at) if replace else None
            )
            self._changed()
        self.hub.publish(
            itertools.chain(self._events.crashed(record), self._events.started(new) if new else ())
        )
        return new.id if new else None

    def set_state(self, task_id: str, state: str, *, err: str | None = None) -> None:
        """Set Status.State (e.g. "starting", "preparing", "rejected"); desired state is kept."""
        _check_state(state)
        with self._lock:
            record = self._get(task_id)
            if err is None:
                err = f"No such image: {self._shape.image}" if state == "rejected" else ""
            record.state, record.err = state, err
            record.touch(self._next_version())
            self._changed()

    def drop_address(self, task_id: str, *, keep_attachment: bool = False) -> None:
        """The task loses its address: no NetworksAttachments (or, kept, no Addresses)."""
        with self._lock:
            record = self._get(task_id)
            self._addresses.release(record.address)
            record.address, record.keep_attachment = None, keep_attachment
            record.touch(self._next_version())
            self._changed()

    def set_address(self, task_id: str, ip: str) -> None:
        """Give the task this address ("IP" or "IP/prefix") on the network."""
        with self._lock:
            record = self._get(task_id)
            self._addresses.release(record.address)
            record.address = self._addresses.claim(ip)
            record.touch(self._next_version())
            self._changed()

    def attach(self, task_id: str, network: str, ip: str, *, before: bool = False) -> None:
        """Attach the task to another network too, at this address ("IP/prefix"); `before`
        lists that attachment first (as Docker lists `ingress`)."""
        bare = ip.split("/", 1)[0]
        self._addresses.check(ipaddress.IPv4Address(bare))
        with self._lock:
            record = self._get(task_id)
            address = ip if "/" in ip else f"{ip}/24"
            record.extra = (*record.extra, (network, address, before))
            record.touch(self._next_version())
            self._changed()

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

    def _next_version(self) -> int:
        self._version += 1
        return self._version

    def _new_task(self, slot: int, address: str | None, state: str, now: str) -> TaskRecord:
        record = TaskRecord(
            id=self._ids.object_id(),
            slot=slot,
            container_id=self._ids.container_id(),
            pid=self._ids.pid(),
            address=(self._addresses.claim(address) if address else self._addresses.allocate()),
            created_at=now,
            updated_at=now,
            version=self._next_version(),
            state=state,
        )
        self._shape.encode(record)  # now, so that the first task list is served at once
        self._tasks[record.id] = record
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
        for record in records:
            # Docker 20.10 marks a scaled-down task "remove"; its container is killed (137).
            self._end(record, state="shutdown", desired="remove", exit_code=137)
        self._changed()
        self.hub.publish(self._events.scaled(old, old - len(records), [], records))

    def _changed(self) -> None:
        self._bodies.clear()
        self._notify()

    def _notify(self) -> None:
        for callback in list(self._watchers):
            callback()


def _check_state(state: str) -> None:
    if state not in TASK_STATES:
        raise ValueError(f"unknown task state {state!r}; use one of {TASK_STATES}")
