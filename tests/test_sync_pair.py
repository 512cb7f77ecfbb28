"""Bidirectional sync: two tasks A→B and B→A declared as a pair, against real servers.

Every write a pair task makes is recognisable in its target's replication stream (inside a
MULTI with its checkpoint write, or a write to a checkpoint key, or not replicated at all),
so the reverse task drops it and nothing echoes back. What is checked here: the full sync of
one task is not copied back (commandstats of the other side), bring-up on existing data with
`snapshot: skip`, a pair's later full sync never flushes (the other side's own keys stay),
WRITE_SECONDS of writes on both sides end equal with exact counters and exact command counts,
an idle pair goes quiet, and the seeds' double-read layout (per datacenter a read-write Redis
and a read-only copy of the other, read through ReadRouter.local_first).
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field

import pytest
import redis

from replwatch.compare import CompareOptions, compare_databases
from replwatch.config import ConfigError, SyncTask, config_from_data
from replwatch.routing.client import ReadRouter
from replwatch.sync.checkpoint import Checkpoint, checkpoint_key

from .support.datasets import build_dataset, connect
from .support.servers import RedisProcess, ServerSet, wait_for
from .support.syncing import RunnerThread, start

AB, BA = "a-to-b", "b-to-a"
# what a side's clients did not write and a sync task of the pair must not write there either
DATA_COMMANDS = ("restore", "set", "rpush", "sadd", "zadd", "xadd", "del", "flushall", "flushdb")


def pair_tasks(
    a: RedisProcess, b: RedisProcess, ab: dict[str, object], ba: dict[str, object]
) -> tuple[SyncTask, SyncTask]:
    cfg = config_from_data(
        {
            "sync": {
                "tasks": [
                    {"name": AB, "source": a.url, "target": b.url, "pair": BA, **ab},
                    {"name": BA, "source": b.url, "target": a.url, "pair": AB, **ba},
                ]
            }
        }
    )
    return cfg.sync.tasks[0], cfg.sync.tasks[1]


def read_checkpoint(target: RedisProcess, name: str) -> Checkpoint | None:
    with connect(target) as client:
        return Checkpoint.from_hash(name, client.hgetall(checkpoint_key(name)))


def offset_of(proc: RedisProcess) -> tuple[str, int]:
    with connect(proc) as client:
        info = client.info("replication")
        return str(info["master_replid"]), int(info["master_repl_offset"])


def caught_up(source: RedisProcess, target: RedisProcess, name: str) -> bool:
    cp = read_checkpoint(target, name)
    replid, offset = offset_of(source)
    return (
        cp is not None
        and cp.state == "incremental"
        and cp.replid == replid
        and (cp.offset or 0) >= offset
    )


def wait_pair_caught_up(a: RedisProcess, b: RedisProcess, timeout: float = 60) -> None:
    """Both tasks at their source's current offset at the same moment."""
    wait_for(
        lambda: caught_up(a, b, AB) and caught_up(b, a, BA),
        timeout,
        f"the pair to catch up ({read_checkpoint(b, AB)}, {read_checkpoint(a, BA)})",
    )


def command_calls(proc: RedisProcess) -> dict[str, int]:
    with connect(proc) as client:
        stats = client.info("commandstats")
    return {name.removeprefix("cmdstat_"): int(v["calls"]) for name, v in stats.items()}


def reset_stats(*procs: RedisProcess) -> None:
    for proc in procs:
        with connect(proc) as client:
            client.config_resetstat()


def assert_same_both_ways(a: RedisProcess, b: RedisProcess, task: SyncTask) -> None:
    options = CompareOptions(all_dbs=True, recheck=0)
    for left, right in ((task.source, task.target), (task.target, task.source)):
        report = compare_databases(left, right, options)
        assert report.equal, [(d.db, d.key, d.kind, d.detail) for d in report.differences][:20]


def user_keys(proc: RedisProcess, db: int = 0) -> set[bytes]:
    with connect(proc, db) as client:
        return {k for k in client.scan_iter(count=1000) if not k.startswith(b"__replwatch:")}


def start_sides(servers: ServerSet, *options: str) -> tuple[RedisProcess, RedisProcess]:
    extra = ["--repl-backlog-size", "64mb", *options]
    return servers.start("dc-a", extra=extra), servers.start("dc-b", extra=extra)


@pytest.fixture
def sides(debian_servers: ServerSet) -> tuple[RedisProcess, RedisProcess]:
    return start_sides(debian_servers)


# --------------------------------------------------------------------------- config


