"""A sync task whose source is a Redis Cluster: one reader (and checkpoint) per master shard,
all into one target; a manual failover inside a shard is followed (continued through the
promoted replica's replid2). Shard discovery parsers are table-tested."""

from __future__ import annotations

import asyncio
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
from redis.cluster import RedisCluster

from replwatch.config import SyncTask, TLSConfig, config_from_data
from replwatch.sync.checkpoint import Checkpoint, checkpoint_key
from replwatch.sync.cluster import ClusterTaskRunner
from replwatch.sync.sources import Shard, cluster_shards, parse_cluster_nodes
from replwatch.tasks.watch import SyncTaskView, SyncWatcher, task_watchers

from .support.servers import RedisProcess, ServerSet, free_port, wait_for

TASK = "c"
NODES_TEXT = """\
a1 10.0.0.1:7000@17000 myself,master - 0 0 1 connected 0-5460
b2 10.0.0.2:7000@17000 master - 0 0 2 connected 5461-10922 [5462->-a1]
c3 10.0.0.3:7000@17000 master,fail - 0 0 3 connected 10923-16383
d4 10.0.0.4:7000@17000 slave b2 0 0 2 connected
e5 10.0.0.5:7000@17000 master - 0 0 5 connected 10923-12000 12500 13000-16383
"""


def test_parse_cluster_nodes() -> None:
    assert parse_cluster_nodes(NODES_TEXT) == [
        Shard("s0", "10.0.0.1", 7000, ((0, 5460),)),
        Shard("s5461", "10.0.0.2", 7000, ((5461, 10922),)),
        Shard("s10923", "10.0.0.5", 7000, ((10923, 12000), (12500, 12500), (13000, 16383))),
    ]


class Cluster:
    def __init__(self, servers: ServerSet, workdir: Path) -> None:
        self.servers = servers
        self.workdir = workdir
        self.bus_ports: dict[str, int] = {}
        self.masters = [self._node(f"m{i}") for i in range(3)]
        self.target = servers.start("target")
        addresses = [n.label for n in self.masters]
        subprocess.run(
            ["/usr/bin/redis-cli", "--cluster", "create", *addresses, "--cluster-yes"],
            check=True,
            capture_output=True,
            timeout=60,
        )
        for node in self.masters:
            wait_for(lambda n=node: n.info("cluster")["cluster_enabled"] == 1, 10, "cluster")
            wait_for(
                lambda n=node: n.client().execute_command("CLUSTER", "INFO").find(b"state:ok") >= 0,
                30,
                "cluster_state ok",
            )

    def _node(self, name: str) -> RedisProcess:
        bus = free_port()
        self.bus_ports[name] = bus
        return self.servers.start(
            name,
            extra=[
                "--cluster-enabled",
                "yes",
                "--cluster-config-file",
                str(self.workdir / f"{name}-nodes.conf"),
                "--cluster-node-timeout",
                "2000",
                # an ephemeral port of its own (port + 10000 may be over 65535)
                "--cluster-port",
                str(bus),
                # no replication PING: see test_sync_sentinel (a graceful failover path)
                "--repl-ping-replica-period",
                "3600",
            ],
        )

    def client(self) -> RedisCluster:
        return RedisCluster(host=self.masters[0].host, port=self.masters[0].port)

    def task(self) -> SyncTask:
        cfg = config_from_data(
            {
                "sync": {
                    "tasks": [
                        {
                            "name": TASK,
                            "source": {"cluster": {"startup_nodes": [self.masters[0].label]}},
                            "target": self.target.url,
                            "reconnect_min": "200ms",
                            "reconnect_max": "1s",
                        }
                    ]
                }
            }
        )
        return cfg.sync.tasks[0]

    def add_replica(self, master: RedisProcess) -> RedisProcess:
        replica = self._node("r0")
        master_id = master.client().execute_command("CLUSTER", "MYID").decode()
        replica.client().execute_command(
            "CLUSTER", "MEET", master.host, master.port, self.bus_ports[master.name]
        )

        def known() -> bool:
            nodes = replica.client().execute_command("CLUSTER", "NODES").decode()
            return master_id in nodes and nodes.count("master") >= 3

        wait_for(known, 20, "the new node to know the cluster")
        wait_for(
            lambda: replica.client().execute_command("CLUSTER", "REPLICATE", master_id),
            20,
            "CLUSTER REPLICATE",
            ignore=(redis.ResponseError,),
        )
        wait_for(
            lambda: (
                replica.info()["master_link_status"] == "up"
                and replica.info()["slave_repl_offset"] == master.info()["master_repl_offset"]
            ),
            20,
            "the replica to sync",
        )
        replica_id = replica.client().execute_command("CLUSTER", "MYID").decode()

        def everyone_knows() -> bool:
            for node in self.masters:
                nodes = node.client().execute_command("CLUSTER", "NODES").decode()
                line = next((x for x in nodes.splitlines() if x.startswith(replica_id)), "")
                if f"slave {master_id}" not in line:
                    return False
            return True

        # the masters vote for the replica only once they know it as the shard's replica
        wait_for(everyone_knows, 30, "every master to know the new replica")
        return replica

    def fail_over_to(self, replica: RedisProcess) -> None:
        """CLUSTER FAILOVER (a manual, graceful one), asked again if an attempt timed out."""

        def promoted() -> bool:
            if replica.info()["role"] == "master":
                return True
            replica.client().execute_command("CLUSTER", "FAILOVER")
            wait_for(
                lambda: replica.info()["role"] == "master", 8, "promotion", ignore=(AssertionError,)
            )
            return True

        wait_for(promoted, 40, "the replica to take over", ignore=(AssertionError,))


