"""Table tests for the read-routing policy (pure): trips, recoveries, hysteresis, hard
reasons, and the guards."""

from __future__ import annotations

import itertools
from dataclasses import replace

import pytest

from replwatch.config import RoutingConfig
from replwatch.routing.policy import ReplicaRouteState, decide, step
from replwatch.state import GroupSnapshot, ReplicaView

CFG = RoutingConfig.model_validate(
    {
        "trip": {"lag_seconds": 2, "lag_bytes": 1000, "for": 1},
        "recover": {"lag_seconds": 0.5, "for": 5},
    }
)

HEALTHY = ReplicaView(
    label="r1",
    upstream="m:1",
    reachable=True,
    link_up=True,
    sync_in_progress=False,
    following_master=True,
    chained=False,
    applied_offset=100,
    read_offset=100,
    lag_bytes=0,
    lag_seconds=0.0,
    lag_source="heartbeat",
    heartbeat_lag_seconds=0.0,
    offset_lag_seconds=0.0,
    offset_lag_exact=True,
    ack_age_seconds=0.0,
    link_down_seconds=None,
    backlog_usage_ratio=0.0,
    output_buffer_bytes=None,
    output_buffer_limit_bytes=None,
    seconds_since_contact=0.0,
)


def view(label: str = "r1", **changes: object) -> ReplicaView:
    return replace(HEALTHY, label=label, **changes)  # type: ignore[arg-type]


def run(observations: list[tuple[float, ReplicaView]]) -> list[bool]:
    state = ReplicaRouteState(True, "new", 0.0)
    out = []
    for now, r in observations:
        state = step(state, r, CFG, now)
        out.append(state.in_rotation)
    return out


LAG = {"lag_seconds": 3.0}
LOW = {"lag_seconds": 0.1}
MID = {"lag_seconds": 1.0}  # between recover (0.5) and trip (2)

CASES = [
    ("healthy stays in", [(t, view()) for t in range(5)], [True] * 5),
    (
        "byte lag spike shorter than trip.for",
        [(0, view(lag_bytes=5000)), (0.5, view()), (1.5, view())],
        [True, True, True],
    ),
    (
        "lag just over the threshold must hold for trip.for",
        [(0, view(lag_seconds=2.2)), (0.5, view(lag_seconds=2.4)), (1.0, view(lag_seconds=2.5))],
        [True, True, False],
    ),
    # 3 s of lag against a 2 s threshold proves 1 s above it already: out at once
    ("lag proving trip.for: out at once", [(0, view(**LAG))], [False]),
    (
        "lag proving part of trip.for",
        [(0, view(lag_seconds=2.5)), (0.4, view(lag_seconds=2.4)), (0.5, view(lag_seconds=2.5))],
        [True, True, False],
    ),
    ("byte lag trips too", [(0, view(lag_bytes=5000)), (1, view(lag_bytes=5000))], [True, False]),
    ("link down: out at once", [(0, view(link_up=False))], [False]),
    ("unreachable: out at once", [(0, view(reachable=False))], [False]),
    ("full sync: out at once", [(0, view(sync_in_progress=True))], [False]),
    ("other master: out at once", [(0, view(following_master=False))], [False]),
    ("lag unknown: out at once", [(0, view(lag_seconds=None))], [False]),
    (
        "recovers only after recover.for",
        [(0, view(link_up=False)), (1, view(**LOW)), (3, view(**LOW)), (6, view(**LOW))],
        [False, False, False, True],
    ),
    (
        "between thresholds does not recover",
        [(0, view(link_up=False))] + [(t, view(**MID)) for t in range(1, 12)],
        [False] * 12,
    ),
    (
        "recover clock restarts on a relapse",
        [
            (0, view(link_up=False)),
            (1, view(**LOW)),
            (4, view(**MID)),
            (5, view(**LOW)),
            (9, view(**LOW)),
            (10, view(**LOW)),
        ],
        [False, False, False, False, False, True],
    ),
]


@pytest.mark.parametrize(("obs", "expected"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_step(obs: list[tuple[float, ReplicaView]], expected: list[bool]) -> None:
    assert run(obs) == expected


def test_oscillating_lag_flaps_at_most_once_per_recover_window() -> None:
    # lag hovers: 3 s of 3 s lag, then 3 s of 0.1 s lag, for 60 s (polled every 0.5 s);
    # it trips in the first high phase and, never staying low for recover.for (5 s), stays out
    obs = [(t / 2, view(**(LAG if (t // 6) % 2 == 0 else LOW))) for t in range(120)]
    states = run(obs)
    transitions = sum(1 for a, b in itertools.pairwise([True, *states]) if a != b)
    assert transitions == 1 and states[-1] is False


def snapshot(replicas: list[ReplicaView], master_up: bool = True) -> GroupSnapshot:
    return GroupSnapshot(
        name="g",
        master="m:1",
        master_up=master_up,
        master_role_ok=master_up,
        master_offset=1,
        master_replid="x",
        backlog_size=1,
        nodes=(),
        replicas=tuple(replicas),
        taken_at=100.0,
        poll_seconds=0.0,
        cycle=1,
        offset_resets=0,
        heartbeat_enabled=True,
    )


def out_state(label: str) -> ReplicaRouteState:
    return ReplicaRouteState(False, "lag", 0.0)


def test_all_lagging_without_guards_sends_reads_to_master() -> None:
    reps = [view("a", lag_seconds=5.0), view("b", lag_seconds=9.0)]
    table, _ = decide(snapshot(reps), {"a": out_state("a"), "b": out_state("b")}, CFG, 100.0)
    assert table.reads_on_master and not any(e.in_rotation for e in table.replicas)
    assert table.to_dict()["read_from"] == ["m:1"]


def test_floor_keeps_the_least_lagged_serving() -> None:
    cfg = CFG.model_copy(update={"min_in_rotation": 1})
    reps = [view("a", lag_seconds=9.0), view("b", lag_seconds=5.0), view("c", link_up=False)]
    states = {k: out_state(k) for k in "abc"}
    table, _ = decide(snapshot(reps), states, cfg, 100.0)
    serving = [e.replica for e in table.replicas if e.in_rotation]
    assert serving == ["b"] and not table.reads_on_master
    assert "kept by guard" in table.entry("b").reason  # type: ignore[union-attr]


def test_cap_limits_share_taken_out() -> None:
    cfg = CFG.model_copy(update={"max_out_ratio": 0.5})
    reps = [view(k, lag_seconds=float(i + 3)) for i, k in enumerate("abcd")]
    table, _ = decide(snapshot(reps), {k: out_state(k) for k in "abcd"}, cfg, 100.0)
    assert [e.replica for e in table.replicas if e.in_rotation] == ["a", "b"]


def test_master_down_is_degraded_and_never_read_from() -> None:
    reps = [view("a", link_up=False), view("b", reachable=False)]
    table, states = decide(snapshot(reps, master_up=False), {}, CFG, 100.0)
    assert table.degraded and not table.reads_on_master
    assert table.entry("a").in_rotation  # type: ignore[union-attr]
    assert not table.entry("b").in_rotation  # type: ignore[union-attr]
    assert "m:1" not in table.to_dict()["read_from"]  # type: ignore[operator]
    assert not states["a"].in_rotation  # the state machine itself still says out
