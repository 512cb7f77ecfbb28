"""Full sync into a Redis Cluster target next to the same full sync into one Redis, same run.

A source filled with DEBUG POPULATE is copied by `replwatch sync run` twice: into a single
redis-server, then into a 3-master cluster (redis-server --cluster-enabled, slots split in
three). Printed as JSON: seconds to the full sync's end (from the process start), keys/s and
the syncer's peak RSS (VmHWM) for each, and the cluster run's ratios to the single one. Key
counts are verified on both targets. No native reference exists for a cluster target (a
replica cannot follow into one), so the one-node target in the same run is the yardstick.

    python bench/sync_cluster_target.py [--keys 1000000] [--value-size 100] [--server PATH]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import redis
import yaml
from _procs import Processes, reserve_ports
from redis.cluster import RedisCluster

ROOT = Path(__file__).resolve().parent.parent


def start(
    procs: Processes, workdir: Path, server: Path, name: str, port: int, extra: list[str]
) -> int:
    sdir = workdir / name
    sdir.mkdir()
    args = [str(server), "--port", str(port), "--bind", "127.0.0.1", "--dir", str(sdir),
            "--save", "", "--appendonly", "no", "--enable-debug-command", "yes",
            "--repl-diskless-sync-delay", "0",
            *extra]  # fmt: skip
    procs.start(args, sdir / "stdout.log")
    client = redis.Redis(port=port, socket_timeout=5)
    deadline = time.monotonic() + 30
    while True:
        try:
            if client.ping():
                return port
        except redis.RedisError:
            if time.monotonic() > deadline:
                raise
        time.sleep(0.02)


def cluster(procs: Processes, workdir: Path, server: Path) -> list[int]:
    """Three masters under 32768 (bus port = port + 10000), slots split, all agreeing."""
    ports: list[int] = []
    while len(ports) < 3:
        (port,) = reserve_ports(1)
        if port < 55535 and port not in ports:
            ports.append(port)
    for i, port in enumerate(ports):
        start(procs, workdir, server, f"node{i}", port, ["--cluster-enabled", "yes",
              "--cluster-config-file", "nodes.conf", "--cluster-node-timeout", "5000"])  # fmt: skip
    clients = [redis.Redis(port=p, socket_timeout=5) for p in ports]
    for c in clients[1:]:
        c.execute_command("CLUSTER", "MEET", "127.0.0.1", ports[0])
    bounds = [0, 5461, 10923, 16384]
    for i, c in enumerate(clients):
        c.execute_command("CLUSTER", "ADDSLOTSRANGE", bounds[i], bounds[i + 1] - 1)
    deadline = time.monotonic() + 60
    while not all(
        c.execute_command("CLUSTER", "INFO").decode().count("cluster_state:ok") for c in clients
    ):
        if time.monotonic() > deadline:
            raise SystemExit("the bench cluster did not come up")
        time.sleep(0.05)
    return ports


def peak_rss_mb(pid: int) -> float | None:
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return round(int(line.split()[1]) / 1024, 1)
    except FileNotFoundError:
        return None
    return None


def run_sync(procs: Processes, workdir: Path, name: str, source: int, target: Any, keys: int,
             state: Any) -> dict[str, Any]:  # fmt: skip
    """One `replwatch sync run` until its checkpoint says the full sync is over."""
    config = workdir / f"{name}.yaml"
    task = {"name": "bench", "source": f"redis://127.0.0.1:{source}", "target": target}
    config.write_text(yaml.safe_dump({"sync": {"tasks": [task]}}))
    started = time.monotonic()
    proc = procs.start(
        [sys.executable, "-m", "replwatch", "sync", "run", "-c", str(config), "--task", "bench"],
        workdir / f"{name}.log",
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    peak = 0.0
    while True:
        if proc.poll() is not None:
            raise SystemExit(f"the syncer exited: {(workdir / f'{name}.log').read_text()[-2000:]}")
        peak = max(peak, peak_rss_mb(proc.pid) or 0.0)
        if state() == b"incremental":
            break
        time.sleep(0.02)
    seconds = time.monotonic() - started
    peak = max(peak, peak_rss_mb(proc.pid) or 0.0)
    procs.stop(proc)
    return {"seconds": round(seconds, 2), "keys_per_s": round(keys / seconds), "peak_rss_mb": peak}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--keys", type=int, default=1_000_000)
    parser.add_argument("--value-size", type=int, default=100)
    parser.add_argument(
        "--server", type=Path, default=Path("/usr/bin/redis-server"), help="7.0 or later"
    )
    args = parser.parse_args()
    procs = Processes()
    workdir = Path(tempfile.mkdtemp(prefix="replwatch-bench-cluster-"))
    try:
        source, single = reserve_ports(2)
        start(procs, workdir, args.server, "source", source, [])
        start(procs, workdir, args.server, "single", single, [])
        nodes = cluster(procs, workdir, args.server)
        redis.Redis(port=source).execute_command(
            "DEBUG", "POPULATE", args.keys, "key", args.value_size
        )
        one = redis.Redis(port=single)
        whole = RedisCluster(host="127.0.0.1", port=nodes[0])
        masters = [redis.Redis(port=p) for p in nodes]
        record = "__replwatch:sync:bench"

        def copied(clients: list[redis.Redis]) -> int:
            """Keys on the target but replwatch's own (checkpoints)."""
            own = sum(len(list(c.scan_iter(match="__replwatch:*", count=1000))) for c in clients)
            return sum(int(c.dbsize()) for c in clients) - own

        plain = run_sync(procs, workdir, "single", source, f"redis://127.0.0.1:{single}",
                         args.keys, lambda: one.hget(record, "state"))  # fmt: skip
        target = {"cluster": {"startup_nodes": [f"127.0.0.1:{p}" for p in nodes]}}
        clustered = run_sync(procs, workdir, "cluster", source, target, args.keys,
                             lambda: whole.hget(record, "state"))  # fmt: skip
        verified = {"one_node_keys": copied([one]), "cluster_keys": copied(masters)}
        if set(verified.values()) != {args.keys}:
            raise SystemExit(f"a copy is incomplete: {verified} of {args.keys} keys")
        result = {
            "keys": args.keys,
            "value_size": args.value_size,
            "one_node_target": plain,
            "cluster_target": clustered,
            "cluster_to_one_node": {
                "keys_per_s": round(clustered["keys_per_s"] / plain["keys_per_s"], 3),
                "peak_rss": round(clustered["peak_rss_mb"] / plain["peak_rss_mb"], 3),
            },
            "verified": verified,
        }
        print(json.dumps(result, indent=2))
    finally:
        procs.stop_all()
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
