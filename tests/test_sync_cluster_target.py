"""A Redis Cluster as the target of a sync task (docs/syncer.md "Redis Cluster as a target"): the
pure parts (slots, tags, routing, redirects, the resume decision) table-driven, then a real
3-master cluster (redis-server 7.0 --cluster-enabled) fed by a plain source: full sync of every
type across many slots, a stream with counters, transactions, multi-key DELs, MSET and FLUSHALL,
kill -9 of the runner and resume, and a slot migration on the target mid-stream."""

from __future__ import annotations

import asyncio
import os
import random
import signal
import socket
import subprocess
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
import redis
import yaml

from replwatch.config import (
    ClusterTarget,
    SyncTask,
    TLSConfig,
    config_from_data,
    iter_secrets,
    node_at,
)
from replwatch.errors import ConfigError, RedisError
from replwatch.keyslot import SLOTS, key_slot, slot_tags
from replwatch.observe.connection import encode_command
from replwatch.sync.checkpoint import Checkpoint, checkpoint_key
from replwatch.sync.cluster_target import MAX_REDIRECTS, ClusterTargetLink, split_payload
from replwatch.sync.slots import (
    CrossSlotError,
    Redirect,
    Route,
    already_applied,
    first_redirect,
    parse_cluster_slots,
    parse_redirect,
    route,
    snapshot_slot,
)
from replwatch.sync.writer import CLIENT_NAME, Batch
from replwatch.tasks.watch import SyncTaskView, SyncWatcher

from .support.clustering import Cluster, assert_same_data
from .support.datasets import build_dataset, connect
from .support.servers import RedisProcess, ServerSet, wait_for
from .support.syncing import TASK, RunnerThread, source_position, start, start_sync_process

# --------------------------------------------------------------------------- pure


@pytest.mark.parametrize(
    ("key", "slot"),
    [
        (b"foo", 12182),
        (b"bar", 5061),
        (b"", 0),
        (b"{user1000}.following", key_slot(b"user1000")),
        (b"{user1000}.followers", key_slot(b"user1000")),
        (b"foo{}{bar}", key_slot(b"foo{}{bar}")),  # empty first tag: the whole key
        (b"foo{{bar}}zap", key_slot(b"{bar")),
        (b"foo{bar}{zap}", key_slot(b"bar")),
    ],
)
def test_key_slot(key: bytes, slot: int) -> None:
    assert key_slot(key) == slot
    assert 0 <= key_slot(key) < SLOTS


def test_slot_tags_cover_every_slot() -> None:
    tags = slot_tags()
    assert len(tags) == SLOTS
    assert all(key_slot(b"__replwatch:sync:t:{%s}" % t.encode()) == s for s, t in enumerate(tags))
    assert max(len(t) for t in tags) <= 6
    assert slot_tags() == tags  # deterministic


def _slots(*keys: bytes) -> list[int]:
    return [key_slot(k) for k in keys]


# two keys in one slot and two in others
A, A2 = b"{a}1", b"{a}2"
B, C = b"b-key", b"c-key"
assert len({key_slot(A), key_slot(B), key_slot(C)}) == 3


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        ((b"SET", A, b"1"), Route("slot", key_slot(A))),
        ((b"set", B, b"1", b"EX", b"10"), Route("slot", key_slot(B))),
        ((b"DEL", A, A2), Route("slot", key_slot(A))),
        (
            (b"DEL", A, B, A2),
            Route("split", parts=((key_slot(A), (b"DEL", A, A2)), (key_slot(B), (b"DEL", B)))),
        ),
        (
            (b"UNLINK", B, C),
            Route("split", parts=((key_slot(B), (b"UNLINK", B)), (key_slot(C), (b"UNLINK", C)))),
        ),
        (
            (b"MSET", A, b"1", B, b"2"),
            Route(
                "split",
                parts=((key_slot(A), (b"MSET", A, b"1")), (key_slot(B), (b"MSET", B, b"2"))),
            ),
        ),
        (
            (b"MSETNX", A, b"1", B, b"2"),
            Route(
                "split",
                parts=((key_slot(A), (b"MSET", A, b"1")), (key_slot(B), (b"MSET", B, b"2"))),
            ),
        ),
        ((b"RENAME", A, A2), Route("slot", key_slot(A))),
        ((b"FLUSHALL",), Route("every_master")),
        ((b"flushdb", b"ASYNC"), Route("every_master")),
        ((b"FUNCTION", b"LOAD", b"code"), Route("every_master")),
        ((b"SCRIPT", b"FLUSH"), Route("every_master")),
        ((b"PUBLISH", b"ch", b"m"), Route("anywhere")),
        ((b"SPUBLISH", B, b"m"), Route("slot", key_slot(B))),
        ((b"EVALSHA", b"sha", b"0"), Route("anywhere")),
        ((b"EVALSHA", b"sha", b"2", A, A2, b"x"), Route("slot", key_slot(A))),
        ((b"COPY", A, A2, b"DB", b"0"), Route("slot", key_slot(A))),
    ],
)
def test_route(argv: tuple[bytes, ...], expected: Route) -> None:
    assert route(argv) == expected


