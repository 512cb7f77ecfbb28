"""Table tests of `replwatch compare`'s pure helpers around the rules (issue 20), no Redis:
the keyspace and checkpoint-grace parsers, the batch size under a rate limit, how keys, scores
and TTLs are shown, failure reasons, the tally of one run, and the rechecks of keys found
different (on a fake clock). The rules themselves: test_compare_rules.py."""

from __future__ import annotations

from typing import Any

import pytest
import redis

from replwatch.compare.connection import failure_reason
from replwatch.compare.display import count_phrase, display_key, format_score, format_ttl
from replwatch.compare.model import CompareOptions, DbPair, Difference, Finding
from replwatch.compare.ratelimit import batch_size
from replwatch.compare.recheck import SUSPECT_BUFFER, SuspectKeys
from replwatch.compare.render import render_text
from replwatch.compare.scan import largest_grace_ms, parse_keyspace
from replwatch.compare.tally import Tally

# ----------------------------------------------------------------------------- parsers, display


@pytest.mark.parametrize(
    ("info", "dbs"),
    [
        (b"", {}),
        (b"# Keyspace\r\n", {}),
        (b"# Keyspace\r\ndb0:keys=3,expires=1,avg_ttl=0\r\n", {0: 3}),
        (
            b"db0:keys=3,expires=0\r\ndb15:keys=12,expires=0,avg_ttl=0,subexpiry=0\r\n",
            {0: 3, 15: 12},
        ),
        (b"db2:keys=0,expires=0\r\n", {}),  # no keys: nothing to compare
        (b"dbx:keys=4\r\nfoo:keys=5\r\ndb3:expires=1\r\ndb4:keys=many\r\n", {}),
        (b"db1:keys=1\ndb9:keys=2", {1: 1, 9: 2}),
    ],
)
def test_parse_keyspace_table(info: bytes, dbs: dict[int, int]) -> None:
    assert parse_keyspace(info) == dbs


@pytest.mark.parametrize(
    ("values", "largest"),
    [
        ([], 0),
        ([None], 0),
        ([b"4000"], 4000),
        ([b"4000", None, b"7000", b"10"], 7000),
        ([b"-5", b"1.5", b"x", b""], 0),  # only whole numbers count
        (["4000"], 0),  # replies are bytes
    ],
)
def test_largest_grace_ms(values: list[Any], largest: int) -> None:
    assert largest_grace_ms(values) == largest


@pytest.mark.parametrize(
    ("batch", "rate", "size"),
    [
        (200, None, 200),
        (200, 1_000_000.0, 200),
        (200, 400.0, 20),
        (200, 4000.0, 200),
        (200, 10.0, 1),
        (200, 0.5, 1),
        (3, 400.0, 3),
        (1, None, 1),
    ],
)
def test_batch_size(batch: int, rate: float | None, size: int) -> None:
    assert batch_size(batch, rate) == size


@pytest.mark.parametrize(
    ("key", "shown"),
    [
        (b"plain:key", "plain:key"),
        (b"", ""),
        (b"caf\xc3\xa9", "café"),
        (b"bin:\xff\x00key", "b'bin:\\xff\\x00key'"),
        (b"tab\there", "b'tab\\there'"),
        (b"new\nline", "b'new\\nline'"),
        (b"b'looks like bytes'", "b\"b'looks like bytes'\""),
        (b'b"quoted"', "b'b\"quoted\"'"),
        (b"with space", "with space"),
    ],
)
def test_display_key_table(key: bytes, shown: str) -> None:
    assert display_key(key) == shown


@pytest.mark.parametrize(
    ("score", "shown"),
    [
        (1.0, "1"),
        (-3.0, "-3"),
        (2.5, "2.5"),
        (3.3000000000000003, "3.3000000000000003"),
        (1e15, "1000000000000000.0"),  # not below 1e15: printed as Python does
        (1e16, "1e+16"),
        (999999999999999.0, "999999999999999"),
        (float("inf"), "inf"),
        (float("-inf"), "-inf"),
    ],
)
def test_format_score(score: float, shown: str) -> None:
    assert format_score(score) == shown


@pytest.mark.parametrize(
    ("ms", "shown"),
    [(0, "0.0s"), (1, "0.0s"), (50, "0.1s"), (12_345, "12.3s"), (999_949, "999.9s")],
)
def test_format_ttl(ms: int, shown: str) -> None:
    assert format_ttl(ms) == shown


@pytest.mark.parametrize(("count", "shown"), [(0, "0 members"), (1, "1 member"), (2, "2 members")])
def test_count_phrase(count: int, shown: str) -> None:
    assert count_phrase(count, "member", "members") == shown


@pytest.mark.parametrize(
    ("exc", "reason"),
    [
        (
            redis.AuthenticationError("invalid username-password pair"),
            "authentication failed: invalid username-password pair",
        ),
        (redis.TimeoutError("Timeout reading from socket"), "timed out after 2.5s"),
        (
            redis.ConnectionError("Error 111 connecting to h:1. Connection refused."),
            "connection refused",
        ),
        (
            redis.ConnectionError(
                "Error -2 connecting to nohost:6379. Name does not resolve.\nmore"
            ),
            "connection failed: Error -2 connecting to nohost:6379. Name does not resolve.",
        ),
        (
            redis.ResponseError("NOAUTH Authentication required."),
            "authentication failed: NOAUTH Authentication required.",
        ),
        (
            redis.ResponseError("WRONGPASS invalid username-password pair or user is disabled."),
            "authentication failed: WRONGPASS invalid username-password pair or user is disabled.",
        ),
        (
            redis.ResponseError("ERR AUTH <password> called without any password configured"),
            "authentication failed: ERR AUTH <password> called without any password configured",
        ),
        (
            redis.ResponseError("NOPERM this user has no permissions to run the 'dump' command"),
            "server error: NOPERM this user has no permissions to run the 'dump' command",
        ),
        (
            redis.ResponseError("LOADING Redis is loading the dataset in memory"),
            "server error: LOADING Redis is loading the dataset in memory",
        ),
        (
            ConnectionResetError(104, "Connection reset by peer"),
            "connection failed: Connection reset by peer",
        ),
        (ValueError(""), "failed: ValueError"),
        (ValueError("x" * 300), "failed: " + "x" * 200),
    ],
)
def test_failure_reason(exc: BaseException, reason: str) -> None:
    assert failure_reason(exc, 2.5) == reason


# ----------------------------------------------------------------------------- the tally

MISSING: Finding = ("missing", "missing on target (source type string)")
VALUE: Finding = ("value", "length 4 vs 3")
TTL: Finding = ("ttl", "ttl 5.0s vs none")


@pytest.mark.parametrize(
    ("settled", "counts", "kinds"),
    [
        # findings of each settled key → (equal, missing, different), differences per kind
        ([[]], (1, 0, 0), {}),
        ([[], [], []], (3, 0, 0), {}),
        ([[MISSING]], (0, 1, 0), {"missing": 1}),
        ([[VALUE, TTL]], (0, 0, 1), {"value": 1, "ttl": 1}),
        ([[VALUE], [TTL], [], [MISSING]], (1, 1, 2), {"value": 1, "ttl": 1, "missing": 1}),
        ([[("type", "type string vs list")]], (0, 0, 1), {"type": 1}),
    ],
)
def test_tally_settle(
    settled: list[list[Finding]], counts: tuple[int, int, int], kinds: dict[str, int]
) -> None:
    tally = Tally(max_kept=100)
    for index, findings in enumerate(settled):
        tally.settle(0, b"k%d" % index, findings)
    assert (tally.equal_keys, tally.missing, tally.different) == counts
    assert tally.kind_counts == {
        **dict.fromkeys(("missing", "extra", "type", "value", "ttl"), 0),
        **kinds,
    }
    assert len(tally.kept) == sum(kinds.values())


@pytest.mark.parametrize(
    ("max_kept", "kept", "omitted"), [(0, 6, 0), (1, 1, 5), (3, 3, 3), (6, 6, 0), (100, 6, 0)]
)
def test_tally_keeps_the_first_differences(max_kept: int, kept: int, omitted: int) -> None:
    tally = Tally(max_kept=max_kept)
    tally.settle(3, b"a", [VALUE, TTL])
    tally.settle(3, b"b", [MISSING])
    tally.settle_extra(3, b"c", "hash")
    tally.settle_extra(3, b"d", "stream")
    tally.settle(3, b"e", [VALUE])
    assert (len(tally.kept), tally.omitted) == (kept, omitted)
    assert tally.kind_counts == {"missing": 1, "extra": 2, "type": 0, "value": 2, "ttl": 1}
    assert (tally.missing, tally.extra, tally.different) == (1, 2, 2)
    everything = [
        Difference(3, b"a", "value", "length 4 vs 3"),
        Difference(3, b"a", "ttl", "ttl 5.0s vs none"),
        Difference(3, b"b", "missing", "missing on target (source type string)"),
        Difference(3, b"c", "extra", "on target only (type hash)"),
        Difference(3, b"d", "extra", "on target only (type stream)"),
        Difference(3, b"e", "value", "length 4 vs 3"),
    ]
    assert tally.kept == everything[:kept]


# ----------------------------------------------------------------------------- rechecks


class FakeTime:
    def __init__(self) -> None:
        self.now = 100.0
        self.slept: list[float] = []

    def clock(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.slept.append(round(seconds, 6))
        self.now += seconds


RECHECK_ROWS = [
    # held keys, rounds, keys still differing per round, expected still, resolved, reads
    ([b"a", b"b"], 1, [{b"a"}], [b"a"], 1, 1),
    ([b"a", b"b"], 1, [set()], [], 2, 1),
    ([b"a", b"b"], 2, [{b"a", b"b"}, {b"b"}], [b"b"], 1, 2),
    ([b"a", b"b"], 3, [{b"a"}, set(), {b"a"}], [], 2, 2),  # nothing left: no third read
    ([b"a", b"b", b"c"], 3, [{b"a", b"b", b"c"}] * 3, [b"a", b"b", b"c"], 0, 3),
    ([b"a"], 0, [], [b"a"], 0, 0),  # no rechecks: held keys stay as they are
    ([], 2, [], [], 0, 0),
    # a key SCAN returned twice is held twice and, found equal, counted twice
    ([b"a", b"a", b"b"], 1, [{b"b"}], [b"b"], 2, 1),
]


@pytest.mark.parametrize(
    ("held", "rounds", "differing", "still", "resolved", "reads"), RECHECK_ROWS
)
def test_recheck_rounds(
    held: list[bytes],
    rounds: int,
    differing: list[set[bytes]],
    still: list[bytes],
    resolved: int,
    reads: int,
) -> None:
    fake = FakeTime()
    suspects = SuspectKeys(clock=fake.clock, sleep=fake.sleep)
    suspects.hold(held)
    asked: list[list[bytes]] = []

    def still_differing(keys: list[bytes]) -> list[tuple[bytes, str]]:
        round_ = len(asked)
        asked.append(keys)
        fake.now += 0.2  # the reads take a while
        return [(key, f"round {round_}") for key in keys if key in differing[round_]]

    result = suspects.recheck(rounds, 0.5, still_differing)
    assert result.still == still
    assert result.resolved == resolved
    assert len(asked) == reads
    if reads:
        assert asked[0] == held
        # each read waits until 0.5 s after the keys were last seen different
        assert fake.slept == [0.5] * reads
        assert all(result.last[key] == f"round {reads - 1}" for key in still)
    # released: a second recheck has nothing to do
    assert suspects.recheck(rounds, 0.5, still_differing).still == []
    assert len(asked) == reads


def test_recheck_waits_only_what_is_left_of_the_delay() -> None:
    fake = FakeTime()
    suspects = SuspectKeys(clock=fake.clock, sleep=fake.sleep)
    suspects.hold([b"k"])
    fake.now += 0.3  # more keys were compared meanwhile
    suspects.hold([])  # holding nothing does not move the time the keys were seen
    suspects.recheck(1, 0.5, lambda keys: [])
    assert fake.slept == [pytest.approx(0.2)]
    suspects.hold([b"k"])
    fake.now += 2.0
    suspects.recheck(1, 0.5, lambda keys: [])
    assert fake.slept == [pytest.approx(0.2)]  # the delay had passed: no sleep


def test_suspects_are_full_at_the_buffer_size() -> None:
    suspects = SuspectKeys()
    suspects.hold([b"k"] * (SUSPECT_BUFFER - 1))
    assert not suspects.full
    suspects.hold([b"k"])
    assert suspects.full


# ----------------------------------------------------------------------------- ignored keys


@pytest.mark.parametrize(
    ("ignored", "given", "checked", "note"),
    [
        ([], (), 1, None),
        ([b"__replwatch:heartbeat"], (), 1, None),  # replwatch's own: never a note (issue 21)
        ([b"__replwatch:heartbeat", b"__replwatch:probe"], ("tmp:*",), 2, None),
        (
            [b"__replwatch:heartbeat", b"tmp:1"],
            ("tmp:*",),
            2,
            "--ignore tmp:* left out 1 source key",
        ),
        (
            [b"tmp:1", b"c:2", b"tmp:3"],
            ("tmp:*", "c:*"),
            0,
            "--ignore tmp:* c:* left out 3 source keys",
        ),
        ([b"__replwatch:x"], ("__replwatch:*",), 5, None),  # the default given again
    ],
)
def test_ignored_keys_note(
    ignored: list[bytes], given: tuple[str, ...], checked: int, note: str | None
) -> None:
    tally = Tally(max_kept=10)
    tally.count_ignored(ignored)
    for index in range(checked):
        tally.checked += 1  # (the runner counts a key read; settle gives its verdict)
        tally.settle(0, b"k%d" % index, [])
    options = CompareOptions(ignore=("__replwatch:*", *given))
    report = tally.report("a:1", "b:2", [DbPair(0, 0)], options, 0.5)
    assert report.ignored == len(ignored)
    assert report.as_json()["own_keys_ignored"] == sum(
        k.startswith(b"__replwatch:") for k in ignored
    )
    lines = render_text(report, options).splitlines()
    assert [ln for ln in lines if ln.startswith("note:")] == ([f"note: {note}"] if note else [])
    noun = "key" if checked == 1 else "keys"
    assert lines[1].startswith(f"checked {checked} {noun} in 0.50s: {checked} equal, "), lines
