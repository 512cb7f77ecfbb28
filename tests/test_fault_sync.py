"""Faults around a running sync task, with real processes: the task's source or target cut
off by a link going down, killed -9 and started again, the whole `replwatch run` daemon
stopped by SIGTERM and started again, and reloaded by SIGHUP under load.

What every case proves is the same two things, checked on the target's data itself:
nothing is lost and nothing is applied twice. A writer numbers its writes (step n is
`RPUSH seq:<n % 8> n`, every 4th step also `MULTI; INCR tx:count; RPUSH tx:seq n; EXEC`) and
remembers which steps the source acknowledged. On the target, every list must be strictly
increasing (a batch applied twice would repeat numbers), every acknowledged step must be
there (nothing lost), no step may be there that the writer does not know of, and
`tx:count` must equal `LLEN tx:seq`; then `compare` must find source and target equal.

Partitions (@pytest.mark.netns): the side that is cut off runs inside a network namespace
the test creates, joined to the host by a veth pair (tests/support/netns.py:
StarvedLink, without its rate limit). The namespace's end of the veth goes down until the
task has crossed the timeout the case is about (the source's silence: source_timeout; the
target's: the task's I/O timeout) and the test has seen it do so, and no longer (at most
PARTITION_MAX seconds); the host's end has a permanent neighbour entry for it, so the host's
kernel never learns that the peer is gone: its connections see silence and keep
retransmitting, as across a WAN partition (taking the host's end down instead would answer
"no route to host" at once, and TCP would drop what was queued). A fallback `unreachable`
route for the namespace's /30 keeps its addresses off the default route whatever happens
to the veth. Traffic stays on loopback and that veth. While a source is cut off, the
writer reaches it through its unix socket.

Tests that existing files already cover are not repeated here: kill -9 of the task process
at random moments (tests/test_sync_engine.py, test_kill_9_at_random_moments_...), a source
that restarts empty without persistence and a backlog overflow (test_backlog_overflow_...),
a paused (SIGSTOP) source (tests/test_sync_ops.py, test_a_silent_source_...), SIGTERM of an
idle daemon and kill -9 of its task process (test_daemon_supervises_task_processes), and
the reload rules themselves (tests/test_reload.py).
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import os
import shutil
import signal
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import redis
import yaml
from redis.backoff import NoBackoff
from redis.retry import Retry

from replwatch.config import SyncTask, TLSConfig, parse_redis_url
from replwatch.errors import RedisError
from replwatch.exporter.sync_collector import error_reasons
from replwatch.sync.checkpoint import Checkpoint
from replwatch.sync.writer import CLIENT_NAME, TargetLink, named_clients
from replwatch.tasks.watch import SyncTaskView, SyncWatcher

from .support.daemons import RunningDaemon, child_pids, series, value
from .support.datasets import connect
from .support.netns import StarvedLink, require_netns
from .support.servers import (
    RedisProcess,
    ServerSet,
    free_port,
    require_build,
    wait_for,
)
from .support.syncing import (
    TASK,
    RunnerThread,
    assert_equal,
    checkpoint,
    make_task,
    source_position,
    start,
    wait_caught_up,
)

LISTS = 8
TX_EVERY = 4
FAST_RETRY = {"reconnect_min": "200ms", "reconnect_max": "1s", "source_timeout": "2s"}
PARTITION_MAX = 15.0  # seconds a link may stay down before the test gives up on a timeout
TARGET_IO_TIMEOUT = 2.0  # the task's connect and reply timeout in the target partition


# --------------------------------------------------------------------------- the writer


@dataclass
class SequenceWriter:
    """Numbered writes from a thread (see the module docstring). A step that fails is
    `uncertain` (it may or may not have happened); the writer then reconnects and goes on
    with the next number, so it survives a restart of its server."""

    connect: Callable[[], redis.Redis]
    period: float = 0.002
    acked: set[int] = field(default_factory=set)
    acked_tx: set[int] = field(default_factory=set)
    uncertain: set[int] = field(default_factory=set)
    failures: int = 0
    error: BaseException | None = None  # anything but a connection problem ends it

    def __post_init__(self) -> None:
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="sequence-writer", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        try:
            self._write()
        except BaseException as exc:  # reported by stop() and wait_steps()
            self.error = exc

    def _write(self) -> None:
        client = self.connect()
        n = 0
        while not self._stop.is_set():
            try:
                client.rpush(f"seq:{n % LISTS}", n)
                self.acked.add(n)
                if n % TX_EVERY == 0:
                    tx = client.pipeline(transaction=True)
                    tx.incr("tx:count")
                    tx.rpush("tx:seq", n)
                    tx.execute()
                    self.acked_tx.add(n)
            except (redis.ConnectionError, redis.TimeoutError, redis.BusyLoadingError):
                self.uncertain.add(n)
                self.failures += 1
                client.close()
                self._stop.wait(0.1)
                client = self.connect()
            n += 1
            self._stop.wait(self.period)
        client.close()

    @property
    def steps(self) -> int:
        return len(self.acked)

    def wait_steps(self, more: int, timeout: float = 10) -> None:
        goal = self.steps + more
        wait_for(
            lambda: self.steps >= goal or self.error,
            timeout,
            f"the writer to make {more} more steps",
        )
        assert self.error is None, self.error

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(10)
        assert not self._thread.is_alive(), "the writer did not stop"
        assert self.error is None, self.error


def writer_client(proc: RedisProcess, via_unix: bool = False) -> redis.Redis:
    """A client that never sends a command again by itself (redis-py retries 3 times by
    default: a resent RPUSH may run twice, and the writer must know what it did)."""
    where: dict[str, object] = (
        {"unix_socket_path": str(proc.unixsocket)}
        if via_unix
        else {"host": proc.host, "port": proc.port}
    )
    return redis.Redis(
        **where,  # type: ignore[arg-type]
        socket_timeout=5,
        socket_connect_timeout=5,
        retry=Retry(NoBackoff(), 0),
        protocol=2,
    )


def _numbers(values: list[bytes]) -> list[int]:
    return [int(v) for v in values]


def assert_exactly_once(target: RedisProcess, writer: SequenceWriter) -> None:
    """On the target: every acknowledged step once, in order; nothing the writer did not
    send; the transactions' counter equal to their list's length."""
    with connect(target) as client:
        seen: list[int] = []
        for k in range(LISTS):
            values = _numbers(client.lrange(f"seq:{k}", 0, -1))
            repeated = [b for a, b in itertools.pairwise(values) if b <= a]
            assert not repeated, f"seq:{k} repeats or reorders {repeated[:10]} (applied twice)"
            assert all(v % LISTS == k for v in values), f"seq:{k} holds foreign numbers"
            seen += values
        lost = writer.acked - set(seen)
        assert not lost, f"{len(lost)} acknowledged steps lost, e.g. {sorted(lost)[:10]}"
        unknown = set(seen) - writer.acked - writer.uncertain
        assert not unknown, f"steps nobody wrote: {sorted(unknown)[:10]}"
        tx_values = _numbers(client.lrange("tx:seq", 0, -1))
        assert tx_values == sorted(set(tx_values)), "tx:seq repeats (a transaction applied twice)"
        assert int(client.get("tx:count") or 0) == len(tx_values), "tx:count != LLEN tx:seq"
        tx_lost = writer.acked_tx - set(tx_values)
        assert not tx_lost, f"acknowledged transactions lost: {sorted(tx_lost)[:10]}"


# --------------------------------------------------------------------------- helpers


def watch_once(task: SyncTask) -> SyncTaskView:
    """One poll of the task as `replwatch run` does it (SyncWatcher: the source's INFO and
    the checkpoint); error_reasons(view) is what replwatch_sync_last_error_info exports."""

    async def poll() -> SyncTaskView:
        watcher = SyncWatcher(task, 1.0, TLSConfig())
        try:
            return await watcher.poll()
        finally:
            watcher.close()

    return asyncio.run(poll())


def task_connections(target: RedisProcess) -> list[dict[str, object]]:
    """The target's clients that sessions of the task opened (CLIENT SETNAME
    replwatch-sync:<task>)."""
    with connect(target) as client:
        return [c for c in client.client_list() if c.get("name") == f"{CLIENT_NAME}:{TASK}"]


@pytest.fixture
def link() -> Iterator[StarvedLink]:
    """A namespace joined to the host by a veth pair. A fallback route (`unreachable`, metric
    4000) keeps the namespace's /30 off the default route whatever happens to the veth's
    own route, so nothing meant for the namespace ever leaves the host. All of it is deleted
    at teardown."""
    require_netns("sync partition tests", tools=("ip",))
    made = StarvedLink()
    fallback = ["unreachable", str(made.network), "metric", "4000"]
    routed = False
    try:
        made.create()
        subprocess.run(["ip", "route", "add", *fallback], check=True, timeout=15)
        routed = True
        peer_mac = subprocess.run(
            ["ip", "netns", "exec", made.ns, "cat", f"/sys/class/net/{made.ns_if}/address"],
            capture_output=True, text=True, check=True, timeout=15,
        ).stdout.strip()  # fmt: skip
        subprocess.run(
            ["ip", "neigh", "replace", made.ns_ip, "lladdr", peer_mac, "dev", made.host_if,
             "nud", "permanent"],
            check=True, timeout=15,
        )  # fmt: skip
        yield made
    finally:
        try:
            if routed:
                subprocess.run(["ip", "route", "del", *fallback], check=True, timeout=15)
        finally:
            made.destroy()


def set_link(link: StarvedLink, up: bool) -> None:
    """The namespace's end of the veth down (the host's end loses its carrier: what is sent
    there is dropped, as over a cut cable) or up again."""
    subprocess.run(
        ["ip", "netns", "exec", link.ns, "ip", "link", "set", link.ns_if, "up" if up else "down"],
        check=True,
        timeout=15,
    )


@pytest.fixture
def sockdir() -> Iterator[Path]:
    path = Path(tempfile.mkdtemp(prefix="rw"))  # short: unix socket paths are ~107 bytes
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def kill_and_start_again(servers: ServerSet, proc: RedisProcess) -> RedisProcess:
    """SIGKILL (a crash: no shutdown, no last save), then a server on the same port with the
    same options and directory, so with whatever the killed one had persisted."""
    proc.kill()
    return servers.start(
        proc.name,
        port=proc.port,
        extra=proc.extra,
        bind=proc.bind,
        netns=proc.netns,
        unixsocket=proc.unixsocket,
    )


def stop_all(runners: list[RunnerThread], writer: SequenceWriter | None) -> None:
    if writer is not None:
        writer.stop()
    for runner in runners:
        if runner.thread.is_alive():
            runner.stop()
    runners.clear()


# --------------------------------------------------------------------------- partitions


def cut_off(link: StarvedLink) -> float:
    set_link(link, up=False)
    return time.monotonic()


def heal(link: StarvedLink, cut_at: float) -> float:
    """The link up again, once the test has seen the task cross the timeout it is about;
    the outage's length in seconds."""
    set_link(link, up=True)
    return time.monotonic() - cut_at


