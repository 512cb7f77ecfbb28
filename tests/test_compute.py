"""compute_group (lag/compute.py) over hand-built samples: pure, no servers, no clocks read."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import pytest

from replwatch.lag.compute import NodeSample, ReplicaMemory, compute_group
from replwatch.lag.heartbeat import HeartbeatHistory
from replwatch.lag.offset_clock import OffsetClock
from replwatch.observe.info import ClientEntry, ReplicaLine, ReplicationInfo
from replwatch.state import GroupSnapshot, ReplicaView

A = "a" * 40
B = "b" * 40
MASTER = "127.0.0.1:7000"
R1 = "127.0.0.1:7001"
R2 = "127.0.0.1:7002"
MB = 1024 * 1024
NOW = 100.0  # monotonic "now" of the cycle
WALL = 1_700_000_000.0


def master_info(
    offset: int = 10_000,
    replid: str = A,
    lines: Sequence[ReplicaLine] = (),
    backlog: int = MB,
) -> ReplicationInfo:
    return ReplicationInfo(
        role="master",
        replid=replid,
        replid2="0" * 40,
        master_repl_offset=offset,
        second_repl_offset=-1,
        backlog_size=backlog,
        backlog_first_byte_offset=1,
        backlog_histlen=min(offset, backlog),
        replicas=tuple(lines),
    )


def replica_info(
    applied: int = 10_000,
    replid: str = A,
    upstream: str = MASTER,
    link_up: bool = True,
    sync: bool = False,
    down_since: float | None = None,
    lines: Sequence[ReplicaLine] = (),
    role: str = "replica",
) -> ReplicationInfo:
    host, _, port = upstream.rpartition(":")
    return ReplicationInfo(
        role=role,
        replid=replid,
        replid2="0" * 40,
        master_repl_offset=applied,
        second_repl_offset=-1,
        backlog_size=MB,
        backlog_first_byte_offset=1,
        backlog_histlen=applied,
        replicas=tuple(lines),
        master_host=host.strip("[]"),
        master_port=int(port),
        link_up=link_up,
        sync_in_progress=sync,
        applied_offset=applied,
        read_offset=applied,
        link_down_since_seconds=down_since,
    )


def line(label: str, offset: int = 10_000, ack_age: float = 0.0) -> ReplicaLine:
    host, _, port = label.rpartition(":")
    return ReplicaLine(host, int(port), "online", offset, ack_age)


def ok(label: str, info: ReplicationInfo, at: float = NOW - 0.01, **kw: Any) -> NodeSample:
    return NodeSample(label=label, info=info, started=at - 0.001, finished=at + 0.001, **kw)


def down(label: str, reason: str = "refused", at: float = NOW - 0.01) -> NodeSample:
    return NodeSample(
        label=label,
        info=None,
        error_reason=reason,
        error_message=f"{label}: connection {reason}",
        started=at - 0.001,
        finished=at + 0.001,
    )


def steady_clock(rate: float = 1000.0, until: float = NOW) -> OffsetClock:
    """A master at offset rate*t from t=0, sampled every second up to `until`."""
    clock = OffsetClock()
    t = 0.0
    while t <= until:
        clock.observe(int(rate * t), t, A)
        t += 1.0
    return clock


def compute(
    master: NodeSample,
    replicas: Mapping[str, NodeSample],
    *,
    clock: OffsetClock | None = None,
    history: HeartbeatHistory | None = None,
    memory: Mapping[str, ReplicaMemory] | None = None,
    now: float = NOW,
    labels: Sequence[str] | None = None,
) -> tuple[GroupSnapshot, dict[str, ReplicaMemory]]:
    return compute_group(
        name="g",
        master_label=MASTER,
        replica_labels=list(replicas) if labels is None else labels,
        discovered=frozenset(),
        master=master,
        replicas=replicas,
        clock=clock or OffsetClock(),
        heartbeat=history,
        memory=memory or {},
        now_mono=now,
        now_wall=WALL + (now - NOW),
        cycle=1,
    )


def view(snapshot: GroupSnapshot, label: str) -> ReplicaView:
    (found,) = [r for r in snapshot.replicas if r.label == label]
    return found


# ------------------------------------------------------------------ byte lag


@pytest.mark.parametrize(
    ("master_offset", "applied", "lag_bytes"),
    [
        (10_000, 10_000, 0),
        (10_000, 9_000, 1_000),
        (10_000, 0, 10_000),
        (10_000, 10_250, 0),  # replica sampled a moment after the master: clamp, never < 0
    ],
)
def test_byte_lag(master_offset: int, applied: int, lag_bytes: int) -> None:
    snap, _ = compute(ok(MASTER, master_info(master_offset)), {R1: ok(R1, replica_info(applied))})
    r = view(snap, R1)
    assert r.lag_bytes == lag_bytes
    assert r.following_master and r.reachable and r.link_up
    assert r.applied_offset == applied


def test_replid_mismatch_has_no_byte_lag_and_is_not_following() -> None:
    snap, mem = compute(
        ok(MASTER, master_info(10_000, replid=A)),
        {R1: ok(R1, replica_info(4_000, replid=B))},
        clock=steady_clock(),
        memory={R1: ReplicaMemory(current_at=NOW - 3.0, seen_at=0.0)},
    )
    r = view(snap, R1)
    assert r.lag_bytes is None
    assert r.following_master is False
    assert r.offset_lag_seconds is None  # offsets on another stream mean nothing here
    assert r.reachable and r.link_up
    # not current: at least as old as when it was last seen current
    assert r.lag_source == "contact"
    assert r.lag_seconds == pytest.approx(3.0)
    assert mem[R1].current_at == NOW - 3.0


# ------------------------------------------------------------------ unreachable replica


def test_unreachable_replica_lag_grows_with_now_and_is_never_zero() -> None:
    # an idle master: the offset clock alone would call a dead replica at the newest offset
    # current (0 s); the contact floor makes its lag grow with real time
    clock = OffsetClock()
    clock.observe(10_000, 0.0, A)
    master = ok(MASTER, master_info(10_000), at=50.0)
    _, memory = compute(master, {R1: ok(R1, replica_info(10_000), at=50.0)}, clock=clock, now=50.0)
    assert memory[R1].current_at == pytest.approx(50.0)

    lags = []
    for now in (51.0, 55.0, 80.0):
        clock.observe(10_000, now - 0.01, A)
        snap, memory = compute(
            ok(MASTER, master_info(10_000), at=now - 0.01),
            {R1: down(R1, at=now - 0.01)},
            clock=clock,
            memory=memory,
            now=now,
        )
        r = view(snap, R1)
        assert not r.reachable and not r.link_up
        assert r.offset_lag_seconds == 0.0
        assert r.lag_bytes == 0  # remembered offset, same stream
        assert r.lag_source == "contact"
        lags.append(r.lag_seconds)
        assert r.seconds_since_contact == pytest.approx(now - 50.0)
    assert lags == [pytest.approx(1.0), pytest.approx(5.0), pytest.approx(30.0)]
    node = next(n for n in snap.nodes if n.label == R1)
    assert not node.up and node.error_reason == "refused"


def test_unreachable_replica_uses_the_masters_acked_offset_for_byte_lag() -> None:
    snap, _ = compute(
        ok(MASTER, master_info(10_000, lines=[line(R1, offset=7_500, ack_age=4)])),
        {R1: down(R1)},
        clock=steady_clock(rate=100.0),
        memory={R1: ReplicaMemory(offset=7_000, replid=A, current_at=NOW - 2, seen_at=0.0)},
    )
    r = view(snap, R1)
    assert r.lag_bytes == 2_500  # max(remembered 7000, ACKed 7500)
    assert r.ack_age_seconds == 4
    # offset clock: the master passed 7500 at t=75 → 25 s ago; beats the contact floor (2 s)
    assert r.offset_lag_seconds == pytest.approx(NOW - 75.0, abs=0.02)
    assert r.lag_source == "offset_clock"
    assert r.lag_seconds == r.offset_lag_seconds


def test_never_seen_replica_counts_from_when_replwatch_first_tried() -> None:
    master = ok(MASTER, master_info())
    snap1, mem = compute(master, {R1: down(R1, at=10.0)}, now=10.0)
    assert mem[R1].seen_at == pytest.approx(10.0)
    assert view(snap1, R1).lag_source == "contact"
    snap2, _ = compute(master, {R1: down(R1, at=17.0)}, memory=mem, now=17.0)
    assert view(snap2, R1).lag_seconds == pytest.approx(7.0)
    assert view(snap2, R1).lag_bytes is None


# ------------------------------------------------------------------ link down / sync


@pytest.mark.parametrize(
    ("down_since", "since_current", "hb_lag_wanted", "lag", "source"),
    [
        # the replica says its link has been down 30 s: only 30 - 1 is a sure floor
        (30.0, 2.0, False, 29.0, "contact"),
        # replwatch saw it current 40 s ago: that floor is higher
        (30.0, 40.0, False, 40.0, "contact"),
        # 1 = broke up to a second ago: no extra floor beyond the contact floor
        (1.0, 0.5, False, 0.5, "contact"),
        # a heartbeat lag above the floors stands
        (5.0, 2.0, True, 12.0, "heartbeat"),
    ],
)
def test_link_down_floor(
    down_since: float, since_current: float, hb_lag_wanted: bool, lag: float, source: str
) -> None:
    history = None
    heartbeat = None
    if hb_lag_wanted:
        history = HeartbeatHistory()
        # master clock == monotonic; writes at 87.0 and 88.0; the replica has 87.0, lacks 88
        history.record(87.0, 87.0, 87.0)
        history.record(88.0, 88.0, 88.0)
        heartbeat = 87.0
    info = replica_info(9_000, link_up=False, down_since=down_since)
    snap, _ = compute(
        ok(MASTER, master_info(10_000)),
        {R1: ok(R1, info, at=NOW, heartbeat=heartbeat)},
        history=history,
        memory={R1: ReplicaMemory(current_at=NOW - since_current, seen_at=0.0)},
    )
    r = view(snap, R1)
    assert r.link_up is False and r.reachable
    assert r.link_down_seconds == down_since
    # a heartbeat lag is as of the reply (`ok` samples finish 1 ms after `at`)
    assert r.lag_seconds == pytest.approx(lag + (0.001 if source == "heartbeat" else 0.0))
    assert r.lag_source == source


def test_full_sync_is_not_current() -> None:
    snap, mem = compute(
        ok(MASTER, master_info(10_000)),
        {R1: ok(R1, replica_info(1, replid=B, link_up=False, sync=True))},
        memory={R1: ReplicaMemory(seen_at=NOW - 6.0)},
    )
    r = view(snap, R1)
    assert r.sync_in_progress and not r.following_master
    assert r.lag_bytes is None
    assert r.lag_seconds == pytest.approx(6.0) and r.lag_source == "contact"
    assert mem[R1].current_at is None


# ------------------------------------------------------------------ estimates


def test_the_offset_reading_is_preferred_and_the_heartbeat_is_the_fallback() -> None:
    """The follower's offset in the offset clock, as of its answer, is a reading of the
    trend (lag/trend.py); the heartbeat (a lower bound, in steps of the heartbeat interval)
    speaks only when there is no reading."""
    history = HeartbeatHistory()
    for t in (97.0, 98.0, 99.0):
        history.record(t, t, t)
    replicas = {
        R1: ok(R1, replica_info(97_500), at=NOW, heartbeat=97.0),
        R2: ok(R2, replica_info(99_000), at=NOW, heartbeat=99.0),
    }
    snap, _ = compute(
        ok(MASTER, master_info(99_000)),
        replicas,
        clock=steady_clock(rate=1000.0, until=99.0),
        history=history,
    )
    r1, r2 = view(snap, R1), view(snap, R2)
    # lacks the 98.0 write; as of the reply, 1 ms after `at`
    assert r1.heartbeat_lag_seconds == pytest.approx(2.001)
    assert r1.offset_lag_seconds == pytest.approx(2.5)  # master passed 97500 at t=97.5
    # the reading: as of the reply (1 ms after `at`), the master passed 97500 at t=97.5
    assert (r1.lag_seconds, r1.lag_source) == (pytest.approx(2.501), "offset_clock")
    assert r1.trend is not None and r1.trend.slope == 0.0  # one reading: no slope yet
    assert (r2.lag_seconds, r2.lag_source) == (0.0, "offset_clock")
    assert r2.offset_lag_seconds == 0.0
    # no offset clock yet (the first cycle of a new master): the heartbeat speaks
    snap, _ = compute(ok(MASTER, master_info(99_000)), replicas, history=history)
    r1 = view(snap, R1)
    assert (r1.lag_seconds, r1.lag_source) == (pytest.approx(2.001), "heartbeat")
    assert r1.trend is None


def test_heartbeat_lag_is_as_of_the_reply() -> None:
    """On a starved link the read waits behind the replication stream: the follower was
    read late in the round trip. The lag is taken at the reply, not mid-way (which hid up to
    half the round trip: 0.5 s of a 1 s trip in tests/test_starved_replica.py)."""
    history = HeartbeatHistory()
    for t in (96.0, 97.0, 98.0, 99.0):
        history.record(t, t, t)
    slow = NodeSample(
        label=R1, info=replica_info(97_000), heartbeat=96.0, started=NOW - 1.0, finished=NOW
    )
    snap, _ = compute(
        ok(MASTER, master_info(99_000)),
        {R1: slow},
        clock=steady_clock(rate=1000.0, until=99.0),
        history=history,
    )
    assert view(snap, R1).heartbeat_lag_seconds == pytest.approx(NOW - 97.0)


def test_offset_clock_when_no_heartbeat() -> None:
    snap, _ = compute(
        ok(MASTER, master_info(99_000)),
        {R1: ok(R1, replica_info(97_500), at=NOW)},
        clock=steady_clock(rate=1000.0, until=99.0),
    )
    r = view(snap, R1)
    assert r.heartbeat_lag_seconds is None
    assert (r.lag_seconds, r.lag_source) == (pytest.approx(2.501), "offset_clock")
    assert r.offset_lag_exact is True
    assert snap.heartbeat_enabled is False


def test_replica_that_answers_as_master_claims_no_lag() -> None:
    promoted = replica_info(10_000, role="master", replid=B)
    snap, _ = compute(
        ok(MASTER, master_info(10_000)),
        {R1: ok(R1, promoted)},
        memory={R1: ReplicaMemory(current_at=NOW - 50, seen_at=0.0)},
    )
    r = view(snap, R1)
    assert r.lag_seconds is None and r.lag_source == "none"
    assert r.reachable is False
    assert next(n for n in snap.nodes if n.label == R1).role == "master"


def test_master_down_replicas_are_not_current() -> None:
    snap, _ = compute(
        down(MASTER),
        {R1: ok(R1, replica_info(10_000, link_up=False, down_since=3.0))},
        memory={R1: ReplicaMemory(current_at=NOW - 4.0, seen_at=0.0)},
    )
    assert snap.master_up is False and snap.master_role_ok is False
    assert snap.master_offset is None
    r = view(snap, R1)
    assert r.lag_bytes is None and not r.following_master
    assert r.lag_seconds == pytest.approx(4.0)


# ------------------------------------------------------------------ chains and ACK age


CHAIN_CASES = [
    # id, R2's upstream, chained?
    ("direct", MASTER, False),
    ("chained-through-r1", R1, True),
    ("unknown-upstream (NAT / proxy)", "10.9.9.9:7001", False),
]


@pytest.mark.parametrize(
    ("upstream", "chained"), [c[1:] for c in CHAIN_CASES], ids=[c[0] for c in CHAIN_CASES]
)
def test_chained_detection(upstream: str, chained: bool) -> None:
    snap, _ = compute(
        ok(MASTER, master_info(10_000, lines=[line(R1)])),
        {
            R1: ok(R1, replica_info(10_000, lines=[line(R2, ack_age=2)])),
            R2: ok(R2, replica_info(9_000, upstream=upstream)),
        },
    )
    r2 = view(snap, R2)
    assert r2.chained is chained
    assert r2.upstream == upstream
    assert r2.lag_bytes == 1_000  # against the top master: same stream
    assert view(snap, R1).chained is False


def test_ack_age_comes_from_the_upstreams_slave_line() -> None:
    snap, _ = compute(
        ok(MASTER, master_info(10_000, lines=[line(R1, ack_age=1), line(R2, ack_age=9)])),
        {
            R1: ok(R1, replica_info(10_000, lines=[line(R2, ack_age=3)])),
            R2: ok(R2, replica_info(10_000, upstream=R1)),
        },
    )
    assert view(snap, R2).ack_age_seconds == 3  # R1 is who R2 ACKs to
    assert view(snap, R1).ack_age_seconds == 1


def test_ack_age_falls_back_to_the_master_and_matches_by_unique_port() -> None:
    # the master lists the replica under the address it announces (10.0.0.5), not the label
    snap, _ = compute(
        ok(
            MASTER,
            master_info(10_000, lines=[ReplicaLine("10.0.0.5", 7001, "online", 10_000, 5)]),
        ),
        {R1: ok(R1, replica_info(10_000))},
    )
    assert view(snap, R1).ack_age_seconds == 5


def test_ack_age_not_guessed_when_the_port_is_ambiguous() -> None:
    lines = [
        ReplicaLine("10.0.0.5", 7001, "online", 10_000, 5),
        ReplicaLine("10.0.0.6", 7001, "online", 10_000, 6),
    ]
    snap, _ = compute(
        ok(MASTER, master_info(10_000, lines=lines)), {R1: ok(R1, replica_info(10_000))}
    )
    assert view(snap, R1).ack_age_seconds is None


# ------------------------------------------------------------------ risk ratios


@pytest.mark.parametrize(
    ("backlog", "lag_bytes", "ratio"),
    [
        (MB, 0, 0.0),
        (MB, MB // 4, 0.25),
        (MB, MB, 1.0),
        (MB, 3 * MB, 3.0),  # past the backlog: a reconnect needs a full resync
        (0, 5_000, None),  # no backlog (no replica ever attached): no ratio
    ],
)
def test_backlog_usage_ratio(backlog: int, lag_bytes: int, ratio: float | None) -> None:
    top = 4 * MB
    snap, _ = compute(
        ok(MASTER, master_info(top, backlog=backlog)), {R1: ok(R1, replica_info(top - lag_bytes))}
    )
    r = view(snap, R1)
    assert r.lag_bytes == lag_bytes
    if ratio is None:
        assert r.backlog_usage_ratio is None
    else:
        assert r.backlog_usage_ratio == pytest.approx(ratio)
    assert snap.backlog_size == backlog


def test_output_buffer_matched_through_the_link_addresses() -> None:
    # the master's CLIENT LIST TYPE replica: one entry per replica link, keyed by the
    # replica's side of the connection; each replica's CLIENT LIST TYPE master names its
    # side as laddr
    master_clients = (
        ClientEntry("127.0.0.1:40001", "127.0.0.1:7000", "S", 5_000, 30_000),
        ClientEntry("127.0.0.1:40002", "127.0.0.1:7000", "S", 0, 20_000),
    )
    r1_clients = (ClientEntry("127.0.0.1:7000", "127.0.0.1:40001", "M", 0, 1_000),)
    r2_clients = (ClientEntry("127.0.0.1:7000", "127.0.0.1:40999", "M", 0, 1_000),)  # no match
    snap, _ = compute(
        ok(MASTER, master_info(), clients=master_clients, output_buffer_limit=256 * MB),
        {
            R1: ok(R1, replica_info(), clients=r1_clients),
            R2: ok(R2, replica_info(), clients=r2_clients),
        },
    )
    r1, r2 = view(snap, R1), view(snap, R2)
    assert (r1.output_buffer_bytes, r1.output_buffer_limit_bytes) == (5_000, 256 * MB)
    assert (r2.output_buffer_bytes, r2.output_buffer_limit_bytes) == (None, None)


def test_output_buffer_needs_the_master_flag() -> None:
    # a CLIENT LIST entry without the M flag is not the master link
    clients = (ClientEntry("127.0.0.1:7000", "127.0.0.1:40001", "N", 0, 1_000),)
    snap, _ = compute(
        ok(
            MASTER,
            master_info(),
            clients=(ClientEntry("127.0.0.1:40001", "127.0.0.1:7000", "S", 5_000, 1),),
        ),
        {R1: ok(R1, replica_info(), clients=clients)},
    )
    assert view(snap, R1).output_buffer_bytes is None


# ------------------------------------------------------------------ snapshot shape


def test_snapshot_nodes_and_memory() -> None:
    snap, mem = compute(
        ok(MASTER, master_info(10_000)),
        {R1: ok(R1, replica_info(9_000), at=NOW - 0.01), R2: down(R2, reason="timeout")},
    )
    assert [n.label for n in snap.nodes] == [MASTER, R1, R2]
    assert [n.configured_role for n in snap.nodes] == ["master", "replica", "replica"]
    assert [n.up for n in snap.nodes] == [True, True, False]
    assert snap.nodes[2].error_reason == "timeout"
    assert snap.master_offset == 10_000 and snap.master_replid == A
    assert snap.taken_at == WALL
    assert mem[R1].offset == 9_000 and mem[R1].replid == A
    assert mem[R1].current_at == pytest.approx(NOW - 0.01)
    assert mem[R2].offset is None and mem[R2].current_at is None


def test_configured_replica_missing_from_samples_is_skipped_not_dropped() -> None:
    snap, _ = compute(ok(MASTER, master_info()), {}, labels=[R1])
    node = next(n for n in snap.nodes if n.label == R1)
    assert not node.up and node.error_reason == "skipped"
    assert view(snap, R1).reachable is False
