#!/usr/bin/env python3
"""Sync throughput: the bundled syncer next to a native Redis replica on the same data.

    python bench/sync_throughput.py [--keys N] [--catchup-commands M] [--big-gb G | --skip-big]

Starts real redis-server processes (Debian's 7.0) on ephemeral loopback ports, then in
phases that never overlap:

1. Full sync. The source is filled (DEBUG POPULATE N key <value-size> by default, or a
   pipelined mix of strings, hashes, lists, sets and zsets with --fill mix).
   Native: an empty replica started with --replicaof, timed from its start until INFO
   says master_link_status:up and master_sync_in_progress:0 (polled every 10 ms).
   replwatch: `python -m replwatch sync run -c <config> --task bench` into an empty target,
   timed from the process start until its checkpoint says state=incremental with
   full_sync_finished_at set → keys/s of both, the ratio, the syncer's peak RSS and CPU.
2. Incremental catch-up. Both the native replica and the syncer are paused (SIGSTOP), M
   commands are written to the source (redis-benchmark SET/INCR/LPUSH/HSET, pipelined);
   then the native replica alone is resumed (SIGCONT) and timed until its processed offset
   reaches the source's, then the syncer alone until its checkpoint offset does. Both
   consume the very same stream → commands/s of both and the ratio.
3. RSS on a big dataset (unless --skip-big): a fresh source with >= --big-gb GiB of data
   (incompressible 2 KiB strings plus big hashes, lists, a set and a zset of 300k elements)
   synced by a fresh syncer into a fresh target: the syncer's peak RSS, time, keys/s.

Every replwatch phase checks the copy cheaply (key counts, DEBUG DIGEST-VALUE of sampled
keys). With --profile DIR the syncer runs under cProfile in-process (this script is its
wrapper) and the profiles of the full sync and of the catch-up are summarised in the JSON;
its timings are then distorted and marked as profiled.

Prints one JSON object and writes it to bench/results/sync_throughput.json. Every process
the bench starts is stopped by pid (try/finally, also on Ctrl-C / SIGTERM). This is a
benchmark, not a test: it asserts nothing about the figures, it reports them.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import hashlib
import json
import os
import platform
import pstats
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import hiredis
import redis
import yaml
from _procs import Processes, proc_cpu_seconds, reserve_ports

from replwatch import __version__ as replwatch_version
from replwatch.observe.connection import encode_command

ROOT = Path(__file__).resolve().parent.parent
RESULTS_DIR = Path(__file__).resolve().parent / "results"
REDIS_BENCHMARK = Path("/usr/bin/redis-benchmark")
GIB = 1 << 30
MIB = 1 << 20
TASK = "bench"
CHECKPOINT_KEY = f"__replwatch:sync:{TASK}"
INSTALL_HINT = "apt-get install -y redis-server redis-tools (see bench/README.md)"
PROFILE_CHILD = "--profile-child"  # internal: this script as the syncer's cProfile wrapper

# Every server: no persistence, quiet; DEBUG (POPULATE, DIGEST-VALUE) from loopback only.
BASE_ARGS = [
    "--bind", "127.0.0.1",
    "--save", "",
    "--appendonly", "no",
    "--daemonize", "no",
    "--enable-debug-command", "local",
    "--loglevel", "notice",
]  # fmt: skip
# The source: diskless sync without delay; a paused consumer must not be dropped (no
# replica output-buffer limit, a long repl-timeout); the backlog is set per run.
SOURCE_ARGS = [
    "--repl-diskless-sync", "yes",
    "--repl-diskless-sync-delay", "0",
    "--client-output-buffer-limit", "replica", "0", "0", "0",
    "--repl-timeout", "300",
]  # fmt: skip


# --------------------------------------------------------------------------- processes


@dataclass(eq=False)
class Server:
    name: str
    port: int
    workdir: Path
    proc: subprocess.Popen[bytes]

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}"

    def client(self, timeout: float = 30.0) -> redis.Redis:
        return redis.Redis(
            host="127.0.0.1", port=self.port, socket_timeout=timeout, socket_connect_timeout=2
        )

    def log_tail(self) -> str:
        with contextlib.suppress(OSError):
            return (self.workdir / "server.log").read_text(errors="replace")[-800:]
        return ""


def start_server(
    name: str, binary: Path, extra: list[str], procs: Processes, workdir: Path
) -> Server:
    (port,) = reserve_ports(1)
    sdir = workdir / name
    sdir.mkdir()
    args = [
        str(binary),
        "--port", str(port),
        "--dir", str(sdir),
        "--logfile", str(sdir / "server.log"),
        *BASE_ARGS,
        *extra,
    ]  # fmt: skip
    server = Server(name, port, sdir, procs.start(args, sdir / "stdout.log"))
    return server


def wait_ping(server: Server, timeout: float = 30.0) -> None:
    client = server.client(2)

    def answers() -> bool:
        if server.proc.poll() is not None:
            raise RuntimeError(f"redis-server {server.name} exited: {server.log_tail()}")
        try:
            return bool(client.ping())
        except (redis.RedisError, OSError):
            return False

    poll_until(answers, timeout, 0.02, f"{server.name} to answer PING")
    client.close()


def poll_until(check: Callable[[], bool], timeout: float, interval: float, what: str) -> float:
    """Call `check` every `interval` s until it is true; the monotonic time it was."""
    deadline = time.monotonic() + timeout
    while True:
        if check():
            return time.monotonic()
        if time.monotonic() > deadline:
            raise RuntimeError(f"timed out after {timeout:g}s waiting for {what}")
        time.sleep(interval)


# --------------------------------------------------------------------------- /proc


def proc_state(pid: int) -> str:
    with open(f"/proc/{pid}/stat") as f:
        return f.read().rpartition(")")[2].split()[0]


def proc_status_kb(pid: int, field: str) -> int | None:
    with contextlib.suppress(OSError), open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    return None


def meminfo_kb(field: str) -> int:
    with open("/proc/meminfo") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    return 0


def pause(pid: int) -> None:
    """SIGSTOP, and wait until the kernel shows the process stopped."""
    os.kill(pid, signal.SIGSTOP)
    poll_until(lambda: proc_state(pid) in ("T", "t"), 5, 0.001, f"pid {pid} to stop")


class RssSampler:
    """VmRSS of a process every 50 ms in a thread: the peak overall and in a window."""

    def __init__(self, pid: int, interval: float = 0.05) -> None:
        self.pid = pid
        self.interval = interval
        self.peak_kb = 0
        self.window_kb = 0
        self.samples = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="rss-sampler", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while True:
            kb = proc_status_kb(self.pid, "VmRSS")
            if kb is not None:
                self.samples += 1
                self.peak_kb = max(self.peak_kb, kb)
                self.window_kb = max(self.window_kb, kb)
            if self._stop.wait(self.interval):
                return

    def reset_window(self) -> None:
        self.window_kb = proc_status_kb(self.pid, "VmRSS") or 0

    def hwm_mb(self) -> float | None:
        """The kernel's own peak (VmHWM), which no sampling interval can miss."""
        kb = proc_status_kb(self.pid, "VmHWM")
        return None if kb is None else round(kb / 1024, 1)

    def close(self) -> None:
        self._stop.set()
        self._thread.join(2)


