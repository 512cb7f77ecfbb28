"""The lag monitor against real servers: four builds for the core scenarios, Redis 7.0 for
the topology scenarios. Each test drives GroupMonitor the way the scheduler does."""

from __future__ import annotations

import time

import pytest

from .support.monitor import Driver, make_monitor, node_view, replica_view
from .support.servers import (
    BackgroundWriter,
    BlackHole,
    RedisProcess,
    ServerSet,
    closed_port,
    wait_synced,
)

INTERVAL = "500ms"  # poll.interval of every monitor here


# ----------------------------------------------------------------- all four builds


@pytest.mark.timeout(90)
def test_healthy_then_paused_replica_lag_grows_and_recovers(redis_servers: ServerSet) -> None:
    master = redis_servers.start("master")
    rep = redis_servers.start("replica", replica_of=master)
    wait_synced(rep, master)
    drv = Driver(make_monitor(master.url, [rep.url], interval=INTERVAL))
    writer = BackgroundWriter(master.client(), batch=50, period=0.02)
    try:
        snap = drv.until(
            lambda s: replica_view(s, rep.label).heartbeat_lag_seconds is not None,
            10,
            "heartbeat seen on the replica",
        )
        r = replica_view(snap, rep.label)
        assert r.link_up and r.following_master and r.reachable
        assert r.lag_seconds is not None and r.lag_seconds < 0.5

        rep.pause()
        paused_at = time.monotonic()
        snap = drv.cycle()
        while time.monotonic() - paused_at < 3.5:
            time.sleep(0.2)
            snap = drv.cycle()
        elapsed = time.monotonic() - paused_at
        r = replica_view(snap, rep.label)
        node = node_view(snap, rep.label)
        assert not node.up and node.error_reason == "timeout"
        assert r.lag_seconds is not None
        assert elapsed - 1.0 <= r.lag_seconds <= elapsed + 0.5, (r.lag_seconds, elapsed)
        assert r.heartbeat_lag_seconds is not None and r.heartbeat_lag_seconds >= elapsed - 1.0
        assert r.offset_lag_seconds is not None and r.offset_lag_seconds >= elapsed - 1.5
        assert r.lag_bytes is not None and r.lag_bytes > 10_000

        rep.resume()
        snap = drv.until(
            lambda s: (
                replica_view(s, rep.label).lag_seconds is not None
                and replica_view(s, rep.label).lag_seconds < 0.5  # type: ignore[operator]
                and replica_view(s, rep.label).reachable
            ),
            15,
            "lag back under 0.5s after SIGCONT",
        )
        assert replica_view(snap, rep.label).link_up
    finally:
        writer.stop()
        rep.resume()
        drv.close()


# ----------------------------------------------------------------- Redis 7.0 scenarios


@pytest.mark.timeout(60)
def test_link_down_lag_grows_never_zero(debian_servers: ServerSet) -> None:
    master = debian_servers.start("master")
    rep = debian_servers.start("replica", replica_of=master)
    wait_synced(rep, master)
    drv = Driver(make_monitor(master.url, [rep.url], interval=INTERVAL))
    try:
        drv.until(lambda s: replica_view(s, rep.label).link_up, 10, "link up")
        master.stop()
        snap = drv.until(lambda s: not replica_view(s, rep.label).link_up, 10, "link down")
        lags = []
        for _ in range(5):
            time.sleep(0.3)
            snap = drv.cycle()
            lag = replica_view(snap, rep.label).lag_seconds
            assert lag is not None and lag > 0
            lags.append(lag)
        assert lags == sorted(lags) and lags[-1] > lags[0]
        mnode = node_view(snap, master.label)
        assert not mnode.up and mnode.error_reason == "refused"
        assert not snap.master_up
    finally:
        drv.close()


