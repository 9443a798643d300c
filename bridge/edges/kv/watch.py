"""Reading a bucket by watching it: a running watch, and a snapshot of every key's latest
message (current values only, no changes)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

import nats.errors
import nats.js.errors
from nats.js.kv import KeyValue

from bridge.contract.kv_wire import operation_of
from bridge.edges.kv.errors import _mapped
from bridge.edges.kv.records import Entry, RawBucket, _seconds
from bridge.errors import NatsError

# How long a watch of a bucket that held messages waits for the first of them before it
# takes the bucket for empty after all (they can expire between the count and the watch).
FIRST_ENTRY_WAIT = 3.0


class Watcher:
    """A running watch; `next()` gives entries, and None once, when the current values are
    all given. Unbounded: the caller bounds it (asyncio.timeout).

    nats-py's own "current values done" marker can come before the first value when the
    server has pushed them all before nats-py asked how many were pending (a loaded
    machine): a watch of a bucket that held `holding` messages trusts it only after a value.
    """

    def __init__(self, watcher: KeyValue.KeyWatcher, bucket: str, holding: int) -> None:
        self._watcher = watcher
        self._bucket = bucket
        self._holding = holding
        self._seen = False
        self._marker_due = False
        self._current_done = False
        # Messages still to come after the last entry (nats-py's `delta`).
        self.pending = 0

    @property
    def current_done(self) -> bool:
        """Whether every value the bucket held when the watch began has been given."""
        return self._current_done

    async def next(self) -> Entry | None:
        if self._marker_due:
            self._marker_due, self._current_done = False, True
            return None
        entry = await self._next_update()
        if entry is None:
            self._current_done = True
            return None
        self._seen = True
        self.pending = entry.delta or 0
        if not self._current_done and self.pending == 0:
            self._marker_due = True  # the last current value: the marker comes next
        op = operation_of({"KV-Operation": entry.operation} if entry.operation else None)
        return Entry(
            key=entry.key,
            value=entry.value or b"",
            revision=entry.revision or 0,
            operation=op,
            created=_seconds(entry.created),
        )

    async def _next_update(self) -> KeyValue.Entry | None:
        """nats-py's next entry, or None for "the current values are done" (once)."""
        while True:
            early = not (self._seen or self._current_done or self._holding == 0)
            try:
                async with asyncio.timeout(FIRST_ENTRY_WAIT if early else None):
                    # timeout=None: nats-py's own wait_for can lose a cancellation (3.11).
                    update: KeyValue.Entry | None = await self._watcher.updates(timeout=None)  # type: ignore[no-untyped-call]
            except TimeoutError:
                return None  # what the bucket held went before the watch began
            except (nats.errors.Error, nats.js.errors.Error) as exc:
                raise _mapped(exc, f"watching bucket {self._bucket!r}") from exc
            if update is not None:
                return update
            if not early and not self._current_done:
                return None
            # A marker before any value of a bucket that held some, or a second one: skipped.


@contextlib.asynccontextmanager
async def watching(kv: RawBucket, name: str) -> AsyncIterator[Watcher]:
    """Watch every key of `kv` (bound by nats-py): current values, then None, then each
    change; the watch is stopped on exit. Raises NatsError (or BucketMissingError)."""
    try:
        holding = int((await kv.status()).values)
        raw = await kv.watchall()
    except (nats.errors.Error, nats.js.errors.Error) as exc:
        raise _mapped(exc, f"watching bucket {name!r}") from exc
    try:
        yield Watcher(raw, name, holding)
    finally:
        with contextlib.suppress(nats.errors.Error, nats.js.errors.Error, OSError):
            await raw.stop()  # type: ignore[no-untyped-call]


async def snapshot_of(
    kv: RawBucket,
    timeout: float = 30.0,
    name: str = "?",
) -> dict[str, Entry]:
    """Every key's latest message in a bucket bound by nats-py (`js.key_value(name)`);
    `name` is for messages only (nats-py's KeyValue has no public name)."""
    entries: dict[str, Entry] = {}
    try:
        async with asyncio.timeout(timeout), watching(kv, name) as watcher:
            while (entry := await watcher.next()) is not None:
                entries[entry.key] = entry
        return entries
    except TimeoutError:
        raise NatsError(
            f"reading bucket {name!r} took longer than {timeout:g}s; is the NATS server overloaded?"
        ) from None
