"""Presence entries of simulated agents in the presence bucket, written in batches.

Writes go straight to the bucket's subjects (`$KV.<bucket>.<agent id>`): that is what
`kv.put` does, minus one round trip per key, and it can carry a per-entry TTL. Agents without
JetStream (the AGENTS account of nats.conf) publish there all the same, but nobody answers
them (docs/trust-design.md): their writes are flushed, not confirmed, and their leaves are
deletes (the stream their writes land in refuses a purge's rollup, and per-entry TTLs).
"""

from __future__ import annotations

from collections.abc import Sequence

import structlog
from nats.aio.client import Client as NATS

from bridge.contract.buckets import PRESENCE_MARKER_TTL, presence_bucket
from bridge.contract.kv_wire import delete_headers, key_subject
from bridge.contract.messages import encode
from bridge.contract.names import Names
from bridge.devkit.sim.agent import SimAgent
from bridge.edges.kv import BucketConfig, Write, bucket_config, ensure_bucket, write_batch
from bridge.errors import NatsError

__all__ = [
    "PresenceWriter",
    "ensure_presence_bucket",
    "presence_bucket_config",
]

log = structlog.get_logger(__name__)

CONFIRM_TIMEOUT = 10


def presence_bucket_config(names: Names) -> BucketConfig:
    """nats-py's configuration of the presence bucket, as the bridge makes it."""
    return bucket_config(presence_bucket(names))


async def ensure_presence_bucket(nc: NATS, names: Names) -> None:
    """Bind to the presence bucket, creating it (as the bridge does) when it is missing.
    Raises NatsError (the user may not read or create it, no JetStream)."""
    await ensure_bucket(nc, presence_bucket(names))


class PresenceWriter:
    """Writes and purges the presence entries of agents over one connection.

    `ttl` (whole seconds, at least 1) puts a per-entry TTL on each write, so an entry can
    expire sooner than the bucket's 15 s; None relies on the bucket's TTL alone. `confirm`:
    wait for the server to store each write (the writer has JetStream); False: flush them.
    """

    def __init__(
        self, nc: NATS, names: Names, *, ttl: int | None = None, confirm: bool = True
    ) -> None:
        if ttl is not None and ttl < 1:
            raise ValueError(f"presence ttl={ttl}: NATS accepts whole seconds, at least 1")
        self._nc = nc
        self._names = names
        self._ttl = ttl
        self._confirm = confirm
        self._ttl_headers = {"Nats-TTL": str(ttl)} if ttl is not None else None

    async def write(self, agents: Sequence[SimAgent]) -> None:
        """Write the entries and wait until the server has stored every one of them (or,
        without `confirm`, has read them)."""
        if not self._confirm:
            await self.refresh(agents)
            return
        # Lazily, so an agent that leaves while the batch goes out is not written back.
        await self._confirmed(
            [
                Write(agent.id, encode(agent.presence_entry()), ttl=self._ttl)
                for agent in agents
                if agent.present
            ]
        )

    async def refresh(self, agents: Sequence[SimAgent]) -> None:
        """Rewrite the entries without waiting for the server's acks.

        At 10,000 agents every 5 s, acked writes cost the simulator ten times the CPU of
        plain publishes; one flush still makes sure the server has read them.
        """
        prefix = f"$KV.{self._names.presence_bucket}."
        for agent in agents:
            if not agent.present:
                continue  # it left while this batch was going out
            await self._nc.publish(
                prefix + agent.id, encode(agent.presence_entry()), headers=self._ttl_headers
            )
        await self._nc.flush(timeout=CONFIRM_TIMEOUT)

    async def purge(self, agents: Sequence[SimAgent]) -> None:
        """Remove the entries (a purge, which watchers see as the agent leaving; its marker
        expires with the bucket's limit markers); without `confirm`, a delete, flushed."""
        if not self._confirm:
            for agent in agents:
                subject = key_subject(self._names.presence_bucket, agent.id)
                await self._nc.publish(subject, b"", headers=delete_headers())
            await self._nc.flush(timeout=CONFIRM_TIMEOUT)
            return
        await self._confirmed(
            [Write(agent.id, None, purge_ttl=PRESENCE_MARKER_TTL) for agent in agents]
        )

    async def _confirmed(self, writes: list[Write]) -> None:
        results = await write_batch(self._nc, self._names.presence_bucket, writes, CONFIRM_TIMEOUT)
        failures = [r for r in results if isinstance(r, NatsError)]
        if failures:
            raise NatsError(
                f"{len(failures)} of {len(results)} presence writes failed: "
                f"{failures[0]}; check that the presence bucket exists and the "
                "user may write it"
            )
