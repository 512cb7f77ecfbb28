"""Sync tasks seen from the monitor: SyncWatcher, SyncCollector and `replwatch sync status`.

The syncer engine is not needed: each test writes the checkpoint hash into the target itself,
field by field as replwatch/sync/checkpoint.py defines it, and drives writes on a real source.
A source feeds a replication stream (its master_repl_offset moves) only while it has a
backlog, so every source here has a native replica attached, as it would have a syncer.
"""

from __future__ import annotations

import asyncio
import io
import itertools
import json
import re
import shutil
import subprocess
import time
from collections.abc import Iterator

import pytest
import redis
from prometheus_client import CollectorRegistry, generate_latest

from replwatch.admin.tasks_cli import render_record
from replwatch.config import Config, SyncTask, TLSConfig, config_from_data
from replwatch.exporter.sync_collector import SyncCollector
from replwatch.lag.offset_clock import OffsetClock
from replwatch.observe.info import parse_replication
from replwatch.sync.checkpoint import STATES, Checkpoint
from replwatch.tasks.status_cli import (
    format_lag_bytes,
    progress_bar,
    render_json,
    render_table,
    run_sync_status,
)
from replwatch.tasks.watch import (
    SideRead,
    SyncStore,
    SyncTaskView,
    SyncWatcher,
    build_sync_watchers,
    build_view,
    poll_into,
)

from .support.daemons import parse_metrics, sample_value
from .support.servers import (
    BackgroundWriter,
    BlackHole,
    RedisProcess,
    ServerSet,
    closed_port,
    wait_synced,
)
from .support.syncing import poll, write_checkpoint

SECRET = "sync-target-secret-7f3a"
GIB = 1 << 30


# ----------------------------------------------------------------------------- helpers


@pytest.fixture
def pair(debian_servers: ServerSet) -> tuple[RedisProcess, RedisProcess]:
    """(source, target): the source with a linked native replica, the target empty."""
    source = debian_servers.start("source")
    replica = debian_servers.start("replica", replica_of=source)
    wait_synced(replica, source)
    target = debian_servers.start("target")
    return source, target


def task_config(*tasks: tuple[str, str, str], timeout: str = "500ms") -> Config:
    """A config with sync tasks given as (name, source url, target url)."""
    return config_from_data(
        {
            "poll": {"interval": "1s", "timeout": timeout},
            "sync": {"tasks": [{"name": n, "source": s, "target": t} for n, s, t in tasks]},
        }
    )


def one_task(source: str, target: str, name: str = "t1") -> SyncTask:
    return task_config((name, source, target)).sync.tasks[0]


def source_position(source: RedisProcess) -> tuple[str, int]:
    info = source.info()
    return str(info["master_replid"]), int(info["master_repl_offset"])


def write_load(source: RedisProcess, count: int = 50, size: int = 100) -> None:
    client = source.client()
    pipe = client.pipeline(transaction=False)
    for i in range(count):
        pipe.set(f"load:{i}", "x" * size)
    pipe.execute()


def series_of(text: str, task: str) -> list[str]:
    return [line for line in text.splitlines() if f'task="{task}"' in line]


# ----------------------------------------------------------------------------- byte lag


def test_lag_bytes_is_source_offset_minus_checkpoint_offset(
    pair: tuple[RedisProcess, RedisProcess],
) -> None:
    source, target = pair
    replid, applied = source_position(source)
    write_load(source, count=50, size=100)
    write_checkpoint(
        target.client(),
        "t1",
        source.label,
        replid=replid,
        offset=applied,
        full_resyncs=2,
        applied_commands=1234,
        last_error="source closed the link (reset)",
    )
    view = poll(one_task(source.url, target.url))
    assert view.source_up and view.target_up, view
    assert view.state == "incremental"
    assert view.running
    assert view.source == source.label and view.target == target.label
    assert view.source_replid == replid
    assert view.source_offset is not None
    assert view.source_offset >= applied + 50 * 100  # 50 SETs of 100-byte values went by
    assert view.lag_bytes == view.source_offset - applied
    assert view.applied_offset == applied
    assert view.full_resyncs == 2
    assert view.applied_commands == 1234
    assert view.last_error == "source closed the link (reset)"
    assert view.checkpoint is not None and view.checkpoint.host == "test-host"
    assert view.seconds_since_update is not None and view.seconds_since_update < 5
    assert not view.stale
    # one sample of the source: the clock knows only that it passed the offset before it
    assert view.lag_seconds is not None and not view.lag_seconds_exact
    assert view.progress is None  # not in a full sync


