"""The whole alerting path, live: real redis-server master + 2 replicas and a sync task
(source → target), `replwatch run` watching them, Prometheus (Debian package) scraping it every
second and evaluating alerts/replwatch.rules.yml, Alertmanager (Debian package) routing with a
configuration derived from alerts/alertmanager.yml, and a webhook receiver run by the test.

SIGSTOP one replica (writes go on on the master): the replica lag warning goes pending, then
firing (Prometheus API), Alertmanager delivers it to the `notify` receiver (one notification per
alert and replica);
when the lag critical of the same replica fires it is delivered to `pager` and Alertmanager
inhibits the warning (its API shows it suppressed, inhibited by the critical); SIGCONT and both
resolve. At the end, every query of every grafana/*.json dashboard returns data for the run.

What differs from the shipped files, and why:
- rules: a test copy with `for: 2s` on the two replica lag alerts (1m and 2m in the shipped
  rules: the test would take minutes) and their thresholds scaled down by the same token, divided
  by 5 (warning above 1 s instead of 5 s, critical above 6 s instead of 30 s: warning below
  critical as shipped, and the critical still fires seconds after the warning is delivered, so
  the inhibition mutes a warning already notified; waiting for 30 s of real lag proved nothing
  more), and `for: 1h` on every other alert so none fires during the run — a SIGSTOPped replica
  cannot be polled, and RedisNodeUnreachable / RedisReplicaLinkDown (critical) would otherwise
  inhibit the lag warning before it is ever delivered. Expressions are otherwise the shipped
  ones.
- Alertmanager: the shipped routes and inhibit rules; receivers replaced by webhooks to the
  test's receiver (one path per receiver name), group_wait / group_interval 1s.
"""

from __future__ import annotations

import contextlib
import json
import re
import time
import urllib.error
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from .support.daemons import RunningDaemon
from .support.datasets import connect, write_burst
from .support.promstack import (
    PrometheusAPI,
    ServiceProcess,
    WebhookReceiver,
    http_json,
    start_alertmanager,
    start_prometheus,
    write_prometheus_config,
)
from .support.servers import LOCALHOST, RedisProcess, ServerSet, wait_for, wait_synced

ROOT = Path(__file__).resolve().parent.parent
RULES = ROOT / "alerts" / "replwatch.rules.yml"
AM_CONFIG = ROOT / "alerts" / "alertmanager.yml"
DASHBOARDS = ROOT / "grafana"

GROUP = "cache"
TASK = "copy"
LAG_WARNING = "RedisReplicaLagHigh"
LAG_CRITICAL = "RedisReplicaLagCritical"
SHORT_FOR = "2s"
LONG_FOR = "1h"
THRESHOLD_SCALE = 5  # the lag alerts' thresholds are divided by this (module docstring)
LAG_EXPR = re.compile(r"replwatch_replica_lag_seconds > (\d+(?:\.\d+)?)")

# Dashboard queries that cannot have data in this run: a pattern of the query → the condition
# replwatch exports those series in, which the run does not create.
NO_DATA_EXPECTED = {
    r"replwatch_sync_last_error_info\b": "only while a sync task has an error",
    r"replwatch_sync_full_sync_progress_ratio\b": (
        "only while a full sync runs: a few milliseconds for this run's tiny source, between "
        "two scrapes"
    ),
    r"replwatch_replica_link_down_seconds\b": (
        "only while a replica that answers replwatch reports its master link down (INFO "
        "master_link_down_since_seconds); a SIGSTOPped replica answers nothing"
    ),
    r"replwatch_probe_last_error_info\b": (
        "only while the WAIT probe errs (the master does not answer or is not a master); a "
        "replica that does not acknowledge makes a probe time out, counted in "
        "replwatch_probe_total"
    ),
    r"replwatch_cluster_shard_slots\b": "only for cluster shards (this run has static groups)",
    r"replwatch_group_master_changes_total\b": "only for Sentinel and cluster groups",
    r'replwatch_scheduler_runs_total\{[^}]*outcome=~"missed': (
        "only when a scheduled poll / heartbeat / probe run is missed, overruns or fails"
    ),
}


# ----------------------------------------------------------------------------- generated files


