"""The Grafana dashboards in grafana/ are what grafana/generate.py produces, are importable
(the fields Grafana needs, a datasource variable every panel and target uses, query variables
over label_values of real labels, a unit on every data panel, a description on every panel),
their PromQL parses (promtool), and every metric name, label matcher and legend label they use
exists in the REAL exposition of a `replwatch run` watching a real master/replica group with
WAIT probes and routing, and supervising an ha sync task (plus an unreachable group and an
unreachable sync source, so the error-info series exist too)."""

from __future__ import annotations

import importlib.util
import json
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from .support.daemons import RunningDaemon, fetch
from .support.datasets import connect
from .support.servers import ServerSet, closed_port, require_build, wait_for

ROOT = Path(__file__).resolve().parent.parent
GRAFANA = ROOT / "grafana"
EXPECTED = ["replwatch-fleet.json", "replwatch-group.json", "replwatch-sync.json"]
DATA_PANELS = {"timeseries", "stat", "state-timeline", "heatmap", "table", "bargauge", "gauge"}
# panels whose numbers need a real unit ("none" is fine for states and tables)
UNIT_PANELS = {"timeseries", "stat", "heatmap", "bargauge", "gauge"}
VARIABLES = {
    "replwatch-fleet.json": {"group"},
    "replwatch-group.json": {"group", "replica"},
    "replwatch-sync.json": {"task"},
}
# labels Prometheus adds to every scraped series
TARGET_LABELS = {"instance", "job"}
PROMQL_KEYWORDS = {
    "and",
    "or",
    "unless",
    "by",
    "without",
    "on",
    "ignoring",
    "group_left",
    "group_right",
    "bool",
    "offset",
}
Json = dict[str, Any]


# ----------------------------------------------------------------------------- PromQL helpers


def _strip_strings(expr: str) -> str:
    return re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)


def metric_names(expr: str) -> set[str]:
    """Metric names a PromQL expression selects: identifiers outside label matchers, ranges
    and grouping clauses, not followed by '(' (functions) and not keywords or $variables."""
    s = _strip_strings(expr)
    s = re.sub(r"\{[^}]*\}", " ", s)
    s = re.sub(r"\[[^\]]*\]", " ", s)
    s = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", " ", s)
    names = set()
    for m in re.finditer(r"(?<![\w$.])[A-Za-z_:][\w:]*", s):
        if s[m.end() :].lstrip().startswith("(") or m.group(0) in PROMQL_KEYWORDS:
            continue
        names.add(m.group(0))
    return names


def selectors(expr: str) -> list[tuple[str, set[str]]]:
    """(metric, label names its matchers use) for every `name{...}` selector."""
    out = []
    for m in re.finditer(r"([A-Za-z_:][\w:]*)\s*\{([^}]*)\}", expr):
        out.append((m.group(1), set(re.findall(r"(\w+)\s*(?:=~|!~|!=|=)", m.group(2)))))
    return out


def grouping_labels(expr: str) -> set[str]:
    found: set[str] = set()
    for m in re.finditer(r"\b(?:by|without|on|ignoring)\s*\(([^)]*)\)", _strip_strings(expr)):
        found |= {x.strip() for x in m.group(1).split(",") if x.strip()}
    return found


def substitute(expr: str) -> str:
    """Grafana's variables replaced by values PromQL accepts."""
    expr = re.sub(r"\$__(rate_interval|interval|range)\b", "5m", expr)
    return re.sub(r"\$\{?(\w+)\}?", "x", expr)


# ----------------------------------------------------------------------------- the dashboards