def test_lag_unknown_when_checkpoint_is_on_another_stream(
    pair: tuple[RedisProcess, RedisProcess],
) -> None:
    source, target = pair
    replid, offset = source_position(source)
    other = "f" * 40
    assert other != replid
    write_checkpoint(target.client(), "t1", source.label, replid=other, offset=offset)
    view = poll(one_task(source.url, target.url))
    assert view.source_up and view.target_up
    assert view.source_offset is not None and view.source_offset >= offset
    assert view.applied_offset == offset
    assert view.lag_bytes is None
    assert view.lag_seconds is None
    assert view.state == "incremental"


def test_lag_follows_replid2_within_the_shared_history(debian_servers: ServerSet) -> None:
    old_master = debian_servers.start("old-master")
    promoted = debian_servers.start("promoted", replica_of=old_master)
    # linked first: writes made before a replica attaches are not in any stream (the master
    # has no backlog yet), and the shared history would be empty (second_repl_offset 1)
    wait_synced(promoted, old_master)
    write_load(old_master, count=30)
    wait_synced(promoted, old_master)
    old_replid, _ = source_position(old_master)
    promoted.client().execute_command("REPLICAOF", "NO", "ONE")
    info = promoted.info()  # REPLICAOF NO ONE has shifted the ids by the time it answers
    assert info["master_replid2"] == old_replid
    second = int(info["second_repl_offset"])
    assert second > 1
    write_load(promoted, count=20)  # the new stream moves on past the shared history
    target = debian_servers.start("target")
    task = one_task(promoted.url, target.url)

    # the last byte both streams share: second_repl_offset - 1
    write_checkpoint(target.client(), "t1", promoted.label, replid=old_replid, offset=second - 1)
    view = poll(task)
    assert view.source_replid != old_replid  # the source is on its new replid
    assert view.source_offset is not None and view.source_offset > second
    assert view.lag_bytes == view.source_offset - (second - 1)

    # one byte past the shared history: that position exists only in the old master's stream
    write_checkpoint(target.client(), "t1", promoted.label, replid=old_replid, offset=second)
    assert poll(task).lag_bytes is None


# ----------------------------------------------------------------------------- time lag


def test_lag_seconds_grows_with_time_while_checkpoint_stays(
    pair: tuple[RedisProcess, RedisProcess],
) -> None:
    source, target = pair
    task = one_task(source.url, target.url)
    target_client = target.client()

    async def scenario() -> list[tuple[float, SyncTaskView]]:
        watcher = SyncWatcher(task, 0.5, TLSConfig())
        try:
            first = await watcher.poll()  # the clock's first sample of the source
            assert first.source_offset is not None and first.state == "unknown"
            # a checkpoint stuck at that offset, last written a minute ago
            write_checkpoint(
                target_client,
                "t1",
                source.label,
                replid=first.source_replid,
                offset=first.source_offset,
                updated_at=int((time.time() - 60) * 1000),
            )
            seen: list[tuple[float, SyncTaskView]] = []
            for _ in range(8):
                await asyncio.sleep(0.25)  # wall time passing is what is measured here
                view = await watcher.poll()
                seen.append((time.monotonic(), view))
            return seen
        finally:
            watcher.close()

    with BackgroundWriter(source.client(), batch=10, period=0.02) as writer:
        seen = asyncio.run(scenario())
    assert writer.error is None
    lags = [v.lag_seconds for _, v in seen]
    assert all(lag is not None for lag in lags), lags
    assert all(v.lag_seconds_exact for _, v in seen), "the clock has a sample at the offset"
    assert all(v.lag_bytes is not None and v.lag_bytes > 0 for _, v in seen)
    for (_, a), (_, b) in itertools.pairwise(seen):
        assert a.lag_seconds is not None and b.lag_seconds is not None
        assert b.lag_seconds > a.lag_seconds
    (t0, v0), (t1, v1) = seen[0], seen[-1]
    assert v0.lag_seconds is not None and v1.lag_seconds is not None
    grew, elapsed = v1.lag_seconds - v0.lag_seconds, t1 - t0
    assert elapsed > 1.5
    assert abs(grew - elapsed) < 0.15, (grew, elapsed)
    # the checkpoint is a minute old while the source moved on: stale, clock still answers
    assert all(v.stale for _, v in seen)
    assert v1.seconds_since_update is not None and 59 < v1.seconds_since_update < 70


