"""A target that cannot take the data stops a sync task with a clear error, before the source
is asked for a snapshot where that is possible, never in a loop of flushes and forks; and the
state, lag and last error a task shows tell the truth meanwhile (issue 17, items 2, 3, 7, 8).

Real servers throughout. Forks of the source are counted with its INFO stats total_forks (a
full sync makes a source fork once: BGSAVE or a diskless child), so "no loop" is measured,
not assumed. A task here runs in a thread with a local report file, as `replwatch sync run
-c CONFIG` does (one test runs that very command); the supervisor's retry of a failed task
(every 60 s) is a new runner on the same target.
"""

from __future__ import annotations

import asyncio
import http.server
import io
import json
import re
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from prometheus_client import CollectorRegistry, generate_latest

from replwatch.config import Config, TLSConfig, config_from_data
from replwatch.exporter.sync_collector import SyncCollector
from replwatch.sync.task import SyncTaskRunner
from replwatch.sync.task_report import TaskReporter, read_report, report_path
from replwatch.tasks.status_cli import run_sync_status
from replwatch.tasks.watch import SyncStore, task_watchers

from .support.daemons import RunningDaemon, cli, value
from .support.datasets import connect
from .support.sentinels import SentinelProcess
from .support.servers import RedisProcess, ServerSet, free_port, wait_for, wait_synced
from .support.syncing import (
    TASK,
    RunnerThread,
    checkpoint,
    make_task,
    poll,
    source_position,
    start,
    wait_caught_up,
    write_checkpoint,
    write_sync_config,
)

MIB = 1 << 20
FAST = {"reconnect_min": "100ms", "reconnect_max": "200ms", "source_timeout": "2s"}


# --------------------------------------------------------------------------- helpers


def task_config(source: str, target: str, **options: Any) -> Config:
    return config_from_data(
        {
            "poll": {"interval": "1s", "timeout": "1s"},
            "sync": {
                "tasks": [{"name": TASK, "source": source, "target": target, **FAST, **options}]
            },
        }
    )


def forks(source: RedisProcess) -> int:
    return int(source.info("stats")["total_forks"])


class Running:
    """A task's runner in a thread, with the local report a `replwatch sync run` keeps."""

    def __init__(self, cfg: Config, state_dir: Path) -> None:
        self.runner = SyncTaskRunner(
            cfg.sync.tasks[0],
            TLSConfig(),
            io_timeout=2,
            report_path=report_path(state_dir, TASK),
        )
        self.exit_code: int | None = None
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        self.exit_code = self.runner.run()

    def stop(self) -> int | None:
        self.runner.stop()
        self.thread.join(20)
        assert not self.thread.is_alive(), "the task did not stop"
        return self.exit_code

    def ends(self, timeout: float = 20) -> int:
        """Its exit code once it stops on its own; fails when it is still retrying."""
        self.thread.join(timeout)
        if self.thread.is_alive():
            self.stop()
            raise AssertionError(f"the task did not stop on its own in {timeout:g}s: a loop")
        assert self.exit_code is not None
        return self.exit_code


@pytest.fixture
def running() -> Iterator[list[Running]]:
    started: list[Running] = []
    yield started
    for run in started:
        if run.thread.is_alive():
            run.stop()


def status(cfg: Config, state_dir: Path) -> tuple[int, str]:
    out, err = io.StringIO(), io.StringIO()
    code = run_sync_status(cfg, TASK, False, out, False, err=err, state_dir=state_dir)
    assert err.getvalue() == ""
    return code, out.getvalue()


def fill(source: RedisProcess, keys: int, size: int = 500, prefix: str = "k") -> None:
    """SETs through the replication stream (DEBUG POPULATE is not replicated)."""
    with connect(source) as client:
        value = "v" * size
        for start in range(0, keys, 2000):
            pipe = client.pipeline(transaction=False)
            for i in range(start, min(keys, start + 2000)):
                pipe.set(f"{prefix}:{i}", value)
            pipe.execute()