def write_test_rules(path: Path) -> Path:
    """The shipped rules with the `for:` and the thresholds of the lag alerts scaled down and
    every other alert's `for:` lengthened (module docstring)."""
    data = yaml.safe_load(RULES.read_text())
    names = set()
    thresholds: dict[str, float] = {}
    for group in data["groups"]:
        for rule in group["rules"]:
            if "alert" in rule:
                names.add(rule["alert"])
                lag_alert = rule["alert"] in (LAG_WARNING, LAG_CRITICAL)
                rule["for"] = SHORT_FOR if lag_alert else LONG_FOR
                if lag_alert:
                    shipped = LAG_EXPR.fullmatch(str(rule["expr"]).strip())
                    assert shipped is not None, f"{rule['alert']}: {rule['expr']!r} in {RULES}"
                    scaled = float(shipped.group(1)) / THRESHOLD_SCALE
                    thresholds[rule["alert"]] = scaled
                    rule["expr"] = f"replwatch_replica_lag_seconds > {scaled:g}"
    assert {LAG_WARNING, LAG_CRITICAL} <= names, f"lag alerts missing from {RULES}"
    assert thresholds[LAG_WARNING] < thresholds[LAG_CRITICAL], thresholds
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def _without_timing(route: dict[str, Any]) -> None:
    for child in route.get("routes", []):
        for key in ("group_wait", "group_interval"):
            child.pop(key, None)
        _without_timing(child)


def write_test_alertmanager_config(path: Path, webhook: WebhookReceiver) -> Path:
    """The shipped routes and inhibit rules; every receiver a webhook to /<receiver name>."""
    data = yaml.safe_load(AM_CONFIG.read_text())
    data["receivers"] = [
        {
            "name": r["name"],
            "webhook_configs": [{"url": webhook.url("/" + r["name"]), "send_resolved": True}],
        }
        for r in data["receivers"]
    ]
    data["route"] |= {"group_wait": "1s", "group_interval": "1s"}
    _without_timing(data["route"])
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def write_replwatch_config(
    path: Path,
    master: RedisProcess,
    replicas: list[RedisProcess],
    source: RedisProcess,
    target: RedisProcess,
) -> Path:
    config = {
        "exporter": {"listen": f"{LOCALHOST}:0"},
        "poll": {"interval": "300ms", "timeout": "250ms"},
        "heartbeat": {"interval": "100ms"},
        "probe": {"interval": "1s", "timeout": "500ms"},
        "groups": [{"name": GROUP, "master": master.url, "replicas": [r.url for r in replicas]}],
        "sync": {
            "tasks": [
                {
                    "name": TASK,
                    "source": source.url,
                    "target": target.url,
                    # a filter and a lease, so the "filtered" and lease panels have data
                    "filters": {"keys": {"deny_prefixes": ["skip:"]}},
                    "ha": True,
                }
            ]
        },
    }
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


# ----------------------------------------------------------------------------- dashboards


def dashboard_queries() -> list[tuple[str, str, str]]:
    """(dashboard file, panel title, expr) of every target of every grafana/*.json panel,
    rows' nested panels included."""

    def panels(items: list[dict[str, Any]]) -> Iterator[dict[str, Any]]:
        for panel in items:
            yield panel
            yield from panels(panel.get("panels", []))

    found = []
    for path in sorted(DASHBOARDS.glob("*.json")):
        dash = json.loads(path.read_text())
        for panel in panels(dash.get("panels", [])):
            for target in panel.get("targets", []):
                if target.get("expr"):
                    found.append((path.name, str(panel.get("title", "")), str(target["expr"])))
    return found


_VARIABLE = re.compile(r"\$\{(\w+)(?::\w+)?\}|\$(\w+)")


def substitute(expr: str, values: dict[str, str]) -> str:
    """Grafana template variables ($name, ${name}, ${name:format}) → values; an unknown one
    fails, naming it."""

    def one(match: re.Match[str]) -> str:
        name = match.group(1) or match.group(2)
        assert name in values, f"unknown template variable ${name} in {expr}"
        return values[name]

    return _VARIABLE.sub(one, expr)


def assert_dashboard_queries_return_data(
    api: PrometheusAPI, start: float, end: float, values: dict[str, str]
) -> int:
    """Every dashboard query, evaluated over the run (as the panel would show it), has at least
    one series with a sample — except those NO_DATA_EXPECTED explains. Returns how many ran."""
    queries = dashboard_queries()
    assert queries, f"no dashboard queries found in {DASHBOARDS}"
    empty = []
    for dashboard, title, expr in queries:
        if any(re.search(pattern, expr) for pattern in NO_DATA_EXPECTED):
            continue
        try:
            result = api.query_range(substitute(expr, values), start, end)
        except urllib.error.HTTPError as exc:
            raise AssertionError(f"{dashboard} / {title}: {expr}: {exc.read().decode()}") from exc
        if not any(series.get("values") for series in result):
            empty.append(f"{dashboard} / {title}: {expr}")
    assert not empty, "dashboard queries without data:\n" + "\n".join(empty)
    return len(queries)