@pytest.mark.netns
@pytest.mark.timeout(90)
def test_source_partition_mid_stream_resumes_from_the_checkpoint(
    link: StarvedLink, sockdir: Path, tmp_path: Path, runners: list[RunnerThread]
) -> None:
    """The source is cut off from the syncer while the writer goes on writing to it (through
    its unix socket), until the task has crossed its source_timeout (2 s) and reported it: its
    checkpoint's last_error names source_timeout, the monitor's view has the source down.
    Once the link is back it continues the stream from its checkpoint (PSYNC continue: the
    source's backlog holds the gap, so no second full sync) and ends equal to the source,
    with every acknowledged write applied exactly once."""
    servers = ServerSet(require_build("redis-7.0"), tmp_path)
    writer: SequenceWriter | None = None
    try:
        source = servers.start(
            "source",
            bind=(link.ns_ip,),
            netns=link.ns,
            unixsocket=sockdir / "source.sock",
            extra=["--repl-backlog-size", "16mb"],
        )
        target = servers.start("target")
        task = make_task(source, target, **FAST_RETRY)
        r = start(task, runners)
        writer = SequenceWriter(lambda: writer_client(source, via_unix=True))
        wait_caught_up(source, target)
        writer.wait_steps(200)

        cut_at = cut_off(link)
        steps_at_cut = writer.steps
        try:
            wait_for(
                lambda: "source_timeout" in (((cp := checkpoint(target)) and cp.last_error) or ""),
                PARTITION_MAX,
                "the task to record that the source went silent",
            )
            view = watch_once(task)
            assert not view.source_up and view.target_up, view
            assert error_reasons(view) == ["source_timeout"], view
            assert view.checkpoint is not None and view.checkpoint.state == "incremental"
            steps_before_heal = writer.steps
        finally:
            outage = heal(link, cut_at)
        assert steps_before_heal > steps_at_cut, outage  # the source took writes all along
        writer.wait_steps(200)
        writer.stop()
        cp = wait_caught_up(source, target, timeout=30)
        assert r.runner.counters.sessions >= 2, r.runner.counters
        assert cp.full_resyncs == 1 and r.runner.counters.full_syncs == 1, cp
        view = watch_once(task)
        assert view.source_up and view.lag_bytes == 0 and not error_reasons(view), view
        assert_exactly_once(target, writer)
        assert_equal(source, target)
    finally:
        stop_all(runners, writer)
        servers.close()


