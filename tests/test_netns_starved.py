"""A bandwidth-starved replica: the case where INFO's `lag=` (the ACK age) lies.

Topology: the master runs on the host, bound to 127.0.0.1 (replwatch polls it there) and to
the host end of a veth pair; the replica runs inside a network namespace the test creates,
bound to the namespace end, replicating from the master over the veth. On the host end,
`tc qdisc add dev <host end> root tbf rate 1mbit burst 32kbit latency 400ms` limits
everything the host sends into the namespace: the replication stream (and replwatch's small
poll requests, which queue behind it). The replica's answers and its once-a-second REPLCONF
ACKs travel the other way, unthrottled. The test writes ~300 KB/s to the master, more than
twice what the link carries, so the replica falls further behind every second while its ACKs
keep arriving on time: the master's ACK age stays 0-1 s.

Truth, measured independently of replwatch: with every write batch (every 50 ms) the writer
also sets `truth` = "<n> <wall time>" (test and master share one host clock). Replication
applies writes in order, so if the replica shows marker n it has applied everything the
master had when marker n was written (t_n) and nothing of batch n+1 (t_{n+1} ≈ t_n + 50 ms):
its data is as of a moment in [t_n, t_{n+1}), and its true lag now is in
(now - t_{n+1}, now - t_n]. The test reads the marker through the replica's unix socket (no
network, so no throttle and no delay) right after each poll cycle and takes the middle of that
interval as the truth.

Asserted at several moments while the truth is above 3 s: replwatch's best estimate is within
0.5 s of the truth, and INFO's ACK age (ReplicaView.ack_age_seconds) is <= 1.

Needs root with `ip` and `tc` (iproute2); skipped otherwise, failed instead when CI=true. All
traffic stays on loopback and on the test's own veth pair. Teardown kills the servers, then
deletes the veth and the namespace, even when the test fails.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import os
import random
import shutil
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from .harness import (
    ServerSet,
    describe,
    have_tool,
    in_ci,
    make_monitor,
    replica_view,
    require_build,
    wait_for,
    wait_synced,
    watching,
)

pytestmark = pytest.mark.netns

RATE = "1mbit"  # 125 KB/s
WRITE_BATCH = 15  # values of 1 KB per batch ...
WRITE_PERIOD = 0.05  # ... every 50 ms: ~300 KB/s
TRUTH_ABOVE = 3.0  # compare while the true lag is above this
TOLERANCE = 0.5
CHECKS = 5  # sample points, at least CHECK_SPACING apart
CHECK_SPACING = 0.5


def _run(*args: str) -> str:
    proc = subprocess.run(list(args), capture_output=True, text=True, timeout=15, check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(args)} failed ({proc.returncode}): {proc.stderr.strip()}")
    return proc.stdout


def _used_networks() -> list[ipaddress.IPv4Network]:
    """Every IPv4 address or network that appears in the host's addresses and routes."""
    text = _run("ip", "-4", "-o", "addr", "show")
    text += _run("ip", "-4", "route", "show", "table", "all")
    found = []
    for token in text.split():
        with contextlib.suppress(ValueError):
            found.append(ipaddress.IPv4Network(token, strict=False))
    return found


