"""Lag scenarios against real servers, driving GroupMonitor as the scheduler does.

Core scenarios run on all four builds (Redis 7.0, Redis 6.2, Valkey 8.1, Valkey 9.1); the
topology scenarios (other master, chain, discovery, dead and black-holed nodes) on Debian's
Redis 7.0. Lag is made real: a replica paused with SIGSTOP, a master killed or restarted, a
full sync slowed with `rdb-key-save-delay`.

Each test runs its own event loop (asyncio.run) and cycles every 0.2 s: one heartbeat write,
then one poll cycle. Conditions are polled (MonitorLoop.until, wait_for), never slept on.
"""

from __future__ import annotations

import asyncio
import itertools
import time
from collections.abc import Callable

import pytest
import redis

from replwatch.state import GroupSnapshot

from .support.monitor import MonitorLoop, describe, make_monitor, node_view, replica_view, watching
from .support.servers import (
    BackgroundWriter,
    BlackHole,
    RedisProcess,
    ServerSet,
    closed_port,
    wait_synced,
)

PERIOD = 0.2  # seconds between cycles
TIMEOUT = 0.4  # poll.timeout


def lag_below(label: str, limit: float) -> Callable[[GroupSnapshot], bool]:
    def check(snap: GroupSnapshot) -> bool:
        view = replica_view(snap, label)
        return view.lag_seconds is not None and view.lag_seconds < limit

    return check


def populate(proc: RedisProcess, keys: int, size: int) -> None:
    """`keys` keys of `size` bytes: DEBUG POPULATE where allowed, else pipelined SETs."""
    client = proc.client()
    try:
        client.execute_command("DEBUG", "POPULATE", keys, "big", size)  # type: ignore[no-untyped-call]
    except redis.ResponseError:
        pipe = client.pipeline(transaction=False)
        for i in range(keys):
            pipe.set(f"big:{i}", b"v" * size)
        pipe.execute()
    assert client.dbsize() >= keys


# ----------------------------------------------------------------------- all four builds


@pytest.mark.timeout(60)
def test_healthy_replica(redis_servers: ServerSet) -> None:
    master = redis_servers.start("master")
    rep = redis_servers.start("replica", replica_of=master)
    wait_synced(rep, master)

    async def scenario() -> None:
        async with watching(make_monitor(master.url, [rep.url]), PERIOD) as ml:
            # no writes but the heartbeat: byte lag reaches 0
            await ml.until(
                lambda s: (
                    replica_view(s, rep.label).heartbeat_lag_seconds is not None
                    and replica_view(s, rep.label).lag_bytes == 0
                ),
                10,
                "heartbeat seen on the replica and byte lag 0",
            )
            for _ in range(5):
                snap = await ml.cycle()
                r = replica_view(snap, rep.label)
                msg = describe(snap)
                assert snap.master_up and snap.master_role_ok and snap.heartbeat_ok, msg
                assert r.reachable and r.link_up and not r.sync_in_progress, msg
                assert r.following_master and not r.chained, msg
                assert r.upstream == master.label, msg
                # its own offset, read directly (the heartbeat stands by: heartbeat_lag_seconds)
                assert r.lag_source == "offset_clock", msg
                assert r.lag_seconds is not None and r.lag_seconds < 0.5, msg
                assert r.offset_lag_seconds is not None and r.offset_lag_seconds < 0.5, msg
                assert r.lag_bytes is not None and r.lag_bytes < 1024, msg
                assert r.ack_age_seconds is not None and r.ack_age_seconds <= 1, msg
                node = node_view(snap, rep.label)
                assert node.up and node.error_reason is None and node.role == "replica", msg
                await ml.pause()

    asyncio.run(scenario())


