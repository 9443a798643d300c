"""The vehicle matrix (DESIGN.md, "Trust"): no call an agent can make, JetStream or core, gets
the server or the bridge to put a message on a subject the agent could not publish itself.

For every call, the agent names each target as the reply subject (or, for a push consumer, as
the deliver subject, or as a message trace's destination): the lease key, another agent's
presence key, ack, claim and message subjects, the announce, opportunities and broadcast
subjects. Operators listen on all of them in the bridge's account and in AGENTS; the listener
is shown to hear every one of them first (the positive control, which also measures the
bound), and again after each call. A call fails the test when anything arrives on a target
within the bound.

Real nats-server, the shipped nats.conf and nats-callout.conf, the buckets made by the
bridge's own code, agents as the static `agent` user or admitted by the bridge's own callout.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
from collections.abc import AsyncIterator

import pytest
import pytest_asyncio

from tests.callout_client import RawClient
from tests.trust.support import (
    ATTACKER,
    BOUND_FACTOR,
    BOUND_FLOOR,
    NAMES,
    OPPORTUNITY_ID,
    ROOT,
    THIRD,
    VARIANTS,
    VICTIM,
    Listener,
    Seen,
    Variant,
    agent_connection,
    bridge_client,
    has_agents_account,
    make_buckets,
    serving_callout,
    shipped_server,
)

pytestmark = pytest.mark.asyncio(loop_scope="module")

AGENTS_STREAM = f"KV_{NAMES.agents_bucket}"
PRESENCE_STREAM = f"KV_{NAMES.presence_bucket}"
LEASE_STREAM = f"KV_{NAMES.leader_bucket}"
STREAMS = (AGENTS_STREAM, PRESENCE_STREAM, LEASE_STREAM)
TARGETS = {
    "lease key": f"$KV.{NAMES.leader_bucket}.leader",
    "victim's presence key": f"$KV.{NAMES.presence_bucket}.{VICTIM}",
    "victim's ack": NAMES.acks(OPPORTUNITY_ID, VICTIM),
    "victim's claim": NAMES.claims(OPPORTUNITY_ID, VICTIM),
    "announce": NAMES.announce,
    "opportunities": NAMES.opportunities,
    "broadcast": NAMES.broadcast,
    "victim's messages": f"{NAMES.prefix}.agents.{VICTIM}.messages.{THIRD}",
}
# Where the victim's presence key arrives in the bridge's account (nats.conf's import).
VICTIM_PRESENCE_IN = f"{NAMES.prefix}.presence.in.{VICTIM}"
# Targets the shared `agent` user may publish itself (open mode has no identity): a trace
# event there is what a direct publish does, no vehicle.
OWN_IN_OPEN_MODE = {"victim's presence key", "victim's ack", "victim's claim", "victim's messages"}
OWN_INBOX = f"_INBOX.{ATTACKER}.own"


def _consumer(stream: str, deliver: str) -> bytes:
    """An ephemeral push consumer's create request, heartbeating so it delivers at once."""
    config = {
        "deliver_subject": deliver,
        "deliver_policy": "all",
        "ack_policy": "none",
        "idle_heartbeat": 100_000_000,  # the least the server takes
        "inactive_threshold": 5_000_000_000,
    }
    return json.dumps({"stream_name": stream, "config": config}).encode()


@dataclasses.dataclass(frozen=True)
class Call:
    """One call: a publish on `subject` naming the target as its reply subject (or, with
    `push_stream`, as the deliver subject of a push consumer on that stream; with `trace`, as
    Nats-Trace-Dest).
    `arrives`: where the call itself shows when the server lets it through."""

    name: str
    subject: str
    body: bytes = b""
    headers: dict[str, str] | None = None
    push_stream: str | None = None
    trace: bool = False
    arrives: tuple[str, ...] = ()

    async def make(self, agent: RawClient, target: str) -> None:
        if self.push_stream is not None:
            await agent.publish(self.subject, _consumer(self.push_stream, target), reply=OWN_INBOX)
        elif self.trace:
            await agent.hpublish(self.subject, {"Nats-Trace-Dest": target}, self.body)
        elif self.headers:
            await agent.hpublish(self.subject, self.headers, self.body, reply=target)
        else:
            await agent.publish(self.subject, self.body, reply=target)