def small_target(servers: ServerSet, maxmemory: str) -> RedisProcess:
    return servers.start(
        "target", extra=["--maxmemory", maxmemory, "--maxmemory-policy", "noeviction"]
    )


# --------------------------------------------------------------------------- out of memory


@pytest.mark.timeout(60)
def test_a_target_that_cannot_hold_the_copy_stops_the_task_before_the_source_forks(
    debian_servers: ServerSet, tmp_path: Path, running: list[Running]
) -> None:
    """Issue 17 item 2 as reported: 60k x 500 B into maxmemory 20mb noeviction was 5 forks
    in 40 s, lag 0 exact, no last_error, `sync status` exit 0."""
    source = debian_servers.start("source")
    target = small_target(debian_servers, "20mb")
    with connect(source) as client:
        client.execute_command("DEBUG", "POPULATE", 60_000, "k", 500)
    cfg = task_config(source.url, target.url)
    before = forks(source)

    run = Running(cfg, tmp_path)
    running.append(run)
    assert run.ends() == 1
    assert forks(source) == before  # no snapshot was asked for
    cp = checkpoint(target)
    assert cp is not None and cp.state == "failed", cp
    assert cp.last_error is not None
    assert re.fullmatch(
        rf"target {target.label} cannot hold the copy \(maxmemory 20\.0 MiB, noeviction\): "
        r"[\d.]+ MiB free after the full sync's flush, about [\d.]+ MiB needed \(the source's "
        rf"used_memory_dataset\): raise maxmemory on {target.label} to at least [\d.]+ MiB "
        r"\(or free memory there\), then start the task again",
        cp.last_error,
    ), cp.last_error
    code, out = status(cfg, tmp_path)
    assert code == 1, out
    assert out.startswith(f"sync task {TASK}: failed  ")
    assert re.search(rf"last error\s+target {re.escape(target.label)} cannot hold the copy", out)

    # an eviction policy would evict synced keys instead of refusing them: the same refusal
    target.client().config_set("maxmemory-policy", "allkeys-lru")
    again = Running(cfg, tmp_path)
    running.append(again)
    assert again.ends() == 1
    cp = checkpoint(target)
    assert cp is not None and cp.last_error is not None
    assert "with allkeys-lru it would evict synced keys to make room" in cp.last_error
    assert forks(source) == before
    with connect(target) as client:
        assert client.dbsize() == 1  # the checkpoint only: nothing was loaded, nor flushed


@pytest.mark.timeout(90)
def test_a_target_that_evicts_keys_of_the_copy_stops_the_task(
    debian_servers: ServerSet, tmp_path: Path, running: list[Running]
) -> None:
    """A target with an eviction policy fits the copy at the start and evicts keys of it
    later, as the source grows (a native replica never evicts): the task stops with the
    count, marks the copy for a full sync, and no restart forks the source until maxmemory
    changed."""
    source = debian_servers.start("source")
    target = debian_servers.start(
        "target", extra=["--maxmemory", "8mb", "--maxmemory-policy", "allkeys-lru"]
    )
    fill(source, 1_000)
    cfg = task_config(source.url, target.url)
    before = forks(source)
    first = Running(cfg, tmp_path)
    running.append(first)
    wait_caught_up(source, target)
    fill(source, 30_000, prefix="more")  # ~15 MiB: the target evicts
    assert first.ends(30) == 1
    cp = checkpoint(target)
    assert cp is not None and cp.state == "failed" and cp.last_error is not None, cp
    found = re.fullmatch(
        rf"target {target.label} evicted ([\d,]+) keys while the task ran \(maxmemory 8\.0 "
        rf"MiB, allkeys-lru\): the copy is incomplete; raise maxmemory on {target.label} \(or "
        r"set maxmemory-policy noeviction there\), then start the task again \(it begins "
        r"with a full sync\)",
        cp.last_error,
    )
    assert found, cp.last_error
    assert int(found.group(1).replace(",", "")) > 0
    assert not cp.resumable  # an incomplete copy is not continued
    assert forks(source) == before + 1

    # the supervisor starts it again: refused before PSYNC while nothing changed
    second = Running(cfg, tmp_path)
    running.append(second)
    assert second.ends() == 1
    assert forks(source) == before + 1

    # room made: a full sync, and the copy is whole
    target.client().config_set("maxmemory", "0")
    third = Running(cfg, tmp_path)
    running.append(third)
    cp = wait_caught_up(source, target)
    assert cp.full_resyncs == 2
    with connect(target) as client:
        assert client.dbsize() == 31_001  # + the checkpoint
    assert third.stop() == 0


