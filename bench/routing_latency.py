"""Routing latency: from a replica's true lag crossing the threshold to (a) replwatch's routing
table taking it out, (b) HAProxy (docs/haproxy.cfg) no longer sending it reads; beside it the
peer path: redis_exporter scraped by Prometheus every 15 s with an alert rule on the lag.

    python bench/routing_latency.py [--runs 10] [--peer-runs 3]

Lag: replica a replicates through a 100 KB/s relay (it keeps answering and ACKing); a burst of
writes (~400 KB/s) makes it fall behind. Every write batch stores the local time in
truth:marker; polling the replica's newest visible marker every 5 ms gives the moment its true
lag crosses the 1 s threshold. replwatch runs with poll 500 ms, heartbeat 250 ms,
trip {lag_seconds: 1, for: 1s}. Target: (a) <= trip.for + 1 s.
Unreachable: the replica paused (SIGSTOP); reported apart (it is out at the first failed poll).
Peer: prometheus-redis-exporter on the master, Prometheus scraping it every 15 s (evaluation
every 15 s), rule `redis_connected_slave_lag_seconds > 1` with `for: 1s` (redis_exporter's
lag is INFO's ACK age, which a paused replica does let grow); latency to the alert firing.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.support.servers import (  # noqa: E402
    RedisProcess,
    ServerSet,
    available_builds,
    free_port,
    wait_synced,
)

THRESHOLD = 1.0
TRIP_FOR = 1.0


def http_status(url: str) -> int:
    try:
        with urllib.request.urlopen(url, timeout=1) as resp:
            return int(resp.status)
    except urllib.error.HTTPError as exc:
        return int(exc.code)
    except OSError:
        return 0


def haproxy_state(sock: Path, server: str) -> str:
    with socket.socket(socket.AF_UNIX) as s:
        s.connect(str(sock))
        s.sendall(b"show stat\n")
        data = b""
        while chunk := s.recv(65536):
            data += chunk
    for line in data.decode().splitlines():
        parts = line.split(",")
        if len(parts) > 17 and parts[0] == "redis_replicas" and parts[1] == server:
            return parts[17]
    return ""


def until(pred: Any, timeout: float, step: float = 0.01) -> float | None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(Exception):
            if pred():
                return time.monotonic()
        time.sleep(step)
    return None


def writer(master: RedisProcess, stop: threading.Event, burst: threading.Event) -> None:
    """~20 KB/s normally, ~400 KB/s while `burst` is set; every batch also stores the local
    time in truth:marker, so a replica's newest visible marker tells its true lag."""
    client = master.client()
    value = "v" * 1000
    n = 0
    while not stop.is_set():
        tick = time.monotonic()
        pipe = client.pipeline(transaction=False)
        for _ in range(8 if burst.is_set() else 1):
            n += 1
            pipe.set(f"bench:{n % 2000}", value)
        pipe.set("truth:marker", repr(time.time()))
        with contextlib.suppress(Exception):
            pipe.execute()
        stop.wait(max(0.0, 0.02 - (time.monotonic() - tick)))


def true_lag(replica: RedisProcess) -> float:
    seen = replica.client(timeout=0.5).get("truth:marker")
    return time.time() - float(seen) if seen else 0.0


class RelayThread:
    """The demo's bandwidth-limited relay on its own event loop."""

    def __init__(self, upstream_port: int, rate: int) -> None:
        import asyncio

        from replwatch.demo import ThrottledRelay

        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.relay = ThrottledRelay(upstream_port, rate)
        asyncio.run_coroutine_threadsafe(self.relay.start(), self.loop).result(5)
        self.port = self.relay.port

    def close(self) -> None:
        import asyncio

        asyncio.run_coroutine_threadsafe(self.relay.close(), self.loop).result(5)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(timeout=5)


def summary(values: list[float]) -> dict[str, int]:
    return {
        "median": round(statistics.median(values)),
        "min": round(min(values)),
        "max": round(max(values)),
    }


