"""A sync task never loses a key to the target's own expiry, and replwatch's own keys stay
where they belong, against real servers (issue 17, items 1, 4 and 5):

- keys persisted (PERSIST, GETEX PERSIST, INCR then PERSIST, a longer EXPIRE) shortly before
  their expiry, while the task was stopped or loading its snapshot, are on the target after
  it caught up; keys the source expired are gone; `expire_grace: 0` shows the race is real;
- SWAPDB 0 n, FLUSHDB and FLUSHALL from the source leave the task's checkpoint in db 0 with
  every field, through the plain stream and through a db mapping;
- nothing under `__replwatch:` is copied from a source (snapshot or stream), so in a chain
  A → B → C the task a→b pointed at C after losing B starts with a full sync instead of
  continuing from a stale copy of its checkpoint (it doubled counters before);
- a target that replwatch also watches keeps its own heartbeat key.

The rewrites themselves are table-tested in tests/test_sync_rewrite.py.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest
import redis

from replwatch.config import SyncTask
from replwatch.sync.checkpoint import Checkpoint, checkpoint_key

from .support.datasets import connect
from .support.servers import RedisProcess, ServerSet, require_build, wait_for
from .support.syncing import (
    TASK,
    RunnerThread,
    assert_equal,
    checkpoint,
    make_task,
    source_position,
    start,
    wait_caught_up,
)

FAST = {"reconnect_min": "100ms", "reconnect_max": "500ms"}
# a short TTL; the keys are made persistent at 80 % of it. What happens before that (the
# task catching up and stopping, or a snapshot of 300,000 keys beginning) must fit in those
# 3.2 s: with 1.5 s it did not always on a busy machine, and the keys expired before their
# PERSIST
TTL_MS = 4000


def write_expiring(client: redis.Redis, prefix: str) -> float:
    """12 keys with a TTL of TTL_MS (every 4th a counter at 5); the time they were written."""
    written = time.monotonic()
    for i in range(12):
        if i % 4 == 2:
            client.set(f"{prefix}:n{i}", 5, px=TTL_MS)
        else:
            client.set(f"{prefix}:k{i}", f"v{i}", px=TTL_MS)
    return written


def persist_near_expiry(client: redis.Redis, prefix: str, written: float) -> list[str]:
    """At 80 % of their TTL make 8 of write_expiring's keys persistent, four ways (PERSIST,
    GETEX PERSIST, INCR then PERSIST, a longer EXPIRE); the other 4 expire as set. Returns
    once their original expiry has passed, with the expired keys read once on the source so
    that its lazy expiry deletes them now (and replicates the DEL)."""
    time.sleep(max(0.0, written + TTL_MS * 0.8 / 1000 - time.monotonic()))  # the fault's timing
    for i in range(12):
        if i % 4 == 0:
            assert client.persist(f"{prefix}:k{i}"), "expired before its PERSIST: too slow"
        elif i % 4 == 1:
            assert client.getex(f"{prefix}:k{i}", persist=True) == f"v{i}".encode()
        elif i % 4 == 2:
            assert client.incr(f"{prefix}:n{i}") == 6
            assert client.persist(f"{prefix}:n{i}")
        elif i < 8:
            assert client.pexpire(f"{prefix}:k{i}", 600_000)
    wait_for(
        lambda: time.monotonic() > written + TTL_MS / 1000 + 0.1,
        5,
        "the keys' original expiry to pass",
    )
    gone = [f"{prefix}:k11"]
    assert client.exists(*gone) == 0
    return gone


def assert_survived(target: RedisProcess, prefix: str, gone: list[str]) -> None:
    """Every key the source still has is on the target, as on the source; the expired one
    is gone once the source's DEL arrived."""
    with connect(target) as client:
        for i in range(12):
            if i % 4 == 2:
                assert client.get(f"{prefix}:n{i}") == b"6", i
                assert client.pttl(f"{prefix}:n{i}") == -1
            elif i == 11:
                continue
            else:
                assert client.get(f"{prefix}:k{i}") == f"v{i}".encode(), i
                if i % 4 == 3:
                    assert client.pttl(f"{prefix}:k{i}") > 500_000
                else:
                    assert client.pttl(f"{prefix}:k{i}") == -1, i
        wait_for(lambda: client.exists(*gone) == 0, 10, "the source's DEL to reach the target")


@pytest.mark.timeout(120)
def test_keys_persisted_near_expiry_survive_a_stopped_task(
    redis_servers: ServerSet, runners: list[RunnerThread]
) -> None:
    source = redis_servers.start("source")
    target = redis_servers.start("target")
    task = make_task(source, target, **FAST)
    runner = start(task, runners)
    wait_caught_up(source, target)
    # the keys reach the target with their TTL; then the task stops (a kill, a pause, a
    # restart) across their expiry while the source makes them persistent
    with connect(source) as client:
        written = write_expiring(client, "p")
        wait_caught_up(source, target)
        assert runner.stop() == 0
        gone = persist_near_expiry(client, "p", written)
    start(task, runners)
    wait_caught_up(source, target)
    assert_survived(target, "p", gone)
    assert_equal(source, target)  # (compare allows the target's TTLs the task's grace)