@pytest.fixture
def cluster(debian_servers: ServerSet, tmp_path: Path) -> Iterator[Cluster]:
    if not Path("/usr/bin/redis-cli").is_file():
        pytest.skip("redis-cli (Debian package redis-tools) is needed to create the cluster")
    yield Cluster(debian_servers, tmp_path)


def shard_checkpoints(target: RedisProcess) -> dict[str, Checkpoint]:
    out = {}
    with redis.Redis(host=target.host, port=target.port) as client:
        for key in client.scan_iter(match=checkpoint_key(TASK) + "@*"):
            name = key.decode()[len(checkpoint_key("")) :]
            cp = Checkpoint.from_hash(name, client.hgetall(key))
            assert cp is not None
            out[name.partition("@")[2]] = cp
    return out


def caught_up(cluster: Cluster, masters: list[RedisProcess]) -> bool:
    cps = shard_checkpoints(cluster.target)
    shards = cluster_shards(cluster.task().source, TLSConfig(), 2.0)  # type: ignore[arg-type]
    if len(cps) != len(shards):
        return False
    for shard in shards:
        node = next(m for m in masters if (m.host, m.port) == (shard.host, shard.port))
        info = node.info()
        cp = cps.get(shard.shard_id)
        if cp is None or cp.state != "incremental" or cp.replid != info["master_replid"]:
            return False
        if cp.offset is None or cp.offset < info["master_repl_offset"]:
            return False
    return True


def assert_target_equals_cluster(cluster: Cluster, masters: list[RedisProcess]) -> None:
    source_keys: dict[bytes, bytes | None] = {}
    for node in masters:
        if node.info()["role"] != "master":
            continue
        with redis.Redis(host=node.host, port=node.port) as client:
            for key in client.scan_iter(count=1000):
                source_keys[key] = client.get(key)
    with redis.Redis(host=cluster.target.host, port=cluster.target.port) as target:
        target_keys = {
            k: target.get(k)
            for k in target.scan_iter(count=1000)
            if not k.startswith(b"__replwatch:")
        }
    assert target_keys == source_keys


