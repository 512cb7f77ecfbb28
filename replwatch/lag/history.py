"""The recent lag of every replica, for the status page's charts: a ring per replica of
(time, lag seconds, lag bytes), fed with every snapshot, bounded by a time window and a
point count, so memory stays fixed however long the daemon runs (600 points × 3 floats per
replica: ~40 KB per 100 replicas)."""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Iterable

from replwatch.state import GroupSnapshot

LagPoint = tuple[float, float | None, int | None]  # wall time, lag seconds, lag bytes

DEFAULT_WINDOW_SECONDS = 300.0
DEFAULT_MAX_POINTS = 600


class LagHistory:
    """Written by the poll job (record), read by the HTTP thread (series)."""

    def __init__(
        self, window: float = DEFAULT_WINDOW_SECONDS, max_points: int = DEFAULT_MAX_POINTS
    ) -> None:
        self.window = window
        self.max_points = max_points
        self._lock = threading.Lock()
        self._rings: dict[str, dict[str, deque[LagPoint]]] = {}

    def record(self, snapshot: GroupSnapshot) -> None:
        """One point per replica of the snapshot; replicas gone from the group are dropped,
        points older than the window are trimmed."""
        horizon = snapshot.taken_at - self.window
        with self._lock:
            old = self._rings.get(snapshot.name, {})
            rings: dict[str, deque[LagPoint]] = {}
            for replica in snapshot.replicas:
                ring = old.get(replica.label)
                if ring is None:
                    ring = deque(maxlen=self.max_points)
                ring.append((snapshot.taken_at, replica.lag_seconds, replica.lag_bytes))
                while ring and ring[0][0] < horizon:
                    ring.popleft()
                rings[replica.label] = ring
            self._rings[snapshot.name] = rings

    def series(self, group: str) -> dict[str, list[LagPoint]]:
        with self._lock:
            return {label: list(ring) for label, ring in self._rings.get(group, {}).items()}

    def forget_except(self, names: Iterable[str]) -> None:
        keep = set(names)
        with self._lock:
            self._rings = {k: v for k, v in self._rings.items() if k in keep}
