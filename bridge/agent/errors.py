"""The agent library's errors: every failure is an AgentError whose message says what happened
and what to do. nats-py's own errors never escape; they are the `__cause__`."""

from __future__ import annotations

__all__ = [
    "AgentError",
    "AgentPermissionError",
    "BadAnswerError",
    "ClosedError",
    "ConnectError",
    "InvalidArgumentError",
    "NoAnswerError",
    "ReplyRefusedError",
]


class AgentError(Exception):
    """Any failure of the agent library."""


class InvalidArgumentError(AgentError, ValueError):
    """A bad argument (an agent id, a prefix, a payload over the server's max payload),
    found before anything was sent."""


class ConnectError(AgentError):
    """NATS could not be reached, or refused the credentials or TLS."""


class AgentPermissionError(AgentError):
    """The NATS server refused a subject to this agent's user (`subject`)."""

    def __init__(self, message: str, subject: str) -> None:
        super().__init__(message)
        self.subject = subject


class NoAnswerError(AgentError):
    """A request got no answer: nobody listens on `subject` (`no_responders`), or none came in
    time."""

    def __init__(self, message: str, subject: str, *, no_responders: bool = False) -> None:
        super().__init__(message)
        self.subject = subject
        self.no_responders = no_responders


class BadAnswerError(AgentError):
    """An answer that is not what the contract says (or the bridge's refusal, `{"error"}`)."""


class ReplyRefusedError(AgentError):
    """`PeerMessage.reply` was refused: the message is no request, or its reply subject is not
    the sender's own inbox for this agent. Nothing was sent."""


class ClosedError(AgentError):
    """The agent has left the bus: its connection is closed."""