class StarvedLink:
    """A network namespace joined to the host by a veth pair on a private /30."""

    def __init__(self) -> None:
        tag = f"{os.getpid() % 100000}{random.randint(0, 99):02d}"
        self.ns = f"rwtest-{tag}"
        self.host_if = f"rwh{tag}"[:15]
        self.ns_if = f"rwn{tag}"[:15]
        used = _used_networks()
        for _ in range(200):
            net = ipaddress.IPv4Network(
                f"10.200.{random.randint(0, 255)}.{4 * random.randint(0, 63)}/30"
            )
            if not any(net.overlaps(u) for u in used):
                break
        else:
            raise RuntimeError("no unused /30 found in 10.200.0.0/16")
        hosts = list(net.hosts())
        self.network = net
        self.host_ip = str(hosts[0])  # .1
        self.ns_ip = str(hosts[1])  # .2
        self._ns_created = False
        self._link_created = False

    def create(self) -> None:
        _run("ip", "netns", "add", self.ns)
        self._ns_created = True
        _run("ip", "link", "add", self.host_if, "type", "veth", "peer", "name", self.ns_if)
        self._link_created = True
        _run("ip", "link", "set", self.ns_if, "netns", self.ns)
        _run("ip", "addr", "add", f"{self.host_ip}/30", "dev", self.host_if)
        _run("ip", "link", "set", self.host_if, "up")
        inside = ("ip", "netns", "exec", self.ns, "ip")
        _run(*inside, "addr", "add", f"{self.ns_ip}/30", "dev", self.ns_if)
        _run(*inside, "link", "set", self.ns_if, "up")
        _run(*inside, "link", "set", "lo", "up")

    def throttle(self, rate: str = RATE) -> None:
        """Rate-limit what the host sends into the namespace (the replication stream)."""
        _run(
            "tc", "qdisc", "add", "dev", self.host_if, "root", "tbf",
            "rate", rate, "burst", "32kbit", "latency", "400ms",
        )  # fmt: skip

    def destroy(self) -> None:
        """Delete the veth pair and the namespace; complain if either is left behind."""
        if self._link_created:
            with contextlib.suppress(RuntimeError):
                _run("ip", "link", "del", self.host_if)  # deletes its peer too
        if self._ns_created:
            with contextlib.suppress(RuntimeError):
                _run("ip", "netns", "del", self.ns)
        leftovers = []
        if self._ns_created and self.ns in _run("ip", "netns", "list").split():
            leftovers.append(f"namespace {self.ns}")
        links = subprocess.run(
            ["ip", "link", "show", self.host_if], capture_output=True, check=False
        )
        if self._link_created and links.returncode == 0:
            leftovers.append(f"link {self.host_if}")
        if leftovers:
            raise AssertionError(f"teardown left behind: {', '.join(leftovers)}")


def require_netns(what: str, tools: tuple[str, ...] = ("ip", "tc")) -> None:
    """Root and the iproute2 `tools` a network-namespace test needs: without them the test
    fails in CI (where scripts/test installs them) and is skipped elsewhere."""
    reason = None
    if os.geteuid() != 0:
        reason = "needs root (ip netns, veth" + (", tc)" if "tc" in tools else ")")
    elif missing := [tool for tool in tools if not have_tool(tool)]:
        reason = f"needs {' and '.join(missing)} (Debian package iproute2)"
    if reason is not None:
        if in_ci():
            pytest.fail(f"{what}: {reason}", pytrace=False)
        pytest.skip(reason)


@pytest.fixture
def starved_link() -> Iterator[StarvedLink]:
    require_netns("bandwidth-starved replica test")
    link = StarvedLink()
    try:
        link.create()
        yield link
    finally:
        link.destroy()


class MarkedWriter:
    """Writes WRITE_BATCH values of 1 KB plus the truth marker every WRITE_PERIOD seconds, in a
    thread, and remembers when each marker was written."""

    def __init__(self, client: object) -> None:
        self.client = client
        self.marks: list[float] = []  # marker n was written at marks[n] (wall clock)
        self.error: BaseException | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="marked-writer", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        value = b"v" * 1000
        key = 0
        try:
            while not self._stop.is_set():
                tick = time.monotonic()
                pipe = self.client.pipeline(transaction=False)  # type: ignore[attr-defined]
                for _ in range(WRITE_BATCH):
                    key += 1
                    pipe.set(f"load:{key % 5000}", value)
                n = len(self.marks)
                now = time.time()
                pipe.set("truth", f"{n} {now!r}")
                self.marks.append(now)
                pipe.execute()
                self._stop.wait(max(0.0, WRITE_PERIOD - (time.monotonic() - tick)))
        except BaseException as exc:
            self.error = exc

    def truth(self, seen: bytes | str | None, now: float) -> tuple[float, float] | None:
        """(true lag, half-width of its interval) for a replica showing marker `seen`."""
        if seen is None:
            return None
        n = int(seen.split()[0])
        oldest = now - self.marks[n]
        newest = now - self.marks[n + 1] if n + 1 < len(self.marks) else oldest
        return (oldest + newest) / 2, (oldest - newest) / 2

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=10)


