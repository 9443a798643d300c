"""One task of the emulated swarm changed as the field's cases need: its state, its address,
another network, the node's own network, a healthcheck probe, a late event of its container.
Each edit takes the store's lock, bumps the task's version and says the swarm changed, as every
mutation of bridge/devkit/emulator/state.py does."""

from __future__ import annotations

import ipaddress

from bridge.devkit.emulator.store import SwarmStore, check_state

__all__ = ["TaskEdits"]

_PROBE = "/bin/sh -c wget -q -O- http://127.0.0.1:8080/health || exit 1"


class TaskEdits(SwarmStore):
    """The edits of single tasks (EmulatedSwarm has them all)."""

    def probe(self, task_id: str, command: str = _PROBE) -> None:
        """One HEALTHCHECK probe in the task's container: exec events on its node, and
        nothing in the task list."""
        with self._lock:
            record = self._get(task_id)
            exec_id = self._ids.container_id()
        self.hub.publish(self._events.probe(record, command, exec_id), node=record.node_id)

    def host_mode(self, task_id: str, how: str) -> None:
        """The task is reached on its node's own network: "network" (`--network host`) or
        "port" (a host-mode published port, no network); it has no address on the service's."""
        if how not in ("network", "port"):
            raise ValueError(f"host_mode: how is 'network' or 'port', not {how!r}")
        with self._lock:
            record = self._get(task_id)
            self._addresses.release(record.address)
            record.address, record.host_mode = None, how
            record.touch(self._next_version())
            self._changed()

    def late_event(self, task_id: str, action: str = "destroy") -> None:
        """An event of a task's container that arrives late, labelled with the service ID the
        task had (that of a service since removed, after recreate_service)."""
        with self._lock:
            if task_id in self._gone:
                record, service_id = self._gone[task_id]
            else:
                record, service_id = self._get(task_id), self.service_id
        event = self._events.container(action, record, service_id)
        self.hub.publish([event], node=record.node_id)

    def set_state(self, task_id: str, state: str, *, err: str | None = None) -> None:
        """Set Status.State (e.g. "starting", "preparing", "rejected"); desired state is kept."""
        check_state(state)
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
