"""The lag monitor against real servers: four builds for the core scenarios, Redis 7.0 for
the topology scenarios. Each test drives GroupMonitor the way the scheduler does."""

from __future__ import annotations

import asyncio
import os
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from replwatch.config import config_from_data
from replwatch.observe.group_monitor import GroupMonitor
from replwatch.state import GroupSnapshot, ReplicaView

from ._servers import EXPECTED_BUILDS, ServerBuild, Servers, server_builds, wait_linked

BUILDS = {b.name: b for b in server_builds()}


@pytest.fixture(params=EXPECTED_BUILDS)
def build(request: pytest.FixtureRequest) -> ServerBuild:
    name = request.param
    if name not in BUILDS:
        if os.environ.get("CI"):
            pytest.fail(f"server build {name} is not installed (scripts/test installs it)")
        pytest.skip(f"server build {name} not installed")
    return BUILDS[name]


@pytest.fixture
def servers(build: ServerBuild, tmp_path: Path) -> Iterator[Servers]:
    s = Servers(build, tmp_path)
    try:
        yield s
    finally:
        s.close()


@pytest.fixture
def redis70(tmp_path: Path) -> Iterator[Servers]:
    if "redis-7.0" not in BUILDS:
        pytest.fail("Debian redis-server is not installed")
    s = Servers(BUILDS["redis-7.0"], tmp_path)
    try:
        yield s
    finally:
        s.close()


def make_monitor(
    master: str,
    replicas: list[str],
    discover: bool = False,
    heartbeat: bool = True,
    timeout: str = "400ms",
) -> GroupMonitor:
    cfg = config_from_data(
        {
            "poll": {"interval": "500ms", "timeout": timeout},
            "heartbeat": {"enabled": heartbeat, "interval": "100ms"},
            "groups": [{"name": "g", "master": master, "replicas": replicas, "discover": discover}],
        }
    )
    return GroupMonitor(cfg.groups[0], cfg.poll, cfg.heartbeat, cfg.lag, cfg.tls)


class Driver:
    """Runs heartbeat writes and poll cycles in a private event loop."""

    def __init__(self, monitor: GroupMonitor) -> None:
        self.monitor = monitor
        self.loop = asyncio.new_event_loop()

    def cycle(self) -> GroupSnapshot:
        async def once() -> GroupSnapshot:
            return await self.monitor.poll_cycle(with_heartbeat=True)

        return self.loop.run_until_complete(once())

    def heartbeats(self, seconds: float, interval: float) -> None:
        """Heartbeat writes every `interval` for `seconds`, as the daemon's writer does
        between poll cycles (a cycle carries one write; the daemon writes more often)."""

        async def run() -> None:
            deadline = time.monotonic() + seconds
            while time.monotonic() < deadline:
                await self.monitor.write_heartbeat()
                await asyncio.sleep(interval)

        self.loop.run_until_complete(run())

    def until(self, predicate: Any, timeout: float, what: str) -> GroupSnapshot:
        deadline = time.monotonic() + timeout
        snap = self.cycle()
        while not predicate(snap):
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out waiting for {what}; last: {snap.replicas}")
            time.sleep(0.1)
            snap = self.cycle()
        return snap

    def close(self) -> None:
        self.monitor.close()
        self.loop.close()


def replica(snap: GroupSnapshot, label: str) -> ReplicaView:
    return next(r for r in snap.replicas if r.label == label)


class Writer:
    """Writes to the master in a thread until stopped."""

    def __init__(self, client: Any) -> None:
        self.client = client
        self.stop_event = threading.Event()
        self.count = 0
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        while not self.stop_event.is_set():
            pipe = self.client.pipeline(transaction=False)
            for _ in range(50):
                self.count += 1
                pipe.set(f"k:{self.count % 1000}", "x" * 100)
            pipe.execute()
            self.stop_event.wait(0.02)

    def stop(self) -> None:
        self.stop_event.set()
        self.thread.join(timeout=5)


# ----------------------------------------------------------------- all four builds


