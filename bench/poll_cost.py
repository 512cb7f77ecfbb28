"""Poll cost: replwatch's CPU per instance-poll and cycle time next to redis_exporter's CPU per
scrape, on the same real server processes, in one run. Prints one JSON object.

    python bench/poll_cost.py [--instances 200] [--seconds 10]

Method (see bench/README.md):
- N redis-server processes on 127.0.0.1 (N/2 masters, each with one replica).
- replwatch: one GroupMonitor per master/replica pair, as the daemon builds them, driven at the
  daemon's cadence (one poll cycle a second, heartbeat writes every 250 ms) for S seconds;
  process CPU time (user + system) divided by instance-polls. A flat-out phase (back-to-back
  cycles, no heartbeats) measures instance-polls per CPU-second; the cycle time for 1,000
  instances on one core is extrapolated as 1000 / that rate (polling is CPU-bound in one
  event loop; network wait overlaps).
- peer: prometheus-redis-exporter in multi-target mode, each instance scraped once per second
  (`/scrape?target=…`, as Prometheus would) for S seconds; the exporter process's CPU
  (/proc/<pid>/stat utime + stime) divided by scrapes.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import platform
import resource
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import redis

from replwatch.config import config_from_data
from replwatch.observe.group_monitor import GroupMonitor

CLK_TCK = os.sysconf("SC_CLK_TCK")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def proc_cpu_ms(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) * 1000 / CLK_TCK


def wait_for(pred: Any, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(redis.RedisError, OSError):
            if pred():
                return
        time.sleep(0.05)
    raise SystemExit(f"bench: timed out waiting for {what}")


class Fleet:
    def __init__(self, binary: str, pairs: int, workdir: Path) -> None:
        self.binary = binary
        self.workdir = workdir
        self.procs: list[subprocess.Popen[bytes]] = []
        self.pairs: list[tuple[int, int]] = []
        self.pair_count = pairs

    def _start(self, port: int, extra: list[str]) -> None:
        self.procs.append(subprocess.Popen(
            [self.binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "",
             "--appendonly", "no", "--dir", str(self.workdir), "--logfile", "",
             "--loglevel", "warning", "--repl-diskless-sync", "yes",
             "--repl-diskless-sync-delay", "0", *extra],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, stdin=subprocess.DEVNULL,
        ))

    def start(self) -> None:
        for _ in range(self.pair_count):
            m, r = free_port(), free_port()
            self._start(m, [])
            self._start(r, ["--replicaof", "127.0.0.1", str(m)])
            self.pairs.append((m, r))
        for m, r in self.pairs:
            wait_for(lambda p=m: redis.Redis(port=p).ping(), 30, f"master {m}")
            wait_for(
                lambda p=r: redis.Redis(port=p).info("replication")["master_link_status"]
                == "up", 60, f"replica {r} linked",
            )

    def stop(self) -> None:
        for p in self.procs:
            if p.poll() is None:
                p.kill()
        for p in self.procs:
            with contextlib.suppress(Exception):
                p.wait(timeout=10)


async def bench_replwatch(pairs: list[tuple[int, int]], seconds: float) -> dict[str, Any]:
    cfg = config_from_data({
        "poll": {"interval": "1s", "timeout": "500ms"},
        "heartbeat": {"interval": "250ms"},
        "groups": [
            {"name": f"g{i}", "master": f"redis://127.0.0.1:{m}",
             "replicas": [f"redis://127.0.0.1:{r}"]}
            for i, (m, r) in enumerate(pairs)
        ],
    })
    rss_before = rss_mb()
    monitors = [GroupMonitor(g, cfg.poll, cfg.heartbeat, cfg.lag, cfg.tls) for g in cfg.groups]
    instances = 2 * len(monitors)

    async def heartbeats() -> None:
        await asyncio.gather(*(m.write_heartbeat() for m in monitors))

    async def cycle() -> None:
        await asyncio.gather(*(m.poll_cycle() for m in monitors))

    # warm-up: connections, script load, offset clock
    for _ in range(2):
        await heartbeats()
        await cycle()
    rss_connected = rss_mb()

    # the daemon's cadence: 1 poll cycle + 4 heartbeat rounds per second
    poll_cpu = hb_cpu = 0.0
    walls: list[float] = []
    cycles = int(seconds)
    for _ in range(cycles):
        second_start = time.monotonic()
        c0 = time.process_time()
        w0 = time.monotonic()
        await cycle()
        walls.append(time.monotonic() - w0)
        poll_cpu += time.process_time() - c0
        for k in range(4):
            await asyncio.sleep(max(0.0, second_start + 0.25 * (k + 1) - 0.25 - time.monotonic()))
            c0 = time.process_time()
            await heartbeats()
            hb_cpu += time.process_time() - c0
        await asyncio.sleep(max(0.0, second_start + 1.0 - time.monotonic()))
    rss_after = rss_mb()

    # flat out: back-to-back poll cycles
    c0, w0, n = time.process_time(), time.monotonic(), 0
    while time.monotonic() - w0 < 3.0:
        await cycle()
        n += 1
    flat_cpu = time.process_time() - c0
    flat_wall = time.monotonic() - w0
    for m in monitors:
        m.close()
    polls_per_cpu_s = n * instances / flat_cpu
    walls_ms = sorted(w * 1000 for w in walls)
    return {
        "cycles": cycles,
        "cpu_ms_per_instance_poll": round(poll_cpu * 1000 / (cycles * instances), 4),
        "heartbeat_cpu_ms_per_master_second": round(hb_cpu * 1000 / (cycles * len(monitors)), 4),
        "cpu_ms_per_instance_second_incl_heartbeats": round(
            (poll_cpu + hb_cpu) * 1000 / (cycles * instances), 4),
        "cycle_wall_ms": {
            "p50": round(statistics.median(walls_ms), 2),
            "p95": round(walls_ms[int(0.95 * (len(walls_ms) - 1))], 2),
            "max": round(walls_ms[-1], 2),
        },
        "flat_out_cycles": n,
        "flat_out_cpu_share_of_wall": round(flat_cpu / flat_wall, 3),
        "flat_out_instance_polls_per_cpu_second": round(polls_per_cpu_s),
        "extrapolated_cycle_seconds_1000_instances_one_core": round(1000 / polls_per_cpu_s, 3),
        "rss_mb": {"before": round(rss_before, 1), "connected": round(rss_connected, 1),
                   "after": round(rss_after, 1)},
        "rss_kb_per_node": round((rss_after - rss_before) * 1024 / instances, 1),
    }


def bench_peer(binary: str, pairs: list[tuple[int, int]], seconds: float) -> dict[str, Any]:
    port = free_port()
    proc = subprocess.Popen(
        [binary, "-web.listen-address", f"127.0.0.1:{port}", "-redis.addr", ""],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    targets = [p for pair in pairs for p in pair]
    try:
        wait_for(lambda: urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=1), 10,
                 "redis_exporter")

        def scrape(target: int) -> int:
            url = f"http://127.0.0.1:{port}/scrape?target=redis://127.0.0.1:{target}"
            with urllib.request.urlopen(url, timeout=10) as resp:
                return len(resp.read())

        with ThreadPoolExecutor(max_workers=32) as pool:
            list(pool.map(scrape, targets))  # warm-up
            c0 = proc_cpu_ms(proc.pid)
            cycles = int(seconds)
            walls = []
            for _ in range(cycles):
                t0 = time.monotonic()
                list(pool.map(scrape, targets))
                walls.append(time.monotonic() - t0)
                time.sleep(max(0.0, 1.0 - (time.monotonic() - t0)))
            cpu = proc_cpu_ms(proc.pid) - c0
        version = subprocess.run([binary, "--version"], capture_output=True, text=True)
        text = (version.stdout + version.stderr)
        ver = text.split("Exporter ", 1)[1].split()[0] if "Exporter " in text else "unknown"
        return {
            "name": "prometheus-redis-exporter",
            "version": ver,
            "scrapes": cycles * len(targets),
            "cpu_ms_per_scrape": round(cpu / (cycles * len(targets)), 4),
            "all_targets_wall_ms_p50": round(statistics.median(walls) * 1000, 1),
        }
    finally:
        proc.send_signal(signal.SIGTERM)
        with contextlib.suppress(Exception):
            proc.wait(timeout=5)
        if proc.poll() is None:
            proc.kill()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--instances", type=int, default=200)
    parser.add_argument("--seconds", type=float, default=10)
    parser.add_argument("--server", default=shutil.which("redis-server") or "")
    parser.add_argument("--peer", default=shutil.which("prometheus-redis-exporter") or "")
    args = parser.parse_args()
    if not args.server:
        print("bench: redis-server not found (apt-get install redis-server)", file=sys.stderr)
        return 2
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, max(soft, 65536)), hard))
    workdir = Path(tempfile.mkdtemp(prefix="replwatch-bench-"))
    fleet = Fleet(args.server, max(1, args.instances // 2), workdir)
    try:
        fleet.start()
        ours = asyncio.run(bench_replwatch(fleet.pairs, args.seconds))
        peer = bench_peer(args.peer, fleet.pairs, args.seconds) if args.peer else None
    finally:
        fleet.stop()
        shutil.rmtree(workdir, ignore_errors=True)
    result: dict[str, Any] = {
        "bench": "poll_cost",
        "instances": 2 * len(fleet.pairs),
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version()},
        "replwatch": ours,
        "peer": peer,
        "extrapolation": (
            "cycle seconds for 1,000 instances on one core = 1000 / flat-out instance-polls "
            "per CPU-second measured over the real instances (polling is CPU-bound in one "
            "event loop; waits on the network overlap)"
        ),
    }
    if peer:
        ratio = peer["cpu_ms_per_scrape"] / ours["cpu_ms_per_instance_poll"]
        result["ratio_peer_over_replwatch"] = round(ratio, 1)
        result["targets"] = {
            "cpu_vs_peer_at_most_one_tenth": ratio >= 10,
            "cycle_1000_instances_within_1s_one_core":
                ours["extrapolated_cycle_seconds_1000_instances_one_core"] <= 1.0,
        }
    out = json.dumps(result, indent=2)
    print(out)
    results = Path(__file__).parent / "results"
    results.mkdir(exist_ok=True)
    (results / "poll_cost.json").write_text(out + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
