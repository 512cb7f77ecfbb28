"""Heartbeat lag (lag/heartbeat.py): one clock, the master's. Table tests."""

from __future__ import annotations

import pytest

from replwatch.lag.heartbeat import HeartbeatHistory, parse_heartbeat

Write = tuple[float, float, float]  # master TIME stored, sent (mono), reply received (mono)

# id, writes, expected clock offset (master time - monotonic) after them
OFFSET_CASES: list[tuple[str, list[Write], float | None]] = [
    ("no-writes", [], None),
    ("one-write-uses-rtt-midpoint", [(1000.0, 10.0, 10.2)], 1000.0 - 10.1),
    (
        "lowest-rtt-write-wins",
        [(1000.0, 10.0, 10.2), (1001.0, 11.0, 11.02), (1002.0, 12.0, 12.5)],
        1001.0 - 11.01,
    ),
    (
        "slow-later-write-ignored",
        [(1000.0, 10.0, 10.001), (1005.0, 12.0, 14.0)],
        1000.0 - 10.0005,
    ),
    (
        "equal-rtt-newer-wins",
        [(1000.0, 10.0, 10.1), (1001.5, 11.0, 11.1)],
        1001.5 - 11.05,
    ),
    (
        # the best RTT ages by 2 % per write: a path that got slightly slower for good is
        # accepted after a few writes (0.01 → 0.0102 → 0.0104 → 0.0106 ≥ 0.0105)
        "aged-best-rtt-is-replaced",
        [(500.0, 0.0, 0.01)] + [(600.0 + i, 1.0 + i, 1.0105 + i) for i in range(3)],
        602.0 - (3.0 + 3.0105) / 2,
    ),
    (
        "aged-best-rtt-not-yet",
        [(500.0, 0.0, 0.01)] + [(600.0 + i, 1.0 + i, 1.0105 + i) for i in range(2)],
        500.0 - 0.005,
    ),
]


@pytest.mark.parametrize(
    ("writes", "offset"), [c[1:] for c in OFFSET_CASES], ids=[c[0] for c in OFFSET_CASES]
)
def test_clock_offset_from_min_rtt_write(writes: list[Write], offset: float | None) -> None:
    history = HeartbeatHistory()
    for write in writes:
        history.record(*write)
    if offset is None:
        assert history.clock_offset is None
    else:
        assert history.clock_offset == pytest.approx(offset, abs=1e-9)
    assert len(history) == len(writes)


def test_master_now_uses_wall_clock_until_a_write_gave_an_offset() -> None:
    history = HeartbeatHistory()
    assert history.master_now(5.0, 1_700_000_000.0) == 1_700_000_000.0
    history.record(2000.0, 10.0, 10.0)  # master clock = mono + 1990
    assert history.master_now(15.0, 1_700_000_000.0) == pytest.approx(2005.0)


# writes every 0.25 s at master times 100.00 .. 100.75 with zero RTT and master clock equal to
# the monotonic clock (offset 0)
WRITTEN = [100.0, 100.25, 100.5, 100.75]

# id, heartbeat seen on the follower, monotonic now, expected lag
LAG_CASES: list[tuple[str, float, float, float]] = [
    ("has-newest-write", 100.75, 101.0, 0.0),
    ("newer-than-newest (another writer)", 100.9, 101.0, 0.0),
    ("lacks-the-next-write", 100.25, 101.0, 0.5),  # next write 100.5 → 101.0 - 100.5
    ("lacks-everything-after-oldest", 100.0, 101.0, 0.75),
    ("between-writes (another writer)", 100.3, 101.0, 0.5),
    ("older-than-everything-known-falls-back", 99.0, 101.0, 2.0),  # now - seen: upper bound
    ("next-write-after-now-clamps", 100.25, 100.4, 0.0),
    ("lag-grows-with-time", 100.25, 103.5, 3.0),
]


@pytest.mark.parametrize(
    ("seen", "mono_now", "lag"), [c[1:] for c in LAG_CASES], ids=[c[0] for c in LAG_CASES]
)
def test_heartbeat_lag(seen: float, mono_now: float, lag: float) -> None:
    history = HeartbeatHistory()
    for t in WRITTEN:
        history.record(t, t, t)
    assert history.clock_offset == 0.0
    # the wall clock is ignored once the offset is known
    assert history.lag_of(seen, mono_now, wall_now=9e9) == pytest.approx(lag)


