"""The agents bucket: kept equal to the roster, one KV write per changed agent.

What is confirmed in the bucket (`published`) is only updated on the server's ack, so a write
lost to a disconnection stays pending and goes out again on the next sync (every reconnect
triggers one). Each write is followed by an announcement on `<prefix>.agents.announce`.
"""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import Callable, Iterable, Mapping
from collections.abc import Set as AbstractSet

import msgspec
import nats.errors
import nats.js.errors
import structlog
from nats.aio.client import Client as NATS
from nats.js import JetStreamContext
from nats.js.api import KeyValueConfig, PubAck, StorageType
from nats.js.kv import KV_DEL, KV_OP, KeyValue

from bridge.errors import NatsError
from bridge.metrics import Metrics
from bridge.models import AGENT_DECODER, Agent, AnnounceEvent, Announcement, encode, now_rfc3339
from bridge.subjects import Names

__all__ = ["AgentRegistry", "SyncResult", "open_bucket", "read_bucket"]

log = structlog.get_logger(__name__)

# How long one sync waits for the server's acks before leaving the rest for the next sync.
ACK_TIMEOUT = 10.0
# How long reading a whole bucket may take (10,000 agents take well under a second).
READ_TIMEOUT = 30.0


@dataclasses.dataclass(frozen=True)
class SyncResult:
    joined: int = 0
    updated: int = 0
    left: int = 0
    failed: int = 0

    @property
    def writes(self) -> int:
        return self.joined + self.updated + self.left


async def open_bucket(js: JetStreamContext, config: KeyValueConfig) -> KeyValue:
    """Bind to the bucket, creating it when missing; an existing one is used as configured.

    A bucket made by an operator (other history, replicas, ...) is never re-created: nats-py
    cannot update a bucket, and deleting one would lose its data.
    """
    assert config.bucket is not None
    try:
        kv = await js.key_value(config.bucket)
    except nats.js.errors.BucketNotFoundError:
        try:
            kv = await js.create_key_value(config)
        except nats.js.errors.Error as exc:
            raise NatsError(f"cannot create KV bucket {config.bucket!r}: {exc}; check that "
                            "JetStream is enabled and the user may create it") from exc
        log.info("kv_bucket_created", bucket=config.bucket, history=config.history,
                 replicas=config.replicas)
        return kv
    except (nats.errors.Error, nats.js.errors.Error) as exc:
        raise NatsError(f"cannot open KV bucket {config.bucket!r}: {exc}; check that JetStream "
                        "is enabled and the user's permissions") from exc
    status = await kv.status()
    replicas = status.stream_info.config.num_replicas
    if (status.history, replicas) != (config.history, config.replicas):
        log.warning("kv_bucket_settings_differ", bucket=config.bucket,
                    history=status.history, replicas=replicas,
                    expected_history=config.history, expected_replicas=config.replicas,
                    action="kept as it is")
    return kv


async def read_bucket(kv: KeyValue, *, timeout: float = READ_TIMEOUT,
                      ) -> tuple[dict[str, Agent], set[str]]:
    """The agents a bucket holds now, and the keys whose value is not an Agent.

    nats-py's watcher can report "no more current values" before the first one when the
    consumer is created under load; a bucket that holds messages is therefore read until the
    entry with nothing pending after it, never trusted to be empty on that early marker.
    """
    agents: dict[str, Agent] = {}
    invalid: set[str] = set()
    holding = (await kv.status()).values
    seen = False
    watcher = await kv.watchall()
    try:
        async with asyncio.timeout(timeout):
            while True:
                # timeout=None: the enclosing asyncio.timeout bounds it, and nats-py's own
                # wait_for can lose a cancellation (Python 3.11).
                entry = await watcher.updates(timeout=None)  # type: ignore[no-untyped-call]
                if entry is None:
                    if holding == 0 or seen:
                        break
                    continue  # the early marker: the values are still on their way
                seen = True
                if entry.operation is None and entry.value:
                    try:
                        agents[entry.key] = AGENT_DECODER.decode(entry.value)
                    except msgspec.DecodeError:
                        invalid.add(entry.key)
                if not entry.delta:
                    break
    except TimeoutError:
        raise NatsError(f"reading a KV bucket took longer than {timeout:g}s; is the NATS "
                        "server overloaded?") from None
    finally:
        await watcher.stop()  # type: ignore[no-untyped-call]
    return agents, invalid


