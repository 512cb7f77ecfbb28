"""High availability of sync tasks (ha: true): two processes run the same task, exactly one
holds the lease in the target and writes; kill -9 or SIGSTOP of the holder hands the task to
the other within the lease time, which resumes from the checkpoint; a holder that lost its
lease never writes again (the fencing token is checked under WATCH with every batch)."""

from __future__ import annotations

import contextlib
import signal
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from replwatch.config import TLSConfig, config_from_data, parse_redis_url
from replwatch.errors import ConfigError
from replwatch.sync.checkpoint import Checkpoint, checkpoint_key
from replwatch.sync.lease import ACQUIRE_SCRIPT, Fence, LeaseLost, parse_acquire
from replwatch.sync.writer import TargetLink

from .support.daemons import RunningDaemon
from .support.datasets import connect
from .support.servers import RedisProcess, ServerSet, wait_for
from .support.syncing import TASK, assert_equal, checkpoint, start_sync_process, wait_caught_up

LEASE = 2.0


def acquire(target: RedisProcess, holder: str) -> object:
    with connect(target) as client:
        return parse_acquire(
            client.eval(ACQUIRE_SCRIPT, 1, checkpoint_key(TASK), holder, int(LEASE * 1000))
        )


def test_a_lease_is_exclusive_until_it_lapses_and_a_takeover_fences_the_old_holder(
    debian_servers: ServerSet,
) -> None:
    target = debian_servers.start("target")
    first = acquire(target, "a")
    assert first.acquired and first.token == 1
    again = acquire(target, "b")
    assert not again.acquired and again.holder == "a" and 0 < again.remaining <= LEASE
    assert acquire(target, "a").acquired  # the holder may take it again (restart)

    endpoint = parse_redis_url(target.url)
    fence = Fence(checkpoint_key(TASK), 2, "a")
    link = TargetLink(endpoint, TLSConfig(), 5, 8, fence=fence)
    try:
        link.select(0)
        link.write("SET", "written-by-a", "1")
        # the lease lapses (the holder paused longer than the lease) and b takes over
        with connect(target) as client:
            client.hset(checkpoint_key(TASK), "lease_until", 0)
        took = acquire(target, "b")
        assert took.acquired and took.token == 3
        with pytest.raises(LeaseLost):
            link.write("SET", "written-by-a", "2")
        with pytest.raises(LeaseLost):
            link.write_all([("FLUSHALL",)])
        # the takeover lands after a's WATCH: EXEC aborts, the check then sees the new token
        b = Fence(checkpoint_key(TASK), 3, "b")
        link.fence = b
        link._check_fence(b, 0)  # a WATCH under b's (current) token
        with connect(target) as client:
            client.hset(checkpoint_key(TASK), "lease_until", 0)
        assert acquire(target, "c").acquired  # token 4
        link.conn.send(
            b"*1\r\n$5\r\nMULTI\r\n*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$1\r\nx\r\n*1\r\n$4\r\nEXEC\r\n"
        )
        assert [link._next_reply() for _ in range(3)][-1] is None  # aborted by WATCH
        with pytest.raises(LeaseLost):
            link.write("SET", "k", "y")
    finally:
        link.close()
    with connect(target) as client:
        assert client.get("written-by-a") == b"1"
        assert client.get("k") is None
        cp = Checkpoint.from_hash(TASK, client.hgetall(checkpoint_key(TASK)))
    assert cp is not None and cp.lease_holder == "c" and cp.lease_token == 4


# --------------------------------------------------------------------------- two processes


class Writer:
    """INCRs counters on the source from a thread until stopped; counts what it did."""

    def __init__(self, source: RedisProcess) -> None:
        self.source = source
        self.done = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        with connect(self.source) as client:
            while not self._stop.is_set():
                pipe = client.pipeline(transaction=False)
                for i in range(20):
                    pipe.incr(f"counter:{i % 5}")
                    pipe.rpush("log", self.done + i)
                pipe.execute()
                self.done += 20

    def stop(self) -> int:
        self._stop.set()
        self._thread.join(10)
        return self.done


def holder_pid(target: RedisProcess) -> int | None:
    cp = checkpoint(target)
    if cp is None or cp.lease_holder is None or not cp.lease_until:
        return None
    return int(cp.lease_holder.split(":")[-2])


def check_exact(source: RedisProcess, target: RedisProcess, writes: int) -> None:
    with connect(target) as client:
        total = sum(int(client.get(f"counter:{i}") or 0) for i in range(5))
        assert total == writes  # nothing lost, nothing applied twice
        assert client.llen("log") == writes
    assert_equal(source, target)


@pytest.fixture
def two_processes(
    debian_servers: ServerSet, tmp_path: Path
) -> Iterator[tuple[RedisProcess, RedisProcess, list[subprocess.Popen[bytes]], list[Path]]]:
    source = debian_servers.start("source", extra=["--repl-backlog-size", "64mb"])
    target = debian_servers.start("target")
    cfg = tmp_path / "c.yaml"
    task = {"name": TASK, "source": source.url, "target": target.url, "ha": True, "lease": "2s"}
    cfg.write_text(yaml.safe_dump({"sync": {"tasks": [task]}}))
    procs: list[subprocess.Popen[bytes]] = []
    logs = [tmp_path / "a.log", tmp_path / "b.log"]
    try:
        for log in logs:
            procs.append(start_sync_process(cfg, log))
        yield source, target, procs, logs
    finally:
        for proc in procs:
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(signal.SIGCONT)
            proc.kill()
            proc.wait()