PRESENCE_KEY = f"$KV.{NAMES.presence_bucket}.{ATTACKER}"
PRESENCE_ARRIVES = (PRESENCE_KEY, f"{NAMES.prefix}.presence.in.{ATTACKER}")
PRESENCE = json.dumps({"agent_id": ATTACKER, "roles": [], "at": "2026-01-01T00:00:00Z"}).encode()
ACK = NAMES.acks(OPPORTUNITY_ID, ATTACKER)
CLAIM = NAMES.claims(OPPORTUNITY_ID, ATTACKER)
TO_VICTIM = f"{NAMES.prefix}.agents.{VICTIM}.messages.{ATTACKER}"
VICTIM_INBOX = f"_INBOX.{VICTIM}.{ATTACKER}.r1"
CALLS = (
    Call("jetstream info", "$JS.API.INFO"),
    Call("stream info, agents", f"$JS.API.STREAM.INFO.{AGENTS_STREAM}"),
    Call("stream info, presence", f"$JS.API.STREAM.INFO.{PRESENCE_STREAM}"),
    Call("stream info, lease", f"$JS.API.STREAM.INFO.{LEASE_STREAM}"),
    Call("stream names", "$JS.API.STREAM.NAMES"),
    Call("stream list", "$JS.API.STREAM.LIST"),
    Call(
        "message get",
        f"$JS.API.STREAM.MSG.GET.{AGENTS_STREAM}",
        json.dumps({"last_by_subj": f"$KV.{NAMES.agents_bucket}.{VICTIM}"}).encode(),
    ),
    Call("direct get", f"$JS.API.DIRECT.GET.{AGENTS_STREAM}.$KV.{NAMES.agents_bucket}.{VICTIM}"),
    Call(
        "consumer create",
        f"$JS.API.CONSUMER.CREATE.{AGENTS_STREAM}",
        _consumer(AGENTS_STREAM, OWN_INBOX),
    ),
    Call("consumer info", f"$JS.API.CONSUMER.INFO.{AGENTS_STREAM}.none"),
    Call("consumer delete", f"$JS.API.CONSUMER.DELETE.{AGENTS_STREAM}.none"),
    Call(
        "push consumer, agents",
        f"$JS.API.CONSUMER.CREATE.{AGENTS_STREAM}",
        push_stream=AGENTS_STREAM,
    ),
    Call(
        "push consumer, presence",
        f"$JS.API.CONSUMER.CREATE.{PRESENCE_STREAM}",
        push_stream=PRESENCE_STREAM,
    ),
    Call("presence write", PRESENCE_KEY, PRESENCE, arrives=PRESENCE_ARRIVES),
    Call(
        "presence write the stream refuses",
        PRESENCE_KEY,
        PRESENCE,
        headers={"Nats-Expected-Last-Subject-Sequence": "999999"},
        arrives=PRESENCE_ARRIVES,
    ),
    Call("presence write too large", PRESENCE_KEY, b"x" * 5000, arrives=PRESENCE_ARRIVES),
    Call("system: user info", "$SYS.REQ.USER.INFO"),
    Call("system: account connections", "$SYS.REQ.ACCOUNT.PING.CONNZ"),
    Call("system: server ping", "$SYS.REQ.SERVER.PING"),
    Call(
        "ack",
        ACK,
        json.dumps({"agent_id": ATTACKER, "opportunity_id": OPPORTUNITY_ID}).encode(),
        arrives=(ACK,),
    ),
    Call(
        "claim", CLAIM, json.dumps({"role": "tpm", "agent_id": ATTACKER}).encode(), arrives=(CLAIM,)
    ),
    Call(
        "roster request",
        f"{NAMES.prefix}.bridge.agents",
        arrives=(f"{NAMES.prefix}.bridge.agents", f"{NAMES.prefix}.bridge.agents.from_agents"),
    ),
    Call("message to a peer", TO_VICTIM, b"hello", arrives=(TO_VICTIM,)),
    Call("reply into a peer's inbox", VICTIM_INBOX, b"answer", arrives=(VICTIM_INBOX,)),
    # Nobody listens there: with no-responders on, the server answers a 503 status itself.
    Call("request nobody answers", f"{NAMES.prefix}.agents.nobody.messages.{ATTACKER}"),
    Call("message trace", ACK, b"{}", trace=True, arrives=(ACK,)),
)
ARRIVALS = sorted({subject for call in CALLS for subject in call.arrives})
LEAK_SUBJECTS = {*TARGETS.values(), VICTIM_PRESENCE_IN}


