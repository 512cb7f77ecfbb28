"""A follower's lag as a trend of readings, so it can be told as of any moment (pure).

A reading is one measurement of how far a follower's data is behind: at a moment (monotonic
seconds), a lag, certainly within ± a half width. Two kinds (compute.py, acks.py):

- `poll`: the follower's own applied offset, read directly, looked up in the master's offset
  clock at the moment its answer came (a request that waited in a saturated link was
  answered late, not early: the offset is as of then);
- `ack`: the offset the follower reported to its master (REPLCONF ACK, about once a second),
  seen in the master's INFO, timed by the master samples before and after it.

Readings that follow one straight line are kept together (a segment, at most WINDOW seconds);
a reading that leaves the line by more than its own width plus the line's scatter starts a
new segment (a stall, a resume, a burst that ended). The segment's least-squares line gives
the estimate at the newest reading and its slope (how fast the lag grows: at most 1 second
per second, a follower never goes back), so a surface read a second later reports the lag
of that moment (state.LagTrend), not of the last poll. Bounds come from the newest reading.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

WINDOW = 5.0  # seconds of readings one line is fitted over
MAX_READINGS = 32
# a new reading further than this (plus its half width and the line's scatter) from the
# line of the readings before it starts a new segment
BREAK_SECONDS = 0.25
# a segment shorter than this (it began with a break) trusts only a slope that says the
# follower falls behind: two readings half a second apart, each ± 0.1 s, could say ± 0.4 s/s
MIN_SLOPE_SPAN = 0.9


@dataclass(frozen=True, slots=True)
class Reading:
    """At monotonic time `at` the follower was `lag` seconds behind, ± `half_width`."""

    at: float
    lag: float
    half_width: float
    kind: str  # "poll" (its own offset, read directly) or "ack" (its ACK, on the master)


@dataclass(frozen=True, slots=True)
class Fit:
    """The segment's line at its newest reading: `lag` there, `slope` (s/s), and bounds
    from the newest reading itself."""

    at: float  # monotonic: the newest reading's time
    lag: float
    slope: float
    lower: float
    upper: float
    kind: str  # the newest reading's kind


@dataclass(frozen=True, slots=True)
class _Line:
    intercept: float  # the value at `origin`
    slope: float
    origin: float
    scatter: float  # root mean square residual

    def value(self, at: float) -> float:
        return self.intercept + self.slope * (at - self.origin)


def _line(readings: Sequence[Reading]) -> _Line:
    """The least-squares line through the readings (time centred on their mean)."""
    n = len(readings)
    mean_t = sum(r.at for r in readings) / n
    mean_l = sum(r.lag for r in readings) / n
    var_t = sum((r.at - mean_t) ** 2 for r in readings)
    slope = 0.0
    if var_t > 0:
        slope = sum((r.at - mean_t) * (r.lag - mean_l) for r in readings) / var_t
    line = _Line(mean_l, slope, mean_t, 0.0)
    scatter = (sum((r.lag - line.value(r.at)) ** 2 for r in readings) / n) ** 0.5
    return _Line(mean_l, slope, mean_t, scatter)


def add_reading(segment: tuple[Reading, ...], new: Reading) -> tuple[Reading, ...]:
    """The follower's segment with `new` added in time order: readings more than WINDOW
    older than the newest leave it, and a reading that leaves the line of the others starts
    a new segment (the older ones are dropped)."""
    if segment and new.at < segment[-1].at:  # late news: in its place, no break test
        merged = sorted((*segment, new), key=lambda r: r.at)
        newest = merged[-1].at
        return tuple(r for r in merged if r.at > newest - WINDOW)[-MAX_READINGS:]
    kept = tuple(r for r in segment if r.at > new.at - WINDOW)
    if len(kept) >= 2:
        line = _line(kept)
        off = new.lag - line.value(new.at)
        if abs(off) > new.half_width + line.scatter + BREAK_SECONDS:
            # falling behind from here (a stall, a saturated link): the last reading before
            # stays as the new segment's start, so it has a slope at once; caught up (a
            # resume, a burst that ended): a new segment of its own
            kept = kept[-1:] if off > 0 else ()
    return (*kept, new)[-MAX_READINGS:]


def fit(segment: Sequence[Reading]) -> Fit | None:
    """The estimate at the segment's newest reading; None for an empty segment."""
    if not segment:
        return None
    newest = segment[-1]
    value, slope = newest.lag, 0.0
    span = newest.at - segment[0].at
    if len(segment) >= 2 and span > 0:
        line = _line(segment)
        value = line.value(newest.at)
        slope = min(1.0, line.slope)
        if span < MIN_SLOPE_SPAN:
            # a short segment (it began with a break): only its falling behind is trusted
            slope = max(0.0, slope)
    lower = max(0.0, newest.lag - newest.half_width)
    upper = max(lower, newest.lag + newest.half_width)
    return Fit(newest.at, value, slope, lower, upper, newest.kind)
