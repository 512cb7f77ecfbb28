"""`replwatch demo`: a local sandbox that shows real lag in a minute.

Starts a master and two replicas on free ports in a temporary directory. Replica `fast`
replicates directly; replica `starved` replicates through a bandwidth-limited TCP relay
(an in-process asyncio proxy, so no root is needed). A write load alternates bursts above the
relay's rate with quiet spells, so the starved replica falls seconds behind and catches up
again — while INFO's `lag=` field (ACK age) stays at 0–1. The exporter serves the result.
Ctrl-C stops every process and removes the directory.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import redis
from pydantic_core import PydanticCustomError

from replwatch.config import config_from_data, parse_duration
from replwatch.errors import ConfigError, ReplwatchError
from replwatch.servers import find_server_binary
from replwatch.usage import UsageError

RELAY_BYTES_PER_SECOND = 96 * 1024
BURST_BYTES_PER_SECOND = 192 * 1024
BURST_SECONDS = 12.0
QUIET_BYTES_PER_SECOND = 16 * 1024
QUIET_SECONDS = 18.0


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class ServerProcess:
    def __init__(self, binary: Path, directory: Path, name: str, extra: list[str]) -> None:
        self.port = free_port()
        self.name = name
        log = directory / f"{name}.log"
        args = [
            str(binary),
            "--port",
            str(self.port),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
            "--dir",
            str(directory),
            "--logfile",
            str(log),
            "--daemonize",
            "no",
            *extra,
        ]
        self.proc = subprocess.Popen(
            args, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        self.log = log

    def wait_ready(self, timeout: float = 10.0) -> None:
        client = redis.Redis(port=self.port, socket_timeout=0.5)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                tail = self.log.read_text(errors="replace")[-300:] if self.log.exists() else ""
                raise ReplwatchError(f"demo: {self.name} exited at start: {tail.strip()}")
            with contextlib.suppress(redis.RedisError):
                if client.ping():
                    return
            time.sleep(0.05)
        raise ReplwatchError(f"demo: {self.name} did not answer PING within {timeout:g}s")

    def wait_linked(self, timeout: float = 30.0) -> None:
        """Wait until this replica's link to its master is up (initial sync done)."""
        client = redis.Redis(port=self.port, socket_timeout=0.5)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with contextlib.suppress(redis.RedisError):
                if client.info("replication").get("master_link_status") == "up":
                    return
            time.sleep(0.1)
        raise ReplwatchError(f"demo: {self.name} did not finish its initial sync in {timeout:g}s")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=5)


