"""The discovered agents by address, for the auth callout: a watch of the agents bucket.

Every bridge replica keeps this index, leader or standby: the bucket is the record of what
discovery found, and any replica can read it (and creates it, as the leader would, when it is
missing). The watch is started again after an error or a reconnection (a NATS restart may
have lost the bucket, which the leader then writes anew); the index it builds replaces the
old one only once the bucket's current values are in.
"""

from __future__ import annotations

import asyncio
import ipaddress

import msgspec
import structlog
from nats.aio.client import Client as NATS

from bridge.contract.agent_id import is_agent_id
from bridge.contract.buckets import agents_bucket
from bridge.contract.messages import AGENT_DECODER
from bridge.contract.names import Names
from bridge.edges.kv import Bucket, ensure_bucket
from bridge.errors import NatsError
from bridge.waits import raise_if_cancelled

__all__ = ["AgentAddresses", "normal_address"]

log = structlog.get_logger(__name__)

# An id goes into subject permissions: one token, no wildcard, no dot.
# How often a quiet watch checks whether the connection was re-established, or the bucket
# deleted (its watch would wait for good), meanwhile.
RECONNECT_CHECK = 2.0
RETRY_WAIT = 1.0


def normal_address(text: str) -> str | None:
    """The address in one spelling (an IPv4-mapped IPv6 address as IPv4); None: not an IP."""
    try:
        address = ipaddress.ip_address(text.strip().strip("[]"))
    except ValueError:
        return None
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    return str(address)


class _Index:
    def __init__(self) -> None:
        self.address_of: dict[str, str] = {}
        self.ids_at: dict[str, set[str]] = {}

    def put(self, key: str, value: bytes) -> bool:
        """Whether an agent left the address it had (an agent's rights there end)."""
        before = self.address_of.get(key)
        self.delete(key)
        try:
            agent = AGENT_DECODER.decode(value)
        except msgspec.DecodeError:
            return before is not None  # the leader deletes what is not an agent
        address = normal_address(agent.address)
        if agent.id != key or address is None:
            return before is not None
        self.address_of[key] = address
        self.ids_at.setdefault(address, set()).add(key)
        return before is not None and before != address

    def delete(self, key: str) -> bool:
        """Whether there was an agent under `key`."""
        address = self.address_of.pop(key, None)
        if address is not None:
            ids = self.ids_at[address]
            ids.discard(key)
            if not ids:
                del self.ids_at[address]
        return address is not None


class AgentAddresses:
    """Which discovered agent has which address; `run()` keeps it current until cancelled."""

    def __init__(self, nc: NATS, names: Names, *, replicas: int = 1) -> None:
        self._nc = nc
        # The agents bucket as the registry makes it, should this replica be the first.
        self._spec = agents_bucket(names, replicas=replicas)
        self._index = _Index()
        self.loaded = asyncio.Event()
        # Set when an agent left the index or its address (bridge/trust/evictions.py).
        self.departed = asyncio.Event()

    def __len__(self) -> int:
        return len(self._index.address_of)

    def agent_at(self, host: str, name: str = "") -> tuple[str | None, str]:
        """(the id of the agent at `host`, "") or (None, why there is none).

        Several agents at one address (known endpoints on several ports): the client's
        connection name chooses among them, and only among them.
        """
        address = normal_address(host)
        ids = self._index.ids_at.get(address) if address else None
        if not ids:
            if not self.loaded.is_set():
                return None, f"address {host} is no discovered agent (agents not loaded yet)"
            return None, f"address {host} is no discovered agent"
        if len(ids) > 1:
            if name not in ids:
                return None, (
                    f"address {host} has {len(ids)} agents: the connection name "
                    "must be one of their ids"
                )
            ids = {name}
        (agent_id,) = ids
        if not is_agent_id(agent_id):
            return None, f"agent id {agent_id!r} cannot be a subject token"
        return agent_id, ""

    async def run(self) -> None:
        """Follow the bucket until cancelled; a failure is logged once and the watch started
        again a moment later."""
        failing = ""
        while True:
            raise_if_cancelled()  # a stop some NATS call swallowed (bridge/waits.py)
            try:
                await self._follow(await ensure_bucket(self._nc, self._spec))
                failing = ""
            except NatsError as exc:
                if str(exc) != failing:
                    log.warning(
                        "callout_watch_lost",
                        bucket=self._spec.name,
                        error=str(exc),
                        retry_in_s=RETRY_WAIT,
                    )
                failing = str(exc)
                await asyncio.sleep(RETRY_WAIT)

    async def _follow(self, bucket: Bucket) -> None:
        """One watch, until it fails or the connection was re-established."""
        reconnects = self._nc.stats["reconnects"]
        fresh: _Index | None = _Index()
        async with bucket.watch() as watcher:
            while self._nc.stats["reconnects"] == reconnects:
                raise_if_cancelled()  # a swallowed stop, which the timeout hides (bridge/waits.py)
                try:
                    async with asyncio.timeout(RECONNECT_CHECK):
                        entry = await watcher.next()
                except TimeoutError:
                    await bucket.check_stream()  # a deleted bucket: watch the new one
                    continue
                index = fresh or self._index
                if entry is None:
                    if fresh is not None:  # the current values are in: answer from them
                        self._index, fresh = fresh, None
                        self.loaded.set()
                        self.departed.set()  # whoever left while the watch was away
                        log.info("callout_agents_loaded", agents=len(self))
                    continue
                if entry.operation is None and entry.value:
                    gone = index.put(entry.key, entry.value)
                else:
                    gone = index.delete(entry.key)
                if gone and fresh is None:
                    self.departed.set()
        log.info("callout_watch_restarted", reason="NATS reconnected")
