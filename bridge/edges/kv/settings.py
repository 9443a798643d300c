"""An existing bucket's settings against what the bridge would have made: a setting that would
lose or refuse records is refused (`BucketSettingsError`); one that only differs is named in a
warning, once per process."""

from __future__ import annotations

import structlog
from nats.js.api import StreamConfig

from bridge.contract.buckets import BucketSpec
from bridge.errors import BucketSettingsError

log = structlog.get_logger(__name__)

# A bucket that refuses values below this size would refuse agent records (DESIGN.md).
MIN_VALUE_SIZE = 4096
# Buckets whose differing settings were already named: the warning is said once per process.
_warned: set[tuple[str, str]] = set()


def _check(spec: BucketSpec, config: StreamConfig) -> None:
    _refuse(spec, config)
    if spec.keeps_records and not config.allow_msg_ttl:
        _warn_once(
            (spec.name, "ttl"),
            "kv_bucket_without_message_ttl",
            bucket=spec.name,
            effect="departed agents' purge markers do not expire",
        )
    differ = _differences(spec, config)
    if differ:
        _warn_once(
            (spec.name, repr(sorted(differ.items()))),
            "kv_bucket_settings_differ",
            bucket=spec.name,
            action="used as it is",
            **{k: f"{v[0]} (expected {v[1]})" for k, v in differ.items()},
        )


def _refuse(spec: BucketSpec, config: StreamConfig) -> None:
    """Raise BucketSettingsError for a setting that would lose or refuse records."""
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


def _differences(spec: BucketSpec, config: StreamConfig) -> dict[str, tuple[object, object]]:
    """The settings that differ from `spec`'s, each as (the bucket's, the expected)."""
    settings: dict[str, tuple[object, object]] = {
        "history": (config.max_msgs_per_subject, 1),
        "replicas": (config.num_replicas, spec.replicas),
        "storage": (
            getattr(config.storage, "value", config.storage),
            "memory" if spec.memory else "file",
        ),
    }
    if spec.max_value_size is not None:
        settings["max_value_size"] = (config.max_msg_size, spec.max_value_size)
    return {k: v for k, v in settings.items() if v[0] != v[1]}


def _warn_once(said: tuple[str, str], event: str, **fields: object) -> None:
    if said not in _warned:
        _warned.add(said)
        log.warning(event, **fields)
