"""The status page's document and lag history: pure, table-driven."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import pytest

from replwatch.exporter.status_doc import (
    StatusSources,
    backlog_risk,
    group_doc,
    link_state,
    plural,
    replica_severity,
    status_document,
    wait_accounting,
)
from replwatch.lag.history import LagHistory
from replwatch.observe.probe import ProbeResult
from replwatch.routing.policy import RoutingTable
from replwatch.state import GroupSnapshot, LagTrend, OtherFollower

from .support.status import NOW, replica, snapshot, table


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
        "accounting": None,
    }
    assert worst["reasons"] == [
        {"severity": "bad", "text": "1 replica out of rotation"},
        {"severity": "warn", "text": "WAIT timeout 1/2"},
    ]
    # each replica by its own state: the healthy one of the bad group is ok
    assert [r["severity"] for r in worst["replicas"]] == ["bad", "ok"]
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


# ----------------------------------------------------------------------------- issue 18


@pytest.mark.parametrize(("n", "text"), [(0, "0 replicas"), (1, "1 replica"), (2, "2 replicas")])
def test_plural(n: int, text: str) -> None:
    assert plural(n, "replica") == text


LAGGING = {"lag_seconds": 3.0, "heartbeat_lag_seconds": 3.0}
UNSEEN = {"reachable": False, "link_up": False, "lag_seconds": 5.0, "lag_source": "contact"}


@pytest.mark.parametrize(
    ("replicas", "master_up", "routing", "probe", "expected"),
    [
        ([{}], True, None, None, []),
        ([{}], False, None, None, [("bad", "master down")]),
        (
            [{}, LAGGING],
            True,
            {"r1:1": (True, "ok"), "r2:1": (False, "lag 3s > 2s")},
            ProbeResult("g", "timeout", 2, 1, 0.5, at=NOW),
            [("bad", "1 replica out of rotation"), ("warn", "WAIT timeout 1/2")],
        ),
        ([UNSEEN, UNSEEN], True, None, None, [("bad", "2 replicas unreachable")]),
        (
            [{"link_up": False}, {"following_master": False}, {"sync_in_progress": True}],
            True,
            None,
            None,
            [
                ("bad", "1 replica with link down"),
                ("bad", "1 replica following another master"),
                ("bad", "1 replica in full sync"),
            ],
        ),
        ([LAGGING], True, None, None, [("warn", "1 replica lagging 1s or more")]),
        (
            [{"backlog_usage_ratio": 0.95}],
            True,
            None,
            None,
            [("bad", "1 replica near a full resync (backlog 90% used)")],
        ),
        (
            [{}],
            True,
            None,
            ProbeResult("g", "error", None, None, None, "not_master", at=NOW),
            [("warn", "WAIT error (not_master)")],
        ),
    ],
)
def test_group_names_its_reasons(
    replicas: list[dict[str, Any]],
    master_up: bool,
    routing: dict[str, tuple[bool, str]] | None,
    probe: ProbeResult | None,
    expected: list[tuple[str, str]],
) -> None:
    views = [replica(f"r{i + 1}:1", **over) for i, over in enumerate(replicas)]
    snap = snapshot("g", views, master_up)
    doc = group_doc(snap, table("g", routing) if routing else None, probe, {}, NOW)
    assert [(r["severity"], r["text"]) for r in doc["reasons"]] == expected
    assert doc["severity"] == (expected[0][0] if expected else "ok")


TASK = OtherFollower("127.0.0.1:0", "online", 100, 0, 0.0, ("a_to_b",))
LOADING = OtherFollower("127.0.0.1:0", "wait_bgsave", 0, 100, 0.0, ("c_to_d",))
STRAY = OtherFollower("10.0.0.9:6390", "online", 100, 0, 1.0)


@pytest.mark.parametrize(
    ("result", "others", "listed", "expected"),
    [
        (("ok", 2, 2), [TASK], 1, "1 listed replica + 1 other follower: sync task a_to_b"),
        (
            ("ok", 3, 3),
            [TASK, STRAY],
            1,
            "1 listed replica + 2 other followers: sync task a_to_b, 10.0.0.9:6390",
        ),
        (("ok", 1, 1), [TASK], 0, "0 listed replicas + 1 other follower: sync task a_to_b"),
        (("timeout", 1, 2), [TASK], 1, "up to 1 of them from 1 other follower: sync task a_to_b"),
        (
            ("timeout", 0, 2),
            [TASK],
            1,
            "asked of 1 listed replica + 1 other follower: sync task a_to_b",
        ),
        (("ok", 1, 1), [], 1, None),  # no other follower: nothing to say
        (("ok", 1, 1), [LOADING], 1, None),  # not online: WAIT does not count it
        (("error", None, None), [TASK], 1, None),
    ],
)
def test_wait_accounting(
    result: tuple[str, int | None, int | None],
    others: list[OtherFollower],
    listed: int,
    expected: str | None,
) -> None:
    what, acked, wanted = result
    probe = ProbeResult("g", what, wanted, acked, 0.001, at=NOW)
    assert wait_accounting(probe, others, listed) == expected


def test_document_lag_is_as_of_now_and_others_are_listed() -> None:
    """A replica's lag is its trend carried to `now` (what /metrics says at the same moment),
    a replica not seen current reads as a bound or null, never 0; the master's other
    followers are listed and the WAIT probe says what they could account for."""
    starved = replica(
        "s:1", lag_seconds=2.0, trend=LagTrend(at=NOW - 2, lag=2.0, slope=0.5, lower=1.9, upper=2.1)
    )
    gone = replica("gone:1", **{**UNSEEN, "lag_seconds": 0.0001})
    snap = replace(snapshot("g", [replica("up:1"), starved, gone]), others=(TASK,))
    probe = ProbeResult("g", "ok", 3, 3, 0.002, at=NOW)
    doc = status_document(sources([snap], {}, LagHistory(), {"g": probe}), NOW)
    group = doc["groups"][0]
    lags = {
        r["label"]: (r["lag_seconds"], r["lag_at_least"], r["lag_lower_seconds"])
        for r in group["replicas"]
    }
    assert lags == {
        "s:1": (3.0, False, 1.9),
        "up:1": (0.0, False, None),
        "gone:1": (None, True, None),
    }
    assert group["others"] == [
        {
            "name": "sync task a_to_b",
            "address": "127.0.0.1:0",
            "task": "a_to_b",
            "tasks": ["a_to_b"],
            "state": "online",
            "lag_bytes": 0,
            "ack_age_seconds": 0.0,
        }
    ]
    # up:1 and s:1 are listed and online; gone:1 is not
    assert group["probe"]["accounting"] == "2 listed replicas + 1 other follower: sync task a_to_b"
