"""A prometheus_client Collector that renders the latest snapshots. No I/O at scrape time.

A node that left the topology (or a group removed by a reload) is simply absent from the
newest snapshot, so its series leave /metrics with it; nothing is cached between scrapes.
Values that are unknown (a byte lag between two different replication streams, a heartbeat
never seen) are left out rather than exported as 0.
"""

from __future__ import annotations

import platform
import time
from collections.abc import Callable, Iterator

from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector

from replwatch import __version__
from replwatch.routing.engine import RoutingEngine
from replwatch.scheduler import SchedulerStats
from replwatch.state import (
    GroupSnapshot,
    ProbeStore,
    ReplicaView,
    SnapshotStore,
    lag_reading,
)
from replwatch.topology.sharding import WHOLE_FLEET, ShardSpec

# (name, help, value of a replica as of the scrape's wall-clock time)
_REPLICA_GAUGES: list[
    tuple[str, str, Callable[[ReplicaView, float], float | int | bool | None]]
] = [
    (
        "replwatch_replica_lag_seconds",
        "Best estimate of how far the replica's data is behind its master, in seconds, as of "
        "the scrape: the trend of its readings (its own offset, and its ACKs as its master "
        "shows them) carried to now; else the heartbeat; never 0 while it cannot be seen.",
        lambda r, now: lag_reading(r, now).seconds,
    ),
    (
        "replwatch_replica_lag_lower_bound_seconds",
        "The replica is at least this far behind, as of the scrape (its newest reading's "
        "lower edge; lower when its trend shows it catching up).",
        lambda r, now: (bounds := r.lag_bounds_at(now)) and bounds[0],
    ),
    (
        "replwatch_replica_lag_upper_bound_seconds",
        "The replica is at most this far behind, as of the scrape (its newest reading's upper "
        "edge plus the time since: no progress assumed); absent when not known.",
        lambda r, now: (bounds := r.lag_bounds_at(now)) and bounds[1],
    ),
    (
        "replwatch_replica_heartbeat_lag_seconds",
        "Time lag from the heartbeat key: master's clock now minus the first heartbeat the "
        "replica has not applied.",
        lambda r, now: r.heartbeat_lag_seconds,
    ),
    (
        "replwatch_replica_offset_lag_seconds",
        "Time lag from the offset clock: how long ago the master moved past the replica's offset.",
        lambda r, now: r.offset_lag_seconds,
    ),
    (
        "replwatch_replica_offset_lag_exact",
        "1 when the offset clock's table reached back far enough for an exact answer, 0 when "
        "replwatch_replica_offset_lag_seconds is only a lower bound.",
        lambda r, now: None if r.offset_lag_seconds is None else r.offset_lag_exact,
    ),
    (
        "replwatch_replica_ack_age_seconds",
        "Seconds since the replica's last ACK as the master's INFO reports it (the lag= "
        "field). This is not replication delay.",
        lambda r, now: r.ack_age_seconds,
    ),
    (
        "replwatch_replica_lag_bytes",
        "Master replication offset minus the replica's applied offset, sampled together.",
        lambda r, now: r.lag_bytes,
    ),
    (
        "replwatch_replica_link_up",
        "1 when the replica reports master_link_status:up, 0 otherwise (also when unreachable).",
        lambda r, now: r.link_up,
    ),
    (
        "replwatch_replica_sync_in_progress",
        "1 while the replica is doing a full sync from its master.",
        lambda r, now: r.sync_in_progress,
    ),
    (
        "replwatch_replica_following_master",
        "1 when the replica is on the same replication stream (replid) as the group's master.",
        lambda r, now: r.following_master if r.reachable else None,
    ),
    (
        "replwatch_replica_repl_offset_bytes",
        "The replica's applied replication offset (slave_repl_offset).",
        lambda r, now: r.applied_offset,
    ),
    (
        "replwatch_replica_read_repl_offset_bytes",
        "The replica's read (received) replication offset (slave_read_repl_offset, 7.0+).",
        lambda r, now: r.read_offset,
    ),
    (
        "replwatch_replica_backlog_usage_ratio",
        "Byte lag divided by the master's repl_backlog_size: at 1 a reconnect needs a full resync.",
        lambda r, now: r.backlog_usage_ratio,
    ),
    (
        "replwatch_replica_output_buffer_bytes",
        "Memory the master holds in this replica's output buffer (CLIENT LIST omem).",
        lambda r, now: r.output_buffer_bytes,
    ),
    (
        "replwatch_replica_output_buffer_usage_ratio",
        "Replica output buffer divided by the master's replica hard limit "
        "(client-output-buffer-limit); at 1 the master drops the replica.",
        lambda r, now: (
            r.output_buffer_bytes / r.output_buffer_limit_bytes
            if r.output_buffer_bytes is not None and r.output_buffer_limit_bytes
            else None
        ),
    ),
    (
        "replwatch_replica_link_down_seconds",
        "Seconds the replica reports its master link down (master_link_down_since_seconds).",
        lambda r, now: r.link_down_seconds,
    ),
    (
        "replwatch_replica_seconds_since_contact",
        "Seconds since replwatch last got an answer from the replica.",
        lambda r, now: r.seconds_since_contact,
    ),
]


