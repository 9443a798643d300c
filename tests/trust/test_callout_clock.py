"""The bridge's clock off from the NATS server's: a few seconds either way admit every agent
on its first attempt; larger skew is logged once and shown on /healthz and /metrics.

The bridge runs with an injected wall clock (`open_bridge(clock=...)`, what the callout reads
requests with) that is `skew` seconds off the server's; everything else is real."""

from __future__ import annotations

import json
import time
from collections.abc import MutableMapping
from pathlib import Path
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from bridge.config import Settings
from bridge.devkit.emulator import DockerEmulator, EmulatedSwarm
from tests.callout_client import Refused
from tests.callout_support import (
    admitted,
    bridge_settings,
    callout_server,
    callouts,
    make_keys,
)
from tests.conftest import RunningBridge, run_bridge, wait_for

AGENTS = 5


async def _healthz(bridge: RunningBridge) -> tuple[int, dict[str, Any]]:
    async with httpx.AsyncClient(trust_env=False) as client:
        response = await client.get(f"http://127.0.0.1:{bridge.bridge.http_port}/healthz")
    return response.status_code, json.loads(response.text)


async def _gauge(bridge: RunningBridge, name: str) -> float:
    async with httpx.AsyncClient(trust_env=False) as client:
        response = await client.get(f"http://127.0.0.1:{bridge.bridge.http_port}/metrics")
    for family in text_string_to_metric_families(response.text):
        for sample in family.samples:
            if sample.name == name:
                return float(sample.value)
    raise AssertionError(f"{name} is not on /metrics")


@pytest.mark.parametrize("skew", [1.5, 2.5, -11.0])
async def test_a_skewed_clock_admits_every_agent_at_once(
    tmp_path: Path,
    settings: Settings,
    swarm: EmulatedSwarm,
    docker_api: DockerEmulator,
    logs: list[MutableMapping[str, Any]],
    skew: float,
) -> None:
    """With the bridge's clock `skew` seconds off (+ ahead), every agent is admitted on its
    first attempt: nothing issued depends on the two clocks agreeing. /metrics shows the
    skew (the estimate reads at most about a second high); beyond the tolerance (5 s) it is
    logged once and /healthz is 503 naming it."""
    files = make_keys(tmp_path / "keys")
    addresses = [swarm.address_of(t) or "" for t in swarm.add_tasks(AGENTS)]
    async with (
        callout_server(tmp_path, files) as server,
        run_bridge(
            bridge_settings(settings, files), server.url, clock=lambda: time.time() + skew
        ) as running,
    ):
        callout = running.bridge.callout
        assert callout is not None
        await wait_for(lambda: len(callout.agents) == AGENTS, timeout=10, what="the index")
        await wait_for(
            lambda: any(e["event"] == "callout_serving" for e in logs), what="the callout"
        )
        for round_ in range(3):
            for address in addresses:
                try:
                    async with admitted(server, address, timeout=0):
                        pass
                except Refused as exc:
                    raise AssertionError(f"{address} refused in round {round_}: {exc}") from exc
        counts = await callouts(running)
        assert counts[("admitted", "none")] == 3 * AGENTS
        assert counts[("rejected", "expired")] == counts[("late", "none")] == 0
        measured = await _gauge(running, "chorus_bridge_callout_clock_skew_seconds")
        assert skew - 0.1 <= measured <= skew + 1.5, measured
        status, body = await _healthz(running)
    warnings = [e for e in logs if e["event"] == "callout_clock_skew"]
    if abs(skew) > 5:
        assert status == 503
        assert any("behind the NATS server's" in r for r in body["reasons"]), body
        assert len(warnings) == 1  # once, not per request
    else:
        assert status == 200, body
    assert body["callout_clock_skew_s"] == pytest.approx(measured, abs=0.1)


async def test_a_bridge_far_ahead_refuses_expired_requests_and_says_why(
    tmp_path: Path,
    settings: Settings,
    swarm: EmulatedSwarm,
    docker_api: DockerEmulator,
    logs: list[MutableMapping[str, Any]],
) -> None:
    """11 s ahead, every request has expired on the bridge's clock beyond the tolerance: it is
    refused (not answered), counted as expired, and /healthz is 503 naming the clocks."""
    files = make_keys(tmp_path / "keys")
    (address,) = [swarm.address_of(t) or "" for t in swarm.add_tasks(1)]
    async with (
        callout_server(tmp_path, files) as server,
        run_bridge(
            bridge_settings(settings, files), server.url, clock=lambda: time.time() + 11
        ) as running,
    ):
        await wait_for(
            lambda: any(e["event"] == "callout_serving" for e in logs), what="the callout"
        )
        with pytest.raises(Refused):
            async with admitted(server, address, timeout=0):
                pass

        async def counted() -> bool:
            return (await callouts(running))[("rejected", "expired")] >= 1

        await wait_for(counted, timeout=5, what="the expired request on /metrics")
        status, body = await _healthz(running)
    assert status == 503
    assert any("ahead of the NATS server's" in r for r in body["reasons"]), body
    assert any(e["event"] == "callout_request_rejected" for e in logs)
