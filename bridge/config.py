"""Settings: one immutable object, built once from the environment and the command's flags.

This is the only module that reads environment variables; everything else gets a `Settings`
passed down. A value that does not parse raises `ConfigError`, whose message names the
variable and the value, so the command can stop with one clear line.
"""

from __future__ import annotations

import dataclasses
import logging
import re
from collections.abc import Callable, Mapping
from typing import Literal, TypeVar, cast, get_args
from urllib.parse import urlsplit

from bridge.errors import ConfigError

__all__ = ["ENV_VARIABLES", "DiscoveryMethod", "Settings", "load_settings"]

DiscoveryMethod = Literal["swarm", "dns", "auto"]
LogFormat = Literal["json", "console"]

# Docker API calls are bounded so that a hung daemon cannot freeze discovery.
DOCKER_CALL_TIMEOUT = 10.0

_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off", ""}
_BUCKET_RE = re.compile(r"^[A-Za-z0-9_-]+$")
_TOKEN_RE = re.compile(r"^[A-Za-z0-9_-]+$")

T = TypeVar("T")


@dataclasses.dataclass(frozen=True, kw_only=True)
class Settings:
    """Everything the bridge is configured with (DESIGN.md, "Configuration")."""

    discovery_method: DiscoveryMethod = "auto"
    docker_enabled: bool = True
    docker_host: str = "unix:///var/run/docker.sock"
    docker_tls_verify: bool = False
    docker_cert_path: str | None = None
    service_name: str = "CHORUS_chorus"
    network_names: tuple[str, ...] = ("chorus_default",)
    agent_port: int = 8080
    verify_health: bool = False
    known_endpoints: tuple[str, ...] = ()
    dns_names: tuple[str, ...] = ("tasks.CHORUS_chorus",)
    nats_url: str | None = None
    nats_creds: str | None = None
    nats_user: str | None = None
    nats_password: str | None = None
    nats_token: str | None = None
    subject_prefix: str = "chorus"
    kv_bucket: str = "chorus_agents"
    kv_replicas: int = 1
    poll_interval: float = 30.0
    http_timeout: float = 5.0
    http_concurrency: int = 256
    bus_ack_wait: float = 1.0
    opportunity_path: str = "/api/v1/opportunities/council"
    listen_host: str = "0.0.0.0"
    listen_port: int = 8090
    log_format: LogFormat = "json"
    log_level: str = "INFO"
    docker_timeout: float = DOCKER_CALL_TIMEOUT
    # The NATS auth callout (DESIGN.md, "Trust"): paths of the issuer's account seed, of the
    # curve seed when the server encrypts callouts, and of the shared agent password.
    auth_callout: bool = False
    callout_issuer_seed: str | None = None
    callout_xkey_seed: str | None = None
    callout_agent_password_file: str | None = None

    @property
    def docker_active(self) -> bool:
        """Whether the Docker API may be opened at all."""
        return self.docker_enabled and self.discovery_method != "dns"

    def replace(self, **changes: object) -> Settings:
        """A copy with some fields changed (tests and the demo build variants this way)."""
        return dataclasses.replace(self, **changes)  # type: ignore[arg-type]


def _bool(name: str, raw: str) -> bool:
    value = raw.strip().lower()
    if value in _TRUE:
        return True
    if value in _FALSE:
        return False
    raise ConfigError(name, raw, "expected true or false")


def _number(name: str, raw: str, cast: Callable[[str], T], *, minimum: float,
            strict: bool = False) -> T:
    try:
        value = cast(raw.strip())
    except ValueError:
        raise ConfigError(name, raw, f"expected a number (at least {minimum:g})") from None
    if value != value or value < minimum or (strict and value == minimum):  # type: ignore[operator]
        bound = f"greater than {minimum:g}" if strict else f"at least {minimum:g}"
        raise ConfigError(name, raw, f"must be {bound}")
    return value


def _port(name: str, raw: str) -> int:
    port = _number(name, raw, int, minimum=1)
    if port > 65535:
        raise ConfigError(name, raw, "a port is between 1 and 65535")
    return port


def _csv(raw: str) -> tuple[str, ...]:
    return tuple(part.strip() for part in raw.split(",") if part.strip())


def _choice(name: str, raw: str, choices: tuple[str, ...]) -> str:
    value = raw.strip().lower()
    if value not in choices:
        raise ConfigError(name, raw, f"expected {', '.join(choices[:-1])} or {choices[-1]}")
    return value


def _method(name: str, raw: str) -> DiscoveryMethod:
    return cast(DiscoveryMethod, _choice(name, raw, get_args(DiscoveryMethod)))