# ----------------------------------------------------------------------------- the run


def shipped_alert_exprs() -> dict[str, str]:
    """Every alert of the shipped rules file: name → its expression, unchanged."""
    doc = yaml.safe_load(RULES.read_text())
    return {
        rule["alert"]: rule["expr"]
        for group in doc["groups"]
        for rule in group["rules"]
        if "alert" in rule
    }


def assert_no_owned_labels(exposition: str, api: PrometheusAPI) -> None:
    """No exported label is `job`, `instance` or `__…` — read in the exposition itself and
    in what Prometheus made of it."""
    owned = set()
    for family in text_string_to_metric_families(exposition):
        for sample in family.samples:
            owned |= {n for n in sample.labels if n in ("job", "instance") or n.startswith("__")}
    assert not owned, owned
    for label in ("exported_job", "exported_instance"):
        renamed = api.query(f'{{__name__=~"replwatch_.+", {label}=~".+"}}')
        assert renamed == [], renamed


def prometheus_alert(api: PrometheusAPI, name: str, replica: str) -> dict[str, Any] | None:
    for alert in api.alerts():
        labels = alert["labels"]
        if labels.get("alertname") == name and labels.get("replica") == replica:
            return alert
    return None


def delivered(
    webhook: WebhookReceiver, receiver: str, name: str, status: str
) -> dict[str, Any] | None:
    """The first notification to `receiver` carrying alert `name` with `status`."""
    for note in webhook.notifications("/" + receiver):
        for alert in note.get("alerts", []):
            if alert["labels"].get("alertname") == name and alert.get("status") == status:
                return {"notification": note, "alert": alert}
    return None


