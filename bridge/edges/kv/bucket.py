"""A bucket opened by the bridge (`Bucket`), and the ways to open one: `ensure_bucket` (the
bridge's: created when missing, its settings checked), `bind_bucket` and `open_bucket`
(nats-py's own handle, for tooling and tests)."""

from __future__ import annotations

import contextlib
from collections.abc import Sequence

import nats.errors
import nats.js.errors
import structlog
from nats.aio.client import Client as NATS
from nats.js import JetStreamContext
from nats.js.api import KeyValueConfig, StreamConfig
from nats.js.kv import KeyValue

from bridge.contract.buckets import BucketSpec
from bridge.contract.kv_wire import operation_of
from bridge.edges.kv.errors import _NO_STREAM, _mapped
from bridge.edges.kv.inbound import ensure_inbound
from bridge.edges.kv.records import (
    Entry,
    RawBucket,
    StreamState,
    Write,
    _seconds,
    bucket_config,
)
from bridge.edges.kv.settings import _check
from bridge.edges.kv.watch import Watcher, snapshot_of, watching
from bridge.edges.kv.writes import write_batch
from bridge.errors import BucketMissingError, NatsError, WrongRevisionError

log = structlog.get_logger(__name__)

# Seconds one JetStream API request may take. Short, because callers retry: in a cluster a
# request to a stream whose leader died gets no answer until a new one is elected, and a
# quick retry reaches the new leader sooner than one long wait (nats-py's default is 5 s).
API_TIMEOUT = 1.5


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
        return (await self.state()).last_seq

    async def state(self, *, keys: bool = False) -> StreamState:
        """What the stream holds now; with `keys`, also which keys have a message (one
        answer of the server: up to 100,000 keys)."""
        filtered = f"{self._prefix}>" if keys else None
        try:
            info = await self._js.stream_info(self.stream, subjects_filter=filtered)
        except (nats.errors.Error, nats.js.errors.Error) as exc:
            raise _mapped(exc, f"bucket {self.name!r}") from exc
        state = info.state
        subjects = state.subjects if keys else None
        return StreamState(
            last_seq=int(state.last_seq or 0),
            first_seq=int(state.first_seq or 0),
            messages=int(state.messages or 0),
            keys=None
            if subjects is None
            else frozenset(s.removeprefix(self._prefix) for s in subjects),
        )

    async def check_stream(self) -> None:
        """BucketMissingError when the bucket's stream is gone. A watch does not see its stream
        go (nats-py's watcher reports "stream not found" to the error callback and waits for
        good), so watchers call this now and then. Any other failure (a stream electing its
        leader, a slow server) is no proof of loss, and passes."""
        try:
            await self.last_sequence()
            if self.spec.inbound is not None:  # writes would vanish without it
                await self._js.stream_info(self.spec.inbound.stream)
        except BucketMissingError:
            raise
        except nats.js.errors.NotFoundError as exc:
            if exc.err_code == _NO_STREAM:
                raise BucketMissingError(
                    f"bucket {self.name!r}: its inbound stream is missing"
                ) from exc
        except (NatsError, nats.errors.Error, nats.js.errors.Error):
            return

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
            operation=operation_of(msg.headers),
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

    def watch(self) -> contextlib.AbstractAsyncContextManager[Watcher]:
        """Watch every key: current values first (then None), then each change."""
        return watching(self._kv, self.name)


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
    """Open the bucket, creating it when missing, with its inbound stream when it has one (made,
    or made safe, and sourced). An existing bucket is used as it is (one warning naming
    settings that differ) unless a setting would lose or refuse records: then
    BucketSettingsError names it. Other failures: NatsError."""
    js = nc.jetstream(timeout=API_TIMEOUT)
    what = f"KV bucket {spec.name!r}"
    kv = await _opened(js, spec, what)
    try:
        info = (await kv.status()).stream_info
    except (nats.errors.Error, nats.js.errors.Error) as exc:
        raise _mapped(exc, what) from exc
    _check(spec, info.config)
    await ensure_inbound(js, spec, info.config)
    created = info.created.isoformat() if info.created else ""
    return Bucket(nc, kv, spec, info.config, created)


async def _opened(js: JetStreamContext, spec: BucketSpec, what: str) -> KeyValue:
    try:
        return await js.key_value(spec.name)
    except nats.js.errors.BucketNotFoundError:
        return await _created(js, spec, what)
    except (nats.errors.Error, nats.js.errors.Error) as exc:
        raise NatsError(
            f"cannot open {what}: {_mapped(exc, what)}; check that JetStream "
            "is enabled and the user's permissions"
        ) from exc


async def _created(js: JetStreamContext, spec: BucketSpec, what: str) -> KeyValue:
    try:
        kv = await js.create_key_value(bucket_config(spec))
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
    return kv
