"""Keeps each group's routing state machines and newest table; counts transitions.

The scheduler calls `update()` after each poll cycle; the exporter and HTTP handlers read
`tables()` / `table()` (immutable values, replaced whole) from other threads.
"""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Callable

from replwatch.config import RoutingConfig
from replwatch.routing.policy import ReplicaRouteState, RoutingTable, decide
from replwatch.state import GroupSnapshot


class RoutingEngine:
    def __init__(self, config_of: Callable[[str], RoutingConfig]) -> None:
        self._config_of = config_of
        self._lock = threading.Lock()
        self._states: dict[str, dict[str, ReplicaRouteState]] = {}
        self._tables: dict[str, RoutingTable] = {}
        self._transitions: Counter[tuple[str, str, str]] = Counter()

    def update(self, snapshot: GroupSnapshot) -> RoutingTable:
        cfg = self._config_of(snapshot.name)
        with self._lock:
            previous = self._tables.get(snapshot.name)
            table, states = decide(
                snapshot, self._states.get(snapshot.name, {}), cfg, snapshot.taken_at
            )
            self._states[snapshot.name] = states
            present = {entry.replica for entry in table.replicas}
            for key in [k for k in self._transitions if k[0] == snapshot.name]:
                if key[1] not in present:  # a node that left, or is the master now
                    del self._transitions[key]
            if previous is not None:
                for entry in table.replicas:
                    before = previous.entry(entry.replica)
                    if before is not None and before.in_rotation != entry.in_rotation:
                        to = "in" if entry.in_rotation else "out"
                        self._transitions[(snapshot.name, entry.replica, to)] += 1
            tables = dict(self._tables)
            tables[snapshot.name] = table
            self._tables = tables
        return table

    def forget_except(self, groups: list[str]) -> None:
        with self._lock:
            self._tables = {k: v for k, v in self._tables.items() if k in groups}
            self._states = {k: v for k, v in self._states.items() if k in groups}
            for key in [k for k in self._transitions if k[0] not in groups]:
                del self._transitions[key]

    def table(self, group: str) -> RoutingTable | None:
        return self._tables.get(group)

    def tables(self) -> list[RoutingTable]:
        tables = self._tables
        return [tables[k] for k in sorted(tables)]

    def transitions(self) -> list[tuple[tuple[str, str, str], int]]:
        with self._lock:
            return sorted(self._transitions.items())
