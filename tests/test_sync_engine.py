"""The syncer engine against real servers: full sync (disk and diskless) then the command
stream across server builds, resume without a full sync, kill -9 at random moments under
INCR/LPUSH/HINCRBY, backlog overflow and source restart (full resync ending equal), the
policies for a non-empty target, and the sync CLI."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
import redis

from replwatch.sync.checkpoint import checkpoint_key

from .support.daemons import cli
from .support.datasets import build_dataset, connect
from .support.servers import RedisProcess, ServerSet, require_build, wait_for
from .support.syncing import (
    TASK,
    RunnerThread,
    assert_equal,
    checkpoint,
    make_task,
    start_sync_process,
    wait_caught_up,
    write_sync_config,
)


def live_traffic(client: redis.Redis, rounds: int = 200) -> None:
    """Commands of every kind, transactions and another database included."""
    for i in range(rounds):
        client.incr("live:counter")
        client.lpush("live:list", i)
        client.hincrby("live:hash", f"f{i % 7}", 1)
        if i % 10 == 0:
            pipe = client.pipeline(transaction=True)
            pipe.set(f"live:tx:{i}", i)
            pipe.incr("live:tx:count")
            pipe.sadd("live:set", i)
            pipe.execute()
        if i % 25 == 0:
            client.set(f"live:ttl:{i}", "x", ex=500)
            client.delete("str:small")
            client.xadd("stream:small", {"live": i})
            client.zincrby("zset:big", 1.5, f"m-{i}")
    with redis.Redis(
        host=client.connection_pool.connection_kwargs["host"],
        port=client.connection_pool.connection_kwargs["port"],
        db=5,
        protocol=2,
    ) as db5:
        db5.set("db5:key", "five")
        db5.rpush("db5:list", *range(50))


BUILD_PAIRS = [
    ("redis-6.2", "redis-7.0", "disk"),
    ("redis-7.0", "redis-7.0", "diskless"),
    ("redis-7.0", "valkey-9.1", "disk"),
    ("valkey-8.1", "valkey-9.1", "diskless"),
    ("redis-7.0", "redis-6.2", "diskless"),  # newer to older: plain commands
    ("valkey-9.1", "redis-7.0", "disk"),  # Valkey 9 payloads Redis cannot load
]


@pytest.mark.timeout(180)
@pytest.mark.parametrize(
    ("source_build", "target_build", "transfer"),
    BUILD_PAIRS,
    ids=[f"{s}-to-{t}-{x}" for s, t, x in BUILD_PAIRS],
)
def test_full_then_incremental_across_builds(
    source_build: str,
    target_build: str,
    transfer: str,
    tmp_path: Path,
    runners: list[RunnerThread],
) -> None:
    sources = ServerSet(require_build(source_build), tmp_path / "s")
    targets = ServerSet(require_build(target_build), tmp_path / "t")
    try:
        diskless = "yes" if transfer == "diskless" else "no"
        source = sources.start(
            "source", extra=["--repl-diskless-sync", diskless, "--repl-diskless-sync-delay", "0"]
        )
        target = targets.start("target")
        keys = build_dataset(source)
        runners.append(RunnerThread(make_task(source, target)))
        cp = wait_caught_up(source, target)
        assert cp.full_resyncs == 1 and cp.keys_loaded == keys, cp
        assert cp.full_sync_finished_at is not None and cp.source == source.label
        if transfer == "disk" and source_build.startswith("redis"):
            assert cp.rdb_bytes_total and cp.rdb_bytes_total == cp.rdb_bytes_loaded, cp
        elif transfer == "diskless":
            assert cp.rdb_bytes_total is None and cp.rdb_bytes_loaded, cp  # size unknown
        else:  # Valkey 9 may stream a snapshot diskless although asked for disk
            assert cp.rdb_bytes_loaded and cp.rdb_bytes_total in (None, cp.rdb_bytes_loaded), cp
        assert_equal(source, target)

        with connect(source) as client:
            live_traffic(client)
        cp = wait_caught_up(source, target)
        assert cp.full_resyncs == 1 and cp.applied_commands > 0
        assert_equal(source, target)
        with connect(target) as client:
            assert int(client.get("live:counter") or 0) == 200
            assert client.llen("live:list") == 200
    finally:
        for r in runners:
            r.stop()
        runners.clear()
        sources.close()
        targets.close()


@pytest.fixture
def pair(debian_servers: ServerSet) -> tuple[RedisProcess, RedisProcess]:
    source = debian_servers.start("source", extra=["--repl-backlog-size", "64mb"])
    target = debian_servers.start("target")
    return source, target


@pytest.mark.timeout(120)
def test_restart_continues_from_the_checkpoint(
    pair: tuple[RedisProcess, RedisProcess], runners: list[RunnerThread]
) -> None:
    source, target = pair
    build_dataset(source)
    first = RunnerThread(make_task(source, target))
    runners.append(first)
    wait_caught_up(source, target)
    with connect(source) as client:
        live_traffic(client, 50)
    wait_caught_up(source, target)
    assert first.stop() == 0
    cp = checkpoint(target)
    assert cp is not None and cp.state == "stopped"

    # the source moves on while the task is down; the restart continues (PSYNC), no full sync
    with connect(source) as client:
        for i in range(300):
            client.incr("gap:counter")
            client.rpush("gap:list", i)
            client.hincrby("gap:hash", "n", 2)
    second = RunnerThread(make_task(source, target))
    runners.append(second)
    cp = wait_caught_up(source, target)
    assert cp.full_resyncs == 1, cp
    assert second.runner.counters.full_syncs == 0
    with connect(target) as client:
        assert int(client.get("gap:counter") or 0) == 300
        assert client.lrange("gap:list", 0, -1) == [str(i).encode() for i in range(300)]
        assert int(client.hget("gap:hash", "n") or 0) == 600
    assert_equal(source, target)

    # afresh: a full sync although the checkpoint could continue
    assert second.stop() == 0
    third = RunnerThread(make_task(source, target, afresh=True))
    runners.append(third)
    cp = wait_caught_up(source, target)
    assert cp.full_resyncs == 2 and third.runner.counters.full_syncs == 1
    assert_equal(source, target)


@pytest.mark.timeout(120)
def test_backlog_overflow_and_source_restart_end_equal(
    debian_servers: ServerSet, runners: list[RunnerThread]
) -> None:
    source = debian_servers.start("source", extra=["--repl-backlog-size", "16kb"])
    target = debian_servers.start("target")
    build_dataset(source)
    first = RunnerThread(make_task(source, target))
    runners.append(first)
    wait_caught_up(source, target)
    assert first.stop() == 0

    # more than the backlog holds while the task is down, and a key deleted meanwhile: the
    # full resync must make the target equal (the deleted key gone from it too)
    with connect(source) as client:
        client.delete("list:big")
        for i in range(2000):
            client.set(f"overflow:{i}", "v" * 50)
    second = RunnerThread(make_task(source, target))
    runners.append(second)
    cp = wait_caught_up(source, target)
    assert cp.full_resyncs == 2 and second.runner.counters.full_syncs == 1, cp
    assert_equal(source, target)
    with connect(target) as client:
        assert not client.exists("list:big")

    # the source restarts empty (no persistence): a new replid, a full resync, an empty target
    source.restart()
    with connect(source) as client:
        client.set("after-restart", 1)
    cp = wait_caught_up(source, target)
    assert cp.full_resyncs == 3, cp
    assert_equal(source, target)
    with connect(target) as client:
        assert client.dbsize() == 2  # the key and the checkpoint
        assert not client.exists("str:small")


@pytest.mark.timeout(90)
def test_non_empty_target_policies(debian_servers: ServerSet, runners: list[RunnerThread]) -> None:
    source = debian_servers.start("source")
    target = debian_servers.start("target")
    with connect(source) as client:
        client.set("from-source", 1)
    with connect(target) as client:
        client.set("already-there", 1)

    refused = RunnerThread(make_task(source, target))
    refused.thread.join(20)
    assert refused.exit_code == 1
    cp = checkpoint(target)
    assert cp is not None and cp.state == "failed" and cp.last_error is not None
    assert "already holds 1 keys" in cp.last_error and "existing_keys" in cp.last_error
    with connect(target) as client:
        assert client.exists("already-there") and not client.exists("from-source")

    overwrite = RunnerThread(make_task(source, target, existing_keys="overwrite"))
    runners.append(overwrite)
    wait_caught_up(source, target)
    with connect(target) as client:
        assert client.exists("already-there") and client.exists("from-source")
    overwrite.stop()
    # a later full resync under overwrite deletes nothing either
    again = RunnerThread(make_task(source, target, existing_keys="overwrite", afresh=True))
    runners.append(again)
    cp = wait_caught_up(source, target)
    assert cp.full_resyncs == 2 and again.runner.counters.full_syncs == 1
    with connect(target) as client:
        assert client.exists("already-there") and client.exists("from-source")
    again.stop()

    with connect(target) as client:
        client.delete(checkpoint_key(TASK))  # a new task, as far as the target can tell
    flush = RunnerThread(make_task(source, target, existing_keys="flush"))
    runners.append(flush)
    wait_caught_up(source, target)
    with connect(target) as client:
        assert not client.exists("already-there") and client.exists("from-source")
    assert_equal(source, target)


# --------------------------------------------------------------------------- kill -9


@dataclass
class Workload:
    """INCR / LPUSH / HINCRBY on the source in a thread; counts what it did."""

    client: redis.Redis
    incrs: int = 0
    pushes: int = 0
    hincrs: int = 0
    error: BaseException | None = None

    def __post_init__(self) -> None:
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        try:
            while not self._stop.is_set():
                pipe = self.client.pipeline(transaction=False)
                pipe.incr("w:counter")
                pipe.lpush("w:list", self.pushes)
                pipe.hincrby("w:hash", "n", 3)
                pipe.execute()
                self.incrs += 1
                self.pushes += 1
                self.hincrs += 1
                if self.incrs % 10 == 0:
                    tx = self.client.pipeline(transaction=True)
                    tx.incr("w:tx")
                    tx.rpush("w:txlist", self.incrs)
                    tx.execute()
        except BaseException as exc:  # reported by the test
            self.error = exc

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(10)


POPULATED_KEYS = 10_000
KEY_SAVE_DELAY_US = 100


@pytest.mark.timeout(240)
def test_kill_9_at_random_moments_loses_and_doubles_nothing(
    debian_servers: ServerSet, tmp_path: Path
) -> None:
    # a full sync long enough to be killed in the middle (~2 s here, at least 1 s anywhere:
    # the source sleeps rdb-key-save-delay µs per key it streams), of a dataset small enough
    # for compare to check in under a second (300,000 keys took 18 s to compare)
    source = debian_servers.start(
        "source",
        extra=["--repl-backlog-size", "256mb", "--rdb-key-save-delay", str(KEY_SAVE_DELAY_US)],
    )
    target = debian_servers.start("target")
    with connect(source) as client:
        client.execute_command("DEBUG", "POPULATE", POPULATED_KEYS, "bulk", 32)
    config = write_sync_config(tmp_path / "sync.yaml", source, target)
    log = tmp_path / "sync.log"
    seed = int(os.environ.get("REPLWATCH_TEST_SEED", time.time_ns() % 1_000_000))
    rng = random.Random(seed)
    workload = Workload(connect(source))
    proc = start_sync_process(config, log)
    kills = {"starting": 0, "full_sync": 0, "incremental": 0}

    def kill_and_restart() -> None:
        nonlocal proc
        cp = checkpoint(target)
        kills[cp.state if cp is not None and cp.state in kills else "starting"] += 1
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(10)
        proc = start_sync_process(config, log)

    try:
        # phase 1: kills during the full sync (each restart begins it again)
        wait_for(
            lambda: (cp := checkpoint(target)) is not None and cp.state == "full_sync",
            30,
            "the full sync to start",
        )
        for _ in range(3):
            time.sleep(rng.uniform(0.05, 0.6))
            kill_and_restart()
        wait_for(
            lambda: (cp := checkpoint(target)) is not None and cp.resumable,
            120,
            "a full sync to finish",
        )
        first = checkpoint(target)
        assert first is not None
        full_resyncs_after_first = first.full_resyncs
        # phase 2: kills at random moments of the stream, the workload running throughout
        for _ in range(6):
            time.sleep(rng.uniform(0.05, 1.0))
            kill_and_restart()
        workload.stop()
        assert workload.error is None, workload.error
        cp = wait_caught_up(source, target, timeout=90)
        # the backlog held everything: every restart after the first finished full sync
        # continued the stream
        assert cp.full_resyncs == full_resyncs_after_first, (seed, cp, kills)
        with connect(target) as client:
            assert int(client.get("w:counter") or 0) == workload.incrs, seed
            assert client.llen("w:list") == workload.pushes, seed
            assert client.lrange("w:list", 0, 4) == [
                str(workload.pushes - 1 - i).encode() for i in range(5)
            ], seed
            assert int(client.hget("w:hash", "n") or 0) == 3 * workload.hincrs, seed
            assert int(client.get("w:tx") or 0) == workload.incrs // 10, seed
        assert_equal(source, target)
        assert kills["full_sync"] >= 1 and kills["incremental"] == 6, (seed, kills)
    finally:
        workload.stop()
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


# --------------------------------------------------------------------------- CLI


@pytest.mark.timeout(90)
def test_sync_run_and_status_cli(pair: tuple[RedisProcess, RedisProcess], tmp_path: Path) -> None:
    source, target = pair
    config = write_sync_config(tmp_path / "sync.yaml", source, target)
    unknown = cli("sync", "run", "-c", str(config), "--task", "nope")
    assert unknown.returncode == 2
    assert unknown.stderr.strip().count("\n") == 0 and "no task named nope" in unknown.stderr

    with connect(source) as client:
        client.set("cli", 1)
    proc = start_sync_process(config, tmp_path / "sync.log")
    try:
        wait_caught_up(source, target)
        status = cli("sync", "status", "-c", str(config))
        assert status.returncode == 0, status.stderr
        assert "incremental" in status.stdout and source.label in status.stdout
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(20) == 0
        cp = checkpoint(target)
        assert cp is not None and cp.state == "stopped"
        stopped = cli("sync", "status", "-c", str(config))
        assert stopped.returncode == 1 and "stopped" in stopped.stdout
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


@pytest.mark.timeout(90)
def test_write_mode_commands_copies_every_type(
    debian_servers: ServerSet, runners: list[RunnerThread]
) -> None:
    source = debian_servers.start("source")
    target = debian_servers.start("target")
    keys = build_dataset(source)
    runners.append(RunnerThread(make_task(source, target, write_mode="commands")))
    cp = wait_caught_up(source, target)
    assert cp.keys_loaded == keys
    assert_equal(source, target)
