"""The callout without xkey encryption, with keys that do not match the server's, and with
seed files that are not seeds."""

from __future__ import annotations

from collections.abc import MutableMapping
from pathlib import Path
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from bridge.app import open_bridge
from bridge.config import Settings
from bridge.devkit.emulator import DockerEmulator, EmulatedSwarm
from bridge.edges.nats_server import EmbeddedNats
from bridge.edges.nkeys_jwt import new_seed
from bridge.environment import load_settings
from bridge.errors import ConfigError
from tests.callout_support import (
    CalloutFiles,
    admitted,
    bridge_settings,
    callout_server,
    callouts,
    make_keys,
    refused,
)
from tests.conftest import RunningBridge, run_bridge, wait_for


@pytest.fixture
def files(tmp_path: Path) -> CalloutFiles:
    return make_keys(tmp_path / "keys")


@pytest.fixture
def address(swarm: EmulatedSwarm, docker_api: DockerEmulator) -> str:
    (task,) = swarm.add_tasks(1)
    return swarm.address_of(task) or ""


async def test_requests_in_the_clear_without_xkey(
    tmp_path: Path, settings: Settings, files: CalloutFiles, address: str
) -> None:
    """nats-callout.conf without its xkey line and a bridge without BRIDGE_CALLOUT_XKEY_SEED:
    the agent is admitted, a stranger refused."""
    async with (
        callout_server(tmp_path, files, xkey=False) as server,
        run_bridge(bridge_settings(settings, files, xkey=False), server.url),
    ):
        async with admitted(server, address):
            pass
        assert "Authorization Violation" in await refused(server, "127.10.255.254")


async def test_encrypted_requests_without_the_xkey_seed_are_refused_with_a_hint(
    tmp_path: Path,
    settings: Settings,
    files: CalloutFiles,
    address: str,
    logs: list[MutableMapping[str, Any]],
) -> None:
    """The server seals requests but the bridge has no curve seed: the agent is refused and
    the bridge names the variable to set."""
    async with (
        callout_server(tmp_path, files) as server,
        run_bridge(bridge_settings(settings, files, xkey=False), server.url),
    ):
        await wait_for(
            lambda: any(e["event"] == "callout_serving" for e in logs),
            timeout=10,
            what="the callout to serve",
        )
        assert "Authorization Violation" in await refused(server, address)
    rejected = [str(e["error"]) for e in logs if e["event"] == "callout_request_rejected"]
    assert rejected and "BRIDGE_CALLOUT_XKEY_SEED" in rejected[0]


async def test_a_different_issuer_is_refused_with_a_hint(
    tmp_path: Path,
    settings: Settings,
    files: CalloutFiles,
    address: str,
    logs: list[MutableMapping[str, Any]],
) -> None:
    """A bridge whose issuer seed is not the one nats-callout.conf names admits no one, and
    says which variable does not match."""
    other = tmp_path / "other.seed"
    other.write_bytes(new_seed("account"))
    mine = bridge_settings(settings, files).replace(callout_issuer_seed=str(other))
    async with callout_server(tmp_path, files) as server, run_bridge(mine, server.url) as bridge:
        await wait_for(
            lambda: any(e["event"] == "callout_serving" for e in logs),
            timeout=10,
            what="the callout to serve",
        )
        assert "Authorization Violation" in await refused(server, address)

        async def rejected_counted() -> bool:
            counts = await callouts(bridge)
            return counts[("rejected", "invalid")] >= 1 and counts[("admitted", "none")] == 0

        # Rejected requests get no answer: the client's refusal comes from the server's
        # timeout, which does not wait for the bridge to count, so /metrics is polled.
        await wait_for(rejected_counted, timeout=5, what="the rejection on /metrics")
    rejected = [str(e["error"]) for e in logs if e["event"] == "callout_request_rejected"]
    assert rejected and "BRIDGE_CALLOUT_ISSUER_SEED" in rejected[0]


# Nothing listens there: the seed files are read before any connection is tried.
UNREACHABLE = "nats://127.0.0.1:9"


