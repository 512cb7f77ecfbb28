"""ReadRouter end to end against the table a running daemon publishes: reads move off a
paused replica and back, a table that stops arriving sends reads to the master, sessions read
their own writes, and the double read covers a miss."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from replwatch.routing.client import ReadRouter

from ._servers import RedisProc, Servers, free_port, server_builds, wait_for, wait_linked
from .test_daemon_e2e import fetch


@pytest.fixture
def servers(tmp_path: Path) -> Iterator[Servers]:
    build = next(b for b in server_builds() if b.name == "redis-7.0")
    s = Servers(build, tmp_path)
    try:
        yield s
    finally:
        s.close()


def start_daemon(
    tmp_path: Path, master: RedisProc, replicas: list[RedisProc], table: RedisProc
) -> tuple[subprocess.Popen[bytes], str]:
    port = free_port()
    cfg = tmp_path / "c.yaml"
    reps = ", ".join(f'"{r.url}"' for r in replicas)
    cfg.write_text(
        f'exporter: {{listen: "127.0.0.1:{port}"}}\n'
        "poll: {interval: 250ms, timeout: 200ms}\nheartbeat: {interval: 100ms}\n"
        "routing: {trip: {lag_seconds: 1, for: 500ms}, recover: {lag_seconds: 0.3, for: 1s}}\n"
        f'publish: {{url: "{table.url}", interval: 300ms}}\n'
        f'groups: [{{name: g, master: "{master.url}", replicas: [{reps}]}}]\n'
    )
    proc = subprocess.Popen(
        [sys.executable, "-m", "replwatch", "run", "-c", str(cfg)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    base = f"http://127.0.0.1:{port}"
    wait_for(lambda: fetch(base + "/-/ready")[0] == 200, 15, "daemon ready")
    return proc, base


@pytest.mark.timeout(90)
def test_read_router_follows_published_table(servers: Servers, tmp_path: Path) -> None:
    master = servers.start("master")
    a = servers.start("a", replica_of=master)
    table_redis = servers.start("table")
    wait_linked(a, master)
    proc, _ = start_daemon(tmp_path, master, [a], table_redis)
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
        proc.terminate()
        proc.wait(timeout=10)
        t0 = time.monotonic()
        wait_for(lambda: router.choose()[0] == "master", 5, "stale table → master")
        assert time.monotonic() - t0 <= 1.5 + 0.5
        assert router.stats.fallbacks.get("stale_table", 0) >= 1
    finally:
        a.resume()
        router.stop()
        if proc.poll() is None:
            proc.kill()
            proc.wait()
