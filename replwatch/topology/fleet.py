"""The fleet: which groups the daemon monitors now, and their monitors and probers.

Static groups are monitored as configured. Sentinel and cluster groups are asked for their
topology every poll interval (`discover()`, run by the scheduler's discovery job): the
Sentinels for the master and replicas (the answer with the highest config epoch wins), a
cluster's nodes for its shards. What they report becomes monitored groups
(replwatch/topology/groups.py), and `reconcile()` brings the monitors in line:

- a new group gets a monitor (and a WAIT prober when probes are on);
- a group whose master moved is retargeted (GroupMonitor.retarget): the same monitor, so
  its heartbeat history and routing state stay; the series of the node's old role go;
- a group that is gone is closed, and its snapshot, routing table and probe results are
  dropped, so none of its series survive;
- an unchanged group is not touched.

A discovery that fails keeps the last topology it found (a Sentinel outage must not empty
the fleet) and is reported (`replwatch_discovery_success` 0 and the error).

`apply_config()` is the reload: the new config's groups are reconciled the same way; groups
whose configuration and monitor settings did not change keep their monitors and history.

All of it runs on the daemon's event loop, between poll cycles (the scheduler guards a
cycle in flight against its group being replaced).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field

from replwatch.config import (
    Config,
    GroupConfig,
    ProbeConfig,
    RedisEndpoint,
    TLSConfig,
    group_sentinels,
    tls_over,
    with_credentials,
)
from replwatch.errors import RedisError
from replwatch.keyslot import key_in_slots
from replwatch.observe.group_monitor import GroupMonitor
from replwatch.observe.probe import WaitProber
from replwatch.routing.engine import RoutingEngine
from replwatch.state import ProbeStore, SnapshotStore
from replwatch.topology.cluster import fold_failed_masters
from replwatch.topology.groups import (
    AddressMap,
    MonitoredGroup,
    discovered_group,
    name_shards,
)
from replwatch.topology.model import DiscoveredGroup

log = logging.getLogger("replwatch.topology")

SentinelResolver = Callable[
    [Sequence[RedisEndpoint], str, TLSConfig | None, float], Awaitable[DiscoveredGroup]
]
ClusterResolver = Callable[
    [Sequence[RedisEndpoint], TLSConfig | None, float], Awaitable[list[DiscoveredGroup]]
]


@dataclass(frozen=True)
class Resolvers:
    """How discovery asks its sources (the real resolvers unless a test passes others)."""

    sentinel: SentinelResolver
    cluster: ClusterResolver

    @classmethod
    def default(cls) -> Resolvers:
        from replwatch.topology.cluster import resolve_cluster
        from replwatch.topology.sentinel import resolve_sentinel

        return cls(resolve_sentinel, resolve_cluster)


@dataclass
class DiscoveryStatus:
    """The newest outcome of one configured group's discovery (for /metrics and status)."""

    group: str
    source: str  # sentinel | cluster
    ok: bool | None = None  # None: not asked yet
    error: str | None = None
    seconds: float = 0.0
    attempts: int = 0
    failures: int = 0
    changes: int = 0  # topology changes followed (master moved, shard added or gone)
    last_success: float | None = None  # wall clock
    found: list[MonitoredGroup] = field(default_factory=list)


def monitor_settings(cfg: Config) -> tuple[object, ...]:
    """The settings every monitor is built with: when they change, every monitor is rebuilt."""
    return (cfg.poll, cfg.heartbeat, cfg.lag, cfg.tls)