@pytest.mark.parametrize(
    ("argv", "error", "message"),
    [
        ((b"RENAME", B, C), CrossSlotError, "RENAME has keys in 2 cluster slots"),
        ((b"SUNIONSTORE", A, B, C), CrossSlotError, "SUNIONSTORE has keys in 3"),
        ((b"EVALSHA", b"sha", b"2", B, C), CrossSlotError, "EVALSHA"),
        ((b"SWAPDB", b"0", b"1"), ValueError, "SWAPDB names another database"),
        ((b"MOVE", A, b"3"), ValueError, "MOVE names another database"),
        ((b"COPY", A, A2, b"DB", b"2"), ValueError, "COPY … DB names another database"),
    ],
)
def test_route_refuses(argv: tuple[bytes, ...], error: type[Exception], message: str) -> None:
    with pytest.raises(error, match=message):
        route(argv)


@pytest.mark.parametrize(
    "argv",
    [
        (b"SET", b"{u}k", b"v"),
        (b"SET", b"k2", b"v", b"PX", b"100"),
        (b"RESTORE", b"k3", b"0", b"\x00payload", b"REPLACE", b"ABSTTL"),
        (b"RPUSH", b"list", b"a", b"b"),
        (b"SADD", b"set", b"a"),
        (b"ZADD", b"zset", b"1", b"a", b"2", b"b"),
        (b"HSET", b"hash", b"f", b"v", b"g", b"w"),
        (b"HMSET", b"hash2", b"f", b"v"),
        (b"XADD", b"stream", b"1-1", b"f", b"v"),
        (b"PEXPIREAT", b"k", b"1700000000000"),
    ],
)
def test_snapshot_slot_agrees_with_route(argv: tuple[bytes, ...]) -> None:
    """The full sync's shortcut (the key is argv[1]) names the slot route() does."""
    assert route(argv) == Route("slot", snapshot_slot(argv))
    assert snapshot_slot((argv[0].lower(), *argv[1:])) is None  # (not as the loader writes)


@pytest.mark.parametrize("argv", [(b"DEL", b"a", b"b"), (b"FUNCTION", b"LOAD", b"x"), (b"SET",)])
def test_snapshot_slot_leaves_other_commands_to_route(argv: tuple[bytes, ...]) -> None:
    assert snapshot_slot(argv) is None


@pytest.mark.parametrize(
    ("message", "expected"),
    [
        ("MOVED 3999 127.0.0.1:6381", Redirect("MOVED", 3999, "127.0.0.1", 6381)),
        ("ASK 1 10.0.0.2:7000", Redirect("ASK", 1, "10.0.0.2", 7000)),
        ("MOVED 5 [::1]:7000", Redirect("MOVED", 5, "::1", 7000)),
        ("TRYAGAIN Multiple keys request during rehashing of slot", Redirect("TRYAGAIN")),
        ("CLUSTERDOWN The cluster is down", Redirect("CLUSTERDOWN")),
        ("MOVED x 1.2.3.4:5", None),
        ("EXECABORT Transaction discarded because of previous errors.", None),
        ("ERR unknown command", None),
    ],
)
def test_parse_redirect(message: str, expected: Redirect | None) -> None:
    assert parse_redirect(message) == expected


E = redis.exceptions.ResponseError  # any exception type stands for hiredis.ReplyError here


@pytest.mark.parametrize(
    ("replies", "kind"),
    [
        ([b"OK", E("ASK 3 h:1"), b"QUEUED", E("EXECABORT x")], "ASK"),
        ([b"OK", E("TRYAGAIN x"), E("MOVED 3 h:2"), E("EXECABORT x")], "MOVED"),
        ([b"OK", b"QUEUED", E("TRYAGAIN x")], "TRYAGAIN"),
        ([b"OK", E("ERR wrong number of arguments"), E("EXECABORT x")], None),
        ([b"OK"], None),
    ],
)
def test_first_redirect(replies: list[object], kind: str | None) -> None:
    found = first_redirect(replies, E)
    assert (found.kind if found else None) == kind


@pytest.mark.parametrize(
    ("offsets", "slot", "end", "applied"),
    [
        ({}, 5, 100, False),
        ({5: 100}, 5, 100, True),  # the batch that ended exactly there
        ({5: 100}, 5, 99, True),
        ({5: 100}, 5, 101, False),
        ({5: 100}, 6, 50, False),  # another slot: not applied there
    ],
)
def test_already_applied(offsets: dict[int, int], slot: int, end: int, applied: bool) -> None:
    assert already_applied(offsets, slot, end) is applied