@pytest.mark.timeout(180)
def test_cluster_source_one_reader_per_shard_and_a_shard_failover(cluster: Cluster) -> None:
    with cluster.client() as client:
        for i in range(300):
            client.set(f"k:{i}", f"v{i}")
    masters = list(cluster.masters)
    runner = ClusterTaskRunner(cluster.task(), TLSConfig(), io_timeout=5)
    exit_codes: list[int] = []
    thread = threading.Thread(target=lambda: exit_codes.append(runner.run()), daemon=True)
    thread.start()
    try:
        wait_for(lambda: caught_up(cluster, masters), 60, "every shard to catch up")
        cps = shard_checkpoints(cluster.target)
        assert sorted(cps) == ["s0", "s10923", "s5461"]
        assert all(cp.full_resyncs == 1 for cp in cps.values())
        assert_target_equals_cluster(cluster, masters)

        # writes during the task, then a manual failover inside the first shard
        counters = [f"n:{i}" for i in range(12)]
        acked = dict.fromkeys(counters, 0)
        with cluster.client() as client:
            for _round in range(50):
                for key in counters:
                    client.incr(key)
                    acked[key] += 1
            old_master = masters[0]
            replica = cluster.add_replica(old_master)
            masters.append(replica)
            cluster.fail_over_to(replica)
            wait_for(lambda: old_master.info()["role"] == "slave", 30, "the old master to follow")
            client.nodes_manager.initialize()
            for _round in range(50):
                for key in counters:
                    client.incr(key)
                    acked[key] += 1
        wait_for(lambda: caught_up(cluster, masters), 60, "every shard to catch up again")
        cps = shard_checkpoints(cluster.target)
        assert sorted(cps) == ["s0", "s10923", "s5461"]
        # the shard continued on its promoted replica: no second full sync
        assert all(cp.full_resyncs == 1 for cp in cps.values()), cps
        assert cps["s0"].replid == replica.info()["master_replid"]
        assert_target_equals_cluster(cluster, masters)
        with redis.Redis(host=cluster.target.host, port=cluster.target.port) as target:
            for key in counters:
                assert int(target.get(key) or 0) == acked[key], key
    finally:
        runner.stop()
        thread.join(30)
    assert not thread.is_alive()
    assert exit_codes == [0]


@pytest.mark.timeout(120)
def test_cluster_source_into_a_read_only_target_says_so_for_every_shard(
    cluster: Cluster, debian_servers: ServerSet, tmp_path: Path
) -> None:
    """The target is a read-only replica: every shard's runner stops before its source forks,
    and, since the target cannot hold the record, each writes its local report, which the
    monitor's watchers (one per shard) merge: state failed, the reason as the last error."""
    other = debian_servers.start("other")
    cluster.target.client().execute_command("REPLICAOF", other.host, other.port)
    wait_for(lambda: cluster.target.info()["role"] == "slave", 10, "the target to be a replica")
    forks = [m.info("stats")["total_forks"] for m in cluster.masters]
    state_dir = tmp_path / "state"
    runner = ClusterTaskRunner(cluster.task(), TLSConfig(), state_dir=state_dir)
    codes: list[int] = []
    thread = threading.Thread(target=lambda: codes.append(runner.run()), daemon=True)
    thread.start()
    try:
        wait_for(
            lambda: len(list((state_dir / "sync").glob(f"{TASK}@*.json"))) == 3,
            30,
            "a report per shard",
        )
        cfg = config_from_data({"sync": {"tasks": [cluster.task().model_dump(mode="json")]}})
        watchers = task_watchers(cfg, cfg.sync.tasks[0], state_dir=state_dir)
        views = asyncio.run(poll_tasks_once(watchers))
        assert len(views) == 3
        for view in views:
            assert view.state == "failed", view
            assert "read-only replica" in (view.last_error or ""), view
        assert [m.info("stats")["total_forks"] for m in cluster.masters] == forks
    finally:
        runner.stop()
        thread.join(30)
    assert codes == [1]


async def poll_tasks_once(watchers: list[SyncWatcher]) -> list[SyncTaskView]:
    try:
        return list(await asyncio.gather(*(w.poll() for w in watchers)))
    finally:
        for watcher in watchers:
            watcher.close()
