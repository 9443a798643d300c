"""Leader election through one NATS KV key, so several bridges can run safely.

The lease is the key `leader` in the bucket `<prefix>_bridge`, whose messages expire after
LEASE seconds (the bucket's max age). A bridge becomes leader by creating the key (atomic: it
fails when the key exists), renews it every LEASE/3 with an update on its last revision
(which fails if anyone else wrote it meanwhile), and deletes it when it stops. When a leader
dies, its key expires within LEASE seconds and a standby, retrying every RETRY seconds, takes
over: at most LEASE + RETRY (12 s) after the last renewal.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import uuid

import msgspec
import nats.errors
import nats.js.errors
import structlog
from nats.aio.client import Client as NATS
from nats.js.api import KeyValueConfig, StorageType
from nats.js.kv import KeyValue

from bridge.metrics import Metrics
from bridge.models import now_rfc3339
from bridge.registry import open_bucket
from bridge.subjects import Names

__all__ = ["LEASE", "LeaderElection", "Lease"]

log = structlog.get_logger(__name__)

LEASE = 10.0
RETRY = 2.0
LEADER_KEY = "leader"


class Lease(msgspec.Struct, kw_only=True, frozen=True):
    """The value of the leader key: who leads, since when."""

    bridge_id: str
    since: str


_LEASE_DECODER = msgspec.json.Decoder(Lease)


def bridge_identity() -> str:
    """A readable id, unique per process: host, pid and a random suffix."""
    return f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:6]}"


class LeaderElection:
    """Runs the election; `is_leader` is set while this bridge leads, `lost` when it stops."""

    def __init__(self, nc: NATS, names: Names, *, identity: str | None = None,
                 replicas: int = 1, metrics: Metrics | None = None,
                 lease: float = LEASE, retry: float = RETRY) -> None:
        self._nc = nc
        self._names = names
        self.identity = identity or bridge_identity()
        self._replicas = replicas
        self._metrics = metrics
        self._lease = lease
        self._retry = retry
        self._revision: int | None = None
        self.is_leader = asyncio.Event()
        self.lost = asyncio.Event()
        self.leader: str | None = None

    def bucket_config(self) -> KeyValueConfig:
        return KeyValueConfig(bucket=self._names.leader_bucket, history=1, ttl=self._lease,
                              storage=StorageType.MEMORY, replicas=self._replicas,
                              description="chorus-bridge: leader lease")

    async def run(self) -> None:
        """Campaign and renew until cancelled; on cancellation, give the lease up."""
        kv = await open_bucket(self._nc.jetstream(), self.bucket_config())
        try:
            while True:
                if self.is_leader.is_set():
                    await self._renew(kv)
                    await asyncio.sleep(self._lease / 3)
                else:
                    await self._campaign(kv)
                    if not self.is_leader.is_set():
                        await asyncio.sleep(self._retry)
        finally:
            await self._resign(kv)

    async def _campaign(self, kv: KeyValue) -> None:
        value = msgspec.json.encode(Lease(bridge_id=self.identity, since=now_rfc3339()))
        try:
            self._revision = await kv.create(LEADER_KEY, value)
        except nats.js.errors.KeyWrongLastSequenceError:
            await self._note_leader(kv)
            return
        except (nats.errors.Error, nats.js.errors.Error, OSError) as exc:
            log.warning("leader_campaign_failed", error=repr(exc))
            return
        self._become(True)

    async def _note_leader(self, kv: KeyValue) -> None:
        with contextlib.suppress(nats.errors.Error, nats.js.errors.Error, msgspec.DecodeError):
            entry = await kv.get(LEADER_KEY)
            if entry.value:
                leader = _LEASE_DECODER.decode(entry.value).bridge_id
                if leader != self.leader:
                    self.leader = leader
                    log.info("bridge_standby", leader=leader, me=self.identity)

    async def _renew(self, kv: KeyValue) -> None:
        value = msgspec.json.encode(Lease(bridge_id=self.identity, since=now_rfc3339()))
        try:
            self._revision = await kv.update(LEADER_KEY, value, last=self._revision)
        except nats.js.errors.KeyWrongLastSequenceError:
            log.warning("leader_lease_lost", reason="another bridge holds the lease")
            self._become(False)
        except (nats.errors.Error, nats.js.errors.Error, OSError) as exc:
            # Without a renewal the lease may expire and a standby take over: step down now
            # rather than risk two leaders writing the bucket.
            log.warning("leader_lease_lost", reason=repr(exc))
            self._become(False)

    async def _resign(self, kv: KeyValue) -> None:
        if not self.is_leader.is_set():
            return
        self._become(False)
        with contextlib.suppress(nats.errors.Error, nats.js.errors.Error, OSError):
            await kv.delete(LEADER_KEY, last=self._revision)
            log.info("leader_resigned", me=self.identity)

    def _become(self, leader: bool) -> None:
        if self._metrics is not None:
            self._metrics.leader.set(1 if leader else 0)
        if leader:
            self.leader = self.identity
            self.lost.clear()
            self.is_leader.set()
            log.info("bridge_leader", me=self.identity)
        else:
            self.is_leader.clear()
            self.lost.set()
            if self.leader == self.identity:
                self.leader = None