def test_parse_cluster_slots_and_split_payload() -> None:
    reply = [
        [0, 5460, [b"10.0.0.1", 7000, b"id1"], [b"10.0.0.4", 7003, b"id4"]],
        [5461, 16383, [b"", 7001, b"id2"]],
    ]
    ranges = parse_cluster_slots(reply, ("asked", 7001))
    assert [(r.start, r.end, r.host, r.port) for r in ranges] == [
        (0, 5460, "10.0.0.1", 7000),
        (5461, 16383, "asked", 7001),
    ]
    with pytest.raises(ValueError, match="no list"):
        parse_cluster_slots(b"x", ("a", 1))
    commands = [(b"SET", b"k", b"v" * 300), (b"SELECT", b"0"), (b"RPUSH", b"l", b"", b"x")]
    payload = b"".join(encode_command(c) for c in commands)
    assert split_payload(payload) == [(list(c), encode_command(c)) for c in commands]


@pytest.mark.parametrize(
    ("target", "options", "problem"),
    [
        ({"cluster": {"startup_nodes": []}}, {}, "target.cluster.startup_nodes: must not be"),
        ({"cluster": {"startup_nodes": ["h:0"]}}, {}, "target.cluster.startup_nodes[0]: port"),
        ({"cluster": {"startup_nodes": ["h:1"]}, "host": "x"}, {}, "target: give the cluster"),
        ({"cluster": {"startup_nodes": ["h:1"]}, "db": 2}, {}, "target.db: a Redis Cluster"),
        ({"cluster": {"startup_nodes": ["h:1"], "seeds": 1}}, {}, "target.cluster.seeds: unknown"),
        ({"cluster": {"startup_nodes": ["h:1"]}}, {"db_map": {3: 5}}, "db_map: a cluster target"),
        ({"cluster": {"startup_nodes": ["h:1"]}}, {"pair": "back"}, "pair: a bidirectional"),
    ],
)
def test_cluster_target_config_errors(
    target: dict[str, object], options: dict[str, object], problem: str
) -> None:
    data = {"sync": {"tasks": [{"name": "c", "source": "s:1", "target": target, **options}]}}
    with pytest.raises(ConfigError) as info:
        config_from_data(data)
    assert f"sync.tasks[0].{problem}" in str(info.value), str(info.value)


def test_cluster_target_config() -> None:
    cfg = config_from_data(
        {
            "sync": {
                "tasks": [
                    {
                        "name": "c",
                        "source": "s:1",
                        "target": {
                            "cluster": {"startup_nodes": ["n1:7000", "redis://:own@n2:7001"]},
                            "password": "shared",
                        },
                        "db_map": {3: 0},
                        "filters": {"dbs": {"allow": [3]}},
                    }
                ]
            }
        }
    )
    target = cfg.sync.tasks[0].target
    assert isinstance(target, ClusterTarget)
    assert (target.host, target.port, target.label) == ("n1", 7000, "cluster:n1:7000")
    assert node_at(target, "n9", 1).password is not None
    assert sorted(iter_secrets(cfg)) == ["own", "shared"]
    assert "shared" not in repr(target) and "own" not in target.redacted_url()


# --------------------------------------------------------------------------- real cluster


@pytest.fixture
def cluster(debian_servers: ServerSet) -> Cluster:
    return Cluster(debian_servers)


def cluster_task(source: RedisProcess, cluster: Cluster, **options: object) -> SyncTask:
    task = {"name": TASK, "source": source.url, "target": cluster.target_config()} | options
    cfg = config_from_data({"sync": {"tasks": [task]}})
    return cfg.sync.tasks[0]


def test_a_session_claims_every_master_and_each_node_it_opens_later(
    debian_servers: ServerSet, cluster: Cluster
) -> None:
    """Exactly once with a cluster target: a new session closes the task's earlier
    connections on every master (what a cut-off session sent and a node has not run yet then
    never runs), and on a node it connects to later (after a failover or resharding) too;
    other tasks' connections stay."""
    task = cluster_task(debian_servers.start("source"), cluster)
    target = task.target
    assert isinstance(target, ClusterTarget)
    name = f"{CLIENT_NAME}:{TASK}"
    old = ClusterTargetLink(target, None, 5, name)
    other = ClusterTargetLink(target, None, 5, f"{name}-other")
    new = ClusterTargetLink(target, None, 5, name)
    later: ClusterTargetLink | None = None
    try:
        masters = list(new.masters)
        assert len(masters) == 3
        for link in (old, other):
            for address in masters:
                link.link(address)  # a connection to every master, as a busy session has
        assert new.close_others_named() == len(masters)
        for address in masters:
            with pytest.raises(RedisError):
                old.links[address].call("PING")
            assert other.links[address].call("PING") == b"PONG"
            assert new.links[address].call("PING") == b"PONG"
        assert new.close_others_named() == 0
        # a session started after the claim; then `new` connects to one master afresh
        later = ClusterTargetLink(target, None, 5, name)
        for address in masters:
            later.link(address)
        new._forget(masters[0])
        new.link(masters[0])
        with pytest.raises(RedisError):
            later.links[masters[0]].call("PING")
        for address in masters[1:]:
            assert later.links[address].call("PING") == b"PONG"
    finally:
        for link in (old, other, new, later):
            if link is not None:
                link.close()


