"""Redis Sentinel processes for tests (Debian's redis-sentinel, else `redis-server
--sentinel`), on ephemeral ports with their own config file, stopped by pid."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
from pathlib import Path

import pytest
import redis

from .servers import LOCALHOST, RedisProcess, free_port, in_ci, wait_for


def sentinel_command() -> list[str] | None:
    found = shutil.which("redis-sentinel") or (
        "/usr/bin/redis-sentinel" if Path("/usr/bin/redis-sentinel").is_file() else None
    )
    if found:
        return [found]
    if Path("/usr/bin/redis-server").is_file():
        return ["/usr/bin/redis-server", "--sentinel"]  # the conf file is inserted before
    return None


def require_sentinel() -> list[str]:
    command = sentinel_command()
    if command is None:
        message = "redis-sentinel is not installed (Debian package redis-sentinel)"
        if in_ci():
            pytest.fail(message)
        pytest.skip(message)
    return command


class SentinelProcess:
    """One Sentinel watching `master` under `name`."""

    def __init__(
        self,
        workdir: Path,
        index: int,
        name: str,
        master: RedisProcess,
        *,
        quorum: int = 2,
        down_after_ms: int = 1000,
        auth_pass: str | None = None,
        requirepass: str | None = None,
        master_port: int | None = None,
        extra_lines: tuple[str, ...] = (),
    ) -> None:
        """`master_port`: where the Sentinel reaches the master (its TLS port, say);
        `extra_lines`: more sentinel.conf lines (TLS settings)."""
        self.dir = workdir / f"sentinel-{index}"
        self.dir.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.requirepass = requirepass
        lines = [
            f"port {self.port}",
            f"bind {LOCALHOST}",
            "daemonize no",
            f"dir {self.dir}",
            f"logfile {self.dir / 'sentinel.log'}",
            f"sentinel monitor {name} {master.host} {master_port or master.port} {quorum}",
            f"sentinel down-after-milliseconds {name} {down_after_ms}",
            f"sentinel failover-timeout {name} 10000",
            f"sentinel parallel-syncs {name} 1",
        ]
        if auth_pass is not None:
            lines.append(f"sentinel auth-pass {name} {auth_pass}")
        if requirepass is not None:
            lines.append(f"requirepass {requirepass}")
        lines += extra_lines
        self.conf = self.dir / "sentinel.conf"
        self.conf.write_text("\n".join(lines) + "\n")
        command = require_sentinel()
        args = [command[0], str(self.conf), *command[1:]]
        self.proc: subprocess.Popen[bytes] | None = subprocess.Popen(
            args, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT
        )
        wait_for(self._ping, 15, f"sentinel {index} to answer PING")

    @property
    def address(self) -> str:
        return f"{LOCALHOST}:{self.port}"

    def client(self) -> redis.Redis:
        return redis.Redis(
            host=LOCALHOST, port=self.port, password=self.requirepass, socket_timeout=2
        )

    def _ping(self) -> bool:
        with self.client() as client:
            return bool(client.ping())

    def master_address(self, name: str) -> tuple[str, int] | None:
        with self.client() as client:
            reply = client.execute_command("SENTINEL", "get-master-addr-by-name", name)
        if not reply:
            return None
        return reply[0].decode(), int(reply[1])

    def log_tail(self, chars: int = 3000) -> str:
        path = self.dir / "sentinel.log"
        return path.read_text(errors="replace")[-chars:] if path.exists() else ""

    def stop(self) -> None:
        proc = self.proc
        if proc is None:
            return
        self.proc = None
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)
