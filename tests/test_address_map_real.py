"""Address mapping against real servers: a replica announcing an address replwatch cannot
reach (replica-announce-ip/-port, as behind NAT or in containers), and a chained replica
that replicates through another address of its upstream. With `address_map`, discovery
polls the reachable address, the master's slave line is matched to it (ACK age), and the
chain is recognised; without it, the announced address is polled and reported down."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from replwatch.config import config_from_data
from replwatch.observe.group_monitor import GroupMonitor

from ._servers import Servers, free_port, server_builds, wait_for, wait_linked
from .test_monitor_real import Driver, replica


@pytest.fixture
def redis70(tmp_path: Path) -> Iterator[Servers]:
    build = next((b for b in server_builds() if b.name == "redis-7.0"), None)
    if build is None:
        pytest.fail("Debian redis-server is not installed")
    servers = Servers(build, tmp_path)
    try:
        yield servers
    finally:
        servers.close()


def monitor(master: str, address_map: dict[str, str] | None) -> GroupMonitor:
    group: dict[str, object] = {"name": "g", "master": master, "discover": True}
    if address_map is not None:
        group["address_map"] = address_map
    cfg = config_from_data(
        {
            "poll": {"interval": "500ms", "timeout": "300ms"},
            "heartbeat": {"interval": "100ms"},
            "groups": [group],
        },
        env={},
    )
    return GroupMonitor(cfg.groups[0], cfg.poll, cfg.heartbeat, cfg.lag, cfg.tls)


@pytest.mark.timeout(60)
def test_announced_addresses_are_mapped(redis70: Servers) -> None:
    announced_port = free_port()  # nothing listens there
    master = redis70.start("master")
    # the middle replica announces 127.0.0.2:<announced_port> (it listens on 127.0.0.1 and
    # 127.0.0.3 only); the leaf replicates from it through 127.0.0.3
    middle = redis70.start(
        "middle",
        [
            "--bind",
            "127.0.0.1",
            "127.0.0.3",
            "--replica-announce-ip",
            "127.0.0.2",
            "--replica-announce-port",
            str(announced_port),
        ],
        replica_of=master,
    )
    leaf = redis70.start("leaf", ["--replicaof", "127.0.0.3", str(middle.port)])
    wait_linked(middle, master)
    wait_linked(leaf, master)

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
        unmapped = replica(snap, f"127.0.0.2:{announced_port}")
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
        mid, lf = replica(snap, middle.label), replica(snap, leaf.label)
        assert mid.reachable and not mid.chained
        # the master's slave line (127.0.0.2:<announced>) matched to the polled node
        assert mid.ack_age_seconds is not None
        # the leaf's upstream 127.0.0.3:<port> is the middle replica, once mapped
        assert lf.upstream == middle.label and lf.chained
        assert lf.ack_age_seconds is not None  # from the middle replica's slave line
        assert all(n.up for n in snap.nodes)
    finally:
        drv.close()
