"""A Redis Cluster on both sides: a cluster source (one reader and checkpoint per source
shard) into a cluster target (per-slot batches and checkpoints). The target cluster ends
holding exactly the source cluster's data, counters exact, also after the task is stopped
and started again."""

from __future__ import annotations

import threading

import pytest

from replwatch.config import TLSConfig, config_from_data
from replwatch.sync.cluster import ClusterTaskRunner

from .support.clustering import Cluster, all_keys, logical
from .support.servers import ServerSet, wait_for
from .support.syncing import TASK


def same_data(source: Cluster, target: Cluster) -> bool:
    with source.client() as src, target.client() as dst:
        keys = all_keys(src)
        if keys != all_keys(dst):
            return False
        return all(logical(src, k) == logical(dst, k) for k in keys)


def start_runner(source: Cluster, target: Cluster) -> tuple[ClusterTaskRunner, threading.Thread]:
    task = config_from_data(
        {
            "sync": {
                "tasks": [
                    {
                        "name": TASK,
                        "source": {"cluster": {"startup_nodes": [source.first.label]}},
                        "target": target.target_config(),
                        "reconnect_min": "200ms",
                        "reconnect_max": "1s",
                    }
                ]
            }
        }
    ).sync.tasks[0]
    runner = ClusterTaskRunner(task, TLSConfig(), io_timeout=5)
    thread = threading.Thread(target=runner.run, daemon=True)
    thread.start()
    return runner, thread


def stop_runner(runner: ClusterTaskRunner, thread: threading.Thread) -> None:
    runner.stop()
    thread.join(30)
    assert not thread.is_alive(), "the cluster task did not stop"


@pytest.mark.timeout(180)
def test_cluster_source_into_cluster_target(debian_servers: ServerSet) -> None:
    source = Cluster(debian_servers, prefix="src")
    target = Cluster(debian_servers, prefix="dst")
    counters = [f"counter:{i}" for i in range(30)]  # spread over the slots of every shard
    with source.client() as client:
        for i in range(600):
            client.set(f"string:{i}", f"value-{i}")
            client.rpush(f"list:{i % 40}", i)
        for key in counters:
            client.incr(key)
        client.hset("hash:{tagged}", mapping={f"f{i}": i for i in range(50)})
    runner, thread = start_runner(source, target)
    try:
        wait_for(lambda: same_data(source, target), 60, "the snapshot of every shard")
        with source.client() as client:
            for _round in range(40):
                for key in counters:
                    client.incr(key)
            for i in range(0, 600, 7):
                client.delete(f"string:{i}")
        wait_for(lambda: same_data(source, target), 60, "the stream of every shard")
    finally:
        stop_runner(runner, thread)
    # stopped: more writes, then a new run continues from the per-shard checkpoints
    with source.client() as client:
        for _round in range(20):
            for key in counters:
                client.incr(key)
    runner, thread = start_runner(source, target)
    try:
        wait_for(lambda: same_data(source, target), 60, "the writes made while stopped")
    finally:
        stop_runner(runner, thread)
    with target.client() as client:
        assert [int(client.get(k) or 0) for k in counters] == [61] * len(counters)
        assert client.hlen("hash:{tagged}") == 50
