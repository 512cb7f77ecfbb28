"""The recent lag of every replica, for the status page's charts.

Per replica a fixed ring of buckets: the window (5 minutes) cut into `points` buckets
(100: 3 s each); each bucket keeps the highest lag seen in it, so a short spike is not
averaged away. The ring is two float arrays, not Python objects: under 2 KB per replica
however long the daemon runs (bench/status_page.py measures it).
"""

from __future__ import annotations

import math
import threading
from array import array
from collections.abc import Iterable
from dataclasses import dataclass

from replwatch.state import GroupSnapshot

DEFAULT_WINDOW_SECONDS = 300.0
DEFAULT_POINTS = 100
_MISSING = math.nan


@dataclass(frozen=True)
class LagSeries:
    """The window's buckets, oldest first: bucket i starts at start + i * step; each value
    is the highest lag (seconds) seen in it, None where the replica was not measured."""

    start: float
    step: float
    values: list[float | None]


class _Ring:
    """`size` buckets; slot `b % size` holds bucket b (which starts at b × width) while
    `buckets[slot] == b`. Missing lags are NaN."""

    __slots__ = ("buckets", "seconds")

    def __init__(self, size: int) -> None:
        self.buckets = array("q", [-1]) * size
        self.seconds = array("d", [_MISSING]) * size

    def add(self, bucket: int, lag: float | None) -> None:
        slot = bucket % len(self.buckets)
        if self.buckets[slot] != bucket:  # a new bucket: the slot's old one has left the window
            self.buckets[slot] = bucket
            self.seconds[slot] = _MISSING
        if lag is not None and not lag <= self.seconds[slot]:  # NaN compares false
            self.seconds[slot] = lag

    def series(self, first: int, width: float) -> LagSeries:
        size = len(self.buckets)
        values: list[float | None] = []
        for bucket in range(first, first + size):
            slot = bucket % size
            lag = self.seconds[slot]
            values.append(lag if self.buckets[slot] == bucket and lag == lag else None)
        return LagSeries(first * width, width, values)


class LagHistory:
    """Written by the poll job (record), read by the HTTP thread (series)."""

    def __init__(
        self, window: float = DEFAULT_WINDOW_SECONDS, points: int = DEFAULT_POINTS
    ) -> None:
        self.window = window
        self.points = points
        self.width = window / points
        self._lock = threading.Lock()
        self._rings: dict[str, dict[str, _Ring]] = {}
        self._latest: dict[str, int] = {}  # the newest bucket per group

    def record(self, snapshot: GroupSnapshot) -> None:
        """The snapshot's lag of each replica into its current bucket; replicas gone from the
        group are dropped."""
        bucket = math.floor(snapshot.taken_at / self.width)
        with self._lock:
            old = self._rings.get(snapshot.name, {})
            rings: dict[str, _Ring] = {}
            for replica in snapshot.replicas:
                ring = old.get(replica.label) or _Ring(self.points)
                ring.add(bucket, replica.lag_seconds)
                rings[replica.label] = ring
            self._rings[snapshot.name] = rings
            self._latest[snapshot.name] = max(bucket, self._latest.get(snapshot.name, bucket))

    def series(self, group: str) -> dict[str, LagSeries]:
        """Each replica's buckets of the window that ends with the group's newest snapshot."""
        with self._lock:
            rings = self._rings.get(group, {})
            if not rings:
                return {}
            first = self._latest[group] - self.points + 1
            return {label: ring.series(first, self.width) for label, ring in rings.items()}

    def forget_except(self, names: Iterable[str]) -> None:
        keep = set(names)
        with self._lock:
            self._rings = {k: v for k, v in self._rings.items() if k in keep}
            self._latest = {k: v for k, v in self._latest.items() if k in keep}
