"""Metrics of the fleet itself: discovery outcomes per Sentinel or cluster group, what each
monitored group is (static, a Sentinel group, a cluster shard with its slots), and the
newest config reload. Reads the fleet's plain values; no I/O at scrape time."""

from __future__ import annotations

from collections.abc import Iterator

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from replwatch.state import ReloadStatus
from replwatch.topology.fleet import Fleet
from replwatch.topology.groups import slot_ranges_text


class FleetCollector(Collector):
    def __init__(self, fleet: Fleet, reload: ReloadStatus | None = None) -> None:
        self.fleet = fleet
        self.reload = reload

    def collect(self) -> Iterator[Metric]:
        yield from self._groups()
        yield from self._discovery()
        yield from self._reload()

    def _groups(self) -> Iterator[Metric]:
        info = GaugeMetricFamily(
            "replwatch_group_info",
            "One series per monitored group: the node polled as its master now, where its "
            "nodes come from (source: static, sentinel, cluster), the configured group it "
            "belongs to (parent: a cluster shard's cluster) and, for a cluster shard, its "
            "slot ranges.",
            labels=["group", "master", "source", "parent", "slots"],
        )
        slots = GaugeMetricFamily(
            "replwatch_cluster_shard_slots",
            "Slots a cluster shard's master owns.",
            labels=["group", "parent"],
        )
        cycles = CounterMetricFamily(
            "replwatch_group_poll_cycles",
            "Poll cycles of the group's monitor. A reload keeps the monitor (and its lag "
            "history) of a group whose nodes and settings did not change, so this goes on "
            "counting; it starts again when the monitor is rebuilt.",
            labels=["group"],
        )
        moves = CounterMetricFamily(
            "replwatch_group_master_changes",
            "Times the group's master moved while replwatch watched it (failovers followed).",
            labels=["group"],
        )
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
        labels = ["group", "source"]
        success = GaugeMetricFamily(
            "replwatch_discovery_success",
            "1 when the newest discovery of the group (Sentinels asked, cluster described) "
            "worked; 0 when it failed (the last topology found is kept).",
            labels=labels,
        )
        duration = GaugeMetricFamily(
            "replwatch_discovery_duration_seconds",
            "How long the newest discovery of the group took.",
            labels=labels,
        )
        failures = CounterMetricFamily(
            "replwatch_discovery_failures",
            "Discoveries of the group that failed.",
            labels=labels,
        )
        changes = CounterMetricFamily(
            "replwatch_discovery_topology_changes",
            "Topology changes discovery found (a master moved, a shard came or went, "
            "replicas changed).",
            labels=labels,
        )
        last = GaugeMetricFamily(
            "replwatch_discovery_last_success_timestamp_seconds",
            "When the group's discovery last worked (Unix time).",
            labels=labels,
        )
        groups = GaugeMetricFamily(
            "replwatch_discovery_groups",
            "Monitored groups the newest successful discovery found (a cluster's shards).",
            labels=labels,
        )
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
        yield GaugeMetricFamily(
            "replwatch_config_last_reload_successful",
            "1 when the newest config reload (SIGHUP, POST /-/reload) worked, 0 when it failed "
            "(the running config stays).",
            value=1 if status.successful else 0,
        )
        yield GaugeMetricFamily(
            "replwatch_config_last_reload_success_timestamp_seconds",
            "When the config was last loaded successfully (start-up or reload; Unix time).",
            value=status.last_success,
        )
        yield CounterMetricFamily(
            "replwatch_config_reloads_failed",
            "Config reloads that failed.",
            value=status.failures,
        )
