"""What the chaos tests look at, as an operator would: the bucket, a broadcast's report,
/healthz; and an agent on the bus that keeps its presence entry fresh through outages."""

from __future__ import annotations

import asyncio
import contextlib
import json
import urllib.error
import urllib.request
from collections.abc import AsyncIterator
from typing import Any

import msgspec
import nats
import nats.errors
import nats.js.errors
from nats.js.api import RawStreamMsg

from bridge.bus.registry import read_bucket
from bridge.config import Settings
from bridge.contract.buckets import LEADER_KEY
from bridge.contract.kv_wire import key_subject, stream_of
from bridge.contract.messages import (
    REPORT_DECODER,
    Agent,
    BroadcastReport,
    CouncilOpportunity,
    Lease,
    PresenceEntry,
    Role,
    encode,
    now_rfc3339,
)
from bridge.contract.names import Names
from bridge.errors import NatsError

__all__ = ["bucket_agents", "has_key", "healthz", "lease_of", "on_the_bus", "try_broadcast"]


async def bucket_agents(url: str, settings: Settings) -> dict[str, Agent]:
    """The agents bucket as a new client reads it now ({} when it cannot be read)."""
    try:
        nc = await nats.connect(
            url.split(","), connect_timeout=1, max_reconnect_attempts=0, allow_reconnect=False
        )
    except (nats.errors.Error, OSError):
        return {}
    try:
        kv = await nc.jetstream().key_value(settings.kv_bucket)
        agents, _ = await read_bucket(kv, timeout=5)
        return agents
    except (nats.errors.Error, nats.js.errors.Error, NatsError, OSError):
        # Any failure to read is "not there yet" to a poller.
        return {}
    finally:
        await nc.close()


async def _last_message(url: str, bucket: str, key: str, timeout: float) -> RawStreamMsg | None:
    """The last message of `key` in `bucket`, read from its stream leader (a watch would need
    the meta leader, which a fault may have taken away); None when it cannot be read."""
    try:
        nc = await nats.connect(
            url.split(","), connect_timeout=0.5, max_reconnect_attempts=0, allow_reconnect=False
        )
    except (nats.errors.Error, OSError):
        return None
    try:
        return await nc.jetstream(timeout=timeout).get_msg(
            stream_of(bucket), subject=key_subject(bucket, key)
        )
    except (nats.errors.Error, nats.js.errors.Error, OSError):
        return None
    finally:
        await nc.close()


async def has_key(url: str, settings: Settings, key: str, timeout: float = 0.5) -> bool:
    """Whether the agents bucket holds a value under `key` now."""
    msg = await _last_message(url, settings.kv_bucket, key, timeout)
    return msg is not None and bool(msg.data)


async def lease_of(url: str, bucket: str, timeout: float = 0.5) -> tuple[Lease, int] | None:
    """The leader lease and its revision as `nats kv get <bucket> leader` shows them now; None
    when there is none, or it cannot be read."""
    msg = await _last_message(url, bucket, LEADER_KEY, timeout)
    if msg is None or not msg.data:
        return None
    try:
        return msgspec.json.decode(msg.data, type=Lease), msg.seq or 0
    except msgspec.DecodeError:
        return None


async def try_broadcast(
    url: str, settings: Settings, opportunity_id: str, timeout: float = 5.0
) -> BroadcastReport | None:
    """Send an opportunity through the bridge; its report, or None when none came."""
    opportunity = CouncilOpportunity(id=opportunity_id, roles=[Role(name="tpm", core=True)])
    try:
        nc = await nats.connect(
            url.split(","), connect_timeout=1, max_reconnect_attempts=0, allow_reconnect=False
        )
    except (nats.errors.Error, OSError):
        return None
    try:
        answer = await nc.request(
            f"{settings.subject_prefix}.bridge.broadcast", encode(opportunity), timeout=timeout
        )
        return REPORT_DECODER.decode(answer.data)
    except (nats.errors.Error, OSError, ValueError):
        return None
    finally:
        await nc.close()


def _get(port: int) -> tuple[int, dict[str, Any]]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=2) as answer:
            return answer.status, json.load(answer)
    except urllib.error.HTTPError as error:
        return error.code, json.load(error)


async def healthz(port: int) -> tuple[int, dict[str, Any]]:
    """GET /healthz of a bridge on loopback: (status, body)."""
    return await asyncio.to_thread(_get, port)


@contextlib.asynccontextmanager
async def on_the_bus(
    url: str, settings: Settings, agent_id: str, every: float = 0.5
) -> AsyncIterator[None]:
    """An agent that puts its presence entry every `every` seconds, through restarts."""
    subject = key_subject(Names.from_settings(settings).presence_bucket, agent_id)

    async def refresh() -> None:
        nc = await nats.connect(url.split(","), max_reconnect_attempts=-1, reconnect_time_wait=0.2)
        try:
            while True:
                entry = PresenceEntry(agent_id=agent_id, task_id=agent_id, at=now_rfc3339())
                with contextlib.suppress(nats.errors.Error, nats.js.errors.Error, OSError):
                    await nc.jetstream().publish(subject, encode(entry), timeout=1)
                await asyncio.sleep(every)
        finally:
            await nc.close()

    task = asyncio.create_task(refresh())
    try:
        yield
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
