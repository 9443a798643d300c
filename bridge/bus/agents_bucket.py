"""What the bridge believes the agents bucket holds, and how that belief is kept true.

This module is the only writer of that belief: the registry (bridge/bus/registry.py) plans
and sends the writes, and tells `AgentsBucket` what came of them.

The belief: the records (`published`), each key's last revision (tombstones too: writes
expect it), the stream's last sequence, and the live keys whose value is not an Agent under
its own id. It is read afresh when the bucket may differ from it: at start, when the bucket
was lost and created again (a restart of NATS without its state), and when anyone else wrote
it (the stream's last sequence moved past what this bridge wrote).
"""

from __future__ import annotations

import msgspec
import structlog
from nats.aio.client import Client as NATS

from bridge.contract.buckets import BucketSpec
from bridge.contract.messages import AGENT_DECODER, Agent
from bridge.edges.kv import Bucket, Entry, RawBucket, StreamState, ensure_bucket, snapshot_of
from bridge.errors import (
    BucketMissingError,
    BucketSettingsError,
    NatsError,
    WriteRefusedError,
    WrongRevisionError,
)

__all__ = ["READ_TIMEOUT", "AgentsBucket", "read_bucket"]

log = structlog.get_logger(__name__)

# How long reading a whole bucket may take (10,000 agents take about a second).
READ_TIMEOUT = 30.0
# Every this many audits (of the registry's, one every 2 s), the audit also asks which keys
# have a message, and finds a record lost whatever the counts say.
KEYS_AUDIT_EVERY = 15


def _decode(entry: Entry) -> Agent | None:
    """The Agent a live entry holds under its own key; None for anything else."""
    if entry.operation is not None or not entry.value:
        return None
    try:
        agent = AGENT_DECODER.decode(entry.value)
    except msgspec.DecodeError:
        return None
    return agent if agent.id == entry.key else None


async def read_bucket(
    kv: Bucket | RawBucket,
    *,
    timeout: float = READ_TIMEOUT,
) -> tuple[dict[str, Agent], set[str]]:
    """The agents a bucket holds now, and the live keys whose value is not an Agent stored
    under its own id. Raises NatsError."""
    entries = await (kv.snapshot(timeout) if isinstance(kv, Bucket) else snapshot_of(kv, timeout))
    agents: dict[str, Agent] = {}
    invalid: set[str] = set()
    for key, entry in entries.items():
        agent = _decode(entry)
        if agent is not None:
            agents[key] = agent
        elif entry.operation is None:
            invalid.add(key)
    return agents, invalid


