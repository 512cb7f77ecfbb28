"""A task process's own record of how it ended, in the state directory.

The checkpoint hash on the target is a task's public record, but a target that is out of
memory or a read-only replica refuses the very HSET that would say so (issue 17: the task
looked healthy while it failed). So the task process also writes a small report file,
atomically (replwatch/atomic_file.py), when it records an error and when it stops or fails
(never per batch: the checkpoint carries the running state):

    <state dir>/sync/<task>.json
    {"version": 1, "task": "a_to_b", "state": "failed", "updated_at": <unix ms>,
     "pid": 1234, "last_error": "target … ran out of memory …",
     "full_resync_reason": "…" | null,
     "memory_shortfall": {"oom_maxmemory": …, "oom_policy": "…", "oom_needed": …} | null}

`replwatch sync run -c CONFIG` knows the state directory (tasks/task_state.state_dir_of); a runner
without a config writes none. The monitor (`replwatch run`, `replwatch sync status -c`)
merges it into its view of the task (merge_report): when the report is newer than the
checkpoint's updated_at (or there is no checkpoint), its failed / stopped state and its
last error win. The task's next start reads the memory shortfall from it when the
checkpoint could not hold it (replwatch/sync/preflight.py).
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from replwatch.atomic_file import write_atomic
from replwatch.sync.preflight import MemoryShortfall

log = logging.getLogger("replwatch.sync")

REPORT_VERSION = 1
REPORT_DIR = "sync"
# report states that override an older checkpoint's state in the monitor's view
ENDED_STATES = frozenset({"failed", "stopped"})


def report_path(state_dir: Path, task: str) -> Path:
    return state_dir / REPORT_DIR / f"{task}.json"


@dataclass(frozen=True, slots=True)
class TaskReport:
    """What the report file holds (see the module docstring)."""

    task: str
    state: str
    updated_at: int  # unix ms, the task process's clock (as the checkpoint's updated_at)
    pid: int
    last_error: str | None = None
    full_resync_reason: str | None = None
    memory_shortfall: MemoryShortfall | None = None

    def to_json(self) -> bytes:
        shortfall = self.memory_shortfall
        data = {
            "version": REPORT_VERSION,
            "task": self.task,
            "state": self.state,
            "updated_at": self.updated_at,
            "pid": self.pid,
            "last_error": self.last_error,
            "full_resync_reason": self.full_resync_reason,
            "memory_shortfall": None if shortfall is None else shortfall.as_dict(),
        }
        return (json.dumps(data, sort_keys=True) + "\n").encode()

    @classmethod
    def from_json(cls, text: bytes | str) -> TaskReport | None:
        """The report, or None when the text is not a report of this version."""
        try:
            data = json.loads(text)
        except (ValueError, UnicodeDecodeError):
            return None
        if not isinstance(data, dict) or data.get("version") != REPORT_VERSION:
            return None
        task, state, updated_at, pid = (data.get(k) for k in ("task", "state", "updated_at", "pid"))
        if not (isinstance(task, str) and isinstance(state, str)):
            return None
        if not (isinstance(updated_at, int) and isinstance(pid, int)):
            return None
        shortfall = data.get("memory_shortfall")
        return cls(
            task=task,
            state=state,
            updated_at=updated_at,
            pid=pid,
            last_error=_text(data.get("last_error")),
            full_resync_reason=_text(data.get("full_resync_reason")),
            memory_shortfall=MemoryShortfall.of(shortfall) if isinstance(shortfall, dict) else None,
        )


def _text(value: Any) -> str | None:
    return value if isinstance(value, str) and value else None


def read_report(path: Path) -> TaskReport | None:
    """The report at `path`; None when there is none or it cannot be read."""
    try:
        text = path.read_bytes()
    except OSError:
        return None
    return TaskReport.from_json(text)


class TaskReporter:
    """Writes one task's report (a no-op without a path: a runner without a config).
    A write that fails is logged, never raised: the report is a second record, the task
    goes on (or ends) as it would without it."""

    def __init__(self, path: Path | None, task: str) -> None:
        self.path = path
        self.task = task

    def read(self) -> TaskReport | None:
        return None if self.path is None else read_report(self.path)

    def write(
        self,
        state: str,
        updated_at: int,
        last_error: str | None = None,
        full_resync_reason: str | None = None,
        memory_shortfall: MemoryShortfall | None = None,
    ) -> None:
        if self.path is None:
            return
        report = TaskReport(
            self.task,
            state,
            updated_at,
            os.getpid(),
            last_error[:500] if last_error else None,
            full_resync_reason,
            memory_shortfall,
        )
        try:
            # the state directory, when this creates it, as the daemon would: 0700 (it holds
            # the API's task definitions, passwords included)
            self.path.parent.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
            write_atomic(self.path, report.to_json(), mode=0o644)
        except OSError as exc:
            log.warning(
                "task %s: cannot write its report %s: %s", self.task, self.path, exc.strerror
            )


def merge_report(
    state: str,
    last_error: str | None,
    checkpoint_updated_at: int | None,
    report: TaskReport | None,
) -> tuple[str, str | None]:
    """The state and last error to show, from the checkpoint's and the report's: a report
    newer than the checkpoint (or with no checkpoint: `checkpoint_updated_at` None) wins
    with a failed / stopped state and with its last error; else the checkpoint's stand."""
    if report is None:
        return state, last_error
    if checkpoint_updated_at is not None and report.updated_at <= checkpoint_updated_at:
        return state, last_error
    if report.state in ENDED_STATES:
        state = report.state
    return state, report.last_error or last_error
