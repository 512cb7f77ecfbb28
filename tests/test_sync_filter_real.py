"""Sync task filters against real servers: a task with a key prefix allow list, a deny regex,
a denied command, a db allow list and a db mapping copies exactly the allowed keys into the
mapped dbs, through the full sync, the stream (transactions mixing allowed and denied keys,
split DEL/MSET, a RENAME across the rule, SELECT between dbs, FLUSHDB) and a resume, and
counts what it left out per reason in the checkpoint and in /metrics."""

from __future__ import annotations

import asyncio
import re
from typing import Any

import pytest
from prometheus_client import CollectorRegistry, generate_latest

from replwatch.config import TLSConfig
from replwatch.exporter.sync_collector import SyncCollector
from replwatch.sync.checkpoint import checkpoint_key
from replwatch.tasks.watch import SyncStore, SyncWatcher

from .support.datasets import connect
from .support.servers import RedisProcess, ServerSet
from .support.syncing import TASK, RunnerThread, checkpoint, make_task, start, wait_caught_up

OPTIONS: dict[str, Any] = {
    "filters": {
        "keys": {"allow_prefixes": ["app:", "cfg:"], "deny_regex": [":secret"]},
        "commands": {"deny": ["setrange"]},
        "dbs": {"allow": [0, 1, 2]},
    },
    # db 1 keeps its number; db 3 would collide with db 0's new home but is not copied
    "db_map": {0: 3, 2: 5},
}
MAPPED = {0: 3, 1: 1, 2: 5}

Expected = dict[int, dict[bytes, Any]]  # target db -> key -> value (bytes or list)


def target_contents(target: RedisProcess) -> Expected:
    """Every key on the target but the checkpoint, by db: strings and lists."""
    out: Expected = {}
    for db in range(16):
        with connect(target, db) as client:
            for key in client.scan_iter(count=1000):
                if db == 0 and key == checkpoint_key(TASK).encode():
                    continue
                kind = client.type(key)
                if kind == b"string":
                    out.setdefault(db, {})[key] = client.get(key)
                else:
                    assert kind == b"list", (db, key, kind)
                    out.setdefault(db, {})[key] = client.lrange(key, 0, -1)
    return out


def filtered_metrics(task: Any) -> dict[str, float]:
    """replwatch_sync_filtered_total of the task, as a scrape renders it."""

    async def poll() -> Any:
        watcher = SyncWatcher(task, 2.0, TLSConfig())
        try:
            return await watcher.poll()
        finally:
            watcher.close()

    store = SyncStore()
    store.expect([TASK])
    store.put(asyncio.run(poll()))
    registry = CollectorRegistry(auto_describe=False)
    registry.register(SyncCollector(store))
    text = generate_latest(registry).decode()
    out: dict[str, float] = {}
    for labels, value in re.findall(r"^replwatch_sync_filtered_total\{(.*)\} (\S+)$", text, re.M):
        found = dict(re.findall(r'(\w+)="([^"]*)"', labels))
        assert found["task"] == TASK
        out[found["reason"]] = float(value)
    return out


def check(
    source: RedisProcess,
    target: RedisProcess,
    task: Any,
    expected: Expected,
    counts: dict[str, int],
) -> None:
    cp = wait_caught_up(source, target)
    assert target_contents(target) == expected
    assert cp.filtered == counts
    assert filtered_metrics(task) == {reason: float(n) for reason, n in counts.items()}
    assert cp.full_resyncs == 1  # one full sync, then only the stream (also across the stop)


