"""A network partition between a replica and everyone else, watched by a whole daemon.

Topology: the master runs on the host, bound to 127.0.0.1 (replwatch polls it there) and to
the host end of a veth pair; the replica runs inside a network namespace the test creates,
bound to the namespace end and replicating from the master over the veth. A `replwatch run`
daemon (tests/support/daemons.py) watches the group `part` (the master on loopback, the replica at
its namespace address, through the veth), heartbeats on, WAIT probes and read routing at
their defaults except `recover.for` (2 s, to keep the test short). Both servers run with
`repl-timeout 3` (and the master pings every second), so each side notices the cut within
the partition, as production settings would over a longer one.

The partition: the namespace end of the veth is set down. The host end stays up without a
carrier, so the route to the replica still points into the veth and every packet to it is
dropped there (the test checks that route before and during the cut: no packet for the
replica leaves by another interface). Nothing answers, nothing is refused: polls of the
replica time out, as across a real partition. The cut lasts as long as the timeouts it is
about take to be crossed, and no longer: until replwatch's detection delay has passed and
CHECKED_FOR seconds of samples after it are in, and both servers have given up on each
other (the replica's INFO says its master link is down, the master's lists no replica:
repl-timeout on each side) — about 4 s; it fails if that takes PARTITION_MAX. Then the link
is set up again.

What the test proves, from the daemon's own endpoints, sampled every half poll interval:
- no routing table computed from a poll cycle that began after the cut shows the replica
  in rotation, and after the detection delay (one poll interval + poll.timeout + 0.5 s)
  EVERY sample shows the replica out of read rotation (`/routing/part`:
  in_rotation false, reads on the master, read_from = [master];
  `replwatch_routing_in_rotation` 0; `/health/replica/...` 503), its link reported down
  (`replwatch_replica_link_up` 0) and the node down (`replwatch_node_up` 0, last error
  "timeout", or "unreachable" while the kernel's ARP entry for it has failed), from a
  routing table that is fresh (updated within the detection delay) — never a stale "in
  rotation" for a replica nobody can see; by the end the replica itself (asked through its
  unix socket) reports its master link down and the master lists no replica: the partition
  was real on both sides;
- the master stays up and a master (`replwatch_master_role_ok` 1, its `replwatch_node_up`
  1): a partitioned replica costs its group nothing but the replica;
- /metrics answers every sample, each within 2 s, all through the partition;
- after the link comes back, the replica resyncs (its own INFO: link up, same replid and
  offset as the master), replwatch reports its link up and the node up, and puts it back in
  rotation — by the same daemon process (same pid, never restarted), with exactly one move
  out and one move back in (`replwatch_routing_transitions_total`), no flapping.

Needs root with `ip` (iproute2); skipped otherwise, failed instead when CI=true. All traffic
stays on loopback and on the test's own veth pair. Teardown stops the daemon and the servers
by pid, then deletes the veth and the namespace, even when the test fails.
"""

from __future__ import annotations

import json
import shutil
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from .support.daemons import RunningDaemon, series, value
from .support.netns import StarvedLink, require_netns
from .support.netns import run_cmd as _run
from .support.servers import (
    BackgroundWriter,
    RedisProcess,
    ServerSet,
    free_port,
    replica_synced,
    require_build,
    wait_for,
    wait_synced,
)

pytestmark = pytest.mark.netns

GROUP = "part"
POLL_INTERVAL = 1.0
POLL_TIMEOUT = 0.5
DETECTION = POLL_INTERVAL + POLL_TIMEOUT + 0.5  # the cycle after the cut, plus slack
CHECKED_FOR = 2.0  # seconds of samples at least, after DETECTION, before the link heals
PARTITION_MAX = 20.0  # the timeouts not all crossed by then: the test fails
SAMPLE_EVERY = POLL_INTERVAL / 2
METRICS_WITHIN = 2.0  # every /metrics answer during the partition, seconds
RECOVER_FOR = 2.0
# what a poll of a replica behind a dropped link ends with: no answer in time, or (once the
# kernel's ARP entry for it has failed) "no route to host" at once
CUT_OFF = ("timeout", "unreachable")
REPL_TIMEOUT = 3  # seconds (both servers); the master pings its replica every second
SERVER_TIMEOUTS = ["--repl-timeout", str(REPL_TIMEOUT), "--repl-ping-replica-period", "1"]


class PartitionLink(StarvedLink):
    """The namespace + veth of tests/support/netns.py, cut and healed at the namespace end."""

    def _ns_link(self, state: str) -> None:
        _run("ip", "netns", "exec", self.ns, "ip", "link", "set", self.ns_if, state)

    def cut(self) -> None:
        self._ns_link("down")

    def heal(self) -> None:
        self._ns_link("up")

    def route_dev(self) -> str:
        """The interface the host would send a packet for the replica out of."""
        words = _run("ip", "-4", "route", "get", self.ns_ip).split()
        return words[words.index("dev") + 1]