class SnapshotCollector(Collector):
    def __init__(
        self,
        store: SnapshotStore,
        stats: SchedulerStats | None = None,
        probes: ProbeStore | None = None,
        routing: RoutingEngine | None = None,
        shard: ShardSpec | None = None,
        wall_clock: Callable[[], float] = time.time,
    ) -> None:
        self._wall = wall_clock  # the scrape's time: lags are told as of then
        self.routing = routing
        self.shard = shard or WHOLE_FLEET
        self.store = store
        self.stats = stats
        self.probes = probes

    def describe(self) -> list[Metric]:
        return []  # collected metrics vary with the topology; no fixed description

    def collect(self) -> Iterator[Metric]:
        snapshots = self.store.all()
        yield from self._group_metrics(snapshots)
        yield from self._node_metrics(snapshots)
        yield from self._replica_metrics(snapshots)
        yield from self._scheduler_metrics()
        yield from self._probe_metrics()
        yield from self._routing_metrics()
        build = GaugeMetricFamily(
            "replwatch_build_info",
            "replwatch version and Python version; always 1.",
            labels=["version", "python_version"],
        )
        build.add_metric([__version__, platform.python_version()], 1)
        yield build
        shard = GaugeMetricFamily(
            "replwatch_shard_info",
            "Which part of a fleet split across several replwatch instances this one watches "
            "(--shard index/count; 1 of 1 when not split); always 1.",
            labels=["index", "count"],
        )
        shard.add_metric([str(self.shard.index), str(self.shard.count)], 1)
        yield shard

    def _group_metrics(self, snapshots: list[GroupSnapshot]) -> Iterator[Metric]:
        offset = GaugeMetricFamily(
            "replwatch_master_repl_offset_bytes",
            "The master's replication offset (master_repl_offset).",
            labels=["group"],
        )
        role_ok = GaugeMetricFamily(
            "replwatch_master_role_ok",
            "1 when the group's configured master answers and reports role master; 0 when it "
            "is down or has become a replica (after a failover).",
            labels=["group"],
        )
        duration = GaugeMetricFamily(
            "replwatch_poll_duration_seconds",
            "Wall time of the group's last poll cycle (all nodes polled concurrently).",
            labels=["group"],
        )
        last = GaugeMetricFamily(
            "replwatch_last_poll_timestamp_seconds",
            "Unix time of the group's last completed poll cycle.",
            labels=["group"],
        )
        resets = CounterMetricFamily(
            "replwatch_offset_clock_resets",
            "Times the master's offset went backwards or its replid changed without "
            "continuing the old one (restart without persistence, different master).",
            labels=["group"],
        )
        hb_ok = GaugeMetricFamily(
            "replwatch_heartbeat_last_write_ok",
            "1 when the group's last heartbeat write succeeded, 0 when it failed.",
            labels=["group"],
        )
        for s in snapshots:
            if s.master_offset is not None:
                offset.add_metric([s.name], s.master_offset)
            role_ok.add_metric([s.name], 1 if s.master_role_ok else 0)
            duration.add_metric([s.name], s.poll_seconds)
            last.add_metric([s.name], s.taken_at)
            resets.add_metric([s.name], s.offset_resets)
            if s.heartbeat_enabled and s.heartbeat_ok is not None:
                hb_ok.add_metric([s.name], 1 if s.heartbeat_ok else 0)
        yield from (offset, role_ok, duration, last, resets, hb_ok)

    def _node_metrics(self, snapshots: list[GroupSnapshot]) -> Iterator[Metric]:
        up = GaugeMetricFamily(
            "replwatch_node_up",
            "1 when the node answered its last poll. role is what the node reports (or the "
            "configured role while it cannot be reached).",
            labels=["group", "node", "role"],
        )
        err = GaugeMetricFamily(
            "replwatch_node_last_error_info",
            "Present (value 1) while the node's last poll failed; reason is a short class: "
            "timeout, refused, auth, tls, dns, reset, protocol, loading, error.",
            labels=["group", "node", "reason"],
        )
        node_duration = GaugeMetricFamily(
            "replwatch_node_poll_duration_seconds",
            "Round-trip time of the node's last poll (connect included when it reconnected).",
            labels=["group", "node"],
        )
        backlog = GaugeMetricFamily(
            "replwatch_backlog_size_bytes",
            "The node's repl_backlog_size.",
            labels=["group", "node"],
        )
        for s in snapshots:
            for n in s.nodes:
                up.add_metric([s.name, n.label, n.role or n.configured_role], 1 if n.up else 0)
                if not n.up and n.error_reason:
                    err.add_metric([s.name, n.label, n.error_reason], 1)
                node_duration.add_metric([s.name, n.label], n.poll_seconds)
                if n.backlog_size is not None:
                    backlog.add_metric([s.name, n.label], n.backlog_size)
        yield from (up, err, node_duration, backlog)

    def _replica_metrics(self, snapshots: list[GroupSnapshot]) -> Iterator[Metric]:
        families = [
            (GaugeMetricFamily(name, doc, labels=["group", "replica"]), get)
            for name, doc, get in _REPLICA_GAUGES
        ]
        info = GaugeMetricFamily(
            "replwatch_replica_info",
            "Topology facts about a replica; always 1. upstream is the node it replicates "
            "from (its master, or another replica when chained).",
            labels=["group", "replica", "upstream", "chained", "discovered"],
        )
        now = self._wall()
        for s in snapshots:
            discovered = {n.label for n in s.nodes if n.discovered}
            for r in s.replicas:
                labels = [s.name, r.label]
                for family, get in families:
                    value = get(r, now)
                    if value is not None:
                        family.add_metric(labels, float(value))
                info.add_metric(
                    [
                        s.name,
                        r.label,
                        r.upstream or "",
                        "true" if r.chained else "false",
                        "true" if r.label in discovered else "false",
                    ],
                    1,
                )
        for family, _ in families:
            yield family
        yield info

    def _scheduler_metrics(self) -> Iterator[Metric]:
        if self.stats is None:
            return
        runs = CounterMetricFamily(
            "replwatch_scheduler_runs",
            "Scheduled job runs by kind (poll, heartbeat), group and outcome (the label is `kind`, "
            "not `job`, which Prometheus owns): completed, "
            "ok, failed, skipped (heartbeat or probe while the master is a replica or "
            "down), missed / skipped_overrun (the previous run still going; for heartbeats "
            "per group: that group's earlier write still unanswered), error.",
            labels=["kind", "group", "outcome"],
        )
        for (kind, group, what), count in self.stats.items():
            runs.add_metric([kind, group, what], count)
        yield runs

    def _probe_metrics(self) -> Iterator[Metric]:
        if self.probes is None:
            return
        wait = HistogramMetricFamily(
            "replwatch_probe_wait_seconds",
            "Time from writing the probe key on the master to WAIT's answer, for probes that "
            "got every replica they asked for.",
            labels=["group"],
        )
        acked = GaugeMetricFamily(
            "replwatch_probe_acked_replicas",
            "Replicas that acknowledged the newest probe write (WAIT's answer).",
            labels=["group"],
        )
        wanted = GaugeMetricFamily(
            "replwatch_probe_wanted_replicas",
            "Replicas the newest probe waited for (probe.replicas, or the online count for all).",
            labels=["group"],
        )
        total = CounterMetricFamily(
            "replwatch_probe",
            "WAIT probes by result: ok (enough replicas acknowledged in time), timeout (fewer "
            "did), error (no answer, or the configured master is a replica).",
            labels=["group", "result"],
        )
        error = GaugeMetricFamily(
            "replwatch_probe_last_error_info",
            "Present while the newest probe failed; reason e.g. not_master, timeout, refused.",
            labels=["group", "reason"],
        )
        bounds = self.probes.buckets
        for name, counts, count, total_seconds, results, last in self.probes.snapshot():
            buckets = [(f"{b:g}", float(c)) for b, c in zip(bounds, counts, strict=True)]
            buckets.append(("+Inf", float(count)))
            wait.add_metric([name], buckets, total_seconds)
            for result in ("ok", "timeout", "error"):
                total.add_metric([name, result], results.get(result, 0))
            if last is not None:
                if last.acked is not None:
                    acked.add_metric([name], last.acked)
                if last.wanted is not None:
                    wanted.add_metric([name], last.wanted)
                if last.result == "error" and last.reason:
                    error.add_metric([name, last.reason], 1)
        yield from (wait, acked, wanted, total, error)

    def _routing_metrics(self) -> Iterator[Metric]:
        if self.routing is None:
            return
        in_rotation = GaugeMetricFamily(
            "replwatch_routing_in_rotation",
            "1 while the replica should serve reads (after guards), 0 while it is out.",
            labels=["group", "replica"],
        )
        on_master = GaugeMetricFamily(
            "replwatch_routing_reads_on_master",
            "1 when no replica serves and reads go to the group's master.",
            labels=["group"],
        )
        degraded = GaugeMetricFamily(
            "replwatch_routing_degraded",
            "1 when the group's master is unreachable (or not a master): reads are never sent "
            "to it; answering replicas keep serving.",
            labels=["group"],
        )
        serving = GaugeMetricFamily(
            "replwatch_routing_replicas_in_rotation",
            "Number of the group's replicas serving reads.",
            labels=["group"],
        )
        for table in self.routing.tables():
            for e in table.replicas:
                in_rotation.add_metric([table.group, e.replica], 1 if e.in_rotation else 0)
            on_master.add_metric([table.group], 1 if table.reads_on_master else 0)
            degraded.add_metric([table.group], 1 if table.degraded else 0)
            serving.add_metric([table.group], sum(e.in_rotation for e in table.replicas))
        transitions = CounterMetricFamily(
            "replwatch_routing_transitions",
            "Times a replica went into (to=in) or out of (to=out) read rotation.",
            labels=["group", "replica", "to"],
        )
        for (group, replica, to), count in self.routing.transitions():
            transitions.add_metric([group, replica, to], count)
        yield from (in_rotation, on_master, degraded, serving, transitions)