@pytest.mark.timeout(90)
def test_out_of_memory_during_the_snapshot_stops_the_task_and_no_new_start_forks_again(
    debian_servers: ServerSet, tmp_path: Path, running: list[Running]
) -> None:
    """The need cannot be estimated before (the task's user may not read INFO on the
    source): the load runs out of memory. The task stops (no retry loop), the unusable
    half-loaded copy is flushed so the failure is recorded on the target, and the next
    start is refused before PSYNC until maxmemory changed."""
    source = debian_servers.start("source")
    source.client().execute_command(
        "ACL", "SETUSER", "syncer", "on", ">syncer-pw", "~*", "&*", "+@all", "-info"
    )
    target = small_target(debian_servers, "20mb")
    with connect(source) as client:
        client.execute_command("DEBUG", "POPULATE", 60_000, "k", 500)
    cfg = task_config(f"redis://syncer:syncer-pw@{source.label}", target.url)
    before = forks(source)

    first = Running(cfg, tmp_path)
    running.append(first)
    assert first.ends() == 1
    assert forks(source) == before + 1
    cp = checkpoint(target)
    assert cp is not None and cp.state == "failed" and cp.last_error is not None, cp
    found = re.fullmatch(
        rf"target {target.label} ran out of memory \(maxmemory 20\.0 MiB, noeviction\) after "
        r"([\d,]+) of 60,000 keys of the snapshot \(the copy needs about ([\d.]+) MiB\): "
        rf"raise maxmemory on {target.label} \(or free memory there\), then start the task "
        "again",
        cp.last_error,
    )
    assert found, cp.last_error
    assert 0 < int(found.group(1).replace(",", "")) < 60_000
    assert float(found.group(2)) > 20
    assert (cp.oom_maxmemory, cp.oom_policy) == (20 * MIB, "noeviction")
    assert cp.oom_needed is not None and cp.oom_needed > 20 * MIB
    with connect(target) as client:
        assert client.dbsize() == 1  # the half-loaded snapshot flushed, the checkpoint kept
    view = poll(cfg.sync.tasks[0])
    assert view.state == "failed" and not view.running
    assert view.lag_seconds is not None and not view.lag_seconds_exact  # no copy: not 0

    # the supervisor starts it again: refused before PSYNC, maxmemory has not changed
    second = Running(cfg, tmp_path)
    running.append(second)
    assert second.ends() == 1
    assert forks(source) == before + 1
    cp = checkpoint(target)
    assert cp is not None and cp.last_error is not None
    assert "did not hold the copy in an earlier attempt (maxmemory 20.0 MiB" in cp.last_error

    # room made: the task syncs, and the shortfall is forgotten
    target.client().config_set("maxmemory", "0")
    third = Running(cfg, tmp_path)
    running.append(third)
    cp = wait_caught_up(source, target)
    assert (cp.oom_maxmemory, cp.oom_policy, cp.oom_needed) == (None, None, None)
    assert forks(source) == before + 2
    assert third.stop() == 0


