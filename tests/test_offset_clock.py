"""The offset clock (lag/offset_clock.py): when was the master at offset o? Table tests."""

from __future__ import annotations

from typing import Any

import pytest

from replwatch.lag.offset_clock import OffsetClock, OffsetTime

A = "a" * 40  # replication ids
B = "b" * 40
C = "c" * 40

Step = tuple[int, float, str, str]  # offset, monotonic time, replid, replid2


def run(steps: list[Step], **kwargs: Any) -> tuple[OffsetClock, list[bool]]:
    clock = OffsetClock(**kwargs)
    resets = [
        clock.observe(offset, when, replid, replid2) for offset, when, replid, replid2 in steps
    ]
    return clock, resets


def steady(
    start_offset: int, rate: int, t0: float, t1: int, replid: str = A, step: float = 1.0
) -> list[Step]:
    """A master writing `rate` bytes per second, sampled every `step` seconds in [t0, t1)."""
    out = []
    t = t0
    while t < t1:
        out.append((start_offset + int((t - t0) * rate), t, replid, ""))
        t += step
    return out


IDLE = [(100, float(t), A, "") for t in range(51)] + [(114, 51.0, A, "")]

# id, clock kwargs, steps, expected table length, expected reset count,
# queries: (follower offset, now, expected lag, expected exact)
CASES: list[
    tuple[str, dict[str, Any], list[Step], int, int, list[tuple[int, float, float, bool]]]
] = [
    ("empty-table", {}, [], 0, 0, [(0, 10.0, 0.0, True), (12345, 10.0, 0.0, True)]),
    (
        "follower-at-or-above-newest",
        {},
        [(1000, 10.0, A, ""), (2000, 12.0, A, "")],
        2,
        0,
        [(2000, 50.0, 0.0, True), (2500, 50.0, 0.0, True)],
    ),
    (
        "interpolation-between-two-entries",
        {},
        [(1000, 10.0, A, ""), (2000, 12.0, A, "")],
        2,
        0,
        # 1500 is halfway: the master passed it at t=11
        [(1500, 15.0, 4.0, True), (1250, 15.0, 4.5, True), (1000, 15.0, 5.0, True)],
    ),
    (
        "interpolation-picks-the-right-gap",
        {},
        [(0, 0.0, A, ""), (100, 1.0, A, ""), (1100, 2.0, A, ""), (1200, 10.0, A, "")],
        4,
        0,
        [(600, 12.0, 10.5, True), (1150, 12.0, 6.0, True), (50, 12.0, 11.5, True)],
    ),
    (
        # one entry for the whole idle spell; a follower at 100 is as old as the last moment
        # the master was still at 100 (t=50), not the first (t=0)
        "idle-master-folds-into-one-entry",
        {},
        IDLE,
        2,
        0,
        [(100, 60.0, 10.0, True), (107, 60.0, 9.5, True), (114, 60.0, 0.0, True)],
    ),
    (
        "idle-master-only",
        {},
        [(500, float(t), A, "") for t in range(100)],
        1,
        0,
        [(500, 200.0, 0.0, True)],
    ),
    (
        # below the oldest entry: only a lower bound (the master was past it at t=5 already)
        "table-too-short",
        {},
        [(1000, 5.0, A, ""), (2000, 6.0, A, "")],
        2,
        0,
        [(10, 10.0, 5.0, False), (999, 10.0, 5.0, False)],
    ),
    (
        "single-entry-follower-below",
        {},
        [(1000, 5.0, A, ""), (1000, 8.0, A, "")],
        1,
        0,
        [(400, 10.0, 5.0, False)],
    ),
    (
        "now-before-sample-time-clamps-to-zero",
        {},
        [(1000, 10.0, A, ""), (2000, 12.0, A, "")],
        2,
        0,
        [(1500, 10.5, 0.0, True)],
    ),
    (
        # restart without persistence: offset goes backwards → table starts over
        "offset-backwards-resets",
        {},
        [(1000, 1.0, A, ""), (2000, 2.0, A, ""), (50, 3.0, A, ""), (150, 4.0, A, "")],
        2,
        1,
        [(100, 10.0, 6.5, True), (10, 10.0, 7.0, False)],
    ),
    (
        "replid-change-resets",
        {},
        [(1000, 1.0, A, ""), (2000, 2.0, A, ""), (2100, 3.0, B, "")],
        1,
        1,
        # the old entries are gone: 1500 is now below the table
        [(1500, 10.0, 7.0, False)],
    ),
    (
        # failover: the promoted replica's replid2 is the old master's replid; the offsets
        # continue, so the table is kept and lookups span the failover
        "replid2-continuation-keeps-table",
        {},
        [(1000, 1.0, A, ""), (2000, 2.0, A, ""), (3000, 3.0, B, A), (4000, 4.0, B, A)],
        4,
        0,
        [(1500, 10.0, 8.5, True), (2500, 10.0, 7.5, True)],
    ),
    (
        "replid2-of-an-unrelated-stream-resets",
        {},
        [(1000, 1.0, A, ""), (2000, 2.0, A, ""), (3000, 3.0, B, C)],
        1,
        1,
        [(2500, 10.0, 7.0, False)],
    ),
    (
        "continuation-that-goes-backwards-still-resets",
        {},
        [(1000, 1.0, A, ""), (2000, 2.0, A, ""), (1500, 3.0, B, A)],
        1,
        1,
        [],
    ),
    (
        "two-resets-counted",
        {},
        [(1000, 1.0, A, ""), (10, 2.0, A, ""), (20, 3.0, B, ""), (30, 4.0, B, "")],
        2,
        2,
        [(25, 5.0, 1.5, True)],
    ),
    (
        # window 10 s: at t=30 entries last seen before t=20 are dropped
        "trim-by-window",
        {"window": 10.0, "max_points": 1000},
        steady(0, 100, 0.0, 31),
        11,
        0,
        [(2500, 31.0, 6.0, True), (1500, 31.0, 11.0, False)],
    ),
    (
        "trim-by-max-points",
        {"window": 1e9, "max_points": 8},
        steady(0, 100, 0.0, 20),
        8,
        0,
        # kept: offsets 1200..1900 (t=12..19)
        [(1250, 30.0, 17.5, True), (1100, 30.0, 18.0, False)],
    ),
    (
        # the two newest entries are kept however old, so a stalled master still answers
        "trim-keeps-two-entries",
        {"window": 10.0, "max_points": 8},
        [(0, 0.0, A, ""), (100, 1.0, A, ""), (100, 1000.0, A, "")],
        2,
        0,
        [(50, 1001.0, 1000.5, True)],
    ),
]


