"""Readings of a follower from its master's side: its ACKs, timed by the master's samples.

A replica tells its master the offset it has applied (REPLCONF ACK) about once a second, on
a link of its own direction: when everything sent *to* it waits in one saturated queue (the
replication stream, replwatch's polls of it), its ACKs still arrive on time, and the
master's INFO shows the newest one (`slaveN:…,offset=…`). replwatch samples the master's INFO
with every heartbeat write (4 times a second by default: the heartbeat script returns it) and
with every poll cycle. When the offset of a follower's line changed between two samples, the
ACK arrived in between: the follower was at that offset then, and the offset clock knows
when the master was there. That is a reading (trend.Reading, kind "ack") whatever happens to
the follower's own polls.

An ACK that repeats the same offset (a follower that applied nothing) cannot be told from no
ACK: a stalled follower gives no ack readings; its polls (or their absence) tell.
"""

from __future__ import annotations

from dataclasses import dataclass

from replwatch.lag.offset_clock import OffsetClock
from replwatch.lag.trend import Reading

# samples further apart than this time an ACK too loosely to be a reading
MAX_SAMPLE_GAP = 2.0


@dataclass(frozen=True, slots=True)
class AckSeen:
    """The newest master sample of one follower's line: when, and the offset it showed."""

    at: float  # monotonic
    offset: int


def ack_reading(
    previous: AckSeen | None, at: float, offset: int, clock: OffsetClock
) -> Reading | None:
    """The reading a new master sample gives (the line's offset `offset` at monotonic `at`),
    after `previous`; None when the ACK offset did not change, when the samples are too far
    apart, or when the offset is not on the clock's line."""
    if previous is None or at <= previous.at or offset <= previous.offset:
        return None
    gap = at - previous.at
    if gap > MAX_SAMPLE_GAP:
        return None
    acked_at = (previous.at + at) / 2  # the ACK arrived in (previous.at, at]
    passed = clock.time_of(offset)
    if passed is None:
        # at or beyond the newest master sample: it had everything the master had then
        return Reading(acked_at, 0.0, gap / 2, "ack")
    if not passed.exact:
        return None  # older than the clock's table: no position in time
    bracket = clock.bracket_of(offset)
    clock_half = 0.0 if bracket is None else (bracket[1] - bracket[0]) / 2
    # the ACK is as of when the follower sent it (a moment before it arrived; its return
    # path is not the saturated one): the lag then, from when the master passed the offset
    return Reading(acked_at, acked_at - passed.time, gap / 2 + clock_half, "ack")