@pytest.mark.timeout(90)
def test_the_checks_on_every_build(
    redis_servers: ServerSet, tmp_path: Path, running: list[Running]
) -> None:
    """INFO's field names (Valkey 8+ says server_mode) and the OOM / READONLY replies are the
    same on each build: a replica target and a copy that does not fit are refused without a
    fork, an out-of-memory load stops the task after one."""
    source = redis_servers.start("source")
    other = redis_servers.start("other")
    replica = redis_servers.start("replica", replica_of=other)
    target = small_target(redis_servers, "4mb")
    source.client().execute_command(
        "ACL", "SETUSER", "noinfo", "on", ">pw", "~*", "&*", "+@all", "-info"
    )
    with connect(source) as client:
        client.execute_command("DEBUG", "POPULATE", 20_000, "k", 500)
    wait_synced(replica, other)

    cases = [
        (replica, source.url, f"target {replica.label} is a read-only replica of {other.label}"),
        (target, source.url, f"target {target.label} cannot hold the copy (maxmemory 4.0 MiB"),
    ]
    for n, (into, source_url, expected) in enumerate(cases):
        run = Running(task_config(source_url, into.url), tmp_path / str(n))
        running.append(run)
        assert run.ends() == 1
        report = read_report(report_path(tmp_path / str(n), TASK))
        assert report is not None and report.last_error is not None
        assert report.last_error.startswith(expected), report.last_error
    assert forks(source) == 0

    # the need hidden (no INFO for the task's user): the load runs out of memory, once
    fresh = redis_servers.start(
        "fresh", extra=["--maxmemory", "4mb", "--maxmemory-policy", "noeviction"]
    )
    hidden = Running(task_config(f"redis://noinfo:pw@{source.label}", fresh.url), tmp_path)
    running.append(hidden)
    assert hidden.ends() == 1
    cp = checkpoint(fresh)
    assert cp is not None and cp.last_error is not None
    assert cp.last_error.startswith(f"target {fresh.label} ran out of memory (maxmemory 4.0 MiB")
    assert forks(source) == 1


@pytest.mark.timeout(60)
def test_the_full_sync_flush_frees_the_old_data_before_the_snapshot_loads(
    debian_servers: ServerSet, runners: list[RunnerThread]
) -> None:
    """A target that flushes lazily (lazyfree-lazy-user-flush yes, Valkey 8's default) would
    free the old data in the background while the snapshot loads: the memory check before
    PSYNC counts on it being gone, and after an out-of-memory stop's flush the checkpoint
    write was refused now and then (the test above, on Valkey). The task flushes with
    FLUSHALL SYNC: the target's lazily freed count does not move."""
    source = debian_servers.start("source")
    target = debian_servers.start("target", extra=["--lazyfree-lazy-user-flush", "yes"])
    with connect(target) as client:
        client.execute_command("DEBUG", "POPULATE", 5000, "old", 64)
    with connect(source) as client:
        client.execute_command("DEBUG", "POPULATE", 2000, "new", 64)
    before = int(target.info("memory")["lazyfreed_objects"])
    start(make_task(source, target, existing_keys="flush"), runners)
    wait_caught_up(source, target)
    with connect(target) as client:
        assert client.get("old:0") is None and client.get("new:0") is not None
    assert int(target.info("memory")["lazyfreed_objects"]) == before


# --------------------------------------------------------------------------- replicas


@pytest.mark.timeout(90)
def test_a_replica_target_stops_the_task_at_once_and_status_says_why(
    debian_servers: ServerSet, tmp_path: Path, running: list[Running]
) -> None:
    """Issue 17 item 3: a read-only replica as the target cost the source a fork per retry,
    and `sync status` said "unknown …, last error -" (the replica refuses the checkpoint's
    HSET): now `sync run` exits 1 before PSYNC and `sync status -c` shows the error from the
    task's local report."""
    source = debian_servers.start("source")
    other = debian_servers.start("other")
    target = debian_servers.start("target", replica_of=other)
    wait_synced(target, other)
    with connect(source) as client:
        client.set("k", 1)
    config = write_sync_config(
        tmp_path / "sync.yaml", source, target, top={"poll": {"timeout": "1s"}}, **FAST
    )
    before = forks(source)

    run = cli("sync", "run", "-c", str(config), "--task", TASK)
    assert run.returncode == 1, run.stderr
    assert f"target {target.label} is a read-only replica of {other.label}" in run.stderr
    assert "Traceback" not in run.stderr
    assert forks(source) == before
    shown = cli("sync", "status", "-c", str(config))
    assert shown.returncode == 1, shown.stdout
    assert f"sync task {TASK}: failed" in shown.stdout
    assert re.search(r"last error\s+target \S+ is a read-only replica of", shown.stdout)

    # a writable replica takes the writes, but its master would wipe them: refused too
    target.client().config_set("replica-read-only", "no")
    cfg = task_config(source.url, target.url)
    writable = Running(cfg, tmp_path / "w")
    running.append(writable)
    assert writable.ends() == 1
    report = read_report(report_path(tmp_path / "w", TASK))
    assert report is not None and report.state == "failed" and report.last_error is not None
    assert f"is a writable replica of {other.label}: its master would" in report.last_error
    assert forks(source) == before


