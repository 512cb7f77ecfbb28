"""Many targets, 10 % of them black-holed, and /metrics hammered by 50 clients.

1. `test_black_holed_targets_and_50_scrapers_do_not_slow_polling`: 200 targets (100 groups
   of master + replica; tests/support/faults.py has the layout) watched by one `replwatch run`
   with `poll.interval` 1 s, `poll.timeout` 500 ms and every other setting at its default
   (heartbeats every 250 ms carried in the poll pipelines, WAIT probes every second, read
   routing). 180 targets are real redis-server 7.0 processes (5 master + replica pairs, each
   serving 19 groups, one database per group); 20 are black holes on loopback: 10 accept
   and never answer, 10 never accept (full accept queue: SYNs dropped). 5 groups are wholly
   black-holed, 10 have a real master and a black-holed replica. The daemon's /metrics is
   sampled once a second for QUIET seconds, then for LOAD seconds while 50 threads fetch
   /metrics back to back. bench/fault_scale.py runs the same at 1,000 targets (too heavy
   for the suite on 2 cores) and prints the figures.

   Proved from the daemon's own metrics, in both phases of the same run:
   - no scheduled run was skipped, missed or failed
     (`replwatch_scheduler_runs_total{outcome=~"skipped_overrun|missed|error"}` absent);
   - every healthy group completed a cycle every second (`replwatch_group_poll_cycles_total`
     rose by at least the phase's seconds - 1, counted from the end of its first answer:
     a queued scrape's contents are as late as its answer), and the p95 of their cycle durations
     (`replwatch_poll_duration_seconds`) stayed below the poll interval — quiet and under
     the 50 scrapers (both printed);
   - no real node was ever reported down (a poll loop starved by renders would time out
     nodes that answer), every black-holed node was down with reason "timeout", and the
     real masters of half-dark groups stayed up;
   - read routing agreed in every sample: no black-holed replica in rotation
     (`replwatch_routing_in_rotation` 0), every real replica in it (1);
   - every one of the scrapers' answers was a 200 carrying all 100 groups.

2. `test_black_holed_master_does_not_stretch_the_scheduler_rounds`: the scheduler as the
   daemon runs it (APScheduler, the tick job every 250 ms, probes every second) with one
   healthy group and one whose master never accepts a connection. The black-holed master's
   heartbeat writes and probes each wait out a connect timeout; they must not hold up the
   rounds of the healthy group: no tick, heartbeat, poll or probe run is skipped, and the
   healthy group gets its poll cycle every second and its heartbeat 4 times a second.
"""

from __future__ import annotations

import asyncio
import contextlib
import resource
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from replwatch.config import config_from_data
from replwatch.observe.group_monitor import GroupMonitor
from replwatch.observe.probe import WaitProber
from replwatch.scheduler import MonitorScheduler, SchedulerStats
from replwatch.state import ProbeStore, SnapshotStore

