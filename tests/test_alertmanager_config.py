"""The example Alertmanager configuration (alerts/alertmanager.yml) passes `amtool
check-config`, and `amtool config routes test` proves its routes: critical → pager, warning →
notify, for replication and sync task alerts and for every alert of alerts/replwatch.rules.yml.
Grouping and inhibition are checked in the file here; that a warning is really inhibited by a
critical of the same group is shown live in tests/test_alerting_e2e.py (routes test cannot)."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
AM_CONFIG = ROOT / "alerts" / "alertmanager.yml"
RULES = ROOT / "alerts" / "replwatch.rules.yml"

RECEIVER_BY_SEVERITY = {"critical": "pager", "warning": "notify"}


def amtool() -> str:
    path = shutil.which("amtool")
    if path is None:
        pytest.fail(
            "amtool not installed (Debian package prometheus-alertmanager; scripts/test installs "
            "it)",
            pytrace=False,
        )
    return path


def routes_test(labels: dict[str, str], expected: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [
            amtool(),
            "config",
            "routes",
            "test",
            f"--config.file={AM_CONFIG}",
            f"--verify.receivers={expected}",
            *(f"{k}={v}" for k, v in labels.items()),
        ],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )


def test_amtool_check_config() -> None:
    result = subprocess.run(
        [amtool(), "check-config", str(AM_CONFIG)],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout


@pytest.mark.parametrize(
    ("labels", "receiver"),
    [
        (
            {"alertname": "RedisReplicaLagCritical", "severity": "critical", "group": "cache"},
            "pager",
        ),
        ({"alertname": "RedisReplicaLagHigh", "severity": "warning", "group": "cache"}, "notify"),
        ({"alertname": "RedisSyncTaskFailed", "severity": "critical", "task": "t1"}, "pager"),
        ({"alertname": "RedisSyncTaskLagHigh", "severity": "warning", "task": "t1"}, "notify"),
        ({"alertname": "ReplwatchDown", "severity": "critical"}, "pager"),
        # no severity label: a notification, never a page
        ({"alertname": "SomethingElse", "group": "cache"}, "notify"),
    ],
    ids=[
        "critical-pages",
        "warning-notifies",
        "sync-critical",
        "sync-warning",
        "no-group",
        "no-severity",
    ],
)
def test_routes(labels: dict[str, str], receiver: str) -> None:
    result = routes_test(labels, receiver)
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.strip() == receiver


def test_routes_test_catches_a_wrong_receiver() -> None:
    """The check above can fail: amtool exits non-zero when the receiver differs."""
    result = routes_test({"severity": "warning", "group": "cache"}, "pager")
    assert result.returncode != 0
    assert result.stdout.strip().splitlines()[0] == "notify"


def _alert_rules() -> list[dict[str, Any]]:
    data = yaml.safe_load(RULES.read_text())
    return [r for g in data["groups"] for r in g["rules"] if "alert" in r]


@pytest.mark.parametrize("rule", _alert_rules(), ids=lambda r: str(r["alert"]))
def test_every_shipped_alert_reaches_the_receiver_of_its_severity(rule: dict[str, Any]) -> None:
    severity = str(rule["labels"]["severity"])
    labels = {"alertname": str(rule["alert"]), **{k: str(v) for k, v in rule["labels"].items()}}
    labels |= {"task": "t1"} if "sync" in str(rule["expr"]) else {"group": "cache"}
    result = routes_test(labels, RECEIVER_BY_SEVERITY[severity])
    assert result.returncode == 0, result.stdout + result.stderr


def _config() -> dict[str, Any]:
    data = yaml.safe_load(AM_CONFIG.read_text())
    assert isinstance(data, dict)
    return data


def test_grouped_by_group_and_sync_alerts_by_task() -> None:
    route = _config()["route"]
    assert route["group_by"] == ["group"]
    sync_routes = [r for r in route["routes"] if 'task=~".+"' in r.get("matchers", [])]
    assert len(sync_routes) == 1 and sync_routes[0]["group_by"] == ["task"]


def test_warnings_inhibited_by_a_critical_of_the_same_group_or_task() -> None:
    rules = _config()["inhibit_rules"]
    by_label = {tuple(r["equal"]): r for r in rules}
    assert set(by_label) == {("group",), ("task",)}
    for (label,), rule in by_label.items():
        # the label must be present on both sides: two alerts without it are "equal" otherwise
        assert rule["source_matchers"] == ['severity="critical"', f'{label}=~".+"']
        assert rule["target_matchers"] == ['severity="warning"', f'{label}=~".+"']