@pytest.mark.parametrize(
    ("options", "problem"),
    [
        ({"pair": "back", "existing_keys": "flush"}, "existing_keys: flush cannot be used with"),
        ({"pair": "t"}, "pair: must name the reverse task"),
        ({"snapshot": "later"}, "sync.tasks[0].snapshot"),
    ],
)
def test_pair_config_problems_name_the_key(options: dict[str, object], problem: str) -> None:
    data = {
        "sync": {
            "tasks": [{"name": "t", "source": "redis://h:1", "target": "redis://h:2", **options}]
        }
    }
    with pytest.raises(ConfigError) as err:
        config_from_data(data)
    assert problem in str(err.value)


def test_pair_config_accepts_overwrite_and_skip() -> None:
    cfg = config_from_data(
        {
            "sync": {
                "tasks": [
                    {
                        "name": "t",
                        "source": "redis://h:1",
                        "target": "redis://h:2",
                        "pair": "back",
                        "existing_keys": "overwrite",
                        "snapshot": "skip",
                    }
                ]
            }
        }
    )
    assert cfg.sync.tasks[0].snapshot == "skip" and cfg.sync.tasks[0].pair == "back"


# --------------------------------------------------------------------------- no echoes


@pytest.mark.timeout(90)
def test_a_full_sync_into_b_does_not_come_back_to_a(
    sides: tuple[RedisProcess, RedisProcess], runners: list[RunnerThread]
) -> None:
    a, b = sides
    build_dataset(a)
    before = {db: user_keys(a, db) for db in (0, 3)}
    ab, ba = pair_tasks(a, b, {}, {"snapshot": "skip"})
    back = start(ba, runners)  # B→A runs first (B empty, nothing to load)
    wait_for(lambda: caught_up(b, a, BA), 30, "B→A to start")
    reset_stats(a, b)

    start(ab, runners)  # A→B loads A's dataset into B (two dbs, big keys in chunks)
    wait_pair_caught_up(a, b)
    calls = command_calls(a)
    echoed = {name: calls[name] for name in DATA_COMMANDS if name in calls}
    assert not echoed, f"the snapshot written into B came back to A: {echoed}"
    assert back.runner.counters.transactions_dropped > 0  # it saw them, and dropped them
    assert command_calls(b).get("restore", 0) > 0  # the snapshot did go into B
    assert {db: user_keys(a, db) for db in (0, 3)} == before
    assert_same_both_ways(a, b, ab)

    # an idle pair goes quiet: position-only writes are not replicated, so the two tasks do
    # not answer each other's checkpoint writes for ever (only PINGs, every 10 s, remain)
    start_offsets = (offset_of(a)[1], offset_of(b)[1])
    time.sleep(2)
    moved = (offset_of(a)[1] - start_offsets[0], offset_of(b)[1] - start_offsets[1])
    assert max(moved) < 200, f"the idle pair keeps writing to each other: {moved} bytes"


@pytest.mark.timeout(90)
def test_bring_up_on_existing_data_with_snapshot_skip(
    sides: tuple[RedisProcess, RedisProcess], runners: list[RunnerThread]
) -> None:
    a, b = sides
    build_dataset(a)
    ab, ba = pair_tasks(a, b, {}, {"snapshot": "skip"})
    first = start(ab, runners)
    wait_for(lambda: caught_up(a, b, AB), 30, "A→B to load")
    assert first.stop() == 0

    # A moves on while B still has the older values (A→B is down: B lags behind)
    with connect(a) as client:
        client.set("str:small", "newer on A")
        client.hset("hash:small", "name", "newer")
    # loading B's snapshot into A would put B's older values back: B→A refuses by default
    # (A is not empty), and with snapshot: skip it reads B's snapshot without writing it
    refused = start(pair_tasks(a, b, {}, {})[1], runners)
    wait_for(lambda: refused.exit_code is not None, 30, "B→A with snapshot: load to refuse")
    assert refused.exit_code == 1
    assert "already holds" in ((read_checkpoint(a, BA) or Checkpoint(BA)).last_error or "")
    reset_stats(a)

    back = start(ba, runners)
    wait_for(lambda: caught_up(b, a, BA), 30, "B→A to skip the snapshot")
    cp = read_checkpoint(a, BA)
    assert cp is not None and cp.full_resyncs == 1 and back.runner.counters.keys_loaded == 0
    with connect(a) as client:
        assert client.hget(checkpoint_key(BA), "snapshot_skipped") == b"1"
        assert client.get("str:small") == b"newer on A"
        assert client.hget("hash:small", "name") == b"newer"
    assert "restore" not in command_calls(a)

    # then the pair runs both ways: B's writes reach A, A's newer values reach B
    start(ab, runners)
    with connect(b) as client:
        client.set("from-b", "1")
    wait_pair_caught_up(a, b)
    with connect(a) as client:
        assert client.get("from-b") == b"1"
    assert_same_both_ways(a, b, ab)

    # a restart of B→A continues its stream: no second full sync, nothing skipped or loaded
    assert back.stop() == 0
    again = start(ba, runners)
    wait_pair_caught_up(a, b)
    assert again.runner.counters.full_syncs == 0


