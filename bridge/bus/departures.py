"""Leaving seen at once: the server's connection advisories of the agents' account, applied to
presence (DESIGN.md, "Agents on the bus": with the callout, an agent whose last connection
closed is off the bus at once, without waiting out the presence TTL).

Which agent a connection is: the server says so itself. The auth callout issues each agent a
user named after it, and the server copies that name into the connection's `user`, which its
advisories carry, with `issuer_key` (the issued user's account); a connection the callout did
not admit keeps the user it sent (bridge/contract/advisories.py). So an advisory counts when
it is of the agents' account, its user was issued (an `issuer_key`) and is an agent id: a
client cannot choose it, whatever it names itself or sends as its user.

How many connections an agent has: the connections seen connecting (CONNECT advisories), by
(server id, client id), less those seen closing. A DISCONNECT that leaves an agent none is its
last: `Presence.depart`, unless the server closed it because its issued user expired (the
client is reconnecting through the callout at that moment; the TTL covers one that does not).
A connection made before this bridge subscribed is unknown to it; its close counts as the last
when no other connection of the agent is known (so an agent with two connections, one of them
older than this bridge, may be off the bus until its next presence write, 5 s at most). Every
issued user expires within 10 minutes, so after that every live connection is known. A
DISCONNECT of a connection that never got in (its CONNECT refused or unanswered) is ignored.

Every replica follows the advisories, as every replica follows presence, so a standby that
takes over already knows who left.
"""

from __future__ import annotations

import asyncio

import msgspec
import nats.errors
import structlog
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg

from bridge.bus.presence import Presence
from bridge.contract.advisories import (
    ADVISORY_DECODER,
    NEVER_CONNECTED,
    RECONNECTING,
    ConnectionAdvisory,
)
from bridge.contract.agent_id import is_agent_id
from bridge.contract.names import Names

__all__ = ["Departures"]

log = structlog.get_logger(__name__)

# Advisories waiting to be applied, at most: a fleet of 10,000 reconnecting at once is 20,000.
PENDING_LIMIT = 65_536

Connection = tuple[str, int]


class Departures:
    """Applies the advisories of `account` to `presence` while `run()` runs."""

    def __init__(self, nc: NATS, presence: Presence, *, account: str) -> None:
        self._nc = nc
        self._presence = presence
        self._account = account
        self._live: dict[str, set[Connection]] = {}

    def connections(self, agent_id: str) -> int:
        """The live connections of `agent_id` this bridge knows of."""
        return len(self._live.get(agent_id, ()))

    async def run(self) -> None:
        """Subscribe to both advisories and apply them until cancelled. Without them (the
        connection closed under it) it says so and ends: the presence TTL still applies."""
        subjects = (
            Names.connect_advisories(self._account),
            Names.disconnect_advisories(self._account),
        )
        subs = []
        try:
            for subject in subjects:
                subs.append(
                    await self._nc.subscribe(
                        subject, cb=self._on_advisory, pending_msgs_limit=PENDING_LIMIT
                    )
                )
            log.info("departures_following", account=self._account)
            await asyncio.Event().wait()  # until cancelled
        except (nats.errors.Error, OSError) as exc:
            log.warning("departures_unavailable", account=self._account, error=repr(exc))
        finally:
            for sub in subs:
                try:
                    await sub.unsubscribe()
                except (nats.errors.Error, OSError) as exc:
                    log.debug("departures_unsubscribe_failed", error=repr(exc))

    async def _on_advisory(self, msg: Msg) -> None:
        try:
            advisory = ADVISORY_DECODER.decode(msg.data)
        except msgspec.DecodeError:
            log.debug("advisory_invalid", subject=msg.subject)
            return
        self.apply(advisory)

    def apply(self, advisory: ConnectionAdvisory) -> None:
        """One advisory: a connection of an admitted agent made, or closed."""
        agent_id = self._agent_of(advisory)
        if agent_id is None:
            return
        live = self._live.setdefault(agent_id, set())
        if advisory.type.endswith("client_connect"):
            live.add(advisory.connection)
            self._presence.connected(agent_id)
            return
        known = advisory.connection in live
        live.discard(advisory.connection)
        if not live:
            del self._live[agent_id]
        if live or (not known and advisory.reason in NEVER_CONNECTED):
            return
        if advisory.reason in RECONNECTING:
            log.debug("agent_reconnecting", agent_id=agent_id, reason=advisory.reason)
            return
        self._presence.depart(agent_id)

    def _agent_of(self, advisory: ConnectionAdvisory) -> str | None:
        """The agent the connection was admitted as, or None: not an issued user's."""
        client = advisory.client
        if client.acc != self._account or not client.issuer_key or not is_agent_id(client.user):
            return None
        return client.user
