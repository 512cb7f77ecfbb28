"""Cluster groups against a real 3-master / 3-replica Redis Cluster: the real resolver, the
fleet and the scheduler, in-process. Every shard becomes a group with its replica; a manual
failover moves the shard's master without renaming the group (same monitor, old master
reported as its replica, no replica series of the promoted node); a slot migration updates
both shards' slots and keeps their names."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import pytest

from replwatch.config import config_from_data
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
    finally:
        scheduler.shutdown()
        fleet.close()
        loop.close()