# ----------------------------------------------------------------------------- failures


def test_source_or_target_down_is_reported_per_side(
    pair: tuple[RedisProcess, RedisProcess],
) -> None:
    source, target = pair
    replid, offset = source_position(source)
    write_checkpoint(target.client(), "t1", source.label, replid=replid, offset=offset)

    down_source = poll(one_task(f"redis://127.0.0.1:{closed_port()}", target.url))
    assert not down_source.source_up
    assert down_source.source_error_reason == "refused"
    assert down_source.source_error_message and "refused" in down_source.source_error_message
    assert down_source.target_up
    assert down_source.state == "incremental"  # the checkpoint still tells the state
    assert down_source.applied_offset == offset
    assert down_source.source_offset is None
    assert down_source.lag_bytes is None and down_source.lag_seconds is None
    assert not down_source.running

    down_target = poll(one_task(source.url, f"redis://127.0.0.1:{closed_port()}"))
    assert down_target.source_up and down_target.source_offset is not None
    assert not down_target.target_up
    assert down_target.target_error_reason == "refused"
    assert down_target.state == "unknown"
    assert down_target.checkpoint is None
    assert down_target.lag_bytes is None
    assert not down_target.running


def test_a_target_that_stops_keeps_a_growing_lag_and_checkpoint_age(
    pair: tuple[RedisProcess, RedisProcess],
) -> None:
    """A DR copy whose target goes away while the source takes writes: its series do not
    vanish (the alerts on them could never fire); the last checkpoint read stands for the
    copy, so its lag (a lower bound, not exact) and checkpoint age grow with real time."""
    source, target = pair
    task = one_task(source.url, target.url)

    async def scenario() -> tuple[SyncTaskView, list[tuple[float, SyncTaskView]], str]:
        watcher = SyncWatcher(task, 0.3, TLSConfig())
        try:
            first = await watcher.poll()
            write_checkpoint(
                target.client(),
                "t1",
                source.label,
                replid=first.source_replid,
                offset=first.source_offset,
                updated_at=int(time.time() * 1000),
            )
            before = await watcher.poll()
            target.stop()
            seen = []
            for _ in range(6):
                await asyncio.sleep(0.25)  # wall time passing is what is measured here
                seen.append((time.monotonic(), await watcher.poll()))
            store = SyncStore()
            store.expect(["t1"])
            store.put(seen[-1][1])
            registry = CollectorRegistry(auto_describe=False)
            registry.register(SyncCollector(store))
            return before, seen, generate_latest(registry).decode()
        finally:
            watcher.close()

    with BackgroundWriter(source.client(), batch=10, period=0.02):
        before, seen, text = asyncio.run(scenario())
    assert before.target_up and before.lag_seconds is not None
    for _, view in seen:
        assert not view.target_up and view.state == "unknown" and view.checkpoint is None
        assert view.lag_bytes is not None and view.lag_bytes > 0
        assert view.lag_seconds is not None and not view.lag_seconds_exact
    (t0, v0), (t1, v1) = seen[0], seen[-1]
    assert v0.lag_seconds is not None and v1.lag_seconds is not None
    assert abs((v1.lag_seconds - v0.lag_seconds) - (t1 - t0)) < 0.2
    samples = parse_metrics(text)
    age = sample_value(samples, "replwatch_sync_checkpoint_age_seconds", task="t1")
    assert age is not None and age >= 1.0
    assert sample_value(samples, "replwatch_sync_lag_seconds", task="t1") is not None