@pytest.mark.timeout(120)
def test_expire_grace_zero_loses_them_as_the_issue_found(
    debian_servers: ServerSet, runners: list[RunnerThread]
) -> None:
    """The same fault with TTLs written exactly: the target expires the keys on its own
    clock and the late PERSIST / INCR find nothing (what replwatch did before the grace)."""
    source = debian_servers.start("source")
    target = debian_servers.start("target")
    task = make_task(source, target, expire_grace=0, **FAST)
    runner = start(task, runners)
    wait_caught_up(source, target)
    with connect(source) as client:
        written = write_expiring(client, "p")
        wait_caught_up(source, target)
        assert runner.stop() == 0
        persist_near_expiry(client, "p", written)
    start(task, runners)
    wait_caught_up(source, target)
    with connect(target) as client:
        assert client.exists("p:k0", "p:k1", "p:k4", "p:k5") == 0
        assert client.get("p:n2") == b"1"  # INCR on an expired key starts again: the source has 6


@pytest.mark.timeout(120)
def test_keys_persisted_during_the_full_sync_survive(
    debian_servers: ServerSet, runners: list[RunnerThread]
) -> None:
    source = debian_servers.start("source")
    target = debian_servers.start("target")
    with connect(source) as client:
        client.execute_command("DEBUG", "POPULATE", 300_000, "bulk", 16)
        written = write_expiring(client, "p")  # in the snapshot
    start(make_task(source, target, **FAST), runners)
    wait_for(
        lambda: (cp := checkpoint(target)) is not None and cp.state == "full_sync",
        30,
        "the full sync to begin",
    )
    # the snapshot is taken; the target stalls while it loads (SIGSTOP), so the keys come
    # after their expiry and the PERSISTs after them in the stream
    target.pause()
    try:
        with connect(source) as client:
            gone = persist_near_expiry(client, "p", written)
    finally:
        target.resume()
    wait_caught_up(source, target, timeout=60)
    assert_survived(target, "p", gone)


def checkpoint_fields(target: RedisProcess, db: int = 0) -> dict[bytes, bytes]:
    with connect(target, db) as client:
        return client.hgetall(checkpoint_key(TASK))


def assert_checkpoint_whole(target: RedisProcess, before: dict[bytes, bytes]) -> Checkpoint:
    """The checkpoint is in db 0 only, with every field it had before (values may move on)."""
    fields = checkpoint_fields(target)
    assert set(before) <= set(fields), sorted(set(before) - set(fields))
    for db in range(1, 16):
        assert not checkpoint_fields(target, db), f"a checkpoint in db {db}"
    cp = Checkpoint.from_hash(TASK, fields)
    assert cp is not None
    return cp


@pytest.mark.timeout(120)
@pytest.mark.parametrize("mapped", [False, True], ids=["plain", "db_map"])
def test_swapdb_and_flushes_keep_the_checkpoint_in_db_0(
    redis_servers: ServerSet, runners: list[RunnerThread], mapped: bool
) -> None:
    source = redis_servers.start("source")
    target = redis_servers.start("target")
    options: dict[str, object] = {"db_map": {7: 8, 8: 7}} if mapped else {}
    with connect(source) as client:
        client.set("zero", "0")
    with connect(source, 5) as client:
        client.set("five", "5")
    task = make_task(source, target, **options)
    start(task, runners)
    wait_caught_up(source, target)
    before = checkpoint_fields(target)
    for name in (b"version", b"keys_loaded", b"full_sync_finished_at", b"expire_grace_ms"):
        assert name in before, name
    with connect(source) as client:
        client.swapdb(0, 5)
        client.incr("after-swap")
    wait_caught_up(source, target)
    assert_checkpoint_whole(target, before)
    with connect(target, 0) as client:
        assert client.get("five") == b"5" and client.get("after-swap") == b"1"
    with connect(target, 5) as client:
        assert client.get("zero") == b"0" and client.exists("five") == 0
    assert_equal(source, target)
    with connect(source, 5) as client:
        client.swapdb(5, 0)  # (from another db, the other way round)
    wait_caught_up(source, target)
    assert_checkpoint_whole(target, before)
    assert_equal(source, target)
    for flush in ("FLUSHDB", "FLUSHALL"):
        with connect(source) as client:
            client.execute_command(flush)
            client.set(f"after-{flush}", 1)
        cp = wait_caught_up(source, target)
        assert_checkpoint_whole(target, before)
        assert cp.keys_loaded is not None and cp.full_resyncs == 1
        assert_equal(source, target)
    with connect(target) as client:
        assert client.get("after-FLUSHALL") == b"1" and client.dbsize() == 2  # + checkpoint


def cp_of(target: RedisProcess, name: str) -> Checkpoint | None:
    with connect(target) as client:
        return Checkpoint.from_hash(name, client.hgetall(checkpoint_key(name)))


