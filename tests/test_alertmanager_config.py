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
    labels = {
        "alertname": str(rule["alert"]),
        **{k: str(v) for k, v in rule["labels"].items() if "{{" not in str(v)},
    }
    labels |= {"task": "t1"} if "sync" in str(rule["expr"]) else {"group": "cache"}
    result = routes_test(labels, RECEIVER_BY_SEVERITY[severity])
    assert result.returncode == 0, result.stdout + result.stderr


def _config() -> dict[str, Any]:
    data = yaml.safe_load(AM_CONFIG.read_text())
    assert isinstance(data, dict)
    return data


def _pager_routes(route: dict[str, Any]) -> list[dict[str, Any]]:
    found = [route] if route.get("receiver") == "pager" else []
    for child in route.get("routes", []):
        found += _pager_routes(child)
    return found


def test_pages_are_prompt_even_in_a_group_that_paged_before() -> None:
    """docs/alerts.md's promise: a new critical alert pages within group_wait of reaching
    Alertmanager, or group_interval when its page group already paged (the pager routes
    inherited 5m: a lag page waited 287 s behind an earlier link-down page)."""
    pagers = _pager_routes(_config()["route"])
    assert len(pagers) == 2  # replication and sync task criticals
    for route in pagers:
        assert route["group_wait"] == "10s" and route["group_interval"] == "1m", route


def test_every_alert_has_a_scope_and_replica_alerts_name_the_replica() -> None:
    """Inhibition rests on `scope` (and `replica` for replica alerts): every shipped alert
    has it, and every inhibit rule that mutes replica alerts compares `replica` unless its
    source is group-wide."""
    for rule in _alert_rules():
        assert rule["labels"]["scope"] in {
            "replica",
            "group",
            "task",
            "replwatch",
        } or "{{" in str(rule["labels"]["scope"]), rule["alert"]
    for inhibit in _config()["inhibit_rules"]:
        group_wide = 'scope="group"' in inhibit["source_matchers"]
        about_replicas = any(
            "Replica" in m or 'scope="replica"' in m for m in inhibit["target_matchers"]
        )
        if about_replicas and not group_wide:
            assert "replica" in inhibit["equal"], inhibit