@pytest.mark.timeout(60)
def test_a_target_that_becomes_a_replica_stops_the_task_with_its_reason(
    debian_servers: ServerSet, tmp_path: Path, running: list[Running]
) -> None:
    source = debian_servers.start("source")
    other = debian_servers.start("other")
    target = debian_servers.start("target")
    cfg = task_config(source.url, target.url)
    run = Running(cfg, tmp_path)
    running.append(run)
    wait_caught_up(source, target)

    target.client().replicaof(other.host, other.port)  # (it drops the copy: other is empty)
    with connect(source) as client:
        client.set("after", 1)
    assert run.ends() == 1
    report = read_report(report_path(tmp_path, TASK))
    assert report is not None and report.state == "failed", report
    assert report.last_error == (
        f"target {target.label} refused a write: it is a read-only replica of {other.label} "
        f"now (READONLY): point the task's target at a master (or run REPLICAOF NO ONE on "
        f"{target.label}), then start the task again"
    )
    code, out = status(cfg, tmp_path)
    assert code == 1
    assert f"sync task {TASK}: failed" in out and "read-only replica of" in out


@pytest.mark.timeout(60)
def test_the_daemon_shows_a_failure_the_target_could_not_record(
    debian_servers: ServerSet, tmp_path: Path
) -> None:
    """`replwatch run` merges its task processes' local reports into its metrics: a task
    whose target (a replica) refuses the checkpoint's write is `failed`, not `unknown`."""
    source = debian_servers.start("source")
    other = debian_servers.start("other")
    target = debian_servers.start("target", replica_of=other)
    port = free_port()
    config = tmp_path / "daemon.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "exporter": {"listen": f"127.0.0.1:{port}"},
                "poll": {"interval": "200ms", "timeout": "150ms"},
                "sync": {"tasks": [{"name": TASK, "source": source.url, "target": target.url}]},
            }
        )
    )
    with RunningDaemon(config, port) as daemon:

        def failed() -> bool:
            status, text = daemon.fetch("/metrics")
            return (
                status == 200
                and value(text, "replwatch_sync_state", task=TASK, state="failed") == 1
                and value(text, "replwatch_sync_last_error_info", task=TASK, reason="task_failed")
                == 1
            )

        wait_for(failed, 20, "the daemon to show the task failed")
        assert "is a read-only replica of" in daemon.log_text()
    assert forks(source) == 0
    assert (tmp_path / "replwatch-state" / "sync" / f"{TASK}.json").exists()


# --------------------------------------------------------------------------- full resync


