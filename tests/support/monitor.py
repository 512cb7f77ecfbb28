"""GroupMonitor driven the way the scheduler drives it, inside a test.

- make_monitor(): a GroupMonitor for one group, built from config data as a user writes it;
- MonitorLoop: poll cycles (each carrying a heartbeat write, as the scheduler runs them) and
  heartbeat writes in between, in the test's own event loop (asyncio.run in a plain test
  function); watching() closes the monitor on the way out;
- Driver: the same MonitorLoop on a private event loop, for tests written as plain code that
  sleeps or pauses servers between cycles;
- replica_view() / node_view() / describe(): a snapshot's parts, and a readable dump of it.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Callable, Sequence
from typing import Any

from replwatch.config import config_from_data
from replwatch.observe.group_monitor import GroupMonitor
from replwatch.state import GroupSnapshot, NodeView, ReplicaView


def make_monitor(
    master: str,
    replicas: Sequence[str] = (),
    *,
    discover: bool = False,
    heartbeat: bool = True,
    timeout: str = "400ms",
    interval: str = "1s",
    heartbeat_interval: str = "100ms",
    address_map: dict[str, str] | None = None,
) -> GroupMonitor:
    """A GroupMonitor for one group "g", built from config data as a user would write it."""
    group: dict[str, Any] = {
        "name": "g",
        "master": master,
        "replicas": list(replicas),
        "discover": discover,
    }
    if address_map is not None:
        group["address_map"] = address_map
    data: dict[str, Any] = {
        "poll": {"interval": interval, "timeout": timeout},
        "heartbeat": {"enabled": heartbeat, "interval": heartbeat_interval},
        "groups": [group],
    }
    cfg = config_from_data(data, env={})
    return GroupMonitor(cfg.groups[0], cfg.poll, cfg.heartbeat, cfg.lag, cfg.tls)


class MonitorLoop:
    """Drives one GroupMonitor: each cycle is one poll cycle carrying a heartbeat write, as the
    scheduler runs them (GroupMonitor.poll_cycle(with_heartbeat=True)); cycles are `period`
    seconds apart."""

    def __init__(self, monitor: GroupMonitor, period: float = 0.2) -> None:
        self.monitor = monitor
        self.period = period
        self.snapshot: GroupSnapshot | None = None
        self.last_poll_seconds = 0.0  # wall time the last poll_cycle() took
        self.cycles = 0

    async def cycle(self, heartbeat: bool = True) -> GroupSnapshot:
        started = time.monotonic()
        snap = await self.monitor.poll_cycle(with_heartbeat=heartbeat)
        self.last_poll_seconds = time.monotonic() - started
        self.snapshot = snap
        self.cycles += 1
        return snap

    async def until(
        self, predicate: Callable[[GroupSnapshot], object], timeout: float, what: str
    ) -> GroupSnapshot:
        """Run cycles until `predicate(snapshot)` holds; fail with the last snapshot."""
        deadline = time.monotonic() + timeout
        while True:
            snap = await self.cycle()
            if predicate(snap):
                return snap
            if time.monotonic() >= deadline:
                raise AssertionError(
                    f"timed out after {timeout:g}s waiting for {what}; last snapshot:\n"
                    + describe(snap)
                )
            await asyncio.sleep(self.period)

    async def heartbeats(self, seconds: float, interval: float) -> None:
        """Heartbeat writes every `interval` for `seconds`, as the daemon's writer does
        between poll cycles (a cycle carries one write; the daemon writes more often)."""
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            await self.monitor.write_heartbeat()
            await asyncio.sleep(interval)

    async def pause(self) -> None:
        """The gap between two cycles (the poll interval); not a synchronisation point."""
        await asyncio.sleep(self.period)


@contextlib.asynccontextmanager
async def watching(monitor: GroupMonitor, period: float = 0.2) -> AsyncIterator[MonitorLoop]:
    """A MonitorLoop whose monitor is closed (connections and all) on the way out."""
    loop = MonitorLoop(monitor, period)
    try:
        yield loop
    finally:
        monitor.close()


class Driver:
    """A MonitorLoop on a private event loop, for plain (synchronous) test code: cycle(),
    until() and heartbeats() return when the cycle or the writes are done; between calls the
    monitor's connections sit idle. close() closes the monitor and the loop."""

    def __init__(self, monitor: GroupMonitor, period: float = 0.1) -> None:
        self.monitor = monitor
        self.ml = MonitorLoop(monitor, period)
        self.loop = asyncio.new_event_loop()

    def cycle(self) -> GroupSnapshot:
        return self.loop.run_until_complete(self.ml.cycle())

    def until(
        self, predicate: Callable[[GroupSnapshot], object], timeout: float, what: str
    ) -> GroupSnapshot:
        return self.loop.run_until_complete(self.ml.until(predicate, timeout, what))

    def heartbeats(self, seconds: float, interval: float) -> None:
        self.loop.run_until_complete(self.ml.heartbeats(seconds, interval))

    def close(self) -> None:
        self.monitor.close()
        self.loop.close()


def replica_view(snap: GroupSnapshot, label: str) -> ReplicaView:
    for view in snap.replicas:
        if view.label == label:
            return view
    raise AssertionError(f"no replica {label} in snapshot: {[r.label for r in snap.replicas]}")


def node_view(snap: GroupSnapshot, label: str) -> NodeView:
    for node in snap.nodes:
        if node.label == label:
            return node
    raise AssertionError(f"no node {label} in snapshot: {[n.label for n in snap.nodes]}")


def describe(snap: GroupSnapshot) -> str:
    """A compact, readable dump of a snapshot for assertion messages."""
    lines = [
        f"cycle {snap.cycle}: master {snap.master} up={snap.master_up} "
        f"offset={snap.master_offset} resets={snap.offset_resets} poll={snap.poll_seconds:.3f}s"
    ]
    for n in snap.nodes:
        lines.append(
            f"  node {n.label} role={n.role} up={n.up} error={n.error_reason} "
            f"poll={n.poll_seconds:.3f}s"
        )
    for r in snap.replicas:
        lines.append(
            f"  replica {r.label} reachable={r.reachable} link_up={r.link_up} "
            f"sync={r.sync_in_progress} following={r.following_master} chained={r.chained} "
            f"upstream={r.upstream} lag={r.lag_seconds} ({r.lag_source}) "
            f"hb={r.heartbeat_lag_seconds} clock={r.offset_lag_seconds} "
            f"bytes={r.lag_bytes} ack_age={r.ack_age_seconds}"
        )
    return "\n".join(lines)
