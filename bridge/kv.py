"""The NATS JetStream KV edge: the only module that speaks `nats.js`.

It opens (or creates) a bucket and checks its settings, reads a snapshot, watches, and writes.
Every write goes out as a request on `$KV.<bucket>.<key>` whose answer is read here: nats-py's
`publish_async` leaves the future of a write the server refuses unresolved (the error escapes
to the error callback), so a refusal would look like a 10 s ack timeout. Here the server's own
error text comes back at once, for one write or ten thousand.

nats-py's errors are mapped to ours once, in `_mapped`: a missing stream is
`BucketMissingError`, a stale expected revision `WrongRevisionError`, any other answer of the
server `WriteRefusedError`, a connection or timeout problem `NatsError`; anything else is a bug
and is re-raised as it is.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import datetime as dt
import json
from collections.abc import AsyncIterator, Sequence
from typing import Literal

import nats.errors
import nats.js.errors
import structlog
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.js import JetStreamContext
from nats.js.api import KeyValueConfig, StorageType, StreamConfig
from nats.js.kv import KeyValue

from bridge.errors import (
    BucketMissingError,
    BucketSettingsError,
    NatsError,
    WriteRefusedError,
    WrongRevisionError,
)

__all__ = [
    "MIN_VALUE_SIZE",
    "Bucket",
    "BucketConfig",
    "BucketSpec",
    "Entry",
    "RawBucket",
    "Watcher",
    "Write",
    "bind_bucket",
    "ensure_bucket",
    "open_bucket",
    "snapshot_of",
]

log = structlog.get_logger(__name__)

# A bucket that refuses values below this size would refuse agent records (DESIGN.md).
MIN_VALUE_SIZE = 4096
# Seconds one JetStream API request may take. Short, because callers retry: in a cluster a
# request to a stream whose leader died gets no answer until a new one is elected, and a
# quick retry reaches the new leader sooner than one long wait (nats-py's default is 5 s).
API_TIMEOUT = 1.5
_WRONG_REVISION = {10071, 10164}
_NO_STREAM = 10059
_DEL, _PURGE = "DEL", "PURGE"
Operation = Literal["DEL", "PURGE"] | None
# A bucket bound by nats-py itself, for tooling that reads a bucket it did not open here;
# and nats-py's bucket configuration, for tooling that creates one as the bridge would.
RawBucket = KeyValue
BucketConfig = KeyValueConfig
# Buckets whose differing settings were already named: the warning is said once per process.
_warned: set[tuple[str, str]] = set()


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


def _mapped(exc: BaseException, what: str) -> NatsError:
    """Our error for a known nats-py error; anything else is re-raised."""
    if isinstance(exc, NatsError):
        return exc
    if isinstance(exc, nats.js.errors.NoStreamResponseError | nats.js.errors.BucketNotFoundError):
        return BucketMissingError(f"{what}: the bucket's stream is missing")
    if isinstance(exc, nats.js.errors.KeyWrongLastSequenceError):
        return WrongRevisionError(f"{what}: {exc.description or 'wrong last sequence'}")
    if isinstance(exc, nats.js.errors.APIError):
        return _api_error(exc.err_code or 0, exc.description or repr(exc), what)
    if isinstance(exc, nats.errors.Error | nats.js.errors.Error | OSError | TimeoutError):
        return NatsError(f"{what}: {exc!r}")
    raise exc


def _api_error(code: int, text: str, what: str) -> NatsError:
    if code in _WRONG_REVISION:
        return WrongRevisionError(f"{what}: {text}")
    if code == _NO_STREAM:
        return BucketMissingError(f"{what}: {text}")
    return WriteRefusedError(f"{what}: the server refused it: {text} (error {code})")


def _ack(msg: Msg, what: str) -> int | NatsError:
    """The revision a write got, or why it got none."""
    if msg.headers and msg.headers.get("Status") == "503":
        return BucketMissingError(
            f"{what}: no stream answers (the bucket is missing, or its stream is electing a leader)"
        )
    try:
        answer = json.loads(msg.data)
    except ValueError:
        return WriteRefusedError(f"{what}: unreadable answer {msg.data[:200]!r}")
    error = answer.get("error")
    if isinstance(error, dict):
        return _api_error(int(error.get("err_code", 0)), str(error.get("description")), what)
    return int(answer["seq"])


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


class Watcher:
    """A running watch; `next()` gives entries, None once when the initial values are done.
    Unbounded: the caller bounds it (asyncio.timeout)."""

    def __init__(self, watcher: KeyValue.KeyWatcher, bucket: str) -> None:
        self._watcher = watcher
        self._bucket = bucket
        # Messages still to come after the last entry (nats-py's `delta`).
        self.pending = 0

    async def next(self) -> Entry | None:
        try:
            # timeout=None: nats-py's own wait_for can lose a cancellation (Python 3.11).
            entry = await self._watcher.updates(timeout=None)  # type: ignore[no-untyped-call]
        except (nats.errors.Error, nats.js.errors.Error) as exc:
            raise _mapped(exc, f"watching bucket {self._bucket!r}") from exc
        if entry is None:
            return None
        self.pending = entry.delta or 0
        op = _operation({"KV-Operation": entry.operation} if entry.operation else None)
        return Entry(
            key=entry.key,
            value=entry.value or b"",
            revision=entry.revision or 0,
            operation=op,
            created=_seconds(entry.created),
        )


class Bucket:
    """An opened bucket. Every method raises NatsError (or a subclass) on failure."""

    def __init__(
        self, nc: NATS, kv: KeyValue, spec: BucketSpec, config: StreamConfig, created: str
    ) -> None:
        self._nc = nc
        self._js = nc.jetstream(timeout=API_TIMEOUT)
        self._kv = kv
        self.spec = spec
        self.name = spec.name
        self.stream = f"KV_{spec.name}"
        self._prefix = f"$KV.{spec.name}."
        # When the stream was created: another value means the bucket was lost and made again.
        self.created = created
        # Purge markers with a TTL need the stream's allow_msg_ttl (nats-py sets it; a bucket
        # made by another client may lack it: then the markers stay).
        self.msg_ttl = bool(config.allow_msg_ttl)

    async def last_sequence(self) -> int:
        """The stream's last sequence: changes whenever anyone writes the bucket."""
        try:
            info = await self._js.stream_info(self.stream)
        except (nats.errors.Error, nats.js.errors.Error) as exc:
            raise _mapped(exc, f"bucket {self.name!r}") from exc
        return int(info.state.last_seq or 0)

    async def get(self, key: str, timeout: float = API_TIMEOUT) -> Entry | None:
        """The key's latest message (a tombstone too); None when it never had one."""
        js = self._js if timeout == API_TIMEOUT else self._nc.jetstream(timeout=timeout)
        try:
            msg = await js.get_msg(self.stream, subject=self._prefix + key)
        except nats.js.errors.NotFoundError as exc:
            if exc.err_code == _NO_STREAM:
                raise _mapped(exc, f"bucket {self.name!r}") from exc
            return None
        except (nats.errors.Error, nats.js.errors.Error) as exc:
            raise _mapped(exc, f"reading {key!r} in {self.name!r}") from exc
        return Entry(
            key=key,
            value=msg.data or b"",
            revision=msg.seq or 0,
            operation=_operation(msg.headers),
            created=_seconds(msg.time),
        )

    async def write(self, write: Write, timeout: float = 5.0) -> int:
        """One write; its revision. Raises WrongRevisionError, BucketMissingError, ..."""
        result = (await self.write_batch([write], timeout))[0]
        if isinstance(result, NatsError):
            raise result
        return result

    async def create(self, key: str, value: bytes, timeout: float = 5.0) -> int:
        """Write `key` only if it holds no value (a tombstone or marker is no value)."""
        try:
            return await self.write(Write(key, value, expect=0), timeout)
        except WrongRevisionError:
            last = await self.get(key)
            if last is None or last.operation is None:
                raise
            return await self.write(Write(key, value, expect=last.revision), timeout)

    async def write_batch(
        self,
        writes: Sequence[Write],
        timeout: float,
    ) -> list[int | NatsError]:
        """Send every write, then collect each answer: a revision or our error, in order.

        All writes share one deadline of `timeout` seconds; one reply subject per batch.
        """
        return await write_batch(self._nc, self.name, writes, timeout)

    async def snapshot(self, timeout: float = 30.0) -> dict[str, Entry]:
        """Every key's latest message, tombstones included (their revisions matter to
        writes that expect one). Raises NatsError when it takes longer than `timeout`."""
        return await snapshot_of(self._kv, timeout, self.name)

    @contextlib.asynccontextmanager
    async def watch(self) -> AsyncIterator[Watcher]:
        """Watch every key: current values first (then None), then each change."""
        try:
            raw = await self._kv.watchall()
        except (nats.errors.Error, nats.js.errors.Error) as exc:
            raise _mapped(exc, f"watching bucket {self.name!r}") from exc
        watcher = Watcher(raw, self.name)
        try:
            yield watcher
        finally:
            with contextlib.suppress(nats.errors.Error, nats.js.errors.Error, OSError):
                await raw.stop()  # type: ignore[no-untyped-call]


