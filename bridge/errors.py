"""Errors of chorus-bridge, under one root.

    BridgeError
     +-- ConfigError (ValueError)     a variable or flag that does not parse; names it and its value
     +-- DockerAPIError               a Docker Engine API call failed; `kind` says how
     +-- NatsError                    NATS could not be reached or a bucket could not be used
     |    +-- BucketMissingError       the bucket's stream is gone ("no stream")
     |    +-- WrongRevisionError       a write raced another one (expected revision)
     |    +-- WriteRefusedError        the server refused a write (its own text)
     |    +-- BucketSettingsError      a bucket's setting would lose or refuse records
     +-- LeaseLostError               this bridge is no longer the leader
     +-- CouncilRefusedError          an opportunity whose id is recorded with other roles
     +-- EmbeddedServerError          the embedded nats-server did not start
     +-- BridgeUnavailableError       no bridge answered a request on the bus
     +-- AgentHTTPError               an HTTP call to an agent got no answer; `reason` says why
     +-- CalloutKeyError              a callout seed or key is not of the kind it must be
     +-- CalloutRequestError          an auth callout request that cannot be trusted or read

Every message says what happened and what to do about it.
"""

from __future__ import annotations

__all__ = [
    "AgentHTTPError",
    "BridgeError",
    "BridgeUnavailableError",
    "BucketMissingError",
    "BucketSettingsError",
    "CalloutKeyError",
    "CalloutRequestError",
    "ConfigError",
    "CouncilRefusedError",
    "DockerAPIError",
    "EmbeddedServerError",
    "LeaseLostError",
    "NatsError",
    "WriteRefusedError",
    "WrongRevisionError",
]


class BridgeError(Exception):
    """Root of every error chorus-bridge raises on purpose."""


class ConfigError(BridgeError, ValueError):
    """A configuration value that does not parse."""

    def __init__(self, variable: str, value: str, reason: str) -> None:
        self.variable = variable
        self.value = value
        self.reason = reason
        super().__init__(f"{variable}={value!r}: {reason}")


class DockerAPIError(BridgeError):
    """A Docker Engine API call failed.

    `kind` is one of a small fixed set (socket_missing, permission_denied, not_manager,
    swarm_locked, manager_not_ready, no_leader, forbidden, service_not_found, server_error,
    bad_response, timeout, unreachable, api_error), so that logs and metrics can tell an
    outage from a misconfiguration.
    """

    def __init__(self, kind: str, message: str) -> None:
        self.kind = kind
        super().__init__(message)


class NatsError(BridgeError):
    """NATS could not be reached, or a bucket could not be opened."""


class CouncilRefusedError(BridgeError):
    """An opportunity cannot be recorded: its id is recorded already, with other roles or
    another deadline (a council is one opportunity; a new one needs a new id)."""


class EmbeddedServerError(BridgeError):
    """The embedded nats-server could not be started."""


class BridgeUnavailableError(BridgeError):
    """No chorus-bridge answered a request on the bus."""


class BucketMissingError(NatsError):
    """The bucket's stream is gone (a NATS restart that lost it, an operator's delete)."""


class WrongRevisionError(NatsError):
    """A write expected another revision of the key: someone else wrote it meanwhile."""


class WriteRefusedError(NatsError):
    """The server refused a write; the message carries the server's own text."""


class BucketSettingsError(NatsError):
    """An existing bucket has a setting that would lose or refuse records; `setting` names it."""

    def __init__(self, setting: str, message: str) -> None:
        self.setting = setting
        super().__init__(message)


class LeaseLostError(BridgeError):
    """This bridge no longer holds the leader lease: it must not write the agents bucket."""


class AgentHTTPError(BridgeError):
    """An HTTP call to an agent failed before a status came back (or while reading the body).

    `reason` is short and fixed in form ("timeout", "connection refused", "connection reset",
    "connection failed: <os text>", "not an endpoint: ..."), fit for a report's `error`;
    `retryable` is true when no answer came at all, so one more attempt is worth it.
    """

    def __init__(self, reason: str, *, retryable: bool) -> None:
        self.reason = reason
        self.retryable = retryable
        super().__init__(reason)


class CalloutKeyError(BridgeError):
    """A seed or key of the auth callout is not of the kind it must be (never shows the seed)."""


class CalloutRequestError(BridgeError):
    """An auth callout request that cannot be trusted or read (signature, expiry, sealing)."""
