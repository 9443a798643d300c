"""The agent library's log lines: one per state change, on the standard library's logger
`bridge.agent` (the application configures it; unconfigured, warnings reach stderr), as the
event's name and then `key=value` fields, e.g. `agent_presence_failing agent_id=t1 error=...`.
"""

from __future__ import annotations

import logging

__all__ = ["DEBUG", "INFO", "WARNING", "say"]

log = logging.getLogger("bridge.agent")
DEBUG, INFO, WARNING = logging.DEBUG, logging.INFO, logging.WARNING


def say(level: int, event: str, **fields: object) -> None:
    """Log `event` with its fields at `level`."""
    if log.isEnabledFor(level):
        log.log(level, "%s %s", event, " ".join(f"{key}={value}" for key, value in fields.items()))
