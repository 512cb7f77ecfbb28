"""ReadRouter end to end against the table a running daemon publishes, tried the way an
application meets it: a thread reading through the router while the fault happens.

- a frozen replica costs one read one socket timeout, then reads go to the master at once
  and come back after it recovers;
- the table Redis restarting (or replwatch stopping) never leaves the router stuck: it
  reconnects, resubscribes and refreshes, and meanwhile follows its staleness rule;
- a session reads its own writes, and a busy writer is not pinned to the master;
- the double read covers a miss; replica clients take any redis-py option.
"""

from __future__ import annotations

import contextlib
import json
import time
from collections.abc import Iterator
from functools import partial
from pathlib import Path

import pytest
import redis

from replwatch.routing.client import MASTER, ReadRouter

from .support.apps import AppReader
from .support.daemons import RunningDaemon, parse_metrics, sample_value, start_routing_daemon
from .support.servers import RedisProcess, ServerSet, wait_for, wait_synced

World = tuple[RedisProcess, RedisProcess, RedisProcess, RunningDaemon]


def has_offset(client: redis.Redis, offset: int) -> bool:
    return int(client.info("replication")["slave_repl_offset"]) >= offset


def _published(table: RedisProcess, replica: str) -> None:
    def has_it() -> bool:
        raw = table.client().get("replwatch:routing")
        return raw is not None and json.loads(raw)["groups"]["g"]["read_from"] == [replica]

    wait_for(has_it, 10, f"table published with {replica} in rotation")


@pytest.fixture
def world(debian_servers: ServerSet, tmp_path: Path) -> Iterator[World]:
    master = debian_servers.start("master")
    a = debian_servers.start("a", replica_of=master)
    table = debian_servers.start("table")
    wait_synced(a, master)
    daemon = start_routing_daemon(tmp_path, master, [a], publish=table)
    _published(table, a.label)
    try:
        yield master, a, table, daemon
    finally:
        a.resume()
        daemon.stop()


@pytest.mark.timeout(90)
def test_frozen_replica_costs_one_socket_timeout(world: World) -> None:
    """A SIGSTOPped replica: the application waits about one socket timeout once, then
    reads from the master with no gap, and goes back to the replica after it recovers."""
    master, a, table, _daemon = world
    router = ReadRouter.from_url(table.url, "g", master.client(), max_staleness=3.0)
    router.start()
    master.client().set("k", "v")
    wait_for(lambda: a.client().get("k") == b"v", 5, "replicated")
    try:
        with AppReader(lambda: router.read_routed("GET", "k").served_by) as app:
            app.wait_served_by(0.0, a.label, 20, 10)
            frozen = time.monotonic()
            a.pause()
            app.wait_served_by(frozen, MASTER, 50, 10)
            # replwatch takes it out of the table (out for unreachable at once) while the
            # router's cooldown keeps the app off it meanwhile
            wait_for(lambda: router.choose()[0] == MASTER, 10, "table takes the replica out")
            time.sleep(0.5)  # reads keep flowing to the master for a while: measured below
            thawed = time.monotonic()
            a.resume()
            back = app.wait_served_by(thawed, a.label, 5, 20)
            # a read sent a moment before the freeze may be the one that waits
            stalled = [r for r in app.reads if frozen < r.ended < thawed and r.seconds > 0.5]
            longest_gap = app.longest_gap_since(frozen)
            failed = [r for r in app.since(frozen) if r.served_by is None]
        assert not failed, failed[:3]
        # one read waited the 1 s socket timeout (redis-py's retries would make it ~15 s)
        assert len(stalled) == 1, [(r.seconds, r.served_by) for r in stalled]
        assert 0.9 <= stalled[0].seconds <= 1.6
        assert longest_gap <= 1.6, longest_gap
        assert router.stats.fallbacks["replica_error"] == 1
        assert back - thawed < 20
    finally:
        router.stop()


