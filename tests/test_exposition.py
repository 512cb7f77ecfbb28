"""The fast /metrics encoders (replwatch/exporter/exposition.py) give byte for byte what
prometheus_client's own encoders give, for every format choose_encoder can pick: a table of
families covering each metric type and each thing the fast path hands back to
prometheus_client (timestamps, exemplars, units, UTF-8 and colon names, OpenMetrics-only
samples), generated families (hypothesis), and the daemon's real registry over a fleet of
snapshots. The speed is measured in bench/fault_scale.py, not here."""

from __future__ import annotations

import math
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeHistogramMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    InfoMetricFamily,
    StateSetMetricFamily,
    SummaryMetricFamily,
    UnknownMetricFamily,
)
from prometheus_client.exposition import choose_encoder
from prometheus_client.metrics_core import Metric
from prometheus_client.samples import Exemplar

from replwatch.exporter.exposition import Families, FastEncoder, fast_encoder_for, go_float
from replwatch.exporter.server import RenderGate

# what Prometheus 2 and 3 send, what curl sends, and the explicit variants
ACCEPTS = [
    "",
    "application/openmetrics-text;version=1.0.0,application/openmetrics-text;version=0.0.1;"
    "q=0.75,text/plain;version=0.0.4;q=0.5,*/*;q=0.1",
    "application/openmetrics-text;version=1.0.0;escaping=allow-utf-8;q=0.6,"
    "text/plain;version=1.0.0;escaping=allow-utf-8;q=0.5",
    "application/openmetrics-text",
    "text/plain;version=1.0.0;escaping=underscores",
    "text/plain;version=1.0.0;escaping=dots",
    "application/openmetrics-text;version=1.0.0;escaping=values",
]


def gauge(name: str = "g", doc: str = "A gauge.", **labels: str) -> GaugeMetricFamily:
    fam = GaugeMetricFamily(name, doc, labels=list(labels))
    fam.add_metric(list(labels.values()), 1.5)
    return fam


def table() -> dict[str, list[Metric]]:
    """name -> families: every type, and every case the fast path must hand back."""
    cases: dict[str, list[Metric]] = {}
    g = GaugeMetricFamily("replwatch_lag_seconds", "Lag.", labels=["group", "replica"])
    for value in (0, 1, -1, 0.1, 1e-9, 123456.0, 999999.5, 1e6, 1234567.0, 1e21, -1e21, 2**53):
        g.add_metric(["g", str(value)], value)
    for value in (math.inf, -math.inf, math.nan):
        g.add_metric(["special", repr(value)], value)
    cases["gauge values"] = [g]
    cases["no labels"] = [GaugeMetricFamily("up_plain", "Plain.", value=1)]
    escapes = GaugeMetricFamily("esc", 'Help with \\ and\nnewline and "quotes".', labels=["v"])
    for text in ('a"b', "a\\b", "a\nb", "é ü ß ✓", "", "}{,=", "tab\there"):
        escapes.add_metric([text], 1)
    cases["label value escaping"] = [escapes]
    unsorted = GaugeMetricFamily("order", "Labels given out of order.", labels=["zeta", "alpha"])
    unsorted.add_metric(["z", "a"], 2)
    cases["label order"] = [unsorted]
    counter = CounterMetricFamily("runs", "Runs.", labels=["job"])
    counter.add_metric(["poll"], 7)
    counter.add_metric(["probe"], 0)
    cases["counter"] = [counter]
    created = CounterMetricFamily("made", "With created.", labels=["x"], created=1700000000.5)
    created.add_metric(["y"], 3, created=1700000001.25)
    cases["counter with _created"] = [created]
    hist = HistogramMetricFamily("wait_seconds", "Waits.", labels=["group"])
    hist.add_metric(["a"], [("0.001", 0), ("0.5", 3), ("+Inf", 4)], sum_value=0.75)
    hist.add_metric(["b"], [("+Inf", 0)], sum_value=0)
    cases["histogram"] = [hist]
    summary = SummaryMetricFamily("sizes", "Sizes.", labels=["k"])
    summary.add_metric(["a"], count_value=3, sum_value=12.5)
    cases["summary"] = [summary]
    info = InfoMetricFamily("build", "Build.", labels=["version"])
    info.add_metric(["1.0"], {"python": "3.11"})
    cases["info"] = [info]
    unknown = UnknownMetricFamily("mystery", "Unknown.", labels=["k"])
    unknown.add_metric(["v"], 2)
    cases["unknown"] = [unknown]
    state = StateSetMetricFamily("state", "A stateset.", labels=["k"])
    state.add_metric(["v"], {"on": True, "off": False})
    cases["stateset (handed back)"] = [state]
    gh = GaugeHistogramMetricFamily("gh", "A gauge histogram.", labels=["k"])
    gh.add_metric(["v"], [("1", 1), ("+Inf", 2)], gsum_value=3)
    cases["gauge histogram (handed back)"] = [gh]
    stamped = GaugeMetricFamily("stamped", "With a timestamp.", labels=["k"])
    stamped.add_metric(["v"], 1, timestamp=1700000000.123)
    cases["timestamp (handed back)"] = [stamped]
    with_unit = GaugeMetricFamily("temp_celsius", "With a unit.", unit="celsius")
    with_unit.add_metric([], 20)
    cases["unit (handed back in OpenMetrics)"] = [with_unit]
    ex = HistogramMetricFamily("exemplified", "With exemplars.")
    ex.add_metric([], [("1", 1, Exemplar({"trace": "abc"}, 0.5)), ("+Inf", 2)], sum_value=1.5)
    cases["exemplar (handed back)"] = [ex]
    cases["colon name (handed back)"] = [gauge("rule:lag:max")]
    cases["UTF-8 metric name (handed back)"] = [gauge("lag.seconds")]
    cases["UTF-8 label name (handed back)"] = [gauge("lagged", **{"replica.name": "r1"})]
    cases["mixed, fast and handed back"] = [
        gauge("first", group="a"),
        gauge("rule:second"),
        gauge("third", group="a"),
        stamped,
        counter,
    ]
    cases["nothing"] = []
    return cases


