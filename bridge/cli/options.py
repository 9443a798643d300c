"""The command line's options: the flags of `run` and `demo` that override the settings'
environment variables, and the client commands' flags (`agents`, `watch`, `broadcast`,
`council`)."""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any, TypeVar

import click
import structlog

from bridge.cli.exits import fail
from bridge.config import Settings
from bridge.environment import load_settings, unknown_variables
from bridge.errors import BridgeError, ConfigError
from bridge.ops.logs import configure_logging

__all__ = ["build_settings", "client_options", "client_settings", "setting_flags"]

F = TypeVar("F", bound=Callable[..., Any])

# Flags of `run` (and `demo`), each overriding the environment variable it names.
_SETTING_FLAGS: tuple[tuple[str, str, str], ...] = (
    ("--method", "DISCOVERY_METHOD", "swarm, dns or auto (default auto)."),
    ("--docker-host", "WHOOSH_DOCKER_HOST", "Docker Engine address (unix:// or tcp://)."),
    ("--service", "WHOOSH_SERVICE_NAME", "Swarm service whose tasks are the agents."),
    ("--network", "WHOOSH_NETWORK_NAME", "Network(s) of the agent's address, comma-separated."),
    ("--agent-port", "WHOOSH_AGENT_PORT", "The agents' HTTP port."),
    ("--dns-names", "WHOOSH_DNS_NAMES", "Names resolved by the DNS fallback ({service} expands)."),
    ("--known-endpoints", "WHOOSH_KNOWN_ENDPOINTS", "http://host:port agents always included."),
    ("--nats-url", "NATS_URL", "NATS server; unset: start an embedded one."),
    ("--prefix", "BRIDGE_SUBJECT_PREFIX", "First token of every subject."),
    ("--bucket", "BRIDGE_KV_BUCKET", "The agents bucket."),
    ("--poll-interval", "BRIDGE_POLL_INTERVAL", "Seconds between rounds if nothing triggers one."),
    ("--listen", "BRIDGE_LISTEN", "HOST:PORT of /healthz and /metrics."),
    ("--log-format", "BRIDGE_LOG_FORMAT", "json or console."),
    ("--log-level", "BRIDGE_LOG_LEVEL", "debug, info, warning or error."),
)


_FLAG_OF = {variable: flag for flag, variable, _text in _SETTING_FLAGS}


def setting_flags(func: F) -> F:
    """Add the flags of _SETTING_FLAGS to a command."""
    for flag, variable, text in reversed(_SETTING_FLAGS):
        func = click.option(
            flag, variable.lower(), default=None, metavar="VALUE", help=f"{text} [env {variable}]"
        )(func)
    return func


def build_settings(flags: dict[str, Any], **defaults: str) -> Settings:
    """Settings from the environment, then `defaults` (the command's own), then the flags."""
    overrides = {k.upper(): str(v) for k, v in flags.items() if v is not None}
    environ = {**defaults, **os.environ} if defaults else dict(os.environ)
    try:
        settings = load_settings(environ, overrides)
    except ConfigError as exc:
        # A value given as a flag is named as the flag the user typed.
        flag = _FLAG_OF.get(exc.variable) if exc.variable in overrides else None
        fail(ConfigError(flag, exc.value, exc.reason) if flag else exc)
    except BridgeError as exc:
        fail(exc)
    configure_logging(settings.log_format, settings.log_level)
    for name in unknown_variables(environ):
        structlog.get_logger(__name__).warning(
            "config_unknown_variable",
            variable=name,
            hint="not a chorus-bridge setting (a typo?); it is ignored",
        )
    return settings


def client_settings(nats_url: str | None, prefix: str | None, bucket: str | None) -> Settings:
    """The settings of a client command: console logs at warning unless set otherwise."""
    flags = {"nats_url": nats_url, "bridge_subject_prefix": prefix, "bridge_kv_bucket": bucket}
    return build_settings(flags, BRIDGE_LOG_FORMAT="console", BRIDGE_LOG_LEVEL="warning")


def client_options(func: F) -> F:
    """Add the client commands' flags: --nats-url, --prefix, --bucket, --inbox-prefix."""
    func = click.option(
        "--inbox-prefix",
        default=None,
        help="Inbox prefix of the NATS user (default: _INBOX.agent for user "
        "agent, _INBOX.bridge for bridge, else _INBOX.coord).",
    )(func)
    func = click.option("--bucket", default=None, help="The agents bucket [env BRIDGE_KV_BUCKET].")(
        func
    )
    func = click.option(
        "--prefix", default=None, help="Subject prefix [env BRIDGE_SUBJECT_PREFIX]."
    )(func)
    return click.option(
        "--nats-url",
        default=None,
        help="NATS server [env NATS_URL, default nats://127.0.0.1:4222].",
    )(func)
