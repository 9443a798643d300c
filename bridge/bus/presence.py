"""Presence: which agents are on the bus, followed through a watch of the presence bucket.

Agents that speak NATS keep an entry under their own id, refreshed at least every 5 s; the
bucket has a 15 s TTL with limit markers, so an entry that stops being refreshed expires and
the watch sees it go. The bridge also treats an entry it has not received for 15 s as absent
by itself, in case no marker arrives.

Matching rules (DESIGN.md, "The bus" and "Trust"):
- by key only: an entry's key is the id of the agent it is about. The `task_id`, `endpoint`
  and `agent_id` written inside are the agent's own words, kept as information: they never
  make an entry count for another agent, and never give the bridge an address to call;
- freshness on the bridge's own monotonic clock, from when the bridge received the entry: the
  server's timestamp is never compared with the bridge's clock (they may disagree by minutes).
"""

from __future__ import annotations

import asyncio
import dataclasses
import time
from collections.abc import Callable, Iterable

import msgspec
import structlog
from nats.aio.client import Client as NATS

from bridge.contract.agent_id import is_agent_id
from bridge.contract.buckets import PRESENCE_TTL, BucketSpec, presence_bucket
from bridge.contract.messages import PRESENCE_DECODER, Agent, PresenceEntry
from bridge.contract.names import Names
from bridge.edges.kv import Bucket, BucketConfig, bucket_config, ensure_bucket
from bridge.errors import BucketSettingsError, NatsError
from bridge.ops.health import Trouble
from bridge.waits import raise_if_cancelled

__all__ = ["PRESENCE_TTL", "Presence", "match_presence"]

log = structlog.get_logger(__name__)

# How often entries that went stale without a delete are looked for.
SWEEP_INTERVAL = 1.0
# Seconds between checks that the bucket's stream still exists. nats-py's watch does not end
# when its stream is deleted (an operator's `nats kv del`): it only reports "stream not found"
# to the error callback and waits for good. Entries stay fresh for the TTL (15 s), so a bucket
# found gone and made again within this is no change of who is on the bus.
STREAM_CHECK_INTERVAL = 2.0
# A key is an agent id, and an agent id goes into subjects (its acks and claims): one token.
# Invalid entries are said at most once per this many seconds, with their count: any agent
# may write thousands, and a line each would flood the log.
INVALID_LOG_INTERVAL = 60.0


@dataclasses.dataclass(frozen=True)
class Matched:
    """Present ids split into discovered agents on the bus, and ids on the bus only."""

    on_bus: frozenset[str]
    bus_only: tuple[str, ...]


def match_presence(agents: Iterable[Agent], present: Iterable[str]) -> Matched:
    """Match present ids (presence keys) to agents by id, and by nothing else."""
    present = list(present)
    if not present:  # nobody on the bus: no need to index thousands of agents
        return Matched(on_bus=frozenset(), bus_only=())
    ids = {a.id for a in agents}
    return Matched(
        on_bus=frozenset(k for k in present if k in ids),
        bus_only=tuple(sorted(k for k in present if k not in ids)),
    )