def _replicas(name: str, raw: str) -> int:
    replicas = _number(name, raw, int, minimum=1)
    if replicas > 5:
        raise ConfigError(name, raw, "JetStream keeps at most 5 replicas")
    return replicas


def _docker_host(name: str, raw: str) -> str:
    value = raw.strip()
    scheme = urlsplit(value).scheme
    if scheme not in {"unix", "tcp", "http", "https", "ssh"} or value == f"{scheme}://":
        raise ConfigError(name, raw, "expected unix:///path/to/docker.sock or tcp://host:port")
    return value


def _endpoint(name: str, raw: str) -> str:
    parts = urlsplit(raw)
    try:
        port = parts.port
    except ValueError:
        port = None
    if parts.scheme not in {"http", "https"} or not parts.hostname or port is None:
        raise ConfigError(name, raw, "each endpoint must look like http://host:port")
    return f"{parts.scheme}://{parts.netloc}"


def _prefix(name: str, raw: str) -> str:
    value = raw.strip()
    if not _TOKEN_RE.match(value):
        raise ConfigError(name, raw, "one subject token of letters, digits, - and _")
    return value


def _bucket(name: str, raw: str) -> str:
    value = raw.strip()
    if not _BUCKET_RE.match(value):
        raise ConfigError(name, raw, "a bucket name is letters, digits, - and _")
    return value


def _path(name: str, raw: str) -> str:
    value = raw.strip()
    if not value.startswith("/") or any(c.isspace() for c in value):
        raise ConfigError(name, raw, "expected an absolute URL path such as /api/v1/x")
    return value


def _listen(name: str, raw: str) -> tuple[str, int]:
    host, sep, port = raw.strip().rpartition(":")
    if not sep or not host:
        raise ConfigError(name, raw, "expected HOST:PORT, e.g. 0.0.0.0:8090")
    # Port 0 lets the OS choose, which tests and the demo rely on.
    if port.strip() == "0":
        return host.strip("[]"), 0
    try:
        return host.strip("[]"), _port(name, port)
    except ConfigError:
        raise ConfigError(name, raw, "expected HOST:PORT with a port from 1 to 65535") from None


def _log_format(name: str, raw: str) -> LogFormat:
    return cast(LogFormat, _choice(name, raw, get_args(LogFormat)))


def _log_level(name: str, raw: str) -> str:
    value = raw.strip().upper()
    if value == "WARN":
        value = "WARNING"
    if value not in logging.getLevelNamesMapping() or value == "NOTSET":
        raise ConfigError(name, raw, "expected debug, info, warning, error or critical")
    return value


def _url(name: str, raw: str) -> str:
    value = raw.strip()
    for server in value.split(","):
        if urlsplit(server.strip()).scheme not in {"nats", "tls", "ws", "wss"}:
            raise ConfigError(name, raw, "expected nats://host:port (comma-separated for several)")
    return value


def _text(name: str, raw: str) -> str:
    value = raw.strip()
    if not value:
        raise ConfigError(name, raw, "must not be empty")
    return value


# Every variable the bridge reads, in DESIGN.md's order; nothing else is read.
ENV_VARIABLES: tuple[str, ...] = (
    "DISCOVERY_METHOD", "WHOOSH_DOCKER_ENABLED", "WHOOSH_DOCKER_HOST", "WHOOSH_SERVICE_NAME",
    "WHOOSH_NETWORK_NAME", "WHOOSH_AGENT_PORT", "WHOOSH_VERIFY_HEALTH", "WHOOSH_KNOWN_ENDPOINTS",
    "WHOOSH_DNS_NAMES", "NATS_URL", "NATS_CREDS", "NATS_USER", "NATS_PASSWORD", "NATS_TOKEN",
    "BRIDGE_SUBJECT_PREFIX", "BRIDGE_KV_BUCKET", "BRIDGE_POLL_INTERVAL", "BRIDGE_HTTP_TIMEOUT",
    "BRIDGE_HTTP_CONCURRENCY", "BRIDGE_BUS_ACK_WAIT", "BRIDGE_OPPORTUNITY_PATH", "BRIDGE_LISTEN",
    "BRIDGE_LOG_FORMAT", "BRIDGE_LOG_LEVEL", "DOCKER_TLS_VERIFY", "DOCKER_CERT_PATH",
    "BRIDGE_KV_REPLICAS", "BRIDGE_AUTH_CALLOUT", "BRIDGE_CALLOUT_ISSUER_SEED",
    "BRIDGE_CALLOUT_XKEY_SEED", "BRIDGE_CALLOUT_AGENT_PASSWORD_FILE",
)


