"""A message from a peer, received on `<prefix>.agents.<self>.messages.<sender>` (DESIGN.md,
"Agents on the bus"). The sender is the subject's last token, which the NATS server enforces in
the callout mode; what the message says about its sender counts for nothing."""

from __future__ import annotations

import dataclasses
from collections.abc import Awaitable, Callable
from typing import Any

from bridge.agent.errors import ReplyRefusedError
from bridge.agent.wire import is_reply_for

__all__ = ["PeerMessage", "Reply"]


@dataclasses.dataclass(frozen=True)
class Reply:
    """A peer's answer to a request: its bytes."""

    data: bytes

    def text(self) -> str:
        """The data as text (invalid UTF-8 replaced)."""
        return self.data.decode(errors="replace")


@dataclasses.dataclass(frozen=True)
class PeerMessage:
    """A message another agent sent to this one: `sender` (from the subject), `data`, and
    `reply_to`, the sender's inbox when it asks for an answer (a request), else None."""

    sender: str
    recipient: str
    subject: str
    data: bytes
    reply_to: str | None
    _respond: Callable[[str, bytes], Awaitable[Any]] = dataclasses.field(repr=False)

    def text(self) -> str:
        """The data as text (invalid UTF-8 replaced)."""
        return self.data.decode(errors="replace")

    async def reply(self, data: bytes | str) -> None:
        """Answer a request, on the sender's own inbox only (`_INBOX.<sender>.<self>.…`): a
        reply subject anywhere else could make this agent publish where the asker chose.

        Raises ReplyRefusedError (not a request, or not the sender's inbox: nothing is sent),
        InvalidArgumentError (over the server's max payload), ClosedError."""
        if self.reply_to is None:
            raise ReplyRefusedError(
                f"the message from {self.sender} on {self.subject} is no request: nothing to answer"
            )
        if not is_reply_for(self.reply_to, self.sender, self.recipient):
            raise ReplyRefusedError(
                f"the message from {self.sender} asks for an answer on {self.reply_to[:200]}, "
                f"which is not its inbox (_INBOX.{self.sender}.{self.recipient}.…): not answered"
            )
        await self._respond(self.reply_to, data.encode() if isinstance(data, str) else data)