def test_a_restart_is_no_evidence_of_lag() -> None:
    """After a restart the key holds the previous process's heartbeat, as old as the
    downtime. Before our first write it proves nothing; our first write tells what the key
    held, so a follower still showing that value lacks only our write."""
    history = HeartbeatHistory()
    assert history.lag_of(1_700_000_000.0, 5.0, 1_700_000_030.0) is None
    history.record(1_700_000_030.0, 5.0, 5.0, previous=1_700_000_000.0)
    assert len(history) == 2
    assert history.lag_of(1_700_000_000.0, 5.2, 0.0) == pytest.approx(0.2)
    assert history.lag_of(1_700_000_030.0, 5.2, 0.0) == 0.0
    # a follower older still (it lacked the previous process's last value too): upper bound
    assert history.lag_of(1_699_999_990.0, 5.2, 0.0) == pytest.approx(40.2)


def test_another_writers_values_are_known_writes() -> None:
    """Two writers (an HA pair, or a one-shot `replwatch status` next to the daemon): the
    value our write replaced is a write too; an older one than ours is not recorded."""
    history = HeartbeatHistory()
    history.record(100.0, 100.0, 100.0)
    history.record(101.0, 101.0, 101.0, previous=100.5)  # the other writer's
    history.record(102.0, 102.0, 102.0, previous=101.0)  # ours: nothing new
    history.record(103.0, 103.0, 103.0, previous=99.0)  # stale: ignored
    assert len(history) == 5  # 100, 100.5, 101, 102, 103
    # a follower showing the other writer's 100.5 lacks our 101.0
    assert history.lag_of(100.5, 103.5, 0.0) == pytest.approx(2.5)
    # one far behind that writer (older than all we know): now - seen, an upper bound
    assert history.lag_of(90.0, 103.5, 0.0) == pytest.approx(13.5)


def test_lag_uses_the_master_clock_not_the_local_wall_clock() -> None:
    history = HeartbeatHistory()
    # master clock is 1000 s ahead of the local monotonic clock + whatever the wall says
    history.record(1010.0, 10.0, 10.0)
    history.record(1011.0, 11.0, 11.0)
    # follower has 1010.0, lacks 1011.0; at mono 12.0 the master's clock reads 1012.0
    assert history.lag_of(1010.0, 12.0, wall_now=5.0) == pytest.approx(1.0)


def test_master_clock_going_backwards_restarts_history() -> None:
    history = HeartbeatHistory()
    for t in (100.0, 101.0, 102.0):
        history.record(t, t, t)
    history.record(50.0, 103.0, 103.0)
    assert len(history) == 1
    assert history.newest == 50.0


def test_capacity_drops_oldest_writes() -> None:
    history = HeartbeatHistory(capacity=4)
    for i in range(10):
        t = 100.0 + i
        history.record(t, t, t)
    assert len(history) == 4
    assert history.newest == 109.0
    # 105.5 lies before the oldest kept write (106): falls back to now - seen
    assert history.lag_of(105.5, 110.0, 0.0) == pytest.approx(4.5)
    # 106 is kept: the follower lacks 107
    assert history.lag_of(106.0, 110.0, 0.0) == pytest.approx(3.0)


PARSE_CASES: list[tuple[bytes | str | None, float | None]] = [
    (b"1700000000123456", 1_700_000_000.123456),
    ("1700000000000000", 1_700_000_000.0),
    (b"5", 0.000005),
    (None, None),
    (b"", None),
    (b"abc", None),
    ("1.5", None),
    (b"0", None),
    (b"-17", None),
]


@pytest.mark.parametrize(("value", "seconds"), PARSE_CASES)
def test_parse_heartbeat(value: bytes | str | None, seconds: float | None) -> None:
    got = parse_heartbeat(value)
    if seconds is None:
        assert got is None
    else:
        assert got == pytest.approx(seconds, abs=1e-9)