class Fleet:
    """See the module docstring. `monitors` and `probers` are the dicts the scheduler polls."""

    def __init__(
        self,
        cfg: Config,
        store: SnapshotStore,
        routing: RoutingEngine | None = None,
        probe_store: ProbeStore | None = None,
        resolvers: Resolvers | None = None,
    ) -> None:
        self.cfg = cfg
        self.store = store
        self.routing = routing
        self.probe_store = probe_store
        self._resolvers = resolvers
        # more per-group state to drop when groups go (e.g. the scheduler's counts)
        self.forget_others: list[Callable[[list[str]], None]] = []
        self.monitors: dict[str, GroupMonitor] = {}
        self.probers: dict[str, tuple[WaitProber, float]] = {}
        self.discovery: dict[str, DiscoveryStatus] = {}
        self._configs: dict[str, GroupConfig] = {}
        self._names: list[str] | None = None  # the group names the stores were last told
        self._set_config(cfg)
        self.reconcile(quiet=True)

    # ----------------------------------------------------------------- lookups

    def config_of(self, name: str) -> GroupConfig | None:
        """The configured group a monitored group comes from (a shard's cluster group)."""
        monitor = self.monitors.get(name)
        if monitor is not None:
            return monitor.group.config
        return self._configs.get(name)

    def probe_of(self, name: str) -> ProbeConfig:
        group = self.config_of(name)
        return self.cfg.probe if group is None else self.cfg.probe_of(group)

    def probe_intervals(self) -> list[float]:
        """The probe intervals of the configured groups that probe (one job each)."""
        return sorted(
            {self.cfg.probe_of(g).interval for g in self.cfg.groups if self.cfg.probe_of(g).enabled}
        )

    def groups(self) -> list[MonitoredGroup]:
        return [self.monitors[k].group for k in sorted(self.monitors)]

    @property
    def discovers(self) -> bool:
        return bool(self.discovery)

    # ----------------------------------------------------------------- discovery

    def _set_config(self, cfg: Config) -> None:
        self.cfg = cfg
        self._configs = {g.name: g for g in cfg.groups}
        # built once per config: reconcile runs every poll interval when discovery groups exist
        self._static = {
            g.name: MonitoredGroup.static(g, AddressMap(cfg.address_map_of(g)))
            for g in cfg.groups
            if g.source == "static"
        }
        old = self.discovery
        self.discovery = {}
        for g in cfg.groups:
            if g.source == "static":
                continue
            previous = old.get(g.name)
            if previous is not None and previous.found and previous.found[0].config == g:
                self.discovery[g.name] = previous  # same sources: keep what they said
            else:
                self.discovery[g.name] = DiscoveryStatus(g.name, g.source)

    async def discover(self) -> list[str]:
        """Ask every Sentinel and cluster group's sources once (concurrently), then
        reconcile. Returns the changes made (also logged)."""
        if not self.discovery:
            return []
        groups = [self._configs[name] for name in self.discovery]
        await asyncio.gather(*(self._discover_one(g) for g in groups))
        return self.reconcile()

    async def _discover_one(self, group: GroupConfig) -> None:
        status = self.discovery[group.name]
        resolvers = self._resolvers or Resolvers.default()
        self._resolvers = resolvers
        tls = tls_over(self.cfg.tls, group.tls)
        amap = AddressMap(self.cfg.address_map_of(group))
        started = time.monotonic()
        status.attempts += 1
        try:
            if group.sentinel is not None:
                found = await resolvers.sentinel(
                    group_sentinels(group.sentinel),
                    group.sentinel.master_name,
                    tls,
                    group.sentinel.timeout,
                )
                groups = [discovered_group(group, group.name, found, amap)]
            else:
                assert group.cluster is not None
                auth = group.node_auth
                seeds = [
                    s if auth is None else with_credentials(s, auth.username, auth.password)
                    for s in group.cluster.startup_nodes
                ]
                shards = await resolvers.cluster(seeds, tls, group.cluster.timeout)
                shards = fold_failed_masters(shards, [mg.node_ids for mg in status.found])
                previous = {mg.name: mg.node_ids for mg in status.found}
                groups = [
                    discovered_group(group, name, shard, amap)
                    for name, shard in name_shards(group.name, shards, previous)
                ]
        except (RedisError, OSError) as exc:
            status.ok = False
            status.failures += 1
            status.error = str(exc)
            status.seconds = time.monotonic() - started
            log.warning("discovery of group %s failed: %s", group.name, exc)
            return
        status.seconds = time.monotonic() - started
        if status.ok is False:
            log.info("discovery of group %s works again", group.name)
        status.ok = True
        status.error = None
        status.last_success = time.time()
        if status.found and _topology(status.found) != _topology(groups):
            status.changes += 1
        status.found = groups

    # ----------------------------------------------------------------- reconcile

    def _desired(self) -> dict[str, MonitoredGroup]:
        desired: dict[str, MonitoredGroup] = {}
        for group in self.cfg.groups:
            if group.source == "static":
                found = [self._static[group.name]]
            else:
                found = self.discovery[group.name].found
            for mg in found:
                if mg.name in desired:
                    log.warning(
                        "group %s (from %s) has the name of another group: not monitored",
                        mg.name,
                        group.name,
                    )
                    continue
                desired[mg.name] = mg
        return desired

    def _new_monitor(self, group: MonitoredGroup) -> GroupMonitor:
        cfg = self.cfg
        return GroupMonitor(group, cfg.poll, cfg.heartbeat, cfg.lag, cfg.tls)

    def _sync_prober(self, group: MonitoredGroup) -> None:
        probe = self.cfg.probe_of(group.config)
        current = self.probers.get(group.name)
        tls = tls_over(self.cfg.tls, group.tls)
        key = probe.key
        if group.source == "cluster":
            # the configured key lives in one shard: each shard probes with its own
            key = key_in_slots(probe.key, group.slots, current[0].key if current else None)
        if current is not None:
            prober, _ = current
            if probe.enabled and (prober.endpoint, prober.config, prober.tls, prober.key) == (
                group.master,
                probe,
                tls,
                key,
            ):
                return
            self.probers.pop(group.name)
            prober.close()
        if probe.enabled:
            self.probers[group.name] = (
                WaitProber(group.name, group.master, probe, tls, key),
                probe.interval,
            )

    def reconcile(self, quiet: bool = False) -> list[str]:
        """Bring monitors and probers in line with the config and discovery. Returns what
        changed, one line each (also logged, unless `quiet`: the start-up)."""
        desired = self._desired()
        changes: list[str] = []
        for name in list(self.monitors):
            if name not in desired:
                self.monitors.pop(name).close()
                changes.append(f"group {name}: gone")
        for name in list(self.probers):
            if name not in desired:
                self.probers.pop(name)[0].close()
        for name, group in desired.items():
            monitor = self.monitors.get(name)
            if monitor is None:
                self.monitors[name] = self._new_monitor(group)
                changes.append(f"group {name}: watching master {group.master.label}")
            elif monitor.group != group:
                if monitor.group.master.label != group.master.label:
                    changes.append(
                        f"group {name}: master moved from {monitor.group.master.label} "
                        f"to {group.master.label}"
                    )
                elif monitor.group.slots != group.slots:
                    changes.append(f"group {name}: slots changed")
                else:
                    changes.append(f"group {name}: nodes changed")
                monitor.retarget(group)
            self._sync_prober(group)
        names = sorted(desired)
        if names != self._names:  # the stores forget departed groups only when some went
            self._names = names
            self.store.expect(names)
            if self.routing is not None:
                self.routing.forget_except(names)
            if self.probe_store is not None:
                self.probe_store.forget_except(names)
            for forget in self.forget_others:
                forget(names)
        for line in changes:
            log.log(logging.DEBUG if quiet else logging.INFO, "%s", line)
        return changes

    def apply_config(self, cfg: Config) -> list[str]:
        """The reload: adopt `cfg`, keep the monitors of groups that did not change. When
        the monitor settings (poll, heartbeat, lag, tls) changed, every monitor is rebuilt.
        Call `discover()` afterwards for the new Sentinel and cluster groups."""
        rebuild = monitor_settings(cfg) != monitor_settings(self.cfg)
        self._set_config(cfg)
        changes: list[str] = []
        if rebuild:
            for monitor in self.monitors.values():
                monitor.close()
            self.monitors.clear()
            changes.append("monitor settings changed: every group's monitor rebuilt")
        for name in list(self.monitors):
            group = self.monitors[name].group
            current = self._configs.get(group.parent)
            if current is None or current.tls != group.config.tls or current.source != group.source:
                # gone, or polled another way now: rebuilt from the new definition. Other
                # changes (nodes, routing, probe, mapping) are followed by reconcile's
                # retarget, which keeps the monitor and its history.
                self.monitors.pop(name).close()
        return changes + self.reconcile()

    def close(self) -> None:
        for monitor in self.monitors.values():
            monitor.close()
        for prober, _ in self.probers.values():
            prober.close()


def _topology(groups: Sequence[MonitoredGroup]) -> list[tuple[str, str, tuple[str, ...]]]:
    return sorted(
        (g.name, g.master.label, tuple(sorted(r.label for r in g.replicas))) for g in groups
    )
