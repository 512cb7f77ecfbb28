"""The syncer as the source and the daemon see it: it acknowledges what the target holds
(WAIT on the source counts it, INFO shows its offset), big keys go as plain commands, a
source that cannot serve a replica yet (-NOMASTERLINK) is retried, and `replwatch run`
supervises task processes (restarts one killed -9, exports sync metrics, stops them all)."""

from __future__ import annotations

import select
import signal
import subprocess
import threading
import time
from pathlib import Path

import pytest
import yaml

from replwatch.config import TLSConfig
from replwatch.sync.reader import Continue, SourceLink
from replwatch.sync.task import SyncTaskRunner
from replwatch.sync.writer import TargetLink

from .support.daemons import RunningDaemon, sample_value
from .support.datasets import connect
from .support.servers import ServerSet, closed_port, require_build, wait_for
from .support.syncing import (
    TASK,
    RunnerThread,
    assert_equal,
    checkpoint,
    make_task,
    source_position,
    start,
    start_sync_process,
    wait_caught_up,
    write_sync_config,
)


@pytest.mark.timeout(60)
def test_source_sees_the_applied_offset_and_wait_counts_the_syncer(
    debian_servers: ServerSet, runners: list[RunnerThread]
) -> None:
    source = debian_servers.start("source")
    target = debian_servers.start("target")
    start(make_task(source, target), runners)
    wait_caught_up(source, target)

    def acked_offset() -> int | None:
        with connect(source) as client:
            line = client.info("replication").get("slave0")
        return int(line["offset"]) if isinstance(line, dict) else None

    # without WAIT: the periodic ACK (about every second) carries the applied offset
    with connect(source) as client:
        client.set("quiet", "1")
    _replid, quiet_offset = source_position(source)
    wait_for(lambda: acked_offset() == quiet_offset, 5, "the periodic ACK of the new offset")
    with connect(source) as client:
        client.set("k", "v")
        # WAIT sends REPLCONF GETACK; the syncer applies what came before and answers at once
        started = time.monotonic()
        assert client.execute_command("WAIT", 1, 5000) == 1
        assert time.monotonic() - started < 2.0
    with connect(target) as client:
        assert client.get("k") == b"v"  # acknowledged means applied on the target
    _replid, offset = source_position(source)
    wait_for(lambda: acked_offset() == offset, 5, "the source's INFO to show the ACKed offset")
    cp = checkpoint(target)
    assert cp is not None and cp.offset == offset


@pytest.mark.timeout(90)
def test_big_keys_are_written_as_plain_commands(
    debian_servers: ServerSet, runners: list[RunnerThread]
) -> None:
    source = debian_servers.start("source")
    target = debian_servers.start("target")
    with connect(source) as client:
        client.rpush("big:list", *[f"item-{i}" for i in range(5000)])
        client.sadd("big:set", *[f"m-{i}" for i in range(5000)])
        client.hset("big:hash", mapping={f"f-{i}": f"v-{i}" for i in range(3000)})
        client.zadd("big:zset", {f"z-{i}": i / 3 for i in range(3000)})
        for i in range(2000):
            client.xadd("big:stream", {"n": i, "pad": "x" * 20})
        client.xgroup_create("big:stream", "g", id="0")
        client.xreadgroup("g", "c1", {"big:stream": ">"}, count=500)
        client.pexpire("big:hash", 900_000)
        client.set("small", "s")
    # every value above 1 KiB goes as commands (RPUSH/SADD/HSET/ZADD/XADD … in chunks)
    task = make_task(source, target, big_key_bytes="1kb")
    start(task, runners)
    cp = wait_caught_up(source, target)
    assert cp.keys_loaded == 6
    assert_equal(source, target)
    grace_ms = task.expire_grace * 1000  # the target keeps a key that much longer
    with connect(target) as client:
        assert client.object("encoding", "big:list") == b"quicklist"
        assert 890_000 + grace_ms < client.pttl("big:hash") <= 900_000 + grace_ms
        assert client.xpending("big:stream", "g")["pending"] == 500


@pytest.mark.timeout(90)
def test_source_without_its_master_is_retried(
    debian_servers: ServerSet, runners: list[RunnerThread]
) -> None:
    # a source that is itself a replica of a master that is not there answers PSYNC with
    # -NOMASTERLINK: the task retries (with backoff) and syncs once the source can serve
    source = debian_servers.start("source", extra=["--replicaof", "127.0.0.1", str(closed_port())])
    target = debian_servers.start("target")
    r = start(make_task(source, target, reconnect_min="200ms", reconnect_max="500ms"), runners)

    def retried() -> bool:
        cp = checkpoint(target)
        return (
            cp is not None and cp.last_error is not None and "NOMASTERLINK" in cp.last_error.upper()
        )

    wait_for(retried, 15, "the task to record -NOMASTERLINK and retry")
    assert r.runner.counters.sessions >= 1 and r.runner.counters.full_syncs == 0
    with connect(source) as client:
        client.execute_command("REPLICAOF", "NO", "ONE")
        client.set("now-a-master", 1)
    wait_caught_up(source, target)
    with connect(target) as client:
        assert client.get("now-a-master") == b"1"