@pytest.mark.timeout(90)
def test_router_survives_table_redis_restart_and_replwatch_stop(world: World) -> None:
    """The table Redis restarts (1 s down, comes back empty): the router reconnects,
    resubscribes and follows the table again; replwatch stops: after max_staleness every
    read goes to the master, and a key it left behind is not taken for a fresh table."""
    master, a, table, daemon = world
    router = ReadRouter.from_url(table.url, "g", master.client(), max_staleness=2.0)
    router.start()
    try:
        with AppReader(lambda: router.read_routed("GET", "k").served_by, pace=0.01) as app:
            app.wait_served_by(0.0, a.label, 10, 10)
            down = time.monotonic()
            table.stop()
            wait_for(lambda: router.table_reconnects >= 1, 10, "router notices the outage")
            # the table it has stays good for max_staleness, then the master
            app.wait_served_by(down, MASTER, 5, 10)
            table.restart()
            up = time.monotonic()
            _published(table, a.label)  # replwatch publishes again to the new server
            back = app.wait_served_by(up, a.label, 10, 15)
            # on the replica within a publish interval and a reconnect backoff of coming back
            assert back - up < 5, back - up
            failed = [r for r in app.since(down) if r.served_by is None]
            assert not failed, failed[:3]

            daemon.proc.terminate()
            daemon.proc.wait(timeout=10)
            stopped = time.monotonic()
            first_master = app.wait_served_by(stopped, MASTER, 1, 10)
            # the last table was at most one publish interval old when replwatch stopped
            assert first_master - stopped <= 2.0 + 0.5, first_master - stopped
        # a new router started now finds the key replwatch left: too old to be trusted
        raw = table.client().get("replwatch:routing")
        assert raw is not None
        published_at = json.loads(raw)["published_at"]
        wait_for(lambda: time.time() - published_at > 2.5, 5, "the key is 2.5 s old")
        late = ReadRouter.from_url(table.url, "g", master.client(), max_staleness=2.0)
        assert late.refresh()
        assert late.read_routed("GET", "k").served_by == MASTER
        assert late.stats.fallbacks == {"stale_table": 1}
    finally:
        router.stop()


@pytest.mark.timeout(90)
def test_session_reads_its_writes_without_pinning_a_busy_writer(world: World) -> None:
    """A session writing far faster than the table is published reads each write back:
    right after the write (the replica may not have it yet: then the master answers) and
    once the replica has it — then from the replica, although no table published since says
    so: its offset is learned in the read's own round trip."""
    master, a, table, _daemon = world
    router = ReadRouter.from_url(table.url, "g", master.client())
    router.start()
    replica = a.client()
    try:
        wait_for(lambda: router.choose()[0] == a.label, 10, "router reads the replica")
        session = router.session()
        learned = 0
        for i in range(100):
            session.write("SET", "counter", i)
            at_once = session.read_routed("GET", "counter")
            assert at_once.value == str(i).encode(), (i, at_once)
            wanted = session.min_offset
            assert wanted is not None
            wait_for(
                partial(has_offset, replica, wanted), 5, "the replica to have it", interval=0.001
            )
            table_now = router.fresh_table()
            published = table_now.offsets.get(a.label) if table_now is not None else None
            routed = session.read_routed("GET", "counter")
            assert (routed.value, routed.served_by) == (str(i).encode(), a.label), (i, routed)
            if published is None or published < wanted:
                learned += 1  # no table said the replica had it: the read asked the replica
        # the table is published every 300 ms; the loop writes many times in between
        assert learned >= 50, learned

        # a paused replica: the session still reads its write (from the master)
        a.pause()
        session.write("SET", "counter", "after-pause")
        routed = session.read_routed("GET", "counter")
        assert (routed.value, routed.served_by) == (b"after-pause", MASTER)
    finally:
        a.resume()
        router.stop()