@pytest.mark.netns
@pytest.mark.timeout(90)
def test_target_partition_mid_stream_resumes_without_doubling(
    link: StarvedLink,
    tmp_path: Path,
    runners: list[RunnerThread],
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The target (and the checkpoint on it) is cut off while the writer goes on, until the
    task has noticed: its session ends on the target's silence (the task's I/O timeout,
    TARGET_IO_TIMEOUT here) and is retried; the monitor's view has the target down. Once the
    link is back, the task continues from the checkpoint (no second full sync). Batches it
    had sent into the cut link are delivered by TCP after the link heals; they must not be
    applied on top of the same commands sent again (they were, before the new session closed
    the old connection: numbers repeated in the lists and the checkpoint moved back). Ends
    equal to the source, every acknowledged write applied exactly once."""
    servers = ServerSet(require_build("redis-7.0"), tmp_path)
    writer: SequenceWriter | None = None
    try:
        source = servers.start("source", extra=["--repl-backlog-size", "16mb"])
        target = servers.start("target", bind=(link.ns_ip,), netns=link.ns)
        task = make_task(source, target, **FAST_RETRY)
        r = start(task, runners, io_timeout=TARGET_IO_TIMEOUT)
        writer = SequenceWriter(lambda: writer_client(source))
        wait_caught_up(source, target)
        writer.wait_steps(200)
        sessions = r.runner.counters.sessions

        caplog.set_level(logging.WARNING, logger="replwatch.sync")
        cut_at = cut_off(link)
        try:
            view = watch_once(task)
            assert view.source_up and not view.target_up, view
            assert error_reasons(view) == ["target_timeout"], view
            wait_for(
                lambda: r.runner.counters.sessions > sessions,
                PARTITION_MAX,
                "the task to end its session on the silent target",
            )
            assert any("session ended" in m and target.label in m for m in caplog.messages), (
                caplog.messages
            )
        finally:
            heal(link, cut_at)
        writer.wait_steps(200)
        writer.stop()
        cp = wait_caught_up(source, target, timeout=30)
        assert cp.full_resyncs == 1 and r.runner.counters.full_syncs == 1, cp
        # the connection of the cut-off session was closed: nothing it sent can still run
        wait_for(lambda: len(task_connections(target)) == 1, 5, "one connection of the task")
        assert_exactly_once(target, writer)
        view = watch_once(task)
        assert view.target_up and view.lag_bytes == 0 and not error_reasons(view), view
        assert_equal(source, target)
    finally:
        stop_all(runners, writer)
        servers.close()


# --------------------------------------------------------------------------- the fix


@pytest.mark.parametrize(
    ("listing", "ids"),
    [
        ("", []),
        ("id=3 addr=1.2.3.4:5 name=replwatch-sync:t db=0\n", [3]),
        (
            "id=3 name=replwatch-sync:t cmd=exec\n"
            "id=4 name=replwatch-sync:tt cmd=exec\n"  # another task
            "id=5 name=replwatch-sync cmd=hset\n"  # a status write, not a session
            "id=6 name= cmd=client|list\n"
            "id=7 name=replwatch-sync:t cmd=psync\n",
            [3, 7],
        ),
        ("name=replwatch-sync:t\n", []),  # no id: nothing to close
    ],
)
def test_named_clients_finds_the_sessions_of_one_task(listing: str, ids: list[int]) -> None:
    assert named_clients(listing, "replwatch-sync:t") == ids


def test_close_others_named_closes_earlier_sessions_only(debian_servers: ServerSet) -> None:
    """The connections of the task's earlier sessions are closed; the new session's own,
    other tasks', status connections and applications' stay. A user whose ACL refuses
    CLIENT LIST/KILL gets None (the task then warns), not an error."""
    server = debian_servers.start("target")
    endpoint = parse_redis_url(server.url)
    name = f"{CLIENT_NAME}:{TASK}"
    links = [TargetLink(endpoint, None, 5, 1, client_name=n) for n in (name, name, "x", name)]
    try:
        older, old, other_task, new = links
        assert new.close_others_named() == 2
        for dead in (older, old):
            with pytest.raises(RedisError):
                dead.call("PING")
        assert other_task.call("PING") == b"PONG" and new.call("PING") == b"PONG"
        assert new.close_others_named() == 0
        with connect(server) as client:
            client.acl_setuser(
                "limited",
                enabled=True,
                passwords=["+pw"],
                keys=["*"],
                commands=["+@all", "-client"],
            )
        limited = TargetLink(
            parse_redis_url(f"redis://limited:pw@{server.label}"), None, 5, 1, client_name=name
        )
        links.append(limited)
        assert limited.close_others_named() is None
        assert new.call("PING") == b"PONG"
    finally:
        for link in links:
            link.close()


# --------------------------------------------------------------------------- restarts


@pytest.mark.timeout(60)
def test_source_killed_mid_stream_is_synced_again_in_full(
    debian_servers: ServerSet, runners: list[RunnerThread]
) -> None:
    """kill -9 of the source while the writer writes and the task streams, then the source
    starts again from its AOF (every acknowledged write kept) under a new replication id.
    The task cannot continue a stream the source no longer has: it does exactly one new full
    sync, which replaces the target's copy (flushed first, checkpoint kept), and the target
    ends equal to the source with every acknowledged write once."""
    writer: SequenceWriter | None = None
    try:
        source = debian_servers.start("source", extra=["--appendonly", "yes"])
        target = debian_servers.start("target")
        r = start(make_task(source, target, **FAST_RETRY), runners)
        writer = SequenceWriter(lambda: writer_client(source))
        wait_caught_up(source, target)
        writer.wait_steps(200)
        old_replid = checkpoint(target).replid  # type: ignore[union-attr]

        source = kill_and_start_again(debian_servers, source)
        writer.wait_steps(200)  # it reconnected to the restarted source
        writer.stop()
        cp = wait_caught_up(source, target, timeout=30)
        assert cp.replid != old_replid, "the restarted source kept its replication id"
        assert cp.full_resyncs == 2 and r.runner.counters.full_syncs == 2, cp
        assert writer.failures >= 1  # the kill really hit the writer mid-way
        assert_exactly_once(target, writer)
        assert_equal(source, target)
    finally:
        stop_all(runners, writer)


@pytest.mark.timeout(60)
def test_target_killed_mid_stream_resumes_from_its_persisted_checkpoint(
    debian_servers: ServerSet, runners: list[RunnerThread]
) -> None:
    """kill -9 of the target while the task streams under the writer, then the target
    starts again from its AOF. The checkpoint it kept moved in the same MULTI/EXEC as the
    data, so it names exactly what the target holds: the task continues the stream from
    there (no second full sync) and nothing the checkpoint counts as applied is applied
    again, nothing after it is lost."""
    writer: SequenceWriter | None = None
    try:
        source = debian_servers.start("source", extra=["--repl-backlog-size", "16mb"])
        target = debian_servers.start("target", extra=["--appendonly", "yes"])
        r = start(make_task(source, target, **FAST_RETRY), runners)
        writer = SequenceWriter(lambda: writer_client(source))
        wait_caught_up(source, target)
        writer.wait_steps(200)
        sessions = r.runner.counters.sessions

        target = kill_and_start_again(debian_servers, target)
        kept = checkpoint(target)
        assert kept is not None and kept.resumable, kept  # persisted with the data
        writer.wait_steps(200)
        writer.stop()
        cp = wait_caught_up(source, target, timeout=30)
        assert r.runner.counters.sessions > sessions
        assert cp.full_resyncs == 1 and r.runner.counters.full_syncs == 1, cp
        assert_exactly_once(target, writer)
        assert_equal(source, target)
    finally:
        stop_all(runners, writer)


# --------------------------------------------------------------------------- the daemon


def daemon_config(
    path: Path,
    port: int,
    source: RedisProcess,
    target: RedisProcess,
    groups: list[dict[str, object]] | None = None,
    trip_seconds: float = 2.0,
) -> Path:
    data = {
        "exporter": {"listen": f"127.0.0.1:{port}"},
        "poll": {"interval": "200ms", "timeout": "150ms"},
        "heartbeat": {"interval": "100ms"},
        "routing": {"trip": {"lag_seconds": trip_seconds}},
        "groups": groups or [],
        "sync": {
            "tasks": [
                {
                    "name": TASK,
                    "source": source.url,
                    "target": target.url,
                    "reconnect_min": "200ms",
                    "reconnect_max": "1s",
                }
            ]
        },
    }
    path.write_text(yaml.safe_dump(data))
    return path


def gone(pid: int) -> bool:
    """No process with this pid is left (a zombie counts as gone: it runs nothing)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return True
    return stat.rsplit(")", 1)[1].split()[0] == "Z"