@pytest.mark.timeout(60)
def test_master_restart_resets_offset_clock(debian_servers: ServerSet) -> None:
    master = debian_servers.start("master")
    rep = debian_servers.start("replica", replica_of=master)
    wait_synced(rep, master)
    master.client().set("before", "1")
    drv = Driver(make_monitor(master.url, [rep.url], interval=INTERVAL))
    try:
        snap = drv.until(lambda s: (s.master_offset or 0) > 500, 10, "master offset moving")
        resets = snap.offset_resets
        old_replid = snap.master_replid
        master.restart()
        snap = drv.until(lambda s: s.master_replid not in (None, old_replid), 10, "new replid")
        # +1, or +2: a master restarted without persistence takes one more new replication id
        # when its first replica attaches (a new backlog always gets a new id)
        assert snap.offset_resets in (resets + 1, resets + 2)
        snap = drv.until(
            lambda s: (
                replica_view(s, rep.label).following_master
                and replica_view(s, rep.label).lag_seconds is not None
                and replica_view(s, rep.label).lag_seconds < 0.5  # type: ignore[operator]
            ),
            20,
            "replica resynced to the restarted master",
        )
        assert replica_view(snap, rep.label).lag_bytes is not None
    finally:
        drv.close()


@pytest.mark.timeout(60)
def test_full_sync_in_progress_is_reported(debian_servers: ServerSet) -> None:
    master = debian_servers.start(
        "master", ["--repl-diskless-sync", "no", "--rdb-key-save-delay", "200"]
    )
    client = master.client()
    pipe = client.pipeline(transaction=False)
    for i in range(20000):
        pipe.set(f"big:{i}", "v" * 50)
    pipe.execute()
    rep = debian_servers.start("replica")
    drv = Driver(make_monitor(master.url, [rep.url], interval=INTERVAL))
    try:
        drv.cycle()
        rep.client().replicaof(master.host, master.port)
        snap = drv.until(
            lambda s: replica_view(s, rep.label).sync_in_progress, 10, "full sync in progress"
        )
        r = replica_view(snap, rep.label)
        assert not r.link_up
        time.sleep(0.3)
        snap = drv.cycle()
        r = replica_view(snap, rep.label)
        if r.sync_in_progress:
            # never current since replwatch saw it: lag is at least the time since then
            assert r.lag_seconds is not None and r.lag_seconds > 0.2
            assert r.lag_source == "contact"
    finally:
        drv.close()


@pytest.mark.timeout(60)
def test_replica_of_another_master_has_no_byte_lag(debian_servers: ServerSet) -> None:
    master = debian_servers.start("master")
    other = debian_servers.start("other")
    rep = debian_servers.start("replica", replica_of=other)
    wait_synced(rep, other)
    drv = Driver(make_monitor(master.url, [rep.url], interval=INTERVAL))
    try:
        snap = drv.until(lambda s: replica_view(s, rep.label).reachable, 10, "replica polled")
        r = replica_view(snap, rep.label)
        assert r.link_up and not r.following_master
        assert r.lag_bytes is None and r.offset_lag_seconds is None
    finally:
        drv.close()


@pytest.mark.timeout(60)
def test_chained_replica_measured_against_top_master(debian_servers: ServerSet) -> None:
    master = debian_servers.start("master")
    middle = debian_servers.start("middle", replica_of=master)
    leaf = debian_servers.start("leaf", replica_of=middle)
    wait_synced(middle, master)
    wait_synced(leaf, master)
    drv = Driver(make_monitor(master.url, [middle.url, leaf.url], interval=INTERVAL))
    writer = BackgroundWriter(master.client(), batch=50, period=0.02)
    try:
        snap = drv.until(
            lambda s: replica_view(s, leaf.label).heartbeat_lag_seconds is not None, 10, "heartbeat"
        )
        writer.stop()
        snap = drv.until(
            lambda s: (
                replica_view(s, leaf.label).lag_bytes == 0
                and replica_view(s, leaf.label).lag_seconds == 0
            ),
            10,
            "leaf caught up",
        )
        r = replica_view(snap, leaf.label)
        assert r.chained and r.upstream == middle.label and r.following_master
        assert not replica_view(snap, middle.label).chained
        assert r.ack_age_seconds is not None  # from the middle replica's INFO
    finally:
        writer.stop()
        drv.close()


