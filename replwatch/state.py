"""The latest snapshot per group: immutable values, replaced whole.

The scheduler's poll jobs put snapshots; the exporter, status output and (later) routing read
them. A snapshot never changes after it is built, so readers on other threads need no lock.
"""

from __future__ import annotations

import threading
import time
from dataclasses import asdict, dataclass, field
from typing import Any


@dataclass(frozen=True, slots=True)
class NodeView:
    """One polled node (master or replica)."""

    label: str
    configured_role: str  # "master" or "replica" (as the config / discovery says)
    role: str | None  # as the node reports it; None when it could not be polled
    up: bool
    error_reason: str | None = None
    error_message: str | None = None
    poll_seconds: float = 0.0
    repl_offset: int | None = None
    replid: str | None = None
    backlog_size: int | None = None
    discovered: bool = False


@dataclass(frozen=True, slots=True)
class LagTrend:
    """A follower's lag as a function of time, so every surface can report it as of the
    moment it is read (a scrape, a status call) instead of as of the last poll: at wall time
    `at` the best estimate was `lag`, between `lower` and `upper` (None: no upper bound is
    known, e.g. a follower that cannot be seen), and since then it grows by `slope` seconds
    per second (1: no progress, 0: keeping up, below 0: catching up; lag/trend.py)."""

    at: float  # wall clock, seconds
    lag: float
    slope: float
    lower: float
    upper: float | None

    def at_time(self, now: float) -> tuple[float, float, float | None]:
        """(best, lower, upper) as of wall time `now`. The upper bound assumes no progress
        since `at` (a follower never goes back), the lower one trusts the trend only when it
        says the follower is catching up; the best estimate follows the trend inside them."""
        age = max(0.0, now - self.at)
        upper = None if self.upper is None else self.upper + age
        lower = max(0.0, self.lower + min(0.0, self.slope) * age)
        best = max(lower, self.lag + self.slope * age)
        if upper is not None:
            best = min(best, upper)
        return best, lower, upper


@dataclass(frozen=True, slots=True)
class ReplicaView:
    """What replwatch knows about one follower of a group's master."""

    label: str
    upstream: str | None  # host:port of the node it replicates from, as it reports it
    reachable: bool
    link_up: bool
    sync_in_progress: bool
    following_master: bool  # same replication stream (replid) as the group's master
    chained: bool
    applied_offset: int | None
    read_offset: int | None
    lag_bytes: int | None
    lag_seconds: float | None  # best estimate
    lag_source: str  # which estimate `lag_seconds` is: heartbeat, offset_clock, contact, none
    heartbeat_lag_seconds: float | None
    offset_lag_seconds: float | None
    offset_lag_exact: bool
    ack_age_seconds: float | None
    link_down_seconds: float | None
    backlog_usage_ratio: float | None
    output_buffer_bytes: int | None
    output_buffer_limit_bytes: int | None
    seconds_since_contact: float | None
    trend: LagTrend | None = None  # lag_seconds as a function of time (None: lag_seconds only)

    def lag_at(self, now: float) -> float | None:
        """The best estimate of the lag as of wall time `now`: what every surface reports
        (metrics, status, the status page), so they agree whenever they are read."""
        if self.trend is None:
            return self.lag_seconds
        return self.trend.at_time(now)[0]

    def lag_bounds_at(self, now: float) -> tuple[float, float | None] | None:
        """(lower, upper) bounds of the lag as of wall time `now`; None when only the best
        estimate is known (upper None: no upper bound)."""
        if self.trend is None:
            return None
        _, lower, upper = self.trend.at_time(now)
        return lower, upper


def link_state(r: ReplicaView) -> str:
    """The replica's link in one word: unreachable, full-sync, down, other-master or up."""
    if not r.reachable:
        return "unreachable"
    if r.sync_in_progress:
        return "full-sync"
    if not r.link_up:
        return "down"
    if not r.following_master:
        return "other-master"
    return "up"


# a lower bound that would print as 0.00 says nothing: it is shown as unknown ("-")
BOUND_SHOWN_FROM = 0.005


@dataclass(frozen=True, slots=True)
class LagReading:
    """A follower's lag as every surface shows it at one moment (lag_reading): `status`,
    `status --json`, /status.json and the status page print the same thing."""

    seconds: float | None  # None: unknown, shown as "-" (never as 0)
    at_least: bool  # only a lower bound: shown ">=N" / "≥N"
    lower: float | None = None  # the bounds, when the trend knows them (upper None: none)
    upper: float | None = None


def lag_reading(r: ReplicaView, now: float) -> LagReading:
    """The lag of `r` as of wall time `now` (ReplicaView.lag_at) and whether it is only a
    lower bound: it is while the follower cannot be seen current (unreachable, paused, link
    down, full sync, another stream: at least the time since it was last seen current), when
    no upper bound is known, and when the offset clock's table was too short. For a follower
    not seen current, a bound that would print as 0.00 is unknown: a follower that replwatch
    could not see, or that never synced, is never reported at 0."""
    best = r.lag_at(now)
    bounds = r.lag_bounds_at(now)
    lower, upper = bounds if bounds is not None else (None, None)
    if best is None:
        return LagReading(None, False, lower, upper)
    if bounds is not None:
        at_least = upper is None
    else:
        at_least = r.lag_source == "contact" or (
            r.lag_source == "offset_clock" and not r.offset_lag_exact
        )
    if link_state(r) != "up":
        if best < BOUND_SHOWN_FROM:
            return LagReading(None, True, lower, upper)
        at_least = True
    return LagReading(best, at_least, lower, upper)


