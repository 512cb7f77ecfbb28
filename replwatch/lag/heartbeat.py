"""Heartbeat lag: one clock, the master's.

The heartbeat writer stores the master's own `TIME` (inside a script, so the value itself is
replicated) every heartbeat interval and remembers what it wrote and how the master's clock
relates to our monotonic clock (estimated from the lowest-RTT recent write, so network delay
does not bias it). A follower that shows heartbeat value ``h``:

- has applied every write up to ``h`` and none at or after the next heartbeat we wrote,
  ``n``; its true lag is in ``[master_now - n, master_now - h)``. We report the lower bound
  ``master_now - n``: it never overstates, and a caught-up follower reads 0.
- if ``h`` is the newest value we wrote, its lag is 0.
- if ``h`` is older than every value we know of, we fall back to ``master_now - h``, an upper
  bound with heartbeat-interval resolution.
- before our first write there is no heartbeat lag at all (None): the offset clock speaks.

Every write also tells the value the key held just before it (the script reads it): when
another writer put it there (a replwatch that ran before this one, another instance), it is
recorded as a write too. That is what keeps a restart honest: the follower shows the
previous process's last value, as old as the downtime; we know the key held that value
when we first wrote, so the follower lacks only our first write and reads ~0 — not the
length of the downtime. A value older than everything we know (a follower far behind
another writer) still gives the upper bound.
"""

from __future__ import annotations

from array import array
from bisect import bisect_right


class HeartbeatHistory:
    """The heartbeat values known to have been written (ours, and the values other writers
    left that our writes replaced; master timestamps, seconds) and the master-clock offset."""

    __slots__ = ("_capacity", "_offset_rtt", "_written", "clock_offset")

    def __init__(self, capacity: int = 4096) -> None:
        self._capacity = capacity
        self._written = array("d")
        # master_time - monotonic, from the write with the smallest round trip lately
        self.clock_offset: float | None = None
        self._offset_rtt = float("inf")

    def __len__(self) -> int:
        return len(self._written)

    @property
    def newest(self) -> float | None:
        return self._written[-1] if self._written else None

    def record(
        self,
        master_time: float,
        sent_mono: float,
        received_mono: float,
        previous: float | None = None,
    ) -> None:
        """Record one write: the master's TIME it stored, when we sent / got the reply, and
        the value the key held just before (`previous`: recorded too when another writer
        put it there, i.e. it is newer than our last write)."""
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
        if (
            previous is not None
            and previous < master_time
            and (not self._written or previous > self._written[-1])
        ):
            self._written.append(previous)  # another writer's (or an earlier process's)
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
        write (what the key holds then may be a value of a process long gone)."""
        written = self._written
        if not written:
            return None
        now = self.master_now(mono_now, wall_now)
        if seen >= written[-1]:
            return 0.0
        j = bisect_right(written, seen)  # written[j] is the first write newer than `seen`
        if 0 < j < len(written):
            # the follower has written[j-1] (or later) but lacks written[j]
            return max(0.0, now - written[j])
        return max(0.0, now - seen)


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
