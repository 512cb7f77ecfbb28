"""Composition root: builds the store, monitors, scheduler and HTTP server, runs them."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from prometheus_client import CollectorRegistry
from prometheus_client.gc_collector import GCCollector
from prometheus_client.platform_collector import PlatformCollector
from prometheus_client.process_collector import ProcessCollector

from replwatch import __version__
from replwatch.admin.api import AdminAPI
from replwatch.config import Config, RoutingConfig, load_config, tls_over
from replwatch.errors import ConfigError, ReplwatchError
from replwatch.exporter.collector import SnapshotCollector
from replwatch.exporter.fleet_collector import FleetCollector
from replwatch.exporter.server import ExporterHTTPServer
from replwatch.exporter.status_doc import StatusSources
from replwatch.exporter.status_page import StatusPage
from replwatch.exporter.supervisor_collector import SupervisorCollector
from replwatch.exporter.sync_collector import SyncCollector
from replwatch.lag.history import LagHistory
from replwatch.observe.group_monitor import GroupMonitor
from replwatch.observe.probe import WaitProber
from replwatch.routing.engine import RoutingEngine
from replwatch.routing.publisher import RoutingPublisher
from replwatch.scheduler import MonitorScheduler, SchedulerStats
from replwatch.state import ProbeStore, ReloadStatus, SnapshotStore
from replwatch.tasks.lifecycle import TaskLifecycle, WatcherSet, make_watcher_factory
from replwatch.tasks.supervisor import SyncSupervisor
from replwatch.tasks.watch import SyncStore
from replwatch.topology.fleet import Fleet, Resolvers
from replwatch.topology.sharding import ShardSpec
from replwatch.web_config import WebConfigSource

log = logging.getLogger("replwatch")


def build_monitors(cfg: Config) -> list[GroupMonitor]:
    """Monitors of the static groups (Sentinel and cluster groups need discovery: Fleet)."""
    return [
        GroupMonitor(g, cfg.poll, cfg.heartbeat, cfg.lag, cfg.tls)
        for g in cfg.groups
        if g.master is not None
    ]


def build_probers(cfg: Config) -> list[WaitProber]:
    return [
        WaitProber(g.name, g.master, cfg.probe_of(g), tls_over(cfg.tls, g.tls))
        for g in cfg.groups
        if cfg.probe_of(g).enabled and g.master is not None
    ]


# settings a reload cannot change in a running process (logged; they need a restart)
_RESTART_ONLY = ("exporter", "admin")


def build_registry(
    store: SnapshotStore,
    stats: SchedulerStats | None,
    probes: ProbeStore | None = None,
    routing: RoutingEngine | None = None,
    sync_store: SyncStore | None = None,
    supervisor: SyncSupervisor | None = None,
    fleet: Fleet | None = None,
    reload_status: ReloadStatus | None = None,
    shard: ShardSpec | None = None,
) -> CollectorRegistry:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(SnapshotCollector(store, stats, probes, routing, shard))
    if fleet is not None:
        registry.register(FleetCollector(fleet, reload_status))
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
    fleet: Fleet
    supervisor: SyncSupervisor | None = None
    lifecycle: TaskLifecycle | None = None
    reload_config: Callable[[], Config] | None = None
    reload_status: ReloadStatus = field(default_factory=ReloadStatus)
    _stop: asyncio.Event | None = None
    _loop: asyncio.AbstractEventLoop | None = None
    _reload_lock: asyncio.Lock | None = None
    _started: bool = False  # the first round made and the jobs scheduled (serve)

    @classmethod
    def build(
        cls,
        cfg: Config,
        config_path: str | None = None,
        log_level: str = "info",
        reload_config: Callable[[], Config] | None = None,
        resolvers: Resolvers | None = None,
    ) -> Daemon:
        """Everything wired; sync task processes are supervised, and the task lifecycle
        (admin API, state directory) is on, only when the config came from a file
        (`config_path`: the children read the same file). `reload_config` loads the config
        again for a reload (SIGHUP, POST /-/reload); default: `config_path` re-read."""
        lifecycle: TaskLifecycle | None = None
        supervisor: SyncSupervisor | None = None
        if config_path is not None:
            lifecycle = TaskLifecycle.load(cfg, config_path, log_level)
            sync_store, sync_watchers = lifecycle.views, lifecycle.watchers
            supervisor = lifecycle.supervisor
            if reload_config is None:
                path = config_path

                def reload_config() -> Config:
                    return load_config(path)
        else:
            sync_store = SyncStore()
            sync_store.expect([t.name for t in cfg.sync.tasks])
            sync_watchers = WatcherSet(make_watcher_factory(cfg), cfg.sync.tasks)

        async def poll_sync() -> None:
            await sync_watchers.poll_into(sync_store)

        store = SnapshotStore()
        stats = SchedulerStats()
        probe_store = ProbeStore()
        holder: list[Fleet] = []

        def routing_of(name: str) -> RoutingConfig:
            group = holder[0].config_of(name)
            return holder[0].cfg.routing if group is None else holder[0].cfg.routing_of(group)

        routing = RoutingEngine(routing_of)
        history = LagHistory()
        fleet = Fleet(cfg, store, routing, probe_store, resolvers)
        fleet.forget_others.append(stats.forget_groups_except)
        fleet.forget_others.append(history.forget_except)
        holder.append(fleet)
        scheduler = MonitorScheduler(
            (),
            store,
            cfg.poll.interval,
            cfg.heartbeat.interval if cfg.heartbeat.enabled else None,
            stats,
            (),
            probe_store,
            routing,
            (
                RoutingPublisher(cfg.publish, routing.tables, tls_over(cfg.tls, cfg.publish.tls))
                if cfg.publish.url
                else None
            ),
            # no job when no task can exist (keeps a monitor-only daemon's series as they were)
            poll_sync if sync_watchers.names() or cfg.admin.token is not None else None,
            fleet=fleet,
            on_snapshot=history.record,
        )
        reload_status = ReloadStatus()
        registry = build_registry(
            store,
            stats,
            probe_store,
            routing,
            sync_store,
            supervisor,
            fleet,
            reload_status,
            cfg.shard,
        )
        try:
            http = ExporterHTTPServer(
                (cfg.exporter.host, cfg.exporter.port),
                registry,
                lambda: False,  # Daemon.ready, set below
                routing,
                AdminAPI(cfg.admin.token, lifecycle),
                WebConfigSource(cfg.exporter.web_config) if cfg.exporter.web_config else None,
                StatusPage(
                    StatusSources(
                        snapshots=store.all,
                        routing=routing.table,
                        probes=lambda: {name: last for name, *_, last in probe_store.snapshot()},
                        sync=sync_store.all,
                        history=history.series,
                        poll_interval=cfg.poll.interval,
                        history_window=history.window,
                        version=__version__,
                    )
                ),
            )
        except OSError as exc:
            scheduler.shutdown()
            raise ReplwatchError(
                f"exporter.listen: cannot listen on {cfg.exporter.listen}: {exc.strerror or exc}"
            ) from None
        daemon = cls(
            cfg,
            store,
            stats,
            scheduler,
            http,
            sync_store,
            sync_watchers,
            fleet,
            supervisor,
            lifecycle,
            reload_config,
            reload_status,
        )
        http.reload = daemon.reload_from_thread if reload_config is not None else None
        http.is_ready = daemon.ready
        return daemon

    def ready(self) -> bool:
        """GET /-/ready: the daemon has made its first round (discovery asked, every group
        polled, every sync task looked at, the jobs scheduled) and every group and task it
        has now has been polled or looked at once (a group or task added since, by a reload,
        discovery or the admin API, until its first poll: at most one interval). With
        neither groups nor tasks the first round alone decides; with no groups, the tasks."""
        return self._started and self.store.ready() and self.sync_watchers.ready()

    # ----------------------------------------------------------------- reload

    async def reload(self) -> tuple[bool, str]:
        """Read the config again and apply it: groups added, removed or changed are
        reconciled (unchanged groups keep their monitors, lag history and routing state),
        intervals rescheduled, sync tasks follow (added, removed, redefined). A config that
        does not load changes nothing. Returns (ok, one line for the log / HTTP reply)."""
        if self.reload_config is None:
            return False, "reload: the config did not come from a file"
        if self._reload_lock is None:
            self._reload_lock = asyncio.Lock()
        async with self._reload_lock:
            status = self.reload_status
            status.attempts += 1
            try:
                new = await asyncio.to_thread(self.reload_config)
            except ConfigError as exc:
                status.successful = False
                status.failures += 1
                status.error = str(exc).splitlines()[0]
                log.error("config reload failed, the running config stays: %s", exc)
                return False, f"reload failed: {exc}"
            try:
                changes = await self._apply(new)
            except Exception as exc:  # a bug: reported, the daemon goes on
                status.successful = False
                status.failures += 1
                status.error = f"internal error: {exc}"
                log.exception("config reload failed while applying it")
                return False, "reload failed: internal error (see the daemon's log)"
            status.successful = True
            status.error = None
            status.last_success = time.time()
            summary = f"config reloaded: {len(changes)} change(s)"
            log.info("%s%s", summary, "".join(f"; {c}" for c in changes))
            return True, summary

    async def _apply(self, new: Config) -> list[str]:
        old = self.cfg
        for section in _RESTART_ONLY:
            if getattr(new, section) != getattr(old, section):
                log.warning("config reload: %s changed; that needs a restart", section)
        # restart-only sections keep their running values
        new = new.model_copy(update={s: getattr(old, s) for s in _RESTART_ONLY})
        changes = self.fleet.apply_config(new)
        changes += await self.fleet.discover()
        self.scheduler.reconfigure(
            new.poll.interval, new.heartbeat.interval if new.heartbeat.enabled else None
        )
        if new.sync != old.sync:
            # the task processes read the file at their start; a reload does not restart
            # them (yet): say so instead of half-applying
            log.warning("config reload: sync changed; the sync tasks need a restart to follow")
            changes.append("sync: changed (needs a restart)")
        self.cfg = new
        return changes

    def reload_from_thread(self, timeout: float = 60.0) -> tuple[bool, str]:
        """The reload, asked from another thread (the HTTP server's POST /-/reload)."""
        loop = self._loop
        if loop is None or not loop.is_running():
            return False, "reload: the daemon is not running"
        future = asyncio.run_coroutine_threadsafe(self.reload(), loop)
        return future.result(timeout)

    def _on_sighup(self) -> None:
        assert self._loop is not None
        self._loop.create_task(self.reload())

    async def serve(self) -> None:
        self._stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        self._loop = loop
        for sig in (signal.SIGTERM, signal.SIGINT):
            with contextlib.suppress(NotImplementedError, RuntimeError):  # not main thread
                loop.add_signal_handler(sig, self._stop.set)
        if self.reload_config is not None and threading.current_thread() is threading.main_thread():
            with contextlib.suppress(NotImplementedError, RuntimeError):
                loop.add_signal_handler(signal.SIGHUP, self._on_sighup)
        self.http.work.attach(loop)  # renders run on this loop from now on (loop_work.py)
        self.http.start()
        log.info(
            "replwatch listening on %s://%s:%d/metrics, watching %d group(s), %d sync task(s)%s",
            self.http.scheme,
            self.cfg.exporter.host,
            self.http.bound_port,
            len(self.cfg.groups),
            len(self.sync_watchers.names()),
            f" (shard {self.cfg.shard})" if self.cfg.shard and self.cfg.shard.count > 1 else "",
        )
        try:
            if self.supervisor is not None:
                self.supervisor.start()
            await self.fleet.discover()
            await self.scheduler.poll_all_once()
            if self.sync_watchers.names():
                await self.sync_watchers.poll_into(self.sync_store)
            self.scheduler.start()
            self._started = True
            await self._stop.wait()
        finally:
            self._started = False  # a stopping daemon is not ready (a load balancer leaves it)
            log.info("replwatch stopping")
            with contextlib.suppress(NotImplementedError, RuntimeError):
                loop.remove_signal_handler(signal.SIGHUP)
            self.scheduler.shutdown()
            await self.scheduler.wait_closed()
            self.sync_watchers.close()
            if self.supervisor is not None:
                await asyncio.to_thread(self.supervisor.stop)
            # in a thread: a scrape being answered may wait for a render on this loop
            await asyncio.to_thread(self.http.stop)
            self.http.work.attach(None)

    def stop(self) -> None:
        if self._stop is not None:
            self._stop.set()


def run_daemon(
    cfg: Config,
    config_path: str | None = None,
    log_level: str = "info",
    reload_config: Callable[[], Config] | None = None,
) -> None:
    daemon = Daemon.build(cfg, config_path, log_level, reload_config)
    asyncio.run(daemon.serve())
