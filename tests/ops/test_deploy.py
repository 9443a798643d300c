"""deploy/: the alert rules pass promtool's checks and fire on their test series; the
dashboard queries only metrics the bridge serves."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest
from prometheus_client import generate_latest

from bridge.ops.metrics import Metrics

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"
RULES = DEPLOY / "prometheus" / "alerts.yml"
ALERTS = (
    "ChorusBridgeDown",
    "ChorusBridgeNoLeader",
    "ChorusBridgeDiscoveryFailing",
    "ChorusBridgeAgentsDropped",
    "ChorusBridgeDeliveriesFailing",
    "ChorusBridgeWritesFailing",
    "ChorusBridgeAgentsRefused",
    "ChorusBridgeCalloutRejecting",
    "ChorusBridgeCouncilsExpired",
)


def promtool() -> str:
    found = shutil.which("promtool")
    if found:
        return found
    if os.environ.get("CI") == "true":
        pytest.fail(
            "promtool is missing: apt-get install prometheus (scripts/test.sh does, as root)"
        )
    pytest.skip(
        "promtool is missing: the alert rules are not checked; apt-get install prometheus "
        "(scripts/test.sh does as root), or put promtool on PATH"
    )


def _served() -> set[str]:
    text = generate_latest(Metrics().registry).decode()
    return set(re.findall(r"^# TYPE (\S+) ", text, flags=re.MULTILINE))


def test_rules_pass_promtool_check() -> None:
    """`promtool check rules` accepts the rules."""
    result = subprocess.run(
        [promtool(), "check", "rules", str(RULES)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout


def test_rules_fire_on_their_series() -> None:
    """`promtool test rules`: each alert fires on its series, and not before."""
    tests = DEPLOY / "prometheus" / "alerts.test.yml"
    result = subprocess.run(
        [promtool(), "test", "rules", str(tests)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    text = tests.read_text()
    for alert in ALERTS:
        assert f"alertname: {alert}\n        exp_alerts:\n          - exp_labels" in text, alert


def _metric_names(expr: str) -> set[str]:
    names = set(re.findall(r"\b((?:chorus_bridge|process|python)_[a-z_]+)", expr))
    return {re.sub(r"_(bucket|sum|count)$", "", n) if "_seconds_" in n else n for n in names}


def test_rules_and_dashboard_use_served_metrics() -> None:
    """Every metric the rules and the dashboard query is one /metrics serves."""
    served = _served()
    dashboard = json.loads((DEPLOY / "grafana" / "chorus-bridge.json").read_text())
    exprs = [t["expr"] for p in dashboard["panels"] for t in p["targets"]]
    exprs.append(RULES.read_text())
    used = set().union(*(_metric_names(e) for e in exprs))
    assert used and used <= served, used - served
    assert {
        "chorus_bridge_agents",
        "chorus_bridge_deliveries_total",
        "chorus_bridge_callouts_total",
        "chorus_bridge_build_info",
        "chorus_bridge_claims_total",
        "chorus_bridge_councils",
        "chorus_bridge_council_activation_seconds",
        "chorus_bridge_council_events_total",
    } <= used
