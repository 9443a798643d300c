"""/metrics in Prometheus format, /healthz that says why it is unhealthy."""

from __future__ import annotations

import importlib.metadata
import re
from pathlib import Path

import httpx
from prometheus_client.parser import text_string_to_metric_families

from bridge.config import Settings
from bridge.devkit.emulator import EmulatedSwarm
from bridge.edges.nats_server import EmbeddedNats
from tests.conftest import run_bridge, wait_for

EXPECTED = {
    "chorus_bridge_discovery_rounds",
    "chorus_bridge_discovery_round_duration_seconds",
    "chorus_bridge_agents",
    "chorus_bridge_agent_changes",
    "chorus_bridge_docker_api_errors",
    "chorus_bridge_kv_writes",
    "chorus_bridge_broadcasts",
    "chorus_bridge_deliveries",
    "chorus_bridge_callouts",
    "chorus_bridge_http_delivery_duration_seconds",
    "chorus_bridge_leader",
    "chorus_bridge_nats_connected",
}


async def test_metrics_parse_and_count(
    settings: Settings, swarm: EmulatedSwarm, nats_server: EmbeddedNats
) -> None:
    """/metrics parses with Prometheus' own parser and counts what happened."""
    swarm.add_tasks(3)
    async with run_bridge(settings, nats_server.url) as running:
        port = running.bridge.http_port
        async with httpx.AsyncClient(trust_env=False) as client:
            response = await client.get(f"http://127.0.0.1:{port}/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    families = {f.name: f for f in text_string_to_metric_families(response.text)}
    assert set(families) >= EXPECTED
    samples = {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for f in families.values()
        for s in f.samples
    }
    assert samples[("chorus_bridge_agents", (("source", "swarm"),))] == 3
    assert samples[("chorus_bridge_agent_changes_total", (("event", "joined"),))] == 3
    assert samples[("chorus_bridge_leader", ())] == 1
    assert (
        samples[("chorus_bridge_discovery_rounds_total", (("method", "swarm"), ("outcome", "ok")))]
        >= 1
    )


README = Path(__file__).resolve().parents[2] / "README.md"


def _readme_metrics() -> list[str]:
    text = README.read_text()
    table = text[text.index("<!-- metrics:begin -->") : text.index("<!-- metrics:end -->")]
    return re.findall(r"^\| `([a-z_]+)` \|", table, flags=re.MULTILINE)


async def test_readme_lists_exactly_what_metrics_serves(
    settings: Settings, swarm: EmulatedSwarm, nats_server: EmbeddedNats
) -> None:
    """README's metric table names every metric /metrics serves, and nothing else; errors
    counters are already there at 0, and the build is described."""
    swarm.add_tasks(1)
    async with (
        run_bridge(settings, nats_server.url) as running,
        httpx.AsyncClient(trust_env=False) as client,
    ):
        text = (await client.get(f"http://127.0.0.1:{running.bridge.http_port}/metrics")).text
    served = re.findall(r"^# TYPE (\S+) ", text, flags=re.MULTILINE)
    listed = _readme_metrics()
    assert sorted(listed) == sorted(served)
    assert len(listed) == len(set(listed))
    samples = {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for f in text_string_to_metric_families(text)
        for s in f.samples
    }
    for kind in ("socket_missing", "timeout", "not_manager", "api_error"):
        assert samples[("chorus_bridge_docker_api_errors_total", (("kind", kind),))] == 0
    assert samples[("chorus_bridge_kv_writes_total", (("op", "put"), ("outcome", "error")))] == 0
    assert samples[("chorus_bridge_broadcasts_total", (("outcome", "refused"),))] == 0
    failed = (("outcome", "failed"), ("path", "any"))
    assert samples[("chorus_bridge_deliveries_total", failed)] == 0
    refused = (("outcome", "refused"), ("reason", "address"))
    assert samples[("chorus_bridge_callouts_total", refused)] == 0  # served with the callout off
    taken = (("outcome", "refused"), ("reason", "taken"))
    assert samples[("chorus_bridge_claims_total", taken)] == 0
    assert samples[("chorus_bridge_councils", (("state", "expired"),))] == 0
    assert samples[("chorus_bridge_council_events_total", (("event", "expired"),))] == 0
    (build,) = [labels for (name, labels) in samples if name == "chorus_bridge_build_info"]
    assert dict(build)["version"] == importlib.metadata.version("chorus-bridge")
    assert samples[("process_open_fds", ())] > 0


async def test_healthz_flips_when_nats_goes_away(
    settings: Settings, swarm: EmulatedSwarm, tmp_path: Path
) -> None:
    """/healthz is 200 while all is well and 503, with the reason, once NATS is gone."""
    swarm.add_tasks(1)
    async with (
        EmbeddedNats(port=0, store_dir=tmp_path / "n") as server,
        run_bridge(settings, server.url) as running,
    ):
        url = f"http://127.0.0.1:{running.bridge.http_port}/healthz"
        async with httpx.AsyncClient(trust_env=False) as client:
            ok = await client.get(url)
            assert ok.status_code == 200
            assert ok.json()["status"] == "ok" and ok.json()["role"] == "leader"
            await server.__aexit__(None, None, None)

            async def unavailable() -> bool:
                return (await client.get(url)).status_code == 503

            await wait_for(unavailable, what="/healthz to answer 503")
            body = (await client.get(url)).json()
    assert body["status"] == "unavailable"
    assert "NATS is not connected" in body["reasons"]


async def test_healthz_flips_when_docker_fails(
    settings: Settings, swarm: EmulatedSwarm, nats_server: EmbeddedNats
) -> None:
    """/healthz turns 503 when no Swarm round succeeded for 3 poll intervals, and back."""
    swarm.add_tasks(1)
    fast = settings.replace(poll_interval=0.3)
    async with (
        run_bridge(fast, nats_server.url) as running,
        httpx.AsyncClient(trust_env=False) as client,
    ):
        url = f"http://127.0.0.1:{running.bridge.http_port}/healthz"

        async def status(code: int) -> bool:
            return (await client.get(url)).status_code == code

        assert await status(200)
        swarm.set_error("server_error")
        await wait_for(lambda: status(503), what="/healthz to answer 503")
        reasons = (await client.get(url)).json()["reasons"]
        assert any("no discovery round has succeeded for" in r for r in reasons)
        swarm.set_error(None)
        await wait_for(lambda: status(200), what="/healthz to recover")