def task_pid(daemon: RunningDaemon) -> int:
    """The daemon's one task process (a child of the daemon, and the checkpoint's writer)."""
    children = wait_for(lambda: child_pids(daemon.pid), 10, "the task process")
    assert len(children) == 1, children
    return int(children[0])


def sigterm_and_check(daemon: RunningDaemon, target: RedisProcess) -> Checkpoint:
    """SIGTERM to the daemon: it exits 0 within the supervisor's grace period, its task
    process is gone, and the checkpoint says stopped (written by that process)."""
    child = task_pid(daemon)
    started = time.monotonic()
    daemon.proc.send_signal(signal.SIGTERM)
    assert daemon.proc.wait(20) == 0, daemon.log_text()[-3000:]
    took = time.monotonic() - started
    assert took < 15, f"the daemon took {took:.1f}s to stop"
    assert gone(child), f"task process {child} outlived the daemon"
    assert not child_pids(daemon.pid)
    cp = checkpoint(target)
    assert cp is not None and cp.state == "stopped" and cp.pid == child, cp
    return cp


@pytest.mark.timeout(90)
def test_sigterm_of_the_daemon_mid_full_sync_and_mid_stream_then_it_continues(
    debian_servers: ServerSet, tmp_path: Path
) -> None:
    """`replwatch run` stopped by SIGTERM while its task is in a full sync, then while it
    streams under the writer: each time the daemon exits 0, its task process is gone (by
    pid) and the checkpoint is kept with state stopped. A full sync cut short is not
    resumable (a half-loaded snapshot): the next start does it again, once. A stream cut
    short is: the next start continues from the checkpoint (no full sync; the writes made
    while the daemon was down arrive by PSYNC continue), and the target ends equal to the
    source with every acknowledged write once."""
    source = debian_servers.start(
        "source", extra=["--repl-backlog-size", "16mb", "--rdb-key-save-delay", "250"]
    )
    target = debian_servers.start("target")
    with connect(source) as client:
        # at least 2 s to snapshot (250 µs a key): the task records its progress once a
        # second, so the checkpoint shows keys loaded while the full sync still runs
        client.execute_command("DEBUG", "POPULATE", 8000, "bulk", 16)
    port = free_port()
    cfg = daemon_config(tmp_path / "c.yaml", port, source, target)
    writer = SequenceWriter(lambda: writer_client(source))
    try:
        with RunningDaemon(cfg, port) as first:
            wait_for(
                lambda: (
                    (cp := checkpoint(target)) is not None
                    and cp.state == "full_sync"
                    and (cp.keys_loaded or 0) > 0
                ),
                20,
                "the full sync to be loading",
            )
            cut = sigterm_and_check(first, target)
            assert not cut.resumable and cut.full_resyncs == 1, cut

        with RunningDaemon(cfg, port) as second:
            cp = wait_caught_up(source, target, timeout=30)
            assert cp.full_resyncs == 2, cp  # the cut full sync was done again, once
            writer.wait_steps(200)
            stopped = sigterm_and_check(second, target)
            assert stopped.resumable and stopped.full_resyncs == 2, stopped

        writer.wait_steps(200)  # while no daemon runs
        with RunningDaemon(cfg, port) as third:
            wait_caught_up(source, target, timeout=30)
            writer.wait_steps(100)
            writer.stop()
            cp = wait_caught_up(source, target, timeout=30)
            assert cp.full_resyncs == 2, cp
            wait_for(
                lambda: value(third.metrics(), "replwatch_sync_full_resyncs_total", task=TASK) == 2,
                5,
                "the metrics to show the two full syncs",
            )
            log = third.log_text()
            assert "continuing" in log and "full sync from" not in log, log[-3000:]
        assert_exactly_once(target, writer)
        assert_equal(source, target)
    finally:
        writer.stop()


