"""The agent's inbox: one subscription, `_INBOX.<agent id>.*.*`, where every answer it asked for
arrives (DESIGN.md, "Trust"; docs/trust-design.md).

A request names its reply subject here, not nats-py: `_INBOX.<self>.<recipient>.<token>` for a
request to a peer (with the auth callout, only that peer may publish there: its answer carries
its sender as a message does) and `_INBOX.<self>.<mux>.<token>` for the bridge's answers (a
claim, the roster), where `<mux>` is a random token no agent id will be. Each answer is matched
to its request by the whole subject; anything else that arrives is dropped.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
from collections.abc import AsyncIterator

import nats.errors
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.nuid import NUID

from bridge.agent.errors import AgentError, ClosedError, InvalidArgumentError, NoAnswerError
from bridge.agent.wire import inbox_prefix

__all__ = ["Inbox", "publish"]

# nats-py's header of a status message: a request nobody listens to is answered 503.
_STATUS = "Status"
_NO_RESPONDERS = "503"


class Inbox:
    """Requests whose answers come on this agent's inbox, while `open()` is entered."""

    def __init__(self, nc: NATS, agent_id: str) -> None:
        self._nc = nc
        self._prefix = inbox_prefix(agent_id)
        self._mux = NUID().next().decode()
        self._tokens = itertools.count(1)
        self._waiting: dict[str, asyncio.Future[Msg]] = {}

    @contextlib.asynccontextmanager
    async def open(self) -> AsyncIterator[None]:
        """Subscribe to the inbox for as long as the context is open."""
        sub = await self._nc.subscribe(f"{self._prefix}.*.*", cb=self._arrived)
        try:
            yield
        finally:
            with contextlib.suppress(nats.errors.Error, OSError):
                await sub.unsubscribe()
            for waiting in self._waiting.values():
                waiting.cancel()

    async def request(
        self,
        subject: str,
        data: bytes,
        *,
        timeout: float,
        peer: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> Msg:
        """Publish `data` on `subject` with a reply subject on this inbox (for `peer`'s answer,
        or the bridge's) and return the first answer.

        Raises NoAnswerError (nobody listens: at once; else after `timeout` seconds),
        InvalidArgumentError (over the server's max payload), ClosedError."""
        reply = f"{self._prefix}.{peer or self._mux}.{self._mux}{next(self._tokens)}"
        answer: asyncio.Future[Msg] = asyncio.get_running_loop().create_future()
        self._waiting[reply] = answer
        try:
            await publish(self._nc, subject, data, reply=reply, headers=headers)
            try:
                async with asyncio.timeout(timeout):
                    msg = await answer
            except TimeoutError:
                raise NoAnswerError(
                    f"no answer on {subject} within {timeout:g} s", subject
                ) from None
        finally:
            self._waiting.pop(reply, None)
        if msg.headers and msg.headers.get(_STATUS) == _NO_RESPONDERS:
            raise NoAnswerError(f"nobody listens on {subject}", subject, no_responders=True)
        return msg

    async def _arrived(self, msg: Msg) -> None:
        waiting = self._waiting.pop(msg.subject, None)
        if waiting is not None and not waiting.done():
            waiting.set_result(msg)


async def publish(
    nc: NATS,
    subject: str,
    data: bytes,
    *,
    reply: str = "",
    headers: dict[str, str] | None = None,
) -> None:
    """nats-py's publish, its errors ours: InvalidArgumentError (over the server's max
    payload, a bad subject), ClosedError (the connection is closed), AgentError."""
    try:
        await nc.publish(subject, data, reply=reply, headers=headers)
    except nats.errors.MaxPayloadError as exc:
        raise InvalidArgumentError(
            f"{len(data)} bytes on {subject} is over the server's max payload "
            f"({nc.max_payload} bytes)"
        ) from exc
    except nats.errors.BadSubjectError as exc:
        raise InvalidArgumentError(f"cannot publish on {subject!r}: not a subject") from exc
    except (nats.errors.ConnectionClosedError, nats.errors.ConnectionDrainingError) as exc:
        raise ClosedError("the agent has left the bus (its NATS connection is closed)") from exc
    except (nats.errors.Error, OSError) as exc:
        raise AgentError(f"cannot publish on {subject}: {exc!r}") from exc