def _write_error(future: asyncio.Future[PubAck]) -> BaseException | None:
    """Why a KV write was not confirmed (None: it was); an unacked write is given up on."""
    if not future.done():
        future.cancel()
        return TimeoutError(f"no ack within {ACK_TIMEOUT:g}s")
    if future.cancelled():
        return asyncio.CancelledError("the write was cancelled")
    error = future.exception()
    if error is None or isinstance(error, nats.errors.Error | nats.js.errors.Error):
        return error
    raise error


class AgentRegistry:
    """Writes the roster into the agents bucket and announces each change."""

    def __init__(self, nc: NATS, names: Names, *, replicas: int = 1,
                 metrics: Metrics | None = None) -> None:
        self._nc = nc
        self._js = nc.jetstream()
        self._names = names
        self._replicas = replicas
        self._metrics = metrics
        self._lock = asyncio.Lock()
        self._prefix = f"$KV.{names.agents_bucket}."
        self._desired: dict[str, Agent] = {}
        self._invalid: set[str] = set()
        # Which agents are on the bus: set by presence; nobody is, without it.
        self.bus_ids: Callable[[Iterable[Agent]], AbstractSet[str]] = lambda _a: frozenset()
        self.published: dict[str, Agent] = {}
        # The record last made from each desired agent: (that Agent object, on_bus, record).
        # Discovery hands back the same Agent object for a task that did not change, so a
        # quiet round finds every record here by identity instead of rebuilding and comparing
        # 10,000 of them.
        self._made: dict[str, tuple[Agent, bool, Agent]] = {}

    def bucket_config(self) -> KeyValueConfig:
        return KeyValueConfig(bucket=self._names.agents_bucket, history=1,
                              storage=StorageType.FILE, replicas=self._replicas,
                              description="chorus-bridge: agents found by discovery")

    async def open(self) -> dict[str, Agent]:
        """Open (or create) the bucket and read what it holds: the bridge resumes from it."""
        kv = await open_bucket(self._js, self.bucket_config())
        self.published, self._invalid = await read_bucket(kv)
        self._made = {}  # records made against what the bucket held before
        if self._invalid:
            log.warning("kv_invalid_entries", bucket=self._names.agents_bucket,
                        keys=len(self._invalid), action="deleted at the first sync")
        log.info("kv_bucket_loaded", bucket=self._names.agents_bucket,
                 agents=len(self.published))
        return dict(self.published)

    def _record(self, agent: Agent, on_bus: bool, now: str) -> Agent:
        previous = self.published.get(agent.id)
        first_seen = previous.first_seen if previous and previous.first_seen else (
            agent.first_seen or now)
        return msgspec.structs.replace(agent, on_bus=on_bus, first_seen=first_seen)

    async def sync(self, desired: Mapping[str, Agent] | None = None) -> SyncResult:
        """Make the bucket equal to `desired` (default: the last desired set, e.g. after a
        reconnect or a presence change). Unchanged agents cost nothing."""
        async with self._lock:
            if desired is not None:
                self._desired = dict(desired)
            puts: list[tuple[Agent | None, Agent]] = []
            bus = self.bus_ids(self._desired.values())
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
                    # Equal but another object (read from the bucket at start): keep ours,
                    # so that the next diff of this agent is by identity.
                    published[agent_id] = record
                else:
                    puts.append((previous, record))
            if len(made) > len(self._desired):
                # Only agents still desired keep an entry: one that left and comes back gets
                # a record made afresh against what the bucket holds then.
                for agent_id in made.keys() - self._desired.keys():
                    del made[agent_id]
            # A set difference: at 10,000 agents, looking each key up in Python costs more.
            gone = [published[key] for key in sorted(published.keys() - self._desired.keys())]
            if not puts and not gone and not self._invalid:
                return SyncResult()
            if not self._nc.is_connected:
                # Nothing would be acked: keep it all pending; the reconnect triggers a sync.
                return SyncResult(failed=len(puts) + len(gone))
            result = await self._write(puts, gone)
            if self._metrics is not None:
                self._metrics.set_agents(self.published.values())
            return result

    async def _write(self, puts: list[tuple[Agent | None, Agent]], gone: list[Agent],
                     ) -> SyncResult:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + ACK_TIMEOUT
        pending: list[tuple[Agent | None, Agent, bool, asyncio.Future[PubAck]]] = []
        stalled = False
        del_header = {KV_OP: KV_DEL}
        ops = [(prev, rec, False) for prev, rec in puts] + [(a, a, True) for a in gone]
        ops += [(None, Agent(id=k, endpoint="", address="", port=0, source="dns"), True)
                for k in sorted(self._invalid)]
        # One deadline for the whole batch, not a wait_stall per message: a per-message timeout
        # makes nats-py yield to the loop after every publish, and then each message goes out
        # in a send() of its own (three times slower at 10,000 agents).
        try:
            async with asyncio.timeout_at(deadline):
                for previous, record, delete in ops:
                    future = await self._js.publish_async(
                        self._prefix + record.id, b"" if delete else encode(record),
                        headers=del_header if delete else None)
                    pending.append((previous, record, delete, future))
        except (TimeoutError, nats.errors.Error, nats.js.errors.Error, OSError) as exc:
            stalled = True
            log.warning("kv_write_stalled", error=repr(exc), left_for_next_sync=True)
        if pending:
            # All acks at once: awaiting each with its own timeout costs a loop turn per ack.
            await asyncio.wait([p[3] for p in pending],
                               timeout=max(0.0, deadline - loop.time()))
        joined = updated = left = failed = 0
        # One timestamp per batch: formatting one per agent shows at 10,000 agents.
        at = now_rfc3339()
        for previous, record, delete, future in pending:
            error = _write_error(future)
            if error is not None:
                failed += 1
                self._count_write(delete, ok=False)
                if failed == 1:
                    log.warning("kv_write_failed", key=record.id, error=repr(error),
                                left_for_next_sync=True)
                continue
            self._count_write(delete, ok=True)
            if record.id in self._invalid:
                self._invalid.discard(record.id)
                continue
            if delete:
                self.published.pop(record.id, None)
                left += 1
                await self._announce("left", record, at)
            else:
                self.published[record.id] = record
                event: AnnounceEvent = "joined" if previous is None else "updated"
                joined += event == "joined"
                updated += event == "updated"
                await self._announce(event, record, at)
        failed += len(ops) - len(pending) if stalled else 0
        return SyncResult(joined=joined, updated=updated, left=left, failed=failed)

    def _count_write(self, delete: bool, *, ok: bool) -> None:
        if self._metrics is not None:
            self._metrics.kv_writes.labels(op="delete" if delete else "put",
                                           outcome="ok" if ok else "error").inc()

    async def _announce(self, event: AnnounceEvent, agent: Agent, at: str) -> None:
        if self._metrics is not None:
            self._metrics.changes.labels(event=event).inc()
        message = Announcement(event=event, agent=agent, at=at)
        try:
            await self._nc.publish(self._names.announce, encode(message))
        except (nats.errors.Error, OSError) as exc:
            # The bucket is the record; an announcement lost to a disconnection is not retried.
            log.warning("announce_failed", event=event, agent_id=agent.id, error=repr(exc))