@pytest.mark.timeout(60)
def test_paused_replica_lag_grows_with_real_time_then_recovers(redis_servers: ServerSet) -> None:
    """SIGSTOP the replica while a writer keeps writing: every time-lag estimate grows about
    1 s per second, byte lag grows, the node times out. SIGCONT: all fall back."""
    master = redis_servers.start("master")
    rep = redis_servers.start("replica", replica_of=master)
    wait_synced(rep, master)
    writer = BackgroundWriter(master.client())  # ~50 KB/s

    async def scenario() -> None:
        async with watching(make_monitor(master.url, [rep.url]), PERIOD) as ml:
            await ml.until(
                lambda s: (
                    lag_below(rep.label, 0.5)(s)
                    and replica_view(s, rep.label).heartbeat_lag_seconds is not None
                ),
                10,
                "replica current while the writer writes",
            )
            await ml.pause()
            rep.pause()
            paused_at = time.monotonic()
            samples: list[tuple[float, GroupSnapshot]] = []  # (seconds paused, snapshot)
            while not samples or samples[-1][0] < 3.2:
                snap = await ml.cycle()
                samples.append((time.monotonic() - paused_at, snap))
                await ml.pause()

            elapsed, snap = samples[-1]
            r = replica_view(snap, rep.label)
            msg = f"after {elapsed:.2f}s paused:\n{describe(snap)}"
            node = node_view(snap, rep.label)
            assert not node.up and node.error_reason == "timeout", msg
            assert not r.reachable, msg
            for value in (r.lag_seconds, r.heartbeat_lag_seconds, r.offset_lag_seconds):
                assert value is not None and value >= 2.5, msg
                assert abs(value - elapsed) <= 1.0, msg

            # ~1 s of lag per second of real time, for the best estimate and both methods,
            # between the times the two snapshots were taken (when the test got them back
            # varies with the machine's load: it made a 1.20 once)
            _, first = samples[0]
            f = replica_view(first, rep.label)
            for name in ("lag_seconds", "heartbeat_lag_seconds", "offset_lag_seconds"):
                a, b = getattr(f, name), getattr(r, name)
                slope = (b - a) / (snap.taken_at - first.taken_at)
                assert 0.8 <= slope <= 1.2, f"{name} grew {slope:.2f} s/s\n{msg}"
            # never falls while paused; byte lag grows
            lags = [replica_view(s, rep.label).lag_seconds or 0.0 for _, s in samples]
            assert lags == sorted(lags) and lags[0] > 0, lags
            byte_lags = [replica_view(s, rep.label).lag_bytes for _, s in samples]
            assert all(b is not None for b in byte_lags), byte_lags
            assert byte_lags[-1] > byte_lags[0] > 0, byte_lags  # type: ignore[operator]
            # The master still lists the paused replica. Its ACK age (INFO's lag=) is whole
            # seconds since the last once-a-second ACK, so during a pause it grows too and
            # stays within 2 s of our lag (it is the starved replica whose ACK age lies:
            # tests/test_starved_replica.py).
            for _, s in samples:
                v = replica_view(s, rep.label)
                assert v.ack_age_seconds is not None, describe(s)
                assert v.lag_seconds is not None
                assert abs(v.lag_seconds - v.ack_age_seconds) < 2.0, describe(s)
            assert r.ack_age_seconds is not None and r.ack_age_seconds >= 2, msg

            rep.resume()
            snap = await ml.until(
                lambda s: (
                    lag_below(rep.label, 0.5)(s)
                    and replica_view(s, rep.label).reachable
                    and replica_view(s, rep.label).lag_bytes is not None
                    and replica_view(s, rep.label).lag_bytes < 16 * 1024  # type: ignore[operator]
                ),
                15,
                "lag back under 0.5 s and byte lag small after SIGCONT",
            )
            r = replica_view(snap, rep.label)
            assert r.link_up and r.lag_source == "offset_clock", describe(snap)
            writer.stop()
            await ml.until(
                lambda s: replica_view(s, rep.label).lag_bytes == 0, 10, "byte lag 0 after writes"
            )

    try:
        asyncio.run(scenario())
    finally:
        writer.stop()
        rep.resume()
    assert writer.error is None, writer.error


@pytest.mark.timeout(60)
def test_link_down_lag_keeps_growing(redis_servers: ServerSet) -> None:
    """The master dies: the replica's link is down, its lag grows every cycle and is never 0;
    the master node is down with reason refused."""
    master = redis_servers.start("master")
    rep = redis_servers.start("replica", replica_of=master)
    wait_synced(rep, master)

    async def scenario() -> None:
        async with watching(make_monitor(master.url, [rep.url]), PERIOD) as ml:
            await ml.until(lag_below(rep.label, 0.5), 10, "replica current")
            await ml.pause()
            master.kill()
            killed_at = time.monotonic()
            snap = await ml.until(
                lambda s: not replica_view(s, rep.label).link_up, 10, "replica sees link down"
            )
            lags = []
            for _ in range(5):
                await ml.pause()
                snap = await ml.cycle()
                since_kill = time.monotonic() - killed_at
                r = replica_view(snap, rep.label)
                msg = f"{since_kill:.2f}s after the kill:\n{describe(snap)}"
                assert r.reachable and not r.link_up, msg
                assert r.lag_seconds is not None and r.lag_seconds > 0, msg
                assert since_kill - 0.1 <= r.lag_seconds <= since_kill + 1.0, msg
                lags.append(r.lag_seconds)
                mnode = node_view(snap, master.label)
                assert not mnode.up and mnode.error_reason == "refused", msg
                assert not snap.master_up and snap.heartbeat_ok is False, msg
            assert all(b > a for a, b in itertools.pairwise(lags)), lags

    asyncio.run(scenario())


