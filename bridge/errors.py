"""Errors of chorus-bridge, under one root.

    BridgeError
     +-- ConfigError (ValueError)     a variable or flag that does not parse; names it and its value
     +-- DockerAPIError               a Docker Engine API call failed; `kind` says how
     +-- NatsError                    NATS could not be reached or a bucket could not be used
     +-- EmbeddedServerError          the embedded nats-server did not start
     +-- BridgeUnavailableError       no bridge answered a request on the bus
     +-- CalloutKeyError              a callout seed or key is not of the kind it must be
     +-- CalloutRequestError          an auth callout request that cannot be trusted or read

Every message says what happened and what to do about it.
"""

from __future__ import annotations

__all__ = [
    "BridgeError",
    "BridgeUnavailableError",
    "CalloutKeyError",
    "CalloutRequestError",
    "ConfigError",
    "DockerAPIError",
    "EmbeddedServerError",
    "NatsError",
]


class BridgeError(Exception):
    """Root of every error chorus-bridge raises on purpose."""


class ConfigError(BridgeError, ValueError):
    """A configuration value that does not parse."""

    def __init__(self, variable: str, value: str, reason: str) -> None:
        self.variable = variable
        self.value = value
        super().__init__(f"{variable}={value!r}: {reason}")


class DockerAPIError(BridgeError):
    """A Docker Engine API call failed.

    `kind` is one of a small fixed set (socket_missing, permission_denied, not_manager,
    service_not_found, server_error, bad_response, timeout, unreachable, api_error), so that
    logs and metrics can tell an outage from a misconfiguration.
    """

    def __init__(self, kind: str, message: str) -> None:
        self.kind = kind
        super().__init__(message)


class NatsError(BridgeError):
    """NATS could not be reached, or a bucket could not be opened."""


class EmbeddedServerError(BridgeError):
    """The embedded nats-server could not be started."""


class BridgeUnavailableError(BridgeError):
    """No chorus-bridge answered a request on the bus."""



class CalloutKeyError(BridgeError):
    """A seed or key of the auth callout is not of the kind it must be (never shows the seed)."""


class CalloutRequestError(BridgeError):
    """An auth callout request that cannot be trusted or read (signature, expiry, sealing)."""
