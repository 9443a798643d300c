"""The emulated swarm: one service, its tasks on one network, its nodes, and the switches a
test flips.

Mutations may come from the server's loop or from another thread: they take a lock, drop the
cached task-list bodies, wake whoever waits on a change (a hung request) and publish the events
Docker would publish: service and node events on every manager, a container's events only on its
node. Task state changes alone publish nothing, as in Swarm, which has no task events. With
`commit_delay`, a scale's tasks are committed that many seconds after its service event, as Swarm
does (0.03 to 0.3 s measured on a real swarm).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence

from bridge.devkit.emulator.edits import TaskEdits
from bridge.devkit.emulator.events import service_event
from bridge.devkit.emulator.faults import ERROR_MODES, ErrorMode
from bridge.devkit.emulator.nodes import NodeRecord, node_event
from bridge.devkit.emulator.store import check_state
from bridge.devkit.emulator.tasks import TaskRecord, rfc3339_now

__all__ = ["ERROR_MODES", "EmulatedSwarm", "ErrorMode"]


class EmulatedSwarm(TaskEdits):
    """A swarm serving one replicated service, and what a test does to it; see DockerEmulator
    for the HTTP side.

    Addresses come sequentially from `subnet` (skipping its network address and gateway), which
    is on loopback by default so that nothing ever sends traffic off this machine; a
    non-loopback subnet or address needs `allow_non_loopback=True`.
    """

    # -- switches -------------------------------------------------------------------------

    @property
    def manager(self) -> bool:
        """Whether the first node is a manager (False: a worker, ControlAvailable false)."""
        return self.nodes[self.node_id].role == "manager"

    @manager.setter
    def manager(self, value: bool) -> None:
        self.nodes[self.node_id].role = "manager" if value else "worker"

    @property
    def error(self) -> ErrorMode | None:
        """The failure every node answers with (None: healthy); see set_error."""
        return self.faults.mode

    @error.setter
    def error(self, mode: ErrorMode | None) -> None:
        self.faults.mode = mode

    @property
    def error_paths(self) -> frozenset[str] | None:
        return self.faults.paths

    def set_error(
        self, mode: ErrorMode | None, *, paths: Iterable[str] | None = ("/tasks",)
    ) -> None:
        """Make the paths (without version prefix; None: every path) fail with `mode`, on
        every node (a swarm that lost quorum); DockerEmulator.set_error fails one node."""
        self.faults.set(mode, paths)

    def error_for(self, path: str) -> ErrorMode | None:
        """The failure a request to `path` gets on every node, if any."""
        return self.faults.for_path(path)

    def add_watcher(self, callback: Callable[[], None]) -> None:
        """Call `callback` (from the mutating thread) after every change."""
        self._watchers.append(callback)

    def remove_watcher(self, callback: Callable[[], None]) -> None:
        self._watchers.remove(callback)

    @property
    def event_streams(self) -> int:
        """How many /events streams are open."""
        return self.hub.count

    def close_event_streams(self, owner: object = None) -> None:
        """End every open /events stream (of one server, when `owner` is given), as a daemon
        restart would."""
        self.hub.close_all(owner)

    @property
    def commits_pending(self) -> int:
        """Changes announced by their service event and not yet in the task list."""
        with self._lock:
            return len(self._commits)

    def record_request(self, method: str, path: str, *, expected: bool) -> None:
        """Count a request by its path (version prefix stripped); keep the unexpected ones."""
        with self._lock:
            self.requests[path] += 1
            if not expected:
                self.unexpected.append(f"{method} {path}")

    # -- mutations ------------------------------------------------------------------------

    def add_tasks(
        self,
        n: int,
        *,
        addresses: Sequence[str] | None = None,
        state: str = "running",
        node: str | None = None,
    ) -> list[str]:
        """Scale up by n tasks (desired running, in `state`, on `node` or spread over the
        schedulable nodes); returns their IDs (in the task list after `commit_delay`)."""
        if addresses is not None and len(addresses) != n:
            raise ValueError(f"add_tasks({n}) got {len(addresses)} addresses")
        check_state(state)
        with self._lock:
            old = self.replicas
            now = rfc3339_now()
            added: list[TaskRecord] = []
            for i, slot in enumerate(self._free_slots(n)):
                where = node if node is not None else self._place(added)
                address = addresses[i] if addresses else None
                added.append(self._new_task(slot, address, state, now, where))
        self.hub.publish([self._events.scaled(old, old + n)])
        self._commit(lambda: self._insert(added))
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

        With replace=True a new task takes its slot on its node (as the orchestrator would);
        its ID is returned. No service event: Swarm reports none for a crash.
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
            new = None
            if replace:
                at = record.updated_at
                new = self._new_task(record.slot, None, "running", at, record.node_id)
                self._tasks[new.id] = new
            self._changed()
        self.hub.publish(self._events.crashed(record), node=record.node_id)
        if new is not None:
            self.hub.publish(self._events.started(new), node=new.node_id)
        return new.id if new else None

    def start_ready(self, task_ids: Iterable[str] | None = None) -> list[str]:
        """Tasks waiting in desired state "ready" (all, or these) start, as after the restart
        delay: desired running, state running, their containers' events on their nodes."""
        with self._lock:
            waiting = [r for r in self._tasks.values() if r.desired == "ready"]
            if task_ids is not None:
                wanted = set(task_ids)
                waiting = [r for r in waiting if r.id in wanted]
            for record in waiting:
                record.desired, record.state = "running", "running"
                record.touch(self._next_version())
            self._changed()
        for record in waiting:
            self.hub.publish(self._events.started(record), node=record.node_id)
        return [r.id for r in waiting]

    # -- nodes ----------------------------------------------------------------------------

    def add_node(self, hostname: str | None = None, *, manager: bool = False) -> str:
        """Join a node (a worker unless `manager`); returns its ID."""
        with self._lock:
            node_id = self._ids.object_id()
            name = hostname or f"chorus-node-{len(self.nodes) + 1}"
            self.nodes[node_id] = NodeRecord(node_id, name, "manager" if manager else "worker")
            self._changed()
        return node_id

    def node_down(self, node_id: str) -> list[str]:
        """The node stops answering its managers and is marked down: its tasks become desired
        shutdown (their state stays what it was last reported), and replacements appear at
        once in desired state "ready" (state pending) on other nodes; start_ready() starts
        them. Returns the replacements' IDs."""
        with self._lock:
            node = self._node(node_id)
            event = node_event(node, state=(node.state, "down"))
            node.state = "down"
            replacements = self._displace(node_id, state=None)
        self.hub.publish([event])
        return replacements

    def node_ready(self, node_id: str) -> None:
        """The node is back (ready); Swarm moves nothing back to it."""
        with self._lock:
            node = self._node(node_id)
            event = node_event(node, state=(node.state, "ready"))
            node.state = "ready"
            self._changed()
        self.hub.publish([event])

    def drain(self, node_id: str) -> list[str]:
        """Availability drain: its tasks are shut down (stop-first: desired and state shutdown),
        replacements wait in desired state "ready" on other nodes (about 13 s on a real swarm;
        start_ready() starts them). Returns the replacements' IDs."""
        with self._lock:
            node = self._node(node_id)
            event = node_event(node, availability=(node.availability, "drain"))
            node.availability = "drain"
            stopped = [r for r in self._desired_running() if r.node_id == node_id]
            replacements = self._displace(node_id, state="shutdown")
        self.hub.publish([event])
        for record in stopped:
            self.hub.publish(self._events.stopped(record), node=node_id)
        return replacements

    def activate(self, node_id: str) -> None:
        """Availability active again; Swarm moves nothing back to it."""
        with self._lock:
            node = self._node(node_id)
            event = node_event(node, availability=(node.availability, "active"))
            node.availability = "active"
            self._changed()
        self.hub.publish([event])

    # -- the service itself ---------------------------------------------------------------

    def recreate_service(self, n: int | None = None) -> list[str]:
        """`docker stack rm` and deploy again: every task of the service goes (no history),
        the service gets a new ID, and n new tasks (default: as many as ran) start. The old
        tasks' late events can still be sent (late_event). Returns the new tasks' IDs."""
        with self._lock:
            count = self.replicas if n is None else n
            old_id = self.service_id
            for record in self._tasks.values():
                self._addresses.release(record.address)
                self._gone[record.id] = (record, old_id)
            self._tasks.clear()
            self.service_id = self._ids.object_id()
            self._shape.service_id = self._events.service_id = self.service_id
            self._changed()
        self.hub.publish([service_event(old_id, self.service, "remove")])
        self.hub.publish([service_event(self.service_id, self.service, "create")])
        with self._lock:
            now = rfc3339_now()
            added: list[TaskRecord] = []
            for slot in range(1, count + 1):
                added.append(self._new_task(slot, None, "running", now, self._place(added)))
        self._insert(added)
        return [r.id for r in added]