# --------------------------------------------------------------------------- supervision


@pytest.mark.timeout(180)
def test_a_burst_of_stop_signals_stops_a_task_cleanly(
    debian_servers: ServerSet, tmp_path: Path
) -> None:
    """Two SIGTERMs are the rule when a daemon stops its tasks (the kernel's parent-death
    signal as the supervisor's thread ends, then the supervisor's own). Taken in a Python
    signal handler, the second ran inside the first while it held a threading.Event's lock:
    the task hung until the supervisor's SIGKILL, its checkpoint left "incremental". Here a
    task in its stream gets bursts of SIGTERM and SIGINT a millisecond or so apart: it exits
    0, says "stopping" once, and its checkpoint says "stopped"."""
    source = debian_servers.start("source")
    target = debian_servers.start("target")
    config = write_sync_config(tmp_path / "sync.yaml", source, target)
    for attempt in range(8):
        log = tmp_path / f"task-{attempt}.log"
        proc = start_sync_process(config, log)
        try:
            with connect(source) as client:
                client.incr("attempts")
            wait_caught_up(source, target)
            for i in range(6):
                proc.send_signal(signal.SIGTERM if i % 2 == 0 else signal.SIGINT)
                time.sleep(0.0005 * i)
            assert proc.wait(15) == 0, log.read_text()
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        assert log.read_text().count("stopping (signal") == 1, log.read_text()
        cp = checkpoint(target)
        assert cp is not None and cp.state == "stopped", cp


@pytest.mark.timeout(120)
def test_daemon_supervises_task_processes(debian_servers: ServerSet, tmp_path: Path) -> None:
    source = debian_servers.start("source", extra=["--repl-backlog-size", "32mb"])
    target = debian_servers.start("target")
    with connect(source) as client:
        client.set("before", 1)
    cfg = tmp_path / "c.yaml"
    cfg.write_text(
        yaml.safe_dump(
            {
                "exporter": {"listen": "127.0.0.1:0"},
                "poll": {"interval": "200ms", "timeout": "150ms"},
                "sync": {"tasks": [{"name": TASK, "source": source.url, "target": target.url}]},
            }
        )
    )
    daemon = RunningDaemon(cfg)  # 127.0.0.1:0: the port it bound is in its log
    try:
        wait_caught_up(source, target)

        def metrics_show_incremental() -> bool:
            s = daemon.samples()
            return (
                sample_value(s, "replwatch_sync_state", task=TASK, state="incremental") == 1
                and sample_value(s, "replwatch_sync_process_up", task=TASK) == 1
                and sample_value(s, "replwatch_sync_lag_bytes", task=TASK) == 0
            )

        wait_for(metrics_show_incremental, 10, "sync metrics for the running task")
        children = daemon.children()
        assert len(children) == 1, children

        # kill -9 the task: the supervisor starts it again, it continues from the checkpoint
        subprocess.run(["kill", "-9", str(children[0])], check=True)
        with connect(source) as client:
            for _ in range(100):
                client.incr("during-restart")

        def restarted() -> bool:
            s = daemon.samples()
            return (
                sample_value(s, "replwatch_sync_process_restarts_total", task=TASK) or 0
            ) >= 1 and (sample_value(s, "replwatch_sync_process_up", task=TASK) == 1)

        wait_for(restarted, 15, "the supervisor to restart the task")
        cp = wait_caught_up(source, target)
        assert cp.full_resyncs == 1  # continued, not synced again
        with connect(target) as client:
            assert client.get("during-restart") == b"100"
        new_children = daemon.children()
        assert len(new_children) == 1 and new_children != children

        daemon.proc.send_signal(signal.SIGTERM)
        assert daemon.proc.wait(30) == 0
        wait_for(
            lambda: (
                subprocess.run(["kill", "-0", str(new_children[0])], check=False).returncode != 0
            ),
            10,
            "the task process to be gone",
        )
        cp = checkpoint(target)
        assert cp is not None and cp.state == "stopped"
    finally:
        daemon.stop()


