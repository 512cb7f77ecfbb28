"""The lag as a trend of readings (replwatch/lag/trend.py), the readings a master's samples
give from its followers' ACKs (replwatch/lag/acks.py), the lag as of any moment
(state.LagTrend), and how compute_group uses them. Pure and table-driven; the shared-queue
scenario against real servers is in tests/test_shared_queue.py."""

from __future__ import annotations

import pytest

from replwatch.lag.acks import AckSeen, ack_reading
from replwatch.lag.compute import NodeSample, ReplicaMemory, compute_group
from replwatch.lag.offset_clock import OffsetClock
from replwatch.lag.trend import BREAK_SECONDS, WINDOW, Reading, add_reading, fit
from replwatch.observe.info import ReplicaLine, ReplicationInfo
from replwatch.state import LagTrend

A = "a" * 40


def clock(rate: float = 1000.0, until: float = 100.0, every: float = 0.25) -> OffsetClock:
    """A master at offset rate*t, sampled every `every` seconds up to `until`."""
    c = OffsetClock()
    steps = int(until / every)
    for i in range(steps + 1):
        t = i * every
        c.observe(int(rate * t), t, A)
    return c


def readings(points: list[tuple[float, float]], half: float = 0.05) -> tuple[Reading, ...]:
    segment: tuple[Reading, ...] = ()
    for at, lag in points:
        segment = add_reading(segment, Reading(at, lag, half, "poll"))
    return segment


# --------------------------------------------------------------------------- trend


def test_a_growing_lag_gives_its_slope() -> None:
    # a starved follower: 0.75 s more behind every second, read twice a second
    seg = readings([(t / 2, 2.0 + 0.75 * t / 2) for t in range(8)])
    f = fit(seg)
    assert f is not None
    assert f.slope == pytest.approx(0.75, abs=1e-9)
    assert f.lag == pytest.approx(2.0 + 0.75 * 3.5)
    assert (f.lower, f.upper) == (pytest.approx(f.lag - 0.05), pytest.approx(f.lag + 0.05))


@pytest.mark.parametrize(
    ("points", "slope"),
    [
        ([(0.0, 1.0)], 0.0),  # one reading: no slope
        ([(0.0, 1.0), (0.4, 1.3), (0.8, 1.6)], 0.75),  # short: falling behind is trusted
        ([(0.0, 1.6), (0.4, 1.3), (0.8, 1.0)], 0.0),  # ... catching up is not, yet
        ([(t / 2, 3.0 * t / 2) for t in range(6)], 1.0),  # faster than time: at most 1 s/s
        ([(t / 2, 5.0) for t in range(6)], 0.0),  # keeping up
        ([(t / 2, 5.0 - 0.2 * t / 2) for t in range(6)], -0.2),  # catching up
    ],
)
def test_slope(points: list[tuple[float, float]], slope: float) -> None:
    f = fit(readings(points))
    assert f is not None and f.slope == pytest.approx(slope, abs=1e-9)


def test_a_reading_off_the_line_starts_a_new_segment() -> None:
    # steady at 8 s behind, then the follower catches up at once (a resume, a burst ended)
    seg = readings([(t / 2, 8.0) for t in range(6)] + [(3.0, 0.1)])
    assert [r.lag for r in seg] == [0.1]
    f = fit(seg)
    assert f is not None and (f.lag, f.slope) == (0.1, 0.0)
    # within the readings' scatter and BREAK_SECONDS: the same segment
    kept = readings([(t / 2, 8.0) for t in range(6)] + [(3.0, 8.0 + BREAK_SECONDS / 2)])
    assert len(kept) == 7


def test_the_segment_keeps_a_window_and_takes_late_readings_in_order() -> None:
    seg = readings([(t / 2, 1.0) for t in range(20)])
    assert seg[0].at > seg[-1].at - WINDOW and len(seg) == int(WINDOW * 2)
    late = add_reading(seg, Reading(seg[-1].at - 0.25, 1.0, 0.05, "ack"))
    assert [r.at for r in late] == sorted(r.at for r in late)
    assert late[-1] == seg[-1]


# --------------------------------------------------------------------------- as of now


@pytest.mark.parametrize(
    ("trend", "age", "expected"),
    [
        # growing 0.75 s/s: the best follows; upper assumes no progress; lower stays
        (LagTrend(1000.0, 10.0, 0.75, 9.9, 10.1), 1.0, (10.75, 9.9, 11.1)),
        # keeping up
        (LagTrend(1000.0, 0.0, 0.0, 0.0, 0.0), 0.8, (0.0, 0.0, 0.8)),
        # catching up: the lower bound follows the trend down, never below 0
        (LagTrend(1000.0, 2.0, -1.5, 1.9, 2.1), 1.0, (0.5, 0.4, 3.1)),
        (LagTrend(1000.0, 2.0, -5.0, 1.9, 2.1), 1.0, (0.0, 0.0, 3.1)),
        # unseen: no upper bound, grows with real time
        (LagTrend(1000.0, 4.0, 1.0, 4.0, None), 2.5, (6.5, 4.0, None)),
        # read before it was taken (clocks of two threads): as of `at`
        (LagTrend(1000.0, 3.0, 0.5, 2.9, 3.1), -0.2, (3.0, 2.9, 3.1)),
    ],
)
def test_lag_as_of_a_moment(
    trend: LagTrend, age: float, expected: tuple[float, float, float | None]
) -> None:
    best, lower, upper = trend.at_time(trend.at + age)
    assert best == pytest.approx(expected[0])
    assert lower == pytest.approx(expected[1])
    assert upper == (None if expected[2] is None else pytest.approx(expected[2]))
    assert lower <= best and (upper is None or best <= upper)


