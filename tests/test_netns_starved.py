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
0.25 s of the truth, and INFO's ACK age (ReplicaView.ack_age_seconds) is <= 1.

Needs root with `ip` and `tc` (iproute2); skipped otherwise, failed instead when CI=true. All
traffic stays on loopback and on the test's own veth pair. Teardown kills the servers, then
deletes the veth and the namespace, even when the test fails.
"""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from .harness import (
    ServerSet,
    describe,
    make_monitor,
    replica_view,
    require_build,
    wait_for,
    wait_synced,
    watching,
)
from .netlinks import MarkedWriter, StarvedLink, require_netns

pytestmark = pytest.mark.netns

TRUTH_ABOVE = 3.0  # compare while the true lag is above this
TOLERANCE = 0.25
CHECKS = 5  # sample points, at least CHECK_SPACING apart
CHECK_SPACING = 0.5


@pytest.fixture
def starved_link() -> Iterator[StarvedLink]:
    require_netns("bandwidth-starved replica test")
    link = StarvedLink()
    try:
        link.create()
        yield link
    finally:
        link.destroy()


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
