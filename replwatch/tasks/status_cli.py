"""`replwatch sync status [TASK]`: one poll of sync tasks, printed as a table or JSON.

Reads what the monitor reads (the checkpoint on the target, INFO on the source) through
SyncWatcher; it does not talk to the syncer process. During a full sync a progress line shows
bytes and keys loaded of the total, with a text progress bar on a terminal.

Time lag comes from the source's offset clock, which a one-shot command has a single sample
of: behind the source it can only say ">=" (a lower bound); the daemon's
replwatch_sync_lag_seconds has the whole table.

With the config's state directory (`-c`), the task process's local report is merged in
(replwatch/sync/task_report.py): a task that failed because its target refused every write
(out of memory, a read-only replica) shows as failed with that error, though the target
could not record it.

Exit status: 0 when every task reported is in state incremental or full_sync with a
checkpoint that is not stale, and both its source and target answered; 1 otherwise (a side
down, no checkpoint yet, stopped, failed, starting, a checkpoint not written for the stale
threshold); 2 for a configuration problem (no task of that name, no tasks configured).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TextIO

from replwatch.config import Config, SyncTask
from replwatch.sync.units import format_bytes
from replwatch.tasks.watch import SyncTaskView, task_watchers

EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_CONFIG = 2

BAR_WIDTH = 20
_EPILOG = (
    "asking the daemon (--url, REPLWATCH_URL or the client config) needs its admin token "
    "(--token, REPLWATCH_TOKEN): reads need it too. "
    "exit status: 0 when every task shown is in state incremental or full_sync (its "
    "checkpoint not stale) with source and target answering, 1 otherwise (failed, stopped, "
    "stale, a side down, the daemon refused), 2 for an unknown task name, no tasks "
    "configured or a bad option value"
)


def add_sync_status_arguments(parser: argparse.ArgumentParser) -> None:
    """The arguments of `sync status` (the caller adds -c/--config)."""
    parser.add_argument("task", nargs="?", help="only this task (default: every task)")
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    parser.epilog = _EPILOG


# --------------------------------------------------------------------------- formatting


def format_lag_bytes(value: int) -> str:
    """A byte count in one form: '0 bytes', '1 byte', '900 bytes'; past 1 KiB the rounded
    size and the exact count: '1.5 KiB (1,536 bytes)'."""
    if value < 1024:
        return "1 byte" if value == 1 else f"{value} bytes"
    return f"{format_bytes(value)} ({value:,} bytes)"


def format_seconds(value: float | None, exact: bool = True) -> str:
    if value is None:
        return "-"
    return f"{'' if exact else '>='}{value:.2f}s"


def progress_bar(ratio: float, width: int = BAR_WIDTH) -> str:
    done = round(max(0.0, min(1.0, ratio)) * width)
    return "[" + "#" * done + "." * (width - done) + "]"


def progress_line(view: SyncTaskView, is_tty: bool) -> str:
    """'[####....] 47%  1.2 GiB of 2.6 GiB, 1,234,567 of 2,600,000 keys' (bar on a tty)."""
    parts: list[str] = []
    loaded, total = view.rdb_bytes_loaded, view.rdb_bytes_total
    if loaded is not None and total:
        parts.append(f"{format_bytes(loaded)} of {format_bytes(total)}")
    elif loaded is not None:
        parts.append(f"{format_bytes(loaded)} of a diskless snapshot (size unknown)")
    keys, keys_total = view.keys_loaded, view.keys_total
    if keys is not None and keys_total:
        parts.append(f"{keys:,} of {keys_total:,} keys")
    elif keys is not None:
        parts.append(f"{keys:,} keys")
    detail = ", ".join(parts) or "nothing loaded yet"
    if view.progress is None:
        return detail
    percent = f"{view.progress:.0%}"
    if is_tty:
        return f"{progress_bar(view.progress)} {percent}  {detail}"
    return f"{percent}  {detail}"


def _count(value: int | None) -> str:
    return "-" if value is None else f"{value:,}"


# (the source and target rows do not repeat the addresses: the heading line names them)
def _source(view: SyncTaskView) -> str:
    if not view.source_up:
        return f"DOWN: {view.source_error_reason}: {view.source_error_message}"
    return f"up, offset {view.source_offset}"


def _target(view: SyncTaskView) -> str:
    if not view.target_up:
        return f"DOWN: {view.target_error_reason}: {view.target_error_message}"
    return "up"


def _lag(view: SyncTaskView) -> str:
    if view.lag_bytes is None:
        if view.checkpoint is not None and view.source_up and view.checkpoint.replid:
            return "unknown (the checkpoint is on another replication stream than the source)"
        return "-"
    seconds = format_seconds(view.lag_seconds, view.lag_seconds_exact)
    at_least = "" if view.lag_bytes_exact else ">="
    return f"{at_least}{format_lag_bytes(view.lag_bytes)}, {seconds}"


def _checkpoint_age(view: SyncTaskView) -> str:
    if view.seconds_since_update is None:
        return "-"
    text = f"updated {view.seconds_since_update:.1f}s ago"
    if not view.stale:
        return text
    if view.state == "full_sync":
        return text + " (stale: a running full sync records its progress every second)"
    return text + " (stale: the source moved on)"


def _offset_name(view: SyncTaskView) -> str:
    """The checkpoint's offset is the snapshot's until its full sync has finished: nothing
    is applied up to it yet."""
    if view.checkpoint is not None and view.checkpoint.snapshot_incomplete:
        return "snapshot offset"
    return "applied offset"


def render_task(
    view: SyncTaskView, is_tty: bool, first_rows: Sequence[tuple[str, str]] = ()
) -> str:
    """One task as a small key/value table; `first_rows` (the daemon's desired state and
    process) come first, aligned with the rest."""
    state = view.state
    if view.checkpoint is None and view.target_up:
        state += " (no checkpoint on the target yet)"
    elif view.checkpoint is None:
        state += " (the target cannot be read)"
    elif view.stale and view.state in ("full_sync", "incremental"):
        state += " (stale: not running)"
    rows = [
        *first_rows,
        ("source", _source(view)),
        ("target", _target(view)),
        ("lag", _lag(view)),
        (_offset_name(view), "-" if view.applied_offset is None else str(view.applied_offset)),
    ]
    if view.full_sync_running:
        rows.append(("full sync", progress_line(view, is_tty)))
    rows += [
        ("full resyncs", _count(view.full_resyncs)),
        ("applied commands", _count(view.applied_commands)),
        ("checkpoint", _checkpoint_age(view)),
        ("last error", view.last_error or "-"),
    ]
    if view.full_resync_reason:
        rows.append(("full resync reason", view.full_resync_reason))
    width = max(len(key) for key, _ in rows)
    lines = [f"sync task {view.task}: {state}  {view.source} -> {view.target}"]
    lines += [f"  {key.ljust(width)}  {value}" for key, value in rows]
    return "\n".join(lines)


def render_table(views: Sequence[SyncTaskView], is_tty: bool) -> str:
    return "\n\n".join(render_task(v, is_tty) for v in views) + "\n"


def render_json(views: Sequence[SyncTaskView]) -> str:
    data = {"tasks": [v.to_dict() for v in views], "ok": all(v.running for v in views)}
    return json.dumps(data, indent=2, sort_keys=True) + "\n"


# --------------------------------------------------------------------------- command


async def poll_tasks(
    cfg: Config, tasks: Sequence[SyncTask], state_dir: Path | None = None
) -> list[SyncTaskView]:
    """One poll of each task, concurrently; connections closed afterwards. `state_dir`:
    where the task processes keep their local reports (merged into the views)."""
    # (a cluster task: one watcher per master shard)
    watchers = [w for task in tasks for w in task_watchers(cfg, task, state_dir=state_dir)]
    try:
        return list(await asyncio.gather(*(w.poll() for w in watchers)))
    finally:
        for watcher in watchers:
            watcher.close()


def run_sync_status(
    cfg: Config,
    task: str | None,
    as_json: bool,
    out: TextIO,
    is_tty: bool,
    *,
    source: str = "<config>",
    err: TextIO | None = None,
    state_dir: Path | None = None,
) -> int:
    """Poll the named task (or every configured task) once and print it. `source` names the
    config in messages; errors go to `err` (stderr by default); `state_dir`: the config's
    state directory (the tasks' local reports). Returns the exit status."""
    errors = err if err is not None else sys.stderr
    if task is not None:
        found = cfg.sync.task(task)
        if found is None:
            print(f"sync status: no task named {task} in {source}", file=errors)
            return EXIT_CONFIG
        tasks = [found]
    else:
        tasks = list(cfg.sync.tasks)
        if not tasks:
            print(f"sync status: no sync tasks in {source} (sync.tasks)", file=errors)
            return EXIT_CONFIG
    views = asyncio.run(poll_tasks(cfg, tasks, state_dir))
    out.write(render_json(views) if as_json else render_table(views, is_tty))
    return EXIT_OK if all(v.running for v in views) else EXIT_FAILURE