def bench_replwatch(
    work: Path,
    runs: int,
    master: RedisProcess,
    a: RedisProcess,
    b: RedisProcess,
    burst: threading.Event,
) -> dict[str, Any]:
    port = free_port()
    cfg = work / "replwatch.yaml"
    cfg.write_text(
        f'exporter: {{listen: "127.0.0.1:{port}"}}\n'
        "poll: {interval: 500ms, timeout: 400ms}\nheartbeat: {interval: 250ms}\n"
        f"routing: {{trip: {{lag_seconds: {THRESHOLD}, for: {TRIP_FOR}s}}, "
        "recover: {lag_seconds: 0.5, for: 2s}}\n"
        f'groups: [{{name: g, master: "{master.url}", replicas: ["{a.url}", "{b.url}"]}}]\n'
    )
    daemon = subprocess.Popen(
        [sys.executable, "-m", "replwatch", "run", "-c", str(cfg)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    listen = free_port()
    sock = work / "haproxy.sock"
    env = dict(
        os.environ,
        REPLWATCH_HOST="127.0.0.1",
        REPLWATCH_PORT=str(port),
        GROUP="g",
        LISTEN=f"127.0.0.1:{listen}",
        MASTER=master.label,
        REPLICA1=a.label,
        REPLICA2=b.label,
        HAPROXY_STATS_SOCKET=str(sock),
    )
    proxy = subprocess.Popen(
        ["haproxy", "-f", str(ROOT / "docs" / "haproxy.cfg")],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    health = f"http://127.0.0.1:{port}/health/replica/g/{a.label}"
    lag_table: list[float] = []
    lag_proxy: list[float] = []
    pause_table: list[float] = []
    pause_proxy: list[float] = []

    def back_in() -> None:
        if (
            until(
                lambda: (
                    http_status(health) == 200 and haproxy_state(sock, a.label).startswith("UP")
                ),
                60,
            )
            is None
        ):
            raise SystemExit("bench: replica never back in rotation")

    try:
        # lag: the replica answers but is fed through a 100 KB/s relay; a burst of writes
        # makes its true lag cross the threshold (found by polling its truth marker)
        for _ in range(runs):
            back_in()
            burst.set()
            t_cross = until(lambda: true_lag(a) > THRESHOLD, 30, 0.005)
            t_table = until(lambda: http_status(health) == 503, 15)
            t_proxy = until(lambda: haproxy_state(sock, a.label).startswith("DOWN"), 15)
            burst.clear()
            if t_cross is None or t_table is None or t_proxy is None:
                raise SystemExit("bench: the lagging replica was never taken out")
            lag_table.append((t_table - t_cross) * 1000)
            lag_proxy.append((t_proxy - t_cross) * 1000)
        # unreachable: SIGSTOP; out at the first failed poll, before lag would trip
        for _ in range(runs):
            back_in()
            t0 = time.monotonic()
            a.pause()
            t_table = until(lambda: http_status(health) == 503, 15)
            t_proxy = until(lambda: haproxy_state(sock, a.label).startswith("DOWN"), 15)
            a.resume()
            if t_table is None or t_proxy is None:
                raise SystemExit("bench: the paused replica was never taken out")
            pause_table.append((t_table - t0) * 1000)
            pause_proxy.append((t_proxy - t0) * 1000)
    finally:
        burst.clear()
        a.resume()
        proxy.terminate()
        daemon.terminate()
        for p in (proxy, daemon):
            try:
                p.wait(timeout=10)
            except subprocess.TimeoutExpired:
                p.kill()
    return {
        "runs": runs,
        "lag_crossing_to_routing_table_ms": summary(lag_table),
        "lag_crossing_to_haproxy_ms": summary(lag_proxy),
        "target_routing_table_ms": round((TRIP_FOR + 1.0) * 1000),
        "target_met": statistics.median(lag_table) <= (TRIP_FOR + 1.0) * 1000,
        "paused_to_routing_table_ms": summary(pause_table),
        "paused_to_haproxy_ms": summary(pause_proxy),
    }


def bench_peer(work: Path, runs: int, master: RedisProcess, a: RedisProcess) -> dict[str, Any]:
    exporter_port, prom_port = free_port(), free_port()
    exporter = subprocess.Popen(
        [
            "prometheus-redis-exporter",
            "-web.listen-address",
            f"127.0.0.1:{exporter_port}",
            "-redis.addr",
            f"redis://{master.label}",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    rules = work / "peer.rules.yml"
    rules.write_text(
        "groups:\n- name: peer\n  rules:\n  - alert: ReplicaLag\n"
        f"    expr: redis_connected_slave_lag_seconds > {THRESHOLD}\n    for: {TRIP_FOR:g}s\n"
    )
    prom_cfg = work / "prometheus.yml"
    prom_cfg.write_text(
        "global: {scrape_interval: 15s, evaluation_interval: 15s}\n"
        f"rule_files: [{rules}]\n"
        f"scrape_configs: [{{job_name: redis, static_configs: [{{targets: "
        f"['127.0.0.1:{exporter_port}']}}]}}]\n"
    )
    prom = subprocess.Popen(
        [
            "prometheus",
            f"--config.file={prom_cfg}",
            f"--storage.tsdb.path={work / 'tsdb'}",
            f"--web.listen-address=127.0.0.1:{prom_port}",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    alerts = f"http://127.0.0.1:{prom_port}/api/v1/alerts"

    def firing() -> bool:
        with urllib.request.urlopen(alerts, timeout=2) as resp:
            data = json.load(resp)
        return any(x["state"] == "firing" for x in data["data"]["alerts"])

    latencies: list[float] = []
    try:
        until(lambda: http_status(f"http://127.0.0.1:{prom_port}/-/ready") == 200, 30, 0.2)
        for _ in range(runs):
            until(lambda: not firing(), 90, 0.2)
            t0 = time.monotonic()
            a.pause()
            t_fire = until(firing, 90, 0.1)
            a.resume()
            if t_fire is None:
                raise SystemExit("bench: the peer alert never fired")
            latencies.append((t_fire - (t0 + THRESHOLD)) * 1000)  # true lag crossed at t0+1
    finally:
        a.resume()
        for p in (prom, exporter):
            p.terminate()
            try:
                p.wait(timeout=10)
            except subprocess.TimeoutExpired:
                p.kill()
    return {
        "name": "prometheus-redis-exporter + Prometheus (15 s scrape and evaluation) + alert "
        "rule on redis_connected_slave_lag_seconds",
        "runs": runs,
        "lag_crossing_to_alert_firing_ms": summary(latencies),
        "note": "a paused replica (its ACK age grows with its true lag); a starved one that "
        "keeps ACKing would never fire this rule",
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=10)
    parser.add_argument("--peer-runs", type=int, default=3)
    args = parser.parse_args()
    build = available_builds().get("redis-7.0")  # Debian's /usr/bin/redis-server
    if build is None:
        print("bench: redis-server not installed", file=sys.stderr)
        return 2
    if shutil.which("haproxy") is None:
        print("bench: haproxy not installed", file=sys.stderr)
        return 2
    work = Path(tempfile.mkdtemp(prefix="replwatch-bench-routing-"))
    servers = ServerSet(build, work)
    stop = threading.Event()
    relay: RelayThread | None = None
    try:
        master = servers.start("master")
        relay = RelayThread(master.port, 100_000)
        a = servers.start("a", ["--replicaof", "127.0.0.1", str(relay.port)])
        b = servers.start("b", replica_of=master)
        wait_synced(a, master)
        wait_synced(b, master)
        burst = threading.Event()
        threading.Thread(target=writer, args=(master, stop, burst), daemon=True).start()
        ours = bench_replwatch(work, args.runs, master, a, b, burst)
        peer = None
        if (
            args.peer_runs
            and shutil.which("prometheus")
            and shutil.which("prometheus-redis-exporter")
        ):
            peer = bench_peer(work, args.peer_runs, master, a)
    finally:
        stop.set()
        servers.close()
        if relay is not None:
            relay.close()
        shutil.rmtree(work, ignore_errors=True)
    result = {
        "bench": "routing_latency",
        "threshold_seconds": THRESHOLD,
        "trip_for_seconds": TRIP_FOR,
        "replwatch": ours,
        "peer": peer,
    }
    out = json.dumps(result, indent=2)
    print(out)
    results = Path(__file__).parent / "results"
    results.mkdir(exist_ok=True)
    (results / "routing_latency.json").write_text(out + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
