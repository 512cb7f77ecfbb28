"""A real Redis Cluster for tests: masters started with --cluster-enabled on ephemeral ports
(cluster-config-file in each server's own dir), slots assigned with CLUSTER ADDSLOTS and the
nodes joined with CLUSTER MEET (no redis-cli needed); a slot moved between masters the way
redis-cli --cluster reshard does it; the data read back logically through a cluster client."""

from __future__ import annotations

import random
import socket
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import redis
from redis.cluster import ClusterNode, RedisCluster

from .datasets import connect
from .servers import RedisProcess, ServerSet, wait_for

SLOTS = 16384
SKIP_PREFIX = b"__replwatch:"


def low_free_port() -> int:
    """A free port under 32768 (out of the kernel's ephemeral range, so free_port() of other
    servers cannot take it): a cluster node's port must be at most 55535."""
    rng = random.Random()
    for _ in range(200):
        port = rng.randrange(20000, 32000)
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise AssertionError("no free port under 32000")


class Cluster:
    """`masters` masters owning all slots; with `replicas_per_master`, that many replicas of
    each (`self.replicas[i]` follow `self.nodes[i]`; `self.nodes` are the first masters,
    whatever failovers do later: `all_nodes` is everyone)."""

    def __init__(
        self,
        servers: ServerSet,
        masters: int = 3,
        prefix: str = "node",
        replicas_per_master: int = 0,
        node_extra: Callable[[], list[str]] | None = None,
    ) -> None:
        """`node_extra`: more arguments for each node, asked once per node (TLS ports)."""
        self.nodes: list[RedisProcess] = []
        self.replicas: list[list[RedisProcess]] = [[] for _ in range(masters)]
        bus_ports: list[int] = []

        def start(name: str) -> RedisProcess:
            bus_ports.append(low_free_port())
            return servers.start(
                name,
                port=low_free_port(),
                extra=[
                    "--cluster-port",
                    str(bus_ports[-1]),
                    "--cluster-enabled",
                    "yes",
                    "--cluster-config-file",
                    "nodes.conf",
                    "--cluster-node-timeout",
                    "5000",
                    *(node_extra() if node_extra is not None else []),
                ],
            )

        for i in range(masters):
            self.nodes.append(start(f"{prefix}{i}"))
        for i in range(masters):
            for j in range(replicas_per_master):
                self.replicas[i].append(start(f"{prefix}{i}-replica{j}"))
        per = SLOTS // masters
        for i, node in enumerate(self.nodes):
            first = i * per
            last = SLOTS - 1 if i == masters - 1 else (i + 1) * per - 1
            with connect(node) as client:
                client.execute_command("CLUSTER", "ADDSLOTS", *range(first, last + 1))
        everyone = self.all_nodes
        with connect(self.nodes[0]) as client:
            for other, bus in zip(everyone[1:], bus_ports[1:], strict=True):
                client.execute_command("CLUSTER", "MEET", other.host, other.port, bus)
        wait_for(self._ok, 30, "the cluster to be ok on every node")
        if replicas_per_master:
            for master, followers in zip(self.nodes, self.replicas, strict=True):
                master_id = self.node_id(master)
                for replica in followers:
                    # the replica must know the master's id first (gossip after MEET)
                    wait_for(
                        lambda r=replica, m=master_id: (
                            m in connect(r).execute_command("CLUSTER", "NODES").decode()
                        ),
                        20,
                        "the replica to know its master",
                    )
                    with connect(replica) as client:
                        client.execute_command("CLUSTER", "REPLICATE", master_id)
            wait_for(self._replicas_linked, 30, "every cluster replica linked")

    @property
    def all_nodes(self) -> list[RedisProcess]:
        return self.nodes + [r for followers in self.replicas for r in followers]

    def _replicas_linked(self) -> bool:
        for followers in self.replicas:
            for replica in followers:
                with connect(replica) as client:
                    info = client.info("replication")
                if info.get("role") != "slave" or info.get("master_link_status") != "up":
                    return False
        # and every node's view agrees (gossip): each replica flagged slave everywhere
        ids = [self.node_id(r) for followers in self.replicas for r in followers]
        for node in self.all_nodes:
            with connect(node) as client:
                view = client.execute_command("CLUSTER", "NODES").decode().splitlines()
            flags = {line.split()[0]: line.split()[2] for line in view}
            if any("slave" not in flags.get(i, "") for i in ids):
                return False
        return True

    def failover(self, replica: RedisProcess) -> None:
        """A manual failover (CLUSTER FAILOVER on the replica), waited for on every node."""
        replica_id = self.node_id(replica)
        with connect(replica) as client:
            client.execute_command("CLUSTER", "FAILOVER")

        def promoted() -> bool:
            for node in self.all_nodes:
                with connect(node) as client:
                    for line in client.execute_command("CLUSTER", "NODES").decode().splitlines():
                        if line.startswith(replica_id) and "master" not in line.split()[2]:
                            return False
            return True

        wait_for(promoted, 30, "the manual failover to be seen by every node")

    def _ok(self) -> bool:
        for node in self.all_nodes:
            with connect(node) as client:
                info = client.execute_command("CLUSTER", "INFO").decode()
                if (
                    "cluster_state:ok" not in info
                    or f"cluster_known_nodes:{len(self.all_nodes)}" not in info
                ):
                    return False
                slots = client.execute_command("CLUSTER", "SLOTS")
                if sum(int(r[1]) - int(r[0]) + 1 for r in slots) != SLOTS or len(slots) < len(
                    self.nodes
                ):
                    return False
        return True

    @property
    def first(self) -> RedisProcess:
        return self.nodes[0]

    def target_config(self) -> dict[str, Any]:
        return {"cluster": {"startup_nodes": [self.nodes[0].label, self.nodes[1].label]}}

    @contextmanager
    def client(self) -> Iterator[RedisCluster]:
        c = RedisCluster(
            startup_nodes=[ClusterNode(n.host, n.port) for n in self.nodes],
            socket_timeout=10,
            protocol=2,
        )
        try:
            yield c
        finally:
            c.close()

    def node_id(self, node: RedisProcess) -> str:
        with connect(node) as client:
            return str(client.execute_command("CLUSTER", "MYID").decode())

    def owner(self, slot: int, asking: RedisProcess | None = None) -> RedisProcess:
        """The master of `slot`, as `asking` (default: the first node) sees it."""
        with connect(asking or self.nodes[0]) as client:
            for start, end, master, *_ in client.execute_command("CLUSTER", "SLOTS"):
                if int(start) <= slot <= int(end):
                    port = int(master[1])
                    return next(n for n in self.all_nodes if n.port == port)
        raise AssertionError(f"slot {slot} has no owner")

    def migrate_slot(self, slot: int, to: RedisProcess, pause: float = 0.0) -> None:
        """Move a slot like `redis-cli --cluster reshard`: IMPORTING on the new owner,
        MIGRATING on the old, MIGRATE its keys in small steps (`pause` between them: writes
        meet the half-moved slot), then the new owner announced (finish_migration)."""
        source = self.begin_migration(slot, to)
        with connect(source) as old:
            while self.migrate_keys(old, slot, to, 5):
                if pause:
                    time.sleep(pause)
        self.finish_migration(slot, source, to)

    def begin_migration(self, slot: int, to: RedisProcess) -> RedisProcess:
        """IMPORTING on `to`, MIGRATING on the slot's owner (returned): the slot is half moved."""
        source = self.owner(slot)
        assert source is not to
        with connect(source) as old, connect(to) as new:
            new.execute_command("CLUSTER", "SETSLOT", slot, "IMPORTING", self.node_id(source))
            old.execute_command("CLUSTER", "SETSLOT", slot, "MIGRATING", self.node_id(to))
        return source

    @staticmethod
    def migrate_keys(old: Any, slot: int, to: RedisProcess, count: int) -> int:
        """MIGRATE up to `count` keys of `slot` from `old` (a client) to `to`; how many moved."""
        keys = old.execute_command("CLUSTER", "GETKEYSINSLOT", slot, count)
        if keys:
            old.execute_command("MIGRATE", to.host, to.port, "", 0, 5000, "KEYS", *keys)
        return len(keys)

    def finish_migration(self, slot: int, source: RedisProcess, to: RedisProcess) -> None:
        """NODE on the new owner first (it bumps its config epoch, so no older claim gossiped
        by the old owner can win), then the old owner, then the other masters — redis-cli's
        order; the move is done when every master agrees."""
        to_id = self.node_id(to)
        others = [n for n in self.all_nodes if n is not to and n is not source]
        masters = []
        for node in [to, source, *others]:
            with connect(node) as client:
                if client.info("replication").get("role") == "master":
                    client.execute_command("CLUSTER", "SETSLOT", slot, "NODE", to_id)
                    masters.append(node)

        def agreed() -> bool:
            return all(self.owner(slot, asking=m) is to for m in masters)

        wait_for(agreed, 30, f"every master to see slot {slot} on its new owner")


