"""`chorus_bridge_claims_total`, counted in a dict and read by Prometheus at each scrape.

Claims are counted on the hot path of a race: thousands a second, one count each. A
prometheus_client Counter's increment (its checks and its lock) cost several times a dict's
(0.33-0.52 us against 0.10 us on the bench machine, `timeit`), and the claim path is what the
arbitration figure of `bench/council.py` follows. The counts live in the event loop's thread;
a scrape reads a copy of them.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator

from prometheus_client import CollectorRegistry
from prometheus_client.core import CounterMetricFamily
from prometheus_client.registry import Collector

__all__ = ["ClaimTally"]

NAME = "chorus_bridge_claims"
HELP = "Claims of council roles, by outcome and reason"


class ClaimTally(Collector):
    """Claims by (outcome, reason); every pair of `known` starts at 0 (an alert's
    `increase()` sees the first one too). A reason may be given as an answer says it
    (`holds another role`): it is counted as its label value (`holds_another_role`)."""

    def __init__(self, registry: CollectorRegistry, known: Iterable[tuple[str, str]]) -> None:
        self._counts: dict[tuple[str, str], int] = {}
        self._label_of: dict[tuple[str, str], tuple[str, str]] = {}
        for outcome, reason in known:
            self._label(outcome, reason)
        registry.register(self)

    def count(self, outcome: str, reason: str) -> None:
        """One claim more of (outcome, reason)."""
        label = self._label_of.get((outcome, reason)) or self._label(outcome, reason)
        self._counts[label] += 1

    def value(self, outcome: str, reason: str) -> int:
        return self._counts.get((outcome, reason.replace(" ", "_")), 0)

    def collect(self) -> Iterator[CounterMetricFamily]:
        family = CounterMetricFamily(NAME, HELP, labels=["outcome", "reason"])
        for (outcome, reason), count in list(self._counts.items()):  # a copy: a scrape's thread
            family.add_metric([outcome, reason], count)
        yield family

    def _label(self, outcome: str, reason: str) -> tuple[str, str]:
        label = (outcome, reason.replace(" ", "_"))
        self._label_of[(outcome, reason)] = label
        self._label_of[(outcome, label[1].replace("_", " "))] = label
        self._counts.setdefault(label, 0)
        return label
