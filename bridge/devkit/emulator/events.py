"""Docker events: built in the shape of Engine 20.10's `/events` lines, filtered and fanned out.

The shapes follow the recorded `events_scale.jsonl`: service events (scope swarm) carry the
service name and, on scale, `replicas.old`/`replicas.new`; container events (scope local) carry
the `com.docker.swarm.*` labels of their task. Go encodes attribute maps with sorted keys, so
attributes are sorted here too. Container and network events are node-local: only the node
that runs the container emits them (a manager running none of the service's tasks sees none).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import threading
import time
from collections.abc import Iterable, Iterator, Mapping
from typing import Any

import msgspec

from bridge.devkit.emulator.filters import FilterArgs, exact_match, fuzzy_match, match_kv_list
from bridge.devkit.emulator.tasks import TaskRecord

__all__ = [
    "Event",
    "EventHub",
    "Subscription",
    "TaskEvents",
    "container_event",
    "event_matches",
    "network_event",
    "service_event",
]

Event = dict[str, Any]

# Event types whose filter key matches the actor's ID or its `name` attribute by prefix.
_NAMED_TYPES = (
    "daemon",
    "container",
    "plugin",
    "volume",
    "network",
    "service",
    "node",
    "secret",
    "config",
)
# Actions that Docker matches by prefix (they carry a suffix, e.g. "health_status: healthy").
_FUZZY_ACTIONS = frozenset({"health_status", "exec_create", "exec_start"})


def _stamp() -> dict[str, int]:
    now = time.time_ns()
    return {"time": now // 1_000_000_000, "timeNano": now}


def _actor(actor_id: str, attributes: Mapping[str, str]) -> dict[str, Any]:
    return {"ID": actor_id, "Attributes": dict(sorted(attributes.items()))}


def service_event(service_id: str, name: str, action: str = "update", **attributes: str) -> Event:
    """A service event (scope swarm): `update` by default, or `create`, `remove`."""
    return {
        "Type": "service",
        "Action": action,
        "Actor": _actor(service_id, {"name": name, **attributes}),
        "scope": "swarm",
        **_stamp(),
    }


def container_event(
    action: str, container_id: str, image: str, labels: Mapping[str, str], **extra: str
) -> Event:
    """A container event (scope local) of a task's container, with its swarm labels."""
    return {
        "status": action,
        "id": container_id,
        "from": image,
        "Type": "container",
        "Action": action,
        "Actor": _actor(container_id, {**labels, "image": image, **extra}),
        "scope": "local",
        **_stamp(),
    }


def network_event(action: str, network_id: str, network: str, container_id: str) -> Event:
    """A network connect/disconnect event of a task's container on the overlay network."""
    attributes = {"container": container_id, "name": network, "type": "overlay"}
    return {
        "Type": "network",
        "Action": action,
        "Actor": _actor(network_id, attributes),
        "scope": "local",
        **_stamp(),
    }


def _strip_tag(image: str) -> str:
    name, _, tag = image.rpartition(":")
    return name if name and "/" not in tag else image


def event_matches(args: FilterArgs, event: Event) -> bool:
    """Docker's events filter (daemon/events/filter.go): every filter key must match."""
    actor = event["Actor"]
    attributes: dict[str, str] = actor["Attributes"]
    action = event["Action"]
    if _FUZZY_ACTIONS & args.get("event", frozenset()):
        action_ok = fuzzy_match(args, "event", action)
    else:
        action_ok = exact_match(args, "event", action)
    names = (actor["ID"], attributes.get("name", ""))
    image = attributes.get("name" if event["Type"] == "image" else "image", "")
    return (
        action_ok
        and exact_match(args, "type", event["Type"])
        and exact_match(args, "scope", event["scope"])
        and all(
            fuzzy_match(args, kind, names[0]) or fuzzy_match(args, kind, names[1])
            for kind in _NAMED_TYPES
        )
        and any(
            exact_match(args, "image", candidate)
            for candidate in (actor["ID"], image, _strip_tag(actor["ID"]), _strip_tag(image))
        )
        and match_kv_list(args, "label", attributes)
    )


class Subscription:
    """One open `/events` stream of one served node: a queue of encoded lines on the server's
    loop. A node-local event reaches only the streams of the node it happened on."""

    def __init__(
        self,
        args: FilterArgs,
        loop: asyncio.AbstractEventLoop,
        node: str | None = None,
        owner: object = None,
    ) -> None:
        self.args = args
        self.node, self.owner = node, owner
        self._loop = loop
        self.queue: asyncio.Queue[bytes | None] = asyncio.Queue()

    def offer(self, event: Event, line: bytes, local_to: str | None = None) -> None:
        """Queue the line if the event happened where this stream can see it and passes its
        filters (callable from any thread)."""
        if local_to is not None and self.node is not None and local_to != self.node:
            return
        if event_matches(self.args, event):
            self._put(line)

    def close(self) -> None:
        """End the stream: the handler sees None and finishes the response."""
        self._put(None)

    def _put(self, item: bytes | None) -> None:
        # A stream whose loop is gone has nobody left to read it.
        with contextlib.suppress(RuntimeError):
            self._loop.call_soon_threadsafe(self.queue.put_nowait, item)


