"""One agent of the libraries' shared scenario, written with `bridge.agent` (Python); its twin
is agent-ts/test/scenario-agent.ts. The test (tests/agents/test_scenario.py) drives it: one
JSON command a line on stdin, one JSON line on stdout per thing done or received.

Environment: NATS_URL, AGENT_ID, AGENT_USER, AGENT_PASSWORD, AGENT_ROLES (comma-separated),
BRIDGE_SUBJECT_PREFIX. On its own it acks every opportunity and answers every request with
`pong:<data>`. Commands: claim, peers, send, request, forge (publish as another agent on a raw
connection of its own), snoop (subscribe to another agent's messages on one). SIGTERM and
SIGINT: the library leaves (its presence deleted) and the process exits 0.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import sys
from typing import Any

import nats
import nats.errors

from bridge.agent import BusAgent, PeerMessage, connect_agent, run
from bridge.agent.errors import AgentError


def say(**fields: Any) -> None:
    print(json.dumps(fields), flush=True)


async def opportunities(agent: BusAgent) -> None:
    async for opportunity in agent.opportunities():
        await agent.ack(opportunity.id)
        say(event="opportunity", id=opportunity.id)


async def messages(agent: BusAgent) -> None:
    async for message in agent.messages():
        say(
            event="message",
            sender=message.sender,
            data=message.text(),
            request=message.reply_to is not None,
        )
        if message.reply_to is not None:
            await answer(message)


async def answer(message: PeerMessage) -> None:
    try:
        await message.reply(f"pong:{message.text()}")
    except AgentError as exc:
        say(event="reply_refused", error=str(exc))


async def raw_attempt(subject: str, *, subscribe: bool) -> str | None:
    """A second connection of this agent (same credentials and name) publishes on, or
    subscribes to, `subject`: the server's refusal, or None when none came within 2 s (the
    server's -ERR can come after the PONG of the flush that follows: waited for, bounded)."""
    errors: list[str] = []
    refused = asyncio.Event()

    async def on_error(exc: Exception) -> None:
        errors.append(str(exc))
        refused.set()

    nc = await nats.connect(
        os.environ["NATS_URL"],
        name=os.environ["AGENT_ID"],
        user=os.environ["AGENT_USER"],
        password=os.environ["AGENT_PASSWORD"],
        error_cb=on_error,
        inbox_prefix=f"_INBOX.{os.environ['AGENT_ID']}",
        max_reconnect_attempts=1,
    )
    try:
        if subscribe:
            sub = await nc.subscribe(subject)
        else:
            await nc.publish(subject, b"forged")
        await nc.flush()
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(2):
                await refused.wait()
        if subscribe and not errors and sub.pending_msgs:
            errors.append("received")  # nothing may arrive there
    finally:
        await nc.close()
    return errors[0] if errors else None


async def command(agent: BusAgent, line: dict[str, Any]) -> None:
    do = line["do"]
    try:
        if do == "claim":
            answer = await agent.claim(line["opportunity"], line["role"])
            say(
                did=do,
                answer={
                    "granted": answer.granted,
                    "role": answer.role,
                    "reason": answer.reason,
                    "holder": answer.holder,
                },
            )
        elif do == "peers":
            peers = await agent.peers()
            say(
                did=do,
                peers=[
                    {
                        "id": p.id,
                        "on_bus": p.on_bus,
                        "healthy": p.healthy,
                        "source": p.source,
                        "roles": list(p.roles),
                    }
                    for p in peers
                ],
            )
        elif do == "send":
            await agent.send(line["to"], line["data"])
            say(did=do)
        elif do == "request":
            reply = await agent.request(line["to"], line["data"])
            say(did=do, reply=reply.text())
        elif do == "forge":
            subject = agent.names.messages(line["to"], line["as"])
            say(did=do, error=await raw_attempt(subject, subscribe=False))
        elif do == "snoop":
            subject = agent.names.messages(line["of"], "*")
            say(did=do, error=await raw_attempt(subject, subscribe=True))
        else:
            say(did=do, error=f"unknown command {do!r}")
    except AgentError as exc:
        say(did=do, error=str(exc), kind=type(exc).__name__)


async def commands(agent: BusAgent) -> None:
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    while line := await reader.readline():
        await command(agent, json.loads(line))


async def main() -> None:
    roles = [r for r in os.environ.get("AGENT_ROLES", "").split(",") if r]
    async with connect_agent(
        os.environ["NATS_URL"],
        os.environ["AGENT_ID"],
        prefix=os.environ.get("BRIDGE_SUBJECT_PREFIX", "chorus"),
        user=os.environ["AGENT_USER"],
        password=os.environ["AGENT_PASSWORD"],
        roles=roles,
    ) as agent:
        say(event="joined", id=agent.id)
        async with asyncio.TaskGroup() as tg:
            tg.create_task(opportunities(agent))
            tg.create_task(messages(agent))
            tg.create_task(commands(agent))


if __name__ == "__main__":
    run(main)