@pytest.mark.timeout(90)
def test_a_later_full_sync_of_a_pair_task_overwrites_and_never_flushes(
    sides: tuple[RedisProcess, RedisProcess], runners: list[RunnerThread]
) -> None:
    a, b = sides
    with connect(a) as client:
        client.set("a:key", "1")
    ab, ba = pair_tasks(a, b, {}, {"snapshot": "skip"})
    first = start(ab, runners)
    wait_for(lambda: caught_up(a, b, AB), 30, "A→B to load")
    start(ba, runners)
    wait_for(lambda: caught_up(b, a, BA), 30, "B→A to skip its snapshot")
    with connect(b) as client:  # (written before, it would be in the skipped snapshot)
        client.set("b:own", "written on B")
    wait_pair_caught_up(a, b)
    assert first.stop() == 0
    reset_stats(a, b)

    # a new full sync of A→B (afresh, as after a long outage): it must not FLUSHALL B (B's
    # own key would go, and the FLUSHALL would be copied back to A)
    start(ab.model_copy(update={"afresh": True}), runners)
    wait_for(lambda: (read_checkpoint(b, AB) or Checkpoint(AB)).full_resyncs == 2, 30, "resync")
    wait_pair_caught_up(a, b)
    for side in (a, b):
        assert "flushall" not in command_calls(side)
        with connect(side) as client:
            assert client.get("b:own") == b"written on B"
            assert client.get("a:key") == b"1"
    assert "restore" not in command_calls(a) and "set" not in command_calls(a)
    assert_same_both_ways(a, b, ab)


# --------------------------------------------------------------------------- writes both ways

# Both sides write at full speed for WRITE_SECONDS. The sides ping their task every second
# (repl-ping-replica-period 1 instead of 10), so each stream carries ten PINGs among the
# copied writes and the other task's dropped transactions, more than a minute did at the
# default period (a PING read with nothing else to apply makes a position-only checkpoint
# write, the one kind a pair must keep out of the stream). An echo shows at its first round
# trip, milliseconds after the writes begin: as an INCR or SET counted once too often.
WRITE_SECONDS = 10.0
PING_PERIOD = 1  # seconds


@dataclass
class SideWriter:
    """Client threads writing one side's own keys (prefix), counting what they did."""

    proc: RedisProcess
    prefix: str
    stop: threading.Event
    incr: dict[str, int] = field(default_factory=dict)
    sets: int = 0
    threads: list[threading.Thread] = field(default_factory=list)

    def start(self) -> None:
        self.threads = [
            threading.Thread(target=self._counters, daemon=True),
            threading.Thread(target=self._mixed, daemon=True),
        ]
        for thread in self.threads:
            thread.start()

    def _counters(self) -> None:
        """INCR on the side's shared counters, plus SETs, in db 0."""
        with connect(self.proc) as client:
            i = 0
            while not self.stop.is_set():
                pipe = client.pipeline(transaction=False)
                for j in range(20):
                    name = f"{self.prefix}:ctr:{(i + j) % 8}"
                    pipe.execute_command("INCR", name)  # (redis-py's incr() sends INCRBY)
                    self.incr[name] = self.incr.get(name, 0) + 1
                pipe.set(f"{self.prefix}:str:{i % 500}", f"v{i}")
                self.sets += 1
                pipe.execute()
                i += 20

    def _mixed(self) -> None:
        """HSET and DEL in db 1, INCR in db 0 on the same counters: SELECTs in the stream."""
        with connect(self.proc, 1) as db1, connect(self.proc, 0) as db0:
            i = 0
            while not self.stop.is_set():
                db1.hset(f"{self.prefix}:h:{i % 50}", f"f{i % 7}", i)
                if i % 3 == 0:
                    db1.delete(f"{self.prefix}:h:{(i + 25) % 50}")
                name = f"{self.prefix}:ctr:{i % 8}"
                db0.execute_command("INCR", name)
                self.incr[name] = self.incr.get(name, 0) + 1
                i += 1

    def join(self) -> None:
        for thread in self.threads:
            thread.join(10)
            assert not thread.is_alive()


