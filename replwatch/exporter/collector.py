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

from prometheus_client.core import Metric
from prometheus_client.registry import Collector

from replwatch import __version__
from replwatch.exporter.metric_def import CounterDef, GaugeDef, HistogramDef, MetricDef
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

REPLICA_LABELS = ("group", "replica")

# (definition, value of a replica as of the scrape's wall-clock time)
_REPLICA_GAUGES: list[
    tuple[GaugeDef, Callable[[ReplicaView, float], float | int | bool | None]]
] = [
    (
        GaugeDef(
            "replwatch_replica_lag_seconds",
            "Best estimate of how far the replica's data is behind its master, in seconds, as of "
            "the scrape: the trend of its readings (its own offset, and its ACKs as its master "
            "shows them) carried to now; else the heartbeat; never 0 while it cannot be seen.",
            REPLICA_LABELS,
        ),
        lambda r, now: lag_reading(r, now).seconds,
    ),
    (
        GaugeDef(
            "replwatch_replica_lag_lower_bound_seconds",
            "The replica is at least this far behind, as of the scrape (its newest reading's "
            "lower edge; lower when its trend shows it catching up).",
            REPLICA_LABELS,
        ),
        lambda r, now: (bounds := r.lag_bounds_at(now)) and bounds[0],
    ),
    (
        GaugeDef(
            "replwatch_replica_lag_upper_bound_seconds",
            "The replica is at most this far behind, as of the scrape (its newest reading's upper "
            "edge plus the time since: no progress assumed); absent when not known.",
            REPLICA_LABELS,
        ),
        lambda r, now: (bounds := r.lag_bounds_at(now)) and bounds[1],
    ),
    (
        GaugeDef(
            "replwatch_replica_heartbeat_lag_seconds",
            "Time lag from the heartbeat key: master's clock now minus the first heartbeat the "
            "replica has not applied.",
            REPLICA_LABELS,
        ),
        lambda r, now: r.heartbeat_lag_seconds,
    ),
    (
        GaugeDef(
            "replwatch_replica_offset_lag_seconds",
            "Time lag from the offset clock: how long ago the master moved past the replica's "
            "offset.",
            REPLICA_LABELS,
        ),
        lambda r, now: r.offset_lag_seconds,
    ),
    (
        GaugeDef(
            "replwatch_replica_offset_lag_exact",
            "1 when the offset clock's table reached back far enough for an exact answer, 0 when "
            "replwatch_replica_offset_lag_seconds is only a lower bound.",
            REPLICA_LABELS,
        ),
        lambda r, now: None if r.offset_lag_seconds is None else r.offset_lag_exact,
    ),
    (
        GaugeDef(
            "replwatch_replica_ack_age_seconds",
            "Seconds since the replica's last ACK as the master's INFO reports it (the lag= "
            "field). This is not replication delay.",
            REPLICA_LABELS,
        ),
        lambda r, now: r.ack_age_seconds,
    ),
    (
        GaugeDef(
            "replwatch_replica_lag_bytes",
            "Master replication offset minus the replica's applied offset, sampled together.",
            REPLICA_LABELS,
        ),
        lambda r, now: r.lag_bytes,
    ),
    (
        GaugeDef(
            "replwatch_replica_link_up",
            "1 when the replica reports master_link_status:up, 0 otherwise (also when "
            "unreachable).",
            REPLICA_LABELS,
        ),
        lambda r, now: r.link_up,
    ),
    (
        GaugeDef(
            "replwatch_replica_sync_in_progress",
            "1 while the replica is doing a full sync from its master.",
            REPLICA_LABELS,
        ),
        lambda r, now: r.sync_in_progress,
    ),
    (
        GaugeDef(
            "replwatch_replica_following_master",
            "1 when the replica is on the same replication stream (replid) as the group's master.",
            REPLICA_LABELS,
        ),
        lambda r, now: r.following_master if r.reachable else None,
    ),
    (
        GaugeDef(
            "replwatch_replica_repl_offset_bytes",
            "The replica's applied replication offset (slave_repl_offset).",
            REPLICA_LABELS,
        ),
        lambda r, now: r.applied_offset,
    ),
    (
        GaugeDef(
            "replwatch_replica_read_repl_offset_bytes",
            "The replica's read (received) replication offset (slave_read_repl_offset, 7.0+).",
            REPLICA_LABELS,
        ),
        lambda r, now: r.read_offset,
    ),
    (
        GaugeDef(
            "replwatch_replica_backlog_usage_ratio",
            "Byte lag divided by the master's repl_backlog_size: at 1 a reconnect needs a full "
            "resync.",
            REPLICA_LABELS,
        ),
        lambda r, now: r.backlog_usage_ratio,
    ),
    (
        GaugeDef(
            "replwatch_replica_output_buffer_bytes",
            "Memory the master holds in this replica's output buffer (CLIENT LIST omem).",
            REPLICA_LABELS,
        ),
        lambda r, now: r.output_buffer_bytes,
    ),
    (
        GaugeDef(
            "replwatch_replica_output_buffer_usage_ratio",
            "Replica output buffer divided by the master's replica hard limit "
            "(client-output-buffer-limit); at 1 the master drops the replica.",
            REPLICA_LABELS,
        ),
        lambda r, now: (
            r.output_buffer_bytes / r.output_buffer_limit_bytes
            if r.output_buffer_bytes is not None and r.output_buffer_limit_bytes
            else None
        ),
    ),
    (
        GaugeDef(
            "replwatch_replica_link_down_seconds",
            "Seconds the replica reports its master link down (master_link_down_since_seconds).",
            REPLICA_LABELS,
        ),
        lambda r, now: r.link_down_seconds,
    ),
    (
        GaugeDef(
            "replwatch_replica_seconds_since_contact",
            "Seconds since replwatch last got an answer from the replica.",
            REPLICA_LABELS,
        ),
        lambda r, now: r.seconds_since_contact,
    ),
]