async def write_batch(
    nc: NATS,
    bucket: str,
    writes: Sequence[Write],
    timeout: float,
) -> list[int | NatsError]:
    """Write to `bucket` on its `$KV.` subjects and collect each answer: a revision or our
    error, in order (nats-py's publish_async never resolves a write the server refuses, so
    the answers are read here). One deadline of `timeout` seconds for the batch. Needs no
    handle of the bucket: agents that may only publish their own keys use it too."""
    prefix = f"$KV.{bucket}."
    results: list[int | NatsError | None] = [None] * len(writes)
    inbox = nc.new_inbox()
    answered = asyncio.Event()
    missing = len(writes)

    async def on_answer(msg: Msg) -> None:
        nonlocal missing
        index = int(msg.subject.rpartition(".")[2])
        if results[index] is None:
            results[index] = _ack(msg, f"writing {writes[index].key!r} in {bucket!r}")
            missing -= 1
            if missing == 0:
                answered.set()

    failure: NatsError | None = None
    try:
        sub = await nc.subscribe(f"{inbox}.*", cb=on_answer)
    except (nats.errors.Error, OSError) as exc:
        return [_mapped(exc, f"writing to {bucket!r}")] * len(writes)
    try:
        async with asyncio.timeout(timeout):
            for index, write in enumerate(writes):
                await nc.publish(
                    prefix + write.key,
                    write.value or b"",
                    reply=f"{inbox}.{index}",
                    headers=write.headers(),
                )
            if writes:
                await answered.wait()
    except TimeoutError:
        failure = NatsError(f"writing to {bucket!r}: no answer within {timeout:g}s")
    except (nats.errors.Error, OSError) as exc:
        failure = _mapped(exc, f"writing to {bucket!r}")
    finally:
        with contextlib.suppress(nats.errors.Error, OSError):
            await sub.unsubscribe()
    return [r if r is not None else failure or NatsError("no answer") for r in results]