@pytest.mark.parametrize(
    ("field", "variable", "content"),
    [
        ("callout_issuer_seed", "BRIDGE_CALLOUT_ISSUER_SEED", new_seed("curve")),
        ("callout_xkey_seed", "BRIDGE_CALLOUT_XKEY_SEED", new_seed("account")),
        ("callout_issuer_seed", "BRIDGE_CALLOUT_ISSUER_SEED", b"not a seed at all"),
    ],
)
async def test_a_seed_file_of_the_wrong_kind_stops_the_start(
    tmp_path: Path, files: CalloutFiles, field: str, variable: str, content: bytes
) -> None:
    """A seed file that is not the seed it must be stops the bridge, naming the variable."""
    bad = tmp_path / "bad.seed"
    bad.write_bytes(content)
    settings = bridge_settings(Settings(), files).replace(**{field: str(bad)})
    with pytest.raises(ConfigError) as error:
        async with open_bridge(settings, UNREACHABLE):
            pass
    assert error.value.variable == variable and str(bad) in str(error.value)
    assert content.decode() not in str(error.value)  # never a seed in a message


async def test_a_missing_seed_file_stops_the_start(tmp_path: Path, files: CalloutFiles) -> None:
    """A seed path that cannot be read stops the bridge with the variable and the reason."""
    settings = bridge_settings(Settings(), files).replace(
        callout_issuer_seed=str(tmp_path / "missing")
    )
    with pytest.raises(ConfigError, match=r"BRIDGE_CALLOUT_ISSUER_SEED=.*No such file"):
        async with open_bridge(settings, UNREACHABLE):
            pass


def test_the_callout_needs_its_issuer_seed() -> None:
    """BRIDGE_AUTH_CALLOUT=true without BRIDGE_CALLOUT_ISSUER_SEED stops the start."""
    with pytest.raises(ConfigError) as error:
        load_settings({"BRIDGE_AUTH_CALLOUT": "true"})
    assert error.value.variable == "BRIDGE_CALLOUT_ISSUER_SEED"
    settings = load_settings(
        {
            "BRIDGE_AUTH_CALLOUT": "yes",
            "BRIDGE_CALLOUT_ISSUER_SEED": "/s",
            "BRIDGE_CALLOUT_XKEY_SEED": "/x",
            "BRIDGE_CALLOUT_AGENT_PASSWORD_FILE": "/p",
        }
    )
    assert (
        settings.auth_callout,
        settings.callout_issuer_seed,
        settings.callout_xkey_seed,
        settings.callout_agent_password_file,
    ) == (True, "/s", "/x", "/p")


async def test_the_open_mode_says_identity_is_not_enforced(
    tmp_path: Path,
    settings: Settings,
    files: CalloutFiles,
    address: str,
    nats_server: EmbeddedNats,
    logs: list[MutableMapping[str, Any]],
) -> None:
    """Without the callout the bridge warns at start (`agent_identity_not_enforced`) and
    /metrics says 0; with it, 1 and no warning."""
    async with run_bridge(settings, nats_server.url) as open_mode:
        assert await identity_enforced(open_mode) == 0
    assert [e["log_level"] for e in logs if e["event"] == "agent_identity_not_enforced"] == [
        "warning"
    ]
    logs.clear()
    (tmp_path / "callout").mkdir()
    async with (
        callout_server(tmp_path / "callout", files) as server,
        run_bridge(bridge_settings(settings, files), server.url) as enforced,
    ):
        assert await identity_enforced(enforced) == 1
    assert not any(e["event"] == "agent_identity_not_enforced" for e in logs)


async def identity_enforced(running: RunningBridge) -> float:
    async with httpx.AsyncClient(trust_env=False) as client:
        response = await client.get(f"http://127.0.0.1:{running.bridge.http_port}/metrics")
    for family in text_string_to_metric_families(response.text):
        for sample in family.samples:
            if sample.name == "chorus_bridge_agent_identity_enforced":
                return float(sample.value)
    raise AssertionError("chorus_bridge_agent_identity_enforced is not on /metrics")
