"""docs/operations.md names only what exists (metrics /metrics serves, alerts of the rules, log
events and values the code writes, its own sections), and has a runbook for every alert, which
the alert's runbook_url points at."""

from __future__ import annotations

import re
from pathlib import Path

import msgspec
from prometheus_client import generate_latest

from bridge.ops.metrics import Metrics

ROOT = Path(__file__).resolve().parents[2]
DOC = ROOT / "docs" / "operations.md"
RULES = ROOT / "deploy" / "prometheus" / "alerts.yml"
RUNBOOK_PARTS = ("**Meaning**", "**Impact**", "**First checks**", "**Fixes**")


def _text() -> str:
    return DOC.read_text()


def _sections(text: str) -> dict[str, str]:
    """Each heading's GitHub anchor, and the text under it up to the next heading."""
    parts = re.split(r"^#{2,4} (.+)$", text, flags=re.MULTILINE)
    return {_anchor(title): body for title, body in zip(parts[1::2], parts[2::2], strict=True)}


def _anchor(title: str) -> str:
    # GitHub's: lower case, punctuation but hyphens and underscores dropped, spaces as hyphens.
    return re.sub(r"[^\w\- ]", "", title.strip().lower()).replace(" ", "-")


def _rules() -> dict[str, dict[str, str]]:
    """Each alert's annotations."""
    groups = msgspec.yaml.decode(RULES.read_bytes())["groups"]
    return {r["alert"]: r["annotations"] for g in groups for r in g["rules"]}


def _served() -> set[str]:
    text = generate_latest(Metrics().registry).decode()
    return set(re.findall(r"^# TYPE (\S+) ", text, flags=re.MULTILINE))


def _code_strings() -> set[str]:
    """Every identifier-like string literal of the package: log events, label values, JSON
    keys, settings' choices."""
    found: set[str] = set()
    for source in (ROOT / "bridge").rglob("*.py"):
        found.update(re.findall(r"""["']([a-z][a-z0-9_]*)["']""", source.read_text()))
    return found


def _log_events() -> set[str]:
    found: set[str] = set()
    for source in (ROOT / "bridge").rglob("*.py"):
        found.update(
            re.findall(
                r"\.(?:debug|info|warning|error|exception|critical)\(\s*\"([a-z][a-z0-9_]*)\"",
                source.read_text(),
            )
        )
    return found


def test_every_metric_named_is_served() -> None:
    named = set(re.findall(r"\b((?:chorus_bridge|process|python)_[a-z_]+)\b", _text()))
    served = _served()
    assert named and named <= served, sorted(named - served)


def test_every_alert_named_exists_and_has_its_runbook() -> None:
    """Every alert has a section under Runbooks with its four parts, and its runbook_url is
    that section's anchor; no other ChorusBridge name appears."""
    text = _text()
    rules = _rules()
    named = set(re.findall(r"\bChorusBridge\w+", text))
    assert named <= set(rules), sorted(named - set(rules))
    runbooks = _sections(text.partition("\n## Runbooks\n")[2])
    for alert, notes in rules.items():
        anchor = alert.lower()
        assert anchor in runbooks, f"no runbook for {alert}"
        assert all(part in runbooks[anchor] for part in RUNBOOK_PARTS), alert
        assert notes.get("runbook_url") == f"docs/operations.md#{anchor}", alert


def test_links_within_the_doc_resolve() -> None:
    text = _text()
    anchors = set(_sections(text))
    links = set(re.findall(r"\]\(#([^)]+)\)", text))
    assert links and links <= anchors, sorted(links - anchors)


def _contract_words() -> set[str]:
    """The names of the contract (buckets, payload fields), from docs/asyncapi.yaml, which is
    generated from the wire models; the stack's services (stack `chorus`); the alert rules'
    annotation keys."""
    words = set(re.findall(r"\b[a-z][a-z0-9_]*\b", (ROOT / "docs" / "asyncapi.yaml").read_text()))
    stack = msgspec.yaml.decode((ROOT / "docker-compose.swarm.yml").read_bytes())
    words |= {f"chorus_{service}" for service in stack["services"]}
    return words | {key for notes in _rules().values() for key in notes}


def test_every_log_event_and_value_named_is_in_the_code() -> None:
    """Each `snake_case` name in backquotes that is no metric is a string the code writes (a
    log event, a label value, a key of /healthz) or a name of the contract or the stack; and
    the doc names log events at all."""
    names = set(re.findall(r"`([a-z][a-z0-9]*(?:_[a-z0-9]+)+)`", _text()))
    others = {n for n in names if not n.startswith(("chorus_bridge_", "process_", "python_"))}
    known = _code_strings() | _contract_words()
    assert others <= known, sorted(others - known)
    events = others & _log_events()
    assert {"leader_lease_lost", "nats_not_answering", "callout_refused"} <= events