async def snapshot_of(
    kv: RawBucket,
    timeout: float = 30.0,
    name: str = "?",
) -> dict[str, Entry]:
    """Every key's latest message in a bucket bound by nats-py (`js.key_value(name)`);
    `name` is for messages only (nats-py's KeyValue has no public name)."""
    entries: dict[str, Entry] = {}
    try:
        holding = int((await kv.status()).values)
        async with asyncio.timeout(timeout):
            raw = await kv.watchall()
            watcher = Watcher(raw, name)
            try:
                seen = False
                while True:
                    entry = await watcher.next()
                    if entry is None:
                        # nats-py can report "no more current values" before the first one
                        # under load: a bucket holding messages is read until nothing is
                        # pending, never trusted to be empty on that early marker.
                        if holding == 0 or seen:
                            break
                        continue
                    seen = True
                    entries[entry.key] = entry
                    if watcher.pending == 0:
                        break
            finally:
                with contextlib.suppress(nats.errors.Error, nats.js.errors.Error, OSError):
                    await raw.stop()  # type: ignore[no-untyped-call]
    except (nats.errors.Error, nats.js.errors.Error) as exc:
        # Before TimeoutError: nats-py's own timeout is one too, and says less.
        raise _mapped(exc, f"reading bucket {name!r}") from exc
    except TimeoutError:
        raise NatsError(
            f"reading bucket {name!r} took longer than {timeout:g}s; is the NATS server overloaded?"
        ) from None
    return entries