@dataclass(frozen=True, slots=True)
class OtherFollower:
    """A follower the master's INFO lists that is none of the group's replicas (listed or
    discovered): a replwatch sync task reading from the master, another tool's replica
    connection, a replica nobody configured. Its ACKs count in WAIT (lag/followers.py)."""

    address: str  # ip:port as the master lists it (a sync task announces port 0)
    state: str  # the master's word: online, wait_bgsave, send_bulk, …
    acked_offset: int
    lag_bytes: int | None  # the master's offset minus the offset it last acknowledged
    ack_age_seconds: float  # INFO's lag=: seconds since its last ACK
    tasks: tuple[str, ...] = ()  # the replwatch sync task it is (several: one of those)

    @property
    def name(self) -> str:
        """How it is shown: a sync task by its task name, anything else by its address."""
        if len(self.tasks) == 1:
            return f"sync task {self.tasks[0]}"
        if self.tasks:
            return f"sync task {' or '.join(self.tasks)} ({self.address})"
        return self.address


@dataclass(frozen=True, slots=True)
class GroupSnapshot:
    name: str
    master: str
    master_up: bool
    master_role_ok: bool  # the configured master reports role master
    master_offset: int | None
    master_replid: str | None
    backlog_size: int | None
    nodes: tuple[NodeView, ...]
    replicas: tuple[ReplicaView, ...]
    taken_at: float  # wall clock, seconds
    poll_seconds: float
    cycle: int
    offset_resets: int
    heartbeat_enabled: bool
    heartbeat_ok: bool | None = None
    heartbeat_error: str | None = None
    notes: tuple[str, ...] = field(default=())
    # followers the master lists that are none of `replicas` (lag/followers.py)
    others: tuple[OtherFollower, ...] = field(default=())

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class SnapshotStore:
    """Holds the newest GroupSnapshot per group name. put/get are atomic reference swaps."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._groups: dict[str, GroupSnapshot] = {}
        self._expected: frozenset[str] = frozenset()

    def expect(self, names: list[str]) -> None:
        """Declare the groups that exist; snapshots of other groups are dropped."""
        with self._lock:
            self._expected = frozenset(names)
            self._groups = {k: v for k, v in self._groups.items() if k in self._expected}

    def put(self, snapshot: GroupSnapshot) -> None:
        with self._lock:
            if snapshot.name not in self._expected:
                return
            groups = dict(self._groups)
            groups[snapshot.name] = snapshot
            self._groups = groups

    def get(self, name: str) -> GroupSnapshot | None:
        return self._groups.get(name)

    def all(self) -> list[GroupSnapshot]:
        groups = self._groups
        return [groups[k] for k in sorted(groups)]

    def ready(self) -> bool:
        """Every expected group has completed at least one poll (True when none is expected:
        then whether the daemon has made its first round decides, Daemon.ready)."""
        groups = self._groups
        return all(k in groups for k in self._expected)


PROBE_BUCKETS: tuple[float, ...] = (
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
)


@dataclass
class _ProbeGroupStats:
    bucket_counts: list[int]
    count: int = 0
    total: float = 0.0
    results: dict[str, int] = field(default_factory=dict)
    last: Any = None  # the newest ProbeResult


class ProbeStore:
    """Accumulates WAIT probe results per group: a latency histogram (successful probes),
    counts by result, and the newest result. Written by the scheduler, read by the exporter."""

    def __init__(self, buckets: tuple[float, ...] = PROBE_BUCKETS) -> None:
        self.buckets = buckets
        self._lock = threading.Lock()
        self._groups: dict[str, _ProbeGroupStats] = {}

    def record(self, result: Any) -> None:
        with self._lock:
            stats = self._groups.setdefault(
                result.group, _ProbeGroupStats(bucket_counts=[0] * len(self.buckets))
            )
            stats.results[result.result] = stats.results.get(result.result, 0) + 1
            stats.last = result
            if result.result == "ok" and result.seconds is not None:
                stats.count += 1
                stats.total += result.seconds
                for i, bound in enumerate(self.buckets):
                    if result.seconds <= bound:
                        stats.bucket_counts[i] += 1

    def forget_except(self, names: list[str]) -> None:
        with self._lock:
            self._groups = {k: v for k, v in self._groups.items() if k in names}

    def snapshot(self) -> list[tuple[str, list[int], int, float, dict[str, int], Any]]:
        with self._lock:
            return [
                (name, list(s.bucket_counts), s.count, s.total, dict(s.results), s.last)
                for name, s in sorted(self._groups.items())
            ]


@dataclass
class ReloadStatus:
    """The outcome of the newest config reload (Prometheus's own metric names)."""

    successful: bool = True
    last_success: float = field(default_factory=time.time)  # start-up counts as one
    attempts: int = 0
    failures: int = 0
    error: str | None = None
