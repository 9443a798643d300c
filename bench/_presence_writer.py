"""A process that keeps agents on the bus for a benchmark: it writes their presence entries as
the operators' user of the bridge's account, every 4 s (the TTL is 15 s), until its stdin
closes. Arguments: the NATS URL, the ops password, then the agent ids."""

from __future__ import annotations

import asyncio
import sys

import nats

from bridge.contract.messages import PresenceEntry, encode, now_rfc3339

INTERVAL = 4.0


async def main(url: str, password: str, ids: list[str]) -> None:
    nc = await nats.connect(url, user="ops", password=password)
    loop = asyncio.get_running_loop()
    stdin = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(stdin), sys.stdin)
    closed = asyncio.ensure_future(stdin.read())
    print("writing", flush=True)
    while not closed.done():
        for agent_id in ids:
            entry = PresenceEntry(agent_id=agent_id, roles=["qa-engineer"], at=now_rfc3339())
            await nc.publish(f"$KV.chorus_presence.{agent_id}", encode(entry))
        await nc.flush()
        await asyncio.wait({closed}, timeout=INTERVAL)
    await nc.close()


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], sys.argv[2], sys.argv[3:]))