def record(cluster: Cluster) -> Checkpoint | None:
    with cluster.client() as client:
        return Checkpoint.from_hash(TASK, client.hgetall(checkpoint_key(TASK)))


def wait_floor(source: RedisProcess, cluster: Cluster, timeout: float = 30) -> Checkpoint:
    """Until the task record's floor reaches the source's offset."""

    def caught_up() -> Checkpoint | None:
        cp = record(cluster)
        replid, offset = source_position(source)
        if cp and cp.state == "incremental" and cp.replid == replid and (cp.offset or 0) >= offset:
            return cp
        return None

    return wait_for(caught_up, timeout, "the task record to reach the source's offset")


def test_keyslot_matches_the_server(cluster: Cluster) -> None:
    rng = random.Random(7)
    keys = [b"k%d" % i for i in range(300)] + [
        bytes(rng.randrange(256) for _ in range(rng.randrange(1, 12))) for _ in range(300)
    ]
    keys += [b"{tag}x", b"x{tag}", b"{}x", b"{{a}}", b"a{b}{c}", b"\xff{\x00}\xfe"]
    with connect(cluster.first) as client:
        for key in keys:
            assert client.execute_command("CLUSTER", "KEYSLOT", key) == key_slot(key), key


def many_slot_writes(client: redis.Redis, rounds: int) -> None:
    for r in range(rounds):
        pipe = client.pipeline(transaction=False)
        for i in range(20):
            pipe.incr(f"ctr:{i}")
            pipe.hincrby(f"h:{i % 7}", f"f{r % 3}", 2)
        pipe.rpush("log", r)
        pipe.execute()
        tx = client.pipeline(transaction=True)  # keys in several slots: split per slot
        tx.incr("tx:a")
        tx.incr("tx:b")
        tx.sadd("tx:set", r)
        tx.execute()
        if r % 10 == 0:
            client.mset({f"m:{r}:{i}": i for i in range(5)})
            client.delete(*[f"m:{r - 10}:{i}" for i in range(5)], "nothere")


def test_full_sync_and_stream_into_a_cluster(
    debian_servers: ServerSet, cluster: Cluster, runners: list[RunnerThread]
) -> None:
    source = debian_servers.start("source")
    with connect(source) as client:
        build_dataset(source)
        client.execute_command("SELECT", 0)
        with connect(source, 3) as db3:
            db3.flushdb()  # (a cluster has db 0 only; other dbs: test below)
        pipe = client.pipeline(transaction=False)
        for i in range(3000):  # many slots
            pipe.set(f"s:{i}", i)
        pipe.execute()
    task = cluster_task(source, cluster)
    runner = start(task, runners)
    wait_floor(source, cluster)
    assert_same_data(source, cluster)
    with connect(source) as client:
        many_slot_writes(client, 100)
        client.function_load(
            "#!lua name=lib\nredis.register_function('f', function() return 1 end)", replace=True
        )
    wait_floor(source, cluster)
    assert_same_data(source, cluster)
    for node in cluster.nodes:
        with connect(node) as client:
            assert client.function_list(library="lib"), node
    with cluster.client() as cc:
        # the slot checkpoints: one per slot written in the stream, each in its own slot
        cps = [
            k
            for n in cc.get_primaries()
            for k in cc.scan_iter(f"{checkpoint_key(TASK)}:*", target_nodes=n)
        ]
        assert len(cps) > 20
    with connect(source) as client:
        client.flushall()
        many_slot_writes(client, 5)
    cp = wait_floor(source, cluster)
    assert_same_data(source, cluster)
    assert cp.full_resyncs == 1 and cp.task == TASK
    # the FLUSHALL kept the record whole (own_keys.PRESERVE_SCRIPT), not only its core
    assert cp.keys_loaded is not None and cp.keys_loaded >= 3000, cp
    with cluster.client() as cc:
        assert cc.hget(checkpoint_key(TASK), "version") == b"1"
    assert runner.runner.counters.full_syncs == 1 and runner.runner.counters.command_errors == 0
    # the monitor reads the record from the master owning its slot (MOVED followed), even
    # when the first startup node is another one
    owner = cluster.owner(key_slot(checkpoint_key(TASK).encode()))
    others = [n.label for n in cluster.nodes if n is not owner]
    watched = cluster_task(source, cluster, target={"cluster": {"startup_nodes": others}})
    view = asyncio.run(poll_once(watched))
    assert view.target_up and view.state == "incremental", view
    assert view.lag_bytes == 0 and view.applied_commands == cp.applied_commands, view