# --------------------------------------------------------------------------- writing data


class RawPipe:
    """A plain socket to a server: encoded commands sent in chunks, every reply checked."""

    def __init__(self, port: int, timeout: float = 600.0) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)
        self.reader = hiredis.Reader()

    def run(self, commands: Iterable[bytes], per_chunk: int = 5000) -> int:
        parts: list[bytes] = []
        size = total = 0
        for cmd in commands:
            parts.append(cmd)
            size += len(cmd)
            if len(parts) >= per_chunk or size >= 4 * MIB:
                total += self._round_trip(parts)
                parts, size = [], 0
        if parts:
            total += self._round_trip(parts)
        return total

    def _round_trip(self, parts: list[bytes]) -> int:
        self.sock.sendall(b"".join(parts))
        got = 0
        while got < len(parts):
            reply = self.reader.gets()
            if reply is False:
                data = self.sock.recv(1 << 20)
                if not data:
                    raise RuntimeError("server closed the connection while writing")
                self.reader.feed(data)
                continue
            if isinstance(reply, hiredis.ReplyError):
                raise RuntimeError(f"write refused: {reply}")
            got += 1
        return got

    def close(self) -> None:
        self.sock.close()


def padded(i: int, size: int, prefix: bytes = b"value:") -> bytes:
    value = prefix + b"%d" % i
    return value.ljust(size, b"x") if len(value) < size else value


def mix_commands(n: int, value_size: int) -> Iterator[bytes]:
    """n keys: 70 % strings, 10 % hashes, 10 % lists (5 fields / elements each), 5 % sets,
    5 % zsets (5 members each)."""
    for i in range(n):
        r = i % 20
        v = padded(i, value_size)
        if r < 14:
            yield encode_command((b"SET", b"key:%d" % i, v))
        elif r < 16:
            flat = [x for j in range(5) for x in (b"f%d" % j, v)]
            yield encode_command((b"HSET", b"hash:%d" % i, *flat))
        elif r < 18:
            yield encode_command((b"RPUSH", b"list:%d" % i, *(v + b"%d" % j for j in range(5))))
        elif r == 18:
            yield encode_command((b"SADD", b"set:%d" % i, *(v + b"%d" % j for j in range(5))))
        else:
            flat = [x for j in range(5) for x in (b"%d" % j, v + b"%d" % j)]
            yield encode_command((b"ZADD", b"zset:%d" % i, *flat))


def fill_small(src: Server, keys: int, value_size: int, how: str) -> dict[str, Any]:
    t0 = time.monotonic()
    if how == "populate":
        client = src.client(600)
        command(client, "DEBUG", "POPULATE", keys, "key", value_size)
        client.close()
        what = f"DEBUG POPULATE {keys} key {value_size} (strings 'key:<i>' → 'value:<i>' padded)"
    else:
        pipe = RawPipe(src.port)
        pipe.run(mix_commands(keys, value_size))
        pipe.close()
        what = (
            f"{keys} keys written pipelined: 70% strings, 10% hashes, 10% lists (5 elements),"
            f" 5% sets, 5% zsets (5 members), values {value_size} bytes"
        )
    return {"fill": how, "description": what, "fill_seconds": round(time.monotonic() - t0, 2)}


def random_pool(size: int = 8 * MIB) -> bytes:
    return os.urandom(size)


def big_key_commands(pool: bytes, elements: int) -> Iterator[bytes]:
    """4 hashes and 4 lists of `elements` 64-byte random values (each over the syncer's
    16 MiB big_key_bytes: written as plain commands), a set and a zset of `elements` short
    members (under it: RESTORE)."""
    per = 1000
    span = len(pool) - 64

    def val(i: int) -> bytes:
        at = (i * 7919) % span
        return pool[at : at + 64]

    for k in range(4):
        for start in range(0, elements, per):
            rng = range(start, min(elements, start + per))
            flat = [x for i in rng for x in (b"field:%d" % i, val(i + k))]
            yield encode_command((b"HSET", b"bighash:%d" % k, *flat))
            yield encode_command((b"RPUSH", b"biglist:%d" % k, *(val(i + 7 * k) for i in rng)))
    for start in range(0, elements, per):
        rng = range(start, min(elements, start + per))
        yield encode_command((b"SADD", b"bigset:0", *(b"member:%d" % i for i in rng)))
        flat = [x for i in rng for x in (b"%d" % i, b"member:%d" % i)]
        yield encode_command((b"ZADD", b"bigzset:0", *flat))