@pytest.mark.timeout(90)
@pytest.mark.parametrize("diskless", ["yes", "no"])
def test_slow_snapshot_with_keepalives(
    debian_servers: ServerSet, runners: list[RunnerThread], diskless: str
) -> None:
    # rdb-key-save-delay makes the snapshot child slow: the source sends keepalive newlines
    # before the payload (disk) and the payload arrives in small pieces (diskless: the end
    # mark is split across reads)
    source = debian_servers.start(
        "source",
        extra=[
            "--repl-diskless-sync",
            diskless,
            "--repl-diskless-sync-delay",
            "0",
            "--rdb-key-save-delay",
            "1500",
        ],
    )
    target = debian_servers.start("target")
    with connect(source) as client:
        client.execute_command("DEBUG", "POPULATE", 1500, "slow", 64)
    started = time.monotonic()
    start(make_task(source, target), runners)
    cp = wait_caught_up(source, target, timeout=60)
    assert time.monotonic() - started > 1.5  # the snapshot really was slow
    assert cp.keys_loaded == 1500
    assert_equal(source, target)


@pytest.mark.timeout(60)
def test_functions_are_copied(debian_servers: ServerSet, runners: list[RunnerThread]) -> None:
    source = debian_servers.start("source")
    target = debian_servers.start("target")
    lib = "#!lua name=snap\nredis.register_function('snapfn', function() return 'snap' end)"
    live = "#!lua name=live\nredis.register_function('livefn', function() return 'live' end)"
    with connect(source) as client:
        client.execute_command("FUNCTION", "LOAD", lib)
    start(make_task(source, target), runners)
    wait_caught_up(source, target)
    with connect(source) as client:
        client.execute_command("FUNCTION", "LOAD", live)  # through the stream
    wait_caught_up(source, target)
    with connect(target) as client:
        assert client.execute_command("FCALL", "snapfn", 0) == b"snap"
        assert client.execute_command("FCALL", "livefn", 0) == b"live"


@pytest.mark.timeout(60)
def test_flushall_on_the_source_keeps_a_whole_checkpoint(
    debian_servers: ServerSet, runners: list[RunnerThread]
) -> None:
    source = debian_servers.start("source")
    target = debian_servers.start("target")
    with connect(source) as client:
        client.set("gone-soon", 1)
    first = start(make_task(source, target), runners)
    wait_caught_up(source, target)
    with connect(source) as client:
        client.flushall()
        client.set("after-flush", 1)
    cp = wait_caught_up(source, target)
    with connect(target) as client:
        assert not client.exists("gone-soon") and client.get("after-flush") == b"1"
    # the FLUSHALL deleted the checkpoint inside the batch that rewrote it: nothing forgotten
    assert cp.resumable and cp.full_resyncs == 1 and cp.source == source.label, cp
    first.stop()
    second = start(make_task(source, target), runners)
    wait_caught_up(source, target)
    assert second.runner.counters.full_syncs == 0


@pytest.mark.timeout(90)
def test_target_errors_counted_or_fatal(tmp_path: Path, runners: list[RunnerThread]) -> None:
    sources = ServerSet(require_build("redis-7.0"), tmp_path / "s")
    targets = ServerSet(require_build("redis-6.2"), tmp_path / "t")
    try:
        source = sources.start("source")
        target = targets.start("target")
        with connect(target) as client:
            client.rpush("typed", "a-list-on-the-target")
        r = start(make_task(source, target, existing_keys="overwrite"), runners)
        wait_caught_up(source, target)
        with connect(source) as client:
            client.incr("typed")  # WRONGTYPE on the target: counted, the stream goes on
            client.set("after", 1)
        wait_caught_up(source, target)
        # (the checkpoint is on the target before the task has read EXEC's answer)
        wait_for(lambda: r.runner.counters.command_errors >= 1, 5, "the error to be counted")
        assert r.runner.counters.command_errors == 1, r.runner.counters
        with connect(target) as client:
            assert client.get("after") == b"1"
        # a command the 6.2 target does not know: the batch is refused whole, the task stops
        with connect(source) as client:
            client.execute_command(
                "FUNCTION",
                "LOAD",
                "#!lua name=x\nredis.register_function('f', function() return 1 end)",
            )
        r.thread.join(20)
        assert not r.thread.is_alive()
        cp = checkpoint(target)
        assert cp is not None and cp.state == "failed", cp
        assert cp.last_error is not None and "unknown command" in cp.last_error.lower(), cp
    finally:
        for box in runners:
            if box.thread.is_alive():
                box.stop()
        sources.close()
        targets.close()


