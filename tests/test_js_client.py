"""The operators' and coordinators' side, driven by the official JavaScript NATS client under
nats.conf's users: the contract is not Python-only (tests/js/operator.mjs)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Any

import pytest

from bridge.config import Settings
from bridge.devkit.emulator import EmulatedSwarm
from bridge.edges.nats_server import EmbeddedNats
from tests.conftest import RunningBridge
from tests.js_support import JS_DIR, node_or_skip
from tests.trust.test_nats_conf import PASSWORDS, secured_fleet, secured_server

__all__ = ["secured_server"]

pytestmark = pytest.mark.timeout(120)

OPPORTUNITY = {"id": "council-js", "roles": [{"name": "tpm", "core": True}]}


@pytest.fixture
async def fleet_bridge(
    secured_server: EmbeddedNats, swarm: EmulatedSwarm, settings: Settings
) -> AsyncIterator[tuple[RunningBridge, list[str]]]:
    """The bridge as user `bridge`, 4 agents (2 on the bus, as user `agent`)."""
    async with secured_fleet(secured_server, swarm, settings, "127.29.0.1") as running:
        yield running


async def _operator(
    server: EmbeddedNats,
    swarm: EmulatedSwarm,
    user: str,
    password: str,
    inbox_prefix: str,
    steps: str = "",
) -> dict[str, dict[str, Any]]:
    """Run operator.mjs as `user` (`steps`: all by default); a task joins once it watches.
    Its steps' lines, by name."""
    proc = await asyncio.create_subprocess_exec(
        node_or_skip(),
        str(JS_DIR / "operator.mjs"),
        cwd=JS_DIR,
        env={
            "PATH": "/usr/bin:/bin",
            "NATS_URL": server.url,
            "NATS_USER": user,
            "NATS_PASSWORD": password,
            "INBOX_PREFIX": inbox_prefix,
            "OPPORTUNITY": json.dumps(OPPORTUNITY),
            "STEPS": steps,
            "AGENTS": "4",
            "ON_BUS": "2",
        },
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    assert proc.stdout is not None and proc.stderr is not None
    lines: dict[str, dict[str, Any]] = {}
    async with asyncio.timeout(60):
        async for raw in proc.stdout:
            line = json.loads(raw)
            assert "error" not in line, f"{user}: {line['error']}"
            lines[line["step"]] = line
            if line["step"] == "watching":
                lines["joined"] = {"id": swarm.add_tasks(1)[0]}
        err = await proc.stderr.read()
        assert await proc.wait() == 0, err.decode()
    return lines


@pytest.mark.parametrize(
    ("user", "password", "inbox_prefix"),
    [
        ("ops", PASSWORDS["OPS_PASS"], ""),
        ("coordinator", PASSWORDS["COORD_PASS"], "_INBOX.coord"),
    ],
)
async def test_operator_side_with_the_js_client(
    secured_server: EmbeddedNats,
    swarm: EmulatedSwarm,
    fleet_bridge: tuple[RunningBridge, list[str]],
    user: str,
    password: str,
    inbox_prefix: str,
) -> None:
    """List and read the bucket and the leader key, find the micro service, request a
    broadcast and read its report (and a refusal), watch an announcement."""
    running, task_ids = fleet_bridge
    steps = await _operator(secured_server, swarm, user, password, inbox_prefix)
    assert {"chorus_agents", "chorus_bridge", "chorus_presence"} <= set(steps["buckets"]["names"])
    assert steps["agents"]["keys"] == sorted(task_ids)
    assert {a["id"] for a in steps["agents"]["agents"]} == set(task_ids)
    assert steps["watch chorus_agents"]["keys"] == sorted(task_ids)
    assert steps["watch chorus_presence"]["keys"] == sorted(task_ids[:2])
    assert running.bridge.election is not None
    assert steps["leader"]["value"] is not None
    assert steps["micro"]["pings"] == ["chorus-bridge"]
    assert steps["micro"]["endpoints"] == [
        ["broadcast", "chorus.bridge.broadcast", "chorus-bridge"],
        ["council", "chorus.bridge.council", "chorus-bridge"],
        ["agents", "chorus.bridge.agents", "chorus-bridge"],
    ]
    report = steps["broadcast"]["report"]
    assert (
        report["opportunity_id"],
        report["total_agents"],
        report["success_count"],
        report["via_bus"],
        report["via_http"],
    ) == ("council-js", 4, 4, 2, 2)
    assert steps["broadcast"]["refused_code"] == "400"
    assert steps["broadcast"]["refused"]["field"] == "$.id"
    announcement = steps["announcement"]["announcement"]
    assert (announcement["event"], announcement["agent"]["id"]) == ("joined", steps["joined"]["id"])


async def test_agent_side_with_the_js_client(
    secured_server: EmbeddedNats,
    swarm: EmulatedSwarm,
    fleet_bridge: tuple[RunningBridge, list[str]],
) -> None:
    """As user `agent`, what README names for agents: the announcements. Agents have no
    JetStream (their own account, AGENTS): the agents bucket is the bridge's, and a read of
    it is refused (agents ask the bridge for the roster instead)."""
    steps = await _operator(
        secured_server, swarm, "agent", PASSWORDS["AGENT_PASS"], "_INBOX.agent", steps="watch"
    )
    assert steps["announcement"]["announcement"]["agent"]["id"] == steps["joined"]["id"]
    with pytest.raises(AssertionError, match="Permissions Violation for Publish to"):
        await _operator(
            secured_server, swarm, "agent", PASSWORDS["AGENT_PASS"], "_INBOX.agent", steps="agents"
        )