# Docker keeps the last events in memory, for streams opened with `since`.
_HISTORY = 1024


class EventHub:
    """Fans events out to every open stream; safe to publish from any thread."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._subscriptions: set[Subscription] = set()
        self._history: collections.deque[tuple[Event, bytes, str | None]] = collections.deque(
            maxlen=_HISTORY
        )

    @property
    def count(self) -> int:
        """How many event streams are open."""
        return len(self._subscriptions)

    def count_of(self, owner: object) -> int:
        """How many event streams of one server are open."""
        with self._lock:
            return sum(1 for s in self._subscriptions if s.owner is owner)

    def subscribe(
        self,
        args: FilterArgs,
        since_ns: int | None = None,
        *,
        node: str | None = None,
        owner: object = None,
    ) -> Subscription:
        """Open a stream on the running loop (call from the server's loop), seeing the events
        of `node` (None: every node's); with `since_ns`, the remembered events from then on
        come first, as Docker replays them."""
        subscription = Subscription(args, asyncio.get_running_loop(), node, owner)
        with self._lock:
            if since_ns is not None:
                for event, line, local_to in self._history:
                    if event["timeNano"] >= since_ns:
                        subscription.offer(event, line, local_to)
            self._subscriptions.add(subscription)
        return subscription

    def unsubscribe(self, subscription: Subscription) -> None:
        with self._lock:
            self._subscriptions.discard(subscription)

    def publish(self, events: Iterable[Event], *, node: str | None = None) -> None:
        """Send events, in order, to the streams whose filters they pass, and remember them.

        node: the node the events happened on, for node-local events (a container's); None for
        the swarm's own (service and node events), which every manager emits.
        """
        with self._lock:  # a stream opening meanwhile gets each event once
            for event in events:
                line = msgspec.json.encode(event) + b"\n"
                self._history.append((event, line, node))
                for subscription in self._subscriptions:
                    subscription.offer(event, line, node)

    def close_all(self, owner: object = None) -> None:
        """End every open stream (of one server, when `owner` is given): clients see the
        daemon close the connection."""
        with self._lock:
            subscriptions = [s for s in self._subscriptions if owner is None or s.owner is owner]
        for subscription in subscriptions:
            subscription.close()


class TaskEvents:
    """The events Docker publishes when the service's tasks come and go."""

    def __init__(
        self,
        *,
        service: str,
        service_id: str,
        network: str,
        network_id: str,
        image: str,
    ) -> None:
        self.service, self.service_id = service, service_id
        self.network, self.network_id, self.image = network, network_id, image

    def scaled(self, old: int, new: int) -> Event:
        """A scale: the service's update event (its tasks' containers follow on their nodes)."""
        return service_event(
            self.service_id, self.service, **{"replicas.new": str(new), "replicas.old": str(old)}
        )

    def started(self, record: TaskRecord) -> Iterator[Event]:
        """A new task's container is created, connected and started (as far as its state)."""
        if record.state not in ("ready", "starting", "running"):
            return  # the container is not created yet
        yield self.container("create", record)
        yield self._network("connect", record)
        if record.state != "ready":
            yield self.container("start", record)

    def stopped(self, record: TaskRecord, service_id: str | None = None) -> Iterator[Event]:
        """A scaled-down task's container is killed (SIGTERM), stopped and destroyed."""
        yield self.container("kill", record, service_id, signal="15")
        yield self.container("die", record, service_id, exitCode=str(record.exit_code))
        yield self._network("disconnect", record)
        yield self.container("stop", record, service_id)
        yield self.container("destroy", record, service_id)

    def crashed(self, record: TaskRecord) -> Iterator[Event]:
        """A task's container exits on its own: no service event, Swarm sends none."""
        yield self.container("die", record, exitCode=str(record.exit_code))
        yield self._network("disconnect", record)

    def probe(self, record: TaskRecord, command: str, exec_id: str) -> Iterator[Event]:
        """One HEALTHCHECK probe in the task's container: Docker's exec events, which say
        nothing about the task (its health_status event comes only when the status changes)."""
        yield self.container(f"exec_create: {command}", record, execID=exec_id)
        yield self.container(f"exec_start: {command}", record, execID=exec_id)
        yield self.container("exec_die", record, execID=exec_id, exitCode="0")

    def container(
        self, action: str, record: TaskRecord, service_id: str | None = None, **extra: str
    ) -> Event:
        """An event of the task's container; `service_id`: the service it belonged to, when
        not the service's current one (a container of a service since removed)."""
        name = record.task_name(self.service)
        labels = {
            "com.docker.swarm.node.id": record.node_id,
            "com.docker.swarm.service.id": service_id or self.service_id,
            "com.docker.swarm.service.name": self.service,
            "com.docker.swarm.task": "",
            "com.docker.swarm.task.id": record.id,
            "com.docker.swarm.task.name": name,
            "name": name,
        }
        return container_event(action, record.container_id, self.image, labels, **extra)

    def _network(self, action: str, record: TaskRecord) -> Event:
        return network_event(action, self.network_id, self.network, record.container_id)