@pytest.mark.parametrize(
    ("kwargs", "steps", "length", "resets", "queries"),
    [c[1:] for c in CASES],
    ids=[c[0] for c in CASES],
)
def test_offset_clock(
    kwargs: dict[str, Any],
    steps: list[Step],
    length: int,
    resets: int,
    queries: list[tuple[int, float, float, bool]],
) -> None:
    clock, returned = run(steps, **kwargs)
    assert len(clock) == length
    assert clock.resets == resets
    assert sum(returned) == resets
    for offset, now, lag, exact in queries:
        got_lag, got_exact = clock.lag_of(offset, now)
        assert (got_lag, got_exact) == (pytest.approx(lag), exact), (offset, now)


def test_reset_is_reported_by_the_sample_that_caused_it() -> None:
    _, returned = run([(1000, 1.0, A, ""), (2000, 2.0, A, ""), (5, 3.0, A, ""), (6, 4.0, A, "")])
    assert returned == [False, False, True, False]


def test_first_sample_is_never_a_reset() -> None:
    clock = OffsetClock()
    assert clock.observe(0, 0.0, B, A) is False
    assert clock.resets == 0
    assert clock.newest_offset == 0


@pytest.mark.parametrize(
    ("offset", "expected"),
    [
        (3000, None),  # newest: has everything
        (9999, None),
        (2000, OffsetTime(2.0, True)),
        (2500, OffsetTime(2.5, True)),
        (999, OffsetTime(1.0, False)),
    ],
)
def test_time_of(offset: int, expected: OffsetTime | None) -> None:
    clock, _ = run([(1000, 1.0, A, ""), (2000, 2.0, A, ""), (3000, 3.0, A, "")])
    got = clock.time_of(offset)
    if expected is None:
        assert got is None
    else:
        assert got is not None
        assert (got.time, got.exact) == (pytest.approx(expected.time), expected.exact)


def test_newest_offset_follows_samples_and_resets() -> None:
    clock = OffsetClock()
    assert clock.newest_offset is None
    clock.observe(100, 1.0, A)
    clock.observe(200, 2.0, A)
    assert clock.newest_offset == 200
    clock.observe(7, 3.0, A)
    assert clock.newest_offset == 7 and len(clock) == 1


def test_lag_grows_with_now_for_a_stuck_follower() -> None:
    clock, _ = run(steady(0, 1000, 0.0, 10))
    lags = [clock.lag_of(4500, now)[0] for now in (10.0, 11.0, 15.0)]
    assert lags == [pytest.approx(5.5), pytest.approx(6.5), pytest.approx(10.5)]
