#!/usr/bin/env python3
"""Fault scale: 1,000 targets with 10 % black-holed, and /metrics under 50 concurrent scrapers.

    python bench/fault_scale.py [--targets 1000] [--seconds 10] [--scrapers 50] [--status-pages 5]

The measured version of tests/test_fault_scale.py (which asserts the same at 200 targets):
the same fleet (tests/support/faults.py: groups of master + replica on real redis-server 7.0
processes, each master + replica pair serving up to 19 groups in a database each; 10 % of the
nodes are loopback black holes, half of them accepting and never answering, half never
accepting), one `replwatch run` with `poll.interval` 1 s, `poll.timeout` 500 ms and the rest
at its defaults. The daemon's /metrics is sampled once a second (--sample-every) for S
seconds, then for S seconds while N threads fetch /metrics back to back (every other one
asking for OpenMetrics, as Prometheus does), then for S seconds while P status pages are open
(each fetching /status.json once a second).

Prints one JSON object (and writes it to bench/results/fault_scale.json): per phase the
healthy groups' cycle duration (replwatch_poll_duration_seconds) p50/p95/max, the
black-holed groups' cycle duration, the fewest cycles a healthy group completed, scheduler
runs skipped / missed / failed in the phase, the daemon's CPU share, and every
disagreement with the truth (real nodes reported down, black-holed nodes not down by
timeout); under load also the scrapers' answers and latency, with the pages open their
answers and latency. Asserts nothing: a benchmark,
not a test.

Uses the tests' helpers (tests/support/: servers, daemons, faults), so it needs
the test extras: pip install -e '.[test]'. Every process it starts (the servers, the
daemon) is stopped by pid, also on failure or Ctrl-C.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import signal
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.support.daemons import RunningDaemon  # noqa: E402
from tests.support.faults import (  # noqa: E402
    BlackHoles,
    Layout,
    Scrape,
    Scrapers,
    config_text,
    cpu_seconds,
    percentile,
    phase_figures,
    sample,
    scrape,
    settled,
    start_fleet,
)
from tests.support.servers import (  # noqa: E402
    ServerSet,
    available_builds,
    free_port,
    wait_for,
)

RESULTS = ROOT / "bench" / "results" / "fault_scale.json"
POLL_INTERVAL = 1.0
POLL_TIMEOUT = 0.5


def raise_nofile(needed: int) -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != resource.RLIM_INFINITY and soft < needed:
        new = needed if hard == resource.RLIM_INFINITY else min(needed, hard)
        resource.setrlimit(resource.RLIMIT_NOFILE, (new, hard))


def sample_under(load: Scrapers, base: str, seconds: float, every: float) -> list[Scrape]:
    """sample() while `load`'s threads run (from their first answer), then stop them."""
    try:
        wait_for(lambda: load.good or load.failures, 60, f"a first answer from {load.path}")
        return sample(base, seconds, every)
    finally:
        load.stop()