def test_watcher_reconnects_after_target_restart(
    pair: tuple[RedisProcess, RedisProcess],
) -> None:
    source, target = pair
    replid, offset = source_position(source)
    write_checkpoint(target.client(), "t1", source.label, replid=replid, offset=offset)
    task = one_task(source.url, target.url)

    async def scenario() -> tuple[SyncTaskView, SyncTaskView, SyncTaskView]:
        watcher = SyncWatcher(task, 0.5, TLSConfig())
        try:
            before = await watcher.poll()
            target.stop()
            during = await watcher.poll()
            target.restart()  # same port, empty: a checkpoint has to be written again
            write_checkpoint(target.client(), "t1", source.label, replid=replid, offset=offset + 1)
            after = await watcher.poll()
            return before, during, after
        finally:
            watcher.close()

    before, during, after = asyncio.run(scenario())
    assert before.target_up and before.applied_offset == offset
    assert not during.target_up
    assert during.target_error_reason in ("refused", "reset")
    assert during.source_up  # the other side is unaffected
    assert after.target_up, after
    assert after.applied_offset == offset + 1


def test_black_holed_target_times_out_without_delaying_the_source(
    pair: tuple[RedisProcess, RedisProcess],
) -> None:
    source, _ = pair
    with BlackHole() as hole:
        started = time.monotonic()
        view = poll(one_task(source.url, hole.url), timeout=0.3)
        took = time.monotonic() - started
    assert not view.target_up
    assert view.target_error_reason == "timeout"
    assert view.source_up and view.source_offset is not None
    assert took < 0.3 + 0.4, took


def test_no_checkpoint_yet_is_state_unknown(pair: tuple[RedisProcess, RedisProcess]) -> None:
    source, target = pair
    target.client().set("unrelated", "1")
    view = poll(one_task(source.url, target.url))
    assert view.target_up and view.source_up
    assert view.checkpoint is None
    assert view.state == "unknown"
    assert view.lag_bytes is None and view.lag_seconds is None
    assert view.full_resyncs is None and view.applied_offset is None
    assert not view.running


def test_checkpoint_read_from_db0_of_a_password_protected_target(
    pair: tuple[RedisProcess, RedisProcess],
) -> None:
    source, target = pair
    replid, offset = source_position(source)
    write_checkpoint(target.client(), "t1", source.label, replid=replid, offset=offset)
    target.client().config_set("requirepass", SECRET)
    # the task's target is db 3; the checkpoint lives in db 0 all the same
    view = poll(one_task(source.url, f"redis://:{SECRET}@127.0.0.1:{target.port}/3"))
    assert view.target_up, view
    assert view.applied_offset == offset
    wrong = poll(one_task(source.url, f"redis://:wrong-{SECRET}@127.0.0.1:{target.port}/0"))
    assert not wrong.target_up
    assert wrong.target_error_reason == "auth"
    assert SECRET not in json.dumps(wrong.to_dict())


# ----------------------------------------------------------------------------- full sync


def test_progress_during_a_full_sync(pair: tuple[RedisProcess, RedisProcess]) -> None:
    source, target = pair
    replid, snapshot_offset = source_position(source)
    write_load(source, count=20)
    client = target.client()
    task = one_task(source.url, target.url)
    full_sync = {
        "state": "full_sync",
        "replid": replid,
        "offset": snapshot_offset,
        "full_sync_finished_at": "",
        "rdb_bytes_total": int(2.6 * GIB),
        "rdb_bytes_loaded": int(1.2 * GIB),
        "keys_total": 2_600_000,
        "keys_loaded": 1_234_567,
    }
    write_checkpoint(client, "t1", source.label, **full_sync)
    view = poll(task)
    assert view.state == "full_sync" and view.running
    assert view.progress == pytest.approx(1.2 / 2.6, abs=1e-6)
    assert (view.keys_loaded, view.keys_total) == (1_234_567, 2_600_000)
    assert (view.rdb_bytes_loaded, view.rdb_bytes_total) == (int(1.2 * GIB), int(2.6 * GIB))
    assert view.source_offset is not None
    # the copy is behind by the stream since the snapshot plus the snapshot not loaded yet,
    # and at least as old as the full sync (begun 5 s ago), a lower bound
    stream = view.source_offset - snapshot_offset
    assert stream > 0
    assert view.lag_bytes == stream + int(2.6 * GIB) - int(1.2 * GIB)
    assert view.lag_seconds is not None and view.lag_seconds >= 5.0
    assert not view.lag_seconds_exact
    assert view.lag_bytes_exact  # the snapshot's size is known

    # diskless: the size is not known in advance, progress comes from the keys
    write_checkpoint(client, "t1", source.label, **{**full_sync, "rdb_bytes_total": 0})
    diskless = poll(task)
    assert diskless.progress == pytest.approx(1_234_567 / 2_600_000, abs=1e-6)
    assert diskless.source_offset is not None
    assert diskless.lag_bytes == diskless.source_offset - snapshot_offset  # (stream only)
    # ... so the byte lag is a lower bound, and the size is unknown, not 0 (issue 21)
    assert not diskless.lag_bytes_exact
    assert diskless.rdb_bytes_total is None and diskless.checkpoint is not None
    assert diskless.checkpoint.rdb_bytes_total is None

    # after the full sync the same fields describe the last snapshot: no running progress
    write_checkpoint(client, "t1", source.label, **{**full_sync, "state": "incremental"})
    done = poll(task)
    assert done.progress is None
    assert done.keys_total == 2_600_000


