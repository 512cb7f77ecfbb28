"""Cluster groups against a real 3-master / 3-replica Redis Cluster: the real resolver, the
fleet and the scheduler, in-process. Every shard becomes a group with its replica; a manual
failover moves the shard's master without renaming the group (same monitor, old master
reported as its replica, no replica series of the promoted node); a slot migration updates
both shards' slots and keeps their names. Every shard gets heartbeats and WAIT probes (keys in
its own slots, re-chosen when the slot of one moves away; replicas read with READONLY), and a
master killed and replaced is a down node of its shard, not a group of its own."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import pytest

from replwatch.config import config_from_data
from replwatch.keyslot import key_slot, owns
from replwatch.routing.engine import RoutingEngine
from replwatch.scheduler import MonitorScheduler, SchedulerStats
from replwatch.state import GroupSnapshot, ProbeStore, SnapshotStore
from replwatch.topology.fleet import Fleet

from .support.clustering import SLOTS, Cluster
from .support.servers import ServerSet, wait_for


@pytest.fixture
def cluster(debian_servers: ServerSet) -> Iterator[Cluster]:
    yield Cluster(debian_servers, masters=3, replicas_per_master=1)


@pytest.mark.timeout(120)
def test_cluster_shards_failover_and_slot_migration(cluster: Cluster) -> None:
    cfg = config_from_data(
        {
            "poll": {"interval": "500ms", "timeout": "400ms"},
            "heartbeat": {"interval": "250ms"},
            "probe": {"timeout": "1s", "interval": "1s"},
            "groups": [
                {
                    "name": "carts",
                    # a dead seed first: the next one is asked
                    "cluster": {"startup_nodes": ["127.0.0.1:1", cluster.first.label]},
                }
            ],
        },
        env={},
    )
    store = SnapshotStore()
    routing = RoutingEngine(lambda name: cfg.routing)
    fleet = Fleet(cfg, store, routing, ProbeStore())
    scheduler = MonitorScheduler(
        (), store, 0.5, None, SchedulerStats(), (), None, routing, fleet=fleet
    )
    loop = asyncio.new_event_loop()

    def cycle() -> dict[str, GroupSnapshot]:
        loop.run_until_complete(fleet.discover())
        loop.run_until_complete(scheduler.heartbeat_round())
        loop.run_until_complete(scheduler.poll_all())
        return {s.name: s for s in store.all()}

    def until(predicate: object, what: str, timeout: float = 30) -> dict[str, GroupSnapshot]:
        found: dict[str, dict[str, GroupSnapshot]] = {}

        def check() -> bool:
            found["snaps"] = cycle()
            return bool(predicate(found["snaps"]))  # type: ignore[operator]

        wait_for(check, timeout, what)
        return found["snaps"]

    m0, m1, _m2 = cluster.nodes
    r1 = cluster.replicas[1][0]
    try:
        snaps = until(
            lambda s: (
                len(s) == 3
                and all(len(g.replicas) == 1 and g.replicas[0].link_up for g in s.values())
            ),
            "three shards, each replica linked",
        )
        per = SLOTS // 3
        assert set(snaps) == {"carts:s0", f"carts:s{per}", f"carts:s{2 * per}"}
        for snap in snaps.values():
            assert snap.master_role_ok and len(snap.replicas) == 1
        groups = {g.name: g for g in fleet.groups()}
        covered = sorted(r for g in groups.values() for r in g.slots)
        assert sum(b - a + 1 for a, b in covered) == SLOTS  # every slot, exactly once
        assert covered[0][0] == 0 and covered[-1][1] == SLOTS - 1
        assert snaps[f"carts:s{per}"].master == m1.label
        assert fleet.discovery["carts"].ok

        # heartbeats and probes on every shard, not only the one owning the configured keys
        snaps = until(
            lambda s: all(g.replicas[0].heartbeat_lag_seconds is not None for g in s.values()),
            "a heartbeat lag on every shard (the replicas read the key with READONLY)",
        )
        keys = {name: m._hb_key for name, m in fleet.monitors.items()}
        assert len(set(keys.values())) == 3, keys
        for name, monitor in fleet.monitors.items():
            assert monitor.writer is not None and monitor.writer.last_ok, name
            assert all(r.heartbeat_lag_seconds < 1 for r in snaps[name].replicas), name
            result = loop.run_until_complete(fleet.probers[name][0].probe())
            assert (result.result, result.acked) == ("ok", 1), (name, result)

        # manual failover of the second shard: same group, master moved to its replica
        monitor = fleet.monitors[f"carts:s{per}"]
        cluster.failover(r1)
        snaps = until(
            lambda s: (
                f"carts:s{per}" in s
                and s[f"carts:s{per}"].master == r1.label
                and s[f"carts:s{per}"].master_role_ok
                and [(r.label, r.link_up) for r in s[f"carts:s{per}"].replicas]
                == [(m1.label, True)]
                and len(s) == 3
            ),
            "the shard following its new master, the old one as its replica",
        )
        assert fleet.monitors[f"carts:s{per}"] is monitor and monitor.master_changes == 1
        assert set(snaps) == {"carts:s0", f"carts:s{per}", f"carts:s{2 * per}"}
        table = routing.table(f"carts:s{per}")
        assert table is not None and table.entry(r1.label) is None

        # a slot migration: slot 0 moves from the first shard to the third
        cluster.migrate_slot(0, cluster.nodes[2])
        snaps = until(
            lambda s: fleet.monitors["carts:s0"].group.slots[0][0] == 1,
            "the first shard without slot 0",
        )
        # both shards keep their names (their nodes did), their slots follow
        assert set(snaps) == {"carts:s0", f"carts:s{per}", f"carts:s{2 * per}"}
        assert fleet.monitors["carts:s0"].group.master.label == m0.label
        third = fleet.monitors[f"carts:s{2 * per}"].group.slots
        assert third[0] == (0, 0)
        assert fleet.discovery["carts"].changes >= 2

        # the slot of the first shard's heartbeat key moves away: a new key, in its slots
        old_key = fleet.monitors["carts:s0"]._hb_key
        assert old_key is not None
        cluster.migrate_slot(key_slot(old_key.encode()), cluster.nodes[2])
        snaps = until(
            lambda s: (
                fleet.monitors["carts:s0"]._hb_key != old_key
                and s["carts:s0"].replicas[0].heartbeat_lag_seconds is not None
                and fleet.monitors["carts:s0"].writer.last_ok  # type: ignore[union-attr]
            ),
            "the first shard's heartbeat on a key in its own slots again",
        )
        new_key = fleet.monitors["carts:s0"]._hb_key
        assert new_key is not None and owns(
            fleet.monitors["carts:s0"].group.slots, key_slot(new_key.encode())
        )
        probe = loop.run_until_complete(fleet.probers["carts:s0"][0].probe())
        assert probe.result == "ok", probe

        # kill -9 the third shard's master: its replica takes over (cluster-node-timeout),
        # and the dead node is a down node of that shard, not a group of its own
        third_name = f"carts:s{2 * per}"
        m2, r2 = cluster.nodes[2], cluster.replicas[2][0]
        m2.kill()
        snaps = until(
            lambda s: s[third_name].master == r2.label and s[third_name].master_role_ok,
            "the third shard following its promoted replica",
            timeout=40,
        )
        snaps = until(
            lambda s: [r.label for r in s[third_name].replicas] == [m2.label],
            "the dead old master listed as a node of its shard",
        )
        assert set(snaps) == {"carts:s0", f"carts:s{per}", third_name}, set(snaps)
        dead = snaps[third_name].replicas[0]
        assert not dead.reachable
        table = routing.table(third_name)
        assert table is not None and not table.degraded
    finally:
        scheduler.shutdown()
        loop.run_until_complete(scheduler.wait_closed())
        fleet.close()
        loop.close()
