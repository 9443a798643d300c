"""The environment variables of DESIGN.md's table, read into `Settings` (bridge/config.py).

This is the only module that reads environment variables. `_VARIABLES` is the one table from
variable to field; each variable's parser turns its raw text into field values, and msgspec
checks them against `Settings`' constraints. A value that does not parse raises `ConfigError`,
whose message names the variable and the value, so the command can stop with one clear line.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable, Mapping
from typing import get_args
from urllib.parse import urlsplit

import msgspec

from bridge.config import DiscoveryMethod, LogFormat, Settings
from bridge.errors import ConfigError

__all__ = ["ENV_VARIABLES", "load_settings", "unknown_variables"]

_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off", ""}

# -- Parsers: raw text of one variable -> values of its fields, before msgspec checks them. --
# Most values go to msgspec as the stripped text: `msgspec.convert(..., strict=False)` parses
# numbers and booleans from strings and checks every constraint of `Settings`.

Parser = Callable[[str, str], dict[str, object]]


def _as(field: str) -> Parser:
    """The stripped text, for msgspec to parse and check."""
    return lambda _name, raw: {field: raw.strip()}


def _with(field: str, parse: Callable[[str, str], object]) -> Parser:
    return lambda name, raw: {field: parse(name, raw)}


def _bool(name: str, raw: str) -> bool:
    # Wider than msgspec's true/false/1/0: yes/on/no/off and empty are what shells write.
    value = raw.strip().lower()
    if value in _TRUE:
        return True
    if value in _FALSE:
        return False
    raise ConfigError(name, raw, "expected true or false")


def _csv(_name: str, raw: str) -> tuple[str, ...]:
    return tuple(part.strip() for part in raw.split(",") if part.strip())


def _lower(_name: str, raw: str) -> str:
    return raw.strip().lower()


def _docker_host(name: str, raw: str) -> str:
    """One address or a comma-separated list of them (several managers), each checked."""
    hosts = _csv(name, raw)
    for value in hosts:
        scheme = urlsplit(value).scheme
        if scheme not in {"unix", "tcp", "http", "https", "ssh"} or value == f"{scheme}://":
            raise ConfigError(
                name,
                raw,
                "expected unix:///path/to/docker.sock or tcp://host:port (comma-separated for "
                "several managers)",
            )
    if not hosts:
        raise ConfigError(name, raw, "must not be empty")
    return ",".join(hosts)


def _endpoint(name: str, raw: str) -> str:
    """`http://host:port` exactly (DESIGN.md, "Trust"): no user info, path, query or fragment,
    so that nothing but the host and port of an endpoint decides where a POST goes."""
    parts = urlsplit(raw.strip())
    try:
        port = parts.port
    except ValueError:
        port = None
    if parts.scheme not in {"http", "https"} or not parts.hostname or port is None:
        raise ConfigError(name, raw, "each endpoint must look like http://host:port")
    # DESIGN.md, "Trust": an endpoint is scheme, host and port. User info, a query, a fragment
    # or a path would choose the URL the opportunity is posted to (a `#` drops the path).
    if "@" in parts.netloc:
        shown = f"{parts.scheme}://***@{parts.netloc.rpartition('@')[2]}"  # no password shown
        raise ConfigError(name, shown, "an endpoint has no user info: http://host:port")
    if "?" in raw or "#" in raw or parts.path not in {"", "/"}:
        raise ConfigError(name, raw, "an endpoint has no path, query or fragment: http://host:port")
    return f"{parts.scheme}://{parts.netloc}"


def _endpoints(name: str, raw: str) -> tuple[str, ...]:
    return tuple(_endpoint(name, e) for e in _csv(name, raw))


def _listen(name: str, raw: str) -> dict[str, object]:
    host, sep, port = raw.strip().rpartition(":")
    if not sep or not host or not port.strip().isdigit():
        raise ConfigError(name, raw, "expected HOST:PORT, e.g. 0.0.0.0:8090")
    return {"listen_host": host.strip("[]"), "listen_port": port.strip()}


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


# The one table from variable to field(s), in DESIGN.md's order; nothing else is read.
_VARIABLES: dict[str, Parser] = {
    "DISCOVERY_METHOD": _with("discovery_method", _lower),
    "WHOOSH_DOCKER_ENABLED": _with("docker_enabled", _bool),
    "WHOOSH_DOCKER_HOST": _with("docker_host", _docker_host),
    "WHOOSH_SERVICE_NAME": _with("service_name", _text),
    "WHOOSH_NETWORK_NAME": _with("network_names", _csv),
    "WHOOSH_AGENT_PORT": _as("agent_port"),
    "WHOOSH_VERIFY_HEALTH": _with("verify_health", _bool),
    "WHOOSH_KNOWN_ENDPOINTS": _with("known_endpoints", _endpoints),
    "WHOOSH_DNS_NAMES": _with("dns_names", _csv),
    "NATS_URL": _with("nats_url", _url),
    "NATS_CREDS": _with("nats_creds", _text),
    "NATS_USER": _with("nats_user", _text),
    "NATS_PASSWORD": _with("nats_password", _text),
    "NATS_TOKEN": _with("nats_token", _text),
    "NATS_TLS_CA": _with("nats_tls_ca", _text),
    "NATS_TLS_CERT": _with("nats_tls_cert", _text),
    "NATS_TLS_KEY": _with("nats_tls_key", _text),
    "BRIDGE_SUBJECT_PREFIX": _as("subject_prefix"),
    "BRIDGE_KV_BUCKET": _as("kv_bucket"),
    "BRIDGE_POLL_INTERVAL": _as("poll_interval"),
    "BRIDGE_HTTP_TIMEOUT": _as("http_timeout"),
    "BRIDGE_HTTP_CONCURRENCY": _as("http_concurrency"),
    "BRIDGE_BUS_ACK_WAIT": _as("bus_ack_wait"),
    "BRIDGE_OPPORTUNITY_PATH": _as("opportunity_path"),
    "BRIDGE_LISTEN": _listen,
    "BRIDGE_LOG_FORMAT": _with("log_format", _lower),
    "BRIDGE_LOG_LEVEL": _with("log_level", _log_level),
    "BRIDGE_KV_REPLICAS": _as("kv_replicas"),
    "DOCKER_TLS_VERIFY": _with("docker_tls_verify", _bool),
    "DOCKER_CERT_PATH": _with("docker_cert_path", _text),
    "BRIDGE_AUTH_CALLOUT": _with("auth_callout", _bool),
    "BRIDGE_CALLOUT_ISSUER_SEED": _with("callout_issuer_seed", _text),
    "BRIDGE_CALLOUT_XKEY_SEED": _with("callout_xkey_seed", _text),
    "BRIDGE_CALLOUT_AGENT_PASSWORD_FILE": _with("callout_agent_password_file", _text),
}
ENV_VARIABLES: tuple[str, ...] = tuple(_VARIABLES)
_DEFAULTS = Settings()
# Prefixes of the bridge's own variables: another one is most likely a typo of one of them.
_OWN_PREFIXES = ("WHOOSH_", "BRIDGE_")
# What msgspec's messages say, in the words of someone setting a variable.
_TYPE_WORDS = {
    "`int`": "a whole number",
    "`float`": "a number",
    "`bool`": "true or false",
    "`str`": "text",
}
_MSGSPEC_PATH = re.compile(r" - at `\$\.(?P<field>\w+)`")
_CHOICES = {"discovery_method": get_args(DiscoveryMethod), "log_format": get_args(LogFormat)}


def unknown_variables(environ: Mapping[str, str]) -> list[str]:
    """Variables named like the bridge's own (WHOOSH_*, BRIDGE_*) that it does not read: most
    likely typos, worth one warning each."""
    return sorted(k for k in environ if k.startswith(_OWN_PREFIXES) and k not in _VARIABLES)


_BOUND = re.compile(r"^Expected `\w+` (?P<op>>=|>|<=|<) (?P<limit>\S+)")
_BOUND_WORDS = {">=": "at least", ">": "greater than", "<=": "at most", "<": "less than"}


def _reason(message: str, field: str) -> str:
    """msgspec's message, in the words of someone setting a variable."""
    if field in _CHOICES:
        *first, last = _CHOICES[field]
        return f"expected {', '.join(first)} or {last}"
    text = _MSGSPEC_PATH.sub("", message)
    bound = _BOUND.match(text)
    if bound:
        return f"must be {_BOUND_WORDS[bound['op']]} {float(bound['limit']):g}"
    text = text.replace(", got `str`", "")
    for word, plain in _TYPE_WORDS.items():
        text = text.replace(word, plain)
    return text[:1].lower() + text[1:]