# ----------------------------------------------------------------------------- exporter


def test_collector_exposition(pair: tuple[RedisProcess, RedisProcess]) -> None:
    source, target = pair
    replid, offset = source_position(source)
    write_load(source, count=10)
    client = target.client()
    now_ms = int(time.time() * 1000)
    write_checkpoint(
        client,
        "alpha",
        source.label,
        replid=replid,
        offset=offset,
        full_resyncs=3,
        applied_commands=4567,
        updated_at=now_ms - 2500,
    )
    write_checkpoint(
        client,
        "beta",
        source.label,
        state="full_sync",
        replid=replid,
        offset=offset,
        rdb_bytes_total=1000,
        rdb_bytes_loaded=470,
        keys_total=200,
        keys_loaded=90,
    )
    write_checkpoint(
        client, "gamma", source.label, state="failed", last_error="RESTORE rejected payload"
    )
    down = f"redis://127.0.0.1:{closed_port()}"
    cfg = task_config(
        ("alpha", source.url, target.url),
        ("beta", source.url, target.url),
        ("gamma", down, target.url),
        ("delta", source.url, target.url),  # nothing on the target for it
    )
    store = SyncStore()
    store.expect(t.name for t in cfg.sync.tasks)
    watchers = build_sync_watchers(cfg)

    async def scenario() -> list[SyncTaskView]:
        try:
            return await poll_into(watchers, store)
        finally:
            for w in watchers:
                w.close()

    views = {v.task: v for v in asyncio.run(scenario())}
    assert [v.task for v in store.all()] == ["alpha", "beta", "delta", "gamma"]
    scrape_time = time.time()
    registry = CollectorRegistry(auto_describe=False)
    registry.register(SyncCollector(store, wall_clock=lambda: scrape_time))
    text = generate_latest(registry).decode()

    promtool = shutil.which("promtool")
    assert promtool, "promtool (Debian package prometheus) is needed"
    check = subprocess.run(
        [promtool, "check", "metrics"], input=text, text=True, capture_output=True, check=False
    )
    assert check.returncode == 0, check.stdout + check.stderr + text

    data = parse_metrics(text)
    alpha = views["alpha"]
    assert alpha.source_offset is not None and alpha.lag_bytes is not None
    assert (
        sample_value(data, "replwatch_sync_lag_bytes", task="alpha") == alpha.source_offset - offset
    )
    assert (
        sample_value(data, "replwatch_sync_source_offset_bytes", task="alpha")
        == alpha.source_offset
    )
    assert sample_value(data, "replwatch_sync_applied_offset_bytes", task="alpha") == offset
    assert sample_value(data, "replwatch_sync_lag_seconds", task="alpha") == alpha.lag_seconds
    assert sample_value(data, "replwatch_sync_full_resyncs_total", task="alpha") == 3
    assert sample_value(data, "replwatch_sync_applied_commands_total", task="alpha") == 4567
    assert sample_value(
        data, "replwatch_sync_checkpoint_age_seconds", task="alpha"
    ) == pytest.approx(scrape_time - (now_ms - 2500) / 1000)
    assert sample_value(data, "replwatch_sync_source_up", task="alpha") == 1
    assert sample_value(data, "replwatch_sync_target_up", task="alpha") == 1
    for state in (*STATES, "unknown"):
        expected = 1 if state == "incremental" else 0
        assert sample_value(data, "replwatch_sync_state", task="alpha", state=state) == expected
    assert sample_value(data, "replwatch_sync_full_sync_progress_ratio", task="alpha") is None
    assert not [line for line in series_of(text, "alpha") if "last_error_info" in line]

    assert sample_value(data, "replwatch_sync_full_sync_progress_ratio", task="beta") == 0.47
    assert sample_value(data, "replwatch_sync_keys_loaded", task="beta") == 90
    assert sample_value(data, "replwatch_sync_snapshot_keys", task="beta") == 200
    assert sample_value(data, "replwatch_sync_snapshot_loaded_bytes", task="beta") == 470
    assert sample_value(data, "replwatch_sync_snapshot_size_bytes", task="beta") == 1000
    assert sample_value(data, "replwatch_sync_snapshot_size_bytes", task="alpha") is None
    assert sample_value(data, "replwatch_sync_state", task="beta", state="full_sync") == 1

    assert sample_value(data, "replwatch_sync_source_up", task="gamma") == 0
    assert sample_value(data, "replwatch_sync_target_up", task="gamma") == 1
    assert sample_value(data, "replwatch_sync_state", task="gamma", state="failed") == 1
    assert (
        sample_value(data, "replwatch_sync_last_error_info", task="gamma", reason="source_refused")
        == 1
    )
    assert (
        sample_value(data, "replwatch_sync_last_error_info", task="gamma", reason="task_failed")
        == 1
    )
    assert sample_value(data, "replwatch_sync_lag_bytes", task="gamma") is None
    assert sample_value(data, "replwatch_sync_source_offset_bytes", task="gamma") is None

    assert sample_value(data, "replwatch_sync_state", task="delta", state="unknown") == 1
    assert sample_value(data, "replwatch_sync_full_resyncs_total", task="delta") is None
    assert sample_value(data, "replwatch_sync_applied_offset_bytes", task="delta") is None
    assert sample_value(data, "replwatch_sync_checkpoint_age_seconds", task="delta") is None
    assert sample_value(data, "replwatch_sync_target_up", task="delta") == 1
    assert not any("NaN" in line for line in text.splitlines())

    # a task removed by a reload leaves /metrics, and a late poll of it does not bring it back
    store.expect(["alpha", "beta", "delta"])
    store.put(views["gamma"])
    after = generate_latest(registry).decode()
    assert series_of(text, "gamma")
    assert series_of(after, "gamma") == []
    assert series_of(after, "alpha")


