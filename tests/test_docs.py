"""The documentation holds together: README.md stays a front door (short, with the two
commands and a quick start), every relative link of README.md and docs/*.md points at a file
and a heading that exist, and docs/metrics.md is what replwatch/exporter/metrics_doc.py writes
from the collectors' own metric definitions (which the collectors really build their families
from: checked here over empty stores; tests/test_dashboards.py checks a real daemon's
exposition against the same definitions)."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import yaml
from prometheus_client.core import Metric

from replwatch.exporter import metrics_doc
from replwatch.exporter.collector import SnapshotCollector
from replwatch.exporter.fleet_collector import FleetCollector
from replwatch.exporter.metric_def import MetricDef
from replwatch.exporter.supervisor_collector import SupervisorCollector
from replwatch.exporter.sync_collector import SyncCollector
from replwatch.routing.engine import RoutingEngine
from replwatch.scheduler import SchedulerStats
from replwatch.state import ProbeStore, ReloadStatus, SnapshotStore
from replwatch.tasks.watch import SyncStore
from replwatch.topology.fleet import DiscoveryStatus

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
DOCS = ROOT / "docs"
MAX_README_LINES = 400
# written by another part of issue 21 (deployment); linked before it lands


# ------------------------------------------------------------------------------ README


def test_readme_is_a_front_door_of_at_most_400_lines() -> None:
    lines = README.read_text(encoding="utf-8").splitlines()
    assert len(lines) <= MAX_README_LINES, f"README.md has {len(lines)} lines (≤ 400)"


def test_readme_has_the_two_commands_and_a_quick_start() -> None:
    text = README.read_text(encoding="utf-8")
    # the first command works on Debian's own Python too: clone, cd, a venv, then pip
    first = re.search(r"```sh\n(.*?)```", text, re.S)
    assert first, "README.md has no sh block"
    steps = first.group(1)
    for step in ("git clone", "cd replwatch", "python3 -m venv", "pip install", "replwatch demo"):
        assert step in steps, f"the first command lacks {step!r}"
    assert steps.index("python3 -m venv") < steps.index("pip install")
    assert "bash scripts/test" in text  # the test command, as .ci/run runs it
    for step in ("replwatch check-config", "replwatch run", "scrape_configs"):
        assert step in text, f"the quick start lacks {step!r}"
    assert "docs/status-page.png" in text and (DOCS / "status-page.png").is_file()


# ------------------------------------------------------------------------------- links


def _anchor(heading: str) -> str:
    """GitHub's anchor for a Markdown heading."""
    text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", heading.strip().lower())
    return re.sub(r"[^\w\- ]", "", text).replace(" ", "-")


def _anchors(path: Path) -> set[str]:
    found: set[str] = set()
    in_code = False
    for line in path.read_text(encoding="utf-8").splitlines():
        if line.startswith("```"):
            in_code = not in_code
        elif not in_code and line.startswith("#"):
            found.add(_anchor(line.lstrip("#")))
    return found


def _pages() -> list[Path]:
    return [README, *sorted(DOCS.glob("*.md"))]


@pytest.mark.parametrize("page", _pages(), ids=lambda p: str(p.relative_to(ROOT)))
def test_relative_links_point_at_files_and_headings_that_exist(page: Path) -> None:
    text = re.sub(r"```.*?```", "", page.read_text(encoding="utf-8"), flags=re.S)
    broken = []
    for target in re.findall(r"\]\(([^)\s]+)\)", text):
        if re.match(r"[a-z]+:", target):
            continue  # http:, https:, mailto:
        path_part, _, anchor = target.partition("#")
        path = (page.parent / path_part).resolve() if path_part else page
        if not path.exists():
            broken.append(f"{target}: no such file")
        elif anchor and path.suffix == ".md" and anchor not in _anchors(path):
            broken.append(f"{target}: no such heading in {path.name}")
    assert not broken, broken


