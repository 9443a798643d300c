"""Leader election through one NATS KV key, so several bridges can run safely.

The lease is the key `leader` in the bucket `<prefix>_bridge`, whose messages expire after
LEASE seconds (the bucket's max age). A bridge becomes leader by creating the key (atomic: it
fails when the key holds a value), renews it every LEASE/5 with a write that expects its last
revision (which fails if anyone else wrote it meanwhile), and deletes it when it stops. When a
leader dies, its key expires within LEASE seconds and a standby, retrying every RETRY seconds,
takes over: at most LEASE + RETRY (12 s) after the last renewal. A bridge that finds the key
still naming itself (it stepped down for want of answers while its renewals still reached the
server) takes it again at once: nobody else holds it.

A renewal that fails for want of an answer (a NATS restart, a stream leader election in a
cluster, the server it went through killed) is sent again every RENEW_RETRY seconds, each
attempt waiting RENEW_ATTEMPT for its answer, until the lease would run out on this bridge's
own clock, less a margin; only then does the leader step down. A renewal that was stored but
whose answer was lost leaves the key naming this bridge at a revision it does not know: the
next renewal, and the fence, take that revision as theirs (only this bridge writes its name).
A bucket lost with the server is created again and the lease taken again at once when nobody
else took it. `confirm()` is the fence the registry calls before each write batch: a bridge
that was paused past its lease finds out there.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import uuid

import msgspec
import structlog
from nats.aio.client import Client as NATS

from bridge.contract.buckets import LEADER_KEY, LEASE, lease_bucket
from bridge.contract.messages import LEASE_DECODER, Lease, now_rfc3339
from bridge.contract.names import Names
from bridge.edges.kv import Bucket, BucketConfig, Entry, Write, bucket_config, ensure_bucket
from bridge.errors import BucketMissingError, LeaseLostError, NatsError, WrongRevisionError
from bridge.ops.health import Trouble
from bridge.ops.metrics import Metrics
from bridge.waits import raise_if_cancelled

__all__ = ["LEASE", "LeaderElection"]

log = structlog.get_logger(__name__)

RETRY = 2.0
# Renewals per lease. A failed renewal is retried every RENEW_RETRY seconds until the lease is
# MARGIN seconds from running out: with a 10 s lease that leaves 7.5 s, which covers most
# stream leader elections in a cluster (nats-server followers wait 4 to 9 s to campaign).
RENEWALS = 5
RENEW_RETRY = 0.5
MARGIN = 0.5
# How long one renewal waits for its answer before it is sent again: an answer lost with the
# server the write went through (killed, in a cluster) must not hold the lease until it ends.
RENEW_ATTEMPT = 1.0
# The fence's read of the key: normally a millisecond; without an answer (the lease stream
# electing a leader) the clock decides, and a write batch should not wait long for that.
CONFIRM_TIMEOUT = 0.5


def bridge_identity() -> str:
    """A readable id, unique per process: host, pid and a random suffix."""
    return f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:6]}"


class LeaderElection:
    """Runs the election; `is_leader` is set while this bridge leads, `lost` when it stops."""

    def __init__(
        self,
        nc: NATS,
        names: Names,
        *,
        identity: str | None = None,
        replicas: int = 1,
        metrics: Metrics | None = None,
        lease: float = LEASE,
        retry: float = RETRY,
    ) -> None:
        self._nc = nc
        self.identity = identity or bridge_identity()
        self._metrics = metrics
        self._lease = lease
        self._retry = retry
        self.spec = lease_bucket(names, replicas=replicas, lease=lease)
        self._bucket: Bucket | None = None
        self._revision = 0
        self._since = ""
        # Monotonic time until which the lease is surely ours (the last renewal's start +
        # LEASE): the server's expiry counts from a later instant.
        self._valid_until = 0.0
        self._failing = False
        # Why the lease cannot be read or made now (the server's words), for /healthz: every
        # replica failing alike (a lease bucket the account has no memory for) is no leader.
        self.trouble = Trouble()
        self.is_leader = asyncio.Event()
        self.lost = asyncio.Event()
        self.leader: str | None = None

    def bucket_config(self) -> BucketConfig:
        """nats-py's KeyValueConfig of the lease bucket (for tooling that creates it)."""
        return bucket_config(self.spec)

    async def run(self) -> None:
        """Campaign and renew until cancelled; on cancellation, give the lease up."""
        try:
            while True:
                raise_if_cancelled()  # a stop a NATS call swallowed (bridge/waits.py)
                delay = await self._step()
                await asyncio.sleep(delay)
        finally:
            await self._resign()

    async def _step(self) -> float:
        """One campaign or renewal; the seconds until the next."""
        try:
            bucket = await self._ensure()
            if self.is_leader.is_set():
                await self._renew(bucket)
            else:
                await self._campaign(bucket)
        except BucketMissingError:
            self._bucket = None
            return 0.1 if not self._failing else RENEW_RETRY
        except NatsError as exc:
            if not self._failing:
                log.warning(
                    "leader_lease_unreachable", error=str(exc), leading=self.is_leader.is_set()
                )
            self._failing = True
            self.trouble.set(f"the leader lease ({self.spec.name}): {exc}")
            if self.is_leader.is_set():
                if self._now() < self._valid_until - MARGIN:
                    return RENEW_RETRY
                log.warning("leader_lease_lost", reason="no renewal within the lease")
                self._become(False)
            return self._retry
        if self._failing:
            log.info("leader_lease_reachable", leading=self.is_leader.is_set())
            self._failing = False
        self.trouble.clear()
        return self._lease / RENEWALS if self.is_leader.is_set() else self._retry

    async def _ensure(self) -> Bucket:
        # Opened once; a bucket the server lost shows as BucketMissingError on the next
        # write or read, and is ensured again then (not on every reconnect: in a cluster
        # that would wait on a stream leader election for nothing).
        if self._bucket is None:
            self._bucket = await ensure_bucket(self._nc, self.spec)
        return self._bucket

    def _now(self) -> float:
        return asyncio.get_running_loop().time()

    def _value(self) -> bytes:
        return msgspec.json.encode(
            Lease(bridge_id=self.identity, since=self._since, renewed_at=now_rfc3339())
        )

    async def _campaign(self, bucket: Bucket) -> None:
        started = self._now()
        self._since = now_rfc3339()
        try:
            self._revision = await bucket.create(LEADER_KEY, self._value())
        except WrongRevisionError:
            own = await self._note_leader(bucket)
            if own is None:
                return
            # The key still names this bridge: it stepped down for want of answers (NATS
            # frozen, its connection deaf) while its renewals still reached the server. Nobody
            # else holds the lease, so it is taken again now, not after it runs out; the write
            # expects the revision read, so a bridge that took it meanwhile keeps it.
            try:
                self._revision = await bucket.write(Write(LEADER_KEY, self._value(), expect=own))
            except WrongRevisionError:
                return
        self._valid_until = started + self._lease
        self._become(True)

    async def _note_leader(self, bucket: Bucket) -> int | None:
        """Note who holds the lease; the key's revision when it names this bridge."""
        entry = await bucket.get(LEADER_KEY)
        leader = self._named(entry) if entry is not None else None
        if entry is not None and leader == self.identity:
            return entry.revision
        if leader is not None and leader != self.leader:
            self.leader = leader
            log.info("bridge_standby", leader=leader, me=self.identity)
        return None

    @staticmethod
    def _named(entry: Entry) -> str | None:
        """The bridge the key's entry names; None for a tombstone or what is no lease."""
        if entry.operation is not None or not entry.value:
            return None
        try:
            return LEASE_DECODER.decode(entry.value).bridge_id
        except msgspec.DecodeError:
            return None

    async def _renew(self, bucket: Bucket) -> None:
        started = self._now()
        if started >= self._valid_until:
            # Paused (or starved) past the lease: a standby may lead by now.
            log.warning("leader_lease_lost", reason="the lease ran out before its renewal")
            self._become(False)
            return
        try:
            self._revision = await bucket.write(
                Write(LEADER_KEY, self._value(), expect=self._revision),
                timeout=min(RENEW_ATTEMPT, max(0.5, self._valid_until - started - MARGIN)),
            )
        except WrongRevisionError:
            if not await self._retake(bucket):
                return
        except BucketMissingError:
            self._bucket = bucket = await ensure_bucket(self._nc, self.spec)
            self._revision = await bucket.create(LEADER_KEY, self._value())
        self._valid_until = started + self._lease

    def holds(self) -> bool:
        """Whether this bridge leads and its lease has not run out on its own clock (no
        round trip: what a bridge woken from a pause finds out at once)."""
        return self.is_leader.is_set() and self._now() < self._valid_until

    async def _retake(self, bucket: Bucket) -> bool:
        """After a renewal found another revision: whether the lease is still this bridge's.
        Nobody may hold it (the bucket was created again, the key expired): it is taken again
        at once. The key may still name this bridge (a renewal stored, its answer lost): it
        is renewed from that revision. Else another bridge leads, and this one steps down."""
        try:
            self._revision = await bucket.create(LEADER_KEY, self._value())
            return True
        except WrongRevisionError:
            own = await self._note_leader(bucket)
        if own is None:
            log.warning("leader_lease_lost", reason="another bridge holds the lease")
            self._become(False)
            return False
        self._revision = await bucket.write(
            Write(LEADER_KEY, self._value(), expect=own), timeout=RENEW_ATTEMPT
        )
        return True

    async def confirm(self) -> None:
        """Raise LeaseLostError unless this bridge holds the lease now (its own clock, then
        the key's revision in the bucket). NatsError when the bucket cannot be read."""
        if not self.is_leader.is_set():
            raise LeaseLostError("this bridge is not the leader")
        if self._now() >= self._valid_until:
            raise LeaseLostError("the lease ran out on this bridge's clock")
        try:
            bucket = await self._ensure()
            entry = await bucket.get(LEADER_KEY, timeout=CONFIRM_TIMEOUT)
        except BucketMissingError:
            self._bucket = None
            raise
        except NatsError as exc:
            # No answer (a stream leader election): the clock check above already proves
            # this bridge was not paused past its lease, and nobody can take a lease that
            # has not run out.
            log.debug("leader_confirm_by_clock", error=str(exc))
            return
        if entry is None or entry.operation is not None:
            # The key is gone with a bucket the server lost: take it again, if nobody did.
            try:
                self._revision = await bucket.create(LEADER_KEY, self._value())
            except WrongRevisionError:
                raise LeaseLostError("another bridge took the lease") from None
            log.info("leader_lease_restored", me=self.identity)
            return
        if entry.revision != self._revision:
            if self._named(entry) != self.identity:
                raise LeaseLostError("the lease key was written by another bridge")
            self._revision = entry.revision  # a renewal stored, its answer lost

    async def _resign(self) -> None:
        if not self.is_leader.is_set():
            return
        self._become(False)
        if self._bucket is not None:
            with contextlib.suppress(NatsError):
                await self._bucket.write(
                    Write(LEADER_KEY, None, expect=self._revision), timeout=2.0
                )
                log.info("leader_resigned", me=self.identity)

    def _become(self, leader: bool) -> None:
        if self._metrics is not None:
            self._metrics.leader.set(1 if leader else 0)
        if leader:
            self.leader = self.identity
            self.lost.clear()
            self.is_leader.set()
            log.info("bridge_leader", me=self.identity, since=self._since)
        else:
            self.is_leader.clear()
            self.lost.set()
            if self.leader == self.identity:
                self.leader = None
