"""Agent to agent: a request and its reply through the accounts' setup, against a bare request
and reply on one account, in the same run.

nats-callout.conf and `chorus-bridge run` serving the callout; two agents admitted by it, each
a `bridge.agent` BusAgent on a connection of its own: A requests `chorus.agents.B.messages.A`
(its reply subject `_INBOX.A.B.<token>`), B's `messages()` loop answers with `reply()` on A's
inbox, which only B may publish to. Baseline: two bare nats-py connections of the operators'
user in one account (`ops`, CHORUS) on the same server, `nc.request` and a subscription that
answers with `msg.respond`. For reference: the same agents' subjects and reply subjects sent
with bare nats-py connections admitted by the callout (the accounts without the library). A
100-byte payload; the three interleaved, their order rotated each round.

Target: the library's round trip median <= 1.5x the baseline's.

    python bench/agent_messages.py [--quick]
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import tempfile
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import nats
from _agents import agent_ids, stack
from common import Bench, Series, arguments, main, quiet_logs, timed
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg

from bridge.agent import BusAgent, connect_agent
from tests.callout_support import PASSWORDS

PAYLOAD = b"x" * 100
LIMIT_RATIO = 1.5


async def _answering(agent: BusAgent) -> None:
    async for message in agent.messages():
        await message.reply(message.data)


@contextlib.asynccontextmanager
async def library_pair(url: str, a: str, b: str) -> AsyncIterator[Callable[[], Awaitable[object]]]:
    password = PASSWORDS["AGENT_PASS"]
    async with (
        connect_agent(url, a, user="agent", password=password) as asker,
        connect_agent(url, b, user="agent", password=password) as answerer,
    ):
        task = asyncio.create_task(_answering(answerer))
        try:
            yield lambda: asker.request(b, PAYLOAD)
        finally:
            task.cancel()


async def _connect(url: str, user: str, password: str, name: str, inbox: str) -> NATS:
    return await nats.connect(url, user=user, password=password, name=name, inbox_prefix=inbox)


@contextlib.asynccontextmanager
async def bare_pair(
    url: str, user: str, password: str, subject: str, names: tuple[str, str], inbox: str
) -> AsyncIterator[Callable[[], Awaitable[object]]]:
    asker = await _connect(url, user, password, names[0], inbox)
    answerer = await _connect(url, user, password, names[1], f"_INBOX.{names[1]}")

    async def respond(msg: Msg) -> None:
        await answerer.publish(msg.reply, msg.data)  # a plain publish: no allow_responses

    try:
        await answerer.subscribe(subject, cb=respond)
        await answerer.flush()
        yield lambda: asker.request(subject, PAYLOAD, timeout=5)
    finally:
        await asker.close()
        await answerer.close()


async def run() -> int:
    args = arguments(__doc__ or "")
    quiet_logs()
    rounds, warmup = (300, 50) if args.quick else (3000, 200)
    bench = Bench("Agents: request and reply between two agents")
    rows = [
        Series("bridge.agent, AGENTS account, callout"),
        Series("bare nats-py, AGENTS account, callout (reference)"),
        Series("bare nats-py, one account (baseline)"),
    ]
    a, b, c = agent_ids(3)
    with tempfile.TemporaryDirectory(prefix="bench-messages-") as tmp:
        async with stack(Path(tmp), 3, callout=True) as s:
            url, agent_pass = s.server.url, PASSWORDS["AGENT_PASS"]
            async with (
                library_pair(url, a, b) as library,
                # c asks b as the library would: on c's inbox for b's answer
                bare_pair(
                    url,
                    "agent",
                    agent_pass,
                    f"chorus.agents.{c}.messages.{a}",
                    (a, c),
                    f"_INBOX.{a}.{c}",
                ) as agents_bare,
                bare_pair(
                    url,
                    "ops",
                    PASSWORDS["OPS_PASS"],
                    "bench.echo",
                    ("ops-a", "ops-b"),
                    "_INBOX.ops",
                ) as baseline,
            ):
                calls = [library, agents_bare, baseline]
                order = itertools.cycle([[0, 1, 2], [1, 2, 0], [2, 0, 1]])
                for i in range(warmup + rounds):
                    for k in next(order):
                        if i < warmup:
                            await calls[k]()
                        else:
                            await timed(rows[k], calls[k])
    bench.table("round trip", rows, rows[2])
    ratio = rows[0].median / rows[2].median
    bench.target(
        "library round trip <= 1.5x one account's",
        ratio <= LIMIT_RATIO,
        f"{ratio:.2f}x ({rows[0].median * 1e6:.0f} us vs {rows[2].median * 1e6:.0f} us)",
    )
    return bench.exit_code()


if __name__ == "__main__":
    main(run, limit=600)
