"""A CHORUS agent on the bus with nothing but a NATS client (nats-py here): presence, acks, a
claim and the council's answer, a clean leave. Any NATS client does the same.

    NATS_URL=nats://nats:4222 AGENT_ID=<task id> AGENT_PASS=... python plain_nats_agent.py
"""

import asyncio
import contextlib
import datetime
import json
import os
import signal

import nats
from nats.aio.msg import Msg

ME = os.environ["AGENT_ID"]
ROLE = os.environ.get("AGENT_ROLE", "tpm")
PRESENCE = f"$KV.chorus_presence.{ME}"  # its own key; written with a plain publish


def now() -> str:
    return datetime.datetime.now(datetime.UTC).isoformat().replace("+00:00", "Z")


async def main() -> None:
    nc = await nats.connect(
        os.environ.get("NATS_URL", "nats://127.0.0.1:4222"),
        user="agent",
        password=os.environ["AGENT_PASS"],
        name=ME,  # the agent id: the callout tells agents at one address apart by it
        inbox_prefix=f"_INBOX.{ME}",  # the only inbox it may read, where answers come
    )

    async def on_opportunity(msg: Msg) -> None:
        opportunity = json.loads(msg.data)
        council = opportunity["id"]
        ack = {"agent_id": ME, "opportunity_id": council}
        await nc.publish(f"chorus.council.{council}.acks.{ME}", json.dumps(ack).encode())
        if any(role["name"] == ROLE for role in opportunity["roles"]):
            claim = json.dumps({"role": ROLE, "agent_id": ME}).encode()
            answer = await nc.request(f"chorus.council.{council}.claims.{ME}", claim, timeout=5)
            print(json.loads(answer.data), flush=True)  # {"granted": ..., "role", "holder"}

    await nc.subscribe("chorus.council.opportunities", cb=on_opportunity)
    stop = asyncio.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        asyncio.get_running_loop().add_signal_handler(signum, stop.set)
    entry = {"agent_id": ME, "task_id": ME, "endpoint": None, "roles": [ROLE]}
    print(f"joined as {ME}", flush=True)
    while not stop.is_set():  # at least every 5 s: 15 s without a write is absence
        await nc.publish(PRESENCE, json.dumps({**entry, "at": now()}).encode())
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), timeout=5)
    await nc.publish(PRESENCE, b"", headers={"KV-Operation": "DEL"})  # leave: a delete
    await nc.drain()


asyncio.run(main())