@pytest.mark.timeout(120)
def test_a_full_resync_says_why_and_a_good_copy_is_not_flushed_for_one_that_cannot_fit(
    debian_servers: ServerSet, tmp_path: Path, running: list[Running]
) -> None:
    """Issue 17 item 7 (why a full resync happened) and the end of item 2 (after a backlog
    overflow a good copy was flushed for a snapshot the target could not hold)."""
    source = debian_servers.start("source", extra=["--repl-backlog-size", "16kb"])
    target = small_target(debian_servers, "8mb")
    fill(source, 100, prefix="first")
    cfg = task_config(source.url, target.url)
    first = Running(cfg, tmp_path)
    running.append(first)
    wait_caught_up(source, target)
    assert first.stop() == 0

    fill(source, 20_000)  # ~10 MiB: far past the 16 KiB backlog, more than the target holds
    before = forks(source)
    second = Running(cfg, tmp_path)
    running.append(second)
    assert second.ends() == 1
    assert forks(source) == before + 1  # it answered +FULLRESYNC: one fork, not a loop
    cp = checkpoint(target)
    assert cp is not None and cp.state == "failed", cp
    assert cp.full_resync_reason is not None
    assert "the source's backlog no longer holds the copy's position" in cp.full_resync_reason
    assert f"the backlog of {source.label} holds offsets " in cp.full_resync_reason
    assert "(repl-backlog-size 16.0 KiB)" in cp.full_resync_reason
    assert cp.last_error is not None and "cannot hold the copy" in cp.last_error
    assert cp.resumable  # the good copy and its position stay
    with connect(target) as client:
        assert client.dbsize() == 101 and client.exists("first:99")

    third = Running(cfg, tmp_path)  # the supervisor's retry: refused before PSYNC
    running.append(third)
    assert third.ends() == 1
    assert forks(source) == before + 1

    target.client().config_set("maxmemory", "0")
    fourth = Running(cfg, tmp_path)
    running.append(fourth)
    cp = wait_caught_up(source, target)
    assert cp.full_resync_reason is not None and "backlog no longer holds" in cp.full_resync_reason
    assert cp.last_error is not None
    assert cp.last_error.startswith("full resync: the source's backlog no longer holds")
    code, out = status(cfg, tmp_path)
    assert code == 0, out
    assert re.search(r"full resync reason\s+the source's backlog no longer holds", out)
    assert fourth.stop() == 0

    source.restart()  # no persistence: empty, a new replication history
    fill(source, 10, prefix="after")
    fifth = Running(cfg, tmp_path)
    running.append(fifth)
    cp = wait_caught_up(source, target)
    # (the replid its INFO showed; the first full sync after a start gives it another one)
    assert cp.full_resync_reason is not None
    assert f"the source {source.label} " in cp.full_resync_reason
    assert " replication history (replid " in cp.full_resync_reason
    assert "backlog" not in cp.full_resync_reason
    assert fifth.stop() == 0


# --------------------------------------------------------------------------- not Redis


class HttpServer:
    """A real HTTP server (Python's http.server) on an ephemeral port."""

    def __init__(self) -> None:
        self.server = http.server.ThreadingHTTPServer(
            ("127.0.0.1", 0), http.server.BaseHTTPRequestHandler
        )
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    @property
    def label(self) -> str:
        return f"127.0.0.1:{self.port}"

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def http_server() -> Iterator[HttpServer]:
    server = HttpServer()
    yield server
    server.close()


@pytest.mark.timeout(60)
def test_a_server_that_is_not_redis_stops_the_task(
    debian_servers: ServerSet, tmp_path: Path, running: list[Running], http_server: HttpServer
) -> None:
    """Issue 17 item 8: an HTTP server as the source gave "Broken pipe" in the log, retried
    for ever; its answer to PING is checked now, on either side, and a Sentinel is named."""
    redis_side = debian_servers.start("redis")
    web = f"redis://{http_server.label}"

    as_source = Running(task_config(web, redis_side.url), tmp_path / "s")
    running.append(as_source)
    assert as_source.ends() == 1
    cp = checkpoint(redis_side)
    assert cp is not None and cp.state == "failed"
    assert cp.last_error == (
        f"source {http_server.label} is not a Redis server (answered '<!DOCTYPE HTML>' to PING)"
    )

    as_target = Running(task_config(redis_side.url, web), tmp_path / "t")
    running.append(as_target)
    assert as_target.ends() == 1
    report = read_report(report_path(tmp_path / "t", TASK))
    assert report is not None and report.state == "failed"
    assert report.last_error == (
        f"target {http_server.label} is not a Redis server (answered '<!DOCTYPE HTML>' to PING)"
    )

    # a Sentinel answers PING like Redis, and says what it is in INFO server
    sentinel = SentinelProcess(tmp_path, 0, "m", redis_side, quorum=1)
    try:
        for n, (source_url, target_url, side) in enumerate(
            [
                (f"redis://{sentinel.address}", redis_side.url, "source"),
                (redis_side.url, f"redis://{sentinel.address}", "target"),
            ]
        ):
            run = Running(task_config(source_url, target_url), tmp_path / f"sentinel-{n}")
            running.append(run)
            assert run.ends() == 1
            report = read_report(report_path(tmp_path / f"sentinel-{n}", TASK))
            assert report is not None and report.last_error is not None
            assert report.last_error.startswith(
                f"{side} {sentinel.address} is a Redis Sentinel, not a data server"
            ), report.last_error
    finally:
        sentinel.stop()
    assert forks(redis_side) == 0


