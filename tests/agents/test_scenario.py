"""Both agent libraries, the same scenario, against the real bridge and nats-server in the
callout mode (nats-callout.conf): join, ack, a claim granted and one refused, peers, a message
both ways, a forged sender refused, another agent's messages unreadable, a leave on SIGTERM;
and kill -9, seen at once.

Each agent runs in a process of its own: tests/agents/scenario_agent.py (bridge.agent) or
agent-ts/test/scenario-agent.ts (@chorus-bridge/agent), driven by the same steps here.
"""

from __future__ import annotations

import asyncio
import signal
from pathlib import Path

import pytest

from bridge.contract.messages import CouncilOpportunity, Role, decode_reply, encode
from tests.agents.support import (
    LIBRARIES,
    NAMES,
    Stack,
    agent_process,
    build_ts,
    callout_stack,
)
from tests.callout_support import user
from tests.conftest import wait_for

pytestmark = pytest.mark.timeout(180)

OPPORTUNITY = CouncilOpportunity(
    id="council-agents", roles=[Role(name="tpm", core=True), Role(name="qa-engineer")]
)


@pytest.fixture(scope="session")
def ts_built() -> None:
    build_ts()


@pytest.fixture(params=LIBRARIES)
def library(request: pytest.FixtureRequest) -> str:
    if request.param == "ts":
        request.getfixturevalue("ts_built")
    return str(request.param)


async def _last_presence_operation(stack: Stack, agent_id: str) -> str | None:
    """The KV operation of the agent's last presence message (None: a put), read as ops."""
    ops = await user(stack.server, "ops", "OPS_PASS")
    try:
        js = ops.jetstream(timeout=5)
        msg = await js.get_last_msg(
            f"KV_{NAMES.presence_bucket}", f"$KV.{NAMES.presence_bucket}.{agent_id}"
        )
        return (msg.headers or {}).get("KV-Operation")
    finally:
        await ops.close()


async def test_the_scenario(library: str, tmp_path: Path) -> None:
    async with callout_stack(tmp_path, 3) as stack:
        me, peer, absent = stack.agent_ids
        async with (
            agent_process(library, stack.server, me, roles="tpm") as a,
            agent_process(library, stack.server, peer, roles="qa-engineer") as b,
        ):
            # join: both on the bus, announced so
            await wait_for(lambda: {me, peer} <= stack.on_bus(), timeout=10, what="on the bus")
            assert stack.announced(me, True)() and stack.announced(peer, True)()

            # ack: the broadcast reaches both on the bus, and only the absent one by HTTP
            answer = await stack.coordinator.request(
                NAMES.broadcast, encode(OPPORTUNITY), timeout=20
            )
            report = decode_reply(answer.data)
            assert not hasattr(report, "error"), report
            assert (report.total_agents, report.via_bus, report.via_http) == (3, 2, 0)
            assert [f.agent_id for f in report.failed] == [absent]
            for agent in (a, b):
                await agent.line(lambda line: line.get("event") == "opportunity")

            # a claim granted, and the same role refused to another
            granted = await a.do(do="claim", opportunity=OPPORTUNITY.id, role="tpm")
            assert granted["answer"] == {
                "granted": True,
                "role": "tpm",
                "reason": None,
                "holder": me,
            }
            refused = await b.do(do="claim", opportunity=OPPORTUNITY.id, role="tpm")
            assert refused["answer"] == {
                "granted": False,
                "role": "tpm",
                "reason": "taken",
                "holder": me,
            }

            # peers: the roster, with roles from presence, no endpoints or addresses
            peers = (await a.do(do="peers"))["peers"]
            assert {p["id"]: (p["on_bus"], p["source"], p["roles"]) for p in peers} == {
                me: (True, "static", ["tpm"]),
                peer: (True, "static", ["qa-engineer"]),
                absent: (False, "static", []),
            }
            assert all(set(p) == {"id", "on_bus", "healthy", "source", "roles"} for p in peers)

            # a message both ways: a request answered on the sender's inbox, and a publish
            asked = await a.do(do="request", to=peer, data="ping")
            assert asked == {"did": "request", "reply": "pong:ping"}
            heard = await b.line(lambda line: line.get("event") == "message")
            assert (heard["sender"], heard["data"], heard["request"]) == (me, "ping", True)
            await b.do(do="send", to=me, data="hello")
            heard = await a.line(lambda line: line.get("event") == "message")
            assert (heard["sender"], heard["data"], heard["request"]) == (peer, "hello", False)

            # a forged sender refused by the server; another's messages unreadable
            forged = await a.do(do="forge", to=peer, **{"as": absent})
            assert "permissions violation" in (forged["error"] or "").lower(), forged
            snooped = await a.do(do="snoop", of=peer)
            assert "permissions violation" in (snooped["error"] or "").lower(), snooped
            await a.do(do="send", to=peer, data="after")
            await b.line(lambda line: line.get("data") == "after")
            senders = [line["sender"] for line in b.lines if line.get("event") == "message"]
            assert absent not in senders  # nothing arrived as the forged sender

            # SIGTERM: a clean leave (a DEL, at once), exit status 0, no traceback
            status, stderr = await a.stop(signal.SIGTERM)
            assert status == 0, stderr
            assert "Traceback" not in stderr and "Error" not in stderr.split("agent_left")[0], (
                stderr
            )
            await wait_for(stack.announced(me, False), timeout=5, what="the leave announced")
            assert await _last_presence_operation(stack, me) == "DEL"
            assert peer in stack.on_bus()


async def test_kill_9_is_seen_at_once_and_a_new_write_puts_the_agent_back(
    library: str, tmp_path: Path
) -> None:
    """kill -9 of an agent: the server's advisory of its last connection closing marks it off
    the bus (announced `updated`, on_bus false) well before its entry's 15 s TTL; the agent
    started again is on the bus with its first presence write."""
    async with callout_stack(tmp_path, 2) as stack:
        me, _ = stack.agent_ids
        async with agent_process(library, stack.server, me) as agent:
            await wait_for(lambda: me in stack.on_bus(), timeout=10, what="on the bus")
            loop = asyncio.get_running_loop()
            killed = loop.time()
            agent.proc.send_signal(signal.SIGKILL)
            await wait_for(stack.announced(me, False), timeout=14, what="off the bus")
            took = loop.time() - killed
        assert took < 5, f"{took:.2f} s: the presence TTL (15 s), not the advisory"
        assert await _last_presence_operation(stack, me) is None  # no leave was written
        stack.announcements.clear()
        async with agent_process(library, stack.server, me):
            await wait_for(stack.announced(me, True), timeout=10, what="back on the bus")
