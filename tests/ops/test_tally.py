"""`chorus_bridge_claims_total` as Prometheus reads it: every known pair from 0, a reason
counted as the answer says it or as its label, and a pair nobody listed counted too."""

from __future__ import annotations

from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from bridge.ops.metrics import Metrics


def _claims(metrics: Metrics) -> dict[tuple[str, str], float]:
    text = generate_latest(metrics.registry).decode()
    return {
        (s.labels["outcome"], s.labels["reason"]): s.value
        for family in text_string_to_metric_families(text)
        if family.name == "chorus_bridge_claims"
        for s in family.samples
        if s.name == "chorus_bridge_claims_total"
    }


def test_claims_by_outcome_and_reason() -> None:
    metrics = Metrics()
    assert _claims(metrics)[("refused", "holds_another_role")] == 0
    metrics.count_claim("refused", "holds another role")  # as the answer says it
    metrics.count_claim("refused", "holds_another_role")  # as its label
    metrics.count_claim("granted")
    metrics.count_claim("dropped", "some new reason")
    claims = _claims(metrics)
    assert claims[("refused", "holds_another_role")] == 2
    assert claims[("granted", "none")] == 1
    assert claims[("dropped", "some_new_reason")] == 1
    assert claims[("refused", "taken")] == 0
    assert metrics.claims.value("refused", "holds another role") == 2
