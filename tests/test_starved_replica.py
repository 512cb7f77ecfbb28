"""A bandwidth-starved replica: the case INFO's `lag=` gets wrong.

Topology: the master on the host (bound to the host end of a veth pair), the replica inside a
network namespace the test creates. On the host end, an `htb` qdisc sends packets whose source
port is the master's port (the replication stream) through a `tbf` rate limit of 1 Mbit/s;
every other packet (the monitor's polls) bypasses it (`prio` is not in this kernel). The
test writes ~300 KB/s to the master, well over what the link carries, so the replica falls
further behind every second, while it keeps ACKing once a second over the unthrottled
reverse direction.

Truth: with every write batch the writer stores `truth:marker` = the local wall time (the
test and the master share one host clock). The newest marker visible on the replica, m, says
the replica has applied everything up to m; truth lag = now - m (resolution: one batch,
about 20 ms).

Asserts, at several moments while the truth is above 3 s: replwatch's best estimate is within
0.25 s of the truth, and INFO's ACK age (replwatch_replica_ack_age_seconds) stays <= 1. The
routing engine takes the replica out of rotation on lag (it answers all along), and puts it
back once the load stops and it has caught up: exactly one transition each way.
"""

from __future__ import annotations

import contextlib
import os
import random
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from replwatch.config import config_from_data
from replwatch.observe.group_monitor import GroupMonitor
from replwatch.routing.engine import RoutingEngine

from ._servers import RedisProc, have_netns_tools, server_builds, wait_for
from .test_monitor_real import Driver, replica

pytestmark = pytest.mark.netns


def _ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True, timeout=10)


def _tc(*args: str) -> None:
    subprocess.run(["tc", *args], check=True, capture_output=True, timeout=10)


class StarvedLink:
    """A namespace + veth pair; throttle(port) rate-limits traffic from that host port."""

    def __init__(self) -> None:
        tag = f"{os.getpid() % 100000}{random.randint(0, 99)}"
        self.ns = f"rwtest{tag}"
        self.host_if = f"rwh{tag}"[:15]
        self.ns_if = f"rwn{tag}"[:15]
        used = subprocess.run(["ip", "-4", "addr"], capture_output=True, text=True).stdout
        for _ in range(50):
            x = random.randint(1, 254)
            subnet = f"10.200.{x}."
            if subnet not in used:
                break
        self.host_ip = f"{subnet}1"
        self.ns_ip = f"{subnet}2"
        self.created = False

    def create(self) -> None:
        _ip("netns", "add", self.ns)
        self.created = True
        _ip("link", "add", self.host_if, "type", "veth", "peer", "name", self.ns_if)
        _ip("link", "set", self.ns_if, "netns", self.ns)
        _ip("addr", "add", f"{self.host_ip}/30", "dev", self.host_if)
        _ip("link", "set", self.host_if, "up")
        _ip("netns", "exec", self.ns, "ip", "addr", "add", f"{self.ns_ip}/30", "dev", self.ns_if)
        _ip("netns", "exec", self.ns, "ip", "link", "set", self.ns_if, "up")
        _ip("netns", "exec", self.ns, "ip", "link", "set", "lo", "up")

    def throttle(self, source_port: int, rate: str = "1mbit") -> None:
        dev = self.host_if
        # htb sorts: class 1:10 (the replication stream, by source port) drains through a tbf
        # rate limit; everything else (the monitor's polls) goes to 1:20 unthrottled.
        _tc("qdisc", "add", "dev", dev, "root", "handle", "1:", "htb", "default", "20")
        _tc("class", "add", "dev", dev, "parent", "1:", "classid", "1:10", "htb", "rate", "1gbit")
        _tc("class", "add", "dev", dev, "parent", "1:", "classid", "1:20", "htb", "rate", "1gbit")
        _tc(
            "qdisc",
            "add",
            "dev",
            dev,
            "parent",
            "1:10",
            "handle",
            "10:",
            "tbf",
            "rate",
            rate,
            "burst",
            "32kbit",
            "latency",
            "2s",
        )
        _tc(
            "filter",
            "add",
            "dev",
            dev,
            "protocol",
            "ip",
            "parent",
            "1:",
            "prio",
            "1",
            "u32",
            "match",
            "ip",
            "sport",
            str(source_port),
            "0xffff",
            "flowid",
            "1:10",
        )

    def destroy(self) -> None:
        with contextlib.suppress(subprocess.SubprocessError):
            _ip("link", "del", self.host_if)
        if self.created:
            with contextlib.suppress(subprocess.SubprocessError):
                _ip("netns", "del", self.ns)