async def poll_once(task: SyncTask) -> SyncTaskView:
    watcher = SyncWatcher(task, 2.0, TLSConfig())
    try:
        return await watcher.poll()
    finally:
        watcher.close()


@dataclass
class Workload:
    """Counters, a list (a doubled or lost RPUSH shows) and cross-slot transactions on the
    source, in a thread; `hot`: keys of one hash tag (one slot) written in every round."""

    client: redis.Redis
    hot: str = "hot"
    rounds: int = 0
    error: BaseException | None = None

    def __post_init__(self) -> None:
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        try:
            while not self._stop.is_set():
                r = self.rounds
                pipe = self.client.pipeline(transaction=False)
                for i in range(10):
                    pipe.incr(f"w:{i}")
                pipe.incr(f"{{{self.hot}}}:ctr")
                pipe.rpush(f"{{{self.hot}}}:list", r)
                pipe.set(f"{{{self.hot}}}:new:{r}", r)  # a new key of the slot every round
                pipe.rpush("w:list", r)
                pipe.execute()
                tx = self.client.pipeline(transaction=True)
                tx.incr("tx:a")
                tx.incr(f"{{{self.hot}}}:tx")
                tx.hincrby("tx:h", "n", 1)
                tx.execute()
                if r % 25 == 0:
                    self.client.delete(*[f"{{{self.hot}}}:new:{r - k}" for k in range(5, 10)])
                self.rounds += 1
        except BaseException as exc:  # reported by the test
            self.error = exc

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(10)
        assert self.error is None, self.error
        assert self.rounds > 0


def write_config(path: Path, source: RedisProcess, cluster: Cluster) -> Path:
    task = {"name": TASK, "source": source.url, "target": cluster.target_config()}
    path.write_text(yaml.safe_dump({"sync": {"tasks": [task]}}))
    return path


@pytest.mark.timeout(240)
def test_kill_9_mid_stream_resumes_exactly(
    debian_servers: ServerSet, cluster: Cluster, tmp_path: Path
) -> None:
    source = debian_servers.start("source", extra=["--repl-backlog-size", "64mb"])
    config = write_config(tmp_path / "sync.yaml", source, cluster)
    log = tmp_path / "sync.log"
    proc = start_sync_process(config, log)
    rng = random.Random()
    try:
        wait_floor(source, cluster)
        with connect(source) as client:
            work = Workload(client)
            try:
                for _ in range(5):
                    wait_for(lambda: (record(cluster) or Checkpoint("x")).applied_commands > 0, 30)
                    threading.Event().wait(rng.uniform(0.2, 1.0))  # a random moment
                    os.kill(proc.pid, signal.SIGKILL)
                    proc.wait(10)
                    proc = start_sync_process(config, log)
            finally:
                work.stop()
        cp = wait_floor(source, cluster, 60)
        assert cp.full_resyncs == 1, cp  # every restart continued the stream
        assert_same_data(source, cluster)
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
    assert "Traceback" not in log.read_text()


def test_slot_migration_mid_stream_follows_moved_and_ask(
    debian_servers: ServerSet, cluster: Cluster, runners: list[RunnerThread]
) -> None:
    source = debian_servers.start("source")
    hot_slot = key_slot(b"hot")
    runner = start(cluster_task(source, cluster), runners)
    wait_floor(source, cluster)
    with connect(source) as client:
        work = Workload(client)
        try:
            wait_for(lambda: work.rounds > 50, 30)
            owner = cluster.owner(hot_slot)
            other = next(n for n in cluster.nodes if n is not owner)
            cluster.migrate_slot(hot_slot, other, pause=0.05)  # writes meet the half-moved slot
            wait_for(lambda: work.rounds > 100, 30)
            # the task has applied writes of the slot made after it moved (to its old owner
            # first: MOVED) before it moves back; a task lagging on a busy machine applied
            # them only after the slot was home again, and saw no MOVED at all
            _replid, moved_at = source_position(source)
            wait_for(
                lambda: (cp := record(cluster)) is not None and (cp.offset or 0) >= moved_at,
                30,
                "the task to apply the writes made while the slot was away",
            )
            cluster.migrate_slot(hot_slot, owner, pause=0.0)
            rounds = work.rounds
            wait_for(lambda: work.rounds > rounds + 50, 30)
        finally:
            work.stop()
    cp = wait_floor(source, cluster)
    assert_same_data(source, cluster)
    with cluster.client() as client:
        counts = client.hgetall(checkpoint_key(TASK))
    assert int(counts.get(b"cluster_redirects:moved", 0)) > 0, counts
    # the half-moved slot: ASK to the importing node, TRYAGAIN while its keys are split
    assert int(counts.get(b"cluster_redirects:ask", 0)) > 0, counts
    assert cp.full_resyncs == 1
    assert runner.runner.counters.sessions == 1  # followed in the session, no restart


