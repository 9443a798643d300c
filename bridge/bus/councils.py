"""The councils bucket: each accepted opportunity and the holders of its roles, as this
bridge believes the bucket holds them, and the writes that change them.

Keys (bridge/contract/buckets.py): `<opportunity id>` a CouncilRecord, `<opportunity id>.<role>`
a Holder, `<opportunity id>.agents.<agent id>` a Seat. Every write names the revision it
expects the key to have (0, or a tombstone's revision, for a key that holds nothing), taken
from what this bridge last read or wrote: a write made on a stale belief (another bridge wrote
meanwhile, or this one was paused) is refused by the server with WrongRevisionError, and the
caller reads the keys again (`reread`) before it decides anew. The rules that decide what to
write are bridge/council/'s; this module only keeps the belief true.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable

import msgspec
import structlog
from nats.aio.client import Client as NATS

from bridge.contract.buckets import (
    BucketSpec,
    council_key,
    holder_key,
    seat_key,
    split_council_key,
)
from bridge.contract.messages import (
    COUNCIL_RECORD_DECODER,
    HOLDER_DECODER,
    SEAT_DECODER,
    CouncilRecord,
    Holder,
    Role,
    Seat,
    encode,
    rfc3339_seconds,
)
from bridge.edges.kv import Bucket, Entry, Write, ensure_bucket
from bridge.errors import BucketMissingError

__all__ = ["Council", "CouncilsBucket"]

log = structlog.get_logger(__name__)

READ_TIMEOUT = 30.0
WRITE_TIMEOUT = 5.0


@dataclasses.dataclass
class Council:
    """One council: its record, the live Holders by role and Seats by agent id."""

    record: CouncilRecord
    holders: dict[str, Holder] = dataclasses.field(default_factory=dict)
    seats: dict[str, Seat] = dataclasses.field(default_factory=dict)
    # The deadline parsed and the roles by name, with the record they were read from (every
    # claim asks for both).
    _parsed: tuple[CouncilRecord, float | None, dict[str, Role]] | None = dataclasses.field(
        default=None, repr=False, compare=False
    )

    @property
    def id(self) -> str:
        return self.record.id

    @property
    def deadline(self) -> float | None:
        """The deadline in seconds since the epoch (None: none, or not a time)."""
        return self._read()[1]

    def role(self, name: str) -> Role | None:
        return self._read()[2].get(name)

    def _read(self) -> tuple[CouncilRecord, float | None, dict[str, Role]]:
        if self._parsed is None or self._parsed[0] is not self.record:
            roles = {role.name: role for role in reversed(self.record.roles)}  # the first wins
            self._parsed = (self.record, _seconds(self.record.deadline), roles)
        return self._parsed

    def keys(self) -> list[str]:
        """Every key of this council that this bridge knows of."""
        roles = [holder_key(self.id, role.name) for role in self.record.roles]
        seats = [seat_key(self.id, agent_id) for agent_id in self.seats]
        return [council_key(self.id), *roles, *seats]


def _seconds(deadline: str | None) -> float | None:
    if deadline is None:
        return None
    try:
        return rfc3339_seconds(deadline)
    except ValueError:
        return None


class CouncilsBucket:
    """The councils bucket as this bridge believes it is: `councils` by opportunity id, and
    the last revision of every key it knows (tombstones too: writes expect them)."""

    def __init__(self, nc: NATS, spec: BucketSpec) -> None:
        self._nc = nc
        self.spec = spec
        self._bucket: Bucket | None = None
        self.councils: dict[str, Council] = {}
        self.revisions: dict[str, int] = {}
        self.last_seq = 0

    async def _opened(self) -> Bucket:
        if self._bucket is None:
            self._bucket = await ensure_bucket(self._nc, self.spec)
        return self._bucket

    async def load(self) -> None:
        """Read the whole bucket afresh (a new term, a bucket someone else wrote). Raises
        NatsError."""
        bucket = await self._opened()
        try:
            entries = await bucket.snapshot(READ_TIMEOUT)
        except BucketMissingError:
            self._bucket = None
            raise
        self.revisions = {key: entry.revision for key, entry in entries.items()}
        self.last_seq = max(self.revisions.values(), default=0)
        self.councils = {}
        ordered = sorted(entries.values(), key=lambda e: e.key.count("."))
        for entry in ordered:  # records first, then what hangs on them
            self._apply(entry)
        log.info("councils_loaded", bucket=self.spec.name, councils=len(self.councils))

    async def audit(self) -> bool:
        """True when the bucket was read afresh because someone else wrote it (or it was
        lost and made again). Raises NatsError when it cannot be read."""
        try:
            last = await (await self._opened()).last_sequence()
        except BucketMissingError:
            self._bucket = None
            log.warning("kv_bucket_missing", bucket=self.spec.name, action="created again")
            await self.load()
            return True
        if last == self.last_seq:
            return False
        log.warning(
            "kv_bucket_changed_by_another_writer",
            bucket=self.spec.name,
            last_seq=last,
            expected=self.last_seq,
            action="re-read",
        )
        await self.load()
        return True

    async def reread(self, keys: Iterable[str]) -> None:
        """Believe what these keys hold now (after a write refused for its revision, or one
        whose answer never came). Raises NatsError."""
        bucket = await self._opened()
        for key in keys:
            entry = await bucket.get(key)
            if entry is None:
                self.revisions.pop(key, None)
                self._forget(key)
            else:
                self.revisions[key] = entry.revision
                self._apply(entry)

    def _apply(self, entry: Entry) -> None:
        """Fold one key's latest message into the belief."""
        try:
            opportunity_id, role, agent_id = split_council_key(entry.key)
        except ValueError:
            return  # not ours: left alone
        if entry.operation is not None or not entry.value:
            self._forget(entry.key)
            return
        try:
            if role is None and agent_id is None:
                record = COUNCIL_RECORD_DECODER.decode(entry.value)
                if record.id != opportunity_id:
                    raise msgspec.DecodeError(f"names opportunity {record.id!r}")
                council = self.councils.get(opportunity_id)
                if council is None:
                    self.councils[opportunity_id] = Council(record)
                else:
                    council.record = record
                return
            council = self.councils.get(opportunity_id)
            if council is None:
                return  # a Holder or Seat without its record: nothing to arbitrate
            if role is not None:
                council.holders[role] = HOLDER_DECODER.decode(entry.value)
            elif agent_id is not None:
                council.seats[agent_id] = SEAT_DECODER.decode(entry.value)
        except msgspec.DecodeError as exc:
            log.warning("council_record_invalid", key=entry.key[:200], error=str(exc)[:200])

    def _forget(self, key: str) -> None:
        opportunity_id, role, agent_id = split_council_key(key)
        council = self.councils.get(opportunity_id)
        if council is None:
            return
        if role is not None:
            council.holders.pop(role, None)
        elif agent_id is not None:
            council.seats.pop(agent_id, None)
        else:
            del self.councils[opportunity_id]

    async def _write(self, write: Write) -> int:
        bucket = await self._opened()
        try:
            revision = await bucket.write(write, timeout=WRITE_TIMEOUT)
        except BucketMissingError:
            self._bucket = None
            raise
        self.revisions[write.key] = revision
        self.last_seq = max(self.last_seq, revision)
        return revision

    def _expect(self, key: str) -> int:
        return self.revisions.get(key, 0)

    async def create(self, record: CouncilRecord) -> Council:
        """Record an opportunity under its id; WrongRevisionError when the key holds one."""
        key = council_key(record.id)
        await self._write(Write(key, encode(record), expect=self._expect(key)))
        council = self.councils[record.id] = Council(record)
        return council

    async def put_record(self, council: Council, record: CouncilRecord) -> None:
        key = council_key(council.id)
        await self._write(Write(key, encode(record), expect=self._expect(key)))
        council.record = record

    async def put_seat(self, council: Council, seat: Seat) -> None:
        key = seat_key(council.id, seat.agent_id)
        await self._write(Write(key, encode(seat), expect=self._expect(key)))
        council.seats[seat.agent_id] = seat

    async def put_holder(self, council: Council, holder: Holder) -> None:
        key = holder_key(council.id, holder.role)
        await self._write(Write(key, encode(holder), expect=self._expect(key)))
        council.holders[holder.role] = holder

    async def drop_holder(self, council: Council, role: str) -> None:
        """Delete the role's Holder; on a role with none, a tombstone that fences it: a
        write that expected the role's earlier revision (a grant still on its way from a
        paused bridge) is then refused."""
        key = holder_key(council.id, role)
        await self._write(Write(key, None, expect=self._expect(key)))
        council.holders.pop(role, None)

    async def drop_seat(self, council: Council, agent_id: str) -> None:
        key = seat_key(council.id, agent_id)
        await self._write(Write(key, None, expect=self._expect(key)))
        council.seats.pop(agent_id, None)

    async def remove(self, council: Council, marker_ttl: int) -> None:
        """Purge every key of the council (the record last, so that a removal cut short is
        done again); markers expire after `marker_ttl` seconds. Raises NatsError."""
        keys = council.keys()
        for key in [*keys[1:], keys[0]]:
            if key in self.revisions:
                await self._write(Write(key, None, expect=self._expect(key), purge_ttl=marker_ttl))
                del self.revisions[key]
        self.councils.pop(council.id, None)