@pytest.mark.timeout(60)
def test_double_read_and_replica_client_options(world: World) -> None:
    master, a, table, _daemon = world
    # an ACL user on the replica: username and password reach replica clients
    a.client().acl_setuser(
        "app",
        enabled=True,
        passwords=["+s3cret"],
        keys=["*"],
        commands=["+@read", "+@connection", "+info"],
    )
    double = ReadRouter.from_url(
        table.url,
        "g",
        master.client(),
        password="s3cret",
        username="app",
        fallback_on_miss=True,
        replica_options={"client_name": "app-reader"},
    )
    assert double.refresh()
    a.client().config_set("replica-read-only", "no")
    master.client().set("only-master", "yes")
    wait_for(lambda: a.client().get("only-master") == b"yes", 5, "replicated")
    assert double.read_routed("GET", "only-master").served_by == a.label
    a.client().delete("only-master")  # the replica misses it
    routed = double.read_routed("GET", "only-master")
    assert (routed.value, routed.served_by, routed.fallback) == (b"yes", MASTER, "miss")
    assert double.stats.fallbacks == {"miss": 1}
    names = [c["name"] for c in a.client().client_list()]
    assert "app-reader" in names, names

    # a wrong password is a replica error: the master answers, the replica cools down
    wrong = ReadRouter.from_url(table.url, "g", master.client(), password="nope", username="app")
    assert wrong.refresh()
    assert wrong.read_routed("GET", "k").fallback == "replica_error"
    assert wrong.read_routed("GET", "k").fallback == "cooling_down"

    # a factory of one's own
    made: list[str] = []

    def factory(label: str) -> redis.Redis:
        made.append(label)
        client: redis.Redis = a.client()
        return client

    own = ReadRouter.from_url(table.url, "g", master.client(), replica_factory=factory)
    assert own.refresh()
    assert own.read_routed("GET", "k").served_by == a.label and made == [a.label]


@pytest.mark.timeout(90)
def test_replwatch_restart_does_not_trip_healthy_replicas(world: World, tmp_path: Path) -> None:
    """replwatch down for 3 s (beyond trip's 1 s + 500 ms) and started again: the replica
    holds the heartbeat the old process wrote, 3 s old, yet it is current; from the first
    scrape of the new process its heartbeat lag and its lag are small and it stays in
    rotation (the old value was read as 3 s of lag until the first new one arrived)."""
    _master, a, _table, daemon = world
    wait_for(lambda: _replica_series(daemon, a)[0] is not None, 10, "heartbeat lag known")
    daemon.stop()
    time.sleep(3.0)  # the downtime is the fault: its length is what the old value shows
    again = RunningDaemon(tmp_path / "c.yaml", int(daemon.base.rsplit(":", 1)[1]))
    try:
        seen: list[tuple[float | None, float | None, float | None]] = []
        deadline = time.monotonic() + 20
        while len(seen) < 40 and time.monotonic() < deadline:
            with contextlib.suppress(OSError):  # not listening yet
                sample = _replica_series(again, a)
                if sample != (None, None, None):
                    seen.append(sample)
            time.sleep(0.05)
    finally:
        again.stop()
    assert len(seen) == 40
    assert all(hb is None or hb < 1.0 for hb, _, _ in seen), seen
    assert all(lag is None or lag < 1.0 for _, lag, _ in seen), seen
    assert all(rot in (None, 1.0) for _, _, rot in seen), seen


def _replica_series(
    daemon: RunningDaemon, replica: RedisProcess
) -> tuple[float | None, float | None, float | None]:
    """(heartbeat lag, best lag, in rotation) of one replica, from a scrape."""
    samples = parse_metrics(daemon.metrics())
    return tuple(  # type: ignore[return-value]
        sample_value(samples, name, replica=replica.label)
        for name in (
            "replwatch_replica_heartbeat_lag_seconds",
            "replwatch_replica_lag_seconds",
            "replwatch_routing_in_rotation",
        )
    )
