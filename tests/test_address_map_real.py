"""Address mapping against real servers: a replica announcing an address replwatch cannot
reach (replica-announce-ip/-port, as behind NAT or in containers), and a chained replica
that replicates through another address of its upstream. With `address_map`, discovery
polls the reachable address, the master's slave line is matched to it (ACK age), and the
chain is recognised; without it, the announced address is polled and reported down."""

from __future__ import annotations

import pytest

from replwatch.observe.group_monitor import GroupMonitor

from .support.monitor import Driver, make_monitor, replica_view
from .support.servers import ServerSet, free_port, wait_for, wait_synced


def monitor(master: str, address_map: dict[str, str] | None) -> GroupMonitor:
    return make_monitor(
        master, discover=True, timeout="300ms", interval="500ms", address_map=address_map
    )


@pytest.mark.timeout(60)
def test_announced_addresses_are_mapped(debian_servers: ServerSet) -> None:
    announced_port = free_port()  # nothing listens there
    master = debian_servers.start("master")
    # the middle replica announces 127.0.0.2:<announced_port> (it listens on 127.0.0.1 and
    # 127.0.0.3 only); the leaf replicates from it through 127.0.0.3
    middle = debian_servers.start(
        "middle",
        ["--replica-announce-ip", "127.0.0.2", "--replica-announce-port", str(announced_port)],
        bind=("127.0.0.1", "127.0.0.3"),
        replica_of=master,
    )
    leaf = debian_servers.start("leaf", ["--replicaof", "127.0.0.3", str(middle.port)])
    wait_synced(middle, master)
    wait_synced(leaf, master)

    def announced() -> bool:
        info = master.client().info("replication")
        return any(
            isinstance(v, dict) and v.get("ip") == "127.0.0.2" and v.get("port") == announced_port
            for k, v in info.items()
            if k.startswith("slave")
        )

    wait_for(announced, 10, "the master listing the announced address")

    # without a mapping: the announced address is what discovery finds, and it is down
    drv = Driver(monitor(master.url, None))
    try:
        snap = drv.until(
            lambda s: any(r.label == f"127.0.0.2:{announced_port}" for r in s.replicas),
            10,
            "the announced address discovered",
        )
        unmapped = replica_view(snap, f"127.0.0.2:{announced_port}")
        assert not unmapped.reachable
    finally:
        drv.close()

    amap = {f"127.0.0.2:{announced_port}": middle.label, "127.0.0.3": "127.0.0.1"}
    drv = Driver(monitor(master.url, amap))
    try:
        snap = drv.until(
            lambda s: (
                {r.label for r in s.replicas} == {middle.label, leaf.label}
                and all(r.link_up and r.lag_bytes == 0 for r in s.replicas)
            ),
            15,
            "both replicas discovered at reachable addresses and caught up",
        )
        mid, lf = replica_view(snap, middle.label), replica_view(snap, leaf.label)
        assert mid.reachable and not mid.chained
        # the master's slave line (127.0.0.2:<announced>) matched to the polled node
        assert mid.ack_age_seconds is not None
        # the leaf's upstream 127.0.0.3:<port> is the middle replica, once mapped
        assert lf.upstream == middle.label and lf.chained
        assert lf.ack_age_seconds is not None  # from the middle replica's slave line
        assert all(n.up for n in snap.nodes)
    finally:
        drv.close()