@pytest.mark.timeout(180)
def test_lag_alert_fires_routes_inhibits_and_dashboards_have_data(
    debian_servers: ServerSet, tmp_path: Path
) -> None:
    run_started = time.time()
    master = debian_servers.start("master")
    lagging = debian_servers.start("replica1", replica_of=master)
    healthy = debian_servers.start("replica2", replica_of=master)
    # disk-based full sync: the snapshot's size is known (replwatch_sync_snapshot_size_bytes)
    source = debian_servers.start("source", extra=["--repl-diskless-sync", "no"])
    target = debian_servers.start("target")
    for replica in (lagging, healthy):
        wait_synced(replica, master)
    with connect(source) as client:
        client.mset({"before": 1, "skip:before": 1})

    webhook = WebhookReceiver()
    services: list[ServiceProcess] = []
    daemon: RunningDaemon | None = None
    try:
        am_config = write_test_alertmanager_config(tmp_path / "alertmanager.yml", webhook)
        alertmanager = start_alertmanager(tmp_path, am_config)
        services.append(alertmanager)
        daemon = RunningDaemon(
            write_replwatch_config(
                tmp_path / "replwatch.yaml", master, [lagging, healthy], source, target
            ),
            log=tmp_path / "replwatch.log",
        )
        replwatch = daemon.base.removeprefix("http://")
        prom_config = write_prometheus_config(
            tmp_path / "prometheus.yml",
            write_test_rules(tmp_path / "rules.yml"),
            replwatch,
            f"{LOCALHOST}:{alertmanager.port}",
        )
        prometheus = start_prometheus(tmp_path, prom_config)
        services.append(prometheus)
        api = PrometheusAPI(prometheus.base)

        wait_for(lambda: api.target_health() == ["up"], 20, "Prometheus to scrape replwatch")
        wait_for(
            lambda: len(api.query(f'replwatch_replica_lag_seconds{{group="{GROUP}"}}')) == 2,
            20,
            "lag of both replicas in Prometheus",
        )
        wait_for(
            lambda: api.query(f'replwatch_sync_state{{task="{TASK}",state="incremental"}} == 1'),
            30,
            "the sync task to be incremental in Prometheus",
        )
        with connect(source) as client:
            client.mset({"after": 1, "skip:after": 1})
        assert prometheus_alert(api, LAG_WARNING, lagging.label) is None

        # no label of replwatch's is one Prometheus owns: scraped, it would be renamed
        # exported_job / exported_instance (replwatch_scheduler_runs_total had `job`)
        assert_no_owned_labels(daemon.metrics(), api)
        # on this healthy system no shipped alert expression is true (RedisHeartbeatStale
        # was, for ever, through that rename); the heartbeat's increase needs two scrapes
        wait_for(
            lambda: api.query(
                'sum(increase(replwatch_scheduler_runs_total{kind="heartbeat",outcome="ok"}[2m]))'
            ),
            20,
            "two scrapes of the heartbeat runs",
        )
        true_now = {name: api.query(expr) for name, expr in shipped_alert_exprs().items()}
        assert not {n: r for n, r in true_now.items() if r}, true_now

        # --- induce lag: the replica stops, the master keeps taking writes
        lagging.pause()
        paused_at = time.time()
        states_seen: set[str] = set()

        def lag_alert_firing() -> bool:
            write_burst(master)
            alert = prometheus_alert(api, LAG_WARNING, lagging.label)
            if alert is not None:
                states_seen.add(alert["state"])
            return alert is not None and alert["state"] == "firing"

        wait_for(lag_alert_firing, 30, f"{LAG_WARNING} to fire", interval=0.1)
        # pending first, then firing: ALERTS has both for this replica (evaluated every 1s)
        pending = api.query_range(
            f'ALERTS{{alertname="{LAG_WARNING}",alertstate="pending",replica="{lagging.label}"}}',
            paused_at,
            time.time(),
        )
        assert pending and pending[0]["values"], states_seen
        assert pending[0]["metric"]["group"] == GROUP
        assert prometheus_alert(api, LAG_WARNING, healthy.label) is None

        # --- Alertmanager delivers the warning to `notify`, one notification per alert and replica
        got = wait_for(
            lambda: delivered(webhook, "notify", LAG_WARNING, "firing"), 20, "warning delivered"
        )
        assert got is not None
        labels = got["alert"]["labels"]
        assert (labels["group"], labels["replica"], labels["severity"]) == (
            GROUP,
            lagging.label,
            "warning",
        )
        assert got["notification"]["receiver"] == "notify"
        assert got["notification"]["groupLabels"] == {
            "alertname": LAG_WARNING,
            "group": GROUP,
            "replica": lagging.label,
        }
        assert delivered(webhook, "pager", LAG_WARNING, "firing") is None

        # --- the critical of the same replica pages, and inhibits the warning
        def critical_firing() -> bool:
            write_burst(master)
            alert = prometheus_alert(api, LAG_CRITICAL, lagging.label)
            return alert is not None and alert["state"] == "firing"

        wait_for(critical_firing, 60, f"{LAG_CRITICAL} to fire", interval=0.2)
        got = wait_for(
            lambda: delivered(webhook, "pager", LAG_CRITICAL, "firing"), 20, "critical delivered"
        )
        assert got is not None
        assert got["alert"]["labels"]["replica"] == lagging.label
        assert got["notification"]["groupLabels"] == {
            "alertname": LAG_CRITICAL,
            "group": GROUP,
            "replica": lagging.label,
        }
        assert delivered(webhook, "notify", LAG_CRITICAL, "firing") is None

        def warning_inhibited() -> dict[str, Any] | None:
            alerts = http_json(
                alertmanager.base + "/api/v2/alerts?filter=alertname%3D%22" + LAG_WARNING + "%22"
            )
            for alert in alerts:
                status = alert["status"]
                if status["state"] == "suppressed" and status["inhibitedBy"]:
                    return dict(alert)
            return None

        inhibited = wait_for(warning_inhibited, 15, "Alertmanager to inhibit the warning")
        assert inhibited is not None
        assert inhibited["labels"]["replica"] == lagging.label
        # still firing in Prometheus: muted by the inhibition, not resolved
        warning = prometheus_alert(api, LAG_WARNING, lagging.label)
        assert warning is not None and warning["state"] == "firing"

        # --- SIGCONT: the replica catches up, the alerts resolve, the page is resolved
        lagging.resume()
        wait_synced(lagging, master)
        wait_for(
            lambda: (
                prometheus_alert(api, LAG_WARNING, lagging.label) is None
                and prometheus_alert(api, LAG_CRITICAL, lagging.label) is None
            ),
            30,
            "the lag alerts to resolve",
        )
        wait_for(
            lambda: delivered(webhook, "pager", LAG_CRITICAL, "resolved"),
            30,
            "the page to be resolved",
        )

        # --- every dashboard query has data for the run
        values = {
            "group": GROUP,
            # Grafana's "All" of a multi-value variable: a regex alternation ("." matches ".")
            "replica": "|".join(r.label for r in (lagging, healthy)),
            "task": TASK,
            "__rate_interval": "1m",
            "__interval": "15s",
            "__range": f"{int(time.time() - run_started) + 1}s",
        }
        assert_dashboard_queries_return_data(api, run_started, time.time(), values)
    finally:
        lagging.resume()
        if daemon is not None:
            daemon.stop(grace=20)
        for service in reversed(services):
            with contextlib.suppress(Exception):
                service.stop()
        webhook.close()
