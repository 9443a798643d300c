"""Swarm tasks in exactly the shape of Docker Engine 20.10's `GET /tasks`.

Every task is rendered from one recorded task (templates/task.json): the parts that are the same
for every task of the service (its Spec, the full Network object of its attachment) are built once
and shared, which keeps 10,000 tasks cheap to build and to encode.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import random
import time
from importlib import resources
from typing import Any

import msgspec

__all__ = [
    "CONTAINER_STATES",
    "TASK_STATES",
    "IdSource",
    "TaskRecord",
    "TaskShape",
    "load_template",
    "rfc3339_now",
]

# swarmkit's task states, in lifecycle order (their lower-case names are the API's).
TASK_STATES = (
    "new",
    "pending",
    "assigned",
    "accepted",
    "preparing",
    "ready",
    "starting",
    "running",
    "complete",
    "shutdown",
    "failed",
    "rejected",
    "remove",
    "orphaned",
)
# States in which the task's container exists, so ContainerStatus names it.
CONTAINER_STATES = frozenset({"ready", "starting", "running", "complete", "shutdown", "failed"})
# Status.Message that swarmkit reports for each state.
_MESSAGES = {
    "new": "created",
    "pending": "pending task scheduling",
    "assigned": "scheduler assigned task to node",
    "accepted": "accepted",
    "preparing": "preparing",
    "ready": "prepared",
    "starting": "starting",
    "running": "started",
    "complete": "finished",
    "shutdown": "shutdown",
    "failed": "started",
    "rejected": "preparing",
    "remove": "removed",
    "orphaned": "orphaned",
}
_ID_LENGTH = 25  # swarmkit: 25 base-36 digits of a random number
_BASE36 = "0123456789abcdefghijklmnopqrstuvwxyz"


def load_template(name: str) -> Any:
    """One of the recorded documents shipped in bridge/devkit/emulator/templates/."""
    text = resources.files("bridge.devkit.emulator").joinpath("templates", name).read_text("utf-8")
    return json.loads(text)


def rfc3339_now() -> str:
    """The current UTC time as Go's RFC3339Nano (trailing zeros of the fraction trimmed)."""
    seconds, nanos = divmod(time.time_ns(), 1_000_000_000)
    fraction = f"{nanos:09d}".rstrip("0")
    stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(seconds))
    return f"{stamp}.{fraction}Z" if fraction else f"{stamp}Z"


class IdSource:
    """Object IDs like swarmkit's and container IDs like Docker's, from one seedable RNG."""

    def __init__(self, seed: int | None = None) -> None:
        self._rng = random.Random(seed)

    def object_id(self) -> str:
        return "".join(self._rng.choices(_BASE36, k=_ID_LENGTH))

    def container_id(self) -> str:
        return f"{self._rng.getrandbits(256):064x}"

    def pid(self) -> int:
        return 1000 + self._rng.getrandbits(15)


@dataclasses.dataclass(slots=True)
class TaskRecord:
    """What the emulator knows of one task; rendered to Docker's JSON on demand."""

    id: str
    slot: int
    node_id: str
    container_id: str
    pid: int
    address: str | None  # "IP/prefix" on the service's network, None when it has none
    created_at: str
    updated_at: str
    version: int
    state: str = "running"
    desired: str = "running"
    err: str = ""
    exit_code: int = 0
    keep_attachment: bool = False  # without an address: keep the attachment, omit Addresses
    # Attachments on other networks: (network name, "IP/prefix", listed before the service's).
    extra: tuple[tuple[str, str, bool], ...] = ()
    # Reached on the node's own network instead: "network" (`--network host`) or "port" (only
    # a host-mode published port); "" for a task on the service's network.
    host_mode: str = ""
    encoded: bytes | None = None  # cached JSON of this task; None after a change

    def touch(self, version: int) -> None:
        """Record a change: new Version.Index and UpdatedAt, and drop the cached JSON."""
        self.version = version
        self.updated_at = rfc3339_now()
        self.encoded = None

    def task_name(self, service: str) -> str:
        """The name Docker gives the task (and its container): SERVICE.SLOT.ID."""
        return f"{service}.{self.slot}.{self.id}"


