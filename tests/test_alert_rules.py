"""The alert rules' promtool unit tests pass and cover the whole rules file: every alert has a
case where it fires (with its labels and annotations) and one where it must not, every
recording rule is evaluated by a promql_expr_test, and every runbook_url names a heading that
exists in docs/runbooks.md (by GitHub's anchor rules). A new alert without tests fails here."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
RULES = ROOT / "alerts" / "replwatch.rules.yml"
RULE_TESTS = sorted((ROOT / "alerts" / "tests").glob("*.yml"))
RUNBOOKS = ROOT / "docs" / "runbooks.md"
RUNBOOK_URL = "https://github.com/replwatch/replwatch/blob/main/docs/runbooks.md#"
# level:metric:operations (https://prometheus.io/docs/practices/rules/)
RECORD_NAME = re.compile(r"^[a-z_]+:[a-z][a-z0-9_]*:[a-z0-9_]+$")


def _rules() -> list[dict[str, Any]]:
    data = yaml.safe_load(RULES.read_text())
    return [rule for group in data["groups"] for rule in group["rules"]]


def _alerts() -> list[dict[str, Any]]:
    return [rule for rule in _rules() if "alert" in rule]


def _records() -> list[str]:
    return [rule["record"] for rule in _rules() if "record" in rule]


def _unit_tests() -> list[dict[str, Any]]:
    return [test for path in RULE_TESTS for test in yaml.safe_load(path.read_text())["tests"]]


def _alert_cases(name: str) -> list[dict[str, Any]]:
    return [
        case
        for test in _unit_tests()
        for case in test.get("alert_rule_test", [])
        if case["alertname"] == name
    ]


def github_anchor(heading: str) -> str:
    """The anchor GitHub gives a Markdown heading: lower case, punctuation other than - and _
    dropped, spaces as -."""
    text = re.sub(r"[^\w\- ]", "", heading.strip().lower())
    return text.replace(" ", "-")


def _runbook_anchors() -> set[str]:
    return {
        github_anchor(line.lstrip("#"))
        for line in RUNBOOKS.read_text().splitlines()
        if re.match(r"#{1,6} ", line)
    }


@pytest.mark.parametrize(
    ("heading", "anchor"),
    [
        ("RedisReplicaLagHigh", "redisreplicalaghigh"),
        ("Full resync loop (replicas)", "full-resync-loop-replicas"),
        ("What it means: `lag=`", "what-it-means-lag"),
    ],
)
def test_github_anchor(heading: str, anchor: str) -> None:
    assert github_anchor(heading) == anchor


def test_promtool_unit_tests_pass() -> None:
    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.fail("promtool not installed (Debian package prometheus; scripts/test installs it)")
    assert RULE_TESTS, "no promtool unit tests in alerts/tests/"
    result = subprocess.run(
        [promtool, "test", "rules", *map(str, RULE_TESTS)],
        capture_output=True,
        text=True,
        check=False,
        cwd=ROOT,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.count("SUCCESS") == len(RULE_TESTS), result.stdout


@pytest.mark.parametrize("path", RULE_TESTS, ids=lambda p: p.name)
def test_unit_test_files_load_the_shipped_rules(path: Path) -> None:
    data = yaml.safe_load(path.read_text())
    assert [(path.parent / f).resolve() for f in data["rule_files"]] == [RULES.resolve()]


@pytest.mark.parametrize("alert", _alerts(), ids=lambda a: str(a["alert"]))
def test_every_alert_is_tested_firing_and_not_firing(alert: dict[str, Any]) -> None:
    name = alert["alert"]
    cases = _alert_cases(name)
    firing = [case for case in cases if case.get("exp_alerts")]
    quiet = [case for case in cases if case.get("exp_alerts") == []]
    assert firing, f"{name}: no alert_rule_test where it fires"
    assert quiet, f"{name}: no alert_rule_test where it must not fire (exp_alerts: [])"
    for case in firing:
        for expected in case["exp_alerts"]:
            # the expected alert states the rule's own labels and all three annotations
            labels = expected.get("exp_labels", {})
            for key, value in alert["labels"].items():
                if "{{" in str(value):
                    continue  # templated (RedisNodeUnreachable's scope): promtool compares it
                assert labels.get(key) == value, f"{name} at {case['eval_time']}: label {key}"
            annotations = expected.get("exp_annotations", {})
            assert set(annotations) == set(alert["annotations"]), (name, case["eval_time"])


@pytest.mark.parametrize("record", _records())
def test_every_recording_rule_is_named_and_tested(record: str) -> None:
    assert RECORD_NAME.match(record), f"{record}: not level:metric:operations"
    exprs = [case["expr"] for test in _unit_tests() for case in test.get("promql_expr_test", [])]
    assert any(record in expr for expr in exprs), f"{record}: no promql_expr_test"


@pytest.mark.parametrize("alert", _alerts(), ids=lambda a: str(a["alert"]))
def test_alert_annotations_and_runbook_heading(alert: dict[str, Any]) -> None:
    name = alert["alert"]
    assert alert["labels"]["severity"] in ("warning", "critical"), name
    for key in ("summary", "description", "runbook_url"):
        assert str(alert["annotations"].get(key, "")).strip(), f"{name} lacks {key}"
    url = str(alert["annotations"]["runbook_url"])
    assert url.startswith(RUNBOOK_URL), url
    anchor = url.removeprefix(RUNBOOK_URL)
    assert anchor == github_anchor(name), f"{name}: runbook anchor {anchor}"
    assert anchor in _runbook_anchors(), f"{name}: docs/runbooks.md has no heading for #{anchor}"


def test_alert_names_are_unique() -> None:
    names = [a["alert"] for a in _alerts()]
    assert len(names) == len(set(names))
