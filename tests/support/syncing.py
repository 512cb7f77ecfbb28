"""Helpers of the syncer tests: a task between two test servers, its checkpoint, waiting
for it to catch up, comparing both sides, task runners in threads (stopped at teardown
by the `runners` fixture in conftest.py), a task as its own `replwatch sync run` process,
a checkpoint written by hand and one poll of the monitor's watcher."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import redis
import yaml

from replwatch.compare import CompareOptions, compare_databases
from replwatch.config import SyncTask, TLSConfig, config_from_data
from replwatch.sync.checkpoint import SCHEMA_VERSION, Checkpoint, checkpoint_key
from replwatch.sync.task import SyncTaskRunner
from replwatch.tasks.watch import SyncTaskView, SyncWatcher

from .datasets import connect
from .servers import RedisProcess, wait_for

TASK = "t"


def write_sync_config(
    path: Path,
    source: RedisProcess,
    target: RedisProcess,
    *,
    top: dict[str, Any] | None = None,
    **options: object,
) -> Path:
    """A config file with the one task TASK from `source` to `target` (task `options`; `top`:
    other top-level sections), for `replwatch sync …` run as a process."""
    task = {"name": TASK, "source": source.url, "target": target.url, **options}
    path.write_text(yaml.safe_dump({**(top or {}), "sync": {"tasks": [task]}}))
    return path


def make_task(source: RedisProcess, target: RedisProcess, **options: object) -> SyncTask:
    cfg = config_from_data(
        {"sync": {"tasks": [{"name": TASK, "source": source.url, "target": target.url, **options}]}}
    )
    return cfg.sync.tasks[0]


def checkpoint(target: RedisProcess) -> Checkpoint | None:
    with connect(target) as client:
        return Checkpoint.from_hash(TASK, client.hgetall(checkpoint_key(TASK)))


def source_position(source: RedisProcess) -> tuple[str, int]:
    with connect(source) as client:
        info = client.info("replication")
        return str(info["master_replid"]), int(info["master_repl_offset"])


def wait_caught_up(source: RedisProcess, target: RedisProcess, timeout: float = 30) -> Checkpoint:
    """Until the checkpoint says incremental at the source's current stream and offset."""
    seen: list[Checkpoint | None] = []

    def caught_up() -> bool:
        cp = checkpoint(target)
        seen.append(cp)
        replid, offset = source_position(source)
        return (
            cp is not None
            and cp.state == "incremental"
            and cp.replid == replid
            and cp.offset is not None
            and cp.offset >= offset
        )

    wait_for(caught_up, timeout, f"the task to catch up (last checkpoint: {seen[-1:]})")
    cp = checkpoint(target)
    assert cp is not None
    return cp


def assert_equal(source: RedisProcess, target: RedisProcess) -> None:
    """compare passes (it ignores __replwatch:* keys), and the checkpoint is in db 0 only."""
    for db in range(1, 16):
        with connect(target, db) as client:
            assert not client.exists(checkpoint_key(TASK)), f"a checkpoint in db {db}"
    report = compare_databases(
        make_task(source, target).source,
        make_task(source, target).target,
        CompareOptions(all_dbs=True, recheck=0),
    )
    assert report.equal, [(d.db, d.key, d.kind, d.detail) for d in report.differences][:20]


class RunnerThread:
    """A SyncTaskRunner in a thread; stop() waits for it."""

    def __init__(self, task: SyncTask, io_timeout: float = 5) -> None:
        self.runner = SyncTaskRunner(task, TLSConfig(), io_timeout=io_timeout)
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


def start(task: SyncTask, runners: list[RunnerThread], io_timeout: float = 5) -> RunnerThread:
    """A task running in a thread, registered for the teardown of `runners`."""
    runner = RunnerThread(task, io_timeout)
    runners.append(runner)
    return runner


def write_checkpoint(client: redis.Redis, task: str, source_label: str, **fields: Any) -> None:
    """HSET the checkpoint hash of `task` in db 0 of the target, as the writer would."""
    now_ms = int(time.time() * 1000)
    mapping: dict[str, Any] = {
        "version": SCHEMA_VERSION,
        "task": task,
        "source": source_label,
        "state": "incremental",
        "updated_at": now_ms,
        "full_sync_started_at": now_ms - 5000,
        "full_sync_finished_at": now_ms - 4000,
        "full_resyncs": 1,
        "applied_commands": 0,
        "skipped_keys": 0,
        "pid": os.getpid(),
        "host": "test-host",
    }
    mapping.update(fields)
    key = checkpoint_key(task)
    client.delete(key)
    client.hset(key, mapping={k: str(v) for k, v in mapping.items()})


async def poll_once(task: SyncTask, timeout: float = 0.5) -> SyncTaskView:
    watcher = SyncWatcher(task, timeout, TLSConfig())
    try:
        return await watcher.poll()
    finally:
        watcher.close()


def poll(task: SyncTask, timeout: float = 0.5) -> SyncTaskView:
    return asyncio.run(poll_once(task, timeout))


def start_sync_process(config: Path, log: Path, task: str = TASK) -> subprocess.Popen[bytes]:
    """`replwatch sync run -c config --task task` in a session of its own, its output
    appended to `log`. The caller stops it (by pid: SIGTERM, or SIGKILL as a crash)."""
    with log.open("ab") as out:
        return subprocess.Popen(
            [sys.executable, "-m", "replwatch", "sync", "run", "-c", str(config), "--task", task],
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