@pytest.mark.timeout(120)
def test_filters_and_db_map_through_full_sync_stream_and_resume(
    redis_servers: ServerSet, runners: list[RunnerThread]
) -> None:
    source = redis_servers.start("source")
    target = redis_servers.start("target")
    task = make_task(source, target, **OPTIONS)
    db0, db1, db2, db7 = (connect(source, db) for db in (0, 1, 2, 7))
    counts: dict[str, int] = {}

    def count(reason: str, n: int = 1) -> None:
        counts[reason] = counts.get(reason, 0) + n

    # ---- the snapshot: keys in several dbs, some filtered
    db0.set("app:1", "v1")
    db0.set("app:2", "v2")
    db0.set("cfg:a", "1")
    db0.set("other:1", "x")  # not under an allowed prefix
    db0.set("app:x:secret", "s")  # denied by the regex
    db0.set("app:ttl", "t", ex=3600)
    db1.set("app:10", "a")
    db1.set("nope", "b")
    db1.rpush("app:list", "a", "b", "c")
    db2.set("cfg:z", "z")
    db7.set("app:7", "x")  # db 7 is not copied
    count("key_not_allowed", 2)
    count("key_regex")
    count("db")
    expected: Expected = {
        3: {b"app:1": b"v1", b"app:2": b"v2", b"cfg:a": b"1", b"app:ttl": b"t"},
        1: {b"app:10": b"a", b"app:list": [b"a", b"b", b"c"]},
        5: {b"cfg:z": b"z"},
    }
    runner = start(task, runners)
    check(source, target, task, expected, counts)
    with connect(target, 3) as client:
        # the source's TTL plus the task's expire_grace (docs/syncer.md, "What the syncer
        # guarantees")
        assert 3600 < client.ttl("app:ttl") <= 3600 + task.expire_grace

    # ---- the stream
    db0.set("app:3", "v3")
    db0.set("other:2", "x")
    count("key_not_allowed")
    db0.setrange("app:1", 0, "X")  # a denied command: the target keeps v1
    count("command")
    pipe = db0.pipeline(transaction=True)  # a transaction mixing allowed and denied keys
    pipe.set("app:4", "v4").set("junk:1", "j").incr("app:cnt").execute()
    count("key_not_allowed")
    pipe = db0.pipeline(transaction=True)  # a transaction with nothing to copy
    pipe.set("junk:2", "j").set("junk:3", "j").execute()
    count("key_not_allowed", 2)
    db1.set("app:11", "b")  # SELECT 1 in the stream (db 1 keeps its number)
    db1.set("nope2", "x")
    count("key_not_allowed")
    db0.delete("app:2", "other:1", "app:x:secret")  # split: DEL app:2 only
    count("key_not_allowed")
    count("key_regex")
    db0.mset({"app:5": "5", "junk:4": "4", "app:6": "6"})  # split: MSET app:5 app:6
    count("key_not_allowed")
    db0.rename("app:3", "junk:3x")  # mixed keys: dropped, the target keeps app:3
    count("mixed_keys")
    db1.lpush("app:list", "z")
    db2.set("cfg:y", "y")
    db2.flushdb()  # the target's db 5 is flushed: cfg:z and cfg:y go
    db2.set("cfg:after", "1")
    db7.set("app:77", "x")
    count("db")
    pipe = db7.pipeline(transaction=True)  # a whole transaction in a db that is not copied
    pipe.set("app:78", "x").set("app:79", "x").execute()
    count("db", 2)
    db0.set("app:last", "L")  # the stream's last SELECT is db 0 (target db 3)
    expected[3].update(
        {b"app:3": b"v3", b"app:4": b"v4", b"app:cnt": b"1", b"app:5": b"5", b"app:6": b"6"}
    )
    expected[3][b"app:last"] = b"L"
    del expected[3][b"app:2"]
    expected[1].update({b"app:11": b"b", b"app:list": [b"z", b"a", b"b", b"c"]})
    expected[5] = {b"cfg:after": b"1"}
    check(source, target, task, expected, counts)

    # ---- stop, write more, start again: the stream continues (in source db 0, no SELECT)
    runner.stop()
    db0.set("app:8", "8")
    db0.set("junk:9", "9")
    count("key_not_allowed")
    db1.delete("app:10", "nope")
    count("key_not_allowed")
    db7.set("app:700", "x")
    count("db")
    db0.mset({"cfg:b": "2", "zzz": "3"})
    count("key_not_allowed")
    expected[3].update({b"app:8": b"8", b"cfg:b": b"2"})
    del expected[1][b"app:10"]
    start(task, runners)
    check(source, target, task, expected, counts)
    for client in (db0, db1, db2, db7):
        client.close()
    assert checkpoint(target) is not None
