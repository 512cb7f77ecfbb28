"""The pure rules behind a sync task's checks before PSYNC, its stop messages, the reason of a
full resync and the local task report (replwatch/sync/preflight.py, resync_reason.py,
task_report.py, watch.unfinished_copy_lag), table-driven. The same cases against real
servers: tests/test_sync_preflight.py."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from replwatch.sync.checkpoint import Checkpoint
from replwatch.sync.preflight import (
    MemoryShortfall,
    ServerFacts,
    answers_resp,
    eviction_message,
    evicts,
    free_for_copy,
    memory_problem,
    needed_after_oom,
    not_redis,
    oom_message,
    readonly_message,
    refusal_kind,
    shortfall_problem,
    snapshot_plan,
    source_problem,
    target_problem,
)
from replwatch.sync.resync_reason import SourceHistory, full_resync_reason
from replwatch.sync.task_report import TaskReport, TaskReporter, merge_report, read_report
from replwatch.tasks.watch import unfinished_copy_lag

MIB = 1 << 20
T = "10.0.0.2:6379"  # a target label
S = "10.0.0.1:6379"  # a source label


# --------------------------------------------------------------------------- which server


@pytest.mark.parametrize(
    ("line", "resp"),
    [
        (b"+PONG", True),
        (b"-NOAUTH Authentication required.", True),
        (b"$4", True),
        (b"*1", True),
        (b"HTTP/1.0 400 Bad request syntax ('*1')", False),
        (b"SSH-2.0-OpenSSH_9.2", False),
        (b"\x00\x01 garbage", False),
        (b"", False),
    ],
)
def test_answers_resp(line: bytes, resp: bool) -> None:
    assert answers_resp(line) is resp


def test_not_redis_names_the_side_and_quotes_the_answer() -> None:
    assert not_redis("source", S, b"HTTP/1.0 400 Bad request") == (
        f"source {S} is not a Redis server (answered 'HTTP/1.0 400 Bad request' to PING)"
    )
    message = not_redis("target", T, b"\x00\xffA" + b"x" * 200)
    assert message.startswith(f"target {T} is not a Redis server (answered '??Ax")
    assert "\n" not in message and len(message) < 150


INFO_REPLICA = "# Replication\r\nrole:slave\r\nmaster_host:10.0.0.9\r\nmaster_port:6380\r\n"


@pytest.mark.parametrize(
    ("sections", "cluster_target", "expected"),
    [
        (["redis_mode:standalone\r\n", "role:master\r\n"], False, None),
        (["redis_mode:sentinel\r\n", None], False, "is a Redis Sentinel, not a data server"),
        (["redis_mode:cluster\r\n", "role:master\r\n"], False, "is a Redis Cluster node"),
        (["redis_mode:cluster\r\n", "role:master\r\n"], True, None),
        (["", INFO_REPLICA + "slave_read_only:1\r\n"], False, "read-only replica of 10.0.0.9:6380"),
        (
            ["", INFO_REPLICA + "replica_read_only:0\r\n"],
            False,
            "writable replica of 10.0.0.9:6380",
        ),
        (["", "role:slave\r\n"], False, "is a read-only replica: it refuses"),
        ([None, None], False, None),  # INFO refused: nothing known, nothing refused
        (["server_mode:sentinel\r\n"], False, "Sentinel"),  # Valkey 8+'s field name
    ],
)
def test_target_problem(
    sections: list[str | None], cluster_target: bool, expected: str | None
) -> None:
    problem = target_problem(T, ServerFacts.parse(*sections), cluster_target)
    if expected is None:
        assert problem is None
        return
    assert problem is not None and expected in problem, problem
    assert problem.startswith(f"target {T} ") and "\n" not in problem


def test_a_replica_message_says_what_to_do() -> None:
    problem = target_problem(T, ServerFacts.parse(INFO_REPLICA), False)
    assert problem is not None
    assert f"REPLICAOF NO ONE on {T}" in problem and "start the task again" in problem
    writable = target_problem(T, ServerFacts.parse(INFO_REPLICA + "slave_read_only:0"), False)
    assert writable is not None and "its master would overwrite or wipe" in writable


def test_source_problem() -> None:
    assert source_problem(S, ServerFacts.parse("redis_mode:standalone\r\nrole:slave")) is None
    sentinel = source_problem(S, ServerFacts.parse("redis_mode:sentinel"))
    assert sentinel is not None and "sentinel: {addresses: [10.0.0.1:6379]" in sentinel


def test_server_facts_parse() -> None:
    facts = ServerFacts.parse(
        "redis_mode:standalone\r\nuptime_in_seconds:42\r\n",
        "role:master\r\n",
        "used_memory:1048576\r\nused_memory_dataset:524288\r\nmaxmemory:20971520\r\n"
        "maxmemory_policy:noeviction\r\n",
    )
    assert facts == ServerFacts(
        mode="standalone",
        role="master",
        maxmemory=20 * MIB,
        policy="noeviction",
        used_memory=MIB,
        dataset=MIB // 2,
        uptime=42,
    )
    assert ServerFacts.parse("maxmemory:lots\r\n").maxmemory is None


# --------------------------------------------------------------------------- memory


@pytest.mark.parametrize(
    ("existing_keys", "pair", "ours_before", "plan"),
    [
        ("refuse", False, False, "if_foreign"),
        ("flush", False, False, "if_foreign"),
        ("overwrite", False, False, "overwrite"),
        ("refuse", False, True, "flush"),
        ("flush", False, True, "flush"),
        ("overwrite", False, True, "overwrite"),
        ("refuse", True, True, "overwrite"),  # a pair never flushes its target
        ("refuse", True, False, "if_foreign"),
    ],
)
def test_snapshot_plan(existing_keys: str, pair: bool, ours_before: bool, plan: str) -> None:
    assert snapshot_plan(existing_keys, pair, ours_before) == plan


def facts(maxmemory: int, used: int, dataset: int, policy: str = "noeviction") -> ServerFacts:
    return ServerFacts(
        role="master", maxmemory=maxmemory, policy=policy, used_memory=used, dataset=dataset
    )


@pytest.mark.parametrize(
    ("target", "flushes", "free"),
    [
        (facts(20 * MIB, 5 * MIB, 4 * MIB), True, 19 * MIB),  # the flush frees the data
        (facts(20 * MIB, 5 * MIB, 4 * MIB), False, 15 * MIB),
        (facts(20 * MIB, 25 * MIB, 4 * MIB), False, 0),  # over the limit already
        (facts(0, 5 * MIB, 4 * MIB), True, None),  # no limit
        (ServerFacts(maxmemory=MIB), True, None),  # used memory not known
    ],
)
def test_free_for_copy(target: ServerFacts, flushes: bool, free: int | None) -> None:
    assert free_for_copy(target, flushes) == free


def test_memory_problem_gives_the_numbers() -> None:
    target = facts(20 * MIB, MIB + MIB // 2, MIB // 2)  # 19 MiB free after the flush
    assert memory_problem(T, target, 19 * MIB, True, "x") is None  # fits exactly
    problem = memory_problem(T, target, 30 * MIB, True, "the source's used_memory_dataset")
    assert problem == (
        f"target {T} cannot hold the copy (maxmemory 20.0 MiB, noeviction): 19.0 MiB free "
        "after the full sync's flush, about 30.0 MiB needed (the source's "
        f"used_memory_dataset): raise maxmemory on {T} to at least 31.0 MiB (or free memory "
        "there), then start the task again"
    )
    # nothing flushed (overwrite): the keys there may be the ones the snapshot replaces, so
    # only a copy that could not fit even then is refused; an eviction policy is no way out
    evicting = facts(20 * MIB, 15 * MIB, 14 * MIB, "allkeys-lru")
    assert memory_problem(T, evicting, 10 * MIB, False, "x") is None
    problem = memory_problem(T, evicting, 25 * MIB, False, "x")
    assert problem is not None
    assert "19.0 MiB free even with every key on it replaced (existing_keys: overwrite)" in problem
    assert "with allkeys-lru it would evict synced keys to make room" in problem
    assert memory_problem(T, facts(0, MIB, 0), 100 * MIB, True, "x") is None  # no limit


SHORT = MemoryShortfall(20 * MIB, "noeviction", 34 * MIB)


@pytest.mark.parametrize(
    ("target", "refused"),
    [
        (facts(20 * MIB, MIB, 0), True),  # nothing changed
        (facts(64 * MIB, MIB, 0), False),  # maxmemory raised: it may fit now
        (facts(30 * MIB, MIB, 0), False),  # raised, too little: the estimate decides then
        (facts(20 * MIB, MIB, 0, "allkeys-lru"), False),  # the policy changed
        (facts(0, MIB, 0), False),  # no limit any more
        (ServerFacts(), True),  # INFO memory not readable: no change can be seen
    ],
)
def test_shortfall_problem(target: ServerFacts, refused: bool) -> None:
    problem = shortfall_problem(T, target, SHORT, True)
    assert (problem is not None) is refused
    if problem is not None:
        assert "did not hold the copy in an earlier attempt (maxmemory 20.0 MiB, noeviction;" in (
            problem
        )
        assert "about 34.0 MiB needed" in problem and "--afresh" in problem


def test_shortfall_fields_round_trip() -> None:
    assert SHORT.flat() == [
        *("oom_maxmemory", 20 * MIB),
        *("oom_policy", "noeviction"),
        *("oom_needed", 34 * MIB),
    ]
    assert MemoryShortfall.of(SHORT.as_dict()) == SHORT
    assert MemoryShortfall.of({"oom_maxmemory": "x", "oom_policy": "p", "oom_needed": 1}) is None
    assert MemoryShortfall.of({"oom_maxmemory": 1, "oom_policy": "p"}) is None


@pytest.mark.parametrize(
    ("args", "needed"),
    [
        # 10 MiB for 1,000 of 4,000 keys: 40 MiB for all of them
        ((MIB, 11 * MIB, 1000, 4000, 19 * MIB, 30 * MIB), 40 * MIB),
        # the source's dataset says more
        ((MIB, 11 * MIB, 1000, 4000, 19 * MIB, 50 * MIB), 50 * MIB),
        # nothing measured: more than was free, at least
        ((None, None, 0, 0, 19 * MIB, None), 19 * MIB + 1),
        ((MIB, 11 * MIB, 0, 4000, None, None), 1),
    ],
)
def test_needed_after_oom(args: tuple[Any, ...], needed: int) -> None:
    assert needed_after_oom(*args) == needed


@pytest.mark.parametrize(
    ("message", "kind"),
    [
        (
            f"target {T} refused a snapshot write: OOM command not allowed when used memory > "
            "'maxmemory'.",
            "oom",
        ),
        ("OOM command not allowed when used memory > 'maxmemory'.", "oom"),
        ("READONLY You can't write against a read only replica.", "readonly"),
        (f"target {T} refused a batch of the stream: READONLY You can't write", "readonly"),
        (f"connection to {T} failed: Connection reset by peer", None),
        ("ERR unknown command 'FUNCTION'", None),
        ("WRONGTYPE Operation against a key holding the wrong kind of value", None),
    ],
)
def test_refusal_kind(message: str, kind: str | None) -> None:
    assert refusal_kind(message) == kind


def test_stop_messages() -> None:
    target = facts(20 * MIB, 20 * MIB, 19 * MIB)
    assert oom_message(T, target, (31_204, 60_000), int(34.1 * MIB)) == (
        f"target {T} ran out of memory (maxmemory 20.0 MiB, noeviction) after 31,204 of "
        f"60,000 keys of the snapshot (the copy needs about 34.1 MiB): raise maxmemory on {T} "
        "(or free memory there), then start the task again"
    )
    stream = oom_message(T, target, None, None)
    assert "ran out of memory (maxmemory 20.0 MiB, noeviction) applying the replication" in stream
    assert "maxmemory unknown" in oom_message(T, ServerFacts(), (1, 0), None)
    replica = readonly_message(T, ServerFacts.parse(INFO_REPLICA))
    assert replica.startswith(f"target {T} refused a write: it is a read-only replica of 10.0.0.9")


@pytest.mark.parametrize(
    ("target", "may_evict"),
    [
        (ServerFacts(maxmemory=8 * MIB, policy="allkeys-lru"), True),
        (ServerFacts(maxmemory=8 * MIB, policy="volatile-ttl"), True),
        (ServerFacts(maxmemory=8 * MIB, policy="noeviction"), False),
        (ServerFacts(maxmemory=0, policy="allkeys-lru"), False),  # no limit: never evicts
        (ServerFacts(), True),  # INFO refused: unknown counts as may
    ],
)
def test_evicts(target: ServerFacts, may_evict: bool) -> None:
    assert evicts(target) is may_evict


def test_eviction_message() -> None:
    target = ServerFacts(maxmemory=8 * MIB, policy="allkeys-lru", used_memory=8 * MIB)
    assert eviction_message(T, target, 18_865) == (
        f"target {T} evicted 18,865 keys while the task ran (maxmemory 8.0 MiB, allkeys-lru): "
        f"the copy is incomplete; raise maxmemory on {T} (or set maxmemory-policy noeviction "
        "there), then start the task again (it begins with a full sync)"
    )


# --------------------------------------------------------------------------- full resync


REPLID = "a" * 40
OTHER = "b" * 40


def history(**fields: Any) -> SourceHistory:
    base: dict[str, Any] = {
        "replid": REPLID,
        "offset": 5_000_000,
        "backlog_first": 4_000_001,
        "backlog_histlen": 1_000_000,
        "backlog_size": 1 << 20,
    }
    return SourceHistory(**{**base, **fields})


@pytest.mark.parametrize(
    ("offset", "source", "age", "expected"),
    [
        (
            1_000_000,
            history(),
            5.0,
            [
                "the source's backlog no longer holds the copy's position",
                "continue after offset 1,000,000 of replid aaaaaaaaaaaa…",
                f"the backlog of {S} holds offsets 4,000,001–5,000,000",
                "(repl-backlog-size 1.0 MiB), 2.9 MiB of writes are gone from it",
                f"raise repl-backlog-size on {S}",
            ],
        ),
        (
            6_000_000,
            history(),
            5.0,
            ["the copy is ahead of the source", "the source only at offset 5,000,000"],
        ),
        (
            4_500_000,
            history(backlog_active=False),
            5.0,
            ["has no replication backlog"],
        ),
        (
            4_500_000,
            history(replid=OTHER, uptime=3),
            60.0,
            ["restarted 3s ago with a new replication history (replid bbbbbbbbbbbb…"],
        ),
        (
            4_500_000,
            history(replid=OTHER, uptime=3600),
            60.0,
            ["is on another replication history", "another server answers"],
        ),
        (
            4_500_000,
            history(replid=OTHER, replid2=REPLID, second_offset=4_000_000),
            5.0,
            ["switched to a new replication history at offset 3,999,999 (a failover"],
        ),
        (
            4_500_000,
            history(),
            5.0,
            ["although its INFO just before held that position", "changed in between"],
        ),
        (4_500_000, None, 5.0, ["why is not known: it refused INFO replication"]),
    ],
)
def test_full_resync_reason(
    offset: int, source: SourceHistory | None, age: float, expected: list[str]
) -> None:
    reason = full_resync_reason(S, REPLID, offset, source, REPLID, age)
    for part in expected:
        assert part in reason, reason
    assert "\n" not in reason


def test_source_history_parse() -> None:
    text = (
        "role:master\r\nmaster_replid:" + REPLID + "\r\nmaster_replid2:" + "0" * 40 + "\r\n"
        "master_repl_offset:100\r\nsecond_repl_offset:-1\r\nrepl_backlog_active:1\r\n"
        "repl_backlog_size:16384\r\nrepl_backlog_first_byte_offset:1\r\n"
        "repl_backlog_histlen:100\r\n"
    )
    parsed = SourceHistory.parse(text, "uptime_in_seconds:7\r\n")
    assert parsed == SourceHistory(REPLID, "0" * 40, 100, -1, True, 1, 100, 16384, 7)
    assert SourceHistory.parse(None) is None
    assert SourceHistory.parse("role:master\r\n") is None


# --------------------------------------------------------------------------- the report


def report(state: str, at: int, error: str | None = None) -> TaskReport:
    return TaskReport("t", state, at, 1, error)


@pytest.mark.parametrize(
    ("cp_state", "cp_error", "cp_at", "rep", "shown"),
    [
        ("full_sync", None, 1000, None, ("full_sync", None)),
        ("full_sync", None, 1000, report("failed", 2000, "oom"), ("failed", "oom")),
        ("incremental", "old", 3000, report("failed", 2000, "oom"), ("incremental", "old")),
        ("unknown", None, None, report("failed", 2000, "readonly"), ("failed", "readonly")),
        ("incremental", None, 1000, report("stopped", 2000), ("stopped", None)),
        # a retrying task's report: its error shows, its state does not override
        (
            "incremental",
            "old",
            1000,
            report("incremental", 2000, "reset"),
            ("incremental", "reset"),
        ),
    ],
)
def test_merge_report(
    cp_state: str,
    cp_error: str | None,
    cp_at: int | None,
    rep: TaskReport | None,
    shown: tuple[str, str | None],
) -> None:
    assert merge_report(cp_state, cp_error, cp_at, rep) == shown


def test_report_file_round_trip(tmp_path: Path) -> None:
    path = tmp_path / "state" / "sync" / "t.json"
    TaskReporter(path, "t").write("failed", 1234, "x" * 600, "why", SHORT)
    got = read_report(path)
    assert got is not None
    assert (got.task, got.state, got.updated_at) == ("t", "failed", 1234)
    assert got.last_error == "x" * 500 and got.full_resync_reason == "why"
    assert got.memory_shortfall == SHORT
    assert (tmp_path / "state").stat().st_mode & 0o777 == 0o700  # (a state dir it created)
    TaskReporter(None, "t").write("failed", 1, "nowhere")  # no path: nothing, no error
    path.write_text("{not json")
    assert read_report(path) is None
    assert read_report(tmp_path / "missing.json") is None


# --------------------------------------------------------------------------- lag


def test_unfinished_copy_lag() -> None:
    cp = Checkpoint(
        "t",
        state="full_sync",
        full_sync_started_at=100_000,
        rdb_bytes_total=1000,
        rdb_bytes_loaded=400,
    )
    assert cp.snapshot_incomplete
    # the stream since the snapshot + the snapshot not loaded; at least since it began
    assert unfinished_copy_lag(cp, 50, 0.0, 130.0) == (650, 30.0)
    assert unfinished_copy_lag(cp, None, None, 130.0) == (None, 30.0)
    assert unfinished_copy_lag(cp, 50, 99.0, 130.0) == (650, 99.0)
    diskless = Checkpoint("t", state="full_sync", full_sync_started_at=100_000, rdb_bytes_total=0)
    assert unfinished_copy_lag(diskless, 50, 0.0, 101.5) == (50, 1.5)
    done = Checkpoint("t", state="failed", full_sync_started_at=1, full_sync_finished_at=2)
    assert not done.snapshot_incomplete
    half = Checkpoint("t", state="failed", full_sync_started_at=3, full_sync_finished_at=2)
    assert half.snapshot_incomplete