# --------------------------------------------------------------------------- the monitor's view


@pytest.mark.timeout(60)
def test_state_lag_and_last_error_tell_the_truth_in_every_state(
    debian_servers: ServerSet, tmp_path: Path
) -> None:
    """A full sync that stopped writing its checkpoint a minute ago is not running, and its
    lag is at least that minute (issue 17: "lag 0 B, 0 s exact" and exit 0 on an idle
    source); a failure the target could not record shows from the task's local report."""
    source = debian_servers.start("source")
    target = debian_servers.start("target")
    replid, offset = source_position(source)
    now_ms = int(time.time() * 1000)
    write_checkpoint(
        target.client(),
        TASK,
        source.label,
        state="full_sync",
        replid=replid,
        offset=offset,
        full_sync_started_at=now_ms - 60_000,
        full_sync_finished_at="",
        updated_at=now_ms - 59_000,
        rdb_bytes_total=0,
    )
    cfg = task_config(source.url, target.url)
    view = poll(cfg.sync.tasks[0])
    assert view.state == "full_sync"
    assert view.lag_bytes == 0  # nothing written since the snapshot, its size unknown
    assert view.lag_seconds is not None and view.lag_seconds >= 60
    assert not view.lag_seconds_exact and not view.lag_bytes_exact
    assert view.stale and not view.running
    code, out = status(cfg, tmp_path)
    assert code == 1
    assert f"sync task {TASK}: full_sync (stale: not running)" in out
    # a lower bound both ways: the diskless snapshot's size is unknown (issue 21: not
    # "0 B (0 bytes)")
    assert re.search(r"lag\s+>=0 bytes, >=6\d\.\d\ds\n", out), out

    # the task failed and the target refused the record: the report is newer, it wins
    TaskReporter(report_path(tmp_path, TASK), TASK).write(
        "failed", int(time.time() * 1000), f"target {target.label} ran out of memory (…)"
    )
    code, out = status(cfg, tmp_path)
    assert code == 1
    assert f"sync task {TASK}: failed" in out
    assert re.search(r"last error\s+target \S+ ran out of memory", out)
    as_json = io.StringIO()
    run_sync_status(cfg, TASK, True, as_json, False, state_dir=tmp_path)
    [shown] = json.loads(as_json.getvalue())["tasks"]
    assert shown["state"] == "failed" and "ran out of memory" in shown["last_error"]
    # the daemon's metrics say the same (its watchers merge the report too)
    store = SyncStore()
    store.expect([TASK])
    [watcher] = task_watchers(cfg, cfg.sync.tasks[0], state_dir=tmp_path)

    async def one_poll() -> None:
        try:
            store.put(await watcher.poll())
        finally:
            watcher.close()

    asyncio.run(one_poll())
    registry = CollectorRegistry()
    registry.register(SyncCollector(store))
    text = generate_latest(registry).decode()
    assert f'replwatch_sync_state{{state="failed",task="{TASK}"}} 1.0' in text
    assert f'replwatch_sync_last_error_info{{reason="task_failed",task="{TASK}"}} 1.0' in text

    # the task runs again and writes its checkpoint: newer than the report, it wins
    write_checkpoint(target.client(), TASK, source.label, replid=replid, offset=offset)
    code, out = status(cfg, tmp_path)
    assert code == 0 and f"sync task {TASK}: incremental" in out, out
