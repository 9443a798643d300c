"""The NATS micro protocol's answers (ADR-32) as nats-py sends them for the service
chorus-bridge: `nats micro ls|info|stats` read these. nats-py has no msgspec models of them, so
they are described here, for the AsyncAPI document and the tests."""

from __future__ import annotations

import msgspec

__all__ = ["MicroEndpointInfo", "MicroEndpointStats", "MicroInfo", "MicroPing", "MicroStats"]


class MicroEndpointInfo(msgspec.Struct, kw_only=True):
    name: str
    subject: str
    queue_group: str
    metadata: dict[str, str] | None = None


class MicroInfo(msgspec.Struct, kw_only=True):
    """`nats micro info chorus-bridge`: the service and its endpoint."""

    type: str = "io.nats.micro.v1.info_response"
    name: str
    id: str
    version: str
    description: str | None = None
    metadata: dict[str, str] = msgspec.field(default_factory=dict)
    endpoints: list[MicroEndpointInfo] = msgspec.field(default_factory=list)


class MicroEndpointStats(msgspec.Struct, kw_only=True):
    name: str
    subject: str
    queue_group: str
    num_requests: int
    num_errors: int
    last_error: str
    processing_time: int  # nanoseconds
    average_processing_time: int  # nanoseconds
    data: dict[str, int] | None = None


class MicroStats(msgspec.Struct, kw_only=True):
    """`nats micro stats chorus-bridge`: requests, errors and time of the endpoint."""

    type: str = "io.nats.micro.v1.stats_response"
    name: str
    id: str
    version: str
    started: str
    metadata: dict[str, str] = msgspec.field(default_factory=dict)
    endpoints: list[MicroEndpointStats] = msgspec.field(default_factory=list)


class MicroPing(msgspec.Struct, kw_only=True):
    """`nats micro ls`, `nats micro ping`: one answer per running instance."""

    type: str = "io.nats.micro.v1.ping_response"
    name: str
    id: str
    version: str
    metadata: dict[str, str] = msgspec.field(default_factory=dict)