# ----------------------------------------------------------------------------- sync status


def run_status(
    cfg: Config, task: str | None, as_json: bool = False, is_tty: bool = False
) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    code = run_sync_status(cfg, task, as_json, out, is_tty, source="/etc/rw.yaml", err=err)
    return code, out.getvalue(), err.getvalue()


@pytest.fixture
def protected_pair(
    pair: tuple[RedisProcess, RedisProcess],
) -> Iterator[tuple[RedisProcess, RedisProcess, str]]:
    """(source, target, target url with password): the target requires SECRET."""
    source, target = pair
    target.client().config_set("requirepass", SECRET)
    yield source, target, f"redis://:{SECRET}@127.0.0.1:{target.port}/0"


def authed(target: RedisProcess) -> redis.Redis:
    return redis.Redis(port=target.port, password=SECRET, socket_timeout=2)


def test_status_table_and_json_for_an_incremental_task(
    protected_pair: tuple[RedisProcess, RedisProcess, str],
) -> None:
    source, target, target_url = protected_pair
    replid, offset = source_position(source)
    write_load(source, count=10)
    with authed(target) as client:
        write_checkpoint(
            client, "a2b", source.label, replid=replid, offset=offset, applied_commands=12345
        )
    cfg = task_config(("a2b", source.url, target_url))

    code, out, err = run_status(cfg, "a2b")
    assert code == 0, out
    assert err == ""
    assert out.startswith(f"sync task a2b: incremental  {source.label} -> {target.label}\n")
    shown = re.search(r"\n  source\s+up, offset (\d+)\n", out)
    assert shown is not None, out
    source_offset = int(shown.group(1))
    lag = source_offset - offset
    assert lag > 0
    assert re.search(rf"\n  lag\s+{re.escape(format_lag_bytes(lag))}, ", out), out
    assert re.search(r"\n  target\s+up\n", out), out
    assert out.count(source.label) == 1  # in the heading line only
    assert re.search(rf"applied offset\s+{offset}\n", out)
    assert re.search(r"applied commands\s+12,345\n", out)
    assert re.search(r"full resyncs\s+1\n", out)
    assert "full sync " not in out  # no progress line outside a full sync
    assert SECRET not in out

    code, out, err = run_status(cfg, None, as_json=True)
    assert code == 0
    doc = json.loads(out)
    assert doc["ok"] is True
    [task] = doc["tasks"]
    assert task["task"] == "a2b" and task["state"] == "incremental"
    assert task["target"] == target.label
    assert task["lag_bytes"] == task["source_offset"] - offset
    assert task["applied_commands"] == 12345
    assert task["checkpoint"]["replid"] == replid
    assert SECRET not in out


