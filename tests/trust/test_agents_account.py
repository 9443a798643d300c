"""The AGENTS account (docs/trust-design.md) on a real nats-server running the shipped
configuration, in the open mode and with the bridge's callout: what agents need still works,
by the routes the design gives it, and nothing more.

- the bridge's answers reach the asking agent's inbox, and only by the bridge's route;
- roster requests reach the bridge apart from the coordinators' micro endpoint;
- messages among agents stay in AGENTS, and with the callout each agent reads only its own
  inbox and messages and sends only as itself;
- presence is stored without an answer, and one agent's write cannot roll the bucket up;
- the bridge hears an agent's last connection close.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import nats
import pytest
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg

from bridge.contract.buckets import MAX_PRESENCE_BYTES
from bridge.edges.nats_server import EmbeddedNats
from bridge.trust.callout import AGENT_ACCOUNT
from tests.callout_client import RawClient
from tests.callout_support import PASSWORDS
from tests.conftest import wait_for
from tests.trust.support import (
    ATTACKER,
    HEARD_WAIT,
    NAMES,
    OPPORTUNITY_ID,
    THIRD,
    VARIANTS,
    VICTIM,
    Variant,
    agent_connection,
    bridge_client,
    make_buckets,
    serving_callout,
    shipped_server,
    until_heard,
)

QUEUE = "chorus-bridge"
ROSTER_FROM_AGENTS = f"{NAMES.roster}.from_agents"
PRESENCE_KEY = f"$KV.{NAMES.presence_bucket}"
QUIET = 0.5  # seconds a subscription must stay silent where nothing may arrive


@dataclasses.dataclass
class Bus:
    variant: Variant
    server: EmbeddedNats
    bridge: NATS

    def agent(self, agent_id: str) -> contextlib.AbstractAsyncContextManager[RawClient]:
        return agent_connection(self.server, agent_id, callout=self.variant.callout)


@pytest.fixture(params=VARIANTS, ids=lambda v: v.name)
async def bus(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Bus]:
    variant: Variant = request.param
    async with contextlib.AsyncExitStack() as stack:
        server = await stack.enter_async_context(shipped_server(tmp_path, callout=variant.callout))
        nc = await bridge_client(server)
        stack.push_async_callback(nc.close)
        await make_buckets(nc)
        if variant.callout:
            await stack.enter_async_context(serving_callout(nc, tmp_path / "keys"))
        yield Bus(variant, server, nc)


async def _ops(server: EmbeddedNats, account: str) -> NATS:
    user = {"CHORUS": "ops", "AGENTS": "agents-ops"}[account]
    return await nats.connect(
        server.url, user=user, password=PASSWORDS["OPS_PASS"], max_reconnect_attempts=1
    )


async def _nothing(client: RawClient, sid: int) -> None:
    """Nothing arrives on `sid` within QUIET seconds (after a round trip to the server)."""
    await client.sync()
    with pytest.raises(TimeoutError):
        await client.next_msg(sid, timeout=QUIET)


async def _answering(
    nc: NATS, subject: str, agent_of: Callable[[Msg], str], body: bytes
) -> list[Msg]:
    """A responder in the bridge's account that answers as the bridge must: on
    `Names.answer_subject` of the agent `agent_of` names, never on `msg.reply`."""
    received: list[Msg] = []

    async def answer(msg: Msg) -> None:
        received.append(msg)
        route = NAMES.answer_subject(agent_of(msg), msg.reply)
        if route is not None:
            await nc.publish(route, body)

    await nc.subscribe(subject, queue=QUEUE, cb=answer)
    await nc.flush()
    return received


async def test_agents_have_no_jetstream(bus: Bus) -> None:
    """AGENTS has no JetStream: even its unrestricted operator gets "not enabled" back."""
    nc = await _ops(bus.server, "AGENTS")
    try:
        reply = await nc.request("$JS.API.INFO", b"", timeout=5)
    finally:
        await nc.close()
    assert json.loads(reply.data)["error"]["err_code"] == 10039  # JetStream not enabled


async def test_a_claim_is_answered_on_the_claiming_agents_inbox_only(bus: Bus) -> None:
    """A claim sent as a request arrives in CHORUS with the reply subject the agent named; the
    bridge's answer, published on its route, reaches that inbox in AGENTS. A claim whose reply
    subject is not the claimer's own inbox gets no answer at all."""
    claims = await _answering(
        bus.bridge,
        NAMES.claims("*", "*"),
        lambda msg: msg.subject.rsplit(".", 1)[1],
        b'{"granted": true, "role": "tpm"}',
    )
    claim, reply = NAMES.claims(OPPORTUNITY_ID, ATTACKER), f"_INBOX.{ATTACKER}.claim.1"
    async with bus.agent(ATTACKER) as agent:
        inbox = await agent.subscribe(f"_INBOX.{ATTACKER}.>")
        answer = await until_heard(
            lambda: agent.publish(claim, b'{"role": "tpm"}', reply=reply),
            lambda: agent.next_msg(inbox, timeout=HEARD_WAIT),
        )
        assert answer == (reply, b'{"granted": true, "role": "tpm"}')
        assert {(m.subject, m.reply) for m in claims} == {(claim, reply)}
        others = {f"_INBOX.{VICTIM}.claim.2", f"$KV.{NAMES.leader_bucket}.leader", "_INBOX.x"}
        for other in others:
            await agent.publish(claim, b'{"role": "tpm"}', reply=other)
        await wait_for(lambda: others <= {m.reply for m in claims}, what="the claims heard")
        await _nothing(agent, inbox)
        assert await agent.sync() == []


