"""Structured logs: one event name and key=value fields; JSON for machines, console for people."""

from __future__ import annotations

import logging
import sys
from typing import Literal

import structlog
from structlog.typing import EventDict, WrappedLogger

from bridge.ops.redact import redact_text

__all__ = ["configure_logging"]


def redact_urls(_logger: WrappedLogger, _method: str, event: EventDict) -> EventDict:
    """No password in a log line: every URL in a string field loses its user info."""
    for key, value in event.items():
        if isinstance(value, str) and "@" in value:
            event[key] = redact_text(value)
    return event


# asyncio's own warning when a TLS connection to NATS closes (nats-py's stream protocol asks to
# keep the transport half-open, which TLS cannot): a line that says nothing to an operator.
_ASYNCIO_NOISE = "returning true from eof_received() has no effect when using ssl"


def _not_noise(record: logging.LogRecord) -> bool:
    return record.getMessage() != _ASYNCIO_NOISE


def configure_logging(fmt: Literal["json", "console"], level: str) -> None:
    """Configure structlog once, at the command's start. Logs go to stderr so that a command's
    own output on stdout (tables, JSON) stays clean."""
    asyncio_log = logging.getLogger("asyncio")
    if _not_noise not in asyncio_log.filters:
        asyncio_log.addFilter(_not_noise)
    renderer: structlog.typing.Processor = (
        structlog.processors.JSONRenderer()
        if fmt == "json"
        else structlog.dev.ConsoleRenderer(colors=sys.stderr.isatty())
    )
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            redact_urls,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.dict_tracebacks if fmt == "json" else structlog.dev.set_exc_info,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(logging.getLevelName(level)),
        logger_factory=structlog.PrintLoggerFactory(file=sys.stderr),
        cache_logger_on_first_use=False,
    )
