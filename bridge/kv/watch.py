"""Reading a bucket by watching it: a running watch, and a snapshot of every key's latest
message (current values only, no changes)."""

from __future__ import annotations

import asyncio
import contextlib

import nats.errors
import nats.js.errors
from nats.js.kv import KeyValue

from bridge.errors import NatsError
from bridge.kv.errors import _mapped
from bridge.kv.records import Entry, RawBucket, _operation, _seconds


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


async def snapshot_of(
    kv: RawBucket,
    timeout: float = 30.0,
    name: str = "?",
) -> dict[str, Entry]:
    """Every key's latest message in a bucket bound by nats-py (`js.key_value(name)`);
    `name` is for messages only (nats-py's KeyValue has no public name)."""
    try:
        holding = int((await kv.status()).values)
        async with asyncio.timeout(timeout):
            raw = await kv.watchall()
            try:
                return await _current(Watcher(raw, name), holding)
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


async def _current(watcher: Watcher, holding: int) -> dict[str, Entry]:
    """The current values a new watch gives; `holding`: how many messages the bucket held."""
    entries: dict[str, Entry] = {}
    seen = False
    while True:
        entry = await watcher.next()
        if entry is None:
            # nats-py can report "no more current values" before the first one under load: a
            # bucket holding messages is read until nothing is pending, never trusted to be
            # empty on that early marker.
            if holding == 0 or seen:
                return entries
            continue
        seen = True
        entries[entry.key] = entry
        if watcher.pending == 0:
            return entries
