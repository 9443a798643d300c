"""The roster with 10,000 agents: a request to `chorus.bridge.agents`, every page read, as an
agent asks it (`BusAgent.peers()`, through the agents' account and the callout) and as a
coordinator does; p95 < 100 ms.

A real nats-server runs nats-callout.conf and `chorus-bridge run` serves the callout in a
process of its own; its 10,000 agents are known endpoints on 127.0.0.1 (bench/_agents.py).
5,000 of them are on the bus, with a role each: their presence entries are written by the
operators' user from a process of its own (bench/_presence_writer.py) every 4 s, so the bridge
follows 1,250 presence writes a second meanwhile. The roster is then about 1 MB: one page of
the server's 1 MB max payload, or two. For reference, in the same run: a bare nats-py request
whose answer is the same bytes, precomputed, from a responder on the same server (what moving
that much costs without building it). The three are interleaved, their order rotated.

    python bench/agent_roster.py [--quick]
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import sys
import tempfile
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import nats
from _agents import agent_ids, stack
from common import BENCH, Bench, Series, arguments, child_process, main, quiet_logs, timed
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg

from bridge.agent import BusAgent, connect_agent
from bridge.contract.roster import ROSTER_NEXT_HEADER
from tests.callout_support import PASSWORDS

AGENTS = 10_000
LIMIT_P95_S = 0.100


async def _user(url: str, user: str, variable: str, inbox: str) -> NATS:
    return await nats.connect(url, user=user, password=PASSWORDS[variable], inbox_prefix=inbox)


async def roster(nc: NATS) -> int:
    """Every page, as a coordinator reads them; the bytes read."""
    size, after = 0, None
    while True:
        body = json.dumps({"after": after}).encode() if after else b""
        msg = await nc.request("chorus.bridge.agents", body, timeout=10)
        size += len(msg.data)
        after = (msg.headers or {}).get(ROSTER_NEXT_HEADER)
        if not after:
            return size


async def _until_on_bus(agent: BusAgent, count: int, timeout: float = 60.0) -> None:
    """The roster shows `count` agents on the bus (presence is synced as it comes)."""
    deadline = asyncio.get_running_loop().time() + timeout
    while sum(p.on_bus for p in await agent.peers()) < count:
        if asyncio.get_running_loop().time() > deadline:
            raise TimeoutError(f"{count} agents not on the bus within {timeout:.0f} s")
        await asyncio.sleep(0.2)


async def run() -> int:
    args = arguments(__doc__ or "")
    quiet_logs()
    rounds, warmup = (30, 5) if args.quick else (300, 20)
    bench = Bench("Agents: the roster of 10,000 agents")
    rows = [
        Series("agent: BusAgent.peers(), every page"),
        Series("coordinator: chorus.bridge.agents, every page"),
        Series("bare request, the same bytes precomputed (reference)"),
    ]
    ids = agent_ids(AGENTS)
    with tempfile.TemporaryDirectory(prefix="bench-roster-") as tmp:
        async with (
            stack(Path(tmp), AGENTS, callout=True) as s,
            contextlib.AsyncExitStack() as opened,
        ):
            url = s.server.url
            writer = [sys.executable, str(BENCH / "_presence_writer.py"), url]
            present = await opened.enter_async_context(
                child_process("presence", [*writer, PASSWORDS["OPS_PASS"], *ids[::2]])
            )
            await present.line("writing", timeout=30)
            ops = await _user(url, "ops", "OPS_PASS", "_INBOX.ops")
            asker = await _user(url, "ops", "OPS_PASS", "_INBOX.ops")
            opened.push_async_callback(ops.close)
            opened.push_async_callback(asker.close)
            agent = await opened.enter_async_context(
                connect_agent(url, ids[1], user="agent", password=PASSWORDS["AGENT_PASS"])
            )
            await _until_on_bus(agent, AGENTS // 2)
            size = await roster(s.coordinator)
            body = b"x" * size

            async def echo(msg: Msg) -> None:
                await ops.publish(msg.reply, body)

            await ops.subscribe("bench.roster", cb=echo)
            await ops.flush()
            calls: list[Callable[[], Awaitable[Any]]] = [
                agent.peers,
                lambda: roster(s.coordinator),
                lambda: asker.request("bench.roster", b"", timeout=10),
            ]
            order = itertools.cycle([[0, 1, 2], [1, 2, 0], [2, 0, 1]])
            for i in range(warmup + rounds):
                for k in next(order):
                    await (calls[k]() if i < warmup else timed(rows[k], calls[k]))
    bench.info("roster", f"{AGENTS} agents, {AGENTS // 2} on the bus, {size / 1e6:.2f} MB")
    bench.table("the whole roster", rows, rows[2])
    for row in rows[:2]:
        bench.target(
            f"{row.name.split(':')[0]}'s roster p95 < 100 ms",
            row.p95 < LIMIT_P95_S,
            f"p95 {row.p95 * 1000:.1f} ms",
        )
    return bench.exit_code()


if __name__ == "__main__":
    main(run, limit=900)
