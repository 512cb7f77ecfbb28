"""Heartbeat lag: one clock, the master's.

The heartbeat writer stores the master's own `TIME` (inside a script, so the value itself is
replicated) every heartbeat interval and remembers what it wrote and how the master's clock
relates to our monotonic clock (estimated from the lowest-RTT recent write, so network delay
does not bias it). A follower that shows heartbeat value ``h``:

- has applied every write up to ``h`` and none at or after the next heartbeat we wrote,
  ``n``; its true lag is in ``[master_now - n, master_now - h)``. We report the lower bound
  ``master_now - n``: it never overstates, and a caught-up follower reads 0.
- if ``h`` is the newest value we wrote, its lag is 0.
- if ``h`` is older than the oldest write we still remember but not older than our first
  write (the history was trimmed), we fall back to ``master_now - h``, an upper bound.
- if ``h`` was written before our first write (by a replwatch that ran before this one, or
  another instance): it is no evidence of lag — after a restart it is as old as the
  downtime while the follower is current. The follower lacks our first write, so its lag
  is at least ``master_now - first``: that lower bound (0 just after we start) is reported.
- before our first write there is no heartbeat lag at all (None): the offset clock speaks.
"""

from __future__ import annotations

from array import array
from bisect import bisect_right


class HeartbeatHistory:
    """What this process wrote (master timestamps, seconds) and the master-clock offset."""

    __slots__ = ("_capacity", "_first", "_offset_rtt", "_written", "clock_offset")

    def __init__(self, capacity: int = 4096) -> None:
        self._capacity = capacity
        self._written = array("d")
        self._first: float | None = None  # our first write (kept when the history is trimmed)
        # master_time - monotonic, from the write with the smallest round trip lately
        self.clock_offset: float | None = None
        self._offset_rtt = float("inf")

    def __len__(self) -> int:
        return len(self._written)

    @property
    def newest(self) -> float | None:
        return self._written[-1] if self._written else None

    def record(self, master_time: float, sent_mono: float, received_mono: float) -> None:
        """Record one write: the master's TIME it stored, and when we sent / got the reply."""
        rtt = max(0.0, received_mono - sent_mono)
        offset = master_time - (sent_mono + received_mono) / 2
        # age the best RTT so a path that got slower permanently is eventually accepted
        self._offset_rtt *= 1.02
        if self.clock_offset is None or rtt <= self._offset_rtt:
            self.clock_offset = offset
            self._offset_rtt = rtt
        if self._written and master_time < self._written[-1]:
            # the master's clock went backwards (or a restart): start over
            del self._written[:]
            self._first = None
        if self._first is None:
            self._first = master_time
        self._written.append(master_time)
        if len(self._written) > self._capacity:
            del self._written[: len(self._written) - self._capacity]

    def master_now(self, mono_now: float, wall_now: float) -> float:
        """The master's clock now; the local wall clock when no write gave an offset yet."""
        if self.clock_offset is None:
            return wall_now
        return mono_now + self.clock_offset

    def lag_of(self, seen: float, mono_now: float, wall_now: float) -> float | None:
        """Seconds behind for a follower that shows heartbeat `seen`; None before our first
        write (a value we did not write says nothing yet)."""
        written = self._written
        if not written or self._first is None:
            return None
        now = self.master_now(mono_now, wall_now)
        if seen >= written[-1]:
            return 0.0
        if seen < self._first:
            # written before we started: the follower lacks our first write, no more is known
            return max(0.0, now - self._first)
        j = bisect_right(written, seen)  # written[j] is the first write newer than `seen`
        if j > 0:
            # the follower has written[j-1] (or later) but lacks written[j]
            return max(0.0, now - written[j])
        return max(0.0, now - seen)  # between our first write and the oldest one kept


def parse_heartbeat(value: bytes | str | None) -> float | None:
    """The stored heartbeat value (microseconds of the master's TIME, as text) → seconds."""
    if value is None:
        return None
    try:
        micros = int(value)
    except (TypeError, ValueError):
        return None
    if micros <= 0:
        return None
    return micros / 1_000_000