def test_docs_pages_are_reachable_from_the_readme() -> None:
    """Every page of docs/ is linked from README.md or from the docs index it links."""
    linked = set()
    for page in (README, DOCS / "README.md"):
        for target in re.findall(r"\]\(([^)#\s]+)", page.read_text(encoding="utf-8")):
            linked.add((page.parent / target).resolve())
    assert (DOCS / "README.md").resolve() in linked
    unlinked = [p.name for p in DOCS.glob("*.md") if p.resolve() not in linked]
    assert not unlinked, f"not linked from README.md or docs/README.md: {unlinked}"


# ------------------------------------------------------------------------ metrics reference


def test_metrics_reference_is_generated_from_the_definitions() -> None:
    committed = (DOCS / "metrics.md").read_text(encoding="utf-8")
    assert committed == metrics_doc.render(), (
        f"docs/metrics.md differs from the collectors' metric definitions: run "
        f"`{metrics_doc.REGENERATE}` and commit docs/metrics.md"
    )


def test_metrics_doc_check_mode(tmp_path: Path) -> None:
    stale = tmp_path / "metrics.md"
    stale.write_text("old\n")
    command = [sys.executable, "-m", "replwatch.exporter.metrics_doc", "--output", str(stale)]
    result = subprocess.run([*command, "--check"], capture_output=True, text=True, cwd=ROOT)
    assert result.returncode == 1 and metrics_doc.REGENERATE in result.stderr
    assert subprocess.run(command, capture_output=True, cwd=ROOT).returncode == 0
    assert stale.read_text() == metrics_doc.render()
    assert subprocess.run([*command, "--check"], capture_output=True, cwd=ROOT).returncode == 0


def test_every_definition_is_in_the_reference_with_its_labels() -> None:
    text = (DOCS / "metrics.md").read_text(encoding="utf-8")
    definitions = metrics_doc.definitions()
    assert len(definitions) > 50
    for d in definitions:
        row = next((line for line in text.splitlines() if f"| `{d.sample_names[0]}" in line), None)
        if d.kind == "histogram":
            row = next(line for line in text.splitlines() if f"| `{d.name}` (" in line)
        assert row, d.name
        for label in d.labels:
            assert f"`{label}`" in row, (d.name, label)


class _Processes:
    def snapshot(self) -> list[tuple[str, bool, int, int | None]]:
        return [("a_to_b", True, 2, None)]


def _collected() -> list[Metric]:
    """What the collectors yield over empty stores (and the few inputs without which a
    collector yields nothing: a discovery outcome, a supervised process)."""
    fleet = SimpleNamespace(
        monitors={}, discovery={"s": DiscoveryStatus(group="s", source="sentinel", ok=True)}
    )
    collectors = [
        SnapshotCollector(
            SnapshotStore(), SchedulerStats(), ProbeStore(), RoutingEngine(lambda _: None)
        ),
        FleetCollector(fleet, ReloadStatus()),
        SyncCollector(SyncStore()),
        SupervisorCollector(_Processes()),
    ]
    return [family for c in collectors for family in c.collect()]


def test_collectors_build_their_families_from_the_definitions() -> None:
    """Each family a collector yields is one of the definitions, with its type and HELP
    text; its samples carry the defined labels. And nothing defined is left unyielded."""
    defined: dict[str, MetricDef] = {d.name: d for d in metrics_doc.definitions()}
    families = _collected()
    for family in families:
        d = defined.get(family.name)
        assert d is not None, f"{family.name} is exported but not defined (METRICS)"
        assert (family.type, family.documentation) == (d.kind, d.help), family.name
        for sample in family.samples:
            assert set(sample.labels) - {"le"} == set(d.labels), (family.name, sample)
    assert {f.name for f in families} == set(defined)


def test_every_shipped_alert_is_in_the_alerts_table() -> None:
    rules = yaml.safe_load((ROOT / "alerts" / "replwatch.rules.yml").read_text())
    alerts = {r["alert"] for g in rules["groups"] for r in g["rules"] if "alert" in r}
    rows = [line for line in (DOCS / "alerts.md").read_text().splitlines() if line.startswith("| ")]
    listed = {a for a in alerts for row in rows if re.search(rf"\b{a}\b", row.split("|")[1])}
    assert alerts - listed == set(), f"not in docs/alerts.md's table: {sorted(alerts - listed)}"
