"""SchedulerStats: the counts behind replwatch_scheduler_runs_total, and what a reload that
removes a group leaves of them (nothing, even when one of its runs ends afterwards)."""

from __future__ import annotations

import pytest

from replwatch.scheduler import SchedulerStats


@pytest.mark.parametrize(
    ("groups", "late_run_group", "counted"),
    [
        (None, "b", True),  # before the fleet has named its groups: every run counts
        (["a"], "b", False),  # b was removed: its run that ends afterwards is not counted
        (["a", "b"], "b", True),
        (["a"], "all", True),  # job-wide counts are nobody's group
        (["a"], "routing", True),
        (["a"], "every-5s", True),
    ],
)
def test_runs_of_groups_that_are_gone_are_not_counted(
    groups: list[str] | None, late_run_group: str, counted: bool
) -> None:
    stats = SchedulerStats()
    stats.add("heartbeat", "a", "ok")
    stats.add("heartbeat", "b", "ok")
    if groups is not None:
        stats.forget_groups_except(groups)
    stats.add("heartbeat", late_run_group, "ok")
    names = {key[1] for key, _ in stats.items()}
    assert (late_run_group in names) is counted
    assert "a" in names


def test_a_group_that_comes_back_is_counted_again() -> None:
    stats = SchedulerStats()
    stats.add("poll", "b", "completed")
    stats.forget_groups_except(["a"])
    assert stats.items() == []
    stats.forget_groups_except(["a", "b"])  # discovery or a reload adds it again
    stats.add("poll", "b", "completed")
    assert stats.items() == [(("poll", "b", "completed"), 1)]