def test_status_progress_bar_during_full_sync(pair: tuple[RedisProcess, RedisProcess]) -> None:
    source, target = pair
    replid, offset = source_position(source)
    write_checkpoint(
        target.client(),
        "big",
        source.label,
        state="full_sync",
        replid=replid,
        offset=offset,
        full_sync_finished_at="",
        rdb_bytes_total=int(2.6 * GIB),
        rdb_bytes_loaded=int(1.2 * GIB),
        keys_total=2_600_000,
        keys_loaded=1_234_567,
    )
    cfg = task_config(("big", source.url, target.url))
    detail = "1.2 GiB of 2.6 GiB, 1,234,567 of 2,600,000 keys"

    code, out, _ = run_status(cfg, "big", is_tty=True)
    assert code == 0, out
    bar = progress_bar(1.2 / 2.6)
    assert bar == "[" + "#" * 9 + "." * 11 + "]"
    assert re.search(rf"full sync\s+{re.escape(bar)} 46%  {re.escape(detail)}\n", out), out

    code, out, _ = run_status(cfg, "big", is_tty=False)
    assert code == 0
    assert re.search(rf"full sync\s+46%  {re.escape(detail)}\n", out), out
    assert "[#" not in out

    code, out, _ = run_status(cfg, "big", as_json=True)
    task = json.loads(out)["tasks"][0]
    assert task["progress"] == pytest.approx(1.2 / 2.6, abs=1e-6)
    assert task["keys_loaded"] == 1_234_567


def test_status_exit_codes_and_no_secrets(
    protected_pair: tuple[RedisProcess, RedisProcess, str],
) -> None:
    source, target, target_url = protected_pair
    replid, offset = source_position(source)
    with authed(target) as client:
        write_checkpoint(client, "ok", source.label, replid=replid, offset=offset)
        write_checkpoint(
            client, "broken", source.label, state="failed", last_error="target refused RESTORE"
        )
    wrong_pw = "not-the-pw-9c1e"
    cfg = task_config(
        ("ok", source.url, target_url),
        ("broken", source.url, target_url),
        ("fresh", source.url, target_url),
        ("nosource", f"redis://127.0.0.1:{closed_port()}", target_url),
        ("badauth", source.url, f"redis://:{wrong_pw}@127.0.0.1:{target.port}/0"),
    )

    assert run_status(cfg, "ok")[0] == 0

    code, out, _ = run_status(cfg, "broken")
    assert code == 1
    assert "sync task broken: failed" in out
    assert re.search(r"last error\s+target refused RESTORE\n", out)

    code, out, _ = run_status(cfg, "fresh")
    assert code == 1
    assert "sync task fresh: unknown (no checkpoint on the target yet)" in out

    code, out, _ = run_status(cfg, "nosource")
    assert code == 1
    assert re.search(r"\n  source\s+DOWN: refused: ", out), out

    code, out, err = run_status(cfg, "badauth")
    assert code == 1
    assert re.search(r"\n  target\s+DOWN: auth: ", out), out
    assert wrong_pw not in out + err

    code, out, err = run_status(cfg, None)  # all of them: one bad task makes it 1
    assert code == 1
    assert out.count("sync task ") == 5
    code, json_out, _ = run_status(cfg, None, as_json=True)
    assert code == 1
    assert json.loads(json_out)["ok"] is False
    for text in (out, err, json_out):
        assert SECRET not in text
        assert wrong_pw not in text

    code, out, err = run_status(cfg, "nope")
    assert code == 2
    assert out == ""
    assert err == "sync status: no task named nope in /etc/rw.yaml\n"

    code, out, err = run_status(task_config(), None)
    assert code == 2
    assert err.count("\n") == 1 and "no sync tasks in /etc/rw.yaml" in err