async def test_the_roster_request_reaches_the_bridge_apart_from_coordinators(bus: Bus) -> None:
    """An agent's roster request reaches the bridge on its own subject (the micro endpoint
    for coordinators on chorus.bridge.agents never sees it) and the answer comes back on the
    asker's inbox."""
    from_agents = await _answering(
        bus.bridge,
        ROSTER_FROM_AGENTS,
        lambda msg: msg.reply.split(".")[1] if msg.reply.startswith("_INBOX.") else "",
        b'[{"id": "a1"}]',
    )
    from_coordinators = await bus.bridge.subscribe(NAMES.roster, queue=QUEUE)
    await bus.bridge.flush()
    reply = f"_INBOX.{ATTACKER}.r1"
    async with bus.agent(ATTACKER) as agent:
        inbox = await agent.subscribe(f"_INBOX.{ATTACKER}.>")
        answer = await until_heard(
            lambda: agent.publish(NAMES.roster, reply=reply),
            lambda: agent.next_msg(inbox, timeout=HEARD_WAIT),
        )
    assert answer == (reply, b'[{"id": "a1"}]')
    assert {m.reply for m in from_agents} == {reply}
    with pytest.raises(nats.errors.TimeoutError):
        await from_coordinators.next_msg(timeout=QUIET)


async def test_answers_are_read_only_on_the_inbox_they_are_for(bus: Bus) -> None:
    """The route lands an answer on `_INBOX.<id>....` only. With the callout, another agent
    cannot even subscribe there; with the one shared user of the open mode it can."""
    async with bus.agent(ATTACKER) as owner, bus.agent(VICTIM) as other:
        mine = await owner.subscribe(f"_INBOX.{ATTACKER}.>")
        theirs = await other.subscribe(f"_INBOX.{ATTACKER}.>")
        refused = await other.sync()
        await owner.sync()
        await bus.bridge.publish(f"{NAMES.prefix}.bridge.answers.{ATTACKER}.x.1", b"answer")
        assert await owner.next_msg(mine) == (f"_INBOX.{ATTACKER}.x.1", b"answer")
        if bus.variant.callout:
            assert refused == [f'Permissions Violation for Subscription to "_INBOX.{ATTACKER}.>"']
            await _nothing(other, theirs)
        else:
            assert refused == []
            assert await other.next_msg(theirs) == (f"_INBOX.{ATTACKER}.x.1", b"answer")


async def test_messages_stay_among_agents(bus: Bus) -> None:
    """A message reaches its recipient, and a reply on the sender's inbox reaches the sender;
    nothing of either is in CHORUS. With the callout the server holds each to its own id: no
    message as another sender, no reply under another's id, no reading another's messages."""
    ops = await _ops(bus.server, "CHORUS")
    leaked = await ops.subscribe(NAMES.messages("*", "*"))
    await until_heard(  # the listener hears a message there before it may hear none
        lambda: ops.publish(NAMES.messages("x", "y"), b"control"),
        lambda: leaked.next_msg(timeout=HEARD_WAIT),
    )
    to_victim, reply = NAMES.messages(VICTIM, ATTACKER), f"_INBOX.{ATTACKER}.{VICTIM}.m1"
    forged = NAMES.messages(VICTIM, THIRD)
    try:
        async with bus.agent(ATTACKER) as sender, bus.agent(VICTIM) as recipient:
            inbox = await sender.subscribe(f"_INBOX.{ATTACKER}.>")
            messages = await recipient.subscribe(NAMES.messages(VICTIM, "*"))
            await sender.sync()
            await recipient.sync()
            await sender.publish(to_victim, b"hello", reply=reply)
            assert await recipient.next_msg(messages) == (to_victim, b"hello")
            await recipient.publish(reply, b"hello back")
            assert await sender.next_msg(inbox) == (reply, b"hello back")
            await sender.publish(forged, b"forged")
            await recipient.publish(f"_INBOX.{ATTACKER}.{THIRD}.m2", b"forged reply")
            snoop = await sender.subscribe(NAMES.messages(VICTIM, "*"))
            if bus.variant.callout:
                assert await sender.sync() == [
                    f'Permissions Violation for Publish to "{forged}"',
                    f'Permissions Violation for Subscription to "{NAMES.messages(VICTIM, "*")}"',
                ]
                assert await recipient.sync() == [
                    f'Permissions Violation for Publish to "_INBOX.{ATTACKER}.{THIRD}.m2"'
                ]
                await _nothing(recipient, messages)
                await _nothing(sender, snoop)
        with pytest.raises(nats.errors.TimeoutError):
            await leaked.next_msg(timeout=QUIET)
    finally:
        await ops.close()


