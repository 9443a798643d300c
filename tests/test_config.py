"""Settings from the environment and flags."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from bridge.config import Settings
from bridge.environment import ENV_VARIABLES, load_settings, unknown_variables
from bridge.errors import ConfigError


def test_defaults_match_the_design() -> None:
    """With nothing set, every value is DESIGN.md's default."""
    s = load_settings({})
    assert s.discovery_method == "auto"
    assert s.docker_enabled is True
    assert s.docker_host == "unix:///var/run/docker.sock"
    assert s.service_name == "CHORUS_chorus"
    assert s.network_names == ("chorus_default",)
    assert s.agent_port == 8080
    assert s.verify_health is False
    assert s.known_endpoints == ()
    assert s.dns_names == ("tasks.CHORUS_chorus",)
    assert s.nats_url is None
    assert (s.subject_prefix, s.kv_bucket) == ("chorus", "chorus_agents")
    assert (s.poll_interval, s.http_timeout, s.http_concurrency) == (30.0, 5.0, 256)
    assert s.bus_ack_wait == 1.0
    assert s.opportunity_path == "/api/v1/opportunities/council"
    assert (s.listen_host, s.listen_port) == ("0.0.0.0", 8090)
    assert (s.log_format, s.log_level) == ("json", "INFO")
    assert s.kv_replicas == 1


def test_values_parse_and_flags_win() -> None:
    """Environment values parse into types, and a flag overrides its variable."""
    env = {
        "DISCOVERY_METHOD": "SWARM",
        "WHOOSH_NETWORK_NAME": "a, b",
        "WHOOSH_AGENT_PORT": "9000",
        "WHOOSH_SERVICE_NAME": "svc",
        "WHOOSH_DNS_NAMES": "tasks.{service},other",
        "WHOOSH_KNOWN_ENDPOINTS": "http://127.0.0.5:81,http://agent-x:8080",
        "BRIDGE_POLL_INTERVAL": "2.5",
        "WHOOSH_VERIFY_HEALTH": "true",
        "BRIDGE_LISTEN": ":9",
        "BRIDGE_LOG_LEVEL": "debug",
        "PATH": "/bin",
    }
    env["BRIDGE_LISTEN"] = "127.0.0.1:9100"
    s = load_settings(env, {"BRIDGE_POLL_INTERVAL": "7"})
    assert s.discovery_method == "swarm"
    assert s.network_names == ("a", "b")
    assert s.agent_port == 9000
    assert s.dns_names == ("tasks.svc", "other")
    assert s.known_endpoints == ("http://127.0.0.5:81", "http://agent-x:8080")
    assert s.poll_interval == 7.0
    assert s.verify_health is True
    assert (s.listen_host, s.listen_port) == ("127.0.0.1", 9100)
    assert s.log_level == "DEBUG"


def test_docker_host_lists_several_managers() -> None:
    """WHOOSH_DOCKER_HOST: one address, or several comma-separated, tried in that order."""
    one = load_settings({})
    several = load_settings(
        {"WHOOSH_DOCKER_HOST": " tcp://manager-1:2375, unix:///run/m2.sock ,tcp://10.0.0.3:2375"}
    )
    assert one.docker_hosts == ("unix:///var/run/docker.sock",)
    assert several.docker_hosts == (
        "tcp://manager-1:2375",
        "unix:///run/m2.sock",
        "tcp://10.0.0.3:2375",
    )


def test_empty_network_means_first_address() -> None:
    """WHOOSH_NETWORK_NAME='' selects the task's first address."""
    assert load_settings({"WHOOSH_NETWORK_NAME": ""}).network_names == ()


