"""The fleet's reconciliation, step by step, against real servers. The topology source is a
scripted resolver (the `Resolvers` component the daemon injects): what the Sentinels or the
cluster *say* is the test's input, the nodes polled are real. The real resolvers are tested
against real Sentinels and clusters in test_topology_resolvers.py and test_discovery_*.py."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator, Sequence

import pytest

from replwatch.config import Config, RedisEndpoint, TLSConfig, config_from_data
from replwatch.errors import RedisError
from replwatch.routing.engine import RoutingEngine
from replwatch.scheduler import MonitorScheduler, SchedulerStats
from replwatch.state import ProbeStore, SnapshotStore
from replwatch.topology.fleet import Fleet, Resolvers
from replwatch.topology.model import Address, DiscoveredGroup

from .support.servers import RedisProcess, ServerSet


class Script:
    """What the 'Sentinels' and the 'cluster' answer next (or the error they raise)."""

    def __init__(self) -> None:
        self.sentinel: DiscoveredGroup | Exception | None = None
        self.cluster: list[DiscoveredGroup] | Exception = []
        self.asked: list[str] = []

    async def resolve_sentinel(
        self, sentinels: Sequence[RedisEndpoint], name: str, tls: TLSConfig | None, timeout: float
    ) -> DiscoveredGroup:
        self.asked.append(f"sentinel:{name}")
        assert isinstance(self.sentinel, DiscoveredGroup | Exception)
        if isinstance(self.sentinel, Exception):
            raise self.sentinel
        return self.sentinel

    async def resolve_cluster(
        self, seeds: Sequence[RedisEndpoint], tls: TLSConfig | None, timeout: float
    ) -> list[DiscoveredGroup]:
        self.asked.append("cluster")
        if isinstance(self.cluster, Exception):
            raise self.cluster
        return self.cluster

    def resolvers(self) -> Resolvers:
        return Resolvers(self.resolve_sentinel, self.resolve_cluster)


def addr(proc: RedisProcess) -> Address:
    return Address(proc.host, proc.port)


@pytest.fixture
def nodes(debian_servers: ServerSet) -> Iterator[list[RedisProcess]]:
    a = debian_servers.start("a")
    b = debian_servers.start("b", replica_of=a)
    c = debian_servers.start("c")
    yield [a, b, c]


def config() -> Config:
    return config_from_data(
        {
            "poll": {"interval": "500ms", "timeout": "400ms"},
            "heartbeat": {"interval": "250ms"},
            "groups": [
                {
                    "name": "orders",
                    "sentinel": {"addresses": ["127.0.0.1:1"], "master_name": "m"},
                },
                {"name": "carts", "cluster": {"startup_nodes": ["127.0.0.1:1"]}},
            ],
        },
        env={},
    )


@pytest.mark.timeout(60)
def test_reconcile_follows_moves_keeps_monitors_and_survives_failures(
    nodes: list[RedisProcess],
) -> None:
    a, b, c = nodes
    script = Script()
    script.sentinel = DiscoveredGroup(key="", master=addr(a), replicas=(addr(b),))
    script.cluster = [
        DiscoveredGroup("s0", addr(c), slots=((0, 8191),), node_ids=frozenset({"c1"})),
        DiscoveredGroup("s8192", addr(a), slots=((8192, 16383),), node_ids=frozenset({"a1"})),
    ]
    store = SnapshotStore()
    routing = RoutingEngine(lambda name: config().routing)
    fleet = Fleet(config(), store, routing, ProbeStore(), script.resolvers())
    scheduler = MonitorScheduler(
        (), store, 0.5, None, SchedulerStats(), (), None, routing, fleet=fleet
    )
    loop = asyncio.new_event_loop()
    try:
        assert fleet.monitors == {}  # nothing is known before the first discovery
        changes = loop.run_until_complete(fleet.discover())
        assert set(fleet.monitors) == {"orders", "carts:s0", "carts:s8192"}
        assert len(changes) == 3
        assert sorted(script.asked) == ["cluster", "sentinel:m"]
        orders = fleet.monitors["orders"]
        loop.run_until_complete(scheduler.poll_all())
        snap = store.get("orders")
        assert snap is not None and snap.master == a.label and snap.master_role_ok
        assert [r.label for r in snap.replicas] == [b.label]
        assert {g.name for g in store.all()} == {"orders", "carts:s0", "carts:s8192"}

        # the Sentinels name b now (a listed as its replica): same monitor, retargeted
        script.sentinel = DiscoveredGroup(key="", master=addr(b), replicas=(addr(a),))
        changes = loop.run_until_complete(fleet.discover())
        assert changes == [f"group orders: master moved from {a.label} to {b.label}"]
        assert fleet.monitors["orders"] is orders and orders.master_changes == 1
        loop.run_until_complete(scheduler.poll_all())
        snap = store.get("orders")
        assert snap is not None and snap.master == b.label
        assert [r.label for r in snap.replicas] == [a.label]  # a is no longer the master
        table = routing.table("orders")
        assert table is not None and table.entry(b.label) is None  # no replica role left

        # nothing changed: nothing is touched
        assert loop.run_until_complete(fleet.discover()) == []
        status = fleet.discovery["orders"]
        assert status.ok and status.changes == 1

        # the Sentinels fail: the last topology stays, the failure is reported
        script.sentinel = RedisError("no Sentinel answered: 127.0.0.1:1: refused", "discovery")
        assert loop.run_until_complete(fleet.discover()) == []
        assert fleet.monitors["orders"] is orders and orders.group.master.label == b.label
        assert status.ok is False and status.failures == 1 and "refused" in (status.error or "")

        # a shard goes away (its slots moved to the other one): its group and snapshot go
        script.cluster = [
            DiscoveredGroup("s0", addr(c), slots=((0, 16383),), node_ids=frozenset({"c1"}))
        ]
        changes = loop.run_until_complete(fleet.discover())
        assert "group carts:s8192: gone" in changes and "group carts:s0: slots changed" in changes
        assert store.get("carts:s8192") is None
        loop.run_until_complete(scheduler.poll_all())
        assert {g.name for g in store.all()} == {"orders", "carts:s0"}
        assert fleet.monitors["carts:s0"].group.slots == ((0, 16383),)
    finally:
        scheduler.shutdown()
        loop.run_until_complete(scheduler.wait_closed())
        fleet.close()
        loop.close()


def test_resolvers_name_every_address_they_asked_when_none_answers() -> None:
    from replwatch.errors import DiscoveryError
    from replwatch.topology.cluster import resolve_cluster
    from replwatch.topology.sentinel import resolve_sentinel

    from .support.servers import closed_port

    dead = [
        RedisEndpoint(host="127.0.0.1", port=closed_port(), password="pw-Zk3"),  # type: ignore[arg-type]
        RedisEndpoint(host="127.0.0.1", port=closed_port()),
    ]
    with pytest.raises(DiscoveryError) as info:
        asyncio.run(resolve_sentinel(dead, "m", None, 0.5))
    message = str(info.value)
    assert all(d.label in message for d in dead) and "'m'" in message
    assert "pw-Zk3" not in message
    with pytest.raises(DiscoveryError) as info:
        asyncio.run(resolve_cluster(dead, None, 0.5))
    assert all(d.label in str(info.value) for d in dead)
    assert info.value.reason == "discovery"
