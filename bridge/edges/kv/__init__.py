"""The NATS JetStream KV edge: the only package that speaks `nats.js`.

It opens (or creates) a bucket and checks its settings, reads a snapshot, watches, and writes.
Every write goes out as a request on `$KV.<bucket>.<key>` whose answer is read here: nats-py's
`publish_async` leaves the future of a write the server refuses unresolved (the error escapes
to the error callback), so a refusal would look like a 10 s ack timeout. Here the server's own
error text comes back at once, for one write or ten thousand.

nats-py's errors are mapped to ours once, in `_mapped`: a missing stream is
`BucketMissingError`, a stale expected revision `WrongRevisionError`, any other answer of the
server `WriteRefusedError`, a connection or timeout problem `NatsError`; anything else is a bug
and is re-raised as it is.

One module per concept: `errors` (that mapping, and the answers to writes), `records` (what a
bucket must be, its entries, a write), `watch` (a running watch, a snapshot), `writes` (a batch
of writes and their answers), `settings` (an existing bucket's settings, refused or named),
`inbound` (the stream a bucket sources untrusted writes from) and `bucket` (an opened bucket,
and opening one). Callers import from `bridge.edges.kv` alone.
"""

from bridge.edges.kv.bucket import Bucket, bind_bucket, ensure_bucket, open_bucket
from bridge.edges.kv.records import (
    BucketConfig,
    Entry,
    RawBucket,
    StreamState,
    Write,
    bucket_config,
)
from bridge.edges.kv.settings import MIN_VALUE_SIZE
from bridge.edges.kv.watch import Watcher, snapshot_of
from bridge.edges.kv.writes import write_batch

__all__ = [
    "MIN_VALUE_SIZE",
    "Bucket",
    "BucketConfig",
    "Entry",
    "RawBucket",
    "StreamState",
    "Watcher",
    "Write",
    "bind_bucket",
    "bucket_config",
    "ensure_bucket",
    "open_bucket",
    "snapshot_of",
    "write_batch",
]