def string_commands(pool: bytes, prefix: bytes, start: int, n: int, size: int) -> Iterator[bytes]:
    """n incompressible strings (slices of random data: LZF finds nothing in them)."""
    span = len(pool) - size
    for i in range(start, start + n):
        at = (i * 7919) % span
        yield encode_command((b"SET", prefix + b"%d" % i, pool[at : at + size]))


# --------------------------------------------------------------------------- inspection


def command(client: redis.Redis, *args: Any) -> Any:
    return client.execute_command(*args)  # type: ignore[no-untyped-call]


def info(client: redis.Redis, section: str) -> dict[str, Any]:
    return dict(client.info(section))


def total_keys(client: redis.Redis) -> int:
    return sum(
        int(v["keys"])
        for k, v in info(client, "keyspace").items()
        if k.startswith("db") and isinstance(v, dict)
    )


def digest_sample(src: redis.Redis, dst: redis.Redis, extra: list[bytes], n: int = 200) -> int:
    """Keys whose DEBUG DIGEST-VALUE differs between source and copy: `n` RANDOMKEY picks
    plus `extra`. 0 = every sampled key is identical."""
    pipe = src.pipeline(transaction=False)
    for _ in range(n):
        pipe.randomkey()
    # each key once: a DIGEST-VALUE of a 300k-element key costs the server about a second
    keys = list(dict.fromkeys([k for k in pipe.execute() if k is not None] + extra))
    if not keys:
        return 0
    a = command(src, "DEBUG", "DIGEST-VALUE", *keys)
    b = command(dst, "DEBUG", "DIGEST-VALUE", *keys)
    return sum(1 for x, y in zip(a, b, strict=True) if x != y)


def write_calls(client: redis.Redis) -> int:
    """Calls of the write commands the catch-up burst uses (INFO commandstats)."""
    stats = info(client, "commandstats")
    return sum(
        int(stats.get(f"cmdstat_{c}", {}).get("calls", 0)) for c in ("set", "incr", "lpush", "hset")
    )


def checkpoint(target: redis.Redis) -> dict[str, bytes]:
    raw: dict[Any, Any] = target.hgetall(CHECKPOINT_KEY)
    return {(k.decode() if isinstance(k, bytes) else str(k)): bytes(v) for k, v in raw.items()}


# --------------------------------------------------------------------------- the syncer


@dataclass(eq=False)
class Syncer:
    proc: subprocess.Popen[bytes]
    log: Path
    started: float  # monotonic, just before Popen
    started_wall: float
    sampler: RssSampler
    profile_prefix: Path | None
    profile_parts: int = 0

    def alive_or_raise(self) -> None:
        if self.proc.poll() is not None:
            tail = self.log.read_text(errors="replace")[-1500:]
            raise RuntimeError(f"the syncer exited ({self.proc.returncode}): {tail}")

    def profile_signal(self) -> Path | None:
        """Have the profiled syncer dump what it profiled since the last mark and start
        afresh (SIGUSR1; to a paused syncer it is delivered when it resumes)."""
        if self.profile_prefix is None:
            return None
        path = Path(f"{self.profile_prefix}.{self.profile_parts}.prof")
        self.profile_parts += 1
        os.kill(self.proc.pid, signal.SIGUSR1)
        return path

    def profile_mark(self) -> Path | None:
        """profile_signal(), then wait until the profile is written."""
        path = self.profile_signal()
        if path is not None:
            poll_until(path.exists, 60, 0.01, f"profile {path.name}")
        return path


def start_syncer(
    src: Server,
    target: Server,
    workdir: Path,
    procs: Processes,
    name: str,
    profile: Path | None,
    code: Path,
    options: dict[str, Any] | None = None,
) -> Syncer:
    config = workdir / f"{name}.yaml"
    task = {"name": TASK, "source": src.url, "target": target.url, **(options or {})}
    config.write_text(yaml.safe_dump({"sync": {"tasks": [task]}}))
    cli = ["--log-level", "info", "sync", "run", "-c", str(config), "--task", TASK]
    prefix = None
    if profile is not None:
        prefix = profile / name
        args = [sys.executable, str(Path(__file__).resolve()), PROFILE_CHILD, str(prefix), *cli]
    else:
        args = [sys.executable, "-m", "replwatch", *cli]
    log = workdir / f"{name}.log"
    started, wall = time.monotonic(), time.time()
    # the replwatch package under `code` (default: this checkout) is the one that runs
    proc = procs.start(args, log, cwd=code, env={**os.environ, "PYTHONPATH": str(code)})
    return Syncer(proc, log, started, wall, RssSampler(proc.pid), prefix)


def wait_full_sync(syncer: Syncer, target: Server, timeout: float) -> float:
    """Poll the checkpoint every 10 ms until the full sync is recorded as finished."""
    client = target.client(5)

    def finished() -> bool:
        syncer.alive_or_raise()
        try:
            state, done = client.hmget(CHECKPOINT_KEY, ["state", "full_sync_finished_at"])
        except (redis.RedisError, OSError):
            return False
        return state == b"incremental" and bool(done)

    at = poll_until(finished, timeout, 0.01, "the syncer's full sync")
    client.close()
    return at


