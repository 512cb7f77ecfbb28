"""A metric family as data: name, type, HELP text, label names.

Each collector declares the families it exports as definitions (its module's METRICS, in
the order it yields them) and builds every family from them, so the metrics reference
(docs/metrics.md, written by `python -m replwatch.exporter.metrics_doc`) is generated from the
very definitions the exposition uses: a name, a HELP text or a label cannot differ between
the two.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily


@dataclass(frozen=True)
class MetricDef:
    name: str  # the family's name; a counter's without `_total`
    help: str
    labels: tuple[str, ...] = ()
    kind: ClassVar[str] = ""
    suffixes: ClassVar[tuple[str, ...]] = ("",)  # the sample names the family exposes

    @property
    def sample_names(self) -> tuple[str, ...]:
        return tuple(self.name + s for s in self.suffixes)


@dataclass(frozen=True)
class GaugeDef(MetricDef):
    kind: ClassVar[str] = "gauge"

    def family(self, value: float | None = None) -> GaugeMetricFamily:
        if value is not None:  # an unlabelled family with its one value
            return GaugeMetricFamily(self.name, self.help, value=value)
        return GaugeMetricFamily(self.name, self.help, labels=list(self.labels))


@dataclass(frozen=True)
class CounterDef(MetricDef):
    kind: ClassVar[str] = "counter"
    suffixes: ClassVar[tuple[str, ...]] = ("_total",)

    def family(self, value: float | None = None) -> CounterMetricFamily:
        if value is not None:
            return CounterMetricFamily(self.name, self.help, value=value)
        return CounterMetricFamily(self.name, self.help, labels=list(self.labels))


@dataclass(frozen=True)
class HistogramDef(MetricDef):
    kind: ClassVar[str] = "histogram"
    suffixes: ClassVar[tuple[str, ...]] = ("_bucket", "_sum", "_count")

    def family(self) -> HistogramMetricFamily:
        return HistogramMetricFamily(self.name, self.help, labels=list(self.labels))
