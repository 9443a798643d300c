"""The agents bucket: kept equal to the roster, one KV write per changed agent.

What is confirmed in the bucket (`published`) is only updated on the server's answer. Writes
are fenced and conditional: before each batch the leader lease is confirmed, and each write
names the revision it expects the key to have, so a bridge that lost the lease (paused, cut
off) cannot overwrite a newer record. A failed write is retried with backoff by `run()`, which
also checks the bucket every AUDIT_INTERVAL seconds: a lost bucket is created again and refilled
from the roster, a write by anyone else makes the bridge re-read the bucket and repair it.
Each write is followed by an announcement on `<prefix>.agents.announce`.
"""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import Awaitable, Callable, Iterable, Mapping
from collections.abc import Set as AbstractSet

import msgspec
import nats.errors
import structlog
from nats.aio.client import Client as NATS

from bridge.bus.agents_bucket import AgentsBucket, read_bucket
from bridge.contract.buckets import PURGE_MARKER_TTL, agents_bucket
from bridge.contract.messages import Agent, AnnounceEvent, Announcement, encode, now_rfc3339
from bridge.contract.names import Names
from bridge.edges.kv import BucketConfig, Write, bucket_config, open_bucket
from bridge.errors import (
    LeaseLostError,
    NatsError,
)
from bridge.ops.metrics import Metrics
from bridge.waits import wait_event

# open_bucket, read_bucket: kept importable from here for tooling written against the
# earlier layout.
__all__ = ["AgentRegistry", "SyncResult", "open_bucket", "read_bucket"]

log = structlog.get_logger(__name__)

# How long one batch waits for the server's answers before retrying the rest: a couple of
# seconds (a stream leader election in a cluster is better met by a quick retry), more for
# a large batch (10,000 writes are answered in well under a second on one server).
ACK_TIMEOUT = 10.0
ACK_TIMEOUT_MIN = 2.0
# How often the leader checks that nobody else wrote the bucket, and that it still exists.
AUDIT_INTERVAL = 2.0
# Retries of failed writes: the first soon, then doubling up to the cap.
RETRY_FIRST, RETRY_MAX = 0.2, 2.0

Fence = Callable[[], Awaitable[None]]


async def _no_fence() -> None:
    return None


@dataclasses.dataclass(frozen=True)
class SyncResult:
    joined: int = 0
    updated: int = 0
    left: int = 0
    failed: int = 0

    @property
    def writes(self) -> int:
        return self.joined + self.updated + self.left


