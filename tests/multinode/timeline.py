"""What the manager's task list and the agents bucket showed over time, on one clock.

TaskSampler asks a manager for the service's tasks every `interval` seconds (in a thread, moving
to the next manager when one fails) and keeps every answer. BucketTimeline follows the agents
bucket with a KV watch and keeps every put and delete. Both stamp with time.monotonic() of this
process, so "the manager's list showed task X running at t_m, the bucket had it at t_b" is a
difference on one clock. `lags` and `missing` compare the two the way DESIGN.md states the
target: each agent joins or leaves the bucket within 1 s of the manager's list showing it, and
nothing the list shows running is missing for longer.

The sampler's own period bounds its resolution: a change is seen up to `interval` late, so a lag
is measured from the first sample that showed it.
"""

from __future__ import annotations

import asyncio
import bisect
import contextlib
import dataclasses
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

import docker
import docker.errors
import requests
from nats.js.kv import KeyValue

from tests.multinode.swarm import Node

__all__ = [
    "BucketTimeline",
    "Lag",
    "Sample",
    "TaskSampler",
    "divergence",
    "lags",
    "missing",
    "task_listers",
    "watching_bucket",
]

TaskLister = Callable[[], list[dict[str, Any]]]


# A manager that does not answer within this is skipped for the next one (a partitioned manager
# hangs until its raft request times out).
LIST_TIMEOUT = 2


@contextlib.contextmanager
def task_listers(managers: list[Node], service: str) -> Iterator[list[TaskLister]]:
    """One lister of the service's tasks (desired running or ready) per manager, each with a
    client of its own (the sampler's thread shares none with the test)."""
    clients = [
        docker.APIClient(base_url=m.socket, version="1.41", timeout=LIST_TIMEOUT) for m in managers
    ]
    filters = {"service": service, "desired-state": ["running", "ready"]}

    def lister(client: docker.APIClient) -> TaskLister:
        return lambda: list(client.tasks(filters=filters))

    try:
        yield [lister(c) for c in clients]
    finally:
        for client in clients:
            client.close()


@dataclasses.dataclass(frozen=True)
class Sample:
    """One answer of the manager: at `t`, task id -> (desired state, state, node id); or the
    error it gave (`tasks` empty then)."""

    t: float
    tasks: dict[str, tuple[str, str, str]]
    error: str | None = None

    @property
    def running(self) -> frozenset[str]:
        """Tasks desired running and running: what the bridge must have in the bucket."""
        return frozenset(
            tid
            for tid, (desired, state, _) in self.tasks.items()
            if desired == "running" and state == "running"
        )


class TaskSampler:
    """Samples a manager's task list in a thread while open (a context manager)."""

    def __init__(self, listers: list[TaskLister], interval: float = 0.05) -> None:
        self._listers = listers
        self.interval = interval
        self.samples: list[Sample] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="task-sampler", daemon=True)
        self._current = 0

    def __enter__(self) -> TaskSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=30)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.samples.append(self._sample())
            self._stop.wait(self.interval)

    def _sample(self) -> Sample:
        # One manager at a time, the next one when it fails (as the bridge must).
        errors = []
        for offset in range(len(self._listers)):
            index = (self._current + offset) % len(self._listers)
            try:
                tasks = self._listers[index]()
            except (docker.errors.DockerException, requests.RequestException, OSError) as exc:
                errors.append(f"manager {index + 1}: {exc}")
                continue
            self._current = index
            return Sample(
                time.monotonic(),
                {
                    t["ID"]: (t["DesiredState"], t["Status"]["State"], t.get("NodeID", ""))
                    for t in tasks
                },
            )
        return Sample(time.monotonic(), {}, "; ".join(errors))

    def wait_for(self, predicate: Callable[[Sample], bool], timeout: float, what: str) -> Sample:
        """Block until a new sample satisfies `predicate`; that sample."""
        seen = len(self.samples)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for sample in self.samples[seen:]:
                if predicate(sample):
                    return sample
            seen = len(self.samples)
            time.sleep(self.interval / 2)
        raise AssertionError(f"timed out after {timeout:g}s waiting for the task list: {what}")

    def first(self, predicate: Callable[[Sample], bool], after: float = 0.0) -> Sample | None:
        """The first sample at or after `after` (monotonic) that satisfies `predicate`."""
        return next((s for s in self.samples if s.t >= after and predicate(s)), None)

    def changes(self) -> Iterator[tuple[float, frozenset[str], frozenset[str]]]:
        """(t, joined, left) for every sample whose running set differs from the previous
        good sample's; failed samples are skipped (they show nothing)."""
        previous: frozenset[str] | None = None
        for sample in self.samples:
            if sample.error is not None:
                continue
            now = sample.running
            if previous is not None and now != previous:
                yield sample.t, now - previous, previous - now
            previous = now


