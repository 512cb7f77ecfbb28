"""The lag every surface prints (state.lag_reading) and `replwatch status`'s rendering and exit
rule (status_view.py): pure, table-driven. A replica that could not be seen or never synced
reads as a `>=` bound or `-`, never 0."""

from __future__ import annotations

import json
from dataclasses import replace
from typing import Any

import pytest

from replwatch.state import LagReading, LagTrend, OtherFollower, lag_reading
from replwatch.status_view import render_json, render_table, status_ok

from .support.status import NOW, replica, snapshot

UNSEEN = {"reachable": False, "link_up": False, "lag_bytes": None, "heartbeat_lag_seconds": None}
NEVER = {"link_up": False, "following_master": False, "lag_bytes": None}


@pytest.mark.parametrize(
    ("over", "expected"),
    [
        ({"lag_seconds": 0.0}, LagReading(0.0, False)),
        ({"lag_seconds": 0.3}, LagReading(0.3, False)),
        # the first poll of an unreachable replica: a floor of ~0 says nothing
        ({**UNSEEN, "lag_seconds": 0.0002, "lag_source": "contact"}, LagReading(None, True)),
        ({**UNSEEN, "lag_seconds": 4.2, "lag_source": "contact"}, LagReading(4.2, True)),
        # link down but answering: its heartbeat is a bound while the link is down
        ({"link_up": False, "lag_seconds": 2.0}, LagReading(2.0, True)),
        ({**NEVER, "lag_seconds": 0.0, "lag_source": "contact"}, LagReading(None, True)),
        ({"sync_in_progress": True, "lag_seconds": 0.001}, LagReading(None, True)),
        (
            {"lag_seconds": 3.0, "lag_source": "offset_clock", "offset_lag_exact": False},
            LagReading(3.0, True),
        ),
        # seen current, the offset clock's table still short: an honest ">=0.00s"
        (
            {"lag_seconds": 0.001, "lag_source": "offset_clock", "offset_lag_exact": False},
            LagReading(0.001, True),
        ),
        ({"lag_seconds": None, "lag_source": "none"}, LagReading(None, False)),
        # with a trend: as of the moment it is read, between its bounds
        (
            {"trend": LagTrend(at=NOW - 1, lag=2.0, slope=0.5, lower=1.8, upper=2.2)},
            LagReading(2.5, False, 1.8, 3.2),
        ),
        (
            {"trend": LagTrend(at=NOW - 1, lag=2.0, slope=0.0, lower=1.5, upper=None)},
            LagReading(2.0, True, 1.5, None),
        ),
        (
            {**UNSEEN, "trend": LagTrend(at=NOW - 2, lag=0.0, slope=1.0, lower=0.0, upper=None)},
            LagReading(2.0, True, 0.0, None),
        ),
    ],
)
def test_lag_reading(over: dict[str, Any], expected: LagReading) -> None:
    assert lag_reading(replica("r:1", **over), NOW) == expected


def group() -> Any:
    return snapshot(
        "g",
        [
            replica("up:1", lag_seconds=0.0),
            replica("gone:1", **UNSEEN, lag_seconds=0.0001, lag_source="contact"),
            replica("down:1", link_up=False, lag_seconds=4.2, lag_source="contact"),
            replica("never:1", **NEVER, lag_seconds=0.0, lag_source="contact"),
        ],
    )


def test_table_never_prints_0_for_a_replica_not_seen_current() -> None:
    snap = replace(
        group(), others=(OtherFollower("127.0.0.1:0", "online", 90, 10, 0.0, ("a_to_b",)),)
    )
    lines = render_table([snap], NOW).splitlines()
    lag = {ln.split()[0]: ln.split()[3] for ln in lines if ln.startswith("  ") and ":1 " in ln}
    assert lag == {"up:1": "0.00s", "gone:1": "-", "down:1": ">=4.20s", "never:1": "-"}
    assert (
        "  other followers of the master: sync task a_to_b (127.0.0.1:0, online, 10B behind)"
        in (lines)
    )


def test_json_carries_the_same_reading() -> None:
    doc = json.loads(render_json([group()], NOW))
    assert doc["generated_at"] == NOW
    got = {
        r["label"]: (r["link"], r["lag_seconds"], r["lag_at_least"])
        for r in doc["groups"][0]["replicas"]
    }
    assert got == {
        "up:1": ("up", 0.0, False),
        "gone:1": ("unreachable", None, True),
        "down:1": ("down", 4.2, True),
        "never:1": ("down", None, True),
    }


@pytest.mark.parametrize(
    ("over", "master_up", "ok"),
    [
        ({}, True, True),
        ({"lag_seconds": 30.0}, True, True),  # lagging, but seen: no exit status of its own
        (UNSEEN, True, False),
        ({"link_up": False}, True, False),
        (NEVER, True, False),  # link down and never synced: exited 0 before
        ({"sync_in_progress": True}, True, False),
        ({"following_master": False}, True, False),
        ({}, False, False),  # the master down
    ],
)
def test_status_ok(over: dict[str, Any], master_up: bool, ok: bool) -> None:
    assert status_ok([snapshot("g", [replica("r:1", **over)], master_up)]) is ok