# --------------------------------------------------------------------------- ACKs


def test_an_ack_is_a_reading_timed_by_the_samples_around_it() -> None:
    c = clock(rate=1000.0, until=100.0)
    # the line showed 80_000 at t=99.75 and 81_000 at t=100.0: the ACK came in between;
    # the master passed 81_000 at t=81.0
    r = ack_reading(AckSeen(99.75, 80_000), 100.0, 81_000, c)
    assert r is not None and r.kind == "ack"
    assert r.at == pytest.approx(99.875)
    assert r.lag == pytest.approx(99.875 - 81.0)
    # the ACK's window, and the clock's: 19 s back its samples are thinned to one a second
    bracket = c.bracket_of(81_000)
    assert bracket is not None and bracket[1] - bracket[0] == pytest.approx(1.0)
    assert r.half_width == pytest.approx(0.125 + 0.5)


@pytest.mark.parametrize(
    ("previous", "at", "offset"),
    [
        (None, 100.0, 81_000),  # the first sample of the line
        (AckSeen(99.75, 81_000), 100.0, 81_000),  # no new ACK (or no progress)
        (AckSeen(99.75, 90_000), 100.0, 81_000),  # went back: a new sync
        (AckSeen(97.0, 80_000), 100.0, 81_000),  # samples too far apart to time it
        (AckSeen(100.0, 80_000), 100.0, 81_000),  # not after the previous sample
    ],
)
def test_no_reading(previous: AckSeen | None, at: float, offset: int) -> None:
    assert ack_reading(previous, at, offset, clock()) is None


def test_an_ack_at_the_masters_offset_reads_zero() -> None:
    r = ack_reading(AckSeen(99.75, 99_000), 100.0, 100_000, clock(until=100.0))
    assert r is not None and r.lag == 0.0


# --------------------------------------------------------------------------- compute_group


def master(offset: int, lines: tuple[ReplicaLine, ...] = ()) -> NodeSample:
    info = ReplicationInfo(
        role="master",
        replid=A,
        replid2="0" * 40,
        master_repl_offset=offset,
        second_repl_offset=-1,
        backlog_size=1 << 20,
        backlog_first_byte_offset=1,
        backlog_histlen=1 << 20,
        replicas=lines,
    )
    return NodeSample(label="m:1", info=info, started=99.99, finished=100.0)


def test_a_follower_that_cannot_be_polled_is_told_by_its_acks() -> None:
    """Its polls time out (a saturated link delays them), but its master keeps hearing its
    ACKs: the lag is the ACK trend, not the time since its last answer."""
    line = ReplicaLine(ip="10.0.0.2", port=6380, state="online", offset=81_000, ack_age=0.0)
    acks = [Reading(97.0 + i / 2, 10.0 + 0.75 * i / 2, 0.2, "ack") for i in range(7)]
    unseen = NodeSample(label="10.0.0.2:6380", info=None, error_reason="timeout")
    memory = {"10.0.0.2:6380": ReplicaMemory(current_at=80.0, seen_at=10.0)}
    snap, new_memory = compute_group(
        name="g",
        master_label="m:1",
        replica_labels=["10.0.0.2:6380"],
        discovered=frozenset(),
        master=master(100_000, (line,)),
        replicas={"10.0.0.2:6380": unseen},
        clock=clock(),
        heartbeat=None,
        memory=memory,
        now_mono=100.0,
        now_wall=1_700_000_000.0,
        cycle=5,
        ack_readings={"10.0.0.2:6380": acks},
    )
    r = snap.replicas[0]
    assert r.lag_source == "ack" and not r.reachable
    assert r.trend is not None and r.trend.slope == pytest.approx(0.75)
    assert r.lag_seconds == pytest.approx(12.25 + 0.75 * 0.0)  # newest reading at t=100.0
    # read 0.4 s later: it grew as the trend says
    assert r.lag_at(1_700_000_000.4) == pytest.approx(12.25 + 0.3)
    assert new_memory["10.0.0.2:6380"].readings[-1] == acks[-1]

    # no ACK since (a stalled follower): as old as the offset it last ACKed, and older
    # with every second (no progress is assumed)
    snap, _ = compute_group(
        name="g",
        master_label="m:1",
        replica_labels=["10.0.0.2:6380"],
        discovered=frozenset(),
        master=master(103_000, (line,)),
        replicas={"10.0.0.2:6380": unseen},
        clock=clock(until=103.0),
        heartbeat=None,
        memory=new_memory,
        now_mono=106.0,
        now_wall=1_700_000_006.0,
        cycle=6,
    )
    r = snap.replicas[0]
    assert r.lag_source == "offset_clock" and r.lag_seconds == pytest.approx(106.0 - 81.0)
    assert r.lag_at(1_700_000_007.0) == pytest.approx(26.0)


def test_the_clock_takes_samples_that_complete_out_of_order() -> None:
    """Poll cycles and heartbeat writes sample the master on connections of their own: one
    can complete after a later one. An older, lower offset is not a restart; a restart (a
    lower offset after longer than a round trip's jitter) still resets the table."""
    c = OffsetClock()
    c.observe(100, 1.0, A)
    c.observe(200, 1.1, A)
    assert c.observe(150, 1.05, A) is False  # late: ignored
    assert c.observe(180, 1.12, A) is False  # a lower offset a moment later: ignored too
    c.observe(300, 1.08, A)  # a higher offset with an earlier time: placed after the newest
    assert (len(c), c.resets, c.newest_offset) == (3, 0, 300)
    assert c.observe(50, 5.0, A) is True and c.resets == 1  # a master that restarted