from .support.daemons import RunningDaemon
from .support.faults import (
    BlackHoles,
    Layout,
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
from .support.servers import ServerSet, free_port, require_build, wait_for, wait_synced

TARGETS = 200
POLL_INTERVAL = 1.0
POLL_TIMEOUT = 0.5
# Each phase samples 5 poll cycles of every group: 5 x 85 healthy groups' cycle durations for
# the p95 (its 22nd largest value), every group's cycle count over 4 intervals, every black
# hole seen down 5 times; 50 scrapers render /metrics hundreds of times meanwhile.
QUIET = 5.0  # seconds sampled without extra scrapes
LOAD = 5.0  # seconds sampled while SCRAPERS threads hammer /metrics
SCRAPERS = 50
NOFILE = 4096


@contextlib.contextmanager
def enough_descriptors(needed: int) -> Iterator[None]:
    """Raise this process's soft RLIMIT_NOFILE for the test (the daemon inherits it):
    ~4 sockets per group in the daemon, 50 scrapers and the black holes here."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and hard < needed:
        pytest.fail(f"needs {needed} file descriptors; the hard limit is {hard}", pytrace=False)
    if soft != resource.RLIM_INFINITY and soft < needed:
        resource.setrlimit(resource.RLIMIT_NOFILE, (needed, hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


def check_phase(name: str, figures: dict[str, Any]) -> None:
    line = f"{name}: {figures}"
    assert figures["overruns"] == {}, line
    assert figures["healthy_poll_seconds"]["p95"] < POLL_INTERVAL, line
    assert figures["black_holed_groups_poll_seconds"]["max"] < POLL_INTERVAL, line
    assert figures["healthy_cycles_min"] >= figures["cycles_expected_at_least"], line
    assert figures["black_holed_nodes_seen"] == Layout(TARGETS).black_holed, line
    assert figures["problems"] == {
        "real_nodes_reported_down": [],
        "black_holed_not_down_by_timeout": [],
        "half_dark_masters_not_up": [],
        "routing_wrong": [],
    }, line


@pytest.mark.timeout(150)
def test_black_holed_targets_and_50_scrapers_do_not_slow_polling(tmp_path: Path) -> None:
    build = require_build("redis-7.0")
    layout = Layout(TARGETS)
    started = time.monotonic()
    with (
        enough_descriptors(NOFILE),
        ServerSet(build, tmp_path) as servers,
        BlackHoles(hung=layout.black_holed // 2, vanished=layout.black_holed // 2) as holes,
    ):
        fleet = start_fleet(servers, layout, holes)
        port = free_port()
        cfg = tmp_path / "config.yaml"
        cfg.write_text(config_text(port, fleet, POLL_INTERVAL, POLL_TIMEOUT))
        with RunningDaemon(cfg, port) as daemon:
            wait_for(lambda: daemon.fetch("/-/ready")[0] == 200, 30, "daemon ready")

            wait_for(
                lambda: settled(scrape(daemon.base), fleet),
                20,
                "every real node up, black-holed replicas out of rotation, real ones in",
                interval=0.5,
            )
            cpu0, t0 = cpu_seconds(daemon.pid), time.monotonic()
            quiet = phase_figures(sample(daemon.base, QUIET, POLL_INTERVAL), fleet, POLL_INTERVAL)
            cpu1, t1 = cpu_seconds(daemon.pid), time.monotonic()
            scrapers = Scrapers(daemon.base, SCRAPERS, len(fleet.groups))
            try:
                wait_for(lambda: scrapers.good or scrapers.failures, 30, "a first scrape")
                loaded_samples = sample(daemon.base, LOAD, POLL_INTERVAL)
            finally:
                scrapers.stop()
            cpu2, t2 = cpu_seconds(daemon.pid), time.monotonic()
            loaded = phase_figures(loaded_samples, fleet, POLL_INTERVAL)
            assert daemon.proc.poll() is None, daemon.log_text()[-2000:]
            quiet["daemon_cpu_share"] = round((cpu1 - cpu0) / (t1 - t0), 3)
            loaded["daemon_cpu_share"] = round((cpu2 - cpu1) / (t2 - t1), 3)
            loaded["scrapers"] = {
                "answers": scrapers.good,
                "p50_seconds": round(percentile(scrapers.seconds, 50), 3),
                "p95_seconds": round(percentile(scrapers.seconds, 95), 3),
            }
            print(f"\nquiet: {quiet}\n50 scrapers: {loaded}")
            print(f"whole test {time.monotonic() - started:.1f}s")
            check_phase("quiet", quiet)
            check_phase("50 scrapers", loaded)
            assert not scrapers.failures, scrapers.failures[:5]
            assert scrapers.good >= SCRAPERS, loaded["scrapers"]


# ----------------------------------------------------------------- the scheduler's rounds

ROUNDS_FOR = 4.5  # seconds the scheduler runs


@pytest.mark.timeout(60)
def test_black_holed_master_does_not_stretch_the_scheduler_rounds(tmp_path: Path) -> None:
    build = require_build("redis-7.0")
    with ServerSet(build, tmp_path) as servers, BlackHoles(hung=0, vanished=1) as holes:
        master = servers.start("master")
        replica = servers.start("replica", replica_of=master)
        wait_synced(replica, master)
        cfg = config_from_data(
            {
                "poll": {"interval": "1s", "timeout": "500ms"},
                "heartbeat": {"interval": "250ms"},
                "probe": {"interval": "1s", "timeout": "500ms"},
                "groups": [
                    {"name": "healthy", "master": master.url, "replicas": [replica.url]},
                    {"name": "dark", "master": f"redis://{holes.vanished[0]}"},
                ],
            }
        )
        store = SnapshotStore()
        store.expect([g.name for g in cfg.groups])
        stats = SchedulerStats()
        sched = MonitorScheduler(
            [GroupMonitor(g, cfg.poll, cfg.heartbeat, cfg.lag, cfg.tls) for g in cfg.groups],
            store,
            cfg.poll.interval,
            cfg.heartbeat.interval,
            stats,
            probers=[
                (WaitProber(g.name, g.master, cfg.probe, cfg.tls), cfg.probe.interval)
                for g in cfg.groups
                if g.master is not None
            ],
            probe_store=ProbeStore(),
        )
        assert sched.heartbeat_rounds_per_poll() == 4  # the tick job, as the daemon runs it

        async def run() -> dict[tuple[str, str, str], int]:
            await sched.poll_all_once()  # connects, as Daemon.serve() does before start()
            await sched.heartbeat_all()  # loads the script on the healthy master
            before = dict(stats.items())
            sched.start()
            try:
                await asyncio.sleep(ROUNDS_FOR)
            finally:
                sched.shutdown()
            after = dict(stats.items())
            return {k: v - before.get(k, 0) for k, v in after.items()}

        counts = asyncio.run(run())
        skipped = {
            k: v for k, v in counts.items() if k[2] in ("skipped_overrun", "missed", "error")
        }
        assert skipped == {}, counts
        # a cycle every second and 4 heartbeats a second (3 rounds + 1 carried by the cycle)
        assert counts.get(("poll", "healthy", "completed"), 0) >= ROUNDS_FOR - 1, counts
        assert counts.get(("heartbeat", "healthy", "ok"), 0) >= 4 * ROUNDS_FOR - 3, counts
        assert counts.get(("probe", "healthy", "completed"), 0) >= ROUNDS_FOR - 1, counts
        dark = store.get("dark")
        assert dark is not None and not dark.master_up and dark.nodes[0].error_reason == "timeout"
