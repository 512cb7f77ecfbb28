"""What the status page costs: building /status.json for a large fleet, next to rendering
/metrics for the same fleet in the same process (the exporter's own floor), and the memory of
the lag history ring at its full size.

The fleet is generated (no servers needed: this measures the rendering, not polling), but
every byte goes through the daemon's code: the SnapshotStore, the RoutingEngine fed with the
snapshots, the SnapshotCollector behind /metrics, LagHistory and status_document.

    python bench/status_page.py                     # 1,000 replicas in 125 groups
    python bench/status_page.py --replicas 5000     # larger

Prints one JSON document (and writes it to --output).
"""

from __future__ import annotations

import argparse
import gzip
import json
import statistics
import sys
import time
import tracemalloc
from dataclasses import replace
from pathlib import Path

from prometheus_client import CollectorRegistry
from prometheus_client.exposition import generate_latest

from replwatch.config import RoutingConfig
from replwatch.exporter.collector import SnapshotCollector
from replwatch.exporter.exposition import FastEncoder
from replwatch.exporter.status_doc import StatusSources, status_document
from replwatch.lag.history import LagHistory
from replwatch.routing.engine import RoutingEngine
from replwatch.state import GroupSnapshot, NodeView, ReplicaView, SnapshotStore

PER_GROUP = 8


def replica(label: str, lag: float) -> ReplicaView:
    return ReplicaView(
        label=label,
        upstream="m",
        reachable=True,
        link_up=True,
        sync_in_progress=False,
        following_master=True,
        chained=False,
        applied_offset=1000,
        read_offset=1000,
        lag_bytes=int(lag * 10_000),
        lag_seconds=lag,
        lag_source="heartbeat",
        heartbeat_lag_seconds=lag,
        offset_lag_seconds=lag,
        offset_lag_exact=True,
        ack_age_seconds=0.5,
        link_down_seconds=None,
        backlog_usage_ratio=0.01,
        output_buffer_bytes=0,
        output_buffer_limit_bytes=256 << 20,
        seconds_since_contact=0.1,
    )


def fleet(replicas: int, now: float) -> list[GroupSnapshot]:
    groups = []
    for g in range(replicas // PER_GROUP):
        master = f"10.{g // 250}.{g % 250}.1:6379"
        members = tuple(
            replica(f"10.{g // 250}.{g % 250}.{r + 2}:6379", 0.01 * r + (5.0 if g % 50 == 3 else 0))
            for r in range(PER_GROUP)
        )
        groups.append(
            GroupSnapshot(
                name=f"group-{g:04d}",
                master=master,
                master_up=True,
                master_role_ok=True,
                master_offset=1000,
                master_replid="x" * 40,
                backlog_size=1 << 20,
                nodes=(NodeView(master, "master", "master", True),),
                replicas=members,
                taken_at=now,
                poll_seconds=0.002,
                cycle=1,
                offset_resets=0,
                heartbeat_enabled=True,
            )
        )
    return groups


def timed(fn: object, runs: int) -> list[float]:
    out = []
    for _ in range(runs):
        start = time.perf_counter()
        fn()  # type: ignore[operator]
        out.append((time.perf_counter() - start) * 1000)
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--replicas", type=int, default=1000)
    parser.add_argument("--runs", type=int, default=20)
    parser.add_argument("--output", default="bench/results/status_page.json")
    args = parser.parse_args()

    now = time.time()
    snapshots = fleet(args.replicas, now)
    store = SnapshotStore()
    store.expect([s.name for s in snapshots])
    routing = RoutingEngine(lambda _name: RoutingConfig())
    for snap in snapshots:
        store.put(snap)
        routing.update(snap)

    tracemalloc.start()
    history = LagHistory()
    for step in range(history.points):  # every bucket of the window filled
        for snap in snapshots:
            history.record(
                replace(snap, taken_at=now - (history.points - 1 - step) * history.width)
            )
    history_bytes, _peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()

    sources = StatusSources(
        snapshots=store.all,
        routing=routing.table,
        probes=dict,
        sync=list,
        history=history.series,
        poll_interval=1.0,
        history_window=history.window,
        version="bench",
    )
    registry = CollectorRegistry(auto_describe=False)
    registry.register(SnapshotCollector(store, None, None, routing, None))

    def status_json() -> bytes:
        return json.dumps(status_document(sources, now), separators=(",", ":")).encode()

    doc = status_json()
    metrics = generate_latest(registry)
    encoder = FastEncoder(openmetrics=False)  # the daemon's own text encoder
    assert encoder(registry) == metrics
    status_ms = timed(status_json, args.runs)
    metrics_ms = timed(lambda: encoder(registry), args.runs)
    client_ms = timed(lambda: generate_latest(registry), args.runs)
    result = {
        "replicas": len(snapshots) * PER_GROUP,
        "groups": len(snapshots),
        "history_points_per_replica": history.points,
        "status_json_ms_median": round(statistics.median(status_ms), 2),
        "status_json_bytes": len(doc),
        "status_json_gzip_bytes": len(gzip.compress(doc, compresslevel=1)),
        "metrics_ms_median": round(statistics.median(metrics_ms), 2),
        "metrics_prometheus_client_encoder_ms_median": round(statistics.median(client_ms), 2),
        "metrics_bytes": len(metrics),
        "status_vs_metrics_time": round(
            statistics.median(status_ms) / statistics.median(metrics_ms), 2
        ),
        "history_bytes": history_bytes,
        "history_bytes_per_replica": round(history_bytes / (len(snapshots) * PER_GROUP)),
    }
    text = json.dumps(result, indent=2)
    print(text)
    out = Path(args.output)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
