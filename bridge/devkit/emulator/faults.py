"""The failures an emulated engine can answer with, switched on by a test.

A switch holds one mode and the paths it applies to. The swarm has one (every node answers
with it: a swarm that lost quorum) and each served node has its own (one manager locked, one
proxy refusing a call); a node's own switch wins.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Literal, get_args

__all__ = ["ERROR_MODES", "ErrorMode", "FaultSwitch"]

# not_manager: the recorded 503 of an engine outside any swarm; swarm_locked, manager_preparing:
# Docker's 503s of a locked swarm and of a manager not ready; no_leader: the 500 of a manager
# whose swarm lost quorum; forbidden: the docker-api proxy's 403 page; service_not_found,
# server_error: 404 and 500; bad_json: half the body; hang: no answer until switched off;
# close: the answer ends at once (an /events stream closed as soon as it is opened).
ErrorMode = Literal[
    "not_manager",
    "swarm_locked",
    "manager_preparing",
    "no_leader",
    "forbidden",
    "service_not_found",
    "server_error",
    "bad_json",
    "hang",
    "close",
]
ERROR_MODES: tuple[str, ...] = get_args(ErrorMode)


class FaultSwitch:
    """One failure mode and the paths (without version prefix) it applies to."""

    def __init__(self, on_change: Callable[[], None]) -> None:
        self._mode: ErrorMode | None = None
        self.paths: frozenset[str] | None = frozenset({"/tasks"})
        self._on_change = on_change

    @property
    def mode(self) -> ErrorMode | None:
        return self._mode

    @mode.setter
    def mode(self, mode: ErrorMode | None) -> None:
        if mode is not None and mode not in ERROR_MODES:
            raise ValueError(f"unknown error mode {mode!r}; use one of {ERROR_MODES} or None")
        self._mode = mode
        self._on_change()

    def set(self, mode: ErrorMode | None, paths: Iterable[str] | None = ("/tasks",)) -> None:
        """Make the paths (None: every path) fail with `mode` (None: answer normally)."""
        self.paths = None if paths is None else frozenset(paths)
        self.mode = mode

    def for_path(self, path: str) -> ErrorMode | None:
        """The failure a request to `path` gets, if any."""
        if self._mode is None or (self.paths is not None and path not in self.paths):
            return None
        return self._mode