CASES = table()


@pytest.mark.parametrize("accept", ACCEPTS)
@pytest.mark.parametrize("case", list(CASES))
def test_fast_encoders_give_prometheus_clients_bytes(case: str, accept: str) -> None:
    families = Families(CASES[case])
    encoder, content_type = choose_encoder(accept)
    fast = fast_encoder_for(encoder, content_type, {})
    expected = encoder(families)
    assert fast(families) == expected
    assert fast(families) == expected  # again, from the remembered label sets


def test_fast_path_taken_where_it_is_safe() -> None:
    """Text 0.0.4 and OpenMetrics with underscores or allow-utf-8 get a FastEncoder; escapings
    that rewrite legacy names (dots, values) keep prometheus_client's encoder."""
    kinds = {}
    for accept in ACCEPTS:
        encoder, content_type = choose_encoder(accept)
        kinds[accept] = isinstance(fast_encoder_for(encoder, content_type, {}), FastEncoder)
    assert kinds[""] and kinds[ACCEPTS[1]] and kinds[ACCEPTS[2]] and kinds[ACCEPTS[3]]
    assert kinds[ACCEPTS[4]]
    assert not kinds["text/plain;version=1.0.0;escaping=dots"]
    assert not kinds["application/openmetrics-text;version=1.0.0;escaping=values"]


def test_one_encoder_per_content_type() -> None:
    """choose_encoder makes a new encoder object per OpenMetrics request: the encoders (and
    their label caches) are kept per content type, not per object."""
    cache: dict[str, FastEncoder] = {}
    firsts = set()
    for _ in range(5):
        encoder, content_type = choose_encoder(ACCEPTS[1])
        firsts.add(id(fast_encoder_for(encoder, content_type, cache)))
    assert len(firsts) == 1 and len(cache) == 1


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (0, "0.0"),
        (1, "1.0"),
        (-2.5, "-2.5"),
        (999999.0, "999999.0"),
        (1e6, "1e+06"),
        (1234567.0, "1.234567e+06"),
        (-1e6, "-1000000.0"),
        (1e21, "1e+21"),
        (math.inf, "+Inf"),
        (-math.inf, "-Inf"),
        (math.nan, "NaN"),
        (True, "1.0"),
    ],
)
def test_go_float(value: float, expected: str) -> None:
    assert go_float(value) == expected


label_text = st.text(st.characters(blacklist_categories=["Cs"]), max_size=12)
legacy_name = st.from_regex(r"[a-z_][a-z0-9_]{0,12}", fullmatch=True)
any_name = st.one_of(legacy_name, st.from_regex(r"[a-z][a-z0-9_.:]{0,8}", fullmatch=True))
values = st.one_of(
    st.floats(allow_nan=True, allow_infinity=True),
    st.integers(min_value=-(2**62), max_value=2**62),
)