@dataclasses.dataclass
class Bus:
    variant: Variant
    listener: Listener
    attacker: RawClient
    bound: float
    watched: dict[str, list[str]]


@pytest_asyncio.fixture(scope="module", loop_scope="module", params=VARIANTS, ids=lambda v: v.name)
async def bus(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[Bus]:
    """A server of one variant, listened to, the attacker connected as an agent."""
    variant: Variant = request.param
    directory = tmp_path_factory.mktemp(variant.name)
    async with contextlib.AsyncExitStack() as stack:
        server = await stack.enter_async_context(shipped_server(directory, callout=variant.callout))
        nc = await bridge_client(server)
        stack.push_async_callback(nc.close)
        await make_buckets(nc)
        if variant.callout:
            await stack.enter_async_context(serving_callout(nc, directory / "keys"))
        listener = Listener()
        stack.push_async_callback(listener.close)
        accounts = {"CHORUS": "ops"}
        if has_agents_account(ROOT / "nats.conf"):
            accounts["AGENTS"] = "agents-ops"
        await listener.connect(server, accounts)
        watched = {
            "CHORUS": [*LEAK_SUBJECTS, *ARRIVALS],
            "AGENTS": [*TARGETS.values(), *ARRIVALS],
        }
        for account, subjects in watched.items():
            await listener.watch(account, subjects)
        await listener.control(watched, fresh=True)
        took = await listener.control(watched)
        bound = max(BOUND_FLOOR, BOUND_FACTOR * took)
        print(
            f"{variant.name}: the listener heard every subject in {took * 1000:.1f} ms; "
            f"bound {bound * 1000:.0f} ms"
        )
        attacker = await stack.enter_async_context(
            agent_connection(server, ATTACKER, callout=variant.callout)
        )
        yield Bus(variant, listener, attacker, bound, watched)


def _targets(call: Call, variant: Variant) -> dict[str, str]:
    if call.trace and not variant.callout:
        return {name: s for name, s in TARGETS.items() if name not in OWN_IN_OPEN_MODE}
    return TARGETS


def _describe(seen: list[Seen]) -> str:
    return "; ".join(f"{s.account} {s.subject}: {s.data[:80]!r}" for s in seen)


@pytest.mark.parametrize("call", CALLS, ids=lambda c: c.name.replace(" ", "-"))
async def test_no_answer_lands_where_the_agent_could_not_publish(bus: Bus, call: Call) -> None:
    """The call, once per target: nothing arrives on any target within the bound, and the
    call was either refused or seen where it goes."""
    listener = bus.listener
    mark = len(listener.seen)
    targets = _targets(call, bus.variant)
    try:
        for target in targets.values():
            await call.make(bus.attacker, target)
        # PING/PONG: the server has handled every publish above (and said which it refused).
        errors = await bus.attacker.sync()
        # What no message may do is arrive: give it the whole bound, which the positive
        # control showed is many times what the listener needs.
        await asyncio.sleep(bus.bound)
        heard = listener.seen[mark:]
    finally:
        await listener.delete_consumers(STREAMS, {*LEAK_SUBJECTS, OWN_INBOX})
    await listener.control(bus.watched)  # the listener still hears every subject
    leaks = [s for s in heard if s.subject in LEAK_SUBJECTS]
    # A trace whose destination the agent may not publish to is refused, naming it.
    named = {call.subject, *(targets.values() if call.trace else ())}
    refused = any(f'"{subject}"'.lower() in e.lower() for e in errors for subject in named)
    arrived = [s for s in heard if s.subject in call.arrives]
    assert not leaks, f"{call.name} put messages on targets: {_describe(leaks)}"
    if call.arrives:
        assert refused or arrived, f"{call.name} was neither refused nor seen ({errors})"
    print(
        f"{bus.variant.name} / {call.name}: {len(targets)} targets, "
        f"{'refused' if refused else 'let through'}, nothing on a target in "
        f"{bus.bound * 1000:.0f} ms"
    )