@pytest.mark.timeout(60)
def test_master_restart_resets_offset_clock(redis_servers: ServerSet) -> None:
    """The master restarts empty on the same port (new replication id, offset from 0): the
    offset clock resets, the replica resyncs and its lag returns low.

    A master without a backlog also takes a new replication id when its first replica
    attaches (the offset goes on); replwatch counts each replid change it sees as a reset, so
    one restart counts once or twice depending on whether a poll saw the in-between id.
    """
    master = redis_servers.start("master")
    rep = redis_servers.start("replica", replica_of=master)
    wait_synced(rep, master)
    master.client().set("before-restart", "1")

    async def scenario() -> None:
        async with watching(make_monitor(master.url, [rep.url]), PERIOD) as ml:
            snap = await ml.until(
                lambda s: lag_below(rep.label, 0.5)(s) and (s.master_offset or 0) > 0,
                10,
                "replica current",
            )
            resets, old_replid, old_offset = (
                snap.offset_resets,
                snap.master_replid,
                snap.master_offset or 0,
            )
            master.restart()
            replids: list[str] = []  # the replication ids the polls saw after the restart

            def seen(s: GroupSnapshot) -> GroupSnapshot:
                if s.master_replid is not None and s.master_replid not in [old_replid, *replids]:
                    replids.append(s.master_replid)
                return s

            snap = await ml.until(lambda s: bool(seen(s) and replids), 10, "a new replid")
            assert snap.offset_resets == resets + 1, describe(snap)
            assert (snap.master_offset or 0) < old_offset, describe(snap)
            snap = await ml.until(
                lambda s: bool(
                    seen(s)
                    and replica_view(s, rep.label).following_master
                    and replica_view(s, rep.label).link_up
                    and lag_below(rep.label, 0.5)(s)
                ),
                20,
                "replica resynced to the restarted master",
            )
            r = replica_view(snap, rep.label)
            assert r.lag_bytes is not None and r.lag_bytes < 1024, describe(snap)
            assert 1 <= len(replids) <= 2, replids
            assert snap.offset_resets == resets + len(replids), (replids, describe(snap))
            assert rep.client().get("before-restart") is None  # it took the empty dataset

    asyncio.run(scenario())


@pytest.mark.timeout(60)
def test_full_sync_in_progress(redis_servers: ServerSet) -> None:
    """A replica attached to a master with data, whose RDB save is slowed to ~2 s: while the
    full sync runs it is reachable, link down, not on the master's stream (no byte lag), and
    its lag is the time replwatch has known it not current (source "contact"), growing and
    never 0. When the sync ends it is current."""
    master = redis_servers.start(
        "master", extra=["--repl-diskless-sync", "no", "--rdb-key-save-delay", "400"]
    )
    populate(master, 5000, 100)  # 5000 keys x 400 µs ≈ 2 s of RDB save
    rep = redis_servers.start("replica")  # a standalone server, for now

    async def scenario() -> None:
        async with watching(make_monitor(master.url, [rep.url]), PERIOD) as ml:
            first_seen = time.monotonic()
            snap = await ml.cycle()  # replwatch has seen it (as a master: not a follower)
            assert not replica_view(snap, rep.label).reachable, describe(snap)
            rep.client().replicaof(master.host, master.port)
            attached_at = time.monotonic()
            await ml.until(
                lambda s: replica_view(s, rep.label).sync_in_progress, 10, "full sync started"
            )
            lags = []
            while True:
                snap = await ml.cycle()
                since = time.monotonic() - attached_at
                r = replica_view(snap, rep.label)
                if not r.sync_in_progress:
                    break
                msg = f"{since:.2f}s after REPLICAOF:\n{describe(snap)}"
                assert r.reachable and not r.link_up and not r.following_master, msg
                assert r.lag_bytes is None and r.offset_lag_seconds is None, msg
                assert r.lag_source == "contact", msg
                # its lag as of now (the snapshot's lag_seconds is as of its cycle, which a
                # busy machine returns later): between `since` and the time since replwatch
                # first polled it
                assert r.lag_seconds is not None, msg
                lag = r.lag_at(time.time())
                known = time.monotonic() - first_seen
                assert lag is not None and since - 0.05 <= lag <= known, msg
                lags.append(lag)
                await ml.pause()
            assert len(lags) >= 3, f"the full sync was too short to observe: {lags}"
            assert all(b > a for a, b in itertools.pairwise(lags)), lags
            snap = await ml.until(
                lambda s: (
                    replica_view(s, rep.label).following_master
                    and replica_view(s, rep.label).link_up
                    and lag_below(rep.label, 0.5)(s)
                ),
                20,
                "replica current after the full sync",
            )
            assert replica_view(snap, rep.label).lag_bytes is not None, describe(snap)

    asyncio.run(scenario())


