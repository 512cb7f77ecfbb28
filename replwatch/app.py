"""Composition root: builds the store, monitors, scheduler and HTTP server, runs them."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
from dataclasses import dataclass

from prometheus_client import CollectorRegistry
from prometheus_client.gc_collector import GCCollector
from prometheus_client.platform_collector import PlatformCollector
from prometheus_client.process_collector import ProcessCollector

from replwatch.admin.api import AdminAPI
from replwatch.config import Config
from replwatch.errors import ReplwatchError
from replwatch.exporter.collector import SnapshotCollector
from replwatch.exporter.server import ExporterHTTPServer
from replwatch.exporter.sync_collector import SyncCollector
from replwatch.observe.group_monitor import GroupMonitor
from replwatch.observe.probe import WaitProber
from replwatch.routing.engine import RoutingEngine
from replwatch.routing.publisher import RoutingPublisher
from replwatch.scheduler import MonitorScheduler, SchedulerStats
from replwatch.state import ProbeStore, SnapshotStore
from replwatch.sync.lifecycle import TaskLifecycle, WatcherSet, make_watcher_factory
from replwatch.sync.supervisor import SupervisorCollector, SyncSupervisor
from replwatch.sync.watch import SyncStore
from replwatch.topology.sharding import ShardSpec

log = logging.getLogger("replwatch")


def build_monitors(cfg: Config) -> list[GroupMonitor]:
    return [GroupMonitor(g, cfg.poll, cfg.heartbeat, cfg.lag, cfg.tls) for g in cfg.groups]


def build_probers(cfg: Config) -> list[WaitProber]:
    return [
        WaitProber(g.name, g.master, cfg.probe_of(g), g.tls or cfg.tls)
        for g in cfg.groups
        if cfg.probe_of(g).enabled
    ]


def build_registry(
    store: SnapshotStore,
    stats: SchedulerStats | None,
    probes: ProbeStore | None = None,
    routing: RoutingEngine | None = None,
    sync_store: SyncStore | None = None,
    supervisor: SyncSupervisor | None = None,
    shard: ShardSpec | None = None,
) -> CollectorRegistry:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(SnapshotCollector(store, stats, probes, routing, shard))
    if sync_store is not None:
        registry.register(SyncCollector(sync_store))
    if supervisor is not None:
        registry.register(SupervisorCollector(supervisor))
    ProcessCollector(registry=registry)
    PlatformCollector(registry=registry)
    GCCollector(registry=registry)
    return registry


@dataclass
class Daemon:
    """A running replwatch: call `serve()` inside an event loop; `stop()` ends it."""

    cfg: Config
    store: SnapshotStore
    stats: SchedulerStats
    scheduler: MonitorScheduler
    http: ExporterHTTPServer
    sync_store: SyncStore
    sync_watchers: WatcherSet
    supervisor: SyncSupervisor | None = None
    lifecycle: TaskLifecycle | None = None
    _stop: asyncio.Event | None = None

    @classmethod
    def build(cls, cfg: Config, config_path: str | None = None, log_level: str = "info") -> Daemon:
        """Everything wired; sync task processes are supervised, and the task lifecycle
        (admin API, state directory) is on, only when the config came from a file
        (`config_path`: the children read the same file)."""
        lifecycle: TaskLifecycle | None = None
        supervisor: SyncSupervisor | None = None
        if config_path is not None:
            lifecycle = TaskLifecycle.load(cfg, config_path, log_level)
            sync_store, sync_watchers = lifecycle.views, lifecycle.watchers
            supervisor = lifecycle.supervisor
        else:
            sync_store = SyncStore()
            sync_store.expect([t.name for t in cfg.sync.tasks])
            sync_watchers = WatcherSet(make_watcher_factory(cfg), cfg.sync.tasks)

        async def poll_sync() -> None:
            await sync_watchers.poll_into(sync_store)

        store = SnapshotStore()
        store.expect([g.name for g in cfg.groups])
        stats = SchedulerStats()
        monitors = build_monitors(cfg)
        probe_store = ProbeStore()
        probers = build_probers(cfg)
        groups = {g.name: g for g in cfg.groups}
        routing = RoutingEngine(lambda name: cfg.routing_of(groups[name]))
        scheduler = MonitorScheduler(
            monitors,
            store,
            cfg.poll.interval,
            cfg.heartbeat.interval if cfg.heartbeat.enabled else None,
            stats,
            [(p, cfg.probe_of(groups[p.group]).interval) for p in probers],
            probe_store,
            routing,
            RoutingPublisher(cfg.publish, routing.tables, cfg.tls) if cfg.publish.url else None,
            # no job when no task can exist (keeps a monitor-only daemon's series as they were)
            poll_sync if sync_watchers.names() or cfg.admin.token is not None else None,
        )
        registry = build_registry(
            store, stats, probe_store, routing, sync_store, supervisor, cfg.shard
        )
        try:
            http = ExporterHTTPServer(
                (cfg.exporter.host, cfg.exporter.port),
                registry,
                store.ready,
                routing,
                AdminAPI(cfg.admin.token, lifecycle),
            )
        except OSError as exc:
            scheduler.shutdown()
            raise ReplwatchError(
                f"exporter.listen: cannot listen on {cfg.exporter.listen}: {exc.strerror or exc}"
            ) from None
        return cls(
            cfg, store, stats, scheduler, http, sync_store, sync_watchers, supervisor, lifecycle
        )

    async def serve(self) -> None:
        self._stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            with contextlib.suppress(NotImplementedError, RuntimeError):  # not main thread
                loop.add_signal_handler(sig, self._stop.set)
        self.http.start()
        log.info(
            "replwatch listening on http://%s:%d/metrics, watching %d group(s), %d sync task(s)%s",
            self.cfg.exporter.host,
            self.http.bound_port,
            len(self.cfg.groups),
            len(self.sync_watchers.names()),
            f" (shard {self.cfg.shard})" if self.cfg.shard and self.cfg.shard.count > 1 else "",
        )
        try:
            if self.supervisor is not None:
                self.supervisor.start()
            await self.scheduler.poll_all_once()
            if self.sync_watchers.names():
                await self.sync_watchers.poll_into(self.sync_store)
            self.scheduler.start()
            await self._stop.wait()
        finally:
            log.info("replwatch stopping")
            self.scheduler.shutdown()
            self.sync_watchers.close()
            if self.supervisor is not None:
                await asyncio.to_thread(self.supervisor.stop)
            self.http.stop()

    def stop(self) -> None:
        if self._stop is not None:
            self._stop.set()


def run_daemon(cfg: Config, config_path: str | None = None, log_level: str = "info") -> None:
    daemon = Daemon.build(cfg, config_path, log_level)
    asyncio.run(daemon.serve())