def syncer_full_sync(
    syncer: Syncer, src: Server, target: Server, timeout: float, extra_digest: list[bytes]
) -> tuple[dict[str, Any], Path | None]:
    """The full sync timed, checked; and its profile (when profiled: cut right at the end,
    before the checks, during which the syncer idles)."""
    done = wait_full_sync(syncer, target, timeout)
    seconds = done - syncer.started
    cpu = proc_cpu_seconds(syncer.proc.pid)
    prof = syncer.profile_mark()
    hwm = syncer.sampler.hwm_mb()
    sampled = round(syncer.sampler.peak_kb / 1024, 1)
    sc, tc = src.client(), target.client()
    cp = checkpoint(tc)
    source_keys = total_keys(sc)
    target_keys = total_keys(tc) - 1  # the checkpoint hash
    started_ms = int(cp.get("full_sync_started_at", b"0"))
    finished_ms = int(cp.get("full_sync_finished_at", b"0"))
    internal = (finished_ms - started_ms) / 1000
    mismatches = digest_sample(sc, tc, extra_digest)
    out = {
        "seconds": round(seconds, 3),
        "keys_per_s": round(source_keys / seconds),
        "seconds_internal": round(internal, 3),
        "keys_per_s_internal": round(source_keys / internal) if internal > 0 else None,
        "startup_s": round(started_ms / 1000 - syncer.started_wall, 3),
        "peak_rss_mb": hwm,
        "peak_rss_mb_sampled_50ms": sampled,
        "cpu_s": round(cpu, 2),
        "rdb_bytes": int(cp.get("rdb_bytes_loaded", b"0")),
        "keys_loaded": int(cp.get("keys_loaded", b"0")),
        "source_keys": source_keys,
        "target_keys": target_keys,
        "target_keys_match": target_keys == source_keys,
        "digest_sample_mismatches": mismatches,
    }
    sc.close()
    tc.close()
    return out, prof


def profile_child(prefix: str, argv: list[str]) -> int:
    """The syncer (replwatch's CLI) under cProfile: SIGUSR1 dumps what was profiled since
    the last dump to <prefix>.<n>.prof and starts afresh; the rest is dumped at exit."""
    import cProfile

    from replwatch.cli import main as cli_main

    state: dict[str, Any] = {"prof": cProfile.Profile(), "part": 0}

    def dump() -> None:
        prof: cProfile.Profile = state["prof"]
        prof.disable()
        path = f"{prefix}.{state['part']}.prof"
        prof.dump_stats(path + ".tmp")
        os.replace(path + ".tmp", path)  # the bench waits for the name: write it whole
        state["part"] += 1

    def on_usr1(signum: int, frame: object) -> None:
        dump()
        state["prof"] = cProfile.Profile()
        state["prof"].enable()

    signal.signal(signal.SIGUSR1, on_usr1)
    state["prof"].enable()
    try:
        return cli_main(argv)
    finally:
        dump()


def _func_label(name: str) -> str:
    # "path/to/file.py:123(func)" → shortest useful form
    for marker in ("/replwatch/", "/site-packages/", "/lib/python3.11/"):
        at = name.find(marker)
        if at >= 0:
            keep = name[at + 1 :] if marker == "/replwatch/" else name[at + len(marker) :]
            return keep
    return name


def profile_summary(paths: list[Path], top: int = 25) -> dict[str, Any]:
    stats = pstats.Stats(str(paths[0]))
    for p in paths[1:]:
        stats.add(str(p))
    prof = stats.get_stats_profile()
    total = float(getattr(stats, "total_tt", 0.0))  # set by Stats, not in typeshed
    rows = []
    for name, fp in prof.func_profiles.items():
        label = _func_label(f"{fp.file_name}:{fp.line_number}({name})")
        rows.append((label, fp.ncalls, float(fp.tottime), float(fp.cumtime)))

    def fmt(r: tuple[str, str, float, float]) -> dict[str, Any]:
        return {
            "function": r[0],
            "calls": r[1],
            "tottime_s": round(r[2], 3),
            "tottime_share": round(r[2] / total, 3) if total else None,
            "cumtime_s": round(r[3], 3),
        }

    by_tt = sorted(rows, key=lambda r: r[2], reverse=True)[:top]
    by_ct = sorted(rows, key=lambda r: r[3], reverse=True)[:top]
    return {
        "files": [p.name for p in paths],
        "total_tt_s": round(total, 3),
        "top_tottime": [fmt(r) for r in by_tt],
        "top_cumtime": [fmt(r) for r in by_ct],
    }


# --------------------------------------------------------------------------- phases


def phase_full_sync_native(
    src: Server, binary: Path, procs: Processes, workdir: Path, timeout: float
) -> tuple[dict[str, Any], Server]:
    t0 = time.monotonic()
    replica = start_server(
        "native",
        binary,
        ["--replicaof", "127.0.0.1", str(src.port), "--repl-timeout", "300"],
        procs,
        workdir,
    )
    client = replica.client(5)

    def linked() -> bool:
        if replica.proc.poll() is not None:
            raise RuntimeError(f"the native replica exited: {replica.log_tail()}")
        try:
            rep = info(client, "replication")
        except (redis.RedisError, OSError):
            return False
        return rep.get("master_link_status") == "up" and rep.get("master_sync_in_progress") == 0

    done = poll_until(linked, timeout, 0.01, "the native replica's full sync")
    seconds = done - t0
    cpu = proc_cpu_seconds(replica.proc.pid)
    hwm = proc_status_kb(replica.proc.pid, "VmHWM") or 0
    sc = src.client()
    source_keys, replica_keys = total_keys(sc), total_keys(client)
    mismatches = digest_sample(sc, client, [])
    sc.close()
    client.close()
    return {
        "seconds": round(seconds, 3),
        "keys_per_s": round(source_keys / seconds),
        "cpu_s": round(cpu, 2),
        "peak_rss_mb": round(hwm / 1024, 1),
        "replica_keys": replica_keys,
        "keys_match": replica_keys == source_keys,
        "digest_sample_mismatches": mismatches,
        "repl_diskless_load": "disabled (the default: the replica stores the RDB, then loads)",
    }, replica