@pytest.mark.serial  # poll cadence: cycles every 200 ms, none missed
@pytest.mark.timeout(60)
def test_sighup_reload_under_load_keeps_polling_and_streaming(
    debian_servers: ServerSet, tmp_path: Path
) -> None:
    """SIGHUP reloads of `replwatch run` while the writer writes, the task streams and the
    group of the source (with a native replica) is polled every 200 ms and heartbeated:
    each reload succeeds (replwatch_config_last_reload_successful 1), the group keeps its
    monitor and its poll cycles keep coming on schedule (none missed), the task process is
    the same one throughout (no restart) and keeps applying, and the target ends equal to
    the source with every acknowledged write once."""
    source = debian_servers.start("source", extra=["--repl-backlog-size", "16mb"])
    replica = debian_servers.start("replica", replica_of=source)
    target = debian_servers.start("target")
    port = free_port()
    groups: list[dict[str, object]] = [
        {"name": "g", "master": source.label, "replicas": [replica.label]}
    ]
    cfg = daemon_config(tmp_path / "c.yaml", port, source, target, groups)
    writer = SequenceWriter(lambda: writer_client(source))
    try:
        with RunningDaemon(cfg, port) as daemon:

            def cycles() -> float:
                return value(daemon.metrics(), "replwatch_group_poll_cycles_total", group="g") or 0

            def missed() -> float:
                text = daemon.metrics()
                return sum(
                    v
                    for outcome in ("missed", "skipped_overrun", "error")
                    for _line, v in series(text, "replwatch_scheduler_runs_total", outcome=outcome)
                )

            wait_for(lambda: daemon.fetch("/-/ready")[0] == 200, 20, "the daemon to be ready")
            wait_caught_up(source, target)
            wait_for(lambda: cycles() >= 5, 10, "a few poll cycles")
            child = task_pid(daemon)
            before_cycles, before_missed, t0 = cycles(), missed(), time.monotonic()

            def applied() -> int:
                cp = checkpoint(target)
                return cp.offset if cp is not None and cp.offset is not None else 0

            def loaded_at() -> float | None:
                return value(
                    daemon.metrics(), "replwatch_config_last_reload_success_timestamp_seconds"
                )

            def reload(trip: float) -> None:
                daemon_config(cfg, port, source, target, groups, trip_seconds=trip)
                before = loaded_at()
                _replid, offset = source_position(source)
                os.kill(daemon.pid, signal.SIGHUP)
                wait_for(lambda: loaded_at() != before, 10, "the reload")
                assert value(daemon.metrics(), "replwatch_config_last_reload_successful") == 1
                # the task goes on applying what the writer writes
                wait_for(lambda: applied() > offset, 10, "the writes made at the reload applied")
                writer.wait_steps(100)

            reload(2.0)  # the file as it was
            reload(3.0)  # a routing threshold changed

            after_cycles, elapsed = cycles(), time.monotonic() - t0
            assert after_cycles - before_cycles >= elapsed / 0.2 * 0.75 - 1, (
                before_cycles,
                after_cycles,
                elapsed,
            )
            assert missed() == before_missed
            assert task_pid(daemon) == child
            text = daemon.metrics()
            assert value(text, "replwatch_sync_process_restarts_total", task=TASK) == 0
            assert value(text, "replwatch_replica_link_up", group="g") == 1
            assert "config reload failed" not in daemon.log_text()
            writer.stop()
            cp = wait_caught_up(source, target)
            assert cp.full_resyncs == 1 and cp.pid == child, cp
        assert_exactly_once(target, writer)
        assert_equal(source, target)
    finally:
        writer.stop()
