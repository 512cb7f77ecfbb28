"""The pairs of the outside-workload test (tests/test_sync_outside*.py): which pairs, the
short and soak settings, the scenarios shared by the targets of one source build, and what
every pair's outcome must show. The short runs are split by source product over two test
modules, so the test workers share them."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from .outside_workload import Features, PairOutcome, Settings, run_scenario, seed_from_env
from .servers import EXPECTED_BUILDS, ServerBuild, available_builds

PAIRS = [(s, t) for s in EXPECTED_BUILDS for t in EXPECTED_BUILDS]
PAIR_IDS = [f"{s}-to-{t}" for s, t in PAIRS]

SHORT = Settings(stream_seconds=4.0, full_sync_kills=1, stream_kills=1, max_downtime=1.0)


def soak_settings() -> Settings:
    seconds = float(os.environ.get("REPLWATCH_SOAK_SECONDS", "180"))
    return Settings(
        stream_seconds=seconds,
        full_sync_kills=3,
        stream_kills=max(2, int(seconds / 8)),  # one kill per task every ~8 s
        max_downtime=3.0,
        large_values=max(2, int(seconds / 20)),
        catch_up_timeout=180.0,
    )


class Scenarios:
    """Outcomes by (source, target), each scenario run once for the group of targets of its
    source build that takes the same workload and that this session runs."""

    def __init__(self, workdir: Path, settings: Settings) -> None:
        self.workdir = workdir
        self.settings = settings
        self.outcomes: dict[tuple[str, str], PairOutcome] = {}
        self.failures: dict[tuple[str, str], str] = {}

    def outcome(self, source: ServerBuild, target: ServerBuild, selected: list[str]) -> PairOutcome:
        key = (source.name, target.name)
        if key not in self.outcomes and key not in self.failures:
            self._run(source, target, selected)
        if key in self.failures:
            pytest.fail(self.failures[key], pytrace=False)
        return self.outcomes[key]

    def _run(self, source: ServerBuild, target: ServerBuild, selected: list[str]) -> None:
        builds = available_builds()
        same = Features.for_pair(source, target)
        group = [
            builds[name]
            for name in selected
            if name in builds
            and (source.name, name) not in self.outcomes
            and Features.for_pair(source, builds[name]) == same
        ]
        if target not in group:
            group.append(target)
        seed = seed_from_env()
        workdir = self.workdir / f"{source.name}-to-{'+'.join(b.name for b in group)}"
        try:
            results = run_scenario(source, group, workdir, self.settings, seed)
        except Exception as exc:
            message = (
                f"the scenario {source.name} -> {[b.name for b in group]} (seed {seed}) "
                f"failed: {exc}"
            )
            for build in group:
                self.failures[(source.name, build.name)] = message
            return
        for name, outcome in results.items():
            self.outcomes[(source.name, name)] = outcome


def selected_targets(request: pytest.FixtureRequest, source: str) -> list[str]:
    """The targets of `source` that this session runs this same test for."""
    names = []
    for item in request.session.items:
        callspec = getattr(item, "callspec", None)
        if (
            callspec is not None
            and getattr(item, "originalname", None) == request.node.originalname
            and callspec.params.get("source_name") == source
        ):
            names.append(str(callspec.params["target_name"]))
    return names


def check(outcome: PairOutcome) -> None:
    assert outcome.ok, outcome.report()
    # the faults really happened where they were meant to
    assert outcome.kills["full_sync"] >= 1, outcome.report()
    assert outcome.kills["incremental"] >= 1, outcome.report()
    assert outcome.keys_compared > 1000, outcome.report()


def soak_requested(config: pytest.Config) -> bool:
    expression = str(config.getoption("markexpr", "") or "")
    asked = "soak" in expression and "not soak" not in expression
    return asked or os.environ.get("REPLWATCH_SOAK", "") == "1"


def soak_pair_selected(pair_id: str) -> bool:
    chosen = os.environ.get("REPLWATCH_SOAK_PAIRS", "all").strip()
    return chosen in ("", "all") or pair_id in {p.strip() for p in chosen.split(",")}