def redirects_followed(cluster: Cluster, kind: str) -> int:
    """The task record's count of `kind` redirects followed (cluster_redirects:<kind>)."""
    with cluster.client() as client:
        return int(client.hget(checkpoint_key(TASK), f"cluster_redirects:{kind}") or 0)


def test_stop_is_honoured_while_the_cluster_answers_tryagain(
    debian_servers: ServerSet, cluster: Cluster, runners: list[RunnerThread]
) -> None:
    """A slot left half-migrated (MIGRATING on its owner, IMPORTING elsewhere) answers
    TRYAGAIN to a write of two of its keys when only one is on the owner: the task retries
    (for up to RETRY_FOR, 120 s), and stop() ends it at once instead of after that."""
    source = debian_servers.start("source")
    runner = start(cluster_task(source, cluster), runners)
    with connect(source) as client:
        client.set("{t}a", "1")
    wait_floor(source, cluster)
    slot = key_slot(b"{t}a")
    owner = cluster.owner(slot)
    other = next(n for n in cluster.nodes if n is not owner)
    with connect(owner) as old, connect(other) as new:
        new.execute_command("CLUSTER", "SETSLOT", slot, "IMPORTING", cluster.node_id(owner))
        old.execute_command("CLUSTER", "SETSLOT", slot, "MIGRATING", cluster.node_id(other))
    with connect(source) as client:
        client.mset({"{t}a": "2", "{t}b": "2"})
    wait_for(lambda: redirects_followed(cluster, "tryagain") > 0, 30, "a TRYAGAIN")
    started = time.monotonic()
    assert runner.stop() == 0
    assert time.monotonic() - started < 5, "stop() waited for the cluster's retries"


def test_ask_then_tryagain_for_longer_than_the_bounce_limit_keeps_the_session(
    debian_servers: ServerSet, cluster: Cluster, runners: list[RunnerThread]
) -> None:
    """A slot half moved with one key of a write on each side answers ASK (old owner: none of
    the keys) then TRYAGAIN (importing node: one of them) for as long as the move takes. That
    is a migration in progress, not nodes disagreeing: the task waits it out in the session
    however many ASKs that takes (a CI run once ended the session after 16, and the floor left
    behind was gone from the source's backlog: a full resync), and the write lands once."""
    source = debian_servers.start("source")
    runner = start(cluster_task(source, cluster), runners)
    with connect(source) as client:
        client.set("{t}a", "1")
    wait_floor(source, cluster)
    sessions = runner.runner.counters.sessions
    slot = key_slot(b"{t}a")
    other = next(n for n in cluster.nodes if n is not cluster.owner(slot))
    owner = cluster.begin_migration(slot, other)
    with connect(owner) as old:
        assert cluster.migrate_keys(old, slot, other, 10) == 1  # {t}a now on the importing node
    with connect(source) as client:
        client.mset({"{t}a": "2", "{t}b": "2"})
    wait_for(
        lambda: (
            redirects_followed(cluster, "ask") > MAX_REDIRECTS + 2
            and redirects_followed(cluster, "tryagain") > MAX_REDIRECTS + 2
        ),
        30,
        f"more than {MAX_REDIRECTS} rounds of ASK then TRYAGAIN",
    )
    cluster.finish_migration(slot, owner, other)
    cp = wait_floor(source, cluster)
    assert runner.runner.counters.sessions == sessions, cp.last_error
    assert not cp.last_error, cp.last_error
    assert cp.full_resyncs == 1
    assert_same_data(source, cluster)


def test_a_batch_bounced_between_nodes_ends_the_session(
    debian_servers: ServerSet, cluster: Cluster, runners: list[RunnerThread]
) -> None:
    """Two masters that each say the other owns a slot (the owner was told the slot is on
    another node; that node never claimed it) bounce a batch with MOVED for ever: the task
    gives the batch up after MAX_REDIRECTS, ends the session with the reason, and retries."""
    source = debian_servers.start("source")
    runner = start(cluster_task(source, cluster), runners)
    wait_floor(source, cluster)
    slot = key_slot(b"bounce")
    owner = cluster.owner(slot)
    other = next(n for n in cluster.nodes if n is not owner)
    with connect(owner) as client:
        client.execute_command("CLUSTER", "SETSLOT", slot, "NODE", cluster.node_id(other))
    sessions = runner.runner.counters.sessions
    with connect(source) as client:
        client.set("bounce", "1")
    wait_for(
        lambda: runner.runner.counters.sessions > sessions,
        30,
        "the session to end and start again",
    )
    with cluster.client() as client:
        error = (client.hget(checkpoint_key(TASK), "last_error") or b"").decode()
    assert f"redirected a stream batch for slot {slot} {MAX_REDIRECTS} times" in error, error
    assert "disagree on the slot's owner" in error
    with connect(owner) as client:  # (heal it, so the task catches up)
        client.execute_command("CLUSTER", "SETSLOT", slot, "NODE", cluster.node_id(owner))
    wait_floor(source, cluster)
    assert_same_data(source, cluster)