@pytest.mark.timeout(60)
def test_idle_master_without_heartbeat_reads_zero(redis_servers: ServerSet) -> None:
    """Heartbeat disabled, nothing written (master PINGs to replicas every 30 s only): a
    caught-up replica reads offset-clock lag 0 — idle time is not lag — and it stays 0."""
    master = redis_servers.start("master", extra=["--repl-ping-replica-period", "30"])
    rep = redis_servers.start("replica", replica_of=master)
    wait_synced(rep, master)

    async def scenario() -> None:
        async with watching(make_monitor(master.url, [rep.url], heartbeat=False), PERIOD) as ml:
            await ml.until(lambda s: replica_view(s, rep.label).lag_bytes == 0, 10, "caught up")
            for _ in range(8):
                await ml.pause()
                snap = await ml.cycle()
                r = replica_view(snap, rep.label)
                msg = describe(snap)
                assert not snap.heartbeat_enabled and r.heartbeat_lag_seconds is None, msg
                assert r.lag_bytes == 0, msg
                assert r.offset_lag_seconds == 0 and r.lag_seconds == 0, msg
                assert r.lag_source == "offset_clock" and r.link_up, msg

    asyncio.run(scenario())


@pytest.mark.timeout(60)
def test_chained_replica_measured_against_top_master(redis_servers: ServerSet) -> None:
    """master → middle → leaf: the leaf is on the master's stream (PSYNC2), so its lag is
    measured against the top master; it is chained with the middle replica upstream. With
    the middle paused, the leaf's own link still reads up, yet its lag grows."""
    # no PINGs to replicas during the test: only our writes move the offsets
    master = redis_servers.start("master", extra=["--repl-ping-replica-period", "30"])
    middle = redis_servers.start("middle", replica_of=master)
    leaf = redis_servers.start("leaf", replica_of=middle)
    wait_synced(middle, master)
    wait_synced(leaf, master)
    writer = BackgroundWriter(master.client())

    async def settled_cycle(ml: MonitorLoop) -> GroupSnapshot:
        """Heartbeat, wait until both replicas applied it, then poll: byte lag is exactly 0
        (otherwise a poll can race the heartbeat down the chain)."""
        await ml.monitor.write_heartbeat()
        wait_synced(middle, master)
        wait_synced(leaf, master)
        return await ml.cycle(heartbeat=False)

    async def scenario() -> None:
        async with watching(make_monitor(master.url, [middle.url, leaf.url]), PERIOD) as ml:
            await ml.until(
                lambda s: replica_view(s, leaf.label).heartbeat_lag_seconds is not None,
                10,
                "heartbeat seen on the leaf",
            )
            # the middle stops: the leaf's link to it reads up, its lag grows all the same
            await ml.pause()
            middle.pause()
            paused_at = time.monotonic()
            lags = []
            while not lags or time.monotonic() - paused_at < 1.5:
                # a write the leaf cannot get, before this poll (the poll's own heartbeat is
                # written after the master's INFO): there is always something to lag behind
                await ml.monitor.write_heartbeat()
                snap = await ml.cycle()
                r = replica_view(snap, leaf.label)
                msg = describe(snap)
                assert r.reachable and r.link_up and r.following_master, msg
                assert r.lag_bytes is not None and r.lag_bytes > 0, msg
                assert r.lag_seconds is not None, msg
                lags.append(r.lag_seconds)
                await ml.pause()
            elapsed = time.monotonic() - paused_at
            assert lags == sorted(lags) and lags[-1] >= elapsed - 0.7, (elapsed, lags)
            middle.resume()
            writer.stop()
            assert writer.error is None, writer.error
            await ml.until(lag_below(leaf.label, 0.5), 10, "leaf current after SIGCONT")

            for _ in range(3):
                snap = await settled_cycle(ml)
                r = replica_view(snap, leaf.label)
                msg = describe(snap)
                assert r.chained and r.upstream == middle.label and r.following_master, msg
                assert r.link_up and r.lag_source == "offset_clock", msg
                # caught up: no bytes behind, and a lag of at most the milliseconds between
                # its poll and the moment the snapshot's lag is as of (0.4 ms seen once)
                assert r.lag_bytes == 0 and r.lag_seconds is not None, msg
                assert r.lag_seconds < 0.01, msg
                assert r.ack_age_seconds is not None, msg  # from the middle replica's INFO
                m = replica_view(snap, middle.label)
                assert not m.chained and m.upstream == master.label, msg
                assert m.lag_bytes == 0 and m.lag_seconds is not None, msg
                assert m.lag_seconds < 0.01, msg
                await ml.pause()

    try:
        asyncio.run(scenario())
    finally:
        writer.stop()
        middle.resume()