@pytest.mark.timeout(90)
def test_healthy_then_paused_replica_lag_grows_and_recovers(servers: Servers) -> None:
    master = servers.start("master")
    rep = servers.start("replica", replica_of=master)
    wait_linked(rep, master)
    drv = Driver(make_monitor(master.url, [rep.url]))
    writer = Writer(master.client())
    try:
        snap = drv.until(
            lambda s: replica(s, rep.label).heartbeat_lag_seconds is not None,
            10,
            "heartbeat seen on the replica",
        )
        r = replica(snap, rep.label)
        assert r.link_up and r.following_master and r.reachable
        assert r.lag_seconds is not None and r.lag_seconds < 0.5

        rep.pause()
        paused_at = time.monotonic()
        snap = drv.cycle()
        while time.monotonic() - paused_at < 3.5:
            time.sleep(0.2)
            snap = drv.cycle()
        elapsed = time.monotonic() - paused_at
        r = replica(snap, rep.label)
        node = next(n for n in snap.nodes if n.label == rep.label)
        assert not node.up and node.error_reason == "timeout"
        assert r.lag_seconds is not None
        assert elapsed - 1.0 <= r.lag_seconds <= elapsed + 0.5, (r.lag_seconds, elapsed)
        assert r.heartbeat_lag_seconds is not None and r.heartbeat_lag_seconds >= elapsed - 1.0
        assert r.offset_lag_seconds is not None and r.offset_lag_seconds >= elapsed - 1.5
        assert r.lag_bytes is not None and r.lag_bytes > 10_000

        rep.resume()
        snap = drv.until(
            lambda s: (
                replica(s, rep.label).lag_seconds is not None
                and replica(s, rep.label).lag_seconds < 0.5  # type: ignore[operator]
                and replica(s, rep.label).reachable
            ),
            15,
            "lag back under 0.5s after SIGCONT",
        )
        assert replica(snap, rep.label).link_up
    finally:
        writer.stop()
        rep.resume()
        drv.close()


# ----------------------------------------------------------------- Redis 7.0 scenarios


@pytest.mark.timeout(60)
def test_link_down_lag_grows_never_zero(redis70: Servers) -> None:
    master = redis70.start("master")
    rep = redis70.start("replica", replica_of=master)
    wait_linked(rep, master)
    drv = Driver(make_monitor(master.url, [rep.url]))
    try:
        drv.until(lambda s: replica(s, rep.label).link_up, 10, "link up")
        master.stop()
        snap = drv.until(lambda s: not replica(s, rep.label).link_up, 10, "link down")
        lags = []
        for _ in range(5):
            time.sleep(0.3)
            snap = drv.cycle()
            lag = replica(snap, rep.label).lag_seconds
            assert lag is not None and lag > 0
            lags.append(lag)
        assert lags == sorted(lags) and lags[-1] > lags[0]
        mnode = next(n for n in snap.nodes if n.label == master.label)
        assert not mnode.up and mnode.error_reason == "refused"
        assert not snap.master_up
    finally:
        drv.close()


@pytest.mark.timeout(60)
def test_master_restart_resets_offset_clock(redis70: Servers) -> None:
    master = redis70.start("master")
    rep = redis70.start("replica", replica_of=master)
    wait_linked(rep, master)
    master.client().set("before", "1")
    drv = Driver(make_monitor(master.url, [rep.url]))
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
                replica(s, rep.label).following_master
                and replica(s, rep.label).lag_seconds is not None
                and replica(s, rep.label).lag_seconds < 0.5
            ),  # type: ignore[operator]
            20,
            "replica resynced to the restarted master",
        )
        assert replica(snap, rep.label).lag_bytes is not None
    finally:
        drv.close()


@pytest.mark.timeout(60)
def test_full_sync_in_progress_is_reported(redis70: Servers) -> None:
    master = redis70.start("master", ["--repl-diskless-sync", "no", "--rdb-key-save-delay", "200"])
    client = master.client()
    pipe = client.pipeline(transaction=False)
    for i in range(20000):
        pipe.set(f"big:{i}", "v" * 50)
    pipe.execute()
    rep = redis70.start("replica")
    drv = Driver(make_monitor(master.url, [rep.url]))
    try:
        drv.cycle()
        rep.client().replicaof(master.bind, master.port)
        snap = drv.until(
            lambda s: replica(s, rep.label).sync_in_progress, 10, "full sync in progress"
        )
        r = replica(snap, rep.label)
        assert not r.link_up
        time.sleep(0.3)
        snap = drv.cycle()
        r = replica(snap, rep.label)
        if r.sync_in_progress:
            # never current since replwatch saw it: lag is at least the time since then
            assert r.lag_seconds is not None and r.lag_seconds > 0.2
            assert r.lag_source == "contact"
    finally:
        drv.close()


@pytest.mark.timeout(60)
def test_replica_of_another_master_has_no_byte_lag(redis70: Servers) -> None:
    master = redis70.start("master")
    other = redis70.start("other")
    rep = redis70.start("replica", replica_of=other)
    wait_linked(rep, other)
    drv = Driver(make_monitor(master.url, [rep.url]))
    try:
        snap = drv.until(lambda s: replica(s, rep.label).reachable, 10, "replica polled")
        r = replica(snap, rep.label)
        assert r.link_up and not r.following_master
        assert r.lag_bytes is None and r.offset_lag_seconds is None
    finally:
        drv.close()


