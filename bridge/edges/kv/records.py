"""What goes in and out of a bucket: what a bucket must be (`BucketSpec`), one key's latest
message (`Entry`), one write (`Write`), and nats-py's operations and times as ours."""

from __future__ import annotations

import dataclasses
import datetime as dt
from typing import Literal

from nats.js.api import KeyValueConfig, StorageType
from nats.js.kv import KeyValue

_DEL, _PURGE = "DEL", "PURGE"
Operation = Literal["DEL", "PURGE"] | None
# A bucket bound by nats-py itself, for tooling that reads a bucket it did not open here;
# and nats-py's bucket configuration, for tooling that creates one as the bridge would.
RawBucket = KeyValue
BucketConfig = KeyValueConfig


@dataclasses.dataclass(frozen=True)
class BucketSpec:
    """What a bucket must be. `keeps_records`: a TTL or max age would lose records, so an
    existing bucket with one is refused. `ttl`, `marker_ttl` in seconds."""

    name: str
    description: str
    memory: bool = False
    replicas: int = 1
    ttl: float | None = None
    marker_ttl: int | None = None
    keeps_records: bool = True

    def config(self) -> BucketConfig:
        return KeyValueConfig(
            bucket=self.name,
            description=self.description,
            history=1,
            ttl=self.ttl,
            limit_marker_ttl=self.marker_ttl,
            replicas=self.replicas,
            storage=StorageType.MEMORY if self.memory else StorageType.FILE,
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
            headers["Nats-TTL"] = str(self.ttl)
        if self.value is None:
            headers["KV-Operation"] = _DEL if self.purge_ttl is None else _PURGE
            if self.purge_ttl is not None:
                headers["Nats-Rollup"] = "sub"
                headers["Nats-TTL"] = str(self.purge_ttl)
        if self.expect is not None:
            headers["Nats-Expected-Last-Subject-Sequence"] = str(self.expect)
        return headers or None


def _operation(headers: dict[str, str] | None) -> Operation:
    if not headers:
        return None
    op = headers.get("KV-Operation")
    if op == _DEL:
        return "DEL"
    if op == _PURGE:
        return "PURGE"
    # Server-placed markers (nats-server 2.11+); nats-py's get() does not know them.
    return "PURGE" if "Nats-Marker-Reason" in headers else None


def _seconds(created: object) -> float:
    if isinstance(created, dt.datetime):
        return created.timestamp()
    if isinstance(created, int | float):
        return float(created) / 1e9 if created > 1e12 else float(created)
    return 0.0