@pytest.mark.timeout(150)
def test_ten_seconds_of_writes_on_both_sides(
    debian_servers: ServerSet, runners: list[RunnerThread]
) -> None:
    a, b = start_sides(debian_servers, "--repl-ping-replica-period", str(PING_PERIOD))
    ab, ba = pair_tasks(a, b, {}, {"snapshot": "skip"})
    start(ab, runners)
    wait_for(lambda: caught_up(a, b, AB), 30, "A→B to start")
    start(ba, runners)
    wait_pair_caught_up(a, b)
    reset_stats(a, b)

    stop = threading.Event()
    writers = [SideWriter(a, "a", stop), SideWriter(b, "b", stop)]
    for writer in writers:
        writer.start()
    stop.wait(WRITE_SECONDS)  # (the length of the run, not a wait for a condition)
    stop.set()
    for writer in writers:
        writer.join()
    wait_pair_caught_up(a, b, timeout=60)

    assert_same_both_ways(a, b, ab)
    on_a, on_b = writers
    for side in (a, b):
        with connect(side) as client:
            for writer in writers:
                for name, made in writer.incr.items():
                    assert int(client.get(name) or 0) == made, (side, name)
    # every INCR and SET ran exactly once on each side: the clients' own plus the other
    # side's copied once (an echo would add calls)
    incr_total = sum(on_a.incr.values()) + sum(on_b.incr.values())
    for side in (a, b):
        calls = command_calls(side)
        assert calls.get("incr", 0) == incr_total, (side, calls.get("incr"), incr_total)
        assert calls.get("set", 0) == on_a.sets + on_b.sets, (side, calls.get("set"))
    assert sum(on_a.incr.values()) > 1000 and sum(on_b.incr.values()) > 1000


# --------------------------------------------------------------------------- double read


def test_double_read_layout_end_to_end(
    debian_servers: ServerSet, runners: list[RunnerThread]
) -> None:
    """Per datacenter a read-write Redis and a read-only copy of the other datacenter's,
    fed by a sync task; applications read the local copy first and fall back to their own
    read-write Redis (ReadRouter.local_first)."""
    rw_1, rw_2 = debian_servers.start("dc1-rw"), debian_servers.start("dc2-rw")
    copy_of_2_in_1 = debian_servers.start("dc1-copy-of-dc2")
    copy_of_1_in_2 = debian_servers.start("dc2-copy-of-dc1")
    cfg = config_from_data(
        {
            "sync": {
                "tasks": [
                    {"name": "dc1-to-dc2", "source": rw_1.url, "target": copy_of_1_in_2.url},
                    {"name": "dc2-to-dc1", "source": rw_2.url, "target": copy_of_2_in_1.url},
                ]
            }
        }
    )
    for task in cfg.sync.tasks:
        start(task, runners)
    routers = {
        "dc1": ReadRouter.local_first(connect(copy_of_2_in_1), connect(rw_1)),
        "dc2": ReadRouter.local_first(connect(copy_of_1_in_2), connect(rw_2)),
    }
    routers["dc1"].write("SET", "user:1", "written in dc1")
    routers["dc2"].write("SET", "user:2", "written in dc2")
    wait_for(lambda: caught_up(rw_1, copy_of_1_in_2, "dc1-to-dc2"), 30, "dc1 → dc2 copy")
    wait_for(lambda: caught_up(rw_2, copy_of_2_in_1, "dc2-to-dc1"), 30, "dc2 → dc1 copy")

    for dc, router in routers.items():
        assert router.read("GET", "user:1") == b"written in dc1", dc
        assert router.read("GET", "user:2") == b"written in dc2", dc
        assert router.read("GET", "user:none") is None, dc
    # each datacenter found the other's key in its local copy, its own key by the fallback
    for router in routers.values():
        assert router.stats.replica_reads == 3
        assert router.stats.fallbacks == {"miss": 2}
        assert router.stats.master_reads == 2
    # the local copy down: reads go to the read-write Redis (its own keys are still there)
    copy_of_2_in_1.stop()
    assert routers["dc1"].read("GET", "user:1") == b"written in dc1"
    assert routers["dc1"].stats.fallbacks.get("replica_error") == 1


def test_read_router_needs_a_table_or_fixed_replicas() -> None:
    with pytest.raises(ValueError, match="table_client or fixed_read_from"):
        ReadRouter("g", None, redis.Redis(), lambda label: redis.Redis())