async def _presence(bus: Bus) -> Callable[[str], Awaitable[bytes | None]]:
    kv = await bus.bridge.jetstream(timeout=5).key_value(NAMES.presence_bucket)

    async def value(key: str) -> bytes | None:
        try:
            return (await kv.get(key)).value
        except nats.js.errors.KeyNotFoundError:
            return None

    return value


async def test_presence_is_stored_without_an_answer_and_cannot_be_rolled_up(bus: Bus) -> None:
    """An agent's presence write lands in the bucket and answers nothing to anyone; a rollup
    of the whole bucket, a TTL of its own choosing and a value over 4 KiB are refused (and
    answered to no one either); a DEL takes its own entry away and nothing else. With the
    callout it cannot write another agent's key; the shared user of the open mode can."""
    value = await _presence(bus)
    entry = b'{"agent_id": "%s"}'
    mine, theirs = f"{PRESENCE_KEY}.{ATTACKER}", f"{PRESENCE_KEY}.{VICTIM}"

    async def both_present() -> bool:
        return bool(await value(ATTACKER)) and bool(await value(VICTIM))

    async def mine_gone() -> bool:
        return await value(ATTACKER) is None

    async with bus.agent(VICTIM) as victim, bus.agent(ATTACKER) as agent:
        inbox = await agent.subscribe(f"_INBOX.{ATTACKER}.>")
        await victim.publish(theirs, entry % VICTIM.encode())
        await agent.publish(mine, entry % ATTACKER.encode(), reply=f"_INBOX.{ATTACKER}.p")
        await wait_for(both_present, what="both entries in the bucket")
        for headers in ({"Nats-Rollup": "all"}, {"Nats-TTL": "1"}):
            await agent.hpublish(mine, headers, b"{}", reply=f"_INBOX.{ATTACKER}.p")
        too_large = b"x" * (MAX_PRESENCE_BYTES + 1)
        await agent.publish(mine, too_large, reply=f"_INBOX.{ATTACKER}.p")
        await _nothing(agent, inbox)
        # After the refused writes in the same stream: when the DEL shows, they were handled.
        await agent.hpublish(mine, {"KV-Operation": "DEL"})
        await wait_for(mine_gone, what="the agent's own entry deleted")
        assert await value(VICTIM) == entry % VICTIM.encode()
        await agent.publish(theirs, b"{}")
        if bus.variant.callout:
            assert await agent.sync() == [f'Permissions Violation for Publish to "{theirs}"']
        else:  # one shared user: the open mode's known limit

            async def overwritten() -> bool:
                return await value(VICTIM) == b"{}"

            await wait_for(overwritten, what="the victim's entry overwritten")


async def test_the_bridge_hears_an_agents_connection_close(bus: Bus) -> None:
    """The server's connect and disconnect advisories for AGENTS reach the bridge's user in
    CHORUS. They name the connection by server and client id, its address and the name it
    gave; its `user` is, with the callout, the name of the user the callout issued (the agent
    id, whatever the connection calls itself) with that user's account as `issuer_key`, and in
    the open mode the static `agent` user, without one (docs/trust-design.md)."""
    # Two subscriptions: the bridge may subscribe to each subject, not to a wildcard of both.
    events: asyncio.Queue[Msg] = asyncio.Queue()

    async def heard(msg: Msg) -> None:
        events.put_nowait(msg)

    for kind in ("CONNECT", "DISCONNECT"):
        await bus.bridge.subscribe(f"$SYS.ACCOUNT.AGENTS.{kind}", cb=heard)
    await bus.bridge.flush()
    sources: list[str] = []

    async def come_and_go() -> None:
        async with bus.agent(ATTACKER) as agent:
            await agent.sync()
            sources.append(agent.source)

    connects: list[dict[str, Any]] = []

    async def closed() -> Msg:
        # A connection the callout did not admit yet (its watch still loading) is refused:
        # its advisory, "Authentication ...", is not this one.
        while True:
            async with asyncio.timeout(HEARD_WAIT * 5):
                msg = await events.get()
            event = json.loads(msg.data)
            if msg.subject.endswith(".CONNECT"):
                connects.append(event)
            elif event.get("reason") == "Client Closed":
                return msg

    msg = await until_heard(come_and_go, closed)
    event = json.loads(msg.data)
    client = event["client"]
    assert (client["acc"], client["host"], client["name"]) == (AGENT_ACCOUNT, sources[-1], ATTACKER)
    assert isinstance(client["id"], int) and event["server"]["id"]
    if bus.variant.callout:
        assert (client["user"], client["issuer_key"]) == (ATTACKER, AGENT_ACCOUNT)
    else:
        assert client["user"] == "agent" and "issuer_key" not in client
    # Its connect advisory came first, naming it the same way.
    connected = [(c["server"]["id"], c["client"]["id"], c["client"]["user"]) for c in connects]
    assert (event["server"]["id"], client["id"], client["user"]) in connected