MASTER_REPL_OFFSET_BYTES = GaugeDef(
    "replwatch_master_repl_offset_bytes",
    "The master's replication offset (master_repl_offset).",
    ("group",),
)
MASTER_ROLE_OK = GaugeDef(
    "replwatch_master_role_ok",
    "1 when the group's configured master answers and reports role master; 0 when it "
    "is down or has become a replica (after a failover).",
    ("group",),
)
POLL_DURATION_SECONDS = GaugeDef(
    "replwatch_poll_duration_seconds",
    "Wall time of the group's last poll cycle (all nodes polled concurrently).",
    ("group",),
)
LAST_POLL_TIMESTAMP_SECONDS = GaugeDef(
    "replwatch_last_poll_timestamp_seconds",
    "Unix time of the group's last completed poll cycle.",
    ("group",),
)
OFFSET_CLOCK_RESETS = CounterDef(
    "replwatch_offset_clock_resets",
    "Times the master's offset went backwards or its replid changed without "
    "continuing the old one (restart without persistence, different master).",
    ("group",),
)
HEARTBEAT_LAST_WRITE_OK = GaugeDef(
    "replwatch_heartbeat_last_write_ok",
    "1 when the group's last heartbeat write succeeded, 0 when it failed.",
    ("group",),
)
NODE_UP = GaugeDef(
    "replwatch_node_up",
    "1 when the node answered its last poll. role is what the node reports (or the "
    "configured role while it cannot be reached).",
    ("group", "node", "role"),
)
NODE_LAST_ERROR_INFO = GaugeDef(
    "replwatch_node_last_error_info",
    "Present (value 1) while the node's last poll failed; reason is a short class: "
    "timeout, refused, auth, tls, dns, reset, protocol, loading, error.",
    ("group", "node", "reason"),
)
NODE_POLL_DURATION_SECONDS = GaugeDef(
    "replwatch_node_poll_duration_seconds",
    "Round-trip time of the node's last poll (connect included when it reconnected).",
    ("group", "node"),
)
BACKLOG_SIZE_BYTES = GaugeDef(
    "replwatch_backlog_size_bytes",
    "The node's repl_backlog_size.",
    ("group", "node"),
)
REPLICA_INFO = GaugeDef(
    "replwatch_replica_info",
    "Topology facts about a replica; always 1. upstream is the node it replicates "
    "from (its master, or another replica when chained).",
    ("group", "replica", "upstream", "chained", "discovered"),
)
SCHEDULER_RUNS = CounterDef(
    "replwatch_scheduler_runs",
    "Scheduled job runs by kind (poll, heartbeat), group and outcome (the label is `kind`, "
    "not `job`, which Prometheus owns): completed, "
    "ok, failed, skipped (heartbeat or probe while the master is a replica or "
    "down), missed / skipped_overrun (the previous run still going; for heartbeats "
    "per group: that group's earlier write still unanswered), error.",
    ("kind", "group", "outcome"),
)
PROBE_WAIT_SECONDS = HistogramDef(
    "replwatch_probe_wait_seconds",
    "Time from writing the probe key on the master to WAIT's answer, for probes that "
    "got every replica they asked for.",
    ("group",),
)
PROBE_ACKED_REPLICAS = GaugeDef(
    "replwatch_probe_acked_replicas",
    "Replicas that acknowledged the newest probe write (WAIT's answer).",
    ("group",),
)
PROBE_WANTED_REPLICAS = GaugeDef(
    "replwatch_probe_wanted_replicas",
    "Replicas the newest probe waited for (probe.replicas, or the online count for all).",
    ("group",),
)
PROBES = CounterDef(
    "replwatch_probe",
    "WAIT probes by result: ok (enough replicas acknowledged in time), timeout (fewer "
    "did), error (no answer, or the configured master is a replica).",
    ("group", "result"),
)
PROBE_LAST_ERROR_INFO = GaugeDef(
    "replwatch_probe_last_error_info",
    "Present while the newest probe failed; reason e.g. not_master, timeout, refused.",
    ("group", "reason"),
)
ROUTING_IN_ROTATION = GaugeDef(
    "replwatch_routing_in_rotation",
    "1 while the replica should serve reads (after guards), 0 while it is out.",
    ("group", "replica"),
)
ROUTING_READS_ON_MASTER = GaugeDef(
    "replwatch_routing_reads_on_master",
    "1 when no replica serves and reads go to the group's master.",
    ("group",),
)
ROUTING_DEGRADED = GaugeDef(
    "replwatch_routing_degraded",
    "1 when the group's master is unreachable (or not a master): reads are never sent "
    "to it; answering replicas keep serving.",
    ("group",),
)
ROUTING_REPLICAS_IN_ROTATION = GaugeDef(
    "replwatch_routing_replicas_in_rotation",
    "Number of the group's replicas serving reads.",
    ("group",),
)
ROUTING_TRANSITIONS = CounterDef(
    "replwatch_routing_transitions",
    "Times a replica went into (to=in) or out of (to=out) read rotation.",
    ("group", "replica", "to"),
)
BUILD_INFO = GaugeDef(
    "replwatch_build_info",
    "replwatch version and Python version; always 1.",
    ("version", "python_version"),
)
SHARD_INFO = GaugeDef(
    "replwatch_shard_info",
    "Which part of a fleet split across several replwatch instances this one watches "
    "(--shard index/count; 1 of 1 when not split); always 1.",
    ("index", "count"),
)
# every family the collector yields, in its order (the metrics reference lists them so)
METRICS: tuple[MetricDef, ...] = (
    MASTER_REPL_OFFSET_BYTES,
    MASTER_ROLE_OK,
    POLL_DURATION_SECONDS,
    LAST_POLL_TIMESTAMP_SECONDS,
    OFFSET_CLOCK_RESETS,
    HEARTBEAT_LAST_WRITE_OK,
    NODE_UP,
    NODE_LAST_ERROR_INFO,
    NODE_POLL_DURATION_SECONDS,
    BACKLOG_SIZE_BYTES,
    *(definition for definition, _ in _REPLICA_GAUGES),
    REPLICA_INFO,
    SCHEDULER_RUNS,
    PROBE_WAIT_SECONDS,
    PROBE_ACKED_REPLICAS,
    PROBE_WANTED_REPLICAS,
    PROBES,
    PROBE_LAST_ERROR_INFO,
    ROUTING_IN_ROTATION,
    ROUTING_READS_ON_MASTER,
    ROUTING_DEGRADED,
    ROUTING_REPLICAS_IN_ROTATION,
    ROUTING_TRANSITIONS,
    BUILD_INFO,
    SHARD_INFO,
)


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
        build = BUILD_INFO.family()
        build.add_metric([__version__, platform.python_version()], 1)
        yield build
        shard = SHARD_INFO.family()
        shard.add_metric([str(self.shard.index), str(self.shard.count)], 1)
        yield shard

    def _group_metrics(self, snapshots: list[GroupSnapshot]) -> Iterator[Metric]:
        offset = MASTER_REPL_OFFSET_BYTES.family()
        role_ok = MASTER_ROLE_OK.family()
        duration = POLL_DURATION_SECONDS.family()
        last = LAST_POLL_TIMESTAMP_SECONDS.family()
        resets = OFFSET_CLOCK_RESETS.family()
        hb_ok = HEARTBEAT_LAST_WRITE_OK.family()
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
        up = NODE_UP.family()
        err = NODE_LAST_ERROR_INFO.family()
        node_duration = NODE_POLL_DURATION_SECONDS.family()
        backlog = BACKLOG_SIZE_BYTES.family()
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
        families = [(definition.family(), get) for definition, get in _REPLICA_GAUGES]
        info = REPLICA_INFO.family()
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
        runs = SCHEDULER_RUNS.family()
        for (kind, group, what), count in self.stats.items():
            runs.add_metric([kind, group, what], count)
        yield runs

    def _probe_metrics(self) -> Iterator[Metric]:
        if self.probes is None:
            return
        wait = PROBE_WAIT_SECONDS.family()
        acked = PROBE_ACKED_REPLICAS.family()
        wanted = PROBE_WANTED_REPLICAS.family()
        total = PROBES.family()
        error = PROBE_LAST_ERROR_INFO.family()
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
        in_rotation = ROUTING_IN_ROTATION.family()
        on_master = ROUTING_READS_ON_MASTER.family()
        degraded = ROUTING_DEGRADED.family()
        serving = ROUTING_REPLICAS_IN_ROTATION.family()
        for table in self.routing.tables():
            for e in table.replicas:
                in_rotation.add_metric([table.group, e.replica], 1 if e.in_rotation else 0)
            on_master.add_metric([table.group], 1 if table.reads_on_master else 0)
            degraded.add_metric([table.group], 1 if table.degraded else 0)
            serving.add_metric([table.group], sum(e.in_rotation for e in table.replicas))
        transitions = ROUTING_TRANSITIONS.family()
        for (group, replica, to), count in self.routing.transitions():
            transitions.add_metric([group, replica, to], count)
        yield from (in_rotation, on_master, degraded, serving, transitions)
