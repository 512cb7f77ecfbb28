"""The shipped alert rules pass promtool, every alert carries the required annotations and a
runbook heading that exists, and every metric the rules and dashboard query is one replwatch
really exports (names taken from the collectors' metric definitions)."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from replwatch.exporter.metrics_doc import definitions

ROOT = Path(__file__).resolve().parent.parent
RULES = ROOT / "alerts" / "replwatch.rules.yml"
RUNBOOKS = ROOT / "docs" / "runbooks.md"


def _exported_metric_names() -> set[str]:
    """The sample names of every family the collectors define (their METRICS: the definitions
    they build the exposition from, and docs/metrics.md is written from)."""
    return {name for d in definitions() for name in d.sample_names}


def _metric_names_in(expr: str) -> set[str]:
    return set(re.findall(r"\b(replwatch_[a-z_]+)\b", expr))


def _promtool() -> str:
    path = shutil.which("promtool")
    if path is None:
        pytest.fail("promtool not installed (Debian package prometheus; scripts/test installs it)")
    return path


def test_promtool_check_rules() -> None:
    result = subprocess.run(
        [_promtool(), "check", "rules", str(RULES)], capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout


def _alerts() -> list[dict[str, object]]:
    data = yaml.safe_load(RULES.read_text())
    return [r for g in data["groups"] for r in g["rules"] if "alert" in r]


def _runbook_anchors() -> set[str]:
    return {
        line[3:].strip().lower()
        for line in RUNBOOKS.read_text().splitlines()
        if line.startswith("## ")
    }


@pytest.mark.parametrize("alert", _alerts(), ids=lambda a: str(a["alert"]))
def test_alert_has_labels_annotations_and_runbook(alert: dict[str, object]) -> None:
    labels = alert["labels"]
    annotations = alert["annotations"]
    assert isinstance(labels, dict) and isinstance(annotations, dict)
    assert labels["severity"] in ("warning", "critical")
    for key in ("summary", "description", "runbook_url"):
        assert annotations.get(key), f"{alert['alert']} lacks {key}"
    anchor = str(annotations["runbook_url"]).rsplit("#", 1)[1]
    assert anchor in _runbook_anchors(), f"runbook heading for {anchor} missing"


def test_rules_use_only_exported_metrics() -> None:
    exported = _exported_metric_names()
    data = yaml.safe_load(RULES.read_text())
    recorded = [r["record"] for g in data["groups"] for r in g["rules"] if "record" in r]
    for group in data["groups"]:
        for rule in group["rules"]:
            expr = rule["expr"]
            for name in recorded:  # a recording rule's output is checked through its own expr
                expr = re.sub(rf"(?<![\w:]){re.escape(name)}(?![\w:])", "", expr)
            unknown = _metric_names_in(expr) - exported
            assert not unknown, f"{rule.get('alert') or rule.get('record')}: {unknown}"
