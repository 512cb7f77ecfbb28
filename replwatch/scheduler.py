"""APScheduler jobs: a poll job and a heartbeat job per group.

Jobs run with max_instances=1 and coalesce=True: a cycle that overruns its interval makes the
scheduler skip (and count) the missed runs instead of piling them up. The scheduler calls the
group monitors and puts snapshots in the store; it never touches Prometheus objects.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import threading
import time
from collections import Counter
from collections.abc import Iterable
from typing import Any

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


def _stamp(
    into: dict[str, float], name: str, clock: Any, _future: asyncio.Future[list[Any]]
) -> None:
    """Done-callback: when a heartbeat's reply arrived (for the master-clock estimate)."""
    into[name] = clock()


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
        await self.poll_all()

    async def poll_all(self) -> None:
        """One poll cycle of every group, concurrently. Each node has its own timeout, so a
        slow or black-holed node bounds only its own group's cycle at poll.timeout."""
        await asyncio.gather(*(self.poll_group(name) for name in self.monitors))
        if self.publisher is not None:
            # once per cycle (not per group): announce at once when any group's routing changed
            await self.publisher.publish_if_changed()

    async def heartbeat_all(self) -> None:
        """One heartbeat per group: every write is sent first, then all are awaited together
        under one timeout (no task per write: at 4 rounds a second over hundreds of masters
        the per-write overhead is what costs). Groups that need a connect or a script load
        take the ordinary path."""
        now = time.monotonic
        fast: list[tuple[str, Any, asyncio.Future[list[Any]], float]] = []
        slow: list[str] = []
        received: dict[str, float] = {}
        timeout = 0.0
        for name, monitor in self.monitors.items():
            writer = monitor.writer
            if writer is None:
                continue
            if monitor.master_is_master is False:
                self.stats.add("heartbeat", name, "skipped")
                continue
            begun = writer.begin()
            if begun is None:
                slow.append(name)
                continue
            future, sent = begun
            future.add_done_callback(functools.partial(_stamp, received, name, now))
            fast.append((name, writer, future, sent))
            timeout = max(timeout, writer.timeout)
        if fast:
            await asyncio.wait([f for _, _, f, _ in fast], timeout=timeout)
            for name, writer, future, sent in fast:
                result = writer.finish(future, sent, received.get(name))
                if result is None:
                    slow.append(name)
                else:
                    self.stats.add("heartbeat", name, "ok" if result else "failed")
        if slow:
            await asyncio.gather(*(self.heartbeat_group(name) for name in slow))

    async def probe_all(self, names: list[str]) -> None:
        await asyncio.gather(*(self.probe_group(name) for name in names))

    def start(self) -> None:
        # one job per kind for all groups (not one per group): the scheduler's own overhead
        # then does not grow with the fleet; max_instances=1 + coalescing still skip (and
        # count) a run whose predecessor overran
        self._scheduler.add_job(
            self.poll_all, "interval", seconds=self.poll_interval, id="poll:all"
        )
        if self.heartbeat_interval is not None and any(
            m.writer is not None for m in self.monitors.values()
        ):
            self._scheduler.add_job(
                self.heartbeat_all,
                "interval",
                seconds=self.heartbeat_interval,
                id="heartbeat:all",
            )
        by_interval: dict[float, list[str]] = {}
        for name, (_, interval) in self.probers.items():
            by_interval.setdefault(interval, []).append(name)
        for interval, names in sorted(by_interval.items()):
            self._scheduler.add_job(
                self.probe_all,
                "interval",
                seconds=interval,
                args=[names],
                id=f"probe:every-{interval:g}s",
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