@pytest.mark.timeout(90)
def test_big_collections_are_streamed_and_equal(
    debian_servers: ServerSet, runners: list[RunnerThread]
) -> None:
    source = debian_servers.start("source")
    target = debian_servers.start("target")
    n = 25_000  # over the syncer's STREAM_ELEMENTS_OVER: read while written
    with connect(source) as client:
        client.hset("huge:hash", mapping={f"f{i}": f"v{i}" for i in range(n)})
        client.sadd("huge:set", *[f"m{i}" for i in range(n)])
        client.zadd("huge:zset", {f"z{i}": i / 3 for i in range(n)})
        client.rpush("huge:list", *[f"e{i}" for i in range(n)])
        client.expire("huge:hash", 900)
        client.set("small", 1)
    task = make_task(source, target)
    start(task, runners)
    cp = wait_caught_up(source, target)
    assert cp.keys_loaded == 5
    assert_equal(source, target)
    grace = task.expire_grace  # the target keeps a key that much longer
    with connect(target) as client:
        assert client.hlen("huge:hash") == n
        assert 890 + grace < client.ttl("huge:hash") <= 900 + grace


@pytest.mark.timeout(60)
def test_stop_during_a_full_sync_of_strings(
    debian_servers: ServerSet, runners: list[RunnerThread]
) -> None:
    source = debian_servers.start("source", extra=["--rdb-key-save-delay", "20"])
    target = debian_servers.start("target")
    with connect(source) as client:
        client.execute_command("DEBUG", "POPULATE", 200_000, "s", 8)  # ~4 s to snapshot
    r = start(make_task(source, target), runners)
    wait_for(
        lambda: (cp := checkpoint(target)) is not None and (cp.keys_loaded or 0) > 5000,
        20,
        "the full sync to be under way",
    )
    started = time.monotonic()
    r.stop()
    assert time.monotonic() - started < 5
    cp = checkpoint(target)
    assert cp is not None and cp.state == "stopped" and not cp.resumable, cp


@pytest.mark.timeout(60)
def test_a_silent_source_ends_the_session_and_the_task_reconnects(
    debian_servers: ServerSet, runners: list[RunnerThread]
) -> None:
    # a paused source keeps its connection open and sends nothing, not even its pings
    source = debian_servers.start("source", extra=["--repl-ping-replica-period", "1"])
    target = debian_servers.start("target")
    thread = start(make_task(source, target, source_timeout="2s"), runners)
    wait_caught_up(source, target)
    assert thread.runner.counters.sessions == 1
    source.proc.send_signal(signal.SIGSTOP)
    try:
        wait_for(
            lambda: (
                (cp := checkpoint(target)) is not None and "source_timeout" in (cp.last_error or "")
            ),
            15,
            "the task to give up on the silent source",
        )
    finally:
        source.proc.send_signal(signal.SIGCONT)
    with connect(source) as client:
        client.set("after-the-pause", "1")
    cp = wait_caught_up(source, target)
    assert cp.full_resyncs == 1  # it continued where it was
    assert thread.runner.counters.sessions >= 2
    with connect(target) as client:
        assert client.get("after-the-pause") == b"1"


@pytest.mark.timeout(60)
def test_stream_bytes_that_arrive_with_continue_are_applied_at_once(
    debian_servers: ServerSet, runners: list[RunnerThread]
) -> None:
    """The backlog that follows a +CONTINUE can arrive in the same read as the reply line
    (a busy syncer reads late): those bytes must be applied without waiting for more data.
    With no pings (period 3600 s) and no new writes, nothing else would ever come."""
    source = debian_servers.start("source", extra=["--repl-ping-replica-period", "3600"])
    target = debian_servers.start("target")
    task = make_task(source, target)
    first = start(task, runners)
    wait_caught_up(source, target)
    assert first.stop() == 0
    with connect(source) as client:
        for _ in range(50):
            client.incr("while-stopped")
    runner = SyncTaskRunner(task, TLSConfig(), io_timeout=5)
    target_link = TargetLink(task.target, TLSConfig(), 5, 8)
    source_link = SourceLink(task.source, TLSConfig(), 5)  # type: ignore[arg-type]
    try:
        cp = runner.store.read(target_link)
        assert cp is not None and cp.replid is not None and cp.offset is not None
        source_link.handshake()
        reply = source_link.psync(cp.replid, cp.offset)
        assert isinstance(reply, Continue)
        conn = source_link.conn
        wait_for(
            lambda: conn.available() or select.select([conn.sock], [], [], 0)[0],
            10,
            "the backlog to arrive",
        )
        if not conn.available():
            conn.fill()  # now buffered, as if read together with +CONTINUE
        assert conn.available() > 0
        applying = threading.Thread(
            target=runner.incremental,
            args=(source_link, target_link, cp, reply.replid or cp.replid, cp.offset),
            daemon=True,
        )
        applying.start()
        with connect(target) as client:
            wait_for(lambda: client.get("while-stopped") == b"50", 10, "the buffered backlog")
        runner.stop()
        applying.join(10)
        assert not applying.is_alive()
    finally:
        source_link.close()
        target_link.close()