class BucketTimeline:
    """Every put and delete of the bucket's keys, with the time it was seen here."""

    def __init__(self) -> None:
        self.events: list[tuple[float, str, bool]] = []  # (t, key, present)
        self.ready = asyncio.Event()
        self._changed = asyncio.Event()

    async def run(self, kv: KeyValue) -> None:
        watcher = await kv.watchall()
        try:
            async for entry in watcher:
                if entry is None:  # the current values are all in
                    self.ready.set()
                    continue
                self.events.append((time.monotonic(), entry.key, entry.operation is None))
                self._changed.set()
        finally:
            await watcher.stop()  # type: ignore[no-untyped-call]

    def keys_at(self, t: float) -> frozenset[str]:
        """The keys present at monotonic time `t`."""
        present: dict[str, bool] = {}
        for at, key, there in self.events:
            if at > t:
                break
            present[key] = there
        return frozenset(k for k, there in present.items() if there)

    @property
    def keys(self) -> frozenset[str]:
        return self.keys_at(float("inf"))

    def when(self, key: str, present: bool, after: float) -> float | None:
        """The first time at or after `after` the key was seen put (present) or deleted, or
        None; a key already in that state at `after` counts from `after`."""
        if (key in self.keys_at(after)) == present:
            return after
        times = [at for at, k, there in self.events if k == key and there == present]
        index = bisect.bisect_left(times, after)
        return times[index] if index < len(times) else None

    async def wait_for(self, predicate: Callable[[frozenset[str]], bool], timeout: float) -> None:
        async with asyncio.timeout(timeout):
            while not predicate(self.keys):
                self._changed.clear()
                await self._changed.wait()


@contextlib.asynccontextmanager
async def watching_bucket(kv: KeyValue) -> AsyncIterator[BucketTimeline]:
    """A BucketTimeline following `kv`, once its current values are in."""
    timeline = BucketTimeline()
    task = asyncio.create_task(timeline.run(kv))
    try:
        async with asyncio.timeout(30):
            await timeline.ready.wait()
        yield timeline
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


@dataclasses.dataclass(frozen=True)
class Lag:
    """A task joined (or left) the manager's running list at `listed`; the bucket followed at
    `bucket` (None: not within the window)."""

    task_id: str
    joined: bool
    listed: float
    bucket: float | None

    @property
    def seconds(self) -> float | None:
        return None if self.bucket is None else max(0.0, self.bucket - self.listed)


def lags(sampler: TaskSampler, bucket: BucketTimeline, since: float = 0.0) -> list[Lag]:
    """For each change of the manager's running list after `since`: when the bucket followed."""
    return [
        Lag(task_id, joined, t, bucket.when(task_id, joined, t))
        for t, joined_set, left_set in sampler.changes()
        if t >= since
        for joined, ids in ((True, joined_set), (False, left_set))
        for task_id in sorted(ids)
    ]


def missing(sampler: TaskSampler, bucket: BucketTimeline, since: float = 0.0) -> dict[str, float]:
    """task id -> the longest time (s) the manager's list showed it running while the bucket
    did not have it, over the samples after `since`."""
    longest: dict[str, float] = {}
    began: dict[str, float] = {}
    for sample in sampler.samples:
        if sample.t < since or sample.error is not None:
            continue
        absent = sample.running - bucket.keys_at(sample.t)
        for tid in absent:
            began.setdefault(tid, sample.t)
            longest[tid] = max(longest.get(tid, 0.0), sample.t - began[tid])
        for tid in list(began):
            if tid not in absent:
                del began[tid]
    return longest


def divergence(
    sampler: TaskSampler, bucket: BucketTimeline, since: float = 0.0
) -> tuple[float, int, int]:
    """Over the samples after `since`: how long (s, summed over sample periods) the bucket's
    keys were not the list's running tasks, the largest difference (agents missing plus
    agents extra), and how many the list had running at that moment."""
    total, worst, listed = 0.0, 0, 0
    previous: float | None = None
    for sample in sampler.samples:
        if sample.t < since or sample.error is not None:
            continue
        keys = bucket.keys_at(sample.t)
        off = len(sample.running ^ keys)
        if off and previous is not None:
            total += sample.t - previous
        if off > worst:
            worst, listed = off, len(sample.running)
        previous = sample.t
    return total, worst, listed