# The `host` network as a task on it lists it (tasks_host_network.json): no Addresses.
_HOST_NETWORK: dict[str, Any] = {
    "ID": "qhkj9rnfkjgakroqiyri15b4b",
    "Version": {"Index": 458},
    "CreatedAt": "2026-12-07T16:00:54.509136147Z",
    "UpdatedAt": "2026-12-07T16:10:28.924254121Z",
    "Spec": {
        "Name": "host",
        "Labels": {"com.docker.swarm.predefined": "true"},
        "DriverConfiguration": {"Name": "host"},
        "Scope": "swarm",
    },
    "DriverState": {"Name": "host"},
    "IPAMOptions": {"Driver": {}},
}


def _other_network(name: str) -> dict[str, Any]:
    """A network attachment's Network of another network (ingress is marked as Docker does)."""
    spec: dict[str, Any] = {
        "Name": name,
        "Labels": {},
        "DriverConfiguration": {"Name": "overlay"},
        "Scope": "swarm",
    }
    if name == "ingress":
        spec["Ingress"] = True
    return {"ID": f"{name}-network", "Spec": spec}


class TaskShape:
    """Renders TaskRecords of one service into Docker's task JSON."""

    def __init__(
        self,
        *,
        service_id: str,
        network_id: str,
        network: str,
        subnet: str,
        gateway: str,
        created_at: str,
    ) -> None:
        template = load_template("task.json")
        self.service_id = service_id
        self.image: str = template["Spec"]["ContainerSpec"]["Image"]
        self._spec = copy.deepcopy(template["Spec"])
        self._spec["Networks"] = [{"Target": network_id}]
        net = copy.deepcopy(template["NetworksAttachments"][0]["Network"])
        net.update(ID=network_id, CreatedAt=created_at, UpdatedAt=created_at)
        net["Spec"]["Name"] = network
        net["IPAMOptions"]["Configs"] = [{"Subnet": subnet, "Gateway": gateway}]
        self._network = net
        # Pre-encoded once: most of a task's bytes are these shared parts.
        self._raw_spec = msgspec.Raw(msgspec.json.encode(self._spec))
        self._raw_network = msgspec.Raw(msgspec.json.encode(net))
        self._encoder = msgspec.json.Encoder()

    def render(self, record: TaskRecord) -> dict[str, Any]:
        """The task as GET /tasks returns it, as a fresh document."""
        task: dict[str, Any] = msgspec.json.decode(self.encode(record))
        return task

    def encode(self, record: TaskRecord) -> bytes:
        """The task's JSON, cached on the record until it changes."""
        if record.encoded is None:
            task = self._document(record, self._raw_spec, self._raw_network)
            record.encoded = self._encoder.encode(task)
        return record.encoded

    def _document(self, record: TaskRecord, spec: Any, network: Any) -> dict[str, Any]:
        task: dict[str, Any] = {
            "ID": record.id,
            "Version": {"Index": record.version},
            "CreatedAt": record.created_at,
            "UpdatedAt": record.updated_at,
            "Labels": {},
            "Spec": spec,
            "ServiceID": self.service_id,
            "Slot": record.slot,
            "NodeID": record.node_id,
            "Status": self._status(record),
            "DesiredState": record.desired,
        }
        # Go omits empty slices: no attachment, or an attachment without Addresses.
        attachments: list[dict[str, Any]] = []
        if record.address is not None:
            attachments = [{"Network": network, "Addresses": [record.address]}]
        elif record.keep_attachment:
            attachments = [{"Network": network}]
        if record.host_mode == "network":
            attachments = [{"Network": _HOST_NETWORK}]
        for name, address, before in record.extra:
            other = {"Network": _other_network(name), "Addresses": [address]}
            attachments.insert(0 if before else len(attachments), other)
        if attachments:
            task["NetworksAttachments"] = attachments
        return task

    def _status(self, record: TaskRecord) -> dict[str, Any]:
        status: dict[str, Any] = {
            "Timestamp": record.updated_at,
            "State": record.state,
            "Message": _MESSAGES[record.state],
        }
        if record.err:
            status["Err"] = record.err
        has_container = record.state in CONTAINER_STATES
        alive = record.state in ("starting", "running")
        status["ContainerStatus"] = {
            "ContainerID": record.container_id if has_container else "",
            "PID": record.pid if alive else 0,
            "ExitCode": record.exit_code,
        }
        status["PortStatus"] = {}
        if record.host_mode == "port":
            port = {"Protocol": "tcp", "TargetPort": 8080, "PublishedPort": 18080}
            status["PortStatus"] = {"Ports": [{**port, "PublishMode": "host"}]}
        return status