class AgentsBucket:
    """The agents bucket as this bridge believes it is. `bucket` is None until opened, and
    again once lost or refused; `problem` says why it cannot be written, or is None."""

    def __init__(self, nc: NATS, spec: BucketSpec) -> None:
        self._nc = nc
        self.spec = spec
        self.bucket: Bucket | None = None
        self._created = ""  # creation time of the bucket last read (see Bucket.created)
        self._reconnects = -1  # the connection's reconnect count when it was last checked
        self.published: dict[str, Agent] = {}
        self.invalid: set[str] = set()
        self.revisions: dict[str, int] = {}
        self.last_seq = 0  # the stream's last sequence as far as this bridge knows
        self._audits = 0
        self.problem: str | None = None

    @property
    def reconnected(self) -> bool:
        """Whether the connection reconnected since the bucket was last checked."""
        return int(self._nc.stats["reconnects"]) != self._reconnects

    async def load(self, *, reread: bool = False) -> bool:
        """(Re)open the bucket and read it, unless it is the very bucket already read and
        `reread` is False. False when its settings are refused. Raises NatsError."""
        self._reconnects = int(self._nc.stats["reconnects"])
        try:
            bucket = await ensure_bucket(self._nc, self.spec)
        except BucketSettingsError as exc:
            if self.problem != str(exc):
                log.error(
                    "kv_bucket_refused",
                    bucket=self.spec.name,
                    setting=exc.setting,
                    error=str(exc),
                    action="nothing is written there",
                )
            self.problem = str(exc)
            self.bucket = None
            return False
        if not reread and bucket.created and bucket.created == self._created:
            # The very bucket read before (a "no stream" answer during a cluster's stream
            # leader election, a reconnect to a server that kept it): nothing was lost, and
            # the audit catches foreign writes.
            self.bucket = bucket
            return True
        entries = await bucket.snapshot(READ_TIMEOUT)
        self.bucket, self._created = bucket, bucket.created
        self.problem = None  # a write the server still refuses sets it again
        self.revisions = {key: e.revision for key, e in entries.items()}
        self.last_seq = max(self.revisions.values(), default=0)
        self.published = {key: a for key, e in entries.items() if (a := _decode(e))}
        self.invalid = {
            k for k, e in entries.items() if e.operation is None and k not in self.published
        }
        if self.invalid:
            log.warning(
                "kv_invalid_entries",
                bucket=self.spec.name,
                keys=len(self.invalid),
                action="deleted at the next sync",
            )
        log.info("kv_bucket_loaded", bucket=self.spec.name, agents=len(self.published))
        return True

    async def check_after_reconnect(self) -> None:
        """The server may have lost the bucket (a restart without its state): then forget
        it, so that it is created again and everything written again. A server that does
        not answer yet (a cluster electing a leader) is not waited for: the writes go out,
        and a "no stream" answer to them leads here again."""
        self._reconnects = int(self._nc.stats["reconnects"])
        if self.bucket is None:
            return
        try:
            await self.bucket.last_sequence()
        except BucketMissingError:
            log.warning("kv_bucket_missing", bucket=self.spec.name, action="created again")
            self.bucket = None
        except NatsError as exc:
            log.debug("kv_check_after_reconnect_failed", bucket=self.spec.name, error=str(exc))

    async def audit(self) -> bool:
        """True when the belief was read afresh (or the bucket came back): the bucket was
        gone, lost records, was written by someone else, or was refused before and maybe
        fixed since."""
        try:
            if self.bucket is None:
                return await self.load()
            self._audits += 1
            state = await self.bucket.state(keys=self._audits % KEYS_AUDIT_EVERY == 0)
            missing = self._missing(state)
            if missing:
                # A stream that lost messages (a truncated block after a crash on a full disk
                # leaves it empty with the same last sequence): the last sequence alone would
                # never tell.
                log.error(
                    "kv_bucket_lost_records",
                    bucket=self.spec.name,
                    believed=len(self.published),
                    messages=state.messages,
                    first_seq=state.first_seq,
                    last_seq=state.last_seq,
                    missing=missing,
                    action="re-read and written again",
                )
                return await self.load(reread=True)
            if state.last_seq == self.last_seq:
                return False
            log.warning(
                "kv_bucket_changed_by_another_writer",
                bucket=self.spec.name,
                last_seq=state.last_seq,
                expected=self.last_seq,
                action="re-read",
            )
            return await self.load(reread=True)
        except BucketMissingError:
            log.warning("kv_bucket_missing", bucket=self.spec.name, action="created again")
            self.bucket = None
            return await self.load()
        except NatsError as exc:
            log.debug("kv_audit_failed", bucket=self.spec.name, error=str(exc))
            return False

    def _missing(self, state: StreamState) -> int:
        """How many records this bridge believes in that the stream cannot hold (0: none
        lost). Every agent is a message of its own (tombstones and markers are more), so
        fewer messages than agents, a first sequence past an agent's revision, or (when the
        keys were asked for) an agent's key without a message, are records lost."""
        published = self.published
        if state.keys is not None:
            return len(published.keys() - state.keys)
        if state.messages < len(published):
            return len(published) - state.messages
        revisions = self.revisions
        return sum(1 for key in published if revisions.get(key, 0) < state.first_seq)

    def written(self, key: str, revision: int, record: Agent | None) -> None:
        """A write of this bridge was stored: `record`, or a delete (None)."""
        self.revisions[key] = revision
        self.last_seq = max(self.last_seq, revision)
        self.invalid.discard(key)  # whatever odd value it held is gone
        if record is None:
            self.published.pop(key, None)
        else:
            self.published[key] = record

    async def settle(self, failures: list[tuple[str, NatsError]]) -> None:
        """After a batch of writes: `failures` (key, error) logged once, `problem` set or
        cleared, a lost bucket forgotten, and what the conflicting keys hold now read."""
        if not failures:
            if self.problem is not None and self.bucket is not None:
                log.info("kv_writes_recovered", bucket=self.spec.name)
                self.problem = None
            return
        key, first = failures[0]
        if any(isinstance(e, BucketMissingError) for _k, e in failures):
            self.bucket = None
        refused = next((e for _k, e in failures if isinstance(e, WriteRefusedError)), None)
        if refused is not None and self.problem != str(refused):
            self.problem = str(refused)
            log.error(
                "kv_write_refused",
                bucket=self.spec.name,
                key=key,
                error=str(refused),
                failed=len(failures),
            )
        elif any(not isinstance(e, WrongRevisionError) for _k, e in failures):
            # /healthz says so while writes fail; one line when it starts, one when the
            # next batch goes through (kv_writes_recovered).
            if self.problem is None:
                log.warning(
                    "kv_write_failed",
                    bucket=self.spec.name,
                    key=key,
                    error=str(first),
                    failed=len(failures),
                    retry=True,
                )
            self.problem = f"writes to bucket {self.spec.name!r} are failing: {first}"
        else:
            log.info(
                "kv_write_conflict",
                bucket=self.spec.name,
                keys=len(failures),
                action="re-read and written again",
            )
        stale = [k for k, e in failures if isinstance(e, WrongRevisionError)]
        if stale and self.bucket is not None:
            await self.reread(stale)

    def adopt(self, key: str, record: Agent) -> None:
        """`record` equals the published one but is another object (the published one was
        read from the bucket): keep `record`, so that the next diff of this agent is by
        identity."""
        self.published[key] = record

    async def reread(self, keys: list[str]) -> None:
        """Someone else wrote these keys: believe what they hold now."""
        assert self.bucket is not None
        for key in keys:
            entry = await self.bucket.get(key)
            if entry is None:
                self.revisions.pop(key, None)
                self.published.pop(key, None)
                continue
            self.revisions[key] = entry.revision
            agent = _decode(entry)
            if agent is not None:
                self.published[key] = agent
            else:
                self.published.pop(key, None)
                if entry.operation is None:
                    self.invalid.add(key)