def burst(src: Server, commands: int, mix: str = "plain") -> dict[str, Any]:
    """~`commands` writes to the source as fast as possible: redis-benchmark SET, INCR,
    LPUSH, HSET pipelined (-P 64, 50 clients, keys from 100k random ones), or the same mix
    from 4 Python threads when redis-benchmark is missing. `mix` "ttl": every write is
    `SET key value PX 600000` instead (a cache's stream: 7.0 replicates it as SET … PXAT,
    which the syncer writes expire_grace later)."""
    per_test = max(1, commands // 4)
    t0 = time.monotonic()
    if mix == "ttl":
        if not REDIS_BENCHMARK.is_file():
            raise SystemExit(
                "--catchup-mix ttl needs redis-benchmark (apt-get install redis-tools)"
            )
        args = [
            str(REDIS_BENCHMARK),
            "-h", "127.0.0.1",
            "-p", str(src.port),
            "-n", str(commands),
            "-P", "64",
            "-r", "100000",
            "-q",
            "SET", "key:__rand_int__", "xxxxxxxxxxxxxxxx", "PX", "600000",
        ]  # fmt: skip
        subprocess.run(args, capture_output=True, text=True, timeout=3600, check=True)
        how = " ".join(args[0:1] + args[3:])
        return {"writer": how, "seconds": round(time.monotonic() - t0, 2)}
    if REDIS_BENCHMARK.is_file():
        args = [
            str(REDIS_BENCHMARK),
            "-h", "127.0.0.1",
            "-p", str(src.port),
            "-n", str(per_test),
            "-P", "64",
            "-t", "set,incr,lpush,hset",
            "-r", "100000",
            "-q",
        ]  # fmt: skip
        out = subprocess.run(args, capture_output=True, text=True, timeout=3600, check=True)
        lines = [ln.strip() for ln in re.split(r"[\r\n]", out.stdout) if "per second" in ln]
        how = " ".join(args[0:1] + args[3:])
        return {"writer": how, "seconds": round(time.monotonic() - t0, 2), "output": lines}

    def worker(start: int, n: int) -> None:
        pipe = RawPipe(src.port)

        def cmds() -> Iterator[bytes]:
            for i in range(start, start + n):
                r = b"%012d" % (i * 7919 % 100000)
                kind = i % 4
                if kind == 0:
                    yield encode_command((b"SET", b"key:" + r, b"xxx"))
                elif kind == 1:
                    yield encode_command((b"INCR", b"counter:" + r))
                elif kind == 2:
                    yield encode_command((b"LPUSH", b"mylist", b"xxx"))
                else:
                    yield encode_command((b"HSET", b"myhash", b"element:" + r, b"xxx"))

        pipe.run(cmds(), per_chunk=64 * 50)
        pipe.close()

    total = per_test * 4
    threads = [threading.Thread(target=worker, args=(k * total // 4, total // 4)) for k in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return {
        "writer": "4 Python threads, pipelined SET/INCR/LPUSH/HSET (no redis-benchmark)",
        "seconds": round(time.monotonic() - t0, 2),
    }


def phase_catchup(
    src: Server, replica: Server, target: Server, syncer: Syncer, commands: int, mix: str
) -> tuple[dict[str, Any], dict[str, Path | None]]:
    sc, rc, tc = src.client(), replica.client(), target.client()
    profiles: dict[str, Path | None] = {}

    def source_offset() -> int:
        return int(info(sc, "replication")["master_repl_offset"])

    def native_offset() -> int:
        return int(info(rc, "replication").get("slave_repl_offset", -1))

    def syncer_offset() -> int:
        syncer.alive_or_raise()
        raw = tc.hget(CHECKPOINT_KEY, "offset")
        return int(raw) if raw else -1

    # both caught up with whatever the source sent since (PINGs) before pausing them
    goal0 = source_offset()
    poll_until(lambda: native_offset() >= goal0, 60, 0.01, "the native replica to catch up")
    poll_until(lambda: syncer_offset() >= goal0, 60, 0.01, "the syncer to catch up")
    pause(replica.proc.pid)
    pause(syncer.proc.pid)
    start_offset = source_offset()
    calls0 = write_calls(sc)
    writer = burst(src, commands, mix)
    goal = source_offset()
    applied = write_calls(sc) - calls0
    stream = goal - start_offset

    # native: resume the replica alone
    cpu0 = proc_cpu_seconds(replica.proc.pid)
    t0 = time.monotonic()
    os.kill(replica.proc.pid, signal.SIGCONT)
    done = poll_until(lambda: native_offset() >= goal, 900, 0.01, "the native catch-up")
    native_s = done - t0
    native_cpu = proc_cpu_seconds(replica.proc.pid) - cpu0

    # replwatch: then the syncer alone (profiled: what it did since the full sync, i.e.
    # idling, is dumped as it resumes, so the next profile is the catch-up alone)
    profiles["idle"] = syncer.profile_signal()
    syncer.sampler.reset_window()
    cpu0 = proc_cpu_seconds(syncer.proc.pid)
    t0 = time.monotonic()
    os.kill(syncer.proc.pid, signal.SIGCONT)
    done = poll_until(lambda: syncer_offset() >= goal, 900, 0.01, "the syncer's catch-up")
    replwatch_s = done - t0
    replwatch_cpu = proc_cpu_seconds(syncer.proc.pid) - cpu0
    profiles["catchup"] = syncer.profile_mark()

    source_keys = total_keys(sc)
    target_keys = total_keys(tc) - 1
    replica_keys = total_keys(rc)
    extra = [b"mylist", b"myhash"]
    result = {
        "commands": applied,
        "commands_requested": commands,
        "mix": mix,
        "stream_bytes": stream,
        "writer": writer,
        "native_seconds": round(native_s, 3),
        "native_commands_per_s": round(applied / native_s),
        "native_cpu_s": round(native_cpu, 2),
        "replwatch_seconds": round(replwatch_s, 3),
        "replwatch_commands_per_s": round(applied / replwatch_s),
        "replwatch_stream_mb_per_s": round(stream / replwatch_s / MIB, 1),
        "replwatch_cpu_s": round(replwatch_cpu, 2),
        "replwatch_peak_rss_mb_during": round(syncer.sampler.window_kb / 1024, 1),
        "ratio": round(native_s / replwatch_s, 3),
        "source_keys": source_keys,
        "native_keys_match": replica_keys == source_keys,
        "target_keys": target_keys,
        "target_keys_match": target_keys == source_keys,
        "native_digest_sample_mismatches": digest_sample(sc, rc, extra),
        "digest_sample_mismatches": digest_sample(sc, tc, extra),
        "method": (
            "native replica and syncer both paused (SIGSTOP) while the burst is written, so "
            "both consume the same stream from the source's buffers; resumed one at a time "
            "(native first); done when the native replica's slave_repl_offset / the "
            "checkpoint's offset reaches the source's master_repl_offset after the burst "
            "(polled every 10 ms)"
        ),
    }
    for c in (sc, rc, tc):
        c.close()
    return result, profiles


def phase_big(
    binary: Path,
    procs: Processes,
    workdir: Path,
    want_gib: float,
    value_size: int,
    elements: int,
    profile: Path | None,
    code: Path,
) -> dict[str, Any]:
    notes: list[str] = []
    avail = meminfo_kb("MemAvailable") * 1024

    # source + target hold the dataset (plus allocator overhead, ~1.3x), the source's fork
    # for the diskless sync shares its pages (nothing is written meanwhile), the syncer
    def need(gib: float) -> float:
        return 2 * 1.3 * gib * GIB + 1 * GIB

    gib = want_gib
    if avail < need(gib):
        gib = max(0.25, (avail - 1 * GIB) / (2 * 1.3 * GIB))
        notes.append(
            f"scaled down from {want_gib} GiB to {gib:.2f} GiB: MemAvailable "
            f"{avail / GIB:.1f} GiB < {need(want_gib) / GIB:.1f} GiB needed"
        )
    src = start_server(
        "big-source", binary, [*SOURCE_ARGS, "--repl-backlog-size", "16mb"], procs, workdir
    )
    target = start_server("big-target", binary, [], procs, workdir)
    wait_ping(src)
    wait_ping(target)
    sc = src.client(600)
    t0 = time.monotonic()
    pool = random_pool()
    pipe = RawPipe(src.port)
    pipe.run(big_key_commands(pool, elements), per_chunk=200)
    chunk = 50_000
    start = 0
    while int(info(sc, "memory")["used_memory_dataset"]) < gib * GIB:
        pipe.run(string_commands(pool, b"str:", start, chunk, value_size))
        start += chunk
    pipe.close()
    fill_s = time.monotonic() - t0
    # ~70 serialized bytes an element: over the syncer's default big_key_bytes (16 MiB) a
    # key is decoded and written as chunks of plain commands instead of one RESTORE
    big_path = (
        "over the default big_key_bytes of 16 MiB: written as plain commands"
        if elements * 70 > 16 * MIB
        else "under big_key_bytes: RESTORE"
    )
    mem = info(sc, "memory")
    keys = total_keys(sc)
    big_keys = [b"bighash:%d" % k for k in range(4)] + [b"biglist:%d" % k for k in range(4)]
    big_keys += [b"bigset:0", b"bigzset:0"]
    print(
        f"big: {keys} keys, dataset {int(mem['used_memory_dataset']) / GIB:.2f} GiB "
        f"filled in {fill_s:.0f}s; syncing …",
        file=sys.stderr,
    )
    syncer = start_syncer(src, target, workdir, procs, "big-syncer", profile, code)
    try:
        full, prof = syncer_full_sync(syncer, src, target, 3600, big_keys)
    finally:
        syncer.sampler.close()
    tc = target.client()
    tmem = info(tc, "memory")
    tc.close()
    Processes.stop(syncer.proc)
    sc.close()
    Processes.stop(src.proc)
    Processes.stop(target.proc)
    if full["seconds"] > 600:
        notes.append(f"the big full sync took {full['seconds']:.0f} s (> 10 minutes)")
    return {
        "dataset_gb": round(int(mem["used_memory_dataset"]) / 1e9, 3),
        "dataset_gib": round(int(mem["used_memory_dataset"]) / GIB, 3),
        "requested_gib": want_gib,
        "source_used_memory_gib": round(int(mem["used_memory"]) / GIB, 3),
        "rdb_bytes": full["rdb_bytes"],
        "rdb_gib": round(full["rdb_bytes"] / GIB, 3),
        "keys": keys,
        "contents": (
            f"{start} strings of {value_size} random (incompressible) bytes; 4 hashes and "
            f"4 lists of {elements} 64-byte random values ({big_path}), 1 set and 1 zset of "
            f"{elements} short members (RESTORE)"
        ),
        "fill_seconds": round(fill_s, 1),
        "replwatch_peak_rss_mb": full["peak_rss_mb"],
        "replwatch_peak_rss_mb_sampled_50ms": full["peak_rss_mb_sampled_50ms"],
        "seconds": full["seconds"],
        "seconds_internal": full["seconds_internal"],
        "keys_per_s": full["keys_per_s"],
        "rdb_mb_per_s": round(full["rdb_bytes"] / full["seconds"] / MIB, 1),
        "replwatch_cpu_s": full["cpu_s"],
        "target_used_memory_gib": round(int(tmem["used_memory"]) / GIB, 3),
        "target_keys": full["target_keys"],
        "target_keys_match": full["target_keys_match"],
        "digest_sample_mismatches_incl_big_keys": full["digest_sample_mismatches"],
        "mem_available_gib_before": round(avail / GIB, 1),
        "notes": notes,
        "profile": profile_summary([prof]) if prof else None,
    }


# --------------------------------------------------------------------------- main


def code_state(src: Path) -> dict[str, Any]:
    """Which syncer code runs: the git commit of `src` (if any), files of replwatch/ that
    differ from it, and a digest of replwatch/**/*.py (compared at the end of the run: the
    figures belong to one version only if it did not change meanwhile)."""
    digest = hashlib.sha1()
    for path in sorted((src / "replwatch").rglob("*.py")):
        digest.update(str(path.relative_to(src)).encode() + b"\0" + path.read_bytes())
    out: dict[str, Any] = {"path": str(src), "sync_sources_sha1": digest.hexdigest()}

    def git(*args: str) -> str:
        res = subprocess.run(
            ["git", "-C", str(src), *args], capture_output=True, text=True, check=False
        )
        return res.stdout.strip() if res.returncode == 0 else ""

    if git("rev-parse", "--show-toplevel") == str(src):
        out["git_head"] = git("rev-parse", "HEAD")
        out["uncommitted"] = git("status", "--porcelain", "--", "replwatch").splitlines()
    return out


def environment(binary: Path) -> dict[str, Any]:
    model = ""
    with contextlib.suppress(OSError), open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                model = line.partition(":")[2].strip()
                break
    version = subprocess.run(
        [str(binary), "--version"], capture_output=True, text=True, check=False
    ).stdout.strip()
    return {
        "date": datetime.date.today().isoformat(),
        "redis_server": version,
        "redis_benchmark": REDIS_BENCHMARK.is_file(),
        "python": platform.python_version(),
        "replwatch": replwatch_version,
        "hiredis": getattr(hiredis, "__version__", "unknown"),
        "cpus": os.cpu_count(),
        "cpu_model": model,
        "mem_total_gib": round(meminfo_kb("MemTotal") / 1024 / 1024, 1),
        "kernel": platform.release(),
        "note": (
            "bench, servers and syncer share this machine's cores: during replwatch's full "
            "sync the source's fork, the syncer and the target all run (the native replica "
            "is one process fewer)"
        ),
    }


# issue 20's targets: the ratio to native of the median run
FULL_SYNC_TARGET = {"populate": 0.7, "mix": 0.5}
CATCHUP_TARGET = 0.8


def phases_full_and_catchup(
    args: argparse.Namespace, procs: Processes, workdir: Path, backlog: int
) -> dict[str, Any]:
    """Phases 1 and 2 on fresh servers: the full sync and the catch-up, both next to a
    native replica of the same source."""
    workdir.mkdir(parents=True)
    src = start_server(
        "source",
        args.server,
        [*SOURCE_ARGS, "--repl-backlog-size", str(backlog)],
        procs,
        workdir,
    )
    wait_ping(src)
    print(f"filling the source with {args.keys} keys …", file=sys.stderr)
    fill = fill_small(src, args.keys, args.value_size, args.fill)
    print("full sync: native replica …", file=sys.stderr)
    native, replica = phase_full_sync_native(src, args.server, procs, workdir, 3600)
    print(f"  {native['seconds']} s; replwatch …", file=sys.stderr)
    target = start_server("target", args.server, [], procs, workdir)
    wait_ping(target)
    syncer = start_syncer(
        src,
        target,
        workdir,
        procs,
        "syncer",
        args.profile,
        args.syncer_src,
        {"ha": True} if args.ha else None,
    )
    try:
        ours, prof_full = syncer_full_sync(syncer, src, target, 3600, [])
        print(f"  {ours['seconds']} s; catch-up …", file=sys.stderr)
        catchup, prof_catchup = phase_catchup(
            src, replica, target, syncer, args.catchup_commands, args.catchup_mix
        )
        rss_overall = syncer.sampler.hwm_mb()
    finally:
        syncer.sampler.close()
    print(
        f"  native {catchup['native_seconds']} s, replwatch {catchup['replwatch_seconds']} s",
        file=sys.stderr,
    )
    Processes.stop(syncer.proc)
    for server in (replica, target, src):
        Processes.stop(server.proc)
    full_sync = {
        "keys": ours["source_keys"],
        **fill,
        "value_size": args.value_size,
        "native_keys_per_s": native["keys_per_s"],
        "replwatch_keys_per_s": ours["keys_per_s"],
        "ratio": round(ours["keys_per_s"] / native["keys_per_s"], 3),
        "replwatch_peak_rss_mb": ours["peak_rss_mb"],
        "replwatch_cpu_s": ours["cpu_s"],
        "native_seconds": native["seconds"],
        "replwatch_seconds": ours["seconds"],
        "replwatch_seconds_internal": ours["seconds_internal"],
        "replwatch_keys_per_s_internal": ours["keys_per_s_internal"],
        "replwatch_startup_s": ours["startup_s"],
        "replwatch_peak_rss_mb_sampled_50ms": ours["peak_rss_mb_sampled_50ms"],
        "rdb_bytes": ours["rdb_bytes"],
        "target_keys": ours["target_keys"],
        "target_keys_match": ours["target_keys_match"],
        "digest_sample_mismatches": ours["digest_sample_mismatches"],
        "native": native,
        "method": (
            "both timed from their process start (a Python interpreter start and "
            "imports for replwatch: startup_s) until done: native = INFO "
            "master_link_status:up and master_sync_in_progress:0, replwatch = "
            "checkpoint state incremental with full_sync_finished_at (polled every "
            "10 ms); *_internal = the checkpoint's full_sync_started_at → finished_at"
        ),
    }
    catchup["replwatch_peak_rss_mb_process"] = rss_overall
    out: dict[str, Any] = {"full_sync": full_sync, "catchup": catchup}
    if args.profile is not None:
        prof_c = prof_catchup.get("catchup")
        out["profile"] = {
            "note": "syncer under cProfile: its timings above are distorted",
            "full_sync": profile_summary([prof_full]) if prof_full else None,
            "catchup": profile_summary([prof_c]) if prof_c else None,
        }
    return out


def summarise(runs: list[dict[str, Any]], phase: str) -> dict[str, Any]:
    """One phase over the runs: the ratios' minimum and median, and every run."""
    ratios = sorted(r[phase]["ratio"] for r in runs)
    return {
        "ratio_min": ratios[0],
        "ratio_median": statistics.median(ratios),
        "ratios": [r[phase]["ratio"] for r in runs],
        "runs": [r[phase] for r in runs],
        **({"profiles": [r["profile"] for r in runs]} if "profile" in runs[0] else {}),
    }


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == [PROFILE_CHILD]:
        return profile_child(argv[1], argv[2:])
    ap = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    ap.add_argument("--keys", type=int, default=2_000_000, help="keys for the full sync")
    ap.add_argument("--value-size", type=int, default=16, help="bytes per value (phase 1)")
    ap.add_argument(
        "--fill",
        choices=["populate", "mix"],
        default="populate",
        help="phase 1 data: DEBUG POPULATE strings (default) or a mix of types",
    )
    ap.add_argument("--catchup-commands", type=int, default=2_000_000, help="catch-up burst")
    ap.add_argument(
        "--catchup-mix",
        choices=["plain", "ttl"],
        default="plain",
        help="catch-up burst: SET/INCR/LPUSH/HSET (default), or SET … PX (TTLs: expire_grace)",
    )
    ap.add_argument("--big-gb", type=float, default=2.0, help="GiB of data for the RSS phase")
    ap.add_argument("--big-value-size", type=int, default=2048, help="string size, RSS phase")
    ap.add_argument(
        "--big-elements", type=int, default=300_000, help="elements per big key, RSS phase"
    )
    ap.add_argument("--skip-big", action="store_true", help="skip the RSS phase")
    ap.add_argument("--server", type=Path, default=Path("/usr/bin/redis-server"))
    ap.add_argument(
        "--profile",
        type=Path,
        default=None,
        metavar="DIR",
        help="run the syncer under cProfile, keep the .prof files in DIR (slows it down)",
    )
    ap.add_argument(
        "--syncer-src",
        type=Path,
        default=ROOT,
        metavar="DIR",
        help="directory holding the replwatch package the syncer runs (default: this "
        "checkout; e.g. a `git archive` of another commit, to compare two versions)",
    )
    ap.add_argument(
        "--ha",
        action="store_true",
        help="run the task with ha: true (lease, a fenced batch at a time) in phases 1-2",
    )
    ap.add_argument(
        "--runs", type=int, default=3, help="runs of phases 1-2 (min and median reported)"
    )
    ap.add_argument("--output", type=Path, default=None, help="where to write the JSON")
    args = ap.parse_args(argv)
    if args.output is None:
        name = "sync_throughput_profiled.json" if args.profile else "sync_throughput.json"
        args.output = RESULTS_DIR / name
    if not args.server.is_file():
        print(f"{args.server} not found: {INSTALL_HINT}", file=sys.stderr)
        return 2
    if args.profile is not None:
        args.profile = args.profile.resolve()
        args.profile.mkdir(parents=True, exist_ok=True)
    args.syncer_src = args.syncer_src.resolve()
    if not (args.syncer_src / "replwatch" / "sync" / "task.py").is_file():
        ap.error(f"--syncer-src: no replwatch/sync/task.py under {args.syncer_src}")
    code_before = code_state(args.syncer_src)

    def _on_term(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, _on_term)
    signal.signal(signal.SIGINT, signal.default_int_handler)
    procs = Processes()
    started = time.monotonic()
    result: dict[str, Any] = {}
    # the backlog holds the whole burst (~45-60 bytes a command), whatever the buffers do
    backlog = max(512 * MIB, args.catchup_commands * 128)
    runs: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="replwatch-syncbench-") as tmp:
        workdir = Path(tmp)
        try:
            for run in range(args.runs):
                print(f"run {run + 1} of {args.runs}", file=sys.stderr)
                runs.append(phases_full_and_catchup(args, procs, workdir / f"run{run}", backlog))
            result["full_sync"] = summarise(runs, "full_sync")
            result["catchup"] = summarise(runs, "catchup")
            result["ha"] = args.ha
            if args.skip_big:
                result["big"] = {"skipped": True}
            else:
                print(f"RSS phase: filling >= {args.big_gb} GiB …", file=sys.stderr)
                result["big"] = phase_big(
                    args.server,
                    procs,
                    workdir,
                    args.big_gb,
                    args.big_value_size,
                    args.big_elements,
                    args.profile,
                    args.syncer_src,
                )
        finally:
            stopped = procs.stop_all()
            print(f"stopped {stopped} processes", file=sys.stderr)

    big = result["big"]
    full_target = FULL_SYNC_TARGET[args.fill]
    result["targets"] = {
        "note": (
            "issue 20: each on the median of the runs (the minimum is reported beside it); "
            f"full sync >= {full_target} of native ({args.fill}), catch-up >= "
            f"{CATCHUP_TARGET}, peak RSS <= 200 MB on a >= 2 GiB dataset; every copy verified"
        ),
        f"full_sync_ratio_ge_{full_target}": result["full_sync"]["ratio_median"] >= full_target,
        f"catchup_ratio_ge_{CATCHUP_TARGET}": result["catchup"]["ratio_median"] >= CATCHUP_TARGET,
        "copies_verified": all(
            r["full_sync"]["target_keys_match"]
            and not r["full_sync"]["digest_sample_mismatches"]
            and r["catchup"]["target_keys_match"]
            and not r["catchup"]["digest_sample_mismatches"]
            for r in runs
        ),
        "rss_le_200mb": (
            None if big.get("skipped") else (big["replwatch_peak_rss_mb"] or 1e9) <= 200
        ),
        "rss_dataset_ge_2gb": None if big.get("skipped") else big["dataset_gib"] >= 2.0,
    }
    code_after = code_state(args.syncer_src)
    result["environment"] = {
        **environment(args.server),
        "syncer_code": {
            **code_before,
            "changed_during_run": code_after["sync_sources_sha1"]
            != code_before["sync_sources_sha1"],
        },
        "profiled": args.profile is not None,
        "total_seconds": round(time.monotonic() - started, 1),
        "args": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
    }
    text = json.dumps(result, indent=2)
    print(text)
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(text + "\n")
    if args.profile is not None:
        shutil.copy(args.output, args.profile / args.output.name)
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except KeyboardInterrupt:
        print("interrupted; every started process was stopped", file=sys.stderr)
        sys.exit(130)