def test_writes_the_cluster_cannot_take_fail_the_task(
    debian_servers: ServerSet, cluster: Cluster, runners: list[RunnerThread]
) -> None:
    source = debian_servers.start("source")
    runner = start(cluster_task(source, cluster), runners)
    wait_floor(source, cluster)
    with connect(source) as client:
        client.set("a", 1)
        client.rename("a", "b")  # a and b are in different slots
    wait_for(lambda: runner.exit_code == 1, 30, "the task to fail")
    cp = record(cluster)
    assert cp is not None and cp.state == "failed"
    assert cp.last_error is not None and "RENAME has keys in 2 cluster slots" in cp.last_error
    # db 3 of the source: a clear error too
    with cluster.client() as client:
        client.delete(checkpoint_key(TASK))
    runner = start(cluster_task(source, cluster, existing_keys="flush"), runners)
    wait_floor(source, cluster)
    with connect(source, 3) as client:
        client.set("x", 1)
    wait_for(lambda: runner.exit_code == 1, 30, "the task to fail")
    cp = record(cluster)
    assert cp is not None and cp.last_error is not None
    assert "wrote to db 3" in cp.last_error and "db_map" in cp.last_error, cp.last_error


def test_non_empty_cluster_target_refused_or_flushed(
    debian_servers: ServerSet, cluster: Cluster, runners: list[RunnerThread]
) -> None:
    source = debian_servers.start("source")
    with connect(source) as client:
        client.mset({f"src:{i}": i for i in range(200)})
    with cluster.client() as client:
        for i in range(50):
            client.set(f"foreign:{i}", i)
    runner = start(cluster_task(source, cluster), runners)
    wait_for(lambda: runner.exit_code == 1, 30, "the task to refuse the target")
    cp = record(cluster)
    assert cp is not None and cp.last_error is not None and "50 keys" in cp.last_error
    start(cluster_task(source, cluster, existing_keys="flush"), runners)
    wait_floor(source, cluster)
    assert_same_data(source, cluster)  # the foreign keys are gone from every master


@dataclass
class ChunkSender:
    """Sends a full-sync chunk of a list as the loader does (link.send): RPUSH of three
    numbers from `first`; `lengths` gets each chunk's reply (the list's length) by `first`."""

    link: ClusterTargetLink
    key: bytes
    lengths: dict[int, object]

    def __call__(self, first: int) -> None:
        values = (b"%d" % v for v in range(first, first + 3))
        batch = Batch(1, lambda r: self.lengths.update({first: r[0]}), "snapshot")
        self.link.send(encode_command((b"RPUSH", self.key, *values)), batch)


def test_snapshot_commands_of_a_slot_keep_their_order_across_a_move(
    debian_servers: ServerSet, cluster: Cluster
) -> None:
    """The full sync's commands of one slot are applied in the order sent, also while the
    slot moves: chunks sent to the old owner come back MOVED and are resent, and a chunk sent
    after the first MOVED changed the slot map must not overtake them (the RPUSH chunks of a
    big list: their order is the list's). The link's slot map is made stale by moving the slot
    after it was read; the replies are taken as a loader takes them (wait_some: one batch).
    The link of before applied 0, 6, 3 here."""
    task = cluster_task(debian_servers.start("source"), cluster)
    assert isinstance(task.target, ClusterTarget)
    key = b"{o}list"
    slot = key_slot(key)
    owner = cluster.owner(slot)
    other = next(n for n in cluster.nodes if n is not owner)
    link = ClusterTargetLink(task.target, None, 5, f"{CLIENT_NAME}:order")
    lengths: dict[int, object] = {}  # a chunk's first value → RPUSH's reply (the length)
    chunk = ChunkSender(link, key, lengths)

    try:
        assert link.owner(slot) == (owner.host, owner.port)
        cluster.finish_migration(slot, owner, other)  # (no keys to move: the slot is empty)
        chunk(0)
        chunk(3)  # both to the old owner, which answers MOVED
        # one batch answered (MOVED): a link that followed it at once sent chunk 6 to the new
        # owner ahead of chunk 3, still on its way back from the old owner
        link.wait_some()
        chunk(6)
        link.drain()
    finally:
        link.close()
    assert lengths == {0: 3, 3: 6, 6: 9}
    with connect(other) as client:
        assert client.lrange(key, 0, -1) == [b"%d" % v for v in range(9)]