def load_settings(environ: Mapping[str, str], overrides: Mapping[str, str] | None = None,
                  ) -> Settings:
    """Build the settings from `environ`, with `overrides` (flags, by variable name) winning.

    Raises ConfigError naming the first variable whose value does not parse.
    """
    env = {k: v for k, v in environ.items() if k in ENV_VARIABLES}
    env.update({k: v for k, v in (overrides or {}).items() if v is not None})
    unknown = set(env) - set(ENV_VARIABLES)
    if unknown:
        name = sorted(unknown)[0]
        raise ConfigError(name, env[name], "not a chorus-bridge setting")

    def get(name: str) -> str | None:
        return env.get(name)

    kwargs: dict[str, object] = {}

    def take(name: str, field: str, parse: Callable[[str, str], object]) -> None:
        raw = get(name)
        if raw is not None:
            kwargs[field] = parse(name, raw)

    take("DISCOVERY_METHOD", "discovery_method", _method)
    take("WHOOSH_DOCKER_ENABLED", "docker_enabled", _bool)
    take("WHOOSH_DOCKER_HOST", "docker_host", _docker_host)
    take("DOCKER_TLS_VERIFY", "docker_tls_verify", _bool)
    take("DOCKER_CERT_PATH", "docker_cert_path", _text)
    take("WHOOSH_SERVICE_NAME", "service_name", _text)
    take("WHOOSH_NETWORK_NAME", "network_names", lambda _n, raw: _csv(raw))
    take("WHOOSH_AGENT_PORT", "agent_port", _port)
    take("WHOOSH_VERIFY_HEALTH", "verify_health", _bool)
    take("WHOOSH_KNOWN_ENDPOINTS", "known_endpoints",
         lambda n, raw: tuple(_endpoint(n, e) for e in _csv(raw)))
    take("NATS_URL", "nats_url", _url)
    take("NATS_CREDS", "nats_creds", _text)
    take("NATS_USER", "nats_user", _text)
    take("NATS_PASSWORD", "nats_password", _text)
    take("NATS_TOKEN", "nats_token", _text)
    take("BRIDGE_SUBJECT_PREFIX", "subject_prefix", _prefix)
    take("BRIDGE_KV_BUCKET", "kv_bucket", _bucket)
    take("BRIDGE_KV_REPLICAS", "kv_replicas", _replicas)
    take("BRIDGE_POLL_INTERVAL", "poll_interval",
         lambda n, raw: _number(n, raw, float, minimum=0, strict=True))
    take("BRIDGE_HTTP_TIMEOUT", "http_timeout",
         lambda n, raw: _number(n, raw, float, minimum=0, strict=True))
    take("BRIDGE_HTTP_CONCURRENCY", "http_concurrency",
         lambda n, raw: _number(n, raw, int, minimum=1))
    take("BRIDGE_BUS_ACK_WAIT", "bus_ack_wait",
         lambda n, raw: _number(n, raw, float, minimum=0))
    take("BRIDGE_OPPORTUNITY_PATH", "opportunity_path", _path)
    take("BRIDGE_LOG_FORMAT", "log_format", _log_format)
    take("BRIDGE_LOG_LEVEL", "log_level", _log_level)
    take("BRIDGE_AUTH_CALLOUT", "auth_callout", _bool)
    take("BRIDGE_CALLOUT_ISSUER_SEED", "callout_issuer_seed", _text)
    take("BRIDGE_CALLOUT_XKEY_SEED", "callout_xkey_seed", _text)
    take("BRIDGE_CALLOUT_AGENT_PASSWORD_FILE", "callout_agent_password_file", _text)
    if kwargs.get("auth_callout") and "callout_issuer_seed" not in kwargs:
        raise ConfigError("BRIDGE_CALLOUT_ISSUER_SEED", "",
                          "must be set when BRIDGE_AUTH_CALLOUT is true")
    listen = get("BRIDGE_LISTEN")
    if listen is not None:
        kwargs["listen_host"], kwargs["listen_port"] = _listen("BRIDGE_LISTEN", listen)

    service = str(kwargs.get("service_name", Settings.service_name))
    raw_names = get("WHOOSH_DNS_NAMES")
    names = _csv(raw_names) if raw_names is not None else ("tasks.{service}",)
    kwargs["dns_names"] = tuple(n.replace("{service}", service) for n in names)

    if get("NATS_USER") is not None and get("NATS_PASSWORD") is None:
        raise ConfigError("NATS_PASSWORD", "", "must be set when NATS_USER is set")
    return Settings(**kwargs)  # type: ignore[arg-type]
