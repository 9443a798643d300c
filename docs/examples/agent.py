"""A CHORUS agent on the bus, with the agent library (bridge.agent): it acks every council
opportunity, claims the first of its roles a council offers, answers its peers, and leaves
cleanly on SIGTERM (what `docker stop` sends) or Ctrl-C.

    NATS_URL=nats://nats:4222 AGENT_ID=<task id> AGENT_PASS=... AGENT_ROLES=tpm python agent.py
"""

import asyncio
import os

from bridge.agent import BusAgent, connect_agent, run

ROLES = [role for role in os.environ.get("AGENT_ROLES", "").split(",") if role]


async def answer_peers(agent: BusAgent) -> None:
    async for message in agent.messages():  # the sender comes from the subject
        if message.reply_to is not None:
            await message.reply(f"{agent.id} read: {message.text()}")


async def main() -> None:
    async with connect_agent(
        os.environ.get("NATS_URL", "nats://127.0.0.1:4222"),
        os.environ["AGENT_ID"],  # in a Swarm stack: {{.Task.ID}}
        user="agent",
        password=os.environ["AGENT_PASS"],
        tls_ca=os.environ.get("NATS_TLS_CA"),  # the CA of the server's certificate, if TLS
        roles=ROLES,
    ) as agent:
        peers = await agent.peers()
        print(f"joined as {agent.id}: {sum(p.on_bus for p in peers)} on the bus", flush=True)
        async with asyncio.TaskGroup() as tasks:
            tasks.create_task(answer_peers(agent))
            async for opportunity in agent.opportunities():
                await agent.ack(opportunity.id)  # within 1 s, or it also comes by HTTP
                offered = [role.name for role in opportunity.roles if role.name in ROLES]
                for role in offered:
                    answer = await agent.claim(opportunity.id, role)
                    print(f"{opportunity.id} {role}: {answer.reason or 'granted'}", flush=True)
                    if answer.granted:
                        break


run(main)  # SIGTERM, SIGINT: the agent leaves the bus (its presence deleted), exit status 0
