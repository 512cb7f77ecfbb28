"""The offset clock: when was the master at offset o?

Per master a short table of samples. Runs of polls that see the same offset are folded into
one entry that remembers when the offset was first and last seen, so an idle master does not
smear a long pause across the interpolation (kafka-lag-exporter's idle-producer failure).

A follower at offset ``o`` is as old as the last moment the master was still at ``o`` — the
moment it moved past it. Between entry A (offset a, last seen ta_last) and the next entry B
(offset b > a, first seen tb_first), the master moved from a to b somewhere in
(ta_last, tb_first]; we assume a constant rate inside that gap.

Explicit cases:
- o >= the master's newest offset: lag 0 (the follower has everything the master had).
- o older than the table: the master passed o before the oldest entry was seen; the answer is
  a lower bound (``exact=False``).
- the master's offset went backwards or its replication id changed in a way that breaks the
  offset line (restart without persistence, a different master): the table is reset.
- one entry only and o below it: lower bound again.

Samples come several times a second (every poll cycle and every heartbeat write: the
heartbeat script returns the master's INFO). The newest FINE seconds keep every one — the
readings of a follower that is a second or two behind need that resolution — and older ones
are thinned to one every COARSE seconds, so the table still reaches back `window` seconds
within `max_points`.
"""

from __future__ import annotations

from array import array
from bisect import bisect_right
from dataclasses import dataclass

OUT_OF_ORDER = 0.5  # a lower offset this soon after a higher one: an older sample, late
FINE = 10.0  # seconds of samples kept at full resolution
COARSE = 1.0  # older samples: at least this far apart


@dataclass(frozen=True, slots=True)
class OffsetTime:
    """When the master moved past an offset: `time`; exact False when only a bound is known
    (the table does not reach back far enough)."""

    time: float
    exact: bool


class OffsetClock:
    """Samples of (offset, first seen, last seen) for one master. Times are monotonic seconds."""

    __slots__ = (
        "_coarse",
        "_first",
        "_last",
        "_max_points",
        "_offsets",
        "_replid",
        "_window",
        "resets",
    )

    def __init__(self, window: float = 600.0, max_points: int = 720) -> None:
        self._window = window
        self._max_points = max_points
        self._offsets = array("q")
        self._first = array("d")
        self._last = array("d")
        self._replid = ""
        self._coarse = 0  # entries before this index are thinned already
        self.resets = 0

    def __len__(self) -> int:
        return len(self._offsets)

    @property
    def newest_offset(self) -> int | None:
        return self._offsets[-1] if self._offsets else None

    def _clear(self) -> None:
        del self._offsets[:]
        del self._first[:]
        del self._last[:]
        self._coarse = 0

    def observe(self, offset: int, when: float, replid: str = "", replid2: str = "") -> bool:
        """Record a master sample. Returns True when the table was reset (offset went
        backwards, or a replication id that does not continue the previous one)."""
        reset = False
        if self._offsets:
            continues = replid == self._replid or (replid2 and replid2 == self._replid)
            if continues:
                # samples taken on several connections (poll cycles, heartbeat writes) can
                # complete out of order, their times a round trip's jitter apart: a lower
                # offset right after a higher one is an older sample, not a restart (that
                # takes longer), and a sample is never placed before the newest one
                if offset < self._offsets[-1] and when <= self._last[-1] + OUT_OF_ORDER:
                    return False
                when = max(when, self._last[-1])
            if not continues or offset < self._offsets[-1]:
                self._clear()
                self.resets += 1
                reset = True
        self._replid = replid
        if self._offsets and self._offsets[-1] == offset:
            self._last[-1] = when
        else:
            self._offsets.append(offset)
            self._first.append(when)
            self._last.append(when)
        self._thin(when)
        self._trim(when)
        return reset

    def _thin(self, now: float) -> None:
        """Entries older than FINE: drop one that began less than COARSE after the entry
        kept before it (the interpolation between its neighbours stands in for it)."""
        j = self._coarse
        first, last = self._first, self._last
        while j + 2 < len(first) and last[j + 1] < now - FINE:
            if first[j + 1] - last[j] < COARSE:
                del self._offsets[j + 1]
                del first[j + 1]
                del last[j + 1]
            else:
                j += 1
        self._coarse = j

    def _trim(self, now: float) -> None:
        # keep at least two entries; drop what is older than the window or over the cap
        drop = 0
        n = len(self._offsets)
        while n - drop > 2 and (
            self._last[drop] < now - self._window or n - drop > self._max_points
        ):
            drop += 1
        if drop:
            del self._offsets[:drop]
            del self._first[:drop]
            del self._last[:drop]
            self._coarse = max(0, self._coarse - drop)

    def time_of(self, offset: int) -> OffsetTime | None:
        """When the master moved past `offset`. None when the follower is not behind the
        newest sample (it has everything) or the table is empty."""
        offsets = self._offsets
        if not offsets or offset >= offsets[-1]:
            return None
        # index of the first entry whose offset is > `offset`
        j = bisect_right(offsets, offset)
        if j == 0:
            # the master was already past `offset` at the oldest entry we have
            return OffsetTime(self._first[0], exact=False)
        a, b = offsets[j - 1], offsets[j]
        ta, tb = self._last[j - 1], self._first[j]
        fraction = (offset - a) / (b - a)
        return OffsetTime(ta + fraction * (tb - ta), exact=True)

    def bracket_of(self, offset: int) -> tuple[float, float] | None:
        """When the master moved past `offset`, for certain: after the last sample that saw
        it at or below `offset` and no later than the first that saw it beyond. None when
        the table cannot tell (the follower is not behind the newest sample, or `offset` is
        older than the table)."""
        offsets = self._offsets
        if not offsets or offset >= offsets[-1]:
            return None
        j = bisect_right(offsets, offset)
        if j == 0:
            return None
        return self._last[j - 1], self._first[j]

    def lag_of(self, offset: int, now: float) -> tuple[float, bool]:
        """Seconds a follower at `offset` is behind at time `now`, and whether it is exact."""
        at = self.time_of(offset)
        if at is None:
            return 0.0, True
        return max(0.0, now - at.time), at.exact