@st.composite
def families(draw: Any) -> list[Metric]:
    out: list[Metric] = []
    for _ in range(draw(st.integers(0, 4))):
        name = draw(any_name)
        labels = draw(st.lists(any_name, max_size=3, unique=True))
        doc = draw(label_text)
        kind = draw(st.sampled_from(["gauge", "counter", "unknown", "histogram"]))
        if kind == "histogram":
            fam: Metric = HistogramMetricFamily(name, doc, labels=labels)
        elif kind == "counter":
            fam = CounterMetricFamily(name, doc, labels=labels)
        elif kind == "unknown":
            fam = UnknownMetricFamily(name, doc, labels=labels)
        else:
            fam = GaugeMetricFamily(name, doc, labels=labels)
        for _ in range(draw(st.integers(0, 3))):
            label_values = [draw(label_text) for _ in labels]
            if kind == "histogram":
                fam.add_metric(  # type: ignore[attr-defined]
                    label_values, [("1", 1), ("+Inf", 2)], sum_value=draw(values)
                )
            else:
                fam.add_metric(label_values, draw(values))  # type: ignore[attr-defined]
        out.append(fam)
    return out


@settings(max_examples=300, deadline=None)
@given(families(), st.sampled_from(ACCEPTS))
def test_generated_families_render_alike(fams: list[Metric], accept: str) -> None:
    encoder, content_type = choose_encoder(accept)
    fast = fast_encoder_for(encoder, content_type, {})
    try:
        expected = encoder(Families(fams))
    except Exception as exc:  # prometheus_client refuses it: the fast path must too
        with pytest.raises(type(exc)):
            fast(Families(fams))
        return
    assert fast(Families(fams)) == expected


@pytest.mark.parametrize("accept", ACCEPTS)
def test_reserved_label_names_render_alike(accept: str) -> None:
    """A label name starting with "__" (reserved) is quoted by prometheus_client 0.26 under
    allow-utf-8 escaping: the fast path hands such samples to it (hypothesis found it)."""
    fam = Metric("_", "", "gauge")
    fam.add_sample("_", {"_": "", "a": "", "__": ""}, 0.0)
    fams: list[Metric] = [fam, Metric("_", "", "gauge")]
    encoder, content_type = choose_encoder(accept)
    fast = fast_encoder_for(encoder, content_type, {})
    assert fast(Families(fams)) == encoder(Families(fams))


def test_the_daemons_registry_renders_alike() -> None:
    """The real collectors over a fleet of 200 replicas (bench/status_page.py's generated
    snapshots), with scheduler statistics and probes: every format renders alike."""
    import time

    from bench.status_page import fleet
    from replwatch.app import build_registry
    from replwatch.config import RoutingConfig
    from replwatch.observe.probe import ProbeResult
    from replwatch.routing.engine import RoutingEngine
    from replwatch.scheduler import SchedulerStats
    from replwatch.state import ProbeStore, SnapshotStore

    now = time.time()
    snapshots = fleet(200, now)
    store = SnapshotStore()
    store.expect([s.name for s in snapshots])
    routing = RoutingEngine(lambda _name: RoutingConfig())
    stats = SchedulerStats()
    probes = ProbeStore()
    for snap in snapshots:
        store.put(snap)
        routing.update(snap)
        stats.add("poll", snap.name, "completed")
        stats.add("heartbeat", snap.name, "ok")
        probes.record(ProbeResult(snap.name, "ok", 1, 1, 0.002, at=now))
    registry = build_registry(store, stats, probes, routing, None, None, None, None, None)
    # collectors whose values move between two renders (process CPU, GC) are left out
    stable = CollectorRegistry(auto_describe=False)
    for collector in list(registry._collector_to_names):
        if type(collector).__module__.startswith("replwatch"):
            stable.register(collector)
    cache: dict[str, FastEncoder] = {}
    for accept in ACCEPTS:
        encoder, content_type = choose_encoder(accept)
        fast = fast_encoder_for(encoder, content_type, cache)
        assert fast(stable) == encoder(stable), accept
        gate = RenderGate(lambda registry, encoders: [e(registry) for e in encoders], 0.0)
        assert gate.render(stable, content_type, fast) == encoder(stable), accept
