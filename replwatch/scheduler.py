"""APScheduler jobs: a poll job and a heartbeat job per group.

Jobs run with max_instances=1 and coalesce=True: a cycle that overruns its interval makes the
scheduler skip (and count) the missed runs instead of piling them up. The scheduler calls the
group monitors and puts snapshots in the store; it never touches Prometheus objects.
"""

from __future__ import annotations

import logging
import threading
from collections import Counter
from collections.abc import Iterable

from apscheduler.events import (
    EVENT_JOB_ERROR,
    EVENT_JOB_MAX_INSTANCES,
    EVENT_JOB_MISSED,
    JobEvent,
)
from apscheduler.schedulers.asyncio import AsyncIOScheduler

from replwatch.observe.group_monitor import GroupMonitor
from replwatch.observe.probe import WaitProber
from replwatch.routing.engine import RoutingEngine
from replwatch.routing.publisher import RoutingPublisher
from replwatch.state import ProbeStore, SnapshotStore

log = logging.getLogger("replwatch.scheduler")


class SchedulerStats:
    """Counters the exporter reads: cycles run, runs missed or skipped, job errors."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._counts: Counter[tuple[str, str, str]] = Counter()

    def add(self, kind: str, group: str, what: str) -> None:
        with self._lock:
            self._counts[(kind, group, what)] += 1

    def items(self) -> list[tuple[tuple[str, str, str], int]]:
        with self._lock:
            return sorted(self._counts.items())


class MonitorScheduler:
    def __init__(
        self,
        monitors: Iterable[GroupMonitor],
        store: SnapshotStore,
        poll_interval: float,
        heartbeat_interval: float | None,
        stats: SchedulerStats,
        probers: Iterable[tuple[WaitProber, float]] = (),
        probe_store: ProbeStore | None = None,
        routing: RoutingEngine | None = None,
        publisher: RoutingPublisher | None = None,
    ) -> None:
        self.routing = routing
        self.publisher = publisher
        self.monitors = {m.name: m for m in monitors}
        self.probers = {p.group: (p, interval) for p, interval in probers}
        self.probe_store = probe_store
        self.store = store
        self.stats = stats
        self.poll_interval = poll_interval
        self.heartbeat_interval = heartbeat_interval
        self._scheduler = AsyncIOScheduler(
            job_defaults={"max_instances": 1, "coalesce": True, "misfire_grace_time": None}
        )
        self._scheduler.add_listener(
            self._on_event, EVENT_JOB_MISSED | EVENT_JOB_MAX_INSTANCES | EVENT_JOB_ERROR
        )

    def _on_event(self, event: JobEvent) -> None:
        kind, _, group = event.job_id.partition(":")
        if event.code == EVENT_JOB_MISSED:
            self.stats.add(kind, group, "missed")
        elif event.code == EVENT_JOB_MAX_INSTANCES:
            self.stats.add(kind, group, "skipped_overrun")
        elif event.code == EVENT_JOB_ERROR:
            self.stats.add(kind, group, "error")
            log.error("job %s failed: %s", event.job_id, getattr(event, "exception", "?"))

    async def poll_group(self, name: str) -> None:
        monitor = self.monitors[name]
        snapshot = await monitor.poll_cycle()
        self.store.put(snapshot)
        if self.routing is not None:
            self.routing.update(snapshot)
            if self.publisher is not None:
                await self.publisher.publish_if_changed()
        self.stats.add("poll", name, "completed")

    async def heartbeat_group(self, name: str) -> None:
        result = await self.monitors[name].write_heartbeat()
        if result is True:
            self.stats.add("heartbeat", name, "ok")
        elif result is False:
            self.stats.add("heartbeat", name, "failed")
        else:
            self.stats.add("heartbeat", name, "skipped")

    async def probe_group(self, name: str) -> None:
        prober, _ = self.probers[name]
        result = await prober.probe()
        if self.probe_store is not None:
            self.probe_store.record(result)
        self.stats.add("probe", name, "completed")

    async def poll_all_once(self) -> None:
        """One poll of every group, right away (start-up, so /-/ready comes quickly)."""
        import asyncio

        await asyncio.gather(*(self.poll_group(name) for name in self.monitors))

    def start(self) -> None:
        for name in self.monitors:
            self._scheduler.add_job(
                self.poll_group,
                "interval",
                seconds=self.poll_interval,
                args=[name],
                id=f"poll:{name}",
            )
            if self.heartbeat_interval is not None and self.monitors[name].writer is not None:
                self._scheduler.add_job(
                    self.heartbeat_group,
                    "interval",
                    seconds=self.heartbeat_interval,
                    args=[name],
                    id=f"heartbeat:{name}",
                )
        for name, (_, interval) in self.probers.items():
            self._scheduler.add_job(
                self.probe_group, "interval", seconds=interval, args=[name], id=f"probe:{name}"
            )
        if self.publisher is not None:
            self._scheduler.add_job(
                self.publish_routing,
                "interval",
                seconds=self.publisher.config.interval,
                id="publish:routing",
            )
        self._scheduler.start()

    async def publish_routing(self) -> None:
        if self.publisher is not None:
            ok = await self.publisher.publish()
            self.stats.add("publish", "routing", "ok" if ok else "failed")

    def shutdown(self) -> None:
        if self._scheduler.running:
            self._scheduler.shutdown(wait=False)
        for monitor in self.monitors.values():
            monitor.close()
        for prober, _ in self.probers.values():
            prober.close()
        if self.publisher is not None:
            self.publisher.close()