def caught_up(source: RedisProcess, target: RedisProcess, name: str) -> bool:
    """Task `name` is incremental at the source's current offset."""
    cp = cp_of(target, name)
    _replid, offset = source_position(source)
    return cp is not None and cp.state == "incremental" and (cp.offset or 0) >= offset


@pytest.mark.timeout(150)
def test_a_chain_repointed_after_losing_its_middle_starts_afresh(
    debian_servers: ServerSet, runners: list[RunnerThread]
) -> None:
    """A → B → C; B is lost; the task a→b is pointed at C. C must not hold a copy of a→b's
    checkpoint (it would continue from where B's snapshot was and apply everything since
    twice): the re-pointed task does a full sync and C ends equal to A."""
    a = debian_servers.start("a")
    b = debian_servers.start("b")
    c = debian_servers.start("c")

    def task(name: str, source: RedisProcess, target: RedisProcess, **options: object) -> SyncTask:
        return make_task(source, target, **options).model_copy(update={"name": name})

    def writes(rounds: int) -> None:
        with connect(a) as client:
            for i in range(rounds):
                client.incr("counter")
                client.rpush("list", i)

    writes(100)
    ab = start(task("ab", a, b), runners)
    wait_for(lambda: caught_up(a, b, "ab"), 30, "a→b to catch up")
    writes(100)
    bc = start(task("bc", b, c), runners)
    wait_for(lambda: caught_up(b, c, "bc"), 30, "b→c to catch up")
    writes(100)
    wait_for(lambda: caught_up(a, b, "ab"), 30, "a→b to catch up")
    wait_for(lambda: caught_up(b, c, "bc"), 30, "b→c to catch up")
    with connect(c) as client:
        assert client.get("counter") == b"300"
        assert client.exists(checkpoint_key("ab")) == 0  # never copied from B
    assert ab.stop() == 0 and bc.stop() == 0
    b.stop()  # B is lost
    writes(50)
    # a→b pointed at C: C's data is a good copy, but no position a→b can continue from
    start(task("ab", a, c, existing_keys="flush"), runners)
    wait_for(lambda: caught_up(a, c, "ab"), 60, "a→c to catch up")
    ab_on_c = cp_of(c, "ab")
    assert ab_on_c is not None and ab_on_c.full_resyncs == 1
    with connect(c) as client:
        assert client.get("counter") == b"350"
        assert client.llen("list") == 350


@pytest.mark.timeout(90)
def test_own_keys_are_never_copied_and_the_targets_own_heartbeat_stays(
    debian_servers: ServerSet, runners: list[RunnerThread]
) -> None:
    source = debian_servers.start("source")
    target = debian_servers.start("target")
    with connect(source) as client:
        client.set("__replwatch:heartbeat", "1700000000000000", px=3_600_000)  # the monitor's
        client.hset("__replwatch:sync:other", mapping={"offset": 5})  # a chain's checkpoint
        client.set("user", "u")
    with connect(target) as client:
        client.set("__replwatch:heartbeat", "target-own", px=3_600_000)
    # the target holds only replwatch's own key: not "existing keys" (refuse would stop)
    start(make_task(source, target), runners)
    wait_caught_up(source, target)
    with connect(source) as client:
        client.set("__replwatch:heartbeat", "1700000000000001", px=3_600_000)
        client.delete("__replwatch:sync:other")
        client.set("user", "u2")
        client.delete("user", "__replwatch:probe")  # own key in a multi-key DEL
        client.set("user", "u3")
    wait_caught_up(source, target)
    with connect(target) as client:
        assert client.get("__replwatch:heartbeat") == b"target-own"
        assert client.exists("__replwatch:sync:other") == 0
        assert client.get("user") == b"u3"
    assert_equal(source, target)


@pytest.mark.timeout(90)
def test_hash_field_ttls_from_valkey_9_arrive_a_grace_later(
    tmp_path: Path, runners: list[RunnerThread]
) -> None:
    """A Valkey 9 source with a hash field that has a TTL: its snapshot for a replica that
    does not say its version is RDB 11, which cannot hold the field, and the source aborts
    it (the task retried for ever). The task says its version (REPLCONF version) and gets
    RDB 80; the field's TTL arrives a grace later, in the snapshot and in the stream."""
    servers = ServerSet(require_build("valkey-9.1"), tmp_path)
    try:
        source = servers.start("source")
        target = servers.start("target")
        with connect(source) as client:
            client.execute_command("HSETEX", "h", "PX", 600_000, "FIELDS", 1, "a", "1")
            client.hset("h", "b", "2")
        task = make_task(source, target)
        start(task, runners)
        wait_caught_up(source, target)
        with connect(source) as client:
            client.execute_command("HPEXPIRE", "h", 900_000, "FIELDS", 1, "b")
        wait_caught_up(source, target)
        grace_ms = task.expire_grace * 1000
        with connect(target) as client:
            a, b = client.execute_command("HPTTL", "h", "FIELDS", 2, "a", "b")
            assert 590_000 + grace_ms < a <= 600_000 + grace_ms
            assert 890_000 + grace_ms < b <= 900_000 + grace_ms
        assert_equal(source, target)
    finally:
        servers.close()