@pytest.mark.parametrize(
    ("variable", "value"),
    [
        ("DISCOVERY_METHOD", "kubernetes"),
        ("WHOOSH_DOCKER_ENABLED", "maybe"),
        ("WHOOSH_DOCKER_HOST", "docker.sock"),
        ("WHOOSH_DOCKER_HOST", "tcp://manager-1:2375,manager-2:2375"),
        ("WHOOSH_DOCKER_HOST", " , "),
        ("WHOOSH_SERVICE_NAME", "  "),
        ("WHOOSH_AGENT_PORT", "abc"),
        ("WHOOSH_AGENT_PORT", "0"),
        ("WHOOSH_AGENT_PORT", "70000"),
        ("WHOOSH_VERIFY_HEALTH", "yess"),
        ("WHOOSH_KNOWN_ENDPOINTS", "10.0.0.1:8080"),
        ("WHOOSH_KNOWN_ENDPOINTS", "http://host"),
        ("NATS_URL", "http://localhost:4222"),
        ("BRIDGE_SUBJECT_PREFIX", "a.b"),
        ("BRIDGE_KV_BUCKET", "bad.bucket"),
        ("BRIDGE_POLL_INTERVAL", "-1"),
        ("BRIDGE_POLL_INTERVAL", "0"),
        ("BRIDGE_POLL_INTERVAL", "nan"),
        ("BRIDGE_HTTP_TIMEOUT", "soon"),
        ("BRIDGE_HTTP_CONCURRENCY", "0"),
        ("BRIDGE_HTTP_CONCURRENCY", "1.5"),
        ("BRIDGE_BUS_ACK_WAIT", "-0.1"),
        ("BRIDGE_OPPORTUNITY_PATH", "api/x"),
        ("BRIDGE_LISTEN", "8090"),
        ("BRIDGE_LISTEN", "0.0.0.0:http"),
        ("BRIDGE_LOG_FORMAT", "xml"),
        ("BRIDGE_LOG_LEVEL", "loud"),
        ("DOCKER_TLS_VERIFY", "2"),
        ("BRIDGE_KV_REPLICAS", "7"),
        ("BRIDGE_KV_REPLICAS", "0"),
    ],
)
def test_bad_value_names_variable_and_value(variable: str, value: str) -> None:
    """Every variable's bad value is refused with one message naming it and the value."""
    with pytest.raises(ConfigError) as info:
        load_settings({variable: value})
    message = str(info.value)
    assert message.startswith(f"{variable}={value!r}: ")
    assert "\n" not in message


DESIGN = Path(__file__).resolve().parents[1] / "docs" / "DESIGN.md"
# Read beyond docs/DESIGN.md's table: the TLS variables it names inside WHOOSH_DOCKER_HOST's
# row, and the agents' shared password the callout checks (README, "Trust").
BEYOND_THE_TABLE = {"DOCKER_TLS_VERIFY", "DOCKER_CERT_PATH", "BRIDGE_CALLOUT_AGENT_PASSWORD_FILE"}


def _design_variables() -> set[str]:
    """The variables of docs/DESIGN.md's table ("Configuration: environment variables")."""
    section = DESIGN.read_text().split("## Configuration")[1].split("\n## ")[0]
    names: set[str] = set()
    for row in re.findall(r"^\| ([A-Z_, ]+) \|", section, flags=re.MULTILINE):
        names.update(name.strip() for name in row.split(","))
    return names


def test_every_variable_is_known() -> None:
    """The table of variables is docs/DESIGN.md's, and nothing else is read."""
    s = load_settings({"UNRELATED": "x", "HOME": "/root"})
    assert s == Settings()
    design = _design_variables()
    assert len(design) > 20  # the table was found
    assert set(ENV_VARIABLES) == design | BEYOND_THE_TABLE


@pytest.mark.parametrize(
    "endpoint",
    [
        "http://user:secret@127.0.0.5:8080",
        "http://127.0.0.5:8080/admin/drop-all",
        "http://127.0.0.5:8080?confirm=yes",
        "http://127.0.0.5:8080#",
    ],
)
def test_known_endpoint_is_host_and_port_only(endpoint: str) -> None:
    """An endpoint with user info, a path, a query or a fragment is refused where it enters,
    naming it: only host and port may decide where a POST goes."""
    with pytest.raises(ConfigError) as info:
        load_settings({"WHOOSH_KNOWN_ENDPOINTS": f"http://127.0.0.4:8080,{endpoint}"})
    message = str(info.value)
    assert message.startswith("WHOOSH_KNOWN_ENDPOINTS=")
    assert "secret" not in message  # a password is never shown
    assert "127.0.0.5:8080" in message


def test_unknown_own_variables_are_named() -> None:
    """A WHOOSH_*/BRIDGE_* variable the bridge does not read is a likely typo: it is named
    (the command warns), and it changes nothing."""
    env = {
        "BRIDGE_POLL_INTERVALL": "5",
        "WHOOSH_SERVICE": "x",
        "BRIDGE_LISTEN": "127.0.0.1:1",
        "HOME": "/root",
        "NATS_URLS": "nats://x",
    }
    assert unknown_variables(env) == ["BRIDGE_POLL_INTERVALL", "WHOOSH_SERVICE"]
    assert load_settings(env).poll_interval == Settings().poll_interval


def test_choices_are_listed() -> None:
    """A value outside a fixed set names the choices."""
    with pytest.raises(ConfigError, match="expected swarm, dns or auto"):
        load_settings({"DISCOVERY_METHOD": "kubernetes"})
