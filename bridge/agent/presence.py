"""The agent's presence entry (DESIGN.md, "The bus"): written at once, then every interval and
at once after each reconnection, until the leave deletes it.

Each write is a plain publish on `$KV.<prefix>_presence.<agent id>` with no reply subject: in
the agents' account nothing answers it (an ack would go wherever the writer says: DESIGN.md,
"Trust"), so the agent sees itself on the bus in its `updated` announcement. The leave is the
same subject with `KV-Operation: DEL` (a purge is a rollup, which the server refuses).
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

import nats.errors
from nats.aio.client import Client as NATS

from bridge.agent.connection import Events
from bridge.agent.errors import AgentError, InvalidArgumentError
from bridge.agent.inbox import publish
from bridge.agent.logs import INFO, WARNING, say
from bridge.agent.wire import LEAVE_HEADERS, presence_subject
from bridge.contract.buckets import MAX_PRESENCE_BYTES, PRESENCE_INTERVAL
from bridge.contract.messages import PresenceEntry, encode, now_rfc3339
from bridge.contract.names import Names

__all__ = ["PresenceWriter"]


# Seconds the leave's delete may take to reach the server.
LEAVE_TIMEOUT = 2


class PresenceWriter:
    """Writes one agent's presence entry while `run()` runs."""

    def __init__(
        self,
        nc: NATS,
        names: Names,
        agent_id: str,
        events: Events,
        *,
        task_id: str | None,
        endpoint: str | None,
        roles: Sequence[str],
        interval: float = PRESENCE_INTERVAL,
    ) -> None:
        if not 0 < interval <= PRESENCE_INTERVAL:
            raise InvalidArgumentError(
                f"presence interval {interval!r} s: use more than 0 and at most "
                f"{PRESENCE_INTERVAL:g} (an entry not rewritten for 15 s is absence)"
            )
        self._nc, self._events, self._interval = nc, events, interval
        self._subject = presence_subject(names, agent_id)
        self._fields = (agent_id, task_id, endpoint, list(roles))
        self._failing = False
        if len(self._value()) > MAX_PRESENCE_BYTES:
            raise InvalidArgumentError(
                f"the presence entry of agent {agent_id} is over the {MAX_PRESENCE_BYTES} "
                "bytes the presence bucket takes: use fewer or shorter roles"
            )

    def _value(self) -> bytes:
        agent_id, task_id, endpoint, roles = self._fields
        entry = PresenceEntry(
            agent_id=agent_id, task_id=task_id, endpoint=endpoint, roles=roles, at=now_rfc3339()
        )
        return encode(entry)

    async def write(self) -> None:
        """Write the entry now (AgentError when it cannot be sent)."""
        await publish(self._nc, self._subject, self._value())

    async def run(self) -> None:
        """Write every interval, and at once after a reconnection, until cancelled; a write
        that fails is said once and tried again at the next tick."""
        while True:
            task = asyncio.current_task()
            if task is not None and task.cancelling():
                raise asyncio.CancelledError  # a stop some call swallowed
            reconnected = asyncio.ensure_future(self._events.reconnected.wait())
            try:
                await asyncio.wait({reconnected}, timeout=self._interval)
            finally:
                reconnected.cancel()
            self._events.reconnected.clear()
            try:
                await self.write()
            except AgentError as exc:
                self._set_failing(True, str(exc))
            else:
                self._set_failing(False)

    def _set_failing(self, failing: bool, error: str = "") -> None:
        if failing == self._failing:
            return
        self._failing = failing
        agent_id = self._fields[0]
        if failing:
            say(WARNING, "agent_presence_failing", agent_id=agent_id, error=error)
        else:
            say(INFO, "agent_presence_recovered", agent_id=agent_id)

    async def delete(self) -> bool:
        """The leave: delete the entry (a DEL), and make sure the server has it (bounded).
        Whether it was sent; when not (not connected), the entry expires with the TTL."""
        agent_id = self._fields[0]
        if not self._nc.is_connected:
            say(WARNING, "agent_presence_not_deleted", agent_id=agent_id, reason="not connected")
            return False
        try:
            await self._nc.publish(self._subject, b"", headers=dict(LEAVE_HEADERS))
            await self._nc.flush(timeout=LEAVE_TIMEOUT)
        except (nats.errors.Error, OSError) as exc:
            say(WARNING, "agent_presence_not_deleted", agent_id=agent_id, error=repr(exc))
            return False
        return True