class AgentRegistry:
    """Writes the roster into the agents bucket and announces each change.

    `fence()` raises LeaseLostError when this bridge may not write (default: always may).
    `problem` says why the bucket cannot be written now (a refused setting or write), or None.
    """

    def __init__(
        self,
        nc: NATS,
        names: Names,
        *,
        replicas: int = 1,
        metrics: Metrics | None = None,
        fence: Fence = _no_fence,
        marker_ttl: int = PURGE_MARKER_TTL,
        bus_ids: Callable[[Iterable[Agent]], AbstractSet[str]] = lambda _a: frozenset(),
    ) -> None:
        self._nc = nc
        self._marker_ttl = marker_ttl
        self._names = names
        self._metrics = metrics
        self._fence = fence
        self.spec = agents_bucket(names, replicas=replicas)
        self._lock = asyncio.Lock()
        self._view = AgentsBucket(nc, self.spec)
        self._desired: dict[str, Agent] = {}
        self._retry = asyncio.Event()
        # Which agents are on the bus (Presence.bus_ids); nobody is, without it.
        self._bus_ids = bus_ids
        # The record last made from each desired agent: (that Agent object, on_bus, record).
        # Discovery hands back the same Agent object for a task that did not change, so a
        # quiet round finds every record here by identity instead of rebuilding and comparing
        # 10,000 of them.
        self._made: dict[str, tuple[Agent, bool, Agent]] = {}

    @property
    def published(self) -> Mapping[str, Agent]:
        """The records this bridge believes the bucket holds, by key (read-only: the
        bucket's state has one writer, bridge/bus/agents_bucket.py)."""
        return self._view.published

    @property
    def version(self) -> tuple[int, int]:
        """Changes whenever `published` may have: a new belief (read afresh) or a write."""
        return id(self._view.published), self._view.last_seq

    @property
    def desired(self) -> Mapping[str, Agent]:
        """The agents discovery last handed over (the roster; read-only), whatever the
        bucket holds at the moment (it may be lost and being written again)."""
        return self._desired

    @property
    def problem(self) -> str | None:
        """Why the bucket cannot be written now (a refused setting or write), or None."""
        return self._view.problem

    def bucket_config(self) -> BucketConfig:
        """nats-py's KeyValueConfig of the bucket (for tooling that creates it)."""
        return bucket_config(self.spec)

    async def open(self) -> dict[str, Agent]:
        """Open (or create) the bucket and read what it holds: the bridge resumes from it.
        A bucket whose settings would lose records is not used (see `problem`)."""
        async with self._lock:
            # Always read: another leader may have written since this bridge last led.
            await self._view.load(reread=True)
            self._made = {}  # records made against what the bucket held before
        return dict(self.published)

    def _record(self, agent: Agent, on_bus: bool, now: str) -> Agent:
        previous = self.published.get(agent.id)
        first_seen = (
            previous.first_seen if previous and previous.first_seen else (agent.first_seen or now)
        )
        return msgspec.structs.replace(agent, on_bus=on_bus, first_seen=first_seen)

    async def sync(self, desired: Mapping[str, Agent] | None = None) -> SyncResult:
        """Make the bucket equal to `desired` (default: the last desired set, e.g. after a
        reconnect or a presence change). Unchanged agents cost nothing. Failed writes are
        counted in the result and retried by `run()`."""
        async with self._lock:
            if desired is not None:
                self._desired = dict(desired)
            if not self._nc.is_connected:
                # Nothing would be answered; the reconnect triggers a sync, and run()
                # retries meanwhile.
                self._retry.set()
                return SyncResult(failed=1)
            view = self._view
            try:
                if view.reconnected:
                    await view.check_after_reconnect()
                if view.bucket is None and not await view.load():
                    return SyncResult(failed=1)
                result = await self._sync_once()
                if view.bucket is None:  # the bucket was lost under the batch: refill it
                    await view.load()
                    result = await self._sync_once()
            except NatsError as exc:
                log.warning("kv_sync_failed", bucket=self.spec.name, error=str(exc))
                self._retry.set()
                return SyncResult(failed=1)
            if result.failed:
                self._retry.set()
            if self._metrics is not None:
                self._metrics.set_agents(self.published.values())
            return result

    def _plan(self) -> list[tuple[Agent | None, Agent | None, str]]:
        """The writes that make the bucket equal to the desired set:
        (what is published, the new record or None for a delete, key)."""
        plan: list[tuple[Agent | None, Agent | None, str]] = []
        bus = self._bus_ids(self._desired.values())
        now = now_rfc3339()  # agents first seen in this sync share its time
        published, made = self.published, self._made
        for agent_id, agent in self._desired.items():
            on_bus = agent_id in bus
            entry = made.get(agent_id)
            if entry is None or entry[0] is not agent or entry[1] != on_bus:
                entry = made[agent_id] = (agent, on_bus, self._record(agent, on_bus, now))
            record, previous = entry[2], published.get(agent_id)
            if record is previous:
                continue
            if record == previous:
                self._view.adopt(agent_id, record)
            else:
                plan.append((previous, record, agent_id))
        if len(made) > len(self._desired):
            for agent_id in made.keys() - self._desired.keys():
                del made[agent_id]
        # A set difference: at 10,000 agents, looking each key up in Python costs more.
        for key in sorted(published.keys() - self._desired.keys()):
            plan.append((published[key], None, key))
        plan += [(None, None, key) for key in sorted(self._view.invalid - self._desired.keys())]
        return plan

    async def _sync_once(self) -> SyncResult:
        plan = self._plan()
        if not plan:
            return SyncResult()
        try:
            await self._fence()
        except LeaseLostError as exc:
            log.warning("kv_write_fenced", bucket=self.spec.name, writes=len(plan), reason=str(exc))
            return SyncResult(failed=len(plan))
        bucket, revisions = self._view.bucket, self._view.revisions
        assert bucket is not None
        purge_ttl = self._marker_ttl if bucket.msg_ttl else None
        writes = [
            Write(
                key,
                None if record is None else encode(record),
                expect=revisions.get(key, 0),
                purge_ttl=purge_ttl,
            )
            for _previous, record, key in plan
        ]
        timeout = min(ACK_TIMEOUT, ACK_TIMEOUT_MIN + len(writes) / 1000)
        results = await bucket.write_batch(writes, timeout)
        return await self._apply(plan, results)

    async def _apply(
        self, plan: list[tuple[Agent | None, Agent | None, str]], results: list[int | NatsError]
    ) -> SyncResult:
        joined = updated = left = 0
        failures: list[tuple[str, NatsError]] = []
        at = now_rfc3339()  # one timestamp per batch: one per agent shows at 10,000
        for (previous, record, key), result in zip(plan, results, strict=True):
            if isinstance(result, NatsError):
                failures.append((key, result))
                self._count_write(record is None, ok=False)
                continue
            self._count_write(record is None, ok=True)
            self._view.written(key, result, record)
            if record is None:
                if previous is not None:
                    left += 1
                    await self._announce("left", previous, at)
            else:
                event: AnnounceEvent = "joined" if previous is None else "updated"
                joined += event == "joined"
                updated += event == "updated"
                await self._announce(event, record, at)
        await self._view.settle(failures)
        return SyncResult(joined=joined, updated=updated, left=left, failed=len(failures))

    async def run(self) -> None:
        """While leading: retry failed writes with backoff, and check the bucket every
        AUDIT_INTERVAL seconds (lost, refused settings fixed, written by someone else)."""
        delay = RETRY_FIRST
        while True:
            retry = await self._wait(AUDIT_INTERVAL)
            if retry:
                await asyncio.sleep(delay)
                delay = min(delay * 2, RETRY_MAX)
                await self.sync()
                continue
            delay = RETRY_FIRST
            if await self._audit():
                await self.sync()

    async def _wait(self, timeout: float) -> bool:
        if not await wait_event(self._retry, timeout):
            return False
        self._retry.clear()
        return True

    async def _audit(self) -> bool:
        """True when the bucket was read afresh and must be synced again."""
        if not self._nc.is_connected:
            return False
        async with self._lock:
            return await self._view.audit()

    def _count_write(self, delete: bool, *, ok: bool) -> None:
        if self._metrics is not None:
            self._metrics.kv_writes.labels(
                op="delete" if delete else "put", outcome="ok" if ok else "error"
            ).inc()

    async def _announce(self, event: AnnounceEvent, agent: Agent, at: str) -> None:
        if self._metrics is not None:
            self._metrics.changes.labels(event=event).inc()
        message = Announcement(event=event, agent=agent, at=at)
        try:
            await self._nc.publish(self._names.announce, encode(message))
        except (nats.errors.Error, OSError) as exc:
            # The bucket is the record; an announcement lost to a disconnection is not retried.
            log.warning("announce_failed", event=event, agent_id=agent.id, error=repr(exc))
