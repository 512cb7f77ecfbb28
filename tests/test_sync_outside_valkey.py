"""The outside-workload test, short version (CI), for the valkey sources: every pair
with such a source ends equal to the native replica after a few seconds of the workload
and one kill -9 in the full sync and one in the stream (tests/test_sync_outside.py says
how; tests/support/outside_pairs.py holds the pairs and the scenarios)."""

from __future__ import annotations

import pytest

from .support.outside_pairs import PAIRS, SHORT, Scenarios, check, selected_targets
from .support.servers import require_build

MINE = [(s, t) for s, t in PAIRS if s.startswith("valkey-")]


@pytest.fixture(scope="module")
def short_runs(tmp_path_factory: pytest.TempPathFactory) -> Scenarios:
    return Scenarios(tmp_path_factory.mktemp("outside"), SHORT)


@pytest.mark.timeout(240)
@pytest.mark.parametrize(("source_name", "target_name"), MINE, ids=[f"{s}-to-{t}" for s, t in MINE])
def test_outside_workload_short(
    source_name: str, target_name: str, short_runs: Scenarios, request: pytest.FixtureRequest
) -> None:
    source, target = require_build(source_name), require_build(target_name)
    check(short_runs.outcome(source, target, selected_targets(request, source_name)))