def measure(
    targets: int, seconds: float, scrapers: int, pages: int, every: float, workdir: Path
) -> dict[str, Any]:
    build = available_builds().get("redis-7.0")
    if build is None:
        raise SystemExit("needs Debian's redis-server 7.0 (apt-get install redis-server)")
    layout = Layout(targets)
    raise_nofile(4 * targets + 8 * scrapers + 512)
    started = time.monotonic()
    with (
        ServerSet(build, workdir) as servers,
        BlackHoles(hung=layout.black_holed // 2, vanished=layout.black_holed // 2) as holes,
    ):
        fleet = start_fleet(servers, layout, holes)
        setup = time.monotonic() - started
        port = free_port()
        cfg = workdir / "config.yaml"
        cfg.write_text(config_text(port, fleet, POLL_INTERVAL, POLL_TIMEOUT))
        with RunningDaemon(cfg, port) as daemon:
            wait_for(lambda: daemon.fetch("/-/ready")[0] == 200, 60, "daemon ready")
            ready = time.monotonic() - started

            wait_for(
                lambda: settled(scrape(daemon.base), fleet),
                60,
                "every real node up, black-holed replicas out of rotation, real ones in",
                interval=1.0,
            )
            load0 = os.getloadavg()[0]
            cpu0, t0 = cpu_seconds(daemon.pid), time.monotonic()
            quiet = phase_figures(sample(daemon.base, seconds, every), fleet, POLL_INTERVAL)
            cpu1, t1 = cpu_seconds(daemon.pid), time.monotonic()
            hammer = Scrapers(daemon.base, scrapers, len(fleet.groups))
            loaded_samples = sample_under(hammer, daemon.base, seconds, every)
            cpu2, t2 = cpu_seconds(daemon.pid), time.monotonic()
            loaded = phase_figures(loaded_samples, fleet, POLL_INTERVAL)
            readers = Scrapers(
                daemon.base, pages, len(fleet.groups), path="/status.json", every=1.0
            )
            page_samples = sample_under(readers, daemon.base, seconds, every)
            cpu3, t3 = cpu_seconds(daemon.pid), time.monotonic()
            paged = phase_figures(page_samples, fleet, POLL_INTERVAL)
            paged["daemon_cpu_share"] = round((cpu3 - cpu2) / (t3 - t2), 3)
            paged["status_pages"] = {
                "pages": pages,
                "answers": readers.good,
                "failures": len(readers.failures),
                "p50_seconds": round(percentile(readers.seconds, 50), 3),
                "max_seconds": round(max(readers.seconds, default=0.0), 3),
            }
            quiet["daemon_cpu_share"] = round((cpu1 - cpu0) / (t1 - t0), 3)
            loaded["daemon_cpu_share"] = round((cpu2 - cpu1) / (t2 - t1), 3)
            loaded["scrapers"] = {
                "threads": scrapers,
                "answers": hammer.good,
                "failures": len(hammer.failures),
                "p50_seconds": round(percentile(hammer.seconds, 50), 3),
                "p95_seconds": round(percentile(hammer.seconds, 95), 3),
            }
            metrics_bytes = len(daemon.fetch("/metrics")[1])
            alive = daemon.proc.poll() is None
    return {
        "targets": targets,
        "groups": len(fleet.groups),
        "black_holed_nodes": layout.black_holed,
        "redis_server_processes": 2 * layout.pairs,
        "poll": {"interval_seconds": POLL_INTERVAL, "timeout_seconds": POLL_TIMEOUT},
        "sample_every_seconds": every,
        "quiet": quiet,
        "under_scrapers": loaded,
        "status_pages_open": paged,
        "metrics_bytes": metrics_bytes,
        "daemon_alive_at_end": alive,
        "setup_seconds": round(setup, 1),
        "ready_after_seconds": round(ready, 1),
        "total_seconds": round(time.monotonic() - started, 1),
        "environment": {
            "cpus": os.cpu_count(),
            "load_average_1m_at_start": round(load0, 2),
            "python": sys.version.split()[0],
            "redis_server": build.version,
        },
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--targets", type=int, default=1000, help="nodes (a multiple of 40)")
    ap.add_argument("--seconds", type=float, default=10, help="length of each phase")
    ap.add_argument("--scrapers", type=int, default=50, help="threads fetching /metrics")
    ap.add_argument(
        "--status-pages",
        type=int,
        default=5,
        help="open status pages in phase 3 (each fetches /status.json every second)",
    )
    ap.add_argument(
        "--sample-every",
        type=float,
        default=1.0,
        help="seconds between the measuring scrapes (each one is a full /metrics render)",
    )
    ap.add_argument("--output", type=Path, default=RESULTS, help="where to write the JSON")
    args = ap.parse_args(argv)
    if args.targets <= 0 or args.targets % 40:
        ap.error("--targets must be a positive multiple of 40")

    def on_term(signum: int, frame: object) -> None:
        raise KeyboardInterrupt  # unwinds through the `with` blocks that stop the processes

    signal.signal(signal.SIGTERM, on_term)
    try:
        with tempfile.TemporaryDirectory(prefix="replwatch-fault-scale-") as tmp:
            result = measure(
                args.targets,
                args.seconds,
                args.scrapers,
                args.status_pages,
                args.sample_every,
                Path(tmp),
            )
    except KeyboardInterrupt:
        print("interrupted; every started process was stopped", file=sys.stderr)
        return 130
    text = json.dumps(result, indent=2)
    print(text)
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
