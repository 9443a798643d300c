"""Presence entries of simulated agents in the presence bucket, written in batches.

Writes go straight to the bucket's subjects (`$KV.<bucket>.<agent id>`): that is what
`kv.put` does, minus one round trip per key, and it can carry a per-entry TTL.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable, Sequence

import nats.errors
import nats.js.errors
import structlog
from nats.aio.client import Client as NATS
from nats.js.api import KeyValueConfig, PubAck

from bridge.agent import PURGE_HEADERS, presence_subject
from bridge.errors import NatsError
from bridge.models import encode
from bridge.sim.agent import SimAgent
from bridge.subjects import Names

__all__ = [
    "PRESENCE_MARKER_TTL",
    "PRESENCE_TTL",
    "PresenceWriter",
    "ensure_presence_bucket",
    "presence_bucket_config",
]

log = structlog.get_logger(__name__)

# DESIGN.md: an entry older than 15 s counts as absent; limit markers make expiry visible
# to watchers (as a PURGE), and the markers themselves go away after a few seconds.
PRESENCE_TTL = 15
PRESENCE_MARKER_TTL = 5
CONFIRM_TIMEOUT = 10
_STREAM_IN_USE = 10058  # "stream name already in use with a different configuration"


def presence_bucket_config(names: Names) -> KeyValueConfig:
    return KeyValueConfig(bucket=names.presence_bucket, history=1, ttl=PRESENCE_TTL,
                          limit_marker_ttl=PRESENCE_MARKER_TTL,
                          description="chorus agents on the bus, each refreshed every 5 s")


async def ensure_presence_bucket(nc: NATS, names: Names) -> None:
    """Bind to the presence bucket, creating it (as the bridge does) when it is missing."""
    js = nc.jetstream()
    bucket = names.presence_bucket
    try:
        await js.key_value(bucket)
        return
    except nats.js.errors.BucketNotFoundError:
        pass
    except (nats.errors.Error, nats.js.errors.Error) as exc:
        raise NatsError(f"cannot open the presence bucket {bucket!r}: {exc}; check that "
                        "JetStream is enabled and the user may read it") from exc
    try:
        await js.create_key_value(presence_bucket_config(names))
    except nats.js.errors.BadRequestError as exc:
        # Created meanwhile by the bridge or another agent: theirs is as good as ours.
        if exc.err_code != _STREAM_IN_USE:
            raise NatsError(f"cannot create the presence bucket {bucket!r}: {exc}") from exc
    except (nats.errors.Error, nats.js.errors.Error) as exc:
        raise NatsError(f"cannot create the presence bucket {bucket!r}: {exc}; check that "
                        "JetStream is enabled and the user may create it") from exc
    else:
        log.info("presence_bucket_created", bucket=bucket, ttl=PRESENCE_TTL,
                 marker_ttl=PRESENCE_MARKER_TTL)


class PresenceWriter:
    """Writes and purges the presence entries of agents over one connection.

    `ttl` (whole seconds, at least 1) puts a per-entry TTL on each write, so an entry can
    expire sooner than the bucket's 15 s; None relies on the bucket's TTL alone.
    """

    def __init__(self, nc: NATS, names: Names, *, ttl: int | None = None) -> None:
        if ttl is not None and ttl < 1:
            raise ValueError(f"presence ttl={ttl}: NATS accepts whole seconds, at least 1")
        self._nc = nc
        self._js = nc.jetstream()
        self._names = names
        self._ttl = ttl
        self._ttl_headers = {"Nats-TTL": str(ttl)} if ttl is not None else None

    async def write(self, agents: Sequence[SimAgent]) -> None:
        """Write the entries and wait until the server has stored every one of them."""
        # Lazily, so an agent that leaves while the batch goes out is not written back.
        await self._confirmed((self._subject(agent), encode(agent.presence_entry()), None)
                              for agent in agents if agent.present)

    async def refresh(self, agents: Sequence[SimAgent]) -> None:
        """Rewrite the entries without waiting for the server's acks.

        At 10,000 agents every 5 s, acked writes cost the simulator ten times the CPU of
        plain publishes; one flush still makes sure the server has read them.
        """
        for agent in agents:
            if not agent.present:
                continue  # it left while this batch was going out
            await self._nc.publish(self._subject(agent), encode(agent.presence_entry()),
                                   headers=self._ttl_headers)
        await self._nc.flush(timeout=CONFIRM_TIMEOUT)

    async def purge(self, agents: Sequence[SimAgent]) -> None:
        """Remove the entries (a PURGE, which watchers see as the agent leaving)."""
        await self._confirmed((self._subject(agent), b"", PURGE_HEADERS) for agent in agents)

    def _subject(self, agent: SimAgent) -> str:
        return presence_subject(self._names, agent.id)

    async def _confirmed(self, messages: Iterable[tuple[str, bytes, dict[str, str] | None]],
                         ) -> None:
        futures: list[asyncio.Future[PubAck]] = []
        try:
            async with asyncio.timeout(CONFIRM_TIMEOUT):
                for subject, payload, headers in messages:
                    ttl = self._ttl if headers is None else None
                    futures.append(await self._js.publish_async(
                        subject, payload, headers=dict(headers) if headers else None,
                        msg_ttl=ttl))
                results = await asyncio.gather(*futures, return_exceptions=True)
        except TimeoutError:
            _cancel(futures)
            raise NatsError(f"the presence bucket did not confirm {len(futures)} writes within "
                            f"{CONFIRM_TIMEOUT} s; check the NATS server and JetStream") from None
        except (nats.errors.Error, nats.js.errors.Error) as exc:
            _cancel(futures)
            raise NatsError(f"cannot write presence entries: {exc!r}; check the NATS "
                            "connection") from exc
        failures = [r for r in results if isinstance(r, BaseException)]
        if failures:
            raise NatsError(f"{len(failures)} of {len(results)} presence writes failed: "
                            f"{failures[0]!r}; check that the presence bucket exists and the "
                            "user may write it")


def _cancel(futures: Iterable[asyncio.Future[PubAck]]) -> None:
    for future in futures:
        future.cancel()