def holder_and_standby(
    source: RedisProcess, target: RedisProcess, procs: list[subprocess.Popen[bytes]]
) -> tuple[subprocess.Popen[bytes], subprocess.Popen[bytes]]:
    """Once one process holds the lease and the task caught up: (holder, the other)."""
    pids = {p.pid for p in procs}
    wait_for(lambda: holder_pid(target) in pids, 20, "one process to take the lease")
    wait_caught_up(source, target)
    first = holder_pid(target)
    holder = next(p for p in procs if p.pid == first)
    return holder, next(p for p in procs if p is not holder)


@pytest.mark.timeout(120)
def test_kill_9_of_the_holder_hands_the_task_over_and_it_resumes_exactly(
    two_processes: tuple[RedisProcess, RedisProcess, list[subprocess.Popen[bytes]], list[Path]],
) -> None:
    source, target, procs, logs = two_processes
    holder, other = holder_and_standby(source, target, procs)
    writer = Writer(source)
    try:
        wait_for(lambda: writer.done >= 2000, 20, "writes to flow")
        holder.kill()  # kill -9: no release, the lease must lapse
        holder.wait()
        wait_for(lambda: holder_pid(target) == other.pid, LEASE + 8, "the other to take over")
        wait_for(lambda: writer.done >= 6000, 20, "writes to go on")
    finally:
        writes = writer.stop()
    cp = wait_caught_up(source, target)
    assert cp.full_resyncs == 1  # resumed from the checkpoint, not synced again
    assert cp.lease_token == 2
    check_exact(source, target, writes)
    standby = logs[[p.pid for p in procs].index(other.pid)].read_text()
    assert "standing by" in standby and "holding the lease (token 2)" in standby


@pytest.mark.timeout(120)
def test_a_paused_holder_loses_the_lease_and_never_writes_again(
    two_processes: tuple[RedisProcess, RedisProcess, list[subprocess.Popen[bytes]], list[Path]],
) -> None:
    source, target, procs, logs = two_processes
    holder, other = holder_and_standby(source, target, procs)
    writer = Writer(source)
    try:
        wait_for(lambda: writer.done >= 2000, 20, "writes to flow")
        holder.send_signal(signal.SIGSTOP)  # paused with the stream in its socket buffers
        wait_for(lambda: holder_pid(target) == other.pid, LEASE + 8, "the other to take over")
        wait_for(lambda: writer.done >= 6000, 20, "writes to go on")
        holder.send_signal(signal.SIGCONT)  # it wakes up believing it holds the lease
        log = logs[[p.pid for p in procs].index(holder.pid)]
        wait_for(lambda: "lost" in log.read_text(), 15, "the old holder to see it lost")
        wait_for(lambda: writer.done >= 8000, 20, "more writes")
    finally:
        writes = writer.stop()
    cp = wait_caught_up(source, target)
    assert holder.poll() is None  # it stands by, it did not exit
    assert cp.lease_holder is not None and cp.lease_holder.split(":")[-2] == str(other.pid)
    check_exact(source, target, writes)  # had the old holder written, counters would be off


@pytest.mark.timeout(120)
def test_two_daemons_with_the_same_task_run_it_once_and_hand_it_over(
    debian_servers: ServerSet, tmp_path: Path
) -> None:
    """`replwatch run` twice with one config: one task process writes, the other stands by;
    kill -9 of the writing daemon (its task process dies with it) hands the task over."""
    source = debian_servers.start("source", extra=["--repl-backlog-size", "64mb"])
    target = debian_servers.start("target")
    cfg = tmp_path / "c.yaml"
    task = {"name": TASK, "source": source.url, "target": target.url, "ha": True, "lease": "2s"}
    cfg.write_text(
        yaml.safe_dump({"exporter": {"listen": "127.0.0.1:0"}, "sync": {"tasks": [task]}})
    )
    daemons: list[RunningDaemon] = []
    try:
        for name in ("d1", "d2"):
            daemons.append(RunningDaemon(cfg, log=tmp_path / f"{name}.log"))
        children = {
            d.pid: wait_for(lambda d=d: d.children(), 15, "a task process") for d in daemons
        }
        all_children = {pid for pids in children.values() for pid in pids}
        wait_for(lambda: holder_pid(target) in all_children, 20, "one task process to hold")
        wait_caught_up(source, target)
        first = holder_pid(target)
        writing = next(d for d in daemons if first in children[d.pid])
        standing = next(d for d in daemons if d is not writing)
        writer = Writer(source)
        try:
            wait_for(lambda: writer.done >= 2000, 20, "writes to flow")
            writing.proc.kill()  # kill -9: its task process dies with it (parent-death signal)
            writing.proc.wait()
            wait_for(
                lambda: holder_pid(target) in children[standing.pid],
                LEASE + 8,
                "the other daemon's task to take over",
            )
            wait_for(lambda: writer.done >= 6000, 20, "writes to go on")
        finally:
            writes = writer.stop()
        cp = wait_caught_up(source, target)
        assert cp.full_resyncs == 1
        check_exact(source, target, writes)
    finally:
        for daemon in daemons:
            daemon.stop(grace=0)  # SIGKILL, and its task processes


def test_ha_is_refused_with_a_cluster_target() -> None:
    task = {
        "name": "t",
        "source": "redis://127.0.0.1:7000",
        "target": {"cluster": {"startup_nodes": ["127.0.0.1:7001"]}},
        "ha": True,
    }
    with pytest.raises(ConfigError) as err:
        config_from_data({"sync": {"tasks": [task]}})
    assert "sync.tasks[0].ha: a task with a cluster target cannot be fenced" in str(err.value)
