"""Rechecks: a live system changes during a compare, so a key found different (or missing, or
extra) is held, read again `rounds` times, each `delay` after it was last seen different, and
reported only if it still differs: a sync in flight does not show as a false difference."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Final, Generic, TypeVar

SUSPECT_BUFFER: Final = 5000  # keys held for a recheck before one is forced

Result = TypeVar("Result")


@dataclass(frozen=True)
class Rechecked(Generic[Result]):
    """What the rechecks left: the keys that differed every time, what the last read of each
    found, and how many held keys were found equal on a recheck."""

    still: list[bytes]
    last: dict[bytes, Result]
    resolved: int


class SuspectKeys:
    """Keys found different and held until they are rechecked."""

    def __init__(
        self,
        *,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self._keys: list[bytes] = []
        self._seen = 0.0  # when a held key was last seen different
        self._clock = clock
        self._sleep = sleep

    def hold(self, keys: Sequence[bytes]) -> None:
        if keys:
            self._keys.extend(keys)
            self._seen = self._clock()

    @property
    def full(self) -> bool:
        return len(self._keys) >= SUSPECT_BUFFER

    def recheck(
        self,
        rounds: int,
        delay: float,
        still_differing: Callable[[list[bytes]], list[tuple[bytes, Result]]],
    ) -> Rechecked[Result]:
        """Release the held keys: up to `rounds` times, wait until `delay` after they were
        last seen different and ask `still_differing` which of them still are (and what it
        found of each)."""
        pending, self._keys = self._keys, []
        last: dict[bytes, Result] = {}
        resolved = 0
        for _ in range(rounds):
            if not pending:
                break
            wait = self._seen + delay - self._clock()
            if wait > 0:
                self._sleep(wait)
            still = still_differing(pending)
            self._seen = self._clock()
            last.update(still)
            differing = {key for key, _ in still}
            resolved += sum(1 for key in pending if key not in differing)
            pending = [key for key, _ in still]
        return Rechecked(pending, last, resolved)