@pytest.fixture
def partition_link() -> Iterator[PartitionLink]:
    require_netns("partition test")
    link = PartitionLink()
    try:
        link.create()
        yield link
    finally:
        link.destroy()


def ms(seconds: float) -> str:
    return f"{round(seconds * 1000)}ms"


def config_text(listen_port: int, master: RedisProcess, replica: RedisProcess) -> str:
    return f"""
exporter: {{listen: "127.0.0.1:{listen_port}"}}
poll: {{interval: {ms(POLL_INTERVAL)}, timeout: {ms(POLL_TIMEOUT)}}}
heartbeat: {{enabled: true, interval: 250ms}}
routing:
  trip: {{lag_seconds: 2, for: 1s}}
  recover: {{lag_seconds: 0.5, for: {ms(RECOVER_FOR)}}}
groups:
  - name: {GROUP}
    master: "redis://{master.label}"
    replicas: ["redis://{replica.label}"]
"""


class Sample:
    """One look at the daemon: its routing table for the group and its /metrics."""

    def __init__(self, daemon: RunningDaemon, replica: str, master: str, since: float) -> None:
        self.at = time.monotonic() - since
        self.wall = time.time()
        status, body = daemon.fetch(f"/routing/{GROUP}")
        assert status == 200, body
        self.table = json.loads(body)
        entry = next((e for e in self.table["replicas"] if e["replica"] == replica), None)
        assert entry is not None, body
        self.entry = entry
        self.health, _ = daemon.fetch(f"/health/replica/{GROUP}/{replica}")
        started = time.monotonic()
        status, text = daemon.fetch("/metrics")
        self.metrics_seconds = time.monotonic() - started
        assert status == 200, text[:500]
        self.link_up = value(text, "replwatch_replica_link_up", group=GROUP, replica=replica)
        self.replica_up = value(text, "replwatch_node_up", group=GROUP, node=replica)
        self.master_up = value(text, "replwatch_node_up", group=GROUP, node=master)
        self.role_ok = value(text, "replwatch_master_role_ok", group=GROUP)
        self.in_rotation = value(
            text, "replwatch_routing_in_rotation", group=GROUP, replica=replica
        )
        self.errors = [
            line.split('reason="', 1)[1].split('"', 1)[0]
            for line, _ in series(text, "replwatch_node_last_error_info", group=GROUP, node=replica)
        ]
        self.text = text

    def __str__(self) -> str:
        t = self.table
        return (
            f"t={self.at:5.1f}s in_rotation={self.entry['in_rotation']} "
            f"reason={self.entry['reason']!r} read_from={t['read_from']} "
            f"reads_on_master={t['reads_on_master']} table_age={self.wall - t['updated_at']:.2f}s "
            f"health={self.health} link_up={self.link_up} replica_up={self.replica_up} "
            f"master_up={self.master_up} role_ok={self.role_ok} metric_in={self.in_rotation} "
            f"errors={self.errors} metrics={self.metrics_seconds:.3f}s"
        )


def serving(daemon: RunningDaemon, replica: str) -> bool:
    status, body = daemon.fetch(f"/routing/{GROUP}")
    if status != 200:
        return False
    entries = json.loads(body)["replicas"]
    return any(e["replica"] == replica and e["in_rotation"] for e in entries)