async def bind_bucket(nc: NATS, name: str, timeout: float = API_TIMEOUT) -> RawBucket:
    """nats-py's handle of an existing bucket (read-only tooling: `chorus-bridge agents`, the
    auth callout). Raises BucketMissingError when there is none, NatsError otherwise."""
    try:
        return await nc.jetstream(timeout=timeout).key_value(name)
    except (nats.errors.Error, nats.js.errors.Error, TimeoutError) as exc:
        raise _mapped(exc, f"opening bucket {name!r}") from exc


async def open_bucket(js: JetStreamContext, config: KeyValueConfig) -> RawBucket:
    """Bind to a bucket with nats-py's own handle, creating it when missing (tooling and
    tests that work at nats-py's level; the bridge uses `ensure_bucket`)."""
    assert config.bucket is not None
    try:
        return await js.key_value(config.bucket)
    except nats.js.errors.BucketNotFoundError:
        return await js.create_key_value(config)


async def ensure_bucket(nc: NATS, spec: BucketSpec) -> Bucket:
    """Open the bucket, creating it when missing. An existing bucket is used as it is (one
    warning naming settings that differ) unless a setting would lose or refuse records:
    then BucketSettingsError names it. Other failures: NatsError."""
    js = nc.jetstream(timeout=API_TIMEOUT)
    what = f"KV bucket {spec.name!r}"
    try:
        kv = await js.key_value(spec.name)
    except nats.js.errors.BucketNotFoundError:
        try:
            kv = await js.create_key_value(spec.config())
        except nats.js.errors.BadRequestError:
            kv = await js.key_value(spec.name)  # created meanwhile by another bridge
        except (nats.errors.Error, nats.js.errors.Error) as exc:
            raise NatsError(
                f"cannot create {what}: {_mapped(exc, what)}; check that "
                "JetStream is enabled and the user may create it"
            ) from exc
        log.info(
            "kv_bucket_created",
            bucket=spec.name,
            replicas=spec.replicas,
            storage="memory" if spec.memory else "file",
        )
    except (nats.errors.Error, nats.js.errors.Error) as exc:
        raise NatsError(
            f"cannot open {what}: {_mapped(exc, what)}; check that JetStream "
            "is enabled and the user's permissions"
        ) from exc
    try:
        info = (await kv.status()).stream_info
    except (nats.errors.Error, nats.js.errors.Error) as exc:
        raise _mapped(exc, what) from exc
    _check(spec, info.config)
    created = info.created.isoformat() if info.created else ""
    return Bucket(nc, kv, spec, info.config, created)


def _check(spec: BucketSpec, config: StreamConfig) -> None:
    if spec.keeps_records and config.max_age:
        raise BucketSettingsError(
            "max_age",
            f"bucket {spec.name!r} has a TTL (max_age {config.max_age:g}s): "
            "records would expire; remove it or use another BRIDGE_KV_BUCKET",
        )
    size = config.max_msg_size
    if size is not None and 0 < size < MIN_VALUE_SIZE:
        raise BucketSettingsError(
            "max_value_size",
            f"bucket {spec.name!r} has max_value_size {size} bytes (below "
            f"{MIN_VALUE_SIZE}): records would be refused; raise it or use another "
            "BRIDGE_KV_BUCKET",
        )
    if spec.keeps_records and not config.allow_msg_ttl and (spec.name, "ttl") not in _warned:
        _warned.add((spec.name, "ttl"))
        log.warning(
            "kv_bucket_without_message_ttl",
            bucket=spec.name,
            effect="departed agents' purge markers do not expire",
        )
    differ = {
        "history": (config.max_msgs_per_subject, 1),
        "replicas": (config.num_replicas, spec.replicas),
        "storage": (
            getattr(config.storage, "value", config.storage),
            "memory" if spec.memory else "file",
        ),
    }
    differ = {k: v for k, v in differ.items() if v[0] != v[1]}
    said = (spec.name, repr(sorted(differ.items())))
    if differ and said not in _warned:
        _warned.add(said)
        log.warning(
            "kv_bucket_settings_differ",
            bucket=spec.name,
            action="used as it is",
            **{k: f"{v[0]} (expected {v[1]})" for k, v in differ.items()},
        )