def _convert(fields: dict[str, object], raw_of: Mapping[str, tuple[str, str]]) -> Settings:
    try:
        return msgspec.convert(fields, Settings, strict=False)
    except msgspec.ValidationError as exc:
        match = _MSGSPEC_PATH.search(str(exc))
        field = match.group("field") if match else ""
        variable, raw = raw_of.get(field, ("settings", ""))
        raise ConfigError(variable, raw, _reason(str(exc), field)) from None


def load_settings(
    environ: Mapping[str, str],
    overrides: Mapping[str, str] | None = None,
) -> Settings:
    """Build the settings from `environ`, with `overrides` (flags, by variable name) winning.

    Raises ConfigError naming the first variable whose value does not parse, or an override
    that names no variable. Unknown WHOOSH_*/BRIDGE_* variables are not an error here; see
    unknown_variables().
    """
    env = {k: v for k, v in environ.items() if k in _VARIABLES}
    env.update({k: v for k, v in (overrides or {}).items() if v is not None})
    unknown = set(env) - set(_VARIABLES)
    if unknown:
        name = sorted(unknown)[0]
        raise ConfigError(name, env[name], "not a chorus-bridge setting")
    fields: dict[str, object] = {}
    raw_of: dict[str, tuple[str, str]] = {}
    for variable, parse in _VARIABLES.items():
        raw = env.get(variable)
        if raw is None:
            continue
        parsed = parse(variable, raw)
        fields.update(parsed)
        raw_of.update((field, (variable, raw)) for field in parsed)
    service = str(fields.get("service_name", _DEFAULTS.service_name))
    names = fields.get("dns_names", ("tasks.{service}",))
    assert isinstance(names, tuple)
    fields["dns_names"] = tuple(str(n).replace("{service}", service) for n in names)
    if "nats_user" in fields and "nats_password" not in fields:
        raise ConfigError("NATS_PASSWORD", "", "must be set when NATS_USER is set")
    for given, needed in (("NATS_TLS_CERT", "NATS_TLS_KEY"), ("NATS_TLS_KEY", "NATS_TLS_CERT")):
        if given in env and needed not in env:
            raise ConfigError(needed, "", f"must be set when {given} is set (a client certificate)")
    if fields.get("auth_callout") and "callout_issuer_seed" not in fields:
        raise ConfigError(
            "BRIDGE_CALLOUT_ISSUER_SEED", "", "must be set when BRIDGE_AUTH_CALLOUT is true"
        )
    return _convert(fields, raw_of)
