"""A prometheus_client Collector for the sync task processes `replwatch run` supervises:
replwatch_sync_process_up{task} and replwatch_sync_process_restarts_total{task}.

Beside the other collectors (one per file); it reads only the supervisor's snapshot, through
a small protocol (SupervisedProcesses), so the exporter needs nothing of the supervisor's
process handling. No I/O at scrape time; no series while no task is supervised.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Protocol

from prometheus_client.core import Metric
from prometheus_client.registry import Collector

from replwatch.exporter.metric_def import CounterDef, GaugeDef, MetricDef

SYNC_PROCESS_UP = GaugeDef(
    "replwatch_sync_process_up",
    "1 while the task's syncer process runs under replwatch run.",
    ("task",),
)
SYNC_PROCESS_RESTARTS = CounterDef(
    "replwatch_sync_process_restarts",
    "Times the task's syncer process exited and was started again.",
    ("task",),
)
METRICS: tuple[MetricDef, ...] = (SYNC_PROCESS_UP, SYNC_PROCESS_RESTARTS)


class SupervisedProcesses(Protocol):
    """What the collector needs of the supervisor (replwatch.tasks.supervisor.SyncSupervisor):
    (task, running, restarts, last exit code) per task, taken at once."""

    def snapshot(self) -> Sequence[tuple[str, bool, int, int | None]]: ...


class SupervisorCollector(Collector):
    """replwatch_sync_process_up{task}, replwatch_sync_process_restarts_total{task}."""

    def __init__(self, supervisor: SupervisedProcesses) -> None:
        self.supervisor = supervisor

    def collect(self) -> Iterator[Metric]:
        up = SYNC_PROCESS_UP.family()
        restarts = SYNC_PROCESS_RESTARTS.family()
        snapshot = self.supervisor.snapshot()
        if not snapshot:
            return
        for name, running, count, _code in snapshot:
            up.add_metric([name], 1.0 if running else 0.0)
            restarts.add_metric([name], float(count))
        yield up
        yield restarts
