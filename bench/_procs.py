"""Child processes of the benchmarks: started with a parent-death signal, stopped by pid
(also when paused), free loopback ports, and another process's CPU time. Shared by
bench/poll_cost.py and bench/sync_throughput.py (run as scripts: this directory is on
sys.path)."""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import socket
import subprocess
import time
from pathlib import Path

CLK_TCK = os.sysconf("SC_CLK_TCK")


def die_with_parent() -> None:
    """preexec_fn: ask the kernel to SIGTERM the child if the bench itself is killed -9
    (the normal path stops every child by pid in a finally block)."""
    with contextlib.suppress(Exception):
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


def reserve_ports(count: int) -> list[int]:
    """`count` distinct free loopback ports (all sockets held open together, then closed)."""
    socks = []
    try:
        for _ in range(count):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.bind(("127.0.0.1", 0))
            socks.append(s)
        return [int(s.getsockname()[1]) for s in socks]
    finally:
        for s in socks:
            s.close()


class Processes:
    """Every child process the bench starts; stop()/stop_all() end them by pid."""

    def __init__(self) -> None:
        self.procs: list[subprocess.Popen[bytes]] = []

    def start(
        self,
        args: list[str],
        log: Path,
        cwd: Path | None = None,
        env: dict[str, str] | None = None,
    ) -> subprocess.Popen[bytes]:
        with open(log, "ab") as out:
            proc = subprocess.Popen(
                args,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                cwd=cwd,
                env=env,
                start_new_session=True,  # a terminal's Ctrl-C reaches the bench, not them
                preexec_fn=die_with_parent,
            )
        self.procs.append(proc)
        return proc

    @staticmethod
    def stop(proc: subprocess.Popen[bytes], grace: float = 30.0) -> None:
        """SIGCONT (it may be paused) + SIGTERM, wait, SIGKILL if it will not go."""
        if proc.poll() is not None:
            return
        for sig in (signal.SIGCONT, signal.SIGTERM):
            with contextlib.suppress(ProcessLookupError):
                os.kill(proc.pid, sig)
        try:
            proc.wait(grace)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.kill(proc.pid, signal.SIGKILL)
            proc.wait()

    def stop_all(self, grace: float = 30.0) -> int:
        alive = [p for p in self.procs if p.poll() is None]
        for p in alive:
            for sig in (signal.SIGCONT, signal.SIGTERM):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(p.pid, sig)
        deadline = time.monotonic() + grace
        for p in alive:
            try:
                p.wait(max(0.01, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(p.pid, signal.SIGKILL)
                p.wait()
        for p in self.procs:  # reap anything that exited on its own
            with contextlib.suppress(Exception):
                p.wait(0)
        return len(alive)


def proc_cpu_seconds(pid: int) -> float:
    """utime + stime of a process (all its threads), from /proc/<pid>/stat."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK
