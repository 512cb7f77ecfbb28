"""`replwatch compare` against real servers: a rich dataset (every type, small and large
encodings, TTLs, db 0 and 3, streams with consumer groups) compares equal on all four builds
(and from Redis 6.2 to 7.0); each kind of difference, introduced alone, is reported alone;
sampling, the rate limit, rechecks of keys in flight, JSON, usage errors, unreachable servers
and passwords that must show up nowhere. Plus table tests of the pure helpers."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import redis

from replwatch import compare
from replwatch.compare import (
    EXIT_DIFFERENT,
    EXIT_EQUAL,
    EXIT_INCOMPLETE,
    EXIT_USAGE,
    CompareOptions,
    compare_databases,
)
from replwatch.compare.display import display_key
from replwatch.compare.ratelimit import TokenBucket
from replwatch.compare.rules import ttl_finding
from replwatch.compare.scan import parse_keyspace
from replwatch.compare.value_rules import (
    compare_stream_entries,
    compare_stream_meta,
    compare_whole_value,
    describe_zset_difference,
    first_difference,
    next_stream_id,
)
from replwatch.config import parse_redis_url

from .support.datasets import BINARY_KEY, TTL_SECONDS, build_dataset, connect
from .support.servers import (
    RedisProcess,
    ServerSet,
    closed_port,
    require_build,
    wait_for,
    wait_synced,
)

SECRET = "cmp-s3cr3t-pw"

# ----------------------------------------------------------------------------- dataset


@dataclass
class Pair:
    source: RedisProcess
    target: RedisProcess
    keys: int
    password: str | None = None

    def url(self, proc: RedisProcess, db: int | None = None) -> str:
        auth = f":{self.password}@" if self.password else ""
        return f"redis://{auth}{proc.host}:{proc.port}" + ("" if db is None else f"/{db}")

    def args(self, *extra: str) -> list[str]:
        return ["--source", self.url(self.source), "--target", self.url(self.target), *extra]

    def target_db(self, db: int = 0) -> redis.Redis:
        return connect(self.target, db, self.password)

    def source_db(self, db: int = 0) -> redis.Redis:
        return connect(self.source, db, self.password)


def start_pair(servers: ServerSet, *, dataset: bool = True) -> Pair:
    source = servers.start("source")
    target = servers.start("target")
    keys = 0
    if dataset:
        keys = build_dataset(source)
        assert build_dataset(target) == keys
    return Pair(source, target, keys)


@pytest.fixture
def pair(debian_servers: ServerSet) -> Pair:
    return start_pair(debian_servers)


@dataclass
class Run:
    code: int
    out: str
    err: str

    @property
    def report(self) -> dict[str, Any]:
        data = json.loads(self.out)
        assert isinstance(data, dict)
        return data

    @property
    def found(self) -> set[tuple[int, str, str]]:
        return {(d["db"], d["key"], d["kind"]) for d in self.report["differences"]}


def run(capsys: pytest.CaptureFixture[str], argv: list[str]) -> Run:
    capsys.readouterr()
    code = compare.main(argv)
    captured = capsys.readouterr()
    return Run(code, captured.out, captured.err)


def one_line(text: str) -> str:
    lines = text.strip().splitlines()
    assert len(lines) == 1, f"expected one line, got: {text!r}"
    return lines[0]


# ----------------------------------------------------------------------------- equal


def test_rich_dataset_is_equal_on_every_build(
    redis_servers: ServerSet, capsys: pytest.CaptureFixture[str]
) -> None:
    pair = start_pair(redis_servers)
    result = run(capsys, pair.args("--all-dbs", "--json"))
    assert result.code == EXIT_EQUAL, result.out
    report = result.report
    assert report["equal"] is True
    assert report["dbs"] == [0, 3]
    assert report["checked"] == pair.keys == report["equal_keys"]
    assert (report["missing"], report["extra"], report["different"]) == (0, 0, 0)
    assert report["differences"] == []

    # tiny chunks: every collection is compared chunk by chunk, chunk edges everywhere
    chunked = run(capsys, pair.args("--all-dbs", "--chunk", "7", "--batch", "3"))
    assert chunked.code == EXIT_EQUAL, chunked.out
    assert chunked.out.splitlines()[0].endswith("EQUAL")

    # the default compares the URLs' db (0) only
    db0 = run(capsys, pair.args("--json"))
    assert db0.code == EXIT_EQUAL
    with pair.source_db(0) as client:
        assert db0.report["checked"] == client.dbsize()


def test_redis_6_2_source_equals_redis_7_0_target(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Scores print differently (6.2: 1.1000000000000001, 7.0: 1.1) and XINFO reports fewer
    fields on 6.2: neither is a difference."""
    with (
        ServerSet(require_build("redis-6.2"), tmp_path / "old") as old,
        ServerSet(require_build("redis-7.0"), tmp_path / "new") as new,
    ):
        source, target = old.start("source"), new.start("target")
        keys = build_dataset(source)
        assert build_dataset(target) == keys
        pair = Pair(source, target, keys)
        result = run(capsys, pair.args("--all-dbs", "--json"))
        assert result.code == EXIT_EQUAL, result.out
        assert result.report["checked"] == keys


# ----------------------------------------------------------------------------- one difference


@dataclass(frozen=True)
class Case:
    name: str
    change: Callable[[Pair], object]
    expected: frozenset[tuple[int, str, str]]
    detail: str = ""  # a substring of the (single) difference's detail


def _on_target(action: Callable[[redis.Redis], object], db: int = 0) -> Callable[[Pair], object]:
    def change(pair: Pair) -> object:
        with pair.target_db(db) as client:
            return action(client)

    return change


def _replace_set_member(client: redis.Redis) -> None:
    client.srem("set:big", "member-1234")
    client.sadd("set:big", "intruder")


def _retype(client: redis.Redis) -> None:
    client.delete("str:small")
    client.rpush("str:small", "hello")


def _stream_with_one_changed_entry(pair: Pair) -> None:
    """Same length, ids, last id and entries-added on both sides; entry 9-900's fields differ:
    only the chunked XRANGE comparison can see it."""
    for proc, changed in ((pair.source, b"same"), (pair.target, b"changed")):
        with connect(proc) as client:
            pipe = client.pipeline(transaction=False)
            for i in range(1, 1201):
                pipe.xadd("stream:fields", {"v": changed if i == 900 else b"same"}, id=f"9-{i}")
            pipe.execute()


def _move_to_db5(client: redis.Redis) -> None:
    assert client.move("db3:list", 5)


CASES = [
    Case(
        "missing key",
        _on_target(lambda c: c.delete("hash:small")),
        frozenset({(0, "hash:small", "missing")}),
        "missing on target (source type hash)",
    ),
    Case(
        "extra key",
        _on_target(lambda c: c.set("only:on:target", "1")),
        frozenset({(0, "only:on:target", "extra")}),
        "on target only (type string)",
    ),
    Case(
        "changed string",
        _on_target(lambda c: c.set("str:small", "hellO")),
        frozenset({(0, "str:small", "value")}),
        "first difference at byte 4",
    ),
    Case(
        "changed big string (chunked)",
        _on_target(lambda c: c.setrange("str:big", 2_000_000, "!")),
        frozenset({(0, "str:big", "value")}),
        "first difference at byte 2000000",
    ),
    Case(
        "list element 700 of 1000",
        _on_target(lambda c: c.lset("list:big", 700, "changed")),
        frozenset({(0, "list:big", "value")}),
        "first difference at index 700",
    ),
    Case(
        "list one element shorter",
        _on_target(lambda c: c.rpop("list:small")),
        frozenset({(0, "list:small", "value")}),
        "length 4 vs 3",
    ),
    Case(
        "member missing from a large set",
        _on_target(lambda c: c.srem("set:big", "member-1999")),
        frozenset({(0, "set:big", "value")}),
        "cardinality 2000 vs 1999",
    ),
    Case(
        "member replaced in a large set (SSCAN + SMISMEMBER)",
        _on_target(_replace_set_member),
        frozenset({(0, "set:big", "value")}),
        "1 source member missing on target (e.g. member-1234)",
    ),
    Case(
        "small set member replaced",
        _on_target(lambda c: c.srem("set:int", 99) + c.sadd("set:int", 100)),
        frozenset({(0, "set:int", "value")}),
        "1 member missing on target (e.g. 99); 1 member not on source (e.g. 100)",
    ),
    Case(
        "hash field changed in a large hash (HSCAN + HMGET)",
        _on_target(lambda c: c.hset("hash:big", "field-500", "other")),
        frozenset({(0, "hash:big", "value")}),
        "field field-500 differs",
    ),
    Case(
        "hash field changed in a small hash",
        _on_target(lambda c: c.hset("hash:small", "lang", "fr")),
        frozenset({(0, "hash:small", "value")}),
        "field lang differs",
    ),
    Case(
        "zset score changed",
        _on_target(lambda c: c.zadd("zset:big", {"m-3": 5000.5})),
        frozenset({(0, "zset:big", "value")}),
        "member m-3: score 3.3000000000000003 vs 5000.5",
    ),
    Case(
        "small zset score changed",
        _on_target(lambda c: c.zadd("zset:small", {"b": 2.25})),
        frozenset({(0, "zset:small", "value")}),
        "member b: score 2.5 vs 2.25",
    ),
    Case(
        "stream entry missing",
        _on_target(lambda c: c.xdel("stream:big", "2-600")),
        frozenset({(0, "stream:big", "value")}),
        "length 1200 vs 1199",
    ),
    Case(
        "stream entry fields differ (chunked XRANGE)",
        _stream_with_one_changed_entry,
        frozenset({(0, "stream:fields", "value")}),
        "entry 9-900: fields differ",
    ),
    Case(
        "consumer group last-delivered id",
        _on_target(lambda c: c.xgroup_setid("stream:small", "g1", "1-5")),
        frozenset({(0, "stream:small", "value")}),
        "group g1 last-delivered-id 1-3 vs 1-5",
    ),
    Case(
        "consumer group missing",
        _on_target(lambda c: c.xgroup_destroy("stream:big", "gb")),
        frozenset({(0, "stream:big", "value")}),
        "group gb missing on target",
    ),
    Case(
        "TTL missing on target",
        _on_target(lambda c: c.persist("str:ttl")),
        frozenset({(0, "str:ttl", "ttl")}),
        "s vs none",
    ),
    Case(
        "TTL beyond the tolerance",
        _on_target(lambda c: c.expire("hash:big", TTL_SECONDS - 5)),
        frozenset({(0, "hash:big", "ttl")}),
        "(tolerance 2s)",
    ),
    Case(
        "TTL within the tolerance",
        _on_target(lambda c: c.expire("hash:big", TTL_SECONDS - 1)),
        frozenset(),
    ),
    Case(
        "type mismatch",
        _on_target(_retype),
        frozenset({(0, "str:small", "type")}),
        "type string vs list",
    ),
    Case(
        "value changed in db 3",
        _on_target(lambda c: c.set("db3:str", "THREE"), db=3),
        frozenset({(3, "db3:str", "value")}),
        "first difference at byte 0",
    ),
    Case(
        "key in another db",
        _on_target(_move_to_db5, db=3),
        frozenset({(3, "db3:list", "missing"), (5, "db3:list", "extra")}),
    ),
    Case(
        "binary key changed",
        _on_target(lambda c: c.set(BINARY_KEY, b"\x00\xff\xff")),
        frozenset({(0, repr(BINARY_KEY), "value")}),
        "first difference at byte 2",
    ),
]


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_one_difference_is_reported_alone(
    case: Case, pair: Pair, capsys: pytest.CaptureFixture[str]
) -> None:
    case.change(pair)
    result = run(capsys, pair.args("--all-dbs", "--json", "--recheck-delay", "50ms"))
    report = result.report
    assert result.found == case.expected, report["differences"]
    if not case.expected:
        assert result.code == EXIT_EQUAL
        assert report["equal"] is True
        return
    assert result.code == EXIT_DIFFERENT
    assert report["equal"] is False
    kinds = [kind for _, _, kind in case.expected]
    assert report["missing"] == kinds.count("missing")
    assert report["extra"] == kinds.count("extra")
    assert report["different"] == len(kinds) - kinds.count("missing") - kinds.count("extra")
    for kind in ("missing", "extra", "type", "value", "ttl"):
        assert report["by_kind"][kind] == kinds.count(kind)
    if case.detail:
        (difference,) = report["differences"]
        assert case.detail in difference["detail"]


def test_human_output_summary_then_differences(
    pair: Pair, capsys: pytest.CaptureFixture[str]
) -> None:
    with pair.target_db() as client:
        client.delete("str:small", "list:small", "set:small", "hash:small", "zset:small")
        client.lset("list:big", 700, "x")
        client.persist("str:ttl")
    result = run(capsys, [*pair.args("--max-differences", "3", "--recheck", "0")])
    assert result.code == EXIT_DIFFERENT
    lines = result.out.splitlines()
    assert lines[0].startswith(f"source {pair.source.label} vs target {pair.target.label}")
    assert lines[0].endswith("(db 0): DIFFERENT")
    assert "5 missing on target, 2 different (value 1, ttl 1); 0 extra on target" in lines[1]
    assert lines[2] == "differences (7):"
    listed = [line for line in lines if line.startswith("  db 0  ")]
    assert len(listed) == 3
    assert lines[-1] == "  ... 4 more not shown (--max-differences 3)"

    as_json = run(capsys, pair.args("--max-differences", "3", "--recheck", "0", "--json"))
    report = as_json.report
    assert (report["missing"], report["different"]) == (5, 2)
    assert len(report["differences"]) == 3
    assert report["differences_omitted"] == 4


def test_json_schema(pair: Pair, capsys: pytest.CaptureFixture[str]) -> None:
    with pair.target_db() as client:
        client.delete("str:small")
    report = run(capsys, pair.args("--json", "--recheck", "0")).report
    expected_types = {
        "equal": bool,
        "source": str,
        "target": str,
        "dbs": list,
        "target_dbs": list,
        "checked": int,
        "equal_keys": int,
        "missing": int,
        "extra": int,
        "different": int,
        "by_kind": dict,
        "sampled": bool,
        "ignored": int,
        "own_keys_ignored": int,
        "differences": list,
        "differences_omitted": int,
        "seconds": float,
        "expire_grace_seconds": float,
        "source_expire_grace_seconds": float,
    }
    assert set(report) == set(expected_types)
    for name, kind in expected_types.items():
        assert isinstance(report[name], kind), name
    assert report["source"] == pair.source.label and report["target"] == pair.target.label
    assert report["dbs"] == [0] and report["target_dbs"] == [0]
    assert report["differences"] == [
        {
            "db": 0,
            "key": "str:small",
            "kind": "missing",
            "detail": "missing on target (source type string)",
        }
    ]
    assert report["checked"] == report["equal_keys"] + 1
    assert set(report["by_kind"]) == {"missing", "extra", "type", "value", "ttl"}


def test_db_option_and_url_db(pair: Pair, capsys: pytest.CaptureFixture[str]) -> None:
    with pair.target_db(0) as client:
        client.delete("str:small")
    assert run(capsys, pair.args("--db", "3")).code == EXIT_EQUAL
    assert run(capsys, pair.args("--db", "0")).code == EXIT_DIFFERENT
    by_url = [
        "--source",
        pair.url(pair.source, 3),
        "--target",
        pair.url(pair.target, 3),
        "--json",
    ]
    result = run(capsys, by_url)
    assert result.code == EXIT_EQUAL
    assert result.report["dbs"] == [3] and result.report["checked"] == 4


def test_different_dbs_in_the_urls(debian_servers: ServerSet) -> None:
    source, target = debian_servers.start("source"), debian_servers.start("target")
    with connect(source, 2) as a, connect(target, 7) as b:
        a.set("k", "v")
        b.set("k", "v")
    report = compare_databases(
        parse_redis_url(f"{source.url}/2"), parse_redis_url(f"{target.url}/7")
    )
    assert report.equal and report.checked == 1
    assert [(p.source, p.target) for p in report.dbs] == [(2, 7)]


def test_internal_keys_and_ignore_globs(pair: Pair, capsys: pytest.CaptureFixture[str]) -> None:
    with pair.source_db() as src, pair.target_db() as dst:
        src.set("__replwatch:heartbeat", "1000")
        dst.set("__replwatch:heartbeat", "999")  # a follower behind: not a difference
        src.set("tmp:1", "a")
        dst.set("tmp:2", "b")
    plain = run(capsys, pair.args())
    assert plain.code == EXIT_DIFFERENT
    # replwatch's own key is left out without a note: no --ignore was given (issue 21)
    assert "note:" not in plain.out and "ignore" not in plain.out, plain.out
    result = run(capsys, pair.args("--ignore", "tmp:*", "--json"))
    assert result.code == EXIT_EQUAL, result.out
    assert result.report["ignored"] == 2
    assert result.report["own_keys_ignored"] == 1
    assert result.report["checked"] == pair.keys - 4  # db 3 not compared, ignored not counted
    human = run(capsys, pair.args("--ignore", "tmp:*"))
    assert human.code == EXIT_EQUAL
    notes = [line for line in human.out.splitlines() if line.startswith("note:")]
    assert notes == ["note: --ignore tmp:* left out 1 source key"], human.out
    with pair.source_db() as src:
        src.set("tmp:3", "c")
        src.set("cache:1", "d")
    with pair.target_db() as dst:
        dst.set("cache:1", "d")
    two = run(capsys, pair.args("--ignore", "tmp:*", "--ignore", "cache:*"))
    assert two.code == EXIT_EQUAL, two.out
    assert [ln for ln in two.out.splitlines() if ln.startswith("note:")] == [
        "note: --ignore tmp:* cache:* left out 3 source keys"
    ]


# ----------------------------------------------------------------------------- sampling, rate


def _fill(proc: RedisProcess, count: int) -> None:
    with connect(proc) as client:
        pipe = client.pipeline(transaction=False)
        for i in range(count):
            pipe.set(f"key:{i}", i)
        pipe.execute()


def test_sample_checks_only_sampled_keys(
    debian_servers: ServerSet, capsys: pytest.CaptureFixture[str]
) -> None:
    pair = start_pair(debian_servers, dataset=False)
    _fill(pair.source, 500)
    _fill(pair.target, 500)
    with pair.target_db() as client:
        client.set("extra:not:checked", "1")
    sampled = run(capsys, pair.args("--sample", "50", "--json"))
    assert sampled.code == EXIT_EQUAL, sampled.out
    report = sampled.report
    assert report["sampled"] is True
    assert report["checked"] == 50 and report["extra"] == 0
    human = run(capsys, pair.args("--sample", "50"))
    assert "extra keys) were not checked" in human.out
    assert "extra not checked" in human.out.splitlines()[1]
    assert run(capsys, pair.args()).code == EXIT_DIFFERENT  # the full compare finds it

    with pair.target_db() as client:
        client.flushdb()
    empty = run(capsys, pair.args("--sample", "50", "--json", "--recheck", "0")).report
    assert (empty["checked"], empty["missing"], empty["extra"]) == (50, 50, 0)
    everything = run(capsys, pair.args("--sample", "1000", "--json", "--recheck", "0")).report
    assert (everything["checked"], everything["missing"]) == (500, 500)


def test_rate_limit_paces_the_compare(
    debian_servers: ServerSet, capsys: pytest.CaptureFixture[str]
) -> None:
    pair = start_pair(debian_servers, dataset=False)
    _fill(pair.source, 200)
    _fill(pair.target, 200)
    started = time.monotonic()
    fast = run(capsys, pair.args("--json"))
    unlimited = time.monotonic() - started
    assert fast.code == EXIT_EQUAL
    started = time.monotonic()
    paced = run(capsys, pair.args("--json", "--rate", "400"))
    limited = time.monotonic() - started
    assert paced.code == EXIT_EQUAL and paced.report["checked"] == 200
    # 200 keys x 2 servers + 200 target keys checked on the source = 600 reads at 400/s,
    # less the 100 ms burst (40): at least 1.4 s
    assert limited >= 0.4
    assert limited >= 1.3, limited
    assert unlimited < limited / 2, (unlimited, limited)


def test_recheck_lets_a_sync_in_flight_catch_up(debian_servers: ServerSet) -> None:
    pair = start_pair(debian_servers, dataset=False)
    with pair.source_db() as src, pair.target_db() as dst:
        src.set("in:flight", "new")
        dst.set("in:flight", "old")
        dst.config_resetstat()
    source, target = parse_redis_url(pair.source.url), parse_redis_url(pair.target.url)
    reports: list[compare.CompareReport] = []
    worker = threading.Thread(
        target=lambda: reports.append(
            compare_databases(source, target, CompareOptions(recheck=1, recheck_delay=3.0))
        )
    )
    worker.start()
    try:
        with pair.target_db() as dst:
            # the compare has read the old value: the "sync" now delivers the new one
            wait_for(
                lambda: dst.info("commandstats").get("cmdstat_get", {}).get("calls", 0) >= 1,
                10,
                "the compare to GET the key on the target",
            )
            dst.set("in:flight", "new")
    finally:
        worker.join(30)
    (report,) = reports
    assert report.equal and report.checked == 1 and report.equal_keys == 1

    with pair.target_db() as dst:
        dst.set("in:flight", "stale")
    no_recheck = compare_databases(source, target, CompareOptions(recheck=0))
    assert not no_recheck.equal and no_recheck.different == 1
    started = time.monotonic()
    rechecked = compare_databases(source, target, CompareOptions(recheck=2, recheck_delay=0.2))
    assert time.monotonic() - started >= 0.4  # two rechecks, each after the delay
    assert [(d.key, d.kind) for d in rechecked.differences] == [(b"in:flight", "value")]


# ----------------------------------------------------------------------------- errors, secrets


VALID = ["--source", "redis://h", "--target", "redis://h"]


@pytest.mark.parametrize(
    ("argv", "option"),
    [
        (["--source", "http://localhost:6379", "--target", "redis://h"], "--source"),
        (["--source", "redis://h:99999", "--target", "redis://h"], "--source"),
        (["--source", "redis://h/x", "--target", "redis://h"], "--source"),
        (["--source", "redis://h"], "--target"),
        ([*VALID, "--rate", "-5"], "--rate"),
        ([*VALID, "--rate", "fast"], "--rate"),
        ([*VALID, "--sample", "0"], "--sample"),
        ([*VALID, "--db", "x"], "--db"),
        ([*VALID, "--ttl-tolerance", "2 parsecs"], "--ttl-tolerance"),
        ([*VALID, "--db", "1", "--all-dbs"], "--all-dbs"),
        ([*VALID, "--timeout", "0"], "--timeout"),
    ],
)
def test_usage_errors_exit_2_with_one_line(
    argv: list[str], option: str, capsys: pytest.CaptureFixture[str]
) -> None:
    result = run(capsys, argv)
    assert result.code == EXIT_USAGE
    assert result.out == ""
    line = one_line(result.err)
    assert line.startswith(f"replwatch compare: {option}: "), line


def test_refused_port_is_one_line_exit_3(
    debian_servers: ServerSet, capsys: pytest.CaptureFixture[str]
) -> None:
    source = debian_servers.start("source")
    port = closed_port()
    result = run(capsys, ["--source", source.url, "--target", f"redis://127.0.0.1:{port}"])
    assert result.code == EXIT_INCOMPLETE
    assert result.out == ""
    assert one_line(result.err) == (
        f"replwatch compare: error: target 127.0.0.1:{port}: connection refused"
    )


def _cli(*argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "replwatch.compare", *argv],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_module_entry_point_exit_codes(debian_servers: ServerSet) -> None:
    pair = start_pair(debian_servers, dataset=False)
    _fill(pair.source, 20)
    _fill(pair.target, 20)
    equal = _cli(*pair.args())
    assert equal.returncode == EXIT_EQUAL, equal.stderr
    assert equal.stderr == ""
    assert equal.stdout.splitlines()[0].endswith("(db 0): EQUAL")
    with pair.target_db() as client:
        client.set("key:3", "4")
    different = _cli(*pair.args("--recheck", "0"))
    assert different.returncode == EXIT_DIFFERENT
    assert "  db 0  value    key:3: first difference at byte 0" in different.stdout
    usage = _cli("--source", "redis://h:0", "--target", pair.target.url)
    assert usage.returncode == EXIT_USAGE
    assert one_line(usage.stderr) == "replwatch compare: --source: port must be 1-65535"
    refused = _cli("--source", f"redis://127.0.0.1:{closed_port()}", "--target", pair.target.url)
    assert refused.returncode == EXIT_INCOMPLETE
    assert "connection refused" in one_line(refused.stderr)
    assert refused.stdout == ""


@pytest.fixture
def protected_pair(debian_servers: ServerSet) -> Pair:
    pair = start_pair(debian_servers)
    for proc in (pair.source, pair.target):
        with connect(proc) as client:
            client.config_set("requirepass", SECRET)
    pair.password = SECRET
    return pair


def test_passwords_never_appear(protected_pair: Pair) -> None:
    pair = protected_pair
    outputs: list[subprocess.CompletedProcess[str]] = []
    outputs.append(equal := _cli(*pair.args("--all-dbs")))
    assert equal.returncode == EXIT_EQUAL, equal.stderr
    outputs.append(as_json := _cli(*pair.args("--all-dbs", "--json")))
    assert json.loads(as_json.stdout)["equal"] is True
    with pair.target_db() as client:
        client.delete("str:small")
    outputs.append(different := _cli(*pair.args("--recheck", "0")))
    assert different.returncode == EXIT_DIFFERENT
    wrong = f"redis://:{SECRET}-wrong@{pair.target.host}:{pair.target.port}"
    outputs.append(bad := _cli("--source", pair.url(pair.source), "--target", wrong))
    assert bad.returncode == EXIT_INCOMPLETE
    assert "authentication failed" in one_line(bad.stderr)
    anonymous = _cli("--source", pair.source.url, "--target", pair.url(pair.target))
    outputs.append(anonymous)
    assert anonymous.returncode == EXIT_INCOMPLETE
    assert one_line(anonymous.stderr).startswith(
        f"replwatch compare: error: source {pair.source.label}: authentication failed"
    )
    user = f"redis://default:{SECRET}@{pair.source.host}:{pair.source.port}/x"
    outputs.append(bad_url := _cli("--source", user, "--target", pair.url(pair.target)))
    assert bad_url.returncode == EXIT_USAGE
    for result in outputs:
        assert SECRET not in result.stdout and SECRET not in result.stderr


# ----------------------------------------------------------------------------- pure helpers


@pytest.mark.parametrize(
    ("source", "target", "tolerance", "expected"),
    [
        (-1, -1, 2.0, None),
        (10_000, 11_999, 2.0, None),
        (10_000, 12_001, 2.0, "ttl 10.0s vs 12.0s (tolerance 2s)"),
        (5_000, -1, 2.0, "ttl 5.0s vs none"),
        (-1, 5_000, 2.0, "ttl none vs 5.0s"),
        (1_000, 1_400, 0.5, None),
        (1_000, 1_600, 0.5, "ttl 1.0s vs 1.6s (tolerance 0.5s)"),
    ],
)
def test_ttl_finding(source: int, target: int, tolerance: float, expected: str | None) -> None:
    assert ttl_finding(source, target, tolerance) == expected


@pytest.mark.parametrize(
    ("source", "target", "grace", "source_grace", "expected"),
    [
        # a sync task's target keeps keys expire_grace longer: allowed, one way only
        (10_000, 310_000, 300.0, 0.0, None),
        (10_000, 311_000, 300.0, 0.0, None),  # + tolerance
        (10_000, 313_000, 300.0, 0.0, "ttl 10.0s vs 313.0s (tolerance 2s, expire grace 300s)"),
        (310_000, 10_000, 300.0, 0.0, "ttl 310.0s vs 10.0s (tolerance 2s, expire grace 300s)"),
        # a pair: the source holds keys of the other direction, longer by its grace
        (310_000, 10_000, 300.0, 300.0, None),
        (
            400_000,
            10_000,
            300.0,
            300.0,
            "ttl 400.0s vs 10.0s (tolerance 2s, expire grace 300s, source expire grace 300s)",
        ),
    ],
)
def test_ttl_finding_with_expire_grace(
    source: int, target: int, grace: float, source_grace: float, expected: str | None
) -> None:
    assert ttl_finding(source, target, 2.0, grace, source_grace) == expected


@pytest.mark.parametrize(
    ("left", "right", "expected"),
    [
        ([], [], None),
        ([1, 2, 3], [1, 2, 3], None),
        ([1, 2, 3], [1, 9, 3], 1),
        ([1, 2, 3], [1, 2], 2),
        ([1], [1, 2], 1),
        (b"abc", b"abd", 2),
    ],
)
def test_first_difference(left: Any, right: Any, expected: int | None) -> None:
    assert first_difference(left, right) == expected


@pytest.mark.parametrize(
    ("key", "shown"),
    [
        (b"user:1", "user:1"),
        ("ключ".encode(), "ключ"),
        (b"\xff\x00", "b'\\xff\\x00'"),
        (b"tab\there", "b'tab\\there'"),
        (b"b'x'", "b\"b'x'\""),
    ],
)
def test_display_key(key: bytes, shown: str) -> None:
    assert display_key(key) == shown


@pytest.mark.parametrize(
    ("stream_id", "following"),
    [(b"1-1", b"1-2"), (b"5-0", b"5-1"), (b"7-18446744073709551615", b"8-0")],
)
def test_next_stream_id(stream_id: bytes, following: bytes) -> None:
    assert next_stream_id(stream_id) == following


def test_parse_keyspace() -> None:
    info = (
        b"# Keyspace\r\ndb0:keys=12,expires=1,avg_ttl=0\r\ndb3:keys=4,expires=0,avg_ttl=0\r\n"
        b"db9:keys=0,expires=0,avg_ttl=0\r\n"
    )
    assert parse_keyspace(info) == {0: 12, 3: 4}


@pytest.mark.parametrize(
    ("source", "target", "expected"),
    [
        ([[b"1-1", [b"a", b"1"]]], [[b"1-1", [b"a", b"1"]]], None),
        ([[b"1-1", [b"a", b"1"]]], [[b"1-1", [b"a", b"2"]]], "entry 1-1: fields differ"),
        ([[b"1-1", []], [b"1-2", []]], [[b"1-2", []]], "entry 1-1 missing on target"),
        ([[b"1-2", []]], [[b"1-1", []], [b"1-2", []]], "entry 1-1 not on source"),
        ([[b"1-1", []], [b"1-2", []]], [[b"1-1", []]], "entry 1-2 missing on target"),
    ],
)
def test_compare_stream_entries(source: Any, target: Any, expected: str | None) -> None:
    assert compare_stream_entries(source, target) == expected


def test_module_values_compare_dump_payload_without_trailer() -> None:
    body = b"\x07module-value-bytes"
    redis_7_0 = body + b"\x0a\x00" + b"C" * 8  # RDB version 10 + CRC
    redis_6_2 = body + b"\x09\x00" + b"c" * 8  # RDB version 9 + another CRC
    assert compare_whole_value("ReJSON-RL", redis_7_0, redis_6_2) is None
    other = b"\x07module-value-bytez" + b"\x0a\x00" + b"C" * 8
    assert compare_whole_value("ReJSON-RL", redis_7_0, other) == (
        "DUMP payloads differ (29 vs 29 bytes)"
    )


def test_describe_zset_difference() -> None:
    target_scores = {b"a": 1.0, b"b": 7.0}
    source_scores = {b"a": 1.0, b"b": 2.0, b"c": 3.0}
    describe = describe_zset_difference
    assert describe(0, (b"a", 1.0), (b"a", 1.5), target_scores.get, source_scores.get) == (
        "member a: score 1 vs 1.5"
    )
    assert describe(1, (b"b", 2.0), (b"c", 3.0), target_scores.get, source_scores.get) == (
        "member b: score 2 vs 7"
    )
    assert describe(2, (b"c", 3.0), None, target_scores.get, source_scores.get) == (
        "member c missing on target"
    )
    assert describe(2, None, (b"d", 4.0), target_scores.get, source_scores.get) == (
        "member d not on source"
    )


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0
        self.slept: list[float] = []

    def time(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)
        self.now += seconds


def test_token_bucket_paces_to_the_rate() -> None:
    clock = FakeClock()
    bucket = TokenBucket(100.0, clock=clock.time, sleep=clock.sleep)
    assert bucket.capacity == 10
    bucket.take(10)  # the burst
    assert clock.slept == []
    for _ in range(50):
        bucket.take(10)
    assert clock.now == pytest.approx(5.0)  # 500 more units at 100/s
    clock.now += 60  # idle: the bucket refills to its capacity, not more
    before = clock.now
    bucket.take(10)
    bucket.take(5)
    assert clock.now - before == pytest.approx(0.05)


def test_token_bucket_unlimited_never_sleeps() -> None:
    clock = FakeClock()
    bucket = TokenBucket(None, clock=clock.time, sleep=clock.sleep)
    bucket.take(10**9)
    assert clock.slept == []


# ----------------------------------------------------------------------------- stream groups


def test_native_7_0_replica_with_group_reads_compares_equal(
    debian_servers: ServerSet, capsys: pytest.CaptureFixture[str]
) -> None:
    """Redis 7.0 replicates XREADGROUP as XCLAIM … LASTID, which leaves the replica's
    entries-read behind its master's: not a difference (the data is the same)."""
    master = debian_servers.start("master")
    replica = debian_servers.start("replica", replica_of=master)
    wait_synced(replica, master)
    with connect(master) as client:
        for i in range(1, 8):
            client.xadd("s", {"n": i}, id=f"1-{i}")
        client.xgroup_create("s", "h", id="0")
        client.xreadgroup("h", "c1", {"s": ">"}, count=1, noack=True)
        client.xreadgroup("h", "c1", {"s": ">"}, count=1)
    wait_synced(replica, master)
    with connect(master) as on_master, connect(replica) as on_replica:
        read = [c.xinfo_groups("s")[0]["entries-read"] for c in (on_master, on_replica)]
    assert read == [2, 1]  # the premise: the two servers disagree
    result = run(capsys, Pair(master, replica, 1).args("--json"))
    assert result.code == EXIT_EQUAL, result.out


def _groups(**fields: Any) -> list[list[bytes]]:
    base = {"name": b"g", "consumers": 1, "pending": 2, "last-delivered-id": b"1-5"}
    base.update(entries_read=3, lag=0)
    base.update(fields)
    flat: list[Any] = []
    for name, value in base.items():
        flat += [name.replace("_", "-").encode(), value]
    return [flat]


@pytest.mark.parametrize(
    ("target_groups", "expected"),
    [
        (_groups(), None),
        (_groups(entries_read=1, lag=4), None),  # a native 7.0 replica's numbers
        (_groups(entries_read=None, lag=None), None),
        (_groups(pending=1), "group g pending 2 vs 1"),
        (_groups(**{"last-delivered-id": b"1-4"}), "group g last-delivered-id 1-5 vs 1-4"),
    ],
)
def test_compare_stream_meta_groups(target_groups: Any, expected: str | None) -> None:
    info = [b"length", 5, b"last-generated-id", b"1-5", b"groups", 1]
    assert compare_stream_meta(info, info, _groups(), target_groups) == expected
