"""The status page's document and lag history: pure, table-driven."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import pytest

from replwatch.exporter.status_doc import (
    StatusSources,
    backlog_risk,
    link_state,
    replica_severity,
    status_document,
)
from replwatch.lag.history import LagHistory
from replwatch.observe.probe import ProbeResult
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


@pytest.mark.parametrize(
    ("over", "expected"),
    [
        ({}, "up"),
        ({"reachable": False}, "unreachable"),
        ({"sync_in_progress": True}, "full-sync"),
        ({"link_up": False}, "down"),
        ({"following_master": False}, "other-master"),
    ],
)
def test_link_state(over: dict[str, Any], expected: str) -> None:
    assert link_state(replica("r:1", **over)) == expected


@pytest.mark.parametrize(
    ("ratio", "expected"), [(None, None), (0.0, "ok"), (0.49, "ok"), (0.5, "warn"), (0.95, "bad")]
)
def test_backlog_risk(ratio: float | None, expected: str | None) -> None:
    assert backlog_risk(ratio) == expected


@pytest.mark.parametrize(
    ("link", "in_rotation", "lag", "risk", "expected"),
    [
        ("up", True, 0.1, "ok", "ok"),
        ("up", None, 0.1, None, "ok"),
        ("up", True, 1.0, "ok", "warn"),
        ("up", True, 0.1, "warn", "warn"),
        ("up", False, 0.1, "ok", "bad"),
        ("down", True, 0.1, "ok", "bad"),
        ("up", True, 0.1, "bad", "bad"),
    ],
)
def test_replica_severity(
    link: str, in_rotation: bool | None, lag: float | None, risk: str | None, expected: str
) -> None:
    assert replica_severity(link, in_rotation, lag, risk) == expected


def sources(
    snapshots: list[GroupSnapshot],
    tables: dict[str, RoutingTable],
    history: LagHistory,
    probes: dict[str, ProbeResult] | None = None,
) -> StatusSources:
    return StatusSources(
        snapshots=lambda: snapshots,
        routing=tables.get,
        probes=lambda: probes or {},
        sync=lambda: [],
        history=history.series,
        poll_interval=1.0,
        history_window=history.window,
        version="test",
    )


def test_document_is_worst_first_with_routing_reason_probe_and_history() -> None:
    healthy = snapshot("a-healthy", [replica("h:1", lag_seconds=0.01)])
    lagging = snapshot(
        "b-lagging",
        [
            replica("l:1", lag_seconds=0.2),
            replica("l:2", lag_seconds=7.5, lag_bytes=900_000, backlog_usage_ratio=0.6),
        ],
    )
    down = snapshot("c-down", [replica("d:1", reachable=False, lag_seconds=None)], False)
    history = LagHistory(window=50, points=5)  # 10 s buckets
    for step in range(8):
        history.record(replace(lagging, taken_at=NOW - 8 + step))
    tables = {
        "b-lagging": table("b-lagging", {"l:1": (True, "ok"), "l:2": (False, "lag 7.5s > 2s")}),
        "a-healthy": table("a-healthy", {"h:1": (True, "ok")}),
    }
    probe = ProbeResult("b-lagging", "timeout", 2, 1, 0.5, at=NOW - 2)
    doc = status_document(
        sources([healthy, lagging, down], tables, history, {"b-lagging": probe}), NOW
    )
    assert [g["name"] for g in doc["groups"]] == ["b-lagging", "c-down", "a-healthy"]
    worst = doc["groups"][0]
    assert worst["severity"] == "bad" and worst["worst_lag_seconds"] == 7.5
    assert [r["label"] for r in worst["replicas"]] == ["l:2", "l:1"]
    out = worst["replicas"][0]
    assert out["in_rotation"] is False and out["routing_reason"] == "lag 7.5s > 2s"
    assert out["backlog_risk"] == "warn" and out["lag_bytes"] == 900_000
    assert out["history"] == {"start": NOW - 50, "step": 10.0, "lag": [None] * 4 + [7.5]}
    assert worst["probe"] == {
        "result": "timeout",
        "seconds": 0.5,
        "acked": 1,
        "wanted": 2,
        "reason": None,
        "age_seconds": 2.0,
    }
    assert doc["groups"][1]["master_error"] == "refused: connection refused"
    assert doc["groups"][2]["severity"] == "ok"
    assert doc["groups"][2]["replicas"][0]["history"] is None  # never recorded
    assert doc["summary"] == {
        "groups": 3,
        "groups_bad": 2,
        "replicas": 4,
        "replicas_in_rotation": 2,
        "replicas_bad": 2,
        "tasks": 0,
        "tasks_bad": 0,
    }


def test_history_keeps_the_window_the_highest_lag_per_bucket_and_gaps() -> None:
    history = LagHistory(window=10, points=10)  # 1 s buckets
    for step in range(20):
        if step == 15:
            continue  # a bucket without a measurement
        lag = float(step)
        group = snapshot("g", [replica("r:1", lag_seconds=lag), replica("r:2", lag_seconds=None)])
        history.record(replace(group, taken_at=NOW + step + 0.1))
        if step == 18:  # a spike inside the bucket is kept, a lower value after it is not
            history.record(
                replace(snapshot("g", [replica("r:1", lag_seconds=99.0)]), taken_at=NOW + 18.5)
            )
            history.record(
                replace(snapshot("g", [replica("r:1", lag_seconds=1.0)]), taken_at=NOW + 18.9)
            )
    series = history.series("g")
    assert series["r:1"].start == NOW + 10 and series["r:1"].step == 1.0
    assert series["r:1"].values == [10.0, 11.0, 12.0, 13.0, 14.0, None, 16.0, 17.0, 99.0, 19.0]
    assert "r:2" in series  # r:2 came back at step 19 with no lag
    assert series["r:2"].values == [None] * 10


def test_history_forgets_departed_replicas_and_groups() -> None:
    history = LagHistory(window=10, points=10)
    history.record(snapshot("g", [replica("r:1"), replica("r:2")]))
    history.record(replace(snapshot("g", [replica("r:2")]), taken_at=NOW + 1))
    assert set(history.series("g")) == {"r:2"}
    history.forget_except(["other"])
    assert history.series("g") == {}