@pytest.mark.timeout(90)
def test_starved_replica_lag_matches_truth_while_ack_age_stays_low(
    starved_link: StarvedLink, tmp_path: Path
) -> None:
    build = require_build("redis-7.0")
    link = starved_link
    sockdir = Path(tempfile.mkdtemp(prefix="rw"))  # short path: unix sockets allow ~107 bytes
    servers = ServerSet(build, tmp_path)
    writer: MarkedWriter | None = None
    try:
        master = servers.start("master", bind=("127.0.0.1", link.host_ip))
        rep = servers.start(
            "replica",
            bind=(link.ns_ip,),
            netns=link.ns,
            unixsocket=sockdir / "replica.sock",
            replicaof=(link.host_ip, master.port),
        )
        wait_synced(rep, master)
        truth_client = rep.client(via_unix=True)
        link.throttle()

        writer = MarkedWriter(master.client())
        wait_for(lambda: writer.marks, 5, "the first truth marker")
        monitor = make_monitor(
            master.url,
            [rep.url],  # redis://10.200.x.2:port: polled through the throttled veth
            timeout="1500ms",
            interval="2s",
            heartbeat_interval="100ms",
        )
        checks: list[str] = []
        history: list[str] = []

        async def scenario() -> None:
            async with watching(monitor, period=0.25) as ml:
                stop = asyncio.Event()

                async def heartbeats() -> None:  # every heartbeat.interval, as scheduled
                    while not stop.is_set():
                        await monitor.write_heartbeat()
                        with contextlib.suppress(TimeoutError):
                            await asyncio.wait_for(stop.wait(), 0.1)

                beat = asyncio.create_task(heartbeats())
                try:
                    deadline = time.monotonic() + 40
                    last_check = 0.0
                    while len(checks) < CHECKS:
                        assert time.monotonic() < deadline, (
                            "the replica never fell behind enough:\n" + "\n".join(history[-10:])
                        )
                        snap = await ml.cycle(heartbeat=False)
                        truth = writer.truth(truth_client.get("truth"), time.time())
                        r = replica_view(snap, rep.label)
                        line = (
                            f"truth={truth and round(truth[0], 3)} best={r.lag_seconds} "
                            f"({r.lag_source}) hb={r.heartbeat_lag_seconds} "
                            f"clock={r.offset_lag_seconds} ack_age={r.ack_age_seconds} "
                            f"bytes={r.lag_bytes} poll={ml.last_poll_seconds:.3f}s"
                        )
                        history.append(line)
                        assert r.reachable and r.link_up, describe(snap)
                        # ACK age: the replica keeps ACKing on time, so INFO says 0-1 s ...
                        assert r.ack_age_seconds is not None and r.ack_age_seconds <= 1, line
                        now = time.monotonic()
                        if (
                            truth is not None
                            and truth[0] > TRUTH_ABOVE
                            and now - last_check >= CHECK_SPACING
                        ):
                            # ... while the truth is seconds, and replwatch says so
                            assert r.lag_seconds is not None, describe(snap)
                            assert abs(r.lag_seconds - truth[0]) <= TOLERANCE, (
                                line + "\n" + "\n".join(history[-10:])
                            )
                            assert r.lag_bytes is not None and r.lag_bytes > 100_000, line
                            checks.append(line)
                            last_check = now
                        await ml.pause()
                finally:
                    stop.set()
                    await beat

        asyncio.run(scenario())
        assert writer.error is None, writer.error
        print("\n".join(history))  # shown with -s / on failure: the whole run
    finally:
        if writer is not None:
            writer.stop()
        try:
            servers.close()  # before the namespace goes (starved_link's teardown)
        finally:
            shutil.rmtree(sockdir, ignore_errors=True)