class ThrottledRelay:
    """TCP relay; bytes from the upstream (master) to the client (replica) are rate-limited."""

    def __init__(self, upstream_port: int, rate: int) -> None:
        self.upstream_port = upstream_port
        self.rate = rate
        self.port = 0
        self._server: asyncio.base_events.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()
        self._tasks: set[asyncio.Task[None]] = set()

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        self.port = int(self._server.sockets[0].getsockname()[1])

    async def _pipe(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, rate: int | None
    ) -> None:
        try:
            while data := await reader.read(8192):
                writer.write(data)
                await writer.drain()
                if rate:
                    await asyncio.sleep(len(data) / rate)
        except (ConnectionError, asyncio.CancelledError):
            pass
        finally:
            writer.close()

    async def _handle(self, client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        if task is not None:
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
        try:
            up_r, up_w = await asyncio.open_connection("127.0.0.1", self.upstream_port)
        except OSError:
            client_w.close()
            return
        self._writers.update((client_w, up_w))
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.gather(
                self._pipe(client_r, up_w, None), self._pipe(up_r, client_w, self.rate)
            )

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
        for writer in list(self._writers):
            writer.close()
        if self._tasks:
            await asyncio.wait(self._tasks, timeout=2)


def write_load(port: int, stop: threading.Event) -> None:
    """Bursts above the relay's rate, then quiet spells, repeated."""
    client = redis.Redis(port=port, socket_timeout=2)
    value = os.urandom(512).hex()  # 1 KiB
    n = 0
    while not stop.is_set():
        for rate, seconds in (
            (BURST_BYTES_PER_SECOND, BURST_SECONDS),
            (QUIET_BYTES_PER_SECOND, QUIET_SECONDS),
        ):
            per_tick = max(1, rate // len(value) // 10)
            end = time.monotonic() + seconds
            while time.monotonic() < end and not stop.is_set():
                tick = time.monotonic()
                pipe = client.pipeline(transaction=False)
                for _ in range(per_tick):
                    n += 1
                    pipe.set(f"demo:key:{n % 20000}", value)
                    pipe.incr("demo:counter")
                with contextlib.suppress(redis.RedisError):
                    pipe.execute()
                stop.wait(max(0.0, 0.1 - (time.monotonic() - tick)))


def check_demo_options(listen: str, server: str | None, duration: str | None) -> None:
    """The options' values, checked before anything starts: UsageError naming the option."""
    if duration is not None:
        try:
            seconds = parse_duration(duration)
        except PydanticCustomError as exc:
            raise UsageError("--duration", str(exc)) from None
        if seconds <= 0:
            raise UsageError("--duration", f"must be above 0, got {duration!r}")
    if server is not None:
        path = Path(server)
        if not path.is_file():
            raise UsageError("--server", f"{server}: no such file")
        if not os.access(path, os.X_OK):
            raise UsageError("--server", f"{server}: not executable")
    try:
        config_from_data({"exporter": {"listen": listen}}, "--listen")
    except ConfigError as exc:
        raise UsageError("--listen", exc.problems[0].removeprefix("exporter.listen: ")) from None


def run_demo(listen: str, server: str | None, duration: str | None) -> int:
    from replwatch.app import Daemon

    binary = find_server_binary(server)
    seconds = parse_duration(duration) if duration else None
    directory = Path(tempfile.mkdtemp(prefix="replwatch-demo-"))
    servers: list[ServerProcess] = []
    stop_load = threading.Event()
    load: threading.Thread | None = None
    try:
        master = ServerProcess(binary, directory, "master", [])
        servers.append(master)
        master.wait_ready()

        async def main() -> None:
            nonlocal load
            relay = ThrottledRelay(master.port, RELAY_BYTES_PER_SECOND)
            await relay.start()
            fast = ServerProcess(
                binary, directory, "fast", ["--replicaof", "127.0.0.1", str(master.port)]
            )
            starved = ServerProcess(
                binary, directory, "starved", ["--replicaof", "127.0.0.1", str(relay.port)]
            )
            servers.extend([fast, starved])
            for proc in (fast, starved):
                await asyncio.to_thread(proc.wait_ready)
            for proc in (fast, starved):
                await asyncio.to_thread(proc.wait_linked)
            cfg = config_from_data(
                {
                    "exporter": {"listen": listen},
                    "poll": {"interval": "1s", "timeout": "500ms"},
                    "groups": [
                        {
                            "name": "demo",
                            "master": f"redis://127.0.0.1:{master.port}",
                            "replicas": [
                                f"redis://127.0.0.1:{fast.port}",
                                f"redis://127.0.0.1:{starved.port}",
                            ],
                        }
                    ],
                },
                "demo",
            )
            daemon = Daemon.build(cfg)
            base = f"http://{cfg.exporter.host}:{daemon.http.bound_port}"
            print(f"status page: {base}/   (open it in a browser)", flush=True)
            print(f"replwatch demo ({binary.name} {binary})", flush=True)
            print(f"  metrics:  {base}/metrics", flush=True)
            print(f"  ready:    {base}/-/ready", flush=True)
            print(f"  master    redis://127.0.0.1:{master.port}", flush=True)
            print(f"  replica   redis://127.0.0.1:{fast.port}  (direct)", flush=True)
            print(
                f"  replica   redis://127.0.0.1:{starved.port}  (starved: through a "
                f"{RELAY_BYTES_PER_SECOND // 1024} KiB/s relay)",
                flush=True,
            )
            print(
                "  try: curl -s " + base + "/metrics | grep -E "
                "'replwatch_replica_(lag_seconds|ack_age_seconds|lag_bytes)'",
                flush=True,
            )
            print("Ctrl-C stops everything.", flush=True)
            load = threading.Thread(target=write_load, args=(master.port, stop_load), daemon=True)
            load.start()
            if seconds is not None:
                asyncio.get_running_loop().call_later(seconds, daemon.stop)
            try:
                await daemon.serve()
            finally:
                await relay.close()

        asyncio.run(main())
    except KeyboardInterrupt:
        pass
    finally:
        stop_load.set()
        if load is not None:
            load.join(timeout=5)
        for proc in reversed(servers):
            proc.stop()
        shutil.rmtree(directory, ignore_errors=True)
        print("demo stopped; all processes ended and files removed", file=sys.stderr)
    return 0


# make SIGTERM behave like Ctrl-C for the demo's own cleanup when run directly
if __name__ == "__main__":  # pragma: no cover
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    raise SystemExit(run_demo("127.0.0.1:0", None, None))