def logical(client: Any, key: bytes) -> tuple[Any, ...]:
    """A key's type, value (order-free where the type is) and whether it has a TTL."""
    kind = client.type(key)
    kind = kind.decode() if isinstance(kind, bytes) else kind
    if kind == "string":
        value: Any = client.get(key)
    elif kind == "list":
        value = tuple(client.lrange(key, 0, -1))
    elif kind == "set":
        value = frozenset(client.smembers(key))
    elif kind == "zset":
        value = tuple(client.zrange(key, 0, -1, withscores=True))
    elif kind == "hash":
        value = frozenset(client.hgetall(key).items())
    elif kind == "stream":
        entries = tuple(client.xrange(key, "-", "+"))
        groups = tuple(
            sorted(
                (g["name"], g["last-delivered-id"], g["pending"]) for g in client.xinfo_groups(key)
            )
        )
        value = (entries, groups)
    else:
        value = None
    return kind, value, client.pttl(key) > 0


def all_keys(client: Any) -> set[bytes]:
    keys: set[bytes] = set()
    if isinstance(client, RedisCluster):
        for node in client.get_primaries():
            keys |= set(client.scan_iter(count=1000, target_nodes=node))
    else:
        keys = set(client.scan_iter(count=1000))
    return {k for k in keys if not k.startswith(SKIP_PREFIX)}


def assert_same_data(source: RedisProcess, cluster: Cluster) -> None:
    """Every key of the source's db 0 on the cluster with the same type, value and TTL-ness,
    and no other key there (the sync's own checkpoint keys aside)."""
    with connect(source) as plain, cluster.client() as clustered:
        source_keys = all_keys(plain)
        target_keys = all_keys(clustered)
        assert source_keys == target_keys, (
            sorted(source_keys - target_keys)[:10],
            sorted(target_keys - source_keys)[:10],
        )
        differ = [k for k in source_keys if logical(plain, k) != logical(clustered, k)]
        assert not differ, [(k, logical(plain, k), logical(clustered, k)) for k in differ[:3]]


def wait_equal(source: RedisProcess, cluster: Cluster, timeout: float = 30) -> None:
    last: list[str] = []

    def same() -> bool:
        try:
            assert_same_data(source, cluster)
            return True
        except AssertionError as exc:
            last[:] = [str(exc)[:500]]
            return False
        except redis.RedisError as exc:
            last[:] = [repr(exc)]
            return False

    wait_for(same, timeout, f"the cluster to hold the source's data ({last[:1]})")
