"""A prometheus_client Collector for sync tasks, rendering the newest SyncTaskViews.

No I/O at scrape time: the views come from SyncStore (filled by the scheduler's sync poll
job). A task removed from the config is dropped from the store and its series leave /metrics
with it. Values that are unknown (byte lag across two replication streams, a counter of a
task without a checkpoint, progress outside a full sync) are left out, never exported as 0
or NaN.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from replwatch.exporter.metric_def import CounterDef, GaugeDef, MetricDef
from replwatch.tasks.watch import VIEW_STATES, SyncStore, SyncTaskView

ViewValue = Callable[[SyncTaskView], float | int | bool | None]
TASK_LABELS = ("task",)

_GAUGES: list[tuple[GaugeDef, ViewValue]] = [
    (
        GaugeDef(
            "replwatch_sync_lag_bytes",
            "Source master_repl_offset minus the offset the task's checkpoint says is applied to "
            "the target (absent when the checkpoint is on another replication stream). While a "
            "full sync has not finished (running, or left half-way), plus the snapshot's bytes "
            "not loaded yet when its size is known (a diskless snapshot's is not).",
            TASK_LABELS,
        ),
        lambda v: v.lag_bytes,
    ),
    (
        GaugeDef(
            "replwatch_sync_lag_seconds",
            "How long ago the source moved past the task's checkpoint offset (the source's offset "
            "clock). While a full sync has not finished (running, or left half-way), at least the "
            "time since it began, never exact: the copy reaches the snapshot's moment only once "
            "it is loaded.",
            TASK_LABELS,
        ),
        lambda v: v.lag_seconds,
    ),
    (
        GaugeDef(
            "replwatch_sync_lag_seconds_exact",
            "1 when replwatch_sync_lag_seconds is exact, 0 when it is only a lower bound (the "
            "offset clock's table does not reach back far enough, or a full sync has not "
            "finished).",
            TASK_LABELS,
        ),
        lambda v: None if v.lag_seconds is None else v.lag_seconds_exact,
    ),
    (
        GaugeDef(
            "replwatch_sync_applied_offset_bytes",
            "The source replication offset the task's checkpoint says is applied to the target "
            "(during a full sync: the offset of the snapshot).",
            TASK_LABELS,
        ),
        lambda v: v.applied_offset,
    ),
    (
        GaugeDef(
            "replwatch_sync_source_offset_bytes",
            "The task source's replication offset (master_repl_offset).",
            TASK_LABELS,
        ),
        lambda v: v.source_offset,
    ),
    (
        GaugeDef(
            "replwatch_sync_full_sync_progress_ratio",
            "Share of the running full sync loaded (0-1): bytes of the snapshot when its size is "
            "known, else keys. Present only while the task is in state full_sync.",
            TASK_LABELS,
        ),
        lambda v: v.progress,
    ),
    (
        GaugeDef(
            "replwatch_sync_keys_loaded",
            "Keys of the current or last full sync's snapshot applied to the target.",
            TASK_LABELS,
        ),
        lambda v: v.keys_loaded,
    ),
    (
        # not *_keys_total: that suffix is for counters (promtool check metrics)
        GaugeDef(
            "replwatch_sync_snapshot_keys",
            "Keys in the current or last full sync's snapshot (its RESIZEDB hints; absent when "
            "the snapshot has none).",
            TASK_LABELS,
        ),
        lambda v: v.keys_total or None,
    ),
    (
        GaugeDef(
            "replwatch_sync_snapshot_loaded_bytes",
            "Bytes of the current or last full sync's snapshot read so far.",
            TASK_LABELS,
        ),
        lambda v: v.rdb_bytes_loaded,
    ),
    (
        GaugeDef(
            "replwatch_sync_snapshot_size_bytes",
            "Size of the current or last full sync's snapshot (absent when the source streamed "
            "it diskless: the size is not known in advance).",
            TASK_LABELS,
        ),
        lambda v: v.rdb_bytes_total or None,
    ),
    (
        GaugeDef(
            "replwatch_sync_lease_token",
            "ha tasks: the fencing token of the lease holder (it grows with every takeover).",
            TASK_LABELS,
        ),
        lambda v: v.lease_token,
    ),
    (
        GaugeDef(
            "replwatch_sync_lease_remaining_seconds",
            "ha tasks: seconds until the holder's lease ends unless renewed (0: lapsed; another "
            "daemon takes over).",
            TASK_LABELS,
        ),
        lambda v: v.lease_remaining_seconds,
    ),
    (
        GaugeDef(
            "replwatch_sync_source_up",
            "1 when the task's source answered INFO at the last poll, 0 otherwise.",
            TASK_LABELS,
        ),
        lambda v: v.source_up,
    ),
    (
        GaugeDef(
            "replwatch_sync_target_up",
            "1 when the task's checkpoint could be read from the target at the last poll, 0 "
            "otherwise.",
            TASK_LABELS,
        ),
        lambda v: v.target_up,
    ),
]

_COUNTERS: list[tuple[CounterDef, ViewValue]] = [
    (
        CounterDef(
            "replwatch_sync_full_resyncs",
            "Full syncs the task has done (the first one included), from its checkpoint.",
            TASK_LABELS,
        ),
        lambda v: v.full_resyncs,
    ),
    (
        CounterDef(
            "replwatch_sync_applied_commands",
            "Commands of the replication stream the task applied to the target, from its "
            "checkpoint.",
            TASK_LABELS,
        ),
        lambda v: v.applied_commands,
    ),
]

SYNC_FILTERED = CounterDef(
    "replwatch_sync_filtered",
    "Writes the task's filters left out, by reason (key_not_allowed, key_prefix, "
    "key_regex, command, db, mixed_keys): snapshot keys and stream commands (a key "
    "removed from a split DEL/UNLINK/TOUCH/MSET counts once), from its checkpoint.",
    ("task", "reason"),
)
SYNC_STATE = GaugeDef(
    "replwatch_sync_state",
    "1 for the task's current state (from its checkpoint, or from the task process's "
    "local report when that is newer and says failed or stopped: a target that is "
    "out of memory or a replica refuses the checkpoint's write; unknown while neither "
    "says anything), 0 for the others.",
    ("task", "state"),
)
SYNC_CHECKPOINT_AGE_SECONDS = GaugeDef(
    "replwatch_sync_checkpoint_age_seconds",
    "Seconds since the syncer last wrote the task's checkpoint (its updated_at, by "
    "the syncer's clock); while the target cannot be read, since the last write "
    "replwatch saw (the copy is at least that old).",
    ("task",),
)
SYNC_LAST_ERROR_INFO = GaugeDef(
    "replwatch_sync_last_error_info",
    "Present (value 1) while something is wrong with the task: reason source_<class> "
    "or target_<class> while that side's poll fails (class: timeout, refused, auth, "
    "tls, dns, reset, protocol, loading, error), task_failed while the task's state "
    "is failed (replwatch_sync_state).",
    ("task", "reason"),
)
# every family the collector yields, in its order (the metrics reference lists them so)
METRICS: tuple[MetricDef, ...] = (
    *(definition for definition, _ in _GAUGES),
    *(definition for definition, _ in _COUNTERS),
    SYNC_FILTERED,
    SYNC_STATE,
    SYNC_CHECKPOINT_AGE_SECONDS,
    SYNC_LAST_ERROR_INFO,
)


def error_reasons(view: SyncTaskView) -> list[str]:
    """The reasons replwatch_sync_last_error_info carries for a view: source_<class> /
    target_<class> while that side's poll fails, task_failed while the checkpoint says
    failed."""
    reasons = []
    if not view.source_up and view.source_error_reason:
        reasons.append(f"source_{view.source_error_reason}")
    if not view.target_up and view.target_error_reason:
        reasons.append(f"target_{view.target_error_reason}")
    if view.state == "failed":
        reasons.append("task_failed")
    return reasons


class SyncCollector(Collector):
    """Renders a SyncStore. `wall_clock` gives the scrape time for the checkpoint age."""

    def __init__(self, store: SyncStore, wall_clock: Callable[[], float] = time.time) -> None:
        self.store = store
        self._wall = wall_clock

    def describe(self) -> list[Metric]:
        return []  # the series vary with the configured tasks; no fixed description

    def collect(self) -> Iterator[Metric]:
        views = self.store.all()
        yield from self._value_metrics(views)
        yield self._filtered_metric(views)
        yield self._state_metric(views)
        yield self._age_metric(views)
        yield self._error_metric(views)

    def _value_metrics(self, views: list[SyncTaskView]) -> Iterator[Metric]:
        families: list[tuple[GaugeMetricFamily | CounterMetricFamily, ViewValue]] = [
            (definition.family(), get) for definition, get in _GAUGES
        ]
        families += [(definition.family(), get) for definition, get in _COUNTERS]
        for view in views:
            for family, get in families:
                value = get(view)
                if value is not None:
                    family.add_metric([view.task], float(value))
        for family, _ in families:
            yield family

    def _filtered_metric(self, views: list[SyncTaskView]) -> Metric:
        filtered = SYNC_FILTERED.family()
        for view in views:
            for reason, count in (view.filtered or {}).items():
                filtered.add_metric([view.task, reason], float(count))
        return filtered

    def _state_metric(self, views: list[SyncTaskView]) -> Metric:
        state = SYNC_STATE.family()
        for view in views:
            for name in VIEW_STATES:
                state.add_metric([view.task, name], 1 if view.state == name else 0)
        return state

    def _age_metric(self, views: list[SyncTaskView]) -> Metric:
        age = SYNC_CHECKPOINT_AGE_SECONDS.family()
        now = self._wall()
        for view in views:
            if view.checkpoint_updated_at is not None:
                age.add_metric([view.task], max(0.0, now - view.checkpoint_updated_at))
        return age

    def _error_metric(self, views: list[SyncTaskView]) -> Metric:
        err = SYNC_LAST_ERROR_INFO.family()
        for view in views:
            for reason in error_reasons(view):
                err.add_metric([view.task, reason], 1)
        return err
