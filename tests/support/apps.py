"""An application thread reading through something (a ReadRouter, HAProxy) while a test
makes a fault happen, recording what the application sees: when each read started and
ended, which node answered, and whether it failed."""

from __future__ import annotations

import itertools
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass


@dataclass(frozen=True)
class AppRead:
    started: float  # monotonic
    ended: float
    served_by: str | None  # None: the read failed
    error: str | None = None

    @property
    def seconds(self) -> float:
        return self.ended - self.started


class AppReader:
    """Calls `read()` (which returns the node that served it) every `pace` seconds in a
    thread until stopped; use as a context manager."""

    def __init__(self, read: Callable[[], str], pace: float = 0.005) -> None:
        self._read = read
        self.pace = pace
        self.reads: list[AppRead] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="app-reader", daemon=True)

    def __enter__(self) -> AppReader:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=30)

    def _run(self) -> None:
        while not self._stop.is_set():
            started = time.monotonic()
            served: str | None
            error: str | None = None
            try:
                served = self._read()
            except Exception as exc:  # what the application would see, recorded
                served, error = None, f"{type(exc).__name__}: {exc}"
            with self._lock:
                self.reads.append(AppRead(started, time.monotonic(), served, error))
            self._stop.wait(self.pace)

    def since(self, t: float) -> list[AppRead]:
        with self._lock:
            return [r for r in self.reads if r.started >= t]

    def count_since(self, t: float, served_by: str) -> int:
        return sum(1 for r in self.since(t) if r.served_by == served_by)

    def longest_since(self, t: float) -> float:
        """The longest the application waited for one read started at or after t."""
        return max((r.seconds for r in self.since(t)), default=0.0)

    def longest_gap_since(self, t: float) -> float:
        """The longest time between two consecutive answers (or t and the first one):
        how long the application went without any read completing."""
        ends = [t] + [r.ended for r in self.since(t)]
        return max((b - a for a, b in itertools.pairwise(ends)), default=0.0)

    def wait_served_by(self, t: float, served_by: str, count: int, timeout: float) -> float:
        """Wait until `count` reads started after t were served by `served_by`; the end
        time of the first of them (monotonic)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            hits = [r for r in self.since(t) if r.served_by == served_by]
            if len(hits) >= count:
                return hits[0].ended
            time.sleep(0.01)
        seen = {r.served_by for r in self.since(t)}
        raise AssertionError(
            f"no {count} reads served by {served_by} within {timeout}s (served by: {seen})"
        )
