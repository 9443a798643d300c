"""What goes in and out of a bucket: what a bucket must be (`BucketSpec`), one key's latest
message (`Entry`), one write (`Write`), and nats-py's operations and times as ours."""

from __future__ import annotations

import dataclasses
import datetime as dt

from nats.js.api import KeyValueConfig, StorageType
from nats.js.kv import KeyValue

from bridge.contract.buckets import BucketSpec
from bridge.contract.kv_wire import Operation, delete_headers, ttl_header

# A bucket bound by nats-py itself, for tooling that reads a bucket it did not open here;
# and nats-py's bucket configuration, for tooling that creates one as the bridge would.
RawBucket = KeyValue
BucketConfig = KeyValueConfig


def bucket_config(spec: BucketSpec) -> BucketConfig:
    """nats-py's configuration of the bucket `spec` defines (history 1: a key's latest
    message is all the bridge reads)."""
    return KeyValueConfig(
        bucket=spec.name,
        description=spec.description,
        history=1,
        ttl=spec.ttl,
        limit_marker_ttl=spec.marker_ttl,
        max_value_size=spec.max_value_size,
        replicas=spec.replicas,
        storage=StorageType.MEMORY if spec.memory else StorageType.FILE,
    )


@dataclasses.dataclass(frozen=True)
class Entry:
    """One key's latest message. `operation` is DEL or PURGE for a tombstone or an expiry
    marker (then `value` is b""); `created` in seconds since the epoch."""

    key: str
    value: bytes
    revision: int
    operation: Operation
    created: float


@dataclasses.dataclass(frozen=True)
class StreamState:
    """What a bucket's stream holds: its last and first sequence, how many messages (every
    key's latest message: values, tombstones, markers), and the keys that have one (when
    asked for: `Bucket.state(keys=True)`)."""

    last_seq: int
    first_seq: int
    messages: int
    keys: frozenset[str] | None = None


@dataclasses.dataclass(frozen=True)
class Write:
    """One write. `value` None: a delete (`purge_ttl` None) or a purge whose marker expires
    after `purge_ttl` seconds. `expect`: the key's last revision, 0 for "no message yet";
    None writes whatever is there."""

    key: str
    value: bytes | None
    expect: int | None = None
    purge_ttl: int | None = None
    # A put that expires after this many seconds (the stream must allow message TTLs).
    ttl: int | None = None

    def headers(self) -> dict[str, str] | None:
        headers: dict[str, str] = {}
        if self.value is not None and self.ttl is not None:
            headers.update(ttl_header(self.ttl))
        if self.value is None:
            headers.update(delete_headers(purge_ttl=self.purge_ttl))
        if self.expect is not None:
            headers["Nats-Expected-Last-Subject-Sequence"] = str(self.expect)
        return headers or None


def _seconds(created: object) -> float:
    if isinstance(created, dt.datetime):
        return created.timestamp()
    if isinstance(created, int | float):
        return float(created) / 1e9 if created > 1e12 else float(created)
    return 0.0
