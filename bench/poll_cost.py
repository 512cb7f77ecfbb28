#!/usr/bin/env python3
"""Poll cost: replwatch's CPU per instance-poll next to prometheus-redis-exporter's per scrape.

    python bench/poll_cost.py [--instances N] [--seconds S]

Starts N real redis-server processes (N/2 master + 1 replica pairs) on ephemeral loopback
ports, then in phases that never overlap:

1. replwatch: one GroupMonitor per pair in one asyncio loop, polled at the daemon's cadence
   (a poll cycle every `poll.interval`, heartbeat writes every `heartbeat.interval`) for S
   seconds after a warm-up; process CPU, cycle wall time and RSS are measured. Then one
   /metrics render of the resulting snapshots is timed.
2. replwatch flat out: back-to-back poll cycles for a few seconds → instance-polls per
   CPU-second → the extrapolated cycle time for 1,000 instances on one core.
3. replwatch as the daemon runs it: `Daemon.build(cfg)`'s scheduler (APScheduler jobs for
   polls, heartbeats and what the defaults enable, e.g. WAIT probes, routing) for S seconds:
   process CPU per instance-poll of the real daemon loop (HTTP server not started).
4. peer: prometheus-redis-exporter in multi-target mode, every instance scraped through
   `/scrape?target=redis://…` once per cycle for the same number of cycles; only the
   exporter process's own CPU (/proc/<pid>/stat) is counted.

Prints one JSON object and writes it to bench/results/poll_cost.json. Every process the
bench starts is stopped by pid (try/finally, also on Ctrl-C / SIGTERM). This is a benchmark,
not a test: it asserts nothing about the figures, it reports them (see bench/README.md).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import os
import platform
import re
import resource
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import redis
from _procs import CLK_TCK, Processes, proc_cpu_seconds, reserve_ports
from prometheus_client import generate_latest

from replwatch import __version__ as replwatch_version
from replwatch.app import Daemon, build_registry
from replwatch.config import Config, config_from_data
from replwatch.observe.group_monitor import GroupMonitor
from replwatch.scheduler import MonitorScheduler, SchedulerStats
from replwatch.state import GroupSnapshot, SnapshotStore

REDIS_SERVER = Path("/usr/bin/redis-server")
EXPORTER = Path("/usr/bin/prometheus-redis-exporter")
RESULTS = Path(__file__).resolve().parent / "results" / "poll_cost.json"
INSTALL_HINT = "apt-get install -y redis-server prometheus-redis-exporter (see bench/README.md)"

# Small, quiet servers: no persistence, few clients, no diskless-sync delay (so replicas link
# at once), a small replication backlog.
REDIS_ARGS = [
    "--bind", "127.0.0.1",
    "--save", "",
    "--appendonly", "no",
    "--daemonize", "no",
    "--databases", "1",
    "--maxclients", "64",
    "--repl-backlog-size", "64kb",
    "--repl-diskless-sync", "yes",
    "--repl-diskless-sync-delay", "0",
    "--io-threads", "1",
    "--jemalloc-bg-thread", "no",
    "--loglevel", "warning",
]  # fmt: skip


# --------------------------------------------------------------------------- processes


@dataclass(eq=False)
class Server:
    port: int
    replica_of: int | None
    workdir: Path
    proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}"

    def args(self) -> list[str]:
        args = [
            str(REDIS_SERVER),
            "--port", str(self.port),
            "--dir", str(self.workdir),
            "--logfile", str(self.workdir / "server.log"),
            *REDIS_ARGS,
        ]  # fmt: skip
        if self.replica_of is not None:
            args += ["--replicaof", "127.0.0.1", str(self.replica_of)]
        return args


def wait_until(pending: set[Any], check: Callable[[Any], bool], timeout: float, what: str) -> None:
    """Poll `check` on every pending item until each has passed once (no blind sleeps)."""
    deadline = time.monotonic() + timeout
    while pending:
        for item in list(pending):
            with contextlib.suppress(redis.RedisError, OSError):
                if check(item):
                    pending.discard(item)
        if not pending:
            return
        if time.monotonic() > deadline:
            raise RuntimeError(f"timed out after {timeout:g}s waiting for {what}: {len(pending)}")
        time.sleep(0.05)


def _info(port: int) -> dict[str, Any]:
    client = redis.Redis(host="127.0.0.1", port=port, socket_timeout=2, socket_connect_timeout=2)
    try:
        return dict(client.info("replication"))
    finally:
        client.close()


def start_pairs(pairs: int, procs: Processes, workdir: Path) -> list[tuple[Server, Server]]:
    """Start `pairs` master + replica pairs and wait until every replica is linked."""
    ports = reserve_ports(2 * pairs)
    servers: list[tuple[Server, Server]] = []
    for i in range(pairs):
        mport, rport = ports[2 * i], ports[2 * i + 1]
        mdir, rdir = workdir / f"m{i:04d}", workdir / f"r{i:04d}"
        mdir.mkdir()
        rdir.mkdir()
        servers.append((Server(mport, None, mdir), Server(rport, mport, rdir)))
    everyone = [s for pair in servers for s in pair]
    for s in everyone:
        s.proc = procs.start(s.args(), s.workdir / "stdout.log")

    def answers(s: Server) -> bool:
        if s.proc is not None and s.proc.poll() is not None:
            log = (s.workdir / "server.log").read_text(errors="replace")[-500:]
            raise RuntimeError(f"redis-server on port {s.port} exited: {log}")
        client = redis.Redis(host="127.0.0.1", port=s.port, socket_timeout=1)
        try:
            return bool(client.ping())
        finally:
            client.close()

    wait_until(set(everyone), answers, 60, "redis-server to answer PING")

    def replica_linked(s: Server) -> bool:
        return _info(s.port).get("master_link_status") == "up"

    def master_sees_online(s: Server) -> bool:
        info = _info(s.port)
        slave0 = info.get("slave0")
        return (
            info.get("connected_slaves") == 1
            and isinstance(slave0, dict)
            and (slave0.get("state") == "online")
        )

    wait_until({r for _, r in servers}, replica_linked, 120, "replicas to link")
    wait_until({m for m, _ in servers}, master_sees_online, 60, "masters to list the replica")
    return servers


def raise_nofile(needed: int) -> dict[str, int]:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != resource.RLIM_INFINITY and soft < needed:
        new_soft = needed if hard == resource.RLIM_INFINITY else min(needed, hard)
        resource.setrlimit(resource.RLIMIT_NOFILE, (new_soft, hard))
        if new_soft < needed:
            print(f"warning: RLIMIT_NOFILE capped at {new_soft} (< {needed})", file=sys.stderr)
        soft = new_soft
    return {"soft": int(soft), "needed": needed}


# --------------------------------------------------------------------------- measurements


def rss_mb() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def rusage_cpu() -> float:
    ru = resource.getrusage(resource.RUSAGE_SELF)
    return ru.ru_utime + ru.ru_stime


def proc_rss_mb(pid: int) -> float:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def percentiles(values: Iterable[float]) -> dict[str, float]:
    data = sorted(values)
    if not data:
        return {"p50": float("nan"), "p95": float("nan"), "max": float("nan")}

    def rank(q: float) -> float:  # nearest-rank percentile
        return data[min(len(data) - 1, max(0, int(-(-q * len(data) // 1)) - 1))]

    return {"p50": round(rank(0.50), 3), "p95": round(rank(0.95), 3), "max": round(data[-1], 3)}


def build_config(pairs: list[tuple[Server, Server]]) -> Config:
    return config_from_data(
        {
            "exporter": {"listen": "127.0.0.1:0"},  # the scheduler phase builds (not starts) it
            "poll": {"interval": "1s", "timeout": "500ms"},
            "groups": [
                {"name": f"g{i:04d}", "master": m.url, "replicas": [r.url]}
                for i, (m, r) in enumerate(pairs)
            ],
        },
        source="<bench>",
        env={},
    )


def snapshot_problems(snapshots: Iterable[GroupSnapshot]) -> int:
    """Nodes that were not up, or replicas not linked, in these snapshots."""
    bad = 0
    for snap in snapshots:
        bad += sum(1 for node in snap.nodes if not node.up)
        bad += sum(1 for rep in snap.replicas if not rep.link_up)
    return bad


async def measure_replwatch(
    cfg: Config, seconds: float, flat_seconds: float, heartbeat_interval: float
) -> dict[str, Any]:
    n_instances = sum(1 + len(g.replicas) for g in cfg.groups)
    poll_interval = cfg.poll.interval
    rss_before = rss_mb()
    monitors = [GroupMonitor(g, cfg.poll, cfg.heartbeat, cfg.lag, cfg.tls) for g in cfg.groups]
    rss_created = rss_mb()
    writers = [m for m in monitors if m.writer is not None]

    # the daemon's own code paths (MonitorScheduler.poll_all / heartbeat_all), driven at its
    # cadence here instead of by APScheduler (phase 3 measures that too)
    sched_stats = SchedulerStats()
    sched = MonitorScheduler(
        monitors, SnapshotStore(), poll_interval, heartbeat_interval, sched_stats
    )

    async def poll_all(with_heartbeat: bool = True) -> list[GroupSnapshot]:
        await sched.poll_all(with_heartbeat=with_heartbeat and bool(writers))
        return [m.last_snapshot for m in monitors if m.last_snapshot is not None]

    def heartbeats_failed() -> int:
        return sum(
            v
            for (kind, _, what), v in sched_stats.items()
            if (kind, what) == ("heartbeat", "failed")
        )

    async def heartbeat_all() -> int:
        before = heartbeats_failed()
        await sched.heartbeat_all()
        return heartbeats_failed() - before

    try:
        # warm-up: connections opened, script loaded (NOSCRIPT → EVAL), buffer limit fetched,
        # the offset clock has a point
        await heartbeat_all()
        await poll_all()
        await heartbeat_all()
        warm = await poll_all()
        warmup_problems = snapshot_problems(warm)

        # ---- paced: the daemon's cadence. As MonitorScheduler.tick does: a heartbeat round
        # every heartbeat interval, every k-th of them the poll cycle carrying that round's
        # heartbeats in the masters' pipelines (k = poll interval / heartbeat interval);
        # overruns are coalesced (skipped and counted) as APScheduler does for the daemon
        rounds_per_poll = sched.heartbeat_rounds_per_poll() or 1
        tick_interval = poll_interval / rounds_per_poll
        poll_cpu = hb_cpu = 0.0
        cycle_wall: list[float] = []
        hb_wall: list[float] = []
        hb_failed = 0
        poll_problems = 0
        missed = 0
        hb_missed = 0
        cycles = max(1, round(seconds / poll_interval))
        done_cycles = 0
        pt0, ru0, w0 = time.process_time(), rusage_cpu(), time.monotonic()
        ticks = cycles * rounds_per_poll
        tick = 0
        while tick < ticks:
            due = w0 + tick * tick_interval
            now = time.monotonic()
            if due > now:
                await asyncio.sleep(due - now)
            c0, w = time.process_time(), time.monotonic()
            if tick % rounds_per_poll == 0:
                snaps = await poll_all()
                cycle_wall.append((time.monotonic() - w) * 1000)
                poll_cpu += time.process_time() - c0
                poll_problems += snapshot_problems(snaps)
                done_cycles += 1
            elif writers:
                failed = await heartbeat_all()
                hb_wall.append((time.monotonic() - w) * 1000)
                hb_cpu += time.process_time() - c0
                hb_failed += failed
            tick += 1
            while w0 + tick * tick_interval <= time.monotonic() and tick < ticks:
                if tick % rounds_per_poll == 0:
                    missed += 1
                else:
                    hb_missed += 1
                tick += 1
        end = w0 + ticks * tick_interval
        await asyncio.sleep(max(0.0, end - time.monotonic()))
        paced_pt = time.process_time() - pt0
        paced_ru = rusage_cpu() - ru0
        paced_wall = time.monotonic() - w0
        rss_polled = rss_mb()
        instance_polls = n_instances * done_cycles
        hb_writes = len(writers) * len(hb_wall)

        # ---- /metrics render of the latest snapshots (what one Prometheus scrape costs)
        store = SnapshotStore()
        store.expect([m.name for m in monitors])
        for m in monitors:
            if m.last_snapshot is not None:
                store.put(m.last_snapshot)
        registry = build_registry(store, SchedulerStats())
        body = generate_latest(registry)
        renders = 5
        c0 = time.process_time()
        for _ in range(renders):
            body = generate_latest(registry)
        render_cpu = (time.process_time() - c0) / renders

        # ---- flat out: back-to-back poll cycles (no heartbeats), one event loop = one core
        flat_cycles = 0
        flat_wall: list[float] = []
        flat_problems = 0
        c0, ru0, w0 = time.process_time(), rusage_cpu(), time.monotonic()
        while time.monotonic() - w0 < flat_seconds or flat_cycles < 3:
            w = time.monotonic()
            snaps = await poll_all(with_heartbeat=False)
            flat_wall.append((time.monotonic() - w) * 1000)
            flat_problems += snapshot_problems(snaps)
            flat_cycles += 1
        flat_pt = time.process_time() - c0
        flat_ru = rusage_cpu() - ru0
        flat_elapsed = time.monotonic() - w0
    finally:
        for m in monitors:
            m.close()
        await asyncio.sleep(0.05)  # let the transports finish closing

    flat_polls = n_instances * flat_cycles
    polls_per_cpu_s = flat_polls / flat_pt if flat_pt > 0 else float("inf")
    cpu_per_poll_ms = paced_ru * 1000 / instance_polls
    hb_ms_per_write = hb_cpu * 1000 / hb_writes if hb_writes else None
    hb_writes_per_cycle = hb_writes / done_cycles
    # one core's budget for 1,000 instances at the measured per-poll costs
    daemon_cpu_1000 = 1000 * cpu_per_poll_ms / 1000 / poll_interval
    return {
        "version": replwatch_version,
        "groups": len(monitors),
        "poll_interval_seconds": poll_interval,
        "poll_timeout_seconds": cfg.poll.timeout,
        "heartbeat_interval_seconds": heartbeat_interval if writers else None,
        "cycles": done_cycles,
        "cycles_missed": missed,
        "heartbeat_rounds": len(hb_wall),
        "heartbeat_rounds_missed": hb_missed,
        "heartbeat_writes": hb_writes,
        "heartbeat_writes_failed": hb_failed,
        "problems": {
            "warmup_nodes_down_or_unlinked": warmup_problems,
            "paced_nodes_down_or_unlinked": poll_problems,
            "flat_out_nodes_down_or_unlinked": flat_problems,
        },
        # headline: all of the process's CPU over the paced window (polls, heartbeats, loop
        # wake-ups, GC) divided by the instance-polls done in it
        "cpu_ms_per_instance_poll": round(cpu_per_poll_ms, 4),
        "cpu_ms_per_instance_poll_process_time": round(paced_pt * 1000 / instance_polls, 4),
        "cpu_breakdown": {
            "poll_cycle_cpu_ms_per_instance_poll_incl_carried_heartbeat": round(
                poll_cpu * 1000 / instance_polls, 4
            ),
            "heartbeat_cpu_ms_per_write": round(hb_ms_per_write, 4) if hb_ms_per_write else None,
            "heartbeat_writes_per_cycle": round(hb_writes_per_cycle, 2),
            "heartbeat_cpu_ms_per_instance_poll": round(hb_cpu * 1000 / instance_polls, 4),
            "heartbeat_cpu_ms_per_master_second": round(
                hb_cpu * 1000 / (len(writers) * paced_wall), 4
            )
            if writers
            else None,
            "other_cpu_ms_per_instance_poll": round(
                (paced_ru - poll_cpu - hb_cpu) * 1000 / instance_polls, 4
            ),
            "paced_window_cpu_seconds": round(paced_ru, 3),
            "paced_window_wall_seconds": round(paced_wall, 3),
            "paced_window_cpu_share_of_one_core": round(paced_ru / paced_wall, 4),
        },
        "cycle_wall_ms": percentiles(cycle_wall),
        "heartbeat_round_wall_ms": percentiles(hb_wall),
        "metrics_render": {
            "cpu_ms_per_render_all_instances": round(render_cpu * 1000, 3),
            "cpu_ms_per_instance": round(render_cpu * 1000 / n_instances, 4),
            "bytes": len(body),
        },
        "flat_out": {
            "seconds": round(flat_elapsed, 3),
            "cycles": flat_cycles,
            "cpu_seconds_process_time": round(flat_pt, 3),
            "cpu_seconds_rusage": round(flat_ru, 3),
            "cycle_wall_ms": percentiles(flat_wall),
            "cpu_ms_per_instance_poll": round(flat_pt * 1000 / flat_polls, 4),
            "instance_polls_per_wall_second": round(flat_polls / flat_elapsed, 1),
            "cpu_share_of_wall": round(flat_pt / flat_elapsed, 3),
        },
        "flat_out_instance_polls_per_cpu_second": round(polls_per_cpu_s, 1),
        "extrapolated_cycle_seconds_1000_instances_one_core": round(1000 / polls_per_cpu_s, 4),
        "extrapolation": (
            "flat out: back-to-back poll cycles of all N instances (MonitorScheduler.poll_all, "
            "the daemon's cycle, no heartbeats) on one event loop = one core; "
            "instance-polls per CPU-second = N x cycles / process CPU seconds; the cycle time "
            "for 1,000 instances on one core = 1000 / that rate (CPU-bound: assumes per-poll "
            "CPU stays flat with N and Redis answers in less time than the CPU work). "
            "extrapolated_daemon_cpu_share_1000_instances adds the heartbeat writes at the "
            "daemon's cadence: 1000 x cpu_ms_per_instance_poll (paced) / poll interval."
        ),
        "extrapolated_daemon_cpu_share_1000_instances": round(daemon_cpu_1000, 4),
        "rss_mb": {
            "before_monitors": round(rss_before, 2),
            "after_creating_monitors": round(rss_created, 2),
            "after_polling": round(rss_polled, 2),
            "max_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 2),
        },
        "rss_mb_per_node": round((rss_polled - rss_before) / n_instances, 4),
        "rss_kb_per_node": round((rss_polled - rss_before) * 1024 / n_instances, 1),
        "rss_mb_per_node_created_only": round((rss_created - rss_before) / n_instances, 4),
    }


async def measure_daemon_scheduler(cfg: Config, seconds: float) -> dict[str, Any]:
    """The daemon's own loop: everything `replwatch.app.Daemon.build(cfg)` wires into its
    scheduler (APScheduler jobs per group: polls, heartbeats and whatever else the defaults
    enable, e.g. WAIT probes and routing), driven as `Daemon.serve()` drives it, on fresh
    connections; the HTTP server is built but not started. Process CPU over S seconds
    divided by the instance-polls completed."""
    logging.getLogger("apscheduler").setLevel(logging.CRITICAL)  # counted in stats instead
    n_instances = sum(1 + len(g.replicas) for g in cfg.groups)
    daemon = Daemon.build(cfg)
    sched, stats = daemon.scheduler, daemon.stats

    def counts() -> dict[str, int]:
        out: dict[str, int] = {}
        for (kind, _group, what), value in stats.items():
            key = f"{kind}:{what}"
            out[key] = out.get(key, 0) + value
        return out

    try:
        await sched.poll_all_once()
        sched.start()
        await asyncio.sleep(2 * cfg.poll.interval)  # warm-up: jobs spread over the interval
        before = counts()
        c0, ru0, w0 = time.process_time(), rusage_cpu(), time.monotonic()
        await asyncio.sleep(seconds)
        cpu_pt, cpu_ru = time.process_time() - c0, rusage_cpu() - ru0
        wall = time.monotonic() - w0
        after = counts()
        problems = snapshot_problems(daemon.store.all())
    finally:
        # shutdown cancels in-flight jobs, which the scheduler logs as job errors: not news
        logging.getLogger("replwatch.scheduler").setLevel(logging.CRITICAL)
        sched.shutdown()  # stops the jobs and closes every connection
        daemon.http.server_close()  # never started, so no serve_forever to stop
        current = asyncio.current_task()
        pending = [t for t in asyncio.all_tasks() if t is not current]
        if pending:  # in-flight jobs end on their closed connections
            await asyncio.wait(pending, timeout=5)
    delta = {k: after.get(k, 0) - before.get(k, 0) for k in sorted(after)}
    group_polls = delta.get("poll:completed", 0)
    instance_polls = group_polls * n_instances / max(1, len(cfg.groups))
    jobs = {k: v for k, v in delta.items() if v}
    return {
        "driver": (
            "replwatch.app.Daemon.build(cfg).scheduler, started as Daemon.serve() starts it "
            "(APScheduler; default config: heartbeats, WAIT probes, routing); HTTP not started"
        ),
        "seconds": round(wall, 3),
        "job_outcomes": jobs,
        "runs_missed_or_skipped": sum(
            v for k, v in delta.items() if k.endswith((":missed", ":skipped_overrun"))
        ),
        "job_errors": sum(v for k, v in delta.items() if k.endswith(":error")),
        "last_snapshots_nodes_down_or_unlinked": problems,
        "cpu_seconds": round(cpu_ru, 3),
        "cpu_share_of_one_core": round(cpu_ru / wall, 4),
        "cpu_ms_per_instance_poll": round(cpu_ru * 1000 / instance_polls, 4)
        if instance_polls
        else None,
        "cpu_ms_per_instance_poll_process_time": round(cpu_pt * 1000 / instance_polls, 4)
        if instance_polls
        else None,
        # share of one core the daemon's loop would need for 1,000 instances (linear)
        "extrapolated_cpu_share_1000_instances": round(cpu_ru / wall * 1000 / n_instances, 4),
    }


# --------------------------------------------------------------------------- the peer


def exporter_version() -> str:
    out = subprocess.run(
        [str(EXPORTER), "-version"], capture_output=True, text=True, timeout=10, check=False
    )
    match = re.search(r"Exporter\s+(\S+)", out.stdout + out.stderr)
    return match.group(1) if match else "unknown"


def _get(url: str, timeout: float = 10.0) -> bytes:
    with urllib.request.urlopen(url, timeout=timeout) as resp:
        return bytes(resp.read())


def measure_peer(
    pairs: list[tuple[Server, Server]],
    cycles: int,
    interval: float,
    procs: Processes,
    workdir: Path,
    workers: int,
) -> dict[str, Any]:
    (port,) = reserve_ports(1)
    # -redis.addr "": multi-target only, /metrics itself scrapes nothing
    args = [str(EXPORTER), "-web.listen-address", f"127.0.0.1:{port}", "-redis.addr", ""]
    proc = procs.start(args, workdir / "exporter.log")
    base = f"http://127.0.0.1:{port}"

    def exporter_up(_: object) -> bool:
        if proc.poll() is not None:
            log = (workdir / "exporter.log").read_text(errors="replace")[-500:]
            raise RuntimeError(f"prometheus-redis-exporter exited: {log}")
        return _get(f"{base}/health", 1).strip() == b"ok"

    wait_until({0}, exporter_up, 30, "prometheus-redis-exporter to listen")
    urls = [f"{base}/scrape?target={server.url}" for pair in pairs for server in pair]

    def scrape(url: str) -> tuple[bool, int]:
        try:
            body = _get(url)
        except OSError:
            return False, 0
        return b"\nredis_up 1\n" in body, len(body)

    walls: list[float] = []
    failed = 0
    total_bytes = 0
    with ThreadPoolExecutor(max_workers=workers) as pool:
        warm = list(pool.map(scrape, urls))
        warm_failed = sum(1 for ok, _ in warm if not ok)
        cpu0 = proc_cpu_seconds(proc.pid)
        t0 = time.monotonic()
        for k in range(cycles):
            due = t0 + k * interval
            now = time.monotonic()
            if due > now:
                time.sleep(due - now)
            w = time.monotonic()
            results = list(pool.map(scrape, urls))
            walls.append((time.monotonic() - w) * 1000)
            failed += sum(1 for ok, _ in results if not ok)
            total_bytes += sum(size for _, size in results)
        cpu1 = proc_cpu_seconds(proc.pid)
    rss = proc_rss_mb(proc.pid)
    scrapes = len(urls) * cycles
    return {
        "name": "prometheus-redis-exporter",
        "version": exporter_version(),
        "mode": "multi-target /scrape?target=redis://host:port, default flags",
        "cycles": cycles,
        "scrapes": scrapes,
        "scrapes_failed": failed,
        "warmup_scrapes_failed": warm_failed,
        "client_threads": workers,
        "cpu_seconds": round(cpu1 - cpu0, 3),
        "cpu_tick_ms": round(1000 / CLK_TCK, 3),
        "cpu_ms_per_scrape": round((cpu1 - cpu0) * 1000 / scrapes, 4),
        "cycle_wall_ms": percentiles(walls),
        "bytes_per_scrape": round(total_bytes / scrapes) if scrapes else 0,
        "rss_mb_after": round(rss, 2),
    }


# --------------------------------------------------------------------------- main


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--instances", type=int, default=200, help="redis-server processes (even)")
    ap.add_argument("--seconds", type=float, default=20, help="measured seconds per side")
    ap.add_argument("--flat-seconds", type=float, default=5, help="flat-out phase length")
    ap.add_argument(
        "--heartbeat-interval",
        type=float,
        default=None,
        help="seconds between heartbeat rounds (default: the config default, as the daemon)",
    )
    ap.add_argument(
        "--daemon-seconds",
        type=float,
        default=None,
        help="length of the scheduler-driven phase (default: --seconds; 0 skips it)",
    )
    ap.add_argument("--scrape-threads", type=int, default=32, help="peer HTTP client threads")
    ap.add_argument("--output", type=Path, default=RESULTS, help="where to write the JSON")
    args = ap.parse_args(argv)
    if args.daemon_seconds is None:
        args.daemon_seconds = args.seconds
    if args.instances < 2 or args.instances % 2:
        ap.error("--instances must be an even number >= 2 (master + replica pairs)")
    for binary in (REDIS_SERVER, EXPORTER):
        if not binary.is_file():
            print(f"{binary} not found: {INSTALL_HINT}", file=sys.stderr)
            return 2

    # SIGTERM unwinds like Ctrl-C, so the finally block below stops every child
    def _on_term(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, _on_term)
    # Ctrl-C even when started in the background of a script (which sets SIGINT to ignored)
    signal.signal(signal.SIGINT, signal.default_int_handler)
    pairs_n = args.instances // 2
    # per instance: one poll connection, half a heartbeat connection, the peer's scrape
    # connection, redis-py set-up clients; plus the HTTP client sockets and slack
    nofile = raise_nofile(3 * args.instances + 4 * args.scrape_threads + 256)
    procs = Processes()
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="replwatch-bench-") as tmp:
        workdir = Path(tmp)
        try:
            print(f"starting {args.instances} redis-server processes …", file=sys.stderr)
            pairs = start_pairs(pairs_n, procs, workdir)
            setup_seconds = time.monotonic() - started
            server_version = subprocess.run(
                [str(REDIS_SERVER), "--version"], capture_output=True, text=True, check=False
            ).stdout.strip()
            redis_rss = sum(proc_rss_mb(p.pid) for p in procs.procs) / len(procs.procs)
            cfg = build_config(pairs)
            hb_interval = args.heartbeat_interval or cfg.heartbeat.interval
            print(f"linked in {setup_seconds:.1f}s; measuring replwatch …", file=sys.stderr)
            ours = asyncio.run(measure_replwatch(cfg, args.seconds, args.flat_seconds, hb_interval))
            if args.daemon_seconds > 0:
                print("measuring replwatch under its scheduler …", file=sys.stderr)
                ours["daemon_scheduler"] = asyncio.run(
                    measure_daemon_scheduler(cfg, args.daemon_seconds)
                )
            print("measuring prometheus-redis-exporter …", file=sys.stderr)
            peer = measure_peer(
                pairs, ours["cycles"], cfg.poll.interval, procs, workdir, args.scrape_threads
            )
        finally:
            stopped = procs.stop_all(grace=10.0)
            print(f"stopped {stopped} processes", file=sys.stderr)

    ratio = peer["cpu_ms_per_scrape"] / ours["cpu_ms_per_instance_poll"]
    ratio_render = peer["cpu_ms_per_scrape"] / (
        ours["cpu_ms_per_instance_poll"] + ours["metrics_render"]["cpu_ms_per_instance"]
    )
    daemon = ours.get("daemon_scheduler") or {}
    daemon_ms = daemon.get("cpu_ms_per_instance_poll")
    result = {
        "instances": args.instances,
        "cycles": ours["cycles"],
        "replwatch": ours,
        "peer": peer,
        "ratio_peer_over_replwatch": round(ratio, 2),
        "ratio_peer_over_replwatch_incl_metrics_render_every_cycle": round(ratio_render, 2),
        "ratio_peer_over_replwatch_daemon_scheduler": (
            round(peer["cpu_ms_per_scrape"] / daemon_ms, 2) if daemon_ms else None
        ),
        "targets": {
            "cpu_vs_peer": "<= 1/10",
            "cpu_vs_peer_met": ratio >= 10,
            "cpu_vs_peer_met_under_daemon_scheduler": (
                peer["cpu_ms_per_scrape"] / daemon_ms >= 10 if daemon_ms else None
            ),
            "1000_instances_cycle_within_1s": (
                ours["extrapolated_cycle_seconds_1000_instances_one_core"] <= 1.0
            ),
            "1000_instances_daemon_cpu_within_one_core": (
                ours["extrapolated_daemon_cpu_share_1000_instances"] <= 1.0
            ),
            "1000_instances_daemon_scheduler_cpu_within_one_core": (
                daemon["extrapolated_cpu_share_1000_instances"] <= 1.0 if daemon else None
            ),
        },
        "environment": {
            "redis_server": server_version,
            "redis_rss_mb_avg": round(redis_rss, 2),
            "python": platform.python_version(),
            "cpus": os.cpu_count(),
            "machine": platform.machine(),
            "nofile": nofile,
            "setup_seconds": round(setup_seconds, 2),
            "note": (
                "bench, Redis servers and the exporter share this machine's cores; CPU "
                "figures are process CPU time, so they do not depend on who waits for whom"
            ),
        },
    }
    text = json.dumps(result, indent=2)
    print(text)
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(text + "\n")
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except KeyboardInterrupt:
        print("interrupted; every started process was stopped", file=sys.stderr)
        sys.exit(130)
