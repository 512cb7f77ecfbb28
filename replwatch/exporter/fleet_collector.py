"""Metrics of the fleet itself: discovery outcomes per Sentinel or cluster group, what each
monitored group is (static, a Sentinel group, a cluster shard with its slots), and the
newest config reload. Reads the fleet's plain values; no I/O at scrape time."""

from __future__ import annotations

from collections.abc import Iterator

from prometheus_client.core import Metric
from prometheus_client.registry import Collector

from replwatch.exporter.metric_def import CounterDef, GaugeDef, MetricDef
from replwatch.state import ReloadStatus
from replwatch.topology.fleet import Fleet
from replwatch.topology.groups import slot_ranges_text

DISCOVERY_LABELS = ("group", "source")
GROUP_INFO = GaugeDef(
    "replwatch_group_info",
    "One series per monitored group: the node polled as its master now, where its "
    "nodes come from (source: static, sentinel, cluster), the configured group it "
    "belongs to (parent: a cluster shard's cluster) and, for a cluster shard, its "
    "slot ranges.",
    ("group", "master", "source", "parent", "slots"),
)
CLUSTER_SHARD_SLOTS = GaugeDef(
    "replwatch_cluster_shard_slots",
    "Slots a cluster shard's master owns.",
    ("group", "parent"),
)
GROUP_POLL_CYCLES = CounterDef(
    "replwatch_group_poll_cycles",
    "Poll cycles of the group's monitor. A reload keeps the monitor (and its lag "
    "history) of a group whose nodes and settings did not change, so this goes on "
    "counting; it starts again when the monitor is rebuilt.",
    ("group",),
)
GROUP_MASTER_CHANGES = CounterDef(
    "replwatch_group_master_changes",
    "Times the group's master moved while replwatch watched it (failovers followed).",
    ("group",),
)
DISCOVERY_SUCCESS = GaugeDef(
    "replwatch_discovery_success",
    "1 when the newest discovery of the group (Sentinels asked, cluster described) "
    "worked; 0 when it failed (the last topology found is kept).",
    DISCOVERY_LABELS,
)
DISCOVERY_DURATION_SECONDS = GaugeDef(
    "replwatch_discovery_duration_seconds",
    "How long the newest discovery of the group took.",
    DISCOVERY_LABELS,
)
DISCOVERY_FAILURES = CounterDef(
    "replwatch_discovery_failures",
    "Discoveries of the group that failed.",
    DISCOVERY_LABELS,
)
DISCOVERY_TOPOLOGY_CHANGES = CounterDef(
    "replwatch_discovery_topology_changes",
    "Topology changes discovery found (a master moved, a shard came or went, replicas changed).",
    DISCOVERY_LABELS,
)
DISCOVERY_LAST_SUCCESS_TIMESTAMP_SECONDS = GaugeDef(
    "replwatch_discovery_last_success_timestamp_seconds",
    "When the group's discovery last worked (Unix time).",
    DISCOVERY_LABELS,
)
DISCOVERY_GROUPS = GaugeDef(
    "replwatch_discovery_groups",
    "Monitored groups the newest successful discovery found (a cluster's shards).",
    DISCOVERY_LABELS,
)
CONFIG_LAST_RELOAD_SUCCESSFUL = GaugeDef(
    "replwatch_config_last_reload_successful",
    "1 when the newest config reload (SIGHUP, POST /-/reload) worked, 0 when it failed "
    "(the running config stays).",
)
CONFIG_LAST_RELOAD_SUCCESS_TIMESTAMP_SECONDS = GaugeDef(
    "replwatch_config_last_reload_success_timestamp_seconds",
    "When the config was last loaded successfully (start-up or reload; Unix time).",
)
CONFIG_RELOADS_FAILED = CounterDef(
    "replwatch_config_reloads_failed",
    "Config reloads that failed.",
)
# every family the collector yields, in its order (the metrics reference lists them so)
METRICS: tuple[MetricDef, ...] = (
    GROUP_INFO,
    CLUSTER_SHARD_SLOTS,
    GROUP_POLL_CYCLES,
    GROUP_MASTER_CHANGES,
    DISCOVERY_SUCCESS,
    DISCOVERY_DURATION_SECONDS,
    DISCOVERY_FAILURES,
    DISCOVERY_TOPOLOGY_CHANGES,
    DISCOVERY_LAST_SUCCESS_TIMESTAMP_SECONDS,
    DISCOVERY_GROUPS,
    CONFIG_LAST_RELOAD_SUCCESSFUL,
    CONFIG_LAST_RELOAD_SUCCESS_TIMESTAMP_SECONDS,
    CONFIG_RELOADS_FAILED,
)


class FleetCollector(Collector):
    def __init__(self, fleet: Fleet, reload: ReloadStatus | None = None) -> None:
        self.fleet = fleet
        self.reload = reload

    def collect(self) -> Iterator[Metric]:
        yield from self._groups()
        yield from self._discovery()
        yield from self._reload()

    def _groups(self) -> Iterator[Metric]:
        info = GROUP_INFO.family()
        slots = CLUSTER_SHARD_SLOTS.family()
        cycles = GROUP_POLL_CYCLES.family()
        moves = GROUP_MASTER_CHANGES.family()
        for name in sorted(self.fleet.monitors):
            monitor = self.fleet.monitors[name]
            group = monitor.group
            labels = [name, group.master.label, group.source, group.parent]
            info.add_metric([*labels, slot_ranges_text(group.slots)], 1)
            cycles.add_metric([name], monitor.cycle)
            if group.source == "cluster":
                slots.add_metric([name, group.parent], sum(b - a + 1 for a, b in group.slots))
            if group.source != "static":
                moves.add_metric([name], monitor.master_changes)
        yield info
        yield slots
        yield cycles
        yield moves

    def _discovery(self) -> Iterator[Metric]:
        statuses = [self.fleet.discovery[k] for k in sorted(self.fleet.discovery)]
        if not statuses:
            return
        success = DISCOVERY_SUCCESS.family()
        duration = DISCOVERY_DURATION_SECONDS.family()
        failures = DISCOVERY_FAILURES.family()
        changes = DISCOVERY_TOPOLOGY_CHANGES.family()
        last = DISCOVERY_LAST_SUCCESS_TIMESTAMP_SECONDS.family()
        groups = DISCOVERY_GROUPS.family()
        for status in statuses:
            key = [status.group, status.source]
            if status.ok is not None:
                success.add_metric(key, 1 if status.ok else 0)
                duration.add_metric(key, status.seconds)
            failures.add_metric(key, status.failures)
            changes.add_metric(key, status.changes)
            if status.last_success is not None:
                last.add_metric(key, status.last_success)
            groups.add_metric(key, len(status.found))
        yield from (success, duration, failures, changes, last, groups)

    def _reload(self) -> Iterator[Metric]:
        status = self.reload
        if status is None:
            return
        yield CONFIG_LAST_RELOAD_SUCCESSFUL.family(value=1 if status.successful else 0)
        yield CONFIG_LAST_RELOAD_SUCCESS_TIMESTAMP_SECONDS.family(value=status.last_success)
        yield CONFIG_RELOADS_FAILED.family(value=status.failures)