# ----------------------------------------------------------------------------- rendering (pure)


@pytest.mark.parametrize(
    ("value", "shown"),
    [
        (0, "0 bytes"),
        (1, "1 byte"),
        (1023, "1023 bytes"),
        (1536, "1.5 KiB (1,536 bytes)"),
        (int(2.6 * GIB), "2.6 GiB (2,791,728,742 bytes)"),
    ],
)
def test_format_lag_bytes(value: int, shown: str) -> None:
    """One form: the exact count alone while it is short, not '0 B (0 bytes)' (issue 21)."""
    assert format_lag_bytes(value) == shown


def _diskless_full_sync_view() -> SyncTaskView:
    """A diskless full sync 5 s in: 2299 bytes of the snapshot read, its size unknown."""
    now = time.time()
    replid = "a" * 40
    raw = {
        "state": "full_sync",
        "replid": replid,
        "offset": "1000",
        "rdb_bytes_total": "0",  # what the syncer records for a diskless snapshot
        "rdb_bytes_loaded": "2299",
        "keys_total": "40",
        "keys_loaded": "10",
        "full_sync_started_at": str(int((now - 5) * 1000)),
        "updated_at": str(int(now * 1000)),
    }
    cp = Checkpoint.from_hash("d", raw)
    info = parse_replication(
        f"role:master\r\nmaster_replid:{replid}\r\nmaster_replid2:{'0' * 40}\r\n"
        "master_repl_offset:1500\r\nsecond_repl_offset:-1\r\n"
    )
    clock = OffsetClock()
    mono = time.monotonic()
    clock.observe(1500, mono, replid)
    task = one_task("redis://127.0.0.1:1", "redis://127.0.0.1:2", name="d")
    return build_view(task, SideRead(info, mono), SideRead(cp, mono), clock, mono, now, 30.0)


def test_status_of_a_diskless_full_sync_says_the_size_is_unknown() -> None:
    view = _diskless_full_sync_view()
    data = json.loads(render_json([view]))["tasks"][0]
    # unknown is null, not 0 beside 2299 loaded (issue 21)
    assert (data["rdb_bytes_loaded"], data["rdb_bytes_total"]) == (2299, None)
    assert data["checkpoint"]["rdb_bytes_total"] is None
    assert data["lag_bytes"] == 500 and data["lag_bytes_exact"] is False
    text = render_table([view], is_tty=False)
    assert re.search(r"\n  lag\s+>=500 bytes, >=5\.\d\ds\n", text), text
    # the snapshot's offset, not one applied: the copy is not whole yet
    assert re.search(r"\n  snapshot offset\s+1000\n", text) and "applied offset" not in text
    assert re.search(
        r"\n  full sync\s+25%  2\.2 KiB of a diskless snapshot \(size unknown\), "
        r"10 of 40 keys\n",
        text,
    ), text
    assert "(0 bytes)" not in text and " 0 B" not in text
    # the addresses are in the heading line, not again in the source/target rows
    assert text.splitlines()[0] == "sync task d: full_sync  127.0.0.1:1 -> 127.0.0.1:2"
    assert text.count("127.0.0.1:1") == 1 and text.count("127.0.0.1:2") == 1


def test_daemon_rows_align_with_the_task_rows() -> None:
    """`sync status --url`: the daemon's rows (desired, process) and the task's share one
    column, whatever the longest name."""
    view = _diskless_full_sync_view()
    record = {
        "name": "d",
        "origin": "api",
        "desired": "running",
        "source": view.source,
        "target": view.target,
        "process": {"running": True, "pid": 42, "restarts": 0, "last_exit": None},
        "sync": {**view.to_dict(), "full_resync_reason": "the backlog no longer held it"},
    }
    lines = render_record(record, is_tty=False).splitlines()
    assert lines[1].startswith("  desired ") and lines[2].startswith("  process ")
    rows = [re.match(r"^  (\S+(?: \S+)*?)\s{2,}(\S.*)$", line) for line in lines[1:]]
    assert all(rows), lines
    assert len({row.start(2) for row in rows if row}) == 1, lines
    assert any(row.group(1) == "full resync reason" for row in rows if row)