# ----------------------------------------------------------------------- Redis 7.0 only


@pytest.mark.timeout(60)
def test_replica_of_another_master(debian_servers: ServerSet) -> None:
    """A configured replica that replicates some other master: not on the group master's
    stream, so no byte lag and no offset-clock lag."""
    master = debian_servers.start("master")
    other = debian_servers.start("other")
    rep = debian_servers.start("replica", replica_of=other)
    wait_synced(rep, other)

    async def scenario() -> None:
        async with watching(make_monitor(master.url, [rep.url]), PERIOD) as ml:
            for _ in range(3):
                snap = await ml.cycle()
                r = replica_view(snap, rep.label)
                msg = describe(snap)
                assert r.reachable and r.link_up and r.upstream == other.label, msg
                assert not r.following_master and not r.chained, msg
                assert r.lag_bytes is None and r.offset_lag_seconds is None, msg
                assert r.heartbeat_lag_seconds is None, msg  # our heartbeat never reaches it
                await ml.pause()

    asyncio.run(scenario())


@pytest.mark.timeout(60)
def test_discover_finds_replicas_and_drops_departed(debian_servers: ServerSet) -> None:
    master = debian_servers.start("master")
    a = debian_servers.start("a", replica_of=master)
    b = debian_servers.start("b", replica_of=master)
    wait_synced(a, master)
    wait_synced(b, master)

    async def scenario() -> None:
        monitor = make_monitor(master.url, [], discover=True)
        async with watching(monitor, PERIOD) as ml:
            snap = await ml.until(
                lambda s: len(s.replicas) == 2 and all(r.link_up for r in s.replicas),
                10,
                "both replicas discovered",
            )
            assert {r.label for r in snap.replicas} == {a.label, b.label}, describe(snap)
            assert all(n.discovered for n in snap.nodes if n.label != master.label), describe(snap)
            assert all(r.lag_seconds is not None for r in snap.replicas), describe(snap)
            b.stop()  # the master drops b's line when its connection closes
            snap = await ml.until(lambda s: len(s.replicas) == 1, 10, "b dropped")
            assert [r.label for r in snap.replicas] == [a.label], describe(snap)
            assert b.label not in {n.label for n in snap.nodes}, describe(snap)

    asyncio.run(scenario())


@pytest.mark.timeout(60)
def test_unreachable_and_black_holed_nodes_do_not_delay_others(
    read_only_pair: tuple[RedisProcess, RedisProcess],
) -> None:
    """A refused port and a listener that never answers, in the same group as a healthy
    replica: they fail with refused / timeout, the cycle is bounded by poll.timeout, and the
    healthy replica is polled as usual."""
    master, rep = read_only_pair
    timeout = 0.3
    dead = f"127.0.0.1:{closed_port()}"

    async def scenario(hole: BlackHole) -> None:
        monitor = make_monitor(
            master.url, [rep.url, hole.url, f"redis://{dead}"], timeout=f"{timeout}s"
        )
        async with watching(monitor, PERIOD) as ml:
            for _ in range(4):
                snap = await ml.cycle()
                took = ml.last_poll_seconds
                msg = f"cycle took {took:.3f}s:\n{describe(snap)}"
                assert timeout - 0.05 <= took < timeout + 0.3, msg
                assert node_view(snap, hole.label).error_reason == "timeout", msg
                assert node_view(snap, hole.label).poll_seconds >= timeout - 0.05, msg
                assert node_view(snap, dead).error_reason == "refused", msg
                good = node_view(snap, rep.label)
                assert good.up and good.poll_seconds < 0.2, msg
                r = replica_view(snap, rep.label)
                assert r.link_up and r.following_master and r.lag_bytes is not None, msg
                assert snap.master_up, msg
                await ml.pause()
            assert ml.snapshot is not None
            assert lag_below(rep.label, 0.5)(ml.snapshot), describe(ml.snapshot)

    with BlackHole() as hole:
        asyncio.run(scenario(hole))