@pytest.mark.timeout(60)
def test_chained_replica_measured_against_top_master(redis70: Servers) -> None:
    master = redis70.start("master")
    middle = redis70.start("middle", replica_of=master)
    leaf = redis70.start("leaf", replica_of=middle)
    wait_linked(middle, master)
    wait_linked(leaf, master)
    drv = Driver(make_monitor(master.url, [middle.url, leaf.url]))
    writer = Writer(master.client())
    try:
        snap = drv.until(
            lambda s: replica(s, leaf.label).heartbeat_lag_seconds is not None, 10, "heartbeat"
        )
        writer.stop()
        snap = drv.until(
            lambda s: (
                replica(s, leaf.label).lag_bytes == 0 and replica(s, leaf.label).lag_seconds == 0
            ),
            10,
            "leaf caught up",
        )
        r = replica(snap, leaf.label)
        assert r.chained and r.upstream == middle.label and r.following_master
        assert not replica(snap, middle.label).chained
        assert r.ack_age_seconds is not None  # from the middle replica's INFO
    finally:
        writer.stop()
        drv.close()


@pytest.mark.timeout(60)
def test_discover_finds_replicas_and_drops_departed(redis70: Servers) -> None:
    master = redis70.start("master")
    a = redis70.start("a", replica_of=master)
    b = redis70.start("b", replica_of=master)
    wait_linked(a, master)
    wait_linked(b, master)
    drv = Driver(make_monitor(master.url, [], discover=True))
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
def test_unreachable_and_black_holed_nodes_do_not_delay_others(redis70: Servers) -> None:
    master = redis70.start("master")
    rep = redis70.start("replica", replica_of=master)
    wait_linked(rep, master)
    hole = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    hole.bind(("127.0.0.1", 0))
    hole.listen(16)  # accepts into the backlog, never answers
    hole_port = hole.getsockname()[1]
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        dead_port = s.getsockname()[1]
    drv = Driver(
        make_monitor(
            master.url,
            [rep.url, f"redis://127.0.0.1:{hole_port}", f"redis://127.0.0.1:{dead_port}"],
            timeout="300ms",
        )
    )
    try:
        for _ in range(3):
            started = time.monotonic()
            snap = drv.cycle()
            took = time.monotonic() - started
            assert took < 0.3 + 0.1 + 0.3, took  # heartbeat + one poll timeout + slack
        nodes = {n.label: n for n in snap.nodes}
        assert nodes[f"127.0.0.1:{hole_port}"].error_reason == "timeout"
        assert nodes[f"127.0.0.1:{dead_port}"].error_reason == "refused"
        assert nodes[rep.label].up and replica(snap, rep.label).link_up
        assert nodes[master.label].up
    finally:
        hole.close()
        drv.close()


@pytest.mark.timeout(60)
def test_idle_master_without_heartbeat_reads_zero(redis70: Servers) -> None:
    master = redis70.start("master")
    rep = redis70.start("replica", replica_of=master)
    wait_linked(rep, master)
    drv = Driver(make_monitor(master.url, [rep.url], heartbeat=False))
    try:
        snap = drv.until(lambda s: replica(s, rep.label).lag_bytes == 0, 10, "caught up")
        for _ in range(4):
            time.sleep(0.2)
            snap = drv.cycle()
            r = replica(snap, rep.label)
            assert r.heartbeat_lag_seconds is None
            if r.lag_bytes == 0:
                assert r.offset_lag_seconds == 0 and r.lag_seconds == 0
        assert r.lag_source == "offset_clock"
    finally:
        drv.close()


@pytest.mark.timeout(60)
def test_failover_configured_master_becomes_replica(redis70: Servers) -> None:
    """After a failover the configured master reports role replica: the group says so
    (master_role_ok False), the heartbeat writer refuses to write to it, and the old replica,
    now a master, is no longer measured as a follower of the configured master."""
    master = redis70.start("master")
    rep = redis70.start("replica", replica_of=master)
    wait_linked(rep, master)
    drv = Driver(make_monitor(master.url, [rep.url]))
    try:
        snap = drv.until(lambda s: replica(s, rep.label).link_up, 10, "link up")
        assert snap.master_role_ok
        writes_before = drv.monitor.writer.writes_ok if drv.monitor.writer else 0
        rep.client().replicaof("no", "one")
        master.client().replicaof(rep.bind, rep.port)
        wait_linked(master, rep)
        snap = drv.until(lambda s: not s.master_role_ok, 10, "configured master seen as replica")
        mnode = next(n for n in snap.nodes if n.label == master.label)
        assert mnode.up and mnode.role == "replica"
        r = replica(snap, rep.label)
        # it answers, but as a master: not a follower any more, so no lag is claimed for it
        assert r.reachable is False and not r.link_up and not r.following_master
        assert r.lag_seconds is None and r.lag_bytes is None
        rnode = next(n for n in snap.nodes if n.label == rep.label)
        assert rnode.up and rnode.role == "master"
        # the heartbeat writer never wrote to the node that is now a replica
        for _ in range(3):
            drv.cycle()
        assert drv.monitor.writer is not None
        assert drv.monitor.writer.writes_ok == writes_before
        assert drv.monitor.writer.last_error in (None, "not_master")
    finally:
        drv.close()
