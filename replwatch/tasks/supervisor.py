"""`replwatch run` keeps every configured sync task running, each in its own process.

A full sync parses and writes gigabytes: in a process of its own it never slows the monitor's
event loop, and a crash of one task takes nothing else down. A task process that exits is
started again with backoff (1 s doubling to 30 s; back to 1 s after a minute of uptime); one
that exits 1 (a problem retrying cannot fix, e.g. a non-empty target, a target out of memory
or a replica) is retried every 60 s, so fixing the cause is enough. Such a retry costs the
source nothing while the cause is unchanged: a task checks its target (and what an earlier
attempt learned, e.g. the maxmemory a full sync did not fit in) before it asks the source
for a snapshot (replwatch/sync/guard.py), so it fails again without a fork. On shutdown
every child gets SIGTERM (it finishes its batch, keeps its checkpoint) and, after a grace
period, SIGKILL.

Tasks can be added, stopped, started (optionally afresh: `--afresh` for that one start) and
removed while it runs (the task lifecycle, replwatch/tasks/lifecycle.py, calls these). A stopped
task (`enabled` False) keeps its entry and counters but is not started again.
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Collection, Sequence
from dataclasses import dataclass, field

from replwatch.config import SyncTask

log = logging.getLogger("replwatch.sync.supervisor")  # name kept: log lines unchanged

BACKOFF_MIN = 1.0
BACKOFF_MAX = 30.0
FATAL_RETRY = 60.0
HEALTHY_AFTER = 60.0
EXIT_FATAL = 1


@dataclass
class TaskProcess:
    name: str
    proc: subprocess.Popen[bytes] | None = None
    started_at: float = 0.0
    restarts: int = 0
    next_start: float = 0.0
    backoff: float = BACKOFF_MIN
    last_exit: int | None = None
    history: list[int] = field(default_factory=list)
    enabled: bool = True  # False: stopped by an operator, not started again
    afresh_next: bool = False  # the next start passes --afresh (then it is cleared)


@dataclass(frozen=True, slots=True)
class ProcessStatus:
    enabled: bool  # False: stopped by an operator
    running: bool
    pid: int | None  # while running
    restarts: int
    last_exit: int | None


def _die_with_parent() -> None:
    """preexec_fn: the kernel sends the child SIGTERM when replwatch run dies, even by
    kill -9, so no task process outlives its supervisor (Linux; elsewhere a no-op)."""
    with contextlib.suppress(Exception):
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


def task_command(config_path: str, task: str, log_level: str, afresh: bool = False) -> list[str]:
    command = [
        sys.executable,
        "-m",
        "replwatch",
        "--log-level",
        log_level,
        "sync",
        "run",
        "-c",
        config_path,
        "--task",
        task,
    ]
    return [*command, "--afresh"] if afresh else command


class SyncSupervisor:
    """Starts, watches and restarts one child process per task."""

    def __init__(
        self,
        tasks: Sequence[SyncTask],
        config_path: str,
        log_level: str = "info",
        grace: float = 15.0,
        stopped: Collection[str] = (),
    ) -> None:
        self.config_path = config_path
        self.log_level = log_level
        self.grace = grace
        self.tasks = {t.name: TaskProcess(t.name, enabled=t.name not in stopped) for t in tasks}
        self._lock = threading.Lock()
        # the loop thread waits on it; run-time changes wake it. Children are spawned by the
        # loop thread only: PR_SET_PDEATHSIG fires when the *thread* that forked the child
        # ends, and the HTTP server's request threads end after each request
        self._wake = threading.Condition(self._lock)
        self._stop = threading.Event()
        self._spawns = 0  # counts spawn attempts, for callers waiting on one
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self._thread = threading.Thread(target=self._loop, name="sync-supervisor", daemon=True)
        self._thread.start()

    def _spawn(self, tp: TaskProcess) -> None:
        if self._stop.is_set():
            return  # shutting down: no new children
        self._spawns += 1
        self._wake.notify_all()
        cmd = task_command(self.config_path, tp.name, self.log_level, tp.afresh_next)
        tp.afresh_next = False
        try:
            tp.proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, preexec_fn=_die_with_parent)
        except OSError as exc:
            log.error("sync task %s: cannot start: %s", tp.name, exc)
            tp.proc = None
            tp.next_start = time.monotonic() + tp.backoff
            return
        tp.started_at = time.monotonic()
        log.info("sync task %s: started (pid %d)", tp.name, tp.proc.pid)

    def _loop(self) -> None:
        while not self._stop.is_set():
            now = time.monotonic()
            with self._lock:
                for tp in self.tasks.values():
                    if tp.proc is not None:
                        code = tp.proc.poll()
                        if code is None:
                            continue
                        tp.proc = None
                        tp.last_exit = code
                        if not tp.enabled:
                            continue  # stopped on purpose (stop_task is reaping it)
                        uptime = now - tp.started_at
                        if uptime >= HEALTHY_AFTER:
                            tp.backoff = BACKOFF_MIN
                        wait = FATAL_RETRY if code == EXIT_FATAL else tp.backoff
                        tp.backoff = min(BACKOFF_MAX, tp.backoff * 2)
                        tp.next_start = now + wait
                        tp.restarts += 1
                        log.warning(
                            "sync task %s: exited with %d after %.0fs; restarting in %.0fs",
                            tp.name,
                            code,
                            uptime,
                            wait,
                        )
                    elif tp.enabled and now >= tp.next_start:
                        self._spawn(tp)
                self._wake.wait(0.2)

    def stop(self) -> None:
        """SIGTERM every child, wait up to `grace`, then SIGKILL what is left."""
        self._stop.set()
        with self._lock:
            self._wake.notify_all()
        if self._thread is not None:
            self._thread.join(timeout=5)
        with self._lock:
            procs = [tp.proc for tp in self.tasks.values() if tp.proc is not None]
        for proc in procs:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + self.grace
        for proc in procs:
            try:
                proc.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                log.warning("sync task pid %d did not stop in %.0fs: killing", proc.pid, self.grace)
                proc.kill()
                proc.wait()

    # ----------------------------------------------------------------- run-time changes

    def add(self, name: str, enabled: bool = True) -> None:
        """A new task; started at once when `enabled` (returns once its process started)."""
        with self._lock:
            if name in self.tasks:
                raise ValueError(f"sync task {name} is supervised already")
            tp = TaskProcess(name, enabled=enabled)
            self.tasks[name] = tp
            if enabled:
                self._await_spawn(tp)

    def _await_spawn(self, tp: TaskProcess, timeout: float = 5.0) -> None:
        """Wake the loop thread to start `tp` and wait until it tried (lock held)."""
        tp.next_start = 0.0
        before = self._spawns
        self._wake.notify_all()
        if self._thread is not None and self._thread.is_alive():
            self._wake.wait_for(lambda: self._spawns != before or tp.proc is not None, timeout)

    def start_task(self, name: str, afresh: bool = False) -> None:
        """Enable the task and start its process now (backoff reset). A running process is
        left alone: stop it first to restart it (afresh)."""
        with self._lock:
            tp = self.tasks[name]
            tp.enabled = True
            tp.backoff = BACKOFF_MIN
            tp.next_start = 0.0
            if tp.proc is None or tp.proc.poll() is not None:
                tp.proc = None
                tp.afresh_next = afresh
                self._await_spawn(tp)

    def stop_task(self, name: str) -> int | None:
        """Disable the task, SIGTERM its process and wait for it (SIGKILL after `grace`).
        Returns its exit code (None when none was running)."""
        with self._lock:
            tp = self.tasks[name]
            tp.enabled = False
            tp.afresh_next = False
            proc = tp.proc
        if proc is None:
            return None
        code = self._terminate(proc)
        with self._lock:
            if tp.proc is proc:
                tp.proc = None
            tp.last_exit = code
        log.info("sync task %s: stopped (exit %d)", name, code)
        return code

    def remove(self, name: str) -> None:
        """Stop the task's process and forget the task."""
        self.stop_task(name)
        with self._lock:
            self.tasks.pop(name, None)

    def _terminate(self, proc: subprocess.Popen[bytes]) -> int:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
        try:
            return proc.wait(timeout=self.grace)
        except subprocess.TimeoutExpired:
            log.warning("sync task pid %d did not stop in %.0fs: killing", proc.pid, self.grace)
            proc.kill()
            return proc.wait()

    def process_of(self, name: str) -> ProcessStatus | None:
        """The process side of one task (None for a task not supervised)."""
        with self._lock:
            tp = self.tasks.get(name)
            if tp is None:
                return None
            running = tp.proc is not None and tp.proc.poll() is None
            pid = tp.proc.pid if running and tp.proc is not None else None
            return ProcessStatus(tp.enabled, running, pid, tp.restarts, tp.last_exit)

    def pids(self) -> dict[str, int | None]:
        with self._lock:
            return {
                name: (tp.proc.pid if tp.proc is not None and tp.proc.poll() is None else None)
                for name, tp in self.tasks.items()
            }

    def snapshot(self) -> list[tuple[str, bool, int, int | None]]:
        """(task, running, restarts, last exit code) per task (the metrics of
        replwatch/exporter/supervisor_collector.py)."""
        with self._lock:
            return [
                (
                    tp.name,
                    tp.proc is not None and tp.proc.poll() is None,
                    tp.restarts,
                    tp.last_exit,
                )
                for tp in self.tasks.values()
            ]
