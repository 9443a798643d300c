"""A bucket's inbound stream (the presence bucket's): made with the bucket, answering nothing,
refusing rollups and per-message TTLs, sourced by the bucket; made again, or made safe again,
when it is not."""

from __future__ import annotations

import pytest
from nats.aio.client import Client as NATS
from nats.js.api import StorageType, StreamConfig

from bridge.contract.buckets import MAX_PRESENCE_BYTES, BucketSpec, presence_bucket
from bridge.contract.names import Names
from bridge.edges.kv import Bucket, Write, bucket_config, ensure_bucket
from bridge.errors import BucketMissingError, WriteRefusedError
from tests.conftest import wait_for

QUIET = 0.5  # seconds an inbox must stay silent


@pytest.fixture
def names(unique: str) -> Names:
    return Names(prefix=f"t{unique}", agents_bucket=f"agents_{unique}")


@pytest.fixture
def spec(names: Names) -> BucketSpec:
    return presence_bucket(names)


async def _value(bucket: Bucket, key: str) -> bytes | None:
    entry = await bucket.get(key)
    return entry.value if entry is not None and entry.operation is None else None


async def _reaches_the_bucket(nc: NATS, names: Names, bucket: Bucket, key: str) -> None:
    await nc.publish(names.presence_in(key), b'{"agent_id": "%s"}' % key.encode())

    async def stored() -> bool:
        return await _value(bucket, key) is not None

    await wait_for(stored, what=f"{key} in the bucket")


async def test_writes_through_the_inbound_stream_reach_the_bucket_unanswered(
    nc: NATS, names: Names, spec: BucketSpec
) -> None:
    """A write on `<prefix>.presence.in.<key>` is the bucket's `<key>`; neither it nor the
    writes the stream refuses (a rollup, a TTL, over 4 KiB) answer the reply subject."""
    bucket = await ensure_bucket(nc, spec)
    inbox = nc.new_inbox()
    answers = await nc.subscribe(inbox)
    await _reaches_the_bucket(nc, names, bucket, "a1")
    await nc.publish(names.presence_in("a2"), b'{"agent_id": "a2"}', reply=inbox)
    await nc.publish(names.presence_in("a1"), b"{}", reply=inbox, headers={"Nats-Rollup": "all"})
    await nc.publish(names.presence_in("a1"), b"{}", reply=inbox, headers={"Nats-TTL": "1"})
    await nc.publish(names.presence_in("a1"), b"x" * (MAX_PRESENCE_BYTES + 1), reply=inbox)
    await _reaches_the_bucket(nc, names, bucket, "a3")  # after the others, in order
    assert await _value(bucket, "a1") == b'{"agent_id": "a1"}'
    assert await _value(bucket, "a2") == b'{"agent_id": "a2"}'
    with pytest.raises(TimeoutError):
        await answers.next_msg(timeout=QUIET)
    info = await nc.jetstream().stream_info(names.presence_inbound)
    config = info.config
    assert (config.no_ack, config.allow_rollup_hdrs, config.allow_msg_ttl) == (True, False, False)
    assert (config.max_msg_size, config.max_msgs_per_subject) == (MAX_PRESENCE_BYTES, 1)


async def test_a_bucket_made_without_its_inbound_stream_gets_it(
    nc: NATS, names: Names, spec: BucketSpec
) -> None:
    """A presence bucket made before the inbound stream existed (by an older bridge, or by
    hand) is kept, and sources the stream the bridge makes for it."""
    await nc.jetstream().create_key_value(bucket_config(spec))
    bucket = await ensure_bucket(nc, spec)
    await _reaches_the_bucket(nc, names, bucket, "a1")


async def test_an_inbound_stream_that_answers_is_made_safe(
    nc: NATS, names: Names, spec: BucketSpec
) -> None:
    """An inbound stream found acknowledging writes and allowing rollups is set right."""
    js = nc.jetstream()
    await js.add_stream(
        StreamConfig(
            name=names.presence_inbound,
            subjects=[names.presence_in("*")],
            storage=StorageType.MEMORY,
            allow_rollup_hdrs=True,
        )
    )
    await ensure_bucket(nc, spec)
    config = (await js.stream_info(names.presence_inbound)).config
    assert (config.no_ack, config.allow_rollup_hdrs) == (True, False)


async def test_a_lost_inbound_stream_is_noticed_and_made_again(
    nc: NATS, names: Names, spec: BucketSpec
) -> None:
    """Without its inbound stream, agents' writes would vanish: the bucket's stream check
    says the bucket is missing, and opening it again makes the stream again."""
    bucket = await ensure_bucket(nc, spec)
    await nc.jetstream().delete_stream(names.presence_inbound)
    with pytest.raises(BucketMissingError, match="inbound stream is missing"):
        await bucket.check_stream()
    bucket = await ensure_bucket(nc, spec)
    await bucket.check_stream()
    await _reaches_the_bucket(nc, names, bucket, "a1")


async def test_a_presence_value_of_5_kib_is_refused_by_the_server(
    nc: NATS, names: Names, spec: BucketSpec
) -> None:
    """Where agents write the bucket itself (one account: the embedded server, the demo), the
    bucket's max value size refuses 5 KiB, with the server's own words; 4 KiB is stored. (The
    inbound stream refuses it too: above.)"""
    bucket = await ensure_bucket(nc, spec)
    assert await bucket.write(Write("a1", b"x" * MAX_PRESENCE_BYTES)) > 0
    with pytest.raises(WriteRefusedError, match="message size exceeds maximum allowed"):
        await bucket.write(Write("a1", b"x" * 5 * 1024))
    assert await _value(bucket, "a1") == b"x" * MAX_PRESENCE_BYTES
