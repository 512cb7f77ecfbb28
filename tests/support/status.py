"""Snapshots, replica views and routing tables made up for the status surfaces' tests (the
status document, `replwatch status`, the status page): healthy by default, any field
overridden by keyword. NOW is the clock they are taken against."""

from __future__ import annotations

from typing import Any

from replwatch.routing.policy import RouteEntry, RoutingTable
from replwatch.state import GroupSnapshot, NodeView, ReplicaView

NOW = 1_000_000.0


def replica(label: str, **over: Any) -> ReplicaView:
    fields: dict[str, Any] = {
        "label": label,
        "upstream": "m:1",
        "reachable": True,
        "link_up": True,
        "sync_in_progress": False,
        "following_master": True,
        "chained": False,
        "applied_offset": 100,
        "read_offset": 100,
        "lag_bytes": 0,
        "lag_seconds": 0.0,
        "lag_source": "heartbeat",
        "heartbeat_lag_seconds": 0.0,
        "offset_lag_seconds": 0.0,
        "offset_lag_exact": True,
        "ack_age_seconds": 0.0,
        "link_down_seconds": None,
        "backlog_usage_ratio": 0.0,
        "output_buffer_bytes": 0,
        "output_buffer_limit_bytes": None,
        "seconds_since_contact": 0.0,
    }
    fields.update(over)
    return ReplicaView(**fields)


def snapshot(name: str, replicas: list[ReplicaView], master_up: bool = True) -> GroupSnapshot:
    return GroupSnapshot(
        name=name,
        master="m:1",
        master_up=master_up,
        master_role_ok=master_up,
        master_offset=100,
        master_replid="r",
        backlog_size=1 << 20,
        nodes=(
            NodeView(
                "m:1",
                "master",
                "master" if master_up else None,
                master_up,
                None if master_up else "refused",
                None if master_up else "connection refused",
            ),
        ),
        replicas=tuple(replicas),
        taken_at=NOW - 0.5,
        poll_seconds=0.01,
        cycle=1,
        offset_resets=0,
        heartbeat_enabled=True,
    )


def table(name: str, entries: dict[str, tuple[bool, str]]) -> RoutingTable:
    return RoutingTable(
        group=name,
        master="m:1",
        master_up=True,
        degraded=False,
        reads_on_master=all(not ok for ok, _ in entries.values()),
        replicas=tuple(
            RouteEntry(label, ok, why, 0.0, 0, NOW - 10, None)
            for label, (ok, why) in entries.items()
        ),
        updated_at=NOW,
    )