@pytest.mark.timeout(150)
def test_partitioned_replica_is_out_of_rotation_and_comes_back_without_a_restart(
    partition_link: PartitionLink, tmp_path: Path
) -> None:
    build = require_build("redis-7.0")
    link = partition_link
    sockdir = Path(tempfile.mkdtemp(prefix="rw"))  # short path: unix sockets allow ~107 bytes
    servers = ServerSet(build, tmp_path)
    writer: BackgroundWriter | None = None
    daemon: RunningDaemon | None = None
    try:
        master = servers.start("master", bind=("127.0.0.1", link.host_ip), extra=SERVER_TIMEOUTS)
        replica = servers.start(
            "replica",
            bind=(link.ns_ip,),
            netns=link.ns,
            unixsocket=sockdir / "replica.sock",
            replicaof=(link.host_ip, master.port),
            extra=SERVER_TIMEOUTS,
        )
        wait_synced(replica, master)
        # the replica's own view, through its unix socket (no network): works while cut off
        replica_local = replica.client(via_unix=True)
        writer = BackgroundWriter(master.client(), batch=5, value_size=100, period=0.1)

        port = free_port()
        cfg = tmp_path / "config.yaml"
        cfg.write_text(config_text(port, master, replica))
        daemon = RunningDaemon(cfg, port)
        pid = daemon.pid
        wait_for(lambda: daemon.fetch("/-/ready")[0] == 200, 20, "daemon ready")
        wait_for(lambda: serving(daemon, replica.label), 20, "the replica in rotation")
        before = Sample(daemon, replica.label, master.label, time.monotonic())
        assert before.link_up == 1 and before.replica_up == 1 and before.in_rotation == 1, before
        assert link.route_dev() == link.host_if

        # ---- the partition
        history: list[Sample] = []
        cut_at, cut_wall = time.monotonic(), time.time()
        link.cut()
        # the route to the replica still points into the (carrier-less) veth: dropped there
        assert link.route_dev() == link.host_if
        replica_gave_up = master_gave_up = False  # each server's repl-timeout crossed
        while True:
            tick = time.monotonic()
            sample = Sample(daemon, replica.label, master.label, cut_at)
            history.append(sample)
            trail = "\n".join(str(s) for s in history[-12:])
            assert sample.metrics_seconds < METRICS_WITHIN, trail
            # a table from a cycle that began after the cut never has the replica serving
            if sample.table["updated_at"] > cut_wall + POLL_TIMEOUT + 0.1:
                assert sample.entry["in_rotation"] is False, trail
            if sample.at >= DETECTION:
                table, entry = sample.table, sample.entry
                assert entry["in_rotation"] is False, trail
                assert sample.in_rotation == 0, trail
                assert sample.health == 503, trail
                assert table["reads_on_master"] is True, trail
                assert table["read_from"] == [master.label], trail
                assert sample.wall - table["updated_at"] <= DETECTION, "stale table:\n" + trail
                assert sample.link_up == 0 and sample.replica_up == 0, trail
                assert len(sample.errors) == 1 and sample.errors[0] in CUT_OFF, trail
            assert sample.master_up == 1 and sample.role_ok == 1, trail
            assert daemon.proc.poll() is None, daemon.log_text()[-2000:]
            replica_gave_up = replica_gave_up or (
                replica_local.info("replication")["master_link_status"] == "down"
            )
            master_gave_up = master_gave_up or master.info("replication")["connected_slaves"] == 0
            elapsed = time.monotonic() - cut_at
            if replica_gave_up and master_gave_up and elapsed >= DETECTION + CHECKED_FOR:
                break
            assert elapsed < PARTITION_MAX, (
                f"after {elapsed:.1f}s of partition: replica gave up {replica_gave_up}, "
                f"master gave up {master_gave_up} (repl-timeout {REPL_TIMEOUT}s)\n{trail}"
            )
            time.sleep(max(0.0, SAMPLE_EVERY - (time.monotonic() - tick)))
        partition = time.monotonic() - cut_at
        assert link.route_dev() == link.host_if
        # the partition was real for both servers: the replica lost its master, the master its
        # replica (repl-timeout 3 s)
        assert replica_local.info("replication")["master_link_status"] == "down"
        assert master.info("replication")["connected_slaves"] == 0
        checked = [s for s in history if s.at >= DETECTION]
        detected = next(s.at for s in history if not s.entry["in_rotation"])
        assert len(checked) >= (partition - DETECTION) / SAMPLE_EVERY * 0.8, len(checked)
        partial_before = int(master.info("stats")["sync_partial_ok"])
        full_before = int(master.info("stats")["sync_full"])

        # ---- the link comes back
        link.heal()
        healed_at = time.monotonic()
        wait_for(lambda: replica_synced(replica, master), 30, "the replica resynced")
        resynced = time.monotonic() - healed_at
        wait_for(
            lambda: (
                value(
                    daemon.metrics(),
                    "replwatch_replica_link_up",
                    group=GROUP,
                    replica=replica.label,
                )
                == 1
            ),
            15,
            "replwatch reporting the replica's link up",
        )
        wait_for(lambda: serving(daemon, replica.label), 20, "the replica back in rotation")
        back_in = time.monotonic() - healed_at
        after = Sample(daemon, replica.label, master.label, cut_at)
        assert after.replica_up == 1 and after.link_up == 1 and after.in_rotation == 1, after
        assert after.health == 200, after
        assert daemon.proc.poll() is None and daemon.pid == pid  # the same process throughout
        moves = {
            to: value(
                after.text,
                "replwatch_routing_transitions_total",
                group=GROUP,
                replica=replica.label,
                to=to,
            )
            for to in ("out", "in")
        }
        assert moves == {"out": 1, "in": 1}, moves
        assert writer.error is None, writer.error
        stats = master.info("stats")
        print(
            "\n".join(str(s) for s in history)
            + f"\npartition {partition:.1f}s; out of rotation in the first sample {detected:.1f}s "
            "after the cut; "
            f"/metrics at most {max(s.metrics_seconds for s in history):.3f}s; "
            f"table at most {max(s.wall - s.table['updated_at'] for s in checked):.2f}s old"
            + f"\nresynced {resynced:.1f}s after the heal (partial resyncs "
            f"{partial_before}->{stats['sync_partial_ok']}, full {full_before}->"
            f"{stats['sync_full']}); back in rotation after {back_in:.1f}s"
        )
    finally:
        try:
            if writer is not None:
                writer.stop()
            if daemon is not None:
                daemon.stop()
            servers.close()  # before the namespace goes (partition_link's teardown)
        finally:
            shutil.rmtree(sockdir, ignore_errors=True)