@pytest.fixture
def link() -> Iterator[StarvedLink]:
    if not have_netns_tools():
        if os.environ.get("CI"):
            pytest.fail("needs root with ip and tc (iproute2)")
        pytest.skip("needs root with ip and tc (iproute2)")
    net = StarvedLink()
    try:
        net.create()
        yield net
    finally:
        net.destroy()


@pytest.mark.timeout(120)
def test_starved_replica_true_lag_vs_ack_age(link: StarvedLink, tmp_path: Path) -> None:
    binary = next(b for b in server_builds() if b.name == "redis-7.0").path
    master = RedisProc(binary, tmp_path, "master", bind=link.host_ip)
    rep: RedisProc | None = None
    stop = threading.Event()
    writer: threading.Thread | None = None
    drv: Driver | None = None
    try:
        link.throttle(master.port)
        rep = RedisProc(
            binary,
            tmp_path,
            "replica",
            bind=link.ns_ip,
            netns=link.ns,
            extra=["--replicaof", link.host_ip, str(master.port)],
        )
        rep_client = rep.client()
        wait_for(
            lambda: rep_client.info("replication")["master_link_status"] == "up",
            20,
            "replica linked through the namespace",
        )
        cfg = config_from_data(
            {
                "poll": {"interval": "500ms", "timeout": "400ms"},
                "heartbeat": {"interval": "100ms"},
                "groups": [{"name": "g", "master": master.url, "replicas": [rep.url]}],
            }
        )
        drv = Driver(GroupMonitor(cfg.groups[0], cfg.poll, cfg.heartbeat, cfg.lag, cfg.tls))
        routing = RoutingEngine(lambda _: cfg.routing)

        def write() -> None:
            client = master.client()
            value = "v" * 1000
            n = 0
            while not stop.is_set():
                tick = time.monotonic()
                pipe = client.pipeline(transaction=False)
                for _ in range(6):  # ~6 KB per 20 ms ≈ 300 KB/s
                    n += 1
                    pipe.set(f"load:{n % 5000}", value)
                pipe.set("truth:marker", repr(time.time()))
                pipe.execute()
                stop.wait(max(0.0, 0.02 - (time.monotonic() - tick)))

        writer = threading.Thread(target=write, daemon=True)
        writer.start()
        checked = 0
        max_ack_age = 0.0
        deadline = time.monotonic() + 40
        while checked < 4 and time.monotonic() < deadline:
            snap = drv.cycle()
            routing.update(snap)
            seen = rep_client.get("truth:marker")
            read_at = time.time()
            truth = read_at - float(seen) if seen else None
            # the marker is read after the cycle, through the same starved link: the lag may
            # have grown by up to that delay since the snapshot (it grows by at most 1 s/s)
            delay = max(0.0, read_at - snap.taken_at)
            r = replica(snap, rep.label)
            assert r.reachable, snap.nodes
            if r.ack_age_seconds is not None:
                max_ack_age = max(max_ack_age, r.ack_age_seconds)
            if truth is not None and truth > 3.0:
                assert r.lag_seconds is not None
                assert truth - 0.25 - delay <= r.lag_seconds <= truth + 0.25, (
                    r.lag_seconds,
                    truth,
                    delay,
                    r.lag_source,
                    r.heartbeat_lag_seconds,
                    r.offset_lag_seconds,
                )
                assert r.ack_age_seconds is not None and r.ack_age_seconds <= 1.0
                assert r.lag_bytes is not None and r.lag_bytes > 100_000
                checked += 1
            # the heartbeat every 100 ms, as configured (its spacing is the heartbeat lag's
            # resolution; one write per cycle would make it ~1 s)
            drv.heartbeats(0.5, 0.1)
        assert checked == 4, "the replica never fell more than 3 s behind"
        assert max_ack_age <= 1.0
        # routing saw it: out of rotation on lag (the replica answered all along)
        entry = routing.table("g").entry(rep.label)  # type: ignore[union-attr]
        assert entry is not None and not entry.in_rotation and entry.reason.startswith("lag")

        # the load stops; the replica catches up through the same 1 Mbit/s and comes back
        stop.set()
        writer.join(timeout=5)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            routing.update(drv.cycle())
            entry = routing.table("g").entry(rep.label)  # type: ignore[union-attr]
            if entry is not None and entry.in_rotation:
                break
            time.sleep(0.25)
        assert entry is not None and entry.in_rotation, entry
        assert routing.transitions() == [(("g", rep.label, "in"), 1), (("g", rep.label, "out"), 1)]
    finally:
        stop.set()
        if writer is not None:
            writer.join(timeout=5)
        if drv is not None:
            drv.close()
        if rep is not None:
            rep.stop()
        master.stop()