class Presence:
    """The live presence entries, kept current by a watch; `on_change()` is called (on the
    event loop) whenever the set of live entries changes."""

    def __init__(
        self,
        nc: NATS,
        names: Names,
        *,
        replicas: int = 1,
        ttl: float = PRESENCE_TTL,
        on_change: Callable[[], None] = lambda: None,
    ) -> None:
        self._nc = nc
        self._names = names
        self._replicas = replicas
        self._ttl = ttl
        # key -> (entry, time.monotonic() when the bridge received it)
        self._seen: dict[str, tuple[PresenceEntry, float]] = {}
        self._changed = on_change
        self._invalid = _InvalidEntries()
        # Agents whose last connection the server saw close (`depart`), by when: writes that
        # arrive for them before a connection of theirs is seen again are held, not applied
        # (a write sent just before a kill -9 can arrive after the advisory of its close).
        self._departed: dict[str, float] = {}
        self._held: dict[str, tuple[PresenceEntry, float]] = {}
        # Counts the changes of who is on the bus and of what their entries say (the roster
        # is built again only when it moved).
        self.version = 0
        # Set once the watch has given every entry the bucket held when it began: before,
        # an agent on the bus may not be known yet (the councils wait for it).
        self.loaded = asyncio.Event()
        # Why the bucket cannot be opened or watched now (the server's words), for /healthz.
        self.trouble = Trouble()

    def bucket_spec(self) -> BucketSpec:
        return presence_bucket(self._names, replicas=self._replicas, ttl=self._ttl)

    def bucket_config(self) -> BucketConfig:
        """nats-py's KeyValueConfig of the bucket (for tooling that creates it)."""
        return bucket_config(self.bucket_spec())

    async def open(self) -> Bucket:
        """Open (or create) the presence bucket. Raises NatsError."""
        try:
            return await ensure_bucket(self._nc, self.bucket_spec())
        except BucketSettingsError:
            raise
        except NatsError as exc:
            raise NatsError(
                f"cannot open the presence bucket {self._names.presence_bucket!r}: "
                f"{exc} (limit markers need nats-server 2.11 or later)"
            ) from exc

    def entries(self) -> dict[str, PresenceEntry]:
        """Entries received within the TTL, by key (the agent id)."""
        now = time.monotonic()
        return {key: e for key, (e, seen) in self._seen.items() if now - seen < self._ttl}

    def present_ids(self) -> frozenset[str]:
        """Keys of the entries received within the TTL: the agents on the bus."""
        now = time.monotonic()
        return frozenset(key for key, (_, seen) in self._seen.items() if now - seen < self._ttl)

    def is_present(self, key: str) -> bool:
        """Whether a live entry sits under `key` (received within the TTL)."""
        seen = self._seen.get(key)
        return seen is not None and time.monotonic() - seen[1] < self._ttl

    def match(self, agents: Iterable[Agent]) -> Matched:
        return match_presence(agents, self.present_ids())

    def bus_ids(self, agents: Iterable[Agent]) -> frozenset[str]:
        """Ids of the agents that are on the bus now."""
        return self.match(agents).on_bus

    async def run(self) -> None:
        """Follow the bucket until cancelled. The bucket is ensured again and the watch
        started again after a failure (a lost bucket, a NATS restart) and after every
        reconnect, since a watch of a bucket the server lost would wait for good."""
        lost = False
        while True:
            raise_if_cancelled()  # a stop some NATS call swallowed (bridge/waits.py)
            try:
                bucket = await self.open()
                self.trouble.clear()
                if lost:
                    log.info("presence_watch_restored", bucket=bucket.name)
                    lost = False
                await self._follow(bucket)
            except NatsError as exc:
                if not lost:
                    log.warning("presence_watch_lost", error=str(exc), retry_in_s=1)
                lost = True
                self.trouble.set(str(exc))
                await asyncio.sleep(1.0)

    async def _follow(self, bucket: Bucket) -> None:
        """Apply the watch's entries until the connection reconnects (then return), or the
        bucket is found gone (BucketMissingError): a watch does not see its stream go."""
        reconnects = self._nc.stats["reconnects"]
        loop = asyncio.get_running_loop()
        next_sweep = loop.time() + SWEEP_INTERVAL
        next_check = loop.time() + STREAM_CHECK_INTERVAL
        async with bucket.watch() as watcher:
            while self._nc.stats["reconnects"] == reconnects:
                raise_if_cancelled()  # a swallowed stop, which the timeout hides (bridge/waits.py)
                try:
                    async with asyncio.timeout_at(next_sweep):
                        entry = await watcher.next()
                except TimeoutError:
                    entry = None
                if entry is not None:
                    self._apply(entry.key, entry.value, entry.operation)
                if watcher.current_done and not self.loaded.is_set():
                    self.loaded.set()  # every entry the bucket held is in
                if loop.time() >= next_sweep:
                    # Stale entries are swept once a second: scanning them all on every
                    # update would cost O(n) per refresh with 10,000 agents on the bus.
                    self._expire()
                    next_sweep = loop.time() + SWEEP_INTERVAL
                if loop.time() >= next_check:
                    await bucket.check_stream()
                    next_check = loop.time() + STREAM_CHECK_INTERVAL

    def _change(self) -> None:
        self.version += 1
        self._changed()

    def depart(self, key: str) -> None:
        """The server saw agent `key`'s last connection close (bridge/bus/departures.py): it
        is off the bus now, not when its entry expires. It is back with a write made once a
        connection of its own is seen again (`connected`), or made after the TTL."""
        self._departed[key] = time.monotonic()
        self._held.pop(key, None)
        if self._seen.pop(key, None) is not None:
            log.info("agent_left_bus", agent_id=key, reason="disconnected")
            self._change()

    def connected(self, key: str) -> None:
        """The server admitted a connection of agent `key`: what it writes counts again, and a
        write held back since it departed counts from when it arrived."""
        if self._departed.pop(key, None) is None:
            return
        held = self._held.pop(key, None)
        if held is not None and time.monotonic() - held[1] < self._ttl:
            self._seen[key] = held
            log.info("agent_on_bus", agent_id=key, reason="reconnected")
            self._change()

    def _apply(self, key: str, value: bytes | None, operation: str | None) -> None:
        if operation is not None or not value:
            self._held.pop(key, None)
            if self._seen.pop(key, None) is not None:
                log.debug("agent_left_bus", agent_id=key, reason=operation or "empty")
                self._change()
            return
        if not is_agent_id(key):
            self._invalid.note(key, "the key cannot be an agent id (it could never ack)")
            return
        try:
            entry = PRESENCE_DECODER.decode(value)
        except msgspec.DecodeError as exc:
            self._invalid.note(key, str(exc))
            return
        # The server's TTL expires what was not refreshed; what arrives is fresh from now.
        if key in self._departed:
            self._held[key] = (entry, time.monotonic())
            return
        previous = self._seen.get(key)
        fresh = previous is None
        self._seen[key] = (entry, time.monotonic())
        if previous is not None and previous[0].roles != entry.roles:
            self.version += 1  # who is on the bus is the same: only the roster changes
        if fresh:
            log.debug("agent_on_bus", agent_id=key, task_id=entry.task_id)
            self._change()

    def _expire(self) -> None:
        now = time.monotonic()
        for key in [k for k, at in self._departed.items() if now - at >= self._ttl]:
            # No connection of its own seen within the TTL (an advisory lost): writes count
            # as they do without the advisories.
            del self._departed[key]
            self._held.pop(key, None)
        stale = [k for k, (_, seen) in self._seen.items() if now - seen >= self._ttl]
        for key in stale:
            del self._seen[key]
            log.debug("agent_left_bus", agent_id=key, reason="stale")
        if stale:
            self._change()


class _InvalidEntries:
    """Invalid presence entries, logged at most once per INVALID_LOG_INTERVAL with how many
    there were since the last line."""

    def __init__(self) -> None:
        self._count = 0
        self._logged_at = -INVALID_LOG_INTERVAL

    def note(self, key: str, reason: str) -> None:
        self._count += 1
        now = time.monotonic()
        if now - self._logged_at >= INVALID_LOG_INTERVAL:
            log.warning(
                "presence_entry_invalid", key=key[:128], reason=reason[:200], count=self._count
            )
            self._count, self._logged_at = 0, now
