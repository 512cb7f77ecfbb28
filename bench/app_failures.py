"""What an application sees when something fails, through the ReadRouter and through HAProxy
(docs/haproxy.cfg), measured side by side in the same run.

    python bench/app_failures.py [--out bench/results/app_failures.json]

A master with replicas a and b, a Redis holding the routing table, `replwatch run` (poll
500 ms, heartbeat 250 ms, trip {lag_seconds: 1, for: 1s}, recover {0.5, for: 2s}, publish
every 1 s) and HAProxy with docs/haproxy.cfg. Two application threads read `GET k` in a
loop (every 5 ms): one through `ReadRouter.from_url` with its defaults (max_staleness 10 s),
one through HAProxy with a redis-py client (1 s socket timeout, no retries, reconnecting
after an error, as an application should configure it). Each read records when it started,
when it answered, and which node answered (`INFO server`'s tcp_port, asked in the same
round trip), or the error.

Faults, one after the other with recovery between: replica a frozen (SIGSTOP) for 6 s;
replwatch stopped for 15 s; the table Redis stopped for 3 s; the master killed for 6 s.
Per fault and path: the longest one read waited, the longest time with no answer at all,
failed reads, how long until reads left the failed part (or moved to the master), and the
share of reads each node served during the fault.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from replwatch.routing.client import MASTER, ReadRouter  # noqa: E402
from tests.support.apps import AppRead, AppReader  # noqa: E402
from tests.support.daemons import RunningDaemon  # noqa: E402
from tests.support.servers import (  # noqa: E402
    ServerSet,
    available_builds,
    free_port,
    wait_for,
    wait_synced,
)


def _port_of(info: Any) -> int:
    return int(info["tcp_port"]) if isinstance(info, dict) else -1


class HAProxyApp:
    """An application reading through HAProxy: one client, 1 s timeouts, no retries."""

    def __init__(self, port: int, names: dict[int, str]) -> None:
        self.names = names
        self.client = redis.Redis(
            port=port, socket_timeout=1.0, socket_connect_timeout=1.0, retry=Retry(NoBackoff(), 0)
        )

    def read(self) -> str:
        pipe = self.client.pipeline(transaction=False)
        pipe.get("k")
        pipe.info("server")
        _, info = pipe.execute()
        return self.names.get(_port_of(info), "?")


def summarize(app: AppReader, t0: float, t1: float, failed_part: str) -> dict[str, Any]:
    """What the application saw from t0 (the fault) to t1 (the repair)."""
    reads: list[AppRead] = [r for r in app.since(t0) if r.started < t1]
    ends = [t0] + [r.ended for r in reads if r.served_by is not None]
    gaps = [b - a for a, b in itertools.pairwise(ends)]
    served: dict[str, int] = {}
    for r in reads:
        key = r.served_by or "error"
        served[key] = served.get(key, 0) + 1
    on_failed = [r.ended for r in reads if r.served_by == failed_part]
    on_master = [r.ended for r in reads if r.served_by == MASTER]
    return {
        "reads": len(reads),
        "longest_read_s": round(max((r.seconds for r in reads), default=0.0), 3),
        "longest_without_answer_s": round(max(gaps, default=0.0), 3),
        "failed_reads": served.get("error", 0),
        "last_read_on_failed_part_after_s": (round(max(on_failed) - t0, 3) if on_failed else None),
        "first_read_on_master_after_s": round(min(on_master) - t0, 3) if on_master else None,
        "served": {k: round(v / max(1, len(reads)), 3) for k, v in sorted(served.items())},
    }


def back_on_replicas(app: AppReader, timeout: float = 30) -> None:
    """Until the application's last 20 reads were all answered by replicas."""

    def on_replicas() -> bool:
        last = app.since(time.monotonic() - 5)[-20:]
        return len(last) == 20 and all(r.served_by not in (None, MASTER) for r in last)

    wait_for(on_replicas, timeout, "reads back on the replicas")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default=str(ROOT / "bench" / "results" / "app_failures.json"))
    args = parser.parse_args()
    build = available_builds().get("redis-7.0")
    if build is None or shutil.which("haproxy") is None:
        print("bench: needs Debian's redis-server and haproxy", file=sys.stderr)
        return 2
    work = Path(tempfile.mkdtemp(prefix="replwatch-bench-app-"))
    results: dict[str, Any] = {}
    with ServerSet(build, work) as servers:
        master = servers.start("master")
        a = servers.start("a", replica_of=master)
        b = servers.start("b", replica_of=master)
        table = servers.start("table")
        wait_synced(a, master)
        wait_synced(b, master)
        master.client().set("k", "v")
        names = {master.port: MASTER, a.port: a.label, b.port: b.label}
        port = free_port()
        config = work / "replwatch.yaml"
        config.write_text(
            f'exporter: {{listen: "127.0.0.1:{port}"}}\n'
            "poll: {interval: 500ms, timeout: 400ms}\nheartbeat: {interval: 250ms}\n"
            "routing: {trip: {lag_seconds: 1, for: 1s}, recover: {lag_seconds: 0.5, for: 2s}}\n"
            f'publish: {{url: "{table.url}", interval: 1s}}\n'
            f'groups: [{{name: g, master: "{master.url}", replicas: ["{a.url}", "{b.url}"]}}]\n'
        )
        daemon = RunningDaemon(config, port)
        listen = free_port()
        env = dict(
            os.environ,
            REPLWATCH_HOST="127.0.0.1",
            REPLWATCH_PORT=str(port),
            GROUP="g",
            LISTEN=f"127.0.0.1:{listen}",
            MASTER=master.label,
            REPLICA1=a.label,
            REPLICA2=b.label,
            HAPROXY_STATS_SOCKET=str(work / "haproxy.sock"),
        )
        proxy = subprocess.Popen(
            ["haproxy", "-f", str(ROOT / "docs" / "haproxy.cfg")],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        router = ReadRouter.from_url(table.url, "g", master.client(timeout=1.0))
        holder: dict[str, RunningDaemon] = {"daemon": daemon}
        try:
            daemon.wait_ready()
            router.start()
            wait_for(lambda: router.choose()[0] != MASTER, 15, "router reads replicas")
            via_haproxy = HAProxyApp(listen, names)
            wait_for(lambda: via_haproxy.read() != MASTER, 15, "HAProxy reads replicas")

            def router_read() -> str:
                return router.read_routed("GET", "k").served_by

            def haproxy_read() -> str:
                try:
                    return via_haproxy.read()
                except redis.RedisError:
                    via_haproxy.client.connection_pool.disconnect()
                    raise

            apps = {"router": AppReader(router_read), "haproxy": AppReader(haproxy_read)}
            for app in apps.values():
                app.__enter__()

            def fault(
                name: str, part: str, seconds: float, down: Callable[[], None],
                up: Callable[[], None], paths: tuple[str, ...] = ("router", "haproxy"),
            ) -> None:  # fmt: skip
                t0 = time.monotonic()
                down()
                time.sleep(seconds)  # the length of the fault is the scenario
                t1 = time.monotonic()
                up()
                results[name] = {
                    "fault_seconds": seconds,
                    **{p: summarize(apps[p], t0, t1, part) for p in paths},
                }
                # both replicas back in rotation, both paths reading replicas, before the next
                wait_for(both_in_rotation, 30, "both replicas back in rotation")
                for p in paths:
                    back_on_replicas(apps[p])

            def both_in_rotation() -> bool:
                status, body = holder["daemon"].fetch("/routing/g")
                table = json.loads(body) if status == 200 else {}
                return len(table.get("read_from", [])) == 2

            fault("replica_frozen", a.label, 6.0, a.pause, a.resume)

            def restart_daemon() -> None:
                holder["daemon"] = RunningDaemon(config, port)
                holder["daemon"].wait_ready()

            fault("replwatch_down", "-", 15.0, daemon.stop, restart_daemon)
            fault("table_redis_down", "-", 3.0, table.stop, table.restart, ("router",))

            def master_back() -> None:
                master.restart(wipe=False)
                wait_synced(a, master)
                wait_synced(b, master)

            fault("master_down", MASTER, 6.0, master.kill, master_back)
            for app in apps.values():
                app.stop()
        finally:
            router.stop()
            proxy.terminate()
            proxy.wait(timeout=10)
            daemon.stop()
            holder["daemon"].stop()
    shutil.rmtree(work, ignore_errors=True)
    out = json.dumps({"bench": "app_failures", "faults": results}, indent=2)
    print(out)
    Path(args.out).parent.mkdir(exist_ok=True)
    Path(args.out).write_text(out + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
