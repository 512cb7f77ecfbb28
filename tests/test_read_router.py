"""ReadRouter end to end against the table a running daemon publishes: reads move off a
paused replica and back, a table that stops arriving sends reads to the master, sessions read
their own writes, and the double read covers a miss."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from replwatch.routing.client import ReadRouter

from .support.daemons import start_routing_daemon
from .support.servers import ServerSet, wait_for, wait_synced


@pytest.mark.timeout(90)
def test_read_router_follows_published_table(debian_servers: ServerSet, tmp_path: Path) -> None:
    master = debian_servers.start("master")
    a = debian_servers.start("a", replica_of=master)
    table_redis = debian_servers.start("table")
    wait_synced(a, master)
    daemon = start_routing_daemon(tmp_path, master, [a], publish=table_redis)
    router = ReadRouter.from_url(table_redis.url, "g", master.client(), max_staleness=1.5)
    try:
        wait_for(
            lambda: table_redis.client().get("replwatch:routing") is not None, 10, "table published"
        )
        doc = json.loads(table_redis.client().get("replwatch:routing"))
        assert doc["groups"]["g"]["read_from"] == [a.label]
        router.start()
        master.client().set("k", "v1")
        wait_for(lambda: a.client().get("k") == b"v1", 5, "replicated")
        assert router.read("GET", "k") == b"v1"
        assert router.choose()[0] == a.label and router.stats.replica_reads == 1

        # read-your-writes: the replica is paused, so only the master has the write
        session = router.session()
        a.pause()
        session.write("SET", "k", "v2")
        assert session.read("GET", "k") == b"v2"
        assert router.stats.fallbacks.get("read_your_writes", 0) >= 1

        # the daemon takes the paused replica out; the pub/sub message moves reads
        wait_for(lambda: router.choose()[0] == "master", 10, "router routes to the master")
        a.resume()
        wait_for(lambda: router.choose()[0] == a.label, 15, "router back on the replica")
        wait_for(
            lambda: (
                session.read("GET", "k") == b"v2"
                and router.choose(session.min_offset)[0] == a.label
            ),
            10,
            "session reads the replica again",
        )

        # double read: a key missing on the replica is read from the master
        double = ReadRouter.from_url(table_redis.url, "g", master.client(), fallback_on_miss=True)
        double.refresh()
        a.client().config_set("replica-read-only", "no")
        master.client().set("only-master", "yes")
        wait_for(lambda: a.client().get("only-master") == b"yes", 5, "replicated")
        a.client().delete("only-master")  # the replica misses it
        assert double.read("GET", "only-master") == b"yes"
        assert double.stats.fallbacks.get("miss") == 1

        # the daemon stops: no table arrives any more; after max_staleness → master
        daemon.proc.terminate()
        daemon.proc.wait(timeout=10)
        t0 = time.monotonic()
        wait_for(lambda: router.choose()[0] == "master", 5, "stale table → master")
        assert time.monotonic() - t0 <= 1.5 + 0.5
        assert router.stats.fallbacks.get("stale_table", 0) >= 1
    finally:
        a.resume()
        router.stop()
        daemon.stop()
