"""The NATS servers the callout serves: the only ones whose requests it answers.

A server signs its callout requests with its own key, which it makes anew at each start, so no
list can be configured: the bridge asks the cluster. `$SYS.REQ.SERVER.PING.IDZ` (exported by
SYS to the bridge's account, nats.conf) is answered by every server with its id; the ids heard
are the servers this bridge serves. A request signed by a key not heard yet (a server that
has just restarted) makes the bridge ask again (one question in flight, at most one per
ASK_INTERVAL), and is answered once its server answered too. A request signed by any other
key, a server of another cluster or a key made up by whoever may publish on
`$SYS.REQ.USER.AUTH`, is refused.
"""

from __future__ import annotations

import asyncio
import contextlib
import time

import msgspec
import nats.errors
import structlog
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg

__all__ = ["IDZ_SUBJECT", "KnownServers"]

log = structlog.get_logger(__name__)

IDZ_SUBJECT = "$SYS.REQ.SERVER.PING.IDZ"
# How long a question waits for the servers' answers (they answer within milliseconds; the
# question ends sooner when the server asked about answers).
GATHER = 0.5
# At most one question per this many seconds (a stream of requests signed by unknown keys
# must not become a stream of questions).
ASK_INTERVAL = 1.0
# Ids kept (each restart of a server adds one).
MAX_SERVERS = 256


class _Idz(msgspec.Struct):
    id: str
    name: str = ""


_IDZ = msgspec.json.Decoder(_Idz)


class KnownServers:
    """The ids of the servers of the cluster; `knows(id)` asks the cluster when needed."""

    def __init__(self, nc: NATS) -> None:
        self._nc = nc
        self._ids: dict[str, str] = {}  # id -> name
        # Set while a question is out, for whoever else waits on its answers.
        self._asking: asyncio.Event | None = None
        self._asked_at = -ASK_INTERVAL
        self._failing = False

    def __contains__(self, server_id: str) -> bool:
        return server_id in self._ids

    async def knows(self, server_id: str) -> bool:
        """Whether `server_id` is a server of the cluster, asking the cluster if not known."""
        if server_id in self._ids:
            return True
        if self._asking is not None:
            await self._asking.wait()
        elif time.monotonic() - self._asked_at >= ASK_INTERVAL:
            await self.ask(server_id)
        return server_id in self._ids

    async def ask(self, wanted: str | None = None) -> None:
        """Ask every server for its id; done after GATHER seconds, or once `wanted` answered."""
        self._asked_at = time.monotonic()
        heard, self._asking = asyncio.Event(), asyncio.Event()

        async def on_answer(msg: Msg) -> None:
            try:
                idz = _IDZ.decode(msg.data)
            except msgspec.DecodeError:
                return
            if idz.id not in self._ids and len(self._ids) >= MAX_SERVERS:
                self._ids.pop(next(iter(self._ids)))
            self._ids[idz.id] = idz.name
            if idz.id == wanted:
                heard.set()

        try:
            inbox = self._nc.new_inbox()
            sub = await self._nc.subscribe(inbox, cb=on_answer)
            try:
                await self._nc.publish(IDZ_SUBJECT, b"", reply=inbox)
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(GATHER):
                        await heard.wait()
            finally:
                with contextlib.suppress(nats.errors.Error):
                    await sub.unsubscribe()
        except (nats.errors.Error, OSError) as exc:
            self._say(f"{exc!r}")
        else:
            self._say("" if self._ids else "no server answered")
        finally:
            self._asking.set()
            self._asking = None

    def _say(self, failure: str) -> None:
        if failure and not self._failing:
            log.error(
                "callout_servers_unlisted",
                subject=IDZ_SUBJECT,
                error=failure,
                effect="requests of servers not listed yet are refused",
                hint="nats.conf must export $SYS.REQ.SERVER.PING.IDZ to the bridge's account",
            )
        elif not failure and self._failing:
            log.info("callout_servers_listed", servers=len(self._ids))
        self._failing = bool(failure)
