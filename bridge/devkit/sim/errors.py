"""Errors of the demo tooling, kept out of the bridge's own error hierarchy (bridge/errors.py)."""

from __future__ import annotations

from bridge.errors import BridgeError

__all__ = ["SimulationError"]


class SimulationError(BridgeError):
    """Simulated agents could not be started (addresses, ports, file descriptors).

    A BridgeError, so that `chorus-bridge demo` and `sim-agent` report it in one line as they
    report every other error.
    """
