"""Leaving seen at once: the server's connection advisories of the agents' account applied to
presence (bridge/bus/departures.py).

First the rules, on advisories as the server writes them and a real presence watch: the last
connection of an agent closing takes it off the bus; one of two does not; a connection that
never got in, an operator's, or a user's expiry does not; a presence write that arrives after
its last connection closed waits for a connection of its own. Then the same against the real
bridge, callout and server: a second connection closing, a refused connection claiming to be
the agent, and the agent's own close.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import nats
import pytest
from nats.aio.client import Client as NATS

from bridge.bus.departures import Departures
from bridge.bus.presence import Presence
from bridge.contract.advisories import AdvisoryClient, AdvisoryServer, ConnectionAdvisory
from bridge.contract.messages import PresenceEntry, encode, now_rfc3339
from bridge.contract.names import Names
from tests.agents.support import callout_stack
from tests.callout_support import PASSWORDS
from tests.conftest import wait_for

ACCOUNT = "AGENTS"
CONNECT = "io.nats.server.advisory.v1.client_connect"
DISCONNECT = "io.nats.server.advisory.v1.client_disconnect"


def advisory(
    kind: str, cid: int, user: str = "a1", *, reason: str = "", issuer: str = ACCOUNT
) -> ConnectionAdvisory:
    """An advisory as nats-server 2.15.1 writes it for a connection of `user` (issued by the
    callout when `issuer` is set)."""
    return ConnectionAdvisory(
        type=kind,
        server=AdvisoryServer(id="NSERVER"),
        client=AdvisoryClient(id=cid, acc=ACCOUNT, user=user, name=user, issuer_key=issuer),
        reason=reason,
    )


@pytest.fixture
async def watched(nc: NATS, unique: str) -> AsyncIterator[tuple[Presence, Departures, NATS]]:
    """A presence watch of its own bucket, with departures applied to it, and `a1` on the bus."""
    names = Names(prefix=f"d{unique}", agents_bucket=f"agents_{unique}")
    presence = Presence(nc, names)
    departures = Departures(nc, presence, account=ACCOUNT)
    task = asyncio.create_task(presence.run())
    try:
        await presence.loaded.wait()
        await write(nc, names, "a1")
        await wait_for(lambda: presence.is_present("a1"), what="a1 on the bus")
        yield presence, departures, nc
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


async def write(nc: NATS, names: Names, agent_id: str) -> None:
    kv = await nc.jetstream().key_value(names.presence_bucket)
    await kv.put(agent_id, encode(PresenceEntry(agent_id=agent_id, at=now_rfc3339())))


async def test_the_last_connection_closing_is_a_departure(
    watched: tuple[Presence, Departures, NATS],
) -> None:
    presence, departures, _ = watched
    departures.apply(advisory(CONNECT, 1))
    departures.apply(advisory(CONNECT, 2))
    departures.apply(advisory(DISCONNECT, 1, reason="Client Closed"))
    assert presence.is_present("a1") and departures.connections("a1") == 1
    departures.apply(advisory(DISCONNECT, 2, reason="Read Error"))  # kill -9, a network cut
    assert not presence.is_present("a1") and departures.connections("a1") == 0


async def test_what_is_not_the_agents_own_close_changes_nothing(
    watched: tuple[Presence, Departures, NATS],
) -> None:
    """A refused connection that sent the agent's id as its user (no issuer), an operator of
    the account (a static user), the issued user's expiry (it reconnects at once), a refused
    connection of an issued user, a connection of another account."""
    presence, departures, _ = watched
    departures.apply(advisory(DISCONNECT, 7, reason="Authentication Failure", issuer=""))
    departures.apply(advisory(DISCONNECT, 8, "agents-ops", reason="Client Closed", issuer=""))
    departures.apply(advisory(DISCONNECT, 9, reason="Authentication Expired"))
    departures.apply(advisory(DISCONNECT, 10, reason="Authentication Timeout"))
    other = advisory(DISCONNECT, 11, reason="Client Closed")
    other = ConnectionAdvisory(
        type=other.type,
        server=other.server,
        client=AdvisoryClient(id=11, acc="CHORUS", user="a1", issuer_key="CHORUS"),
        reason=other.reason,
    )
    departures.apply(other)
    assert presence.is_present("a1")


async def test_a_connection_older_than_the_bridge_closing_is_the_last(
    watched: tuple[Presence, Departures, NATS],
) -> None:
    """A connection this bridge never saw connect (it started later) counts when it closes."""
    presence, departures, _ = watched
    departures.apply(advisory(DISCONNECT, 42, reason="Client Closed"))
    assert not presence.is_present("a1")


async def test_a_write_after_the_close_waits_for_a_connection_of_its_own(
    watched: tuple[Presence, Departures, NATS], unique: str
) -> None:
    """A presence write that was on its way when the agent's last connection closed arrives
    after the advisory: it does not put the agent back; the agent's next connection does."""
    presence, departures, nc = watched
    names = Names(prefix=f"d{unique}", agents_bucket=f"agents_{unique}")
    departures.apply(advisory(DISCONNECT, 1, reason="Client Closed"))
    await write(nc, names, "a1")
    await write(nc, names, "b1")  # after a1's in the same bucket: once b1 is in, a1's was seen
    await wait_for(lambda: presence.is_present("b1"), what="the later write")
    assert not presence.is_present("a1")
    departures.apply(advisory(CONNECT, 2))
    assert presence.is_present("a1")


async def _raw_agent(url: str, agent_id: str, *, password: str) -> NATS:
    return await nats.connect(
        url,
        user="agent",
        password=password,
        name=agent_id,
        inbox_prefix=f"_INBOX.{agent_id}",
        max_reconnect_attempts=0,
        allow_reconnect=False,
    )


async def test_against_the_bridge_only_the_agents_last_connection_counts(tmp_path: Path) -> None:
    """The real bridge, callout and server: an agent with two connections stays on the bus when
    one closes; a refused connection naming the agent changes nothing; the last close is seen
    at once (announced), long before the 15 s TTL."""
    async with callout_stack(tmp_path, 2) as stack:
        me, _ = stack.agent_ids
        url, password = stack.server.url, PASSWORDS["AGENT_PASS"]
        first = await _raw_agent(url, me, password=password)
        second = await _raw_agent(url, me, password=password)
        entry = encode(PresenceEntry(agent_id=me, at=now_rfc3339()))
        await first.publish(f"$KV.chorus_presence.{me}", entry)
        await wait_for(lambda: me in stack.on_bus(), timeout=10, what="on the bus")
        departures = stack.bridge.bridge.departures
        assert departures is not None
        await wait_for(lambda: departures.connections(me) == 2, what="both connections seen")
        await second.close()
        with pytest.raises(nats.errors.Error, match="Authorization Violation"):
            await _raw_agent(url, me, password="wrong")
        await wait_for(lambda: departures.connections(me) == 1, what="the close seen")
        await stack.bridge.bridge.nc.flush()
        assert me in stack.on_bus()
        started = asyncio.get_running_loop().time()
        await first.close()
        await wait_for(stack.announced(me, False), timeout=5, what="off the bus")
        assert asyncio.get_running_loop().time() - started < 5
