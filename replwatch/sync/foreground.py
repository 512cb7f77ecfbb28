"""`replwatch sync run`: one task in the foreground until a signal or a fatal error — the
runner for its source (one SyncTaskRunner, or a ClusterTaskRunner with one per master shard)
and SIGTERM/SIGINT taken from a thread of its own.

Above both runners, so neither imports the other to be started.
"""

from __future__ import annotations

import logging
import os
import signal
import threading
from collections.abc import Callable
from pathlib import Path

from replwatch.config import ClusterSource, SyncTask, TLSConfig
from replwatch.sync.cluster import ClusterTaskRunner
from replwatch.sync.task import SyncTaskRunner
from replwatch.sync.task_report import report_path

log = logging.getLogger("replwatch.sync")


def run_task_foreground(task: SyncTask, tls: TLSConfig, state_dir: Path | None = None) -> int:
    """`replwatch sync run`: the task until SIGTERM/SIGINT (exit 0, checkpoint kept) or a
    fatal error (exit 1). With `state_dir` the task keeps its local report there
    (task_report.py)."""
    # a cluster source: one SyncTaskRunner per master shard, in threads (sync/cluster.py)
    runner: SyncTaskRunner | ClusterTaskRunner = (
        ClusterTaskRunner(task, tls, state_dir=state_dir)
        if isinstance(task.source, ClusterSource)
        else SyncTaskRunner(
            task, tls, report_path=None if state_dir is None else report_path(state_dir, task.name)
        )
    )

    stop_on_signals(runner.stop, task.name)
    log.info("task %s: %s -> %s", task.name, task.source.label, task.target.label)
    try:
        return runner.run()
    finally:
        # the rest of a burst of signals must not kill the exit (Python puts the default
        # action back for its own handlers as it shuts down, not for an ignored signal)
        for signum in (signal.SIGTERM, signal.SIGINT):
            signal.signal(signum, signal.SIG_IGN)


def stop_on_signals(stop: Callable[[], None], name: str) -> None:
    """Call stop() once at the first SIGTERM or SIGINT, from a thread of its own.

    Not from a Python signal handler: a handler runs in the main thread between two of its
    bytecodes, possibly while that thread holds the very lock stop() needs (a
    threading.Event's), and a second signal runs the handler again inside the first. Both
    deadlock, and two SIGTERMs are the rule, not the exception: the kernel sends one when the
    supervisor's spawning thread exits (PR_SET_PDEATHSIG), the supervisor another (seen as
    "stopping" logged twice, then SIGKILL after the grace period, checkpoint left
    "incremental"). So the signals are taken through signal.set_wakeup_fd: the C handler
    writes the signal's number to a pipe (async-signal-safe), a thread reads it.
    Call from the main thread."""
    read_end, write_end = os.pipe()
    os.set_blocking(write_end, False)
    wanted = {int(signal.SIGTERM), int(signal.SIGINT)}

    def watch() -> None:
        stopped = False
        while True:
            try:
                data = os.read(read_end, 64)
            except OSError:
                return
            if not data:
                return
            for signum in data:
                if signum in wanted and not stopped:
                    stopped = True
                    log.info("task %s: stopping (signal %d)", name, signum)
                    stop()

    for signum in wanted:
        signal.signal(signum, lambda _signum, _frame: None)  # the work is in watch()
    signal.set_wakeup_fd(write_end, warn_on_full_buffer=False)
    threading.Thread(target=watch, name="signals", daemon=True).start()