def test_snapshot_commands_asked_elsewhere_keep_their_order(
    debian_servers: ServerSet, cluster: Cluster
) -> None:
    """A slot half moved, its key already on the importing node: the full sync's chunks sent
    to the old owner are answered ASK and go to the importing node (after ASKING) one at a
    time, in the order sent, and so does a chunk sent while they wait."""
    task = cluster_task(debian_servers.start("source"), cluster)
    assert isinstance(task.target, ClusterTarget)
    key = b"{q}list"
    slot = key_slot(key)
    owner = cluster.owner(slot)
    other = next(n for n in cluster.nodes if n is not owner)
    with connect(owner) as client:
        client.rpush(key, b"first")
    link = ClusterTargetLink(task.target, None, 5, f"{CLIENT_NAME}:ask-order")
    lengths: dict[int, object] = {}  # a chunk's first value → RPUSH's reply (the length)
    chunk = ChunkSender(link, key, lengths)

    try:
        cluster.begin_migration(slot, other)
        with connect(owner) as old:
            assert cluster.migrate_keys(old, slot, other, 10) == 1
        chunk(0)
        chunk(3)
        link.wait_some()
        chunk(6)
        link.drain()
        assert link.redirects["ASK"] >= 3
    finally:
        link.close()
        cluster.finish_migration(slot, owner, other)
    assert lengths == {0: 4, 3: 7, 6: 10}
    with connect(other) as client:
        assert client.lrange(key, 0, -1) == [b"first", *(b"%d" % v for v in range(9))]


def test_snapshot_commands_follow_their_slots_unanswered_ones_when_the_map_changes(
    debian_servers: ServerSet, cluster: Cluster
) -> None:
    """A slot's chunk is on its way to the old owner (asleep here, so it stays unanswered)
    when the slot map changes under the link (a reload after another slot's MOVED, in a
    resharding): the slot's next chunk goes after it, to the same node, and does not land
    on the new owner first. The link of before sent it there and applied 3, 0."""
    task = cluster_task(debian_servers.start("source"), cluster)
    assert isinstance(task.target, ClusterTarget)
    key = b"{r}list"
    slot = key_slot(key)
    owner = cluster.owner(slot)
    other = next(n for n in cluster.nodes if n is not owner)
    link = ClusterTargetLink(task.target, None, 5, f"{CLIENT_NAME}:pin")
    lengths: dict[int, object] = {}  # a chunk's first value → RPUSH's reply (the length)
    chunk = ChunkSender(link, key, lengths)

    def answers(node: RedisProcess) -> bool:
        """PING answered within 50 ms (a raw socket: redis-py retries a timeout)."""
        with socket.create_connection((node.host, node.port), timeout=1) as probe:
            probe.settimeout(0.05)
            probe.sendall(b"PING\r\n")
            try:
                return probe.recv(16) == b"+PONG\r\n"
            except TimeoutError:
                return False

    try:
        cluster.finish_migration(slot, owner, other)  # after the link read the map
        with socket.create_connection((owner.host, owner.port)) as sleeper:
            sleeper.sendall(encode_command((b"DEBUG", b"SLEEP", b"1")))
            wait_for(lambda: not answers(owner), 5, "the old owner to be asleep", interval=0.01)
            chunk(0)  # to the old owner, unanswered while it sleeps
            link.slot_owner[slot] = (other.host, other.port)  # the map reloaded meanwhile
            chunk(3)
            link.drain()
    finally:
        link.close()
    assert lengths == {0: 3, 3: 6}
    with connect(other) as client:
        assert client.lrange(key, 0, -1) == [b"%d" % v for v in range(6)]


@pytest.mark.timeout(120)
def test_a_slot_moved_while_the_full_sync_loads_it(
    debian_servers: ServerSet, cluster: Cluster, runners: list[RunnerThread]
) -> None:
    """From outside: a target slot moves (IMPORTING, MIGRATE of what is there, NODE) while
    the full sync writes its big lists chunk by chunk (write_mode commands: RESTORE would
    write each whole); the task follows ASK and MOVED with the real loader and the cluster
    ends equal to the source, every list in order."""
    source = debian_servers.start("source")
    names = [f"{{m}}:list{i}" for i in range(3)]
    with connect(source) as client:
        for name in names:
            for first in range(0, 200_000, 10_000):
                client.rpush(name, *range(first, first + 10_000))
        client.set("elsewhere", "1")
    slot = key_slot(b"m")
    owner = cluster.owner(slot)
    other = next(n for n in cluster.nodes if n is not owner)
    runner = start(cluster_task(source, cluster, write_mode="commands"), runners)
    with connect(owner) as old:

        def loaded() -> int:
            return sum(int(old.llen(name)) for name in names)

        wait_for(lambda: loaded() > 0, 30, "the lists to be loading", interval=0.005)
        assert loaded() < len(names) * 200_000, "loaded before the move began"
        cluster.migrate_slot(slot, other)
    cp = wait_floor(source, cluster, 60)
    assert cp.full_resyncs == 1 and runner.runner.counters.sessions == 1, cp.last_error
    assert_same_data(source, cluster)
    # the full sync's redirects are in the task record's counts
    assert redirects_followed(cluster, "ask") + redirects_followed(cluster, "moved") > 0