def _generator() -> ModuleType:
    spec = importlib.util.spec_from_file_location("grafana_generate", GRAFANA / "generate.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _load(name: str) -> Json:
    data = json.loads((GRAFANA / name).read_text())
    assert isinstance(data, dict)
    return data


def _data_panels(dash: Json) -> list[Json]:
    return [p for p in dash["panels"] if p["type"] != "row"]


def _targets(dash: Json) -> Iterator[tuple[str, Json]]:
    for p in _data_panels(dash):
        for t in p["targets"]:
            yield p["title"], t


def test_the_dashboards_are_these_three() -> None:
    assert sorted(p.name for p in GRAFANA.glob("*.json")) == EXPECTED


def test_committed_json_is_the_generators_output() -> None:
    gen = _generator()
    assert sorted(gen.DASHBOARDS) == EXPECTED
    for name, build in gen.DASHBOARDS.items():
        assert (GRAFANA / name).read_text() == gen.render(build), (
            f"{name} is stale: run python grafana/generate.py"
        )
    check = subprocess.run(
        [sys.executable, str(GRAFANA / "generate.py"), "--check"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert check.returncode == 0, check.stderr


@pytest.mark.parametrize("name", EXPECTED)
def test_dashboard_is_importable(name: str) -> None:
    dash = _load(name)
    assert dash["uid"] == name.removesuffix(".json") and len(dash["uid"]) <= 40
    assert dash["title"].startswith("replwatch / ")
    assert isinstance(dash["schemaVersion"], int) and dash["schemaVersion"] >= 36
    assert "__inputs" not in dash  # the datasource is a variable, not an import input
    variables = {v["name"]: v for v in dash["templating"]["list"]}
    ds = variables.pop("datasource")
    assert (ds["type"], ds["query"]) == ("datasource", "prometheus")
    assert set(variables) == VARIABLES[name]
    for var in variables.values():
        assert var["type"] == "query"
        assert var["datasource"] == {"type": "prometheus", "uid": "${datasource}"}
        assert var["definition"] == var["query"]["query"]
        assert re.fullmatch(r"label_values\(\w+(\{[^}]*\})?, *\w+\)", var["definition"])

    ids = [p["id"] for p in dash["panels"]]
    assert len(ids) == len(set(ids)), "panel ids must be unique"
    for p in dash["panels"]:
        pos = p["gridPos"]
        assert pos["w"] > 0 and pos["h"] > 0 and pos["x"] + pos["w"] <= 24, p["title"]
    panels = _data_panels(dash)
    assert len(panels) >= 8
    for p in panels:
        assert p["type"] in DATA_PANELS, p["title"]
        assert p["datasource"] == {"type": "prometheus", "uid": "${datasource}"}, p["title"]
        assert len(p["description"]) > 30, f"{p['title']}: say what the number means"
        unit = p["fieldConfig"]["defaults"].get("unit")
        assert unit, p["title"]
        if p["type"] in UNIT_PANELS:
            assert unit != "none" or p["fieldConfig"]["defaults"].get("mappings"), p["title"]
        assert p["targets"], p["title"]
        refs = [t["refId"] for t in p["targets"]]
        assert len(refs) == len(set(refs)), p["title"]
        for t in p["targets"]:
            assert t["datasource"] == {"type": "prometheus", "uid": "${datasource}"}
            assert metric_names(t["expr"]), (p["title"], t["expr"])
    # no two panels with the same title on one dashboard
    titles = [p["title"] for p in panels]
    assert len(titles) == len(set(titles)), titles


def test_required_panels_exist() -> None:
    """The issue's list: time lag four ways side by side, byte lag against the backlog,
    link state, WAIT latency as a heatmap of the histogram's buckets, routing state over time,
    sync progress and lag."""
    group = _load("replwatch-group.json")
    by_title = {p["title"]: p for p in _data_panels(group)}
    lag = by_title["Time lag: best, its bounds, heartbeat, offset clock, ACK age"]
    assert [metric_names(t["expr"]) for t in lag["targets"]] == [
        {"replwatch_replica_lag_seconds"},
        {"replwatch_replica_lag_lower_bound_seconds"},
        {"replwatch_replica_lag_upper_bound_seconds"},
        {"replwatch_replica_heartbeat_lag_seconds"},
        {"replwatch_replica_offset_lag_seconds"},
        {"replwatch_replica_ack_age_seconds"},
    ]
    heatmap = by_title["WAIT probe latency"]
    assert heatmap["type"] == "heatmap" and heatmap["options"]["calculate"] is False
    assert heatmap["options"]["yAxis"]["unit"] == "s"
    (t,) = heatmap["targets"]
    assert t["format"] == "heatmap" and t["legendFormat"] == "{{le}}"
    assert metric_names(t["expr"]) == {"replwatch_probe_wait_seconds_bucket"}
    assert by_title["Read rotation"]["type"] == "state-timeline"
    assert by_title["Replication link"]["type"] == "state-timeline"
    backlog = by_title["Byte lag vs backlog size"]
    assert set().union(*(metric_names(t["expr"]) for t in backlog["targets"])) >= {
        "replwatch_replica_lag_bytes",
        "replwatch_backlog_size_bytes",
    }
    assert by_title["Backlog risk"]["fieldConfig"]["defaults"]["unit"] == "percentunit"

    sync = {p["title"]: p for p in _data_panels(_load("replwatch-sync.json"))}
    assert sync["Full-sync progress"]["fieldConfig"]["defaults"]["max"] == 1
    assert sync["Lag (seconds)"]["fieldConfig"]["defaults"]["unit"] == "s"
    assert sync["Lag (bytes)"]["fieldConfig"]["defaults"]["unit"] == "bytes"
    state = sync["Task state"]
    texts = {o["text"] for o in state["fieldConfig"]["defaults"]["mappings"][0]["options"].values()}
    assert texts == {"starting", "full_sync", "incremental", "stopped", "failed", "unknown"}

    fleet = {p["title"]: p for p in _data_panels(_load("replwatch-fleet.json"))}
    table = fleet["Groups, worst lag first"]
    assert table["transformations"][-1] == {
        "id": "sortBy",
        "options": {"sort": [{"field": "Worst time lag", "desc": True}]},
    }


@pytest.mark.parametrize(
    ("expr", "names"),
    [
        (
            'max by (group) (replwatch_replica_lag_seconds{group=~"$group"})',
            {"replwatch_replica_lag_seconds"},
        ),
        ("rate(process_cpu_seconds_total[$__rate_interval])", {"process_cpu_seconds_total"}),
        ('count(up{job="x"} == 0) or vector(0)', {"up"}),
        ('a and on (group, node) b{role="master"}', {"a", "b"}),
        ("histogram_quantile(0.99, sum by (le) (rate(h_bucket[5m])))", {"h_bucket"}),
        ("time() - last_seconds", {"last_seconds"}),
    ],
)
def test_metric_names_parser(expr: str, names: set[str]) -> None:
    assert metric_names(expr) == names


def test_every_query_parses_with_promtool(tmp_path: Path) -> None:
    promtool = shutil.which("promtool")
    assert promtool, "promtool (Debian package prometheus) is needed"
    rules = []
    for name in EXPECTED:
        dash = _load(name)
        queries = [v["definition"] for v in dash["templating"]["list"] if v["type"] == "query"]
        # label_values(metric{...}, label): its selector must parse too
        selectors_ = [re.sub(r"^label_values\((.*), *\w+\)$", r"\1", q) for q in queries]
        exprs = [t["expr"] for _, t in _targets(dash)] + selectors_
        rules += [
            {"record": f"dashboard:query:{len(rules) + i}", "expr": substitute(e)}
            for i, e in enumerate(exprs)
        ]
    path = tmp_path / "queries.yml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "dashboards", "rules": rules}]}))
    result = subprocess.run(
        [promtool, "check", "rules", str(path)], capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stdout + result.stderr


# ----------------------------------------------------------------------------- real exposition


class Exposition:
    """Names and label names of a scraped /metrics: every sample's name, plus the names the
    declared families expose (a counter's _total, a histogram's _bucket/_sum/_count) for the
    families that happen to have no sample at this moment."""

    def __init__(self, text: str) -> None:
        self.labels: dict[str, set[str]] = {}
        self.without_samples: set[str] = set()
        for family in text_string_to_metric_families(text):
            for s in family.samples:
                self.labels.setdefault(s.name, set()).update(s.labels)
            if not family.samples:
                if family.type == "counter":
                    declared = [family.name + "_total"]
                elif family.type == "histogram":
                    declared = [family.name + x for x in ("_bucket", "_sum", "_count")]
                else:
                    declared = [family.name]
                self.without_samples.update(declared)
                for n in declared:
                    self.labels.setdefault(n, set())

    @property
    def names(self) -> set[str]:
        return set(self.labels)


def _wait_scrape(base: str, ready: Any, what: str, timeout: float = 40) -> str:
    def attempt() -> str | None:
        status, text = fetch(base + "/metrics")
        return text if status == 200 and ready(text) else None

    result: str = wait_for(attempt, timeout, what)
    return result


@pytest.fixture(scope="module")
def exposition(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Exposition]:
    tmp = tmp_path_factory.mktemp("dash-exposition")
    servers = ServerSet(require_build("redis-7.0"), tmp / "servers")
    daemon: RunningDaemon | None = None
    try:
        master = servers.start("master")
        replica = servers.start("replica", replica_of=master)
        source = servers.start("source")
        target = servers.start("target")
        with connect(source) as client:
            client.set("kept", 1)
            client.set("skip:me", 1)
        gone = closed_port()
        cfg = tmp / "c.yaml"
        cfg.write_text(
            yaml.safe_dump(
                {
                    "exporter": {"listen": "127.0.0.1:0"},
                    "poll": {"interval": "200ms", "timeout": "150ms"},
                    "heartbeat": {"interval": "100ms"},
                    "probe": {"enabled": True, "interval": "300ms", "timeout": "200ms"},
                    "groups": [
                        {"name": "cache", "master": master.url, "replicas": [replica.url]},
                        {"name": "gone", "master": f"redis://127.0.0.1:{gone}"},
                    ],
                    "sync": {
                        "tasks": [
                            {
                                "name": "to_target",
                                "source": source.url,
                                "target": target.url,
                                "ha": True,
                                "lease": "2s",
                                "filters": {"keys": {"deny_prefixes": ["skip:"]}},
                            },
                            {
                                "name": "no_source",
                                "source": f"redis://127.0.0.1:{gone}",
                                "target": target.url,
                            },
                        ]
                    },
                }
            )
        )
        daemon = RunningDaemon(cfg)  # 127.0.0.1:0: the port it bound is in its log
        base = daemon.base

        def complete(text: str) -> bool:
            with connect(source) as client:
                client.incr("counter")
            return all(
                re.search(pattern, text, re.M)
                for pattern in (
                    r'^replwatch_sync_state\{state="incremental",task="to_target"\} 1\.0$',
                    r'^replwatch_sync_lease_token\{task="to_target"\}',
                    r'^replwatch_sync_filtered_total\{reason="key_prefix",task="to_target"\}',
                    r'^replwatch_sync_last_error_info\{reason="source_refused",task="no_source"\}',
                    r'^replwatch_sync_process_up\{task="to_target"\} 1\.0$',
                    r'^replwatch_replica_heartbeat_lag_seconds\{group="cache"',
                    r'^replwatch_probe_wait_seconds_count\{group="cache"\} [1-9]',
                    r'^replwatch_probe_last_error_info\{group="gone"',
                    r'^replwatch_node_last_error_info\{group="gone"',
                    r'^replwatch_routing_in_rotation\{group="cache"',
                )
            )

        text = _wait_scrape(base, complete, "every series the dashboards need to be exported")
        yield Exposition(text)
    finally:
        if daemon is not None:
            daemon.stop(grace=30)  # SIGTERM: it stops its task processes too
        servers.close()


def recorded_levels() -> dict[str, set[str]]:
    """Every recording rule of alerts/replwatch.rules.yml → the labels its level keeps."""
    rules = yaml.safe_load((ROOT / "alerts" / "replwatch.rules.yml").read_text())
    return {
        r["record"]: set(r["record"].split(":")[0].split("_"))
        for g in rules["groups"]
        for r in g["rules"]
        if "record" in r
    }


def test_every_recording_rule_is_on_a_dashboard() -> None:
    used = {
        n for name in EXPECTED for _, t in _targets(_load(name)) for n in metric_names(t["expr"])
    }
    assert set(recorded_levels()) <= used, set(recorded_levels()) - used


@pytest.mark.timeout(120)
@pytest.mark.parametrize("name", EXPECTED)
def test_queries_use_real_metrics_and_labels(name: str, exposition: Exposition) -> None:
    dash = _load(name)
    recorded = recorded_levels()
    for title, t in _targets(dash):
        expr = t["expr"]
        names = metric_names(expr)
        # a recording rule's series (level:metric:operations) keeps the labels of its level
        rules = {n for n in names if ":" in n}
        assert rules <= set(recorded), f"{name} / {title}: {sorted(rules - set(recorded))}"
        names -= rules
        unknown = names - exposition.names
        assert not unknown, f"{name} / {title}: {sorted(unknown)} not in /metrics"
        for metric, matcher_labels in selectors(expr):
            if metric in recorded:
                assert matcher_labels <= recorded[metric], (title, metric, matcher_labels)
                continue
            if metric in exposition.without_samples:
                continue
            missing = matcher_labels - exposition.labels[metric]
            assert not missing, f"{name} / {title}: {metric} has no label {missing}"
        if names & exposition.without_samples:
            continue  # no sample right now: its labels are not known from the exposition
        labels = set().union(*(exposition.labels[n] for n in names), *(recorded[r] for r in rules))
        labels |= TARGET_LABELS if names else set()
        assert grouping_labels(expr) <= labels, (title, expr)
        legend = set(re.findall(r"\{\{\s*(\w+)\s*\}\}", t["legendFormat"]))
        assert legend <= labels, (title, t["legendFormat"])


@pytest.mark.timeout(120)
@pytest.mark.parametrize("name", EXPECTED)
def test_variables_query_real_labels(name: str, exposition: Exposition) -> None:
    for var in _load(name)["templating"]["list"]:
        if var["type"] != "query":
            continue
        m = re.fullmatch(r"label_values\((\w+)(\{[^}]*\})?, *(\w+)\)", var["definition"])
        assert m, var["definition"]
        metric, matchers, label = m.groups()
        assert metric in exposition.names and metric not in exposition.without_samples
        assert label in exposition.labels[metric], var["definition"]
        for used in re.findall(r"(\w+)\s*=", matchers or ""):
            assert used in exposition.labels[metric], var["definition"]


@pytest.mark.timeout(120)
def test_the_dashboards_cover_the_exposition(exposition: Exposition) -> None:
    """Every replwatch_* family the daemon exports shows up on some dashboard (a new metric
    without a panel fails here), except the few that are plumbing."""
    used: set[str] = set()
    for name in EXPECTED:
        for _, t in _targets(_load(name)):
            used |= metric_names(t["expr"])
    not_shown = {
        "replwatch_replica_offset_lag_exact",  # qualifies the offset clock panel
        "replwatch_sync_lag_seconds_exact",
        "replwatch_replica_repl_offset_bytes",  # byte lag is their difference
        "replwatch_replica_read_repl_offset_bytes",
        "replwatch_master_repl_offset_bytes",
        "replwatch_replica_info",
        "replwatch_replica_seconds_since_contact",
        "replwatch_offset_clock_resets_total",
        "replwatch_probe_wait_seconds_sum",
        "replwatch_probe_wait_seconds_count",
    }
    exported = {n for n in exposition.names if n.startswith("replwatch_")}
    missing = exported - used - not_shown
    assert not missing, f"exported but on no dashboard: {sorted(missing)}"


@pytest.mark.timeout(120)
def test_the_metrics_reference_covers_the_exposition(exposition: Exposition) -> None:
    """Every replwatch_* sample name a real daemon exports is defined, hence in the generated
    docs/metrics.md (tests/test_docs.py keeps the page equal to the definitions)."""
    from replwatch.exporter.metrics_doc import definitions

    documented = {name for d in definitions() for name in d.sample_names}
    exported = {n for n in exposition.names if n.startswith("replwatch_")}
    assert exported - documented == set(), (
        f"exported but not in docs/metrics.md: {exported - documented}"
    )
