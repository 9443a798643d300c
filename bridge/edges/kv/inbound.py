"""A bucket's inbound stream (`bridge.contract.buckets.Inbound`): made when missing, held to
what makes it safe for writers that must get no answer, and sourced by its bucket.

Safe means (docs/trust-design.md): `no_ack` (JetStream answers a write, or its refusal, on
the reply subject the writer names; with `no_ack` it answers nothing to anyone), no rollup
headers (a bucket with limit markers must allow them, and `Nats-Rollup: all` would empty it),
no per-message TTL (`Nats-TTL: never` would outlive the bucket's TTL), one message per key,
and values no larger than the bucket's. nats-server 2.15.1 showed each of these.
"""

from __future__ import annotations

import dataclasses

import nats.errors
import nats.js.errors
import structlog
from nats.js import JetStreamContext
from nats.js.api import (
    DiscardPolicy,
    StorageType,
    StreamConfig,
    StreamSource,
    SubjectTransform,
)

from bridge.contract.buckets import BucketSpec, Inbound
from bridge.contract.kv_wire import key_subject
from bridge.edges.kv.errors import _mapped

__all__ = ["ensure_inbound", "inbound_config"]

log = structlog.get_logger(__name__)


def inbound_config(spec: BucketSpec, inbound: Inbound) -> StreamConfig:
    """The inbound stream of the bucket `spec` defines."""
    return StreamConfig(
        name=inbound.stream,
        description=f"{spec.description}: writes on their way to the bucket",
        subjects=[inbound.subject],
        storage=StorageType.MEMORY if spec.memory else StorageType.FILE,
        num_replicas=spec.replicas,
        no_ack=True,
        allow_rollup_hdrs=False,
        allow_msg_ttl=False,
        deny_delete=True,
        max_msgs_per_subject=1,
        max_msg_size=spec.max_value_size,
        max_age=spec.ttl,
        discard=DiscardPolicy.OLD,
    )


def _source(spec: BucketSpec, inbound: Inbound) -> StreamSource:
    """The bucket's source: the inbound stream, its key token mapped onto the key's subject."""
    transform = SubjectTransform(src=inbound.subject, dest=key_subject(spec.name, "$1"))
    return StreamSource(name=inbound.stream, subject_transforms=[transform])


def _unsafe(config: StreamConfig) -> list[str]:
    """The settings of an existing inbound stream that would answer or let a writer reach
    beyond its own key."""
    unsafe = []
    if not config.no_ack:
        unsafe.append("acks")
    if config.allow_rollup_hdrs:
        unsafe.append("rollups")
    if config.allow_msg_ttl:
        unsafe.append("message TTLs")
    return unsafe


async def ensure_inbound(js: JetStreamContext, spec: BucketSpec, bucket: StreamConfig) -> None:
    """Make the inbound stream of `spec` when missing (or make it safe again), and have the
    bucket (whose stream config is `bucket`) source it. Raises NatsError."""
    inbound = spec.inbound
    if inbound is None:
        return
    what = f"inbound stream {inbound.stream!r}"
    try:
        await _ensure_stream(js, spec, inbound)
        if not any(s.name == inbound.stream for s in bucket.sources or ()):
            sources = [*(bucket.sources or ()), _source(spec, inbound)]
            await js.update_stream(dataclasses.replace(bucket, sources=sources))
            log.info("kv_bucket_sources_inbound", bucket=spec.name, inbound=inbound.stream)
    except (nats.errors.Error, nats.js.errors.Error) as exc:
        raise _mapped(exc, what) from exc


async def _ensure_stream(js: JetStreamContext, spec: BucketSpec, inbound: Inbound) -> None:
    wanted = inbound_config(spec, inbound)
    try:
        info = await js.stream_info(inbound.stream)
    except nats.js.errors.NotFoundError:
        try:
            await js.add_stream(wanted)
        except nats.js.errors.BadRequestError:
            return  # made meanwhile by another bridge
        log.info("kv_inbound_created", bucket=spec.name, inbound=inbound.stream)
        return
    unsafe = _unsafe(info.config)
    if unsafe:
        await js.update_stream(wanted)
        log.warning("kv_inbound_made_safe", inbound=inbound.stream, had=", ".join(unsafe))