@pytest.mark.timeout(60)
def test_discover_finds_replicas_and_drops_departed(debian_servers: ServerSet) -> None:
    master = debian_servers.start("master")
    a = debian_servers.start("a", replica_of=master)
    b = debian_servers.start("b", replica_of=master)
    wait_synced(a, master)
    wait_synced(b, master)
    drv = Driver(make_monitor(master.url, [], discover=True, interval=INTERVAL))
    try:
        snap = drv.until(lambda s: len(s.replicas) == 2, 10, "two discovered replicas")
        assert {r.label for r in snap.replicas} == {a.label, b.label}
        assert all(n.discovered for n in snap.nodes if n.label != master.label)
        b.client().replicaof("no", "one")  # b leaves the master's replica list
        snap = drv.until(lambda s: len(s.replicas) == 1, 10, "departed replica dropped")
        assert snap.replicas[0].label == a.label
    finally:
        drv.close()


@pytest.mark.timeout(60)
def test_unreachable_and_black_holed_nodes_do_not_delay_others(
    read_only_pair: tuple[RedisProcess, RedisProcess],
) -> None:
    master, rep = read_only_pair
    hole = BlackHole()  # accepts, never answers
    dead = f"127.0.0.1:{closed_port()}"
    drv = Driver(
        make_monitor(
            master.url,
            [rep.url, hole.url, f"redis://{dead}"],
            timeout="300ms",
            interval=INTERVAL,
        )
    )
    try:
        for _ in range(3):
            started = time.monotonic()
            snap = drv.cycle()
            took = time.monotonic() - started
            assert took < 0.3 + 0.1 + 0.3, took  # heartbeat + one poll timeout + slack
        nodes = {n.label: n for n in snap.nodes}
        assert nodes[hole.label].error_reason == "timeout"
        assert nodes[dead].error_reason == "refused"
        assert nodes[rep.label].up and replica_view(snap, rep.label).link_up
        assert nodes[master.label].up
    finally:
        hole.close()
        drv.close()


@pytest.mark.timeout(60)
def test_idle_master_without_heartbeat_reads_zero(debian_servers: ServerSet) -> None:
    master = debian_servers.start("master")
    rep = debian_servers.start("replica", replica_of=master)
    wait_synced(rep, master)
    drv = Driver(make_monitor(master.url, [rep.url], heartbeat=False, interval=INTERVAL))
    try:
        snap = drv.until(lambda s: replica_view(s, rep.label).lag_bytes == 0, 10, "caught up")
        for _ in range(4):
            time.sleep(0.2)
            snap = drv.cycle()
            r = replica_view(snap, rep.label)
            assert r.heartbeat_lag_seconds is None
            if r.lag_bytes == 0:
                assert r.offset_lag_seconds == 0 and r.lag_seconds == 0
        assert r.lag_source == "offset_clock"
    finally:
        drv.close()


@pytest.mark.timeout(60)
def test_failover_configured_master_becomes_replica(debian_servers: ServerSet) -> None:
    """After a failover the configured master reports role replica: the group says so
    (master_role_ok False), the heartbeat writer refuses to write to it, and the old replica,
    now a master, is no longer measured as a follower of the configured master."""
    master = debian_servers.start("master")
    rep = debian_servers.start("replica", replica_of=master)
    wait_synced(rep, master)
    drv = Driver(make_monitor(master.url, [rep.url], interval=INTERVAL))
    try:
        snap = drv.until(lambda s: replica_view(s, rep.label).link_up, 10, "link up")
        assert snap.master_role_ok
        writes_before = drv.monitor.writer.writes_ok if drv.monitor.writer else 0
        rep.client().replicaof("no", "one")
        master.client().replicaof(rep.host, rep.port)
        wait_synced(master, rep)
        snap = drv.until(lambda s: not s.master_role_ok, 10, "configured master seen as replica")
        mnode = node_view(snap, master.label)
        assert mnode.up and mnode.role == "replica"
        r = replica_view(snap, rep.label)
        # it answers, but as a master: not a follower any more, so no lag is claimed for it
        assert r.reachable is False and not r.link_up and not r.following_master
        assert r.lag_seconds is None and r.lag_bytes is None
        rnode = node_view(snap, rep.label)
        assert rnode.up and rnode.role == "master"
        # the heartbeat writer never wrote to the node that is now a replica
        for _ in range(3):
            drv.cycle()
        assert drv.monitor.writer is not None
        assert drv.monitor.writer.writes_ok == writes_before
        assert drv.monitor.writer.last_error in (None, "not_master")
    finally:
        drv.close()
