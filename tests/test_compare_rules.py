"""Table tests of `replwatch compare`'s pure rules (issue 20), no Redis: the key rules (type,
TTL, size, read plan, whole-value verdict, key outcome, extra, ignore) and the value rules (how
two values of one type differ, whole or chunk by chunk: the folds must stop reading at the
first difference). Replies are written as RESP2 gives them to compare: bytes, ints, flat
lists. The helpers around the rules (tally, rechecks, display, parsing): test_compare_helpers.py."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from replwatch.compare.model import Finding
from replwatch.compare.rules import (
    HeadVerdict,
    KeyHead,
    ReadPlan,
    TtlAllowance,
    extra_finding,
    has_size,
    head_verdict,
    is_extra,
    is_ignored,
    key_findings,
    key_outcome,
    size_verdict,
    ttl_finding,
    whole_value_verdict,
)
from replwatch.compare.value_rules import (
    CHANGED,
    compare_stream_entries,
    compare_stream_meta,
    compare_whole_value,
    describe_hash_difference,
    describe_set_difference,
    describe_zset_difference,
    first_difference,
    hash_chunks_difference,
    list_chunks_difference,
    next_stream_id,
    parse_stream_id,
    set_chunks_difference,
    stream_chunks_difference,
    string_chunks_difference,
    zset_chunks_difference,
)

STRICT = TtlAllowance(tolerance=2.0)
GRACE = TtlAllowance(tolerance=2.0, grace=5.0)
BOTH_GRACES = TtlAllowance(tolerance=1.0, grace=5.0, source_grace=3.0)

# ----------------------------------------------------------------------------- type and TTL

HEAD_ROWS = [
    # source head, target head, allowance, expected verdict
    (KeyHead("none", -2), KeyHead("none", -2), STRICT, HeadVerdict(None)),
    (KeyHead("none", -2), KeyHead("string", -1), STRICT, HeadVerdict(None)),
    (
        KeyHead("hash", -1),
        KeyHead("none", -2),
        STRICT,
        HeadVerdict((("missing", "missing on target (source type hash)"),)),
    ),
    (
        KeyHead("stream", 5_000),
        KeyHead("none", -2),
        STRICT,
        HeadVerdict((("missing", "missing on target (source type stream)"),)),
    ),
    (
        KeyHead("string", -1),
        KeyHead("list", -1),
        STRICT,
        HeadVerdict((("type", "type string vs list"),)),
    ),
    # another type: the TTL is not judged too
    (
        KeyHead("zset", 1_000),
        KeyHead("set", -1),
        STRICT,
        HeadVerdict((("type", "type zset vs set"),)),
    ),
    (
        KeyHead("ReJSON-RL", -1),
        KeyHead("string", -1),
        STRICT,
        HeadVerdict((("type", "type ReJSON-RL vs string"),)),
    ),
    (KeyHead("string", -1), KeyHead("string", -1), STRICT, HeadVerdict((), "string")),
    (KeyHead("list", 10_000), KeyHead("list", 11_000), STRICT, HeadVerdict((), "list")),
    (
        KeyHead("set", 10_000),
        KeyHead("set", -1),
        STRICT,
        HeadVerdict((("ttl", "ttl 10.0s vs none"),), "set"),
    ),
    (
        KeyHead("hash", 10_000),
        KeyHead("hash", 16_000),
        STRICT,
        HeadVerdict((("ttl", "ttl 10.0s vs 16.0s (tolerance 2s)"),), "hash"),
    ),
    (KeyHead("hash", 10_000), KeyHead("hash", 16_000), GRACE, HeadVerdict((), "hash")),
    (KeyHead("ReJSON-RL", -1), KeyHead("ReJSON-RL", -1), STRICT, HeadVerdict((), "ReJSON-RL")),
]


@pytest.mark.parametrize(("source", "target", "allowance", "expected"), HEAD_ROWS)
def test_head_verdict(
    source: KeyHead, target: KeyHead, allowance: TtlAllowance, expected: HeadVerdict
) -> None:
    assert head_verdict(source, target, allowance) == expected


TTL_ROWS = [
    # source PTTL, target PTTL, tolerance, grace, source grace, expected
    (-1, -1, 2.0, 0.0, 0.0, None),
    (-2, -1, 2.0, 0.0, 0.0, None),
    (-1, 5_000, 2.0, 0.0, 0.0, "ttl none vs 5.0s"),
    (5_000, -1, 2.0, 0.0, 0.0, "ttl 5.0s vs none"),
    (5_000, -1, 2.0, 100.0, 100.0, "ttl 5.0s vs none"),  # no grace covers a missing TTL
    (0, -1, 2.0, 0.0, 0.0, "ttl 0.0s vs none"),
    (10_000, 10_000, 0.0, 0.0, 0.0, None),
    (10_000, 12_000, 2.0, 0.0, 0.0, None),  # exactly the tolerance: equal
    (10_000, 8_000, 2.0, 0.0, 0.0, None),
    (10_000, 12_001, 2.0, 0.0, 0.0, "ttl 10.0s vs 12.0s (tolerance 2s)"),
    (10_000, 7_999, 2.0, 0.0, 0.0, "ttl 10.0s vs 8.0s (tolerance 2s)"),
    (1_000, 1_400, 0.5, 0.0, 0.0, None),
    (1_000, 1_600, 0.5, 0.0, 0.0, "ttl 1.0s vs 1.6s (tolerance 0.5s)"),
    (1_000, 1_001, 0.0, 0.0, 0.0, "ttl 1.0s vs 1.0s (tolerance 0s)"),
    # the target may be up to grace longer, never shorter beyond the tolerance
    (10_000, 17_000, 2.0, 5.0, 0.0, None),
    (10_000, 17_001, 2.0, 5.0, 0.0, "ttl 10.0s vs 17.0s (tolerance 2s, expire grace 5s)"),
    (10_000, 7_999, 2.0, 5.0, 0.0, "ttl 10.0s vs 8.0s (tolerance 2s, expire grace 5s)"),
    # the source may be up to source grace longer
    (13_000, 10_000, 0.0, 0.0, 3.0, None),
    (13_001, 10_000, 0.0, 0.0, 3.0, "ttl 13.0s vs 10.0s (tolerance 0s, source expire grace 3s)"),
    (10_000, 10_001, 0.0, 0.0, 3.0, "ttl 10.0s vs 10.0s (tolerance 0s, source expire grace 3s)"),
    (
        20_000,
        10_000,
        1.0,
        5.0,
        3.0,
        "ttl 20.0s vs 10.0s (tolerance 1s, expire grace 5s, source expire grace 3s)",
    ),
    (10_000, 16_000, 1.0, 5.0, 3.0, None),
    (10_000, 6_000, 1.0, 5.0, 3.0, None),
    (123_456_789, 123_456_789, 2.0, 0.0, 0.0, None),
    (3_600_000, 3_610_000, 2.0, 0.0, 0.0, "ttl 3600.0s vs 3610.0s (tolerance 2s)"),
]


@pytest.mark.parametrize(
    ("source", "target", "tolerance", "grace", "source_grace", "expected"), TTL_ROWS
)
def test_ttl_finding_table(
    source: int,
    target: int,
    tolerance: float,
    grace: float,
    source_grace: float,
    expected: str | None,
) -> None:
    assert ttl_finding(source, target, tolerance, grace, source_grace) == expected
    # the same rule through head_verdict, as a finding of kind ttl
    verdict = head_verdict(
        KeyHead("string", source),
        KeyHead("string", target),
        TtlAllowance(tolerance, grace, source_grace),
    )
    assert verdict.findings == ((("ttl", expected),) if expected else ())


# ----------------------------------------------------------------------------- sizes and plans

SIZE_ROWS: list[tuple[str, tuple[int, int] | None, str | ReadPlan]] = [
    # type, sizes on both sides (None: the key changed type), expected; chunk 10, strings 100
    ("string", None, CHANGED),
    ("stream", None, CHANGED),
    ("string", (5, 3), "length 5 vs 3"),
    ("list", (4, 3), "length 4 vs 3"),
    ("set", (2000, 1999), "cardinality 2000 vs 1999"),
    ("zset", (0, 1), "cardinality 0 vs 1"),
    ("hash", (3, 30), "fields 3 vs 30"),
    ("stream", (1200, 1199), "length 1200 vs 1199"),
    ("string", (0, 0), ReadPlan.WHOLE),
    ("string", (100, 100), ReadPlan.WHOLE),  # the string chunk is bytes, not elements
    ("string", (101, 101), ReadPlan.CHUNKS),
    ("list", (10, 10), ReadPlan.WHOLE),
    ("list", (11, 11), ReadPlan.CHUNKS),
    ("set", (10, 10), ReadPlan.WHOLE),
    ("set", (11, 11), ReadPlan.CHUNKS),
    ("zset", (11, 11), ReadPlan.CHUNKS),
    ("hash", (10, 10), ReadPlan.WHOLE),
    ("hash", (50, 50), ReadPlan.CHUNKS),
    ("stream", (0, 0), ReadPlan.WHOLE),
    ("stream", (10, 10), ReadPlan.WHOLE),
    ("stream", (11, 11), ReadPlan.META_THEN_CHUNKS),  # XINFO first, entries in chunks
]


@pytest.mark.parametrize(("kind", "sizes", "expected"), SIZE_ROWS)
def test_size_verdict(kind: str, sizes: tuple[int, int] | None, expected: str | ReadPlan) -> None:
    assert size_verdict(kind, sizes, 10, 100) == expected


@pytest.mark.parametrize(
    ("kind", "sized"),
    [
        ("string", True),
        ("list", True),
        ("set", True),
        ("zset", True),
        ("hash", True),
        ("stream", True),
        ("ReJSON-RL", False),
        ("MBbloom--", False),
        ("none", False),
    ],
)
def test_has_size(kind: str, sized: bool) -> None:
    assert has_size(kind) is sized


# ----------------------------------------------------------------------------- whole values

DUMP_BODY = b"\x07module-value-bytes"
DUMP_7_0 = DUMP_BODY + b"\x0a\x00" + b"C" * 8  # RDB version 10 + CRC
DUMP_6_2 = DUMP_BODY + b"\x09\x00" + b"c" * 8  # RDB version 9 + another CRC
DUMP_OTHER = b"\x07module-value-bytez" + b"\x0a\x00" + b"C" * 8

WHOLE_ROWS: list[tuple[str, Any, Any, str | None]] = [
    # type, source reply, target reply, expected
    ("string", b"hello", b"hello", None),
    ("string", b"hello", b"hellO", "first difference at byte 4"),
    ("string", b"hello", b"hell", "first difference at byte 4"),
    ("string", b"", b"x", "first difference at byte 0"),
    ("string", b"\x00\xff\xfe", b"\x00\xff\xff", "first difference at byte 2"),
    ("string", None, None, None),  # gone on both sides meanwhile
    ("string", b"x", None, CHANGED),
    ("string", None, b"x", CHANGED),
    ("list", [b"a", b"b"], [b"a", b"b"], None),
    ("list", [b"a", b"b", b"c"], [b"a", b"x", b"c"], "first difference at index 1"),
    ("list", [b"a", b"b"], [b"a", b"b", b"c"], "first difference at index 2"),
    ("list", [b"b", b"a"], [b"a", b"b"], "first difference at index 0"),
    ("set", [b"x", b"y"], [b"y", b"x"], None),  # order does not matter
    (
        "set",
        [b"1", b"2", b"99"],
        [b"1", b"2", b"100"],
        "1 member missing on target (e.g. 99); 1 member not on source (e.g. 100)",
    ),
    ("set", [b"a", b"b", b"c"], [b"a"], "2 members missing on target (e.g. b)"),
    ("set", [b"a"], [b"a", b"c", b"b"], "2 members not on source (e.g. b)"),
    ("hash", [b"n", b"1", b"m", b"2"], [b"m", b"2", b"n", b"1"], None),
    ("hash", [b"lang", b"en"], [b"lang", b"fr"], "field lang differs"),
    ("hash", [b"a", b"1", b"b", b"2"], [b"a", b"1"], "field b missing on target"),
    ("hash", [b"a", b"1"], [b"a", b"1", b"z", b"2"], "field z not on source"),
    (
        "hash",
        [b"a", b"1", b"b", b"2"],
        [b"a", b"9", b"c", b"2"],
        "3 fields differ, e.g. field a differs",
    ),
    ("zset", [b"a", b"1", b"b", b"2.5"], [b"a", b"1", b"b", b"2.5"], None),
    # scores compare as numbers: 6.2 and 7.0 print 1.1 differently
    ("zset", [b"m", b"1.1000000000000001"], [b"m", b"1.1"], None),
    (
        "zset",
        [b"a", b"1", b"b", b"2.5"],
        [b"a", b"1", b"b", b"2.25"],
        "member b: score 2.5 vs 2.25",
    ),
    ("zset", [b"a", b"1", b"b", b"2"], [b"a", b"1"], "member b missing on target"),
    ("zset", [b"a", b"1"], [b"a", b"1", b"z", b"9"], "member z not on source"),
    ("zset", [b"a", b"1", b"b", b"2"], [b"a", b"1", b"c", b"2"], "member b missing on target"),
    ("zset", [b"c", b"-inf", b"top", b"inf"], [b"c", b"-inf", b"top", b"inf"], None),
    ("ReJSON-RL", DUMP_7_0, DUMP_6_2, None),  # the trailer (RDB version + CRC) is ignored
    ("ReJSON-RL", DUMP_7_0, DUMP_OTHER, "DUMP payloads differ (29 vs 29 bytes)"),
    ("MBbloom--", DUMP_7_0, DUMP_7_0 + b"!", "DUMP payloads differ (29 vs 30 bytes)"),
]


@pytest.mark.parametrize(("kind", "source", "target", "expected"), WHOLE_ROWS)
def test_compare_whole_value(kind: str, source: Any, target: Any, expected: str | None) -> None:
    assert compare_whole_value(kind, source, target) == expected
    # whole_value_verdict passes one-reply types straight to it
    assert whole_value_verdict(kind, ReadPlan.WHOLE, ([source], [target])) == expected


def _xinfo(length: int, last: bytes, groups: int = 0) -> list[Any]:
    return [b"length", length, b"last-generated-id", last, b"groups", groups]


def _group(name: bytes, last: bytes, pending: int = 0, consumers: int = 0) -> list[Any]:
    return [b"name", name, b"consumers", consumers, b"pending", pending, b"last-delivered-id", last]


ENTRIES = [[b"1-1", [b"n", b"1"]], [b"1-2", [b"n", b"2"]]]
OTHER_ENTRIES = [[b"1-1", [b"n", b"1"]], [b"1-2", [b"n", b"X"]]]

STREAM_VERDICT_ROWS: list[tuple[ReadPlan, Any, Any, Any]] = [
    # plan, source replies, target replies, expected
    (ReadPlan.WHOLE, [_xinfo(2, b"1-2"), [], ENTRIES], [_xinfo(2, b"1-2"), [], ENTRIES], None),
    (
        ReadPlan.WHOLE,
        [_xinfo(2, b"1-2"), [], ENTRIES],
        [_xinfo(2, b"1-2"), [], OTHER_ENTRIES],
        "entry 1-2: fields differ",
    ),
    # the metadata differ: the entries are not looked at
    (
        ReadPlan.WHOLE,
        [_xinfo(2, b"1-2"), [], ENTRIES],
        [_xinfo(2, b"1-3"), [], OTHER_ENTRIES],
        "last-generated-id 1-2 vs 1-3",
    ),
    (
        ReadPlan.META_THEN_CHUNKS,
        [_xinfo(900, b"5-0"), []],
        [_xinfo(900, b"5-0"), []],
        ReadPlan.CHUNKS,
    ),
    (
        ReadPlan.META_THEN_CHUNKS,
        [_xinfo(900, b"5-0"), []],
        [_xinfo(900, b"5-1"), []],
        "last-generated-id 5-0 vs 5-1",
    ),
    (
        ReadPlan.META_THEN_CHUNKS,
        [_xinfo(900, b"5-0", 1), [_group(b"g", b"1-3")]],
        [_xinfo(900, b"5-0", 1), [_group(b"g", b"1-5")]],
        "group g last-delivered-id 1-3 vs 1-5",
    ),
]


@pytest.mark.parametrize(("plan", "source", "target", "expected"), STREAM_VERDICT_ROWS)
def test_whole_value_verdict_streams(
    plan: ReadPlan, source: Any, target: Any, expected: Any
) -> None:
    assert whole_value_verdict("stream", plan, (source, target)) == expected


@pytest.mark.parametrize("kind", ["string", "hash", "stream", "ReJSON-RL"])
def test_whole_value_verdict_changed_type(kind: str) -> None:
    assert whole_value_verdict(kind, ReadPlan.WHOLE, None) == CHANGED


# ----------------------------------------------------------------------------- one key's outcome

KEY_FINDINGS_ROWS: list[tuple[HeadVerdict, str | None, list[Finding] | None]] = [
    (HeadVerdict(None), None, None),
    (HeadVerdict(()), None, []),
    (HeadVerdict((), "string"), None, []),
    (
        HeadVerdict((), "string"),
        "first difference at byte 4",
        [("value", "first difference at byte 4")],
    ),
    # the value first, then the TTL
    (
        HeadVerdict((("ttl", "ttl 5.0s vs none"),), "set"),
        "cardinality 3 vs 2",
        [("value", "cardinality 3 vs 2"), ("ttl", "ttl 5.0s vs none")],
    ),
    (HeadVerdict((("ttl", "ttl 5.0s vs none"),), "set"), None, [("ttl", "ttl 5.0s vs none")]),
    (
        HeadVerdict((("missing", "missing on target (source type hash)"),)),
        None,
        [("missing", "missing on target (source type hash)")],
    ),
]


@pytest.mark.parametrize(("head", "detail", "expected"), KEY_FINDINGS_ROWS)
def test_key_findings(head: HeadVerdict, detail: str | None, expected: Any) -> None:
    assert key_findings(head, detail) == expected


@pytest.mark.parametrize(
    ("findings", "outcome"),
    [
        ([], "equal"),
        ([("missing", "missing on target (source type string)")], "missing"),
        ([("type", "type string vs list")], "different"),
        ([("value", "length 4 vs 3")], "different"),
        ([("ttl", "ttl 5.0s vs none")], "different"),
        ([("value", "length 4 vs 3"), ("ttl", "ttl 5.0s vs none")], "different"),
        ([("ttl", "x"), ("missing", "y")], "missing"),
    ],
)
def test_key_outcome(findings: list[Finding], outcome: str) -> None:
    assert key_outcome(findings) == outcome


@pytest.mark.parametrize(
    ("target_type", "on_source", "extra"),
    [
        ("string", False, True),
        ("stream", False, True),
        ("ReJSON-RL", False, True),
        ("string", True, False),  # created on the source meanwhile
        ("none", False, False),  # gone from the target meanwhile
        ("none", True, False),
    ],
)
def test_is_extra(target_type: str, on_source: bool, extra: bool) -> None:
    assert is_extra(target_type, on_source) is extra
    assert extra_finding(target_type) == ("extra", f"on target only (type {target_type})")


IGNORE = [b"__replwatch:*", b"tmp:*", b"cache:[ab]?", b"exact"]


@pytest.mark.parametrize(
    ("key", "ignored"),
    [
        (b"__replwatch:heartbeat", True),
        (b"__replwatch:sync:t", True),
        (b"__replwatch", False),
        (b"tmp:1", True),
        (b"tmp:", True),
        (b"TMP:1", False),  # case-sensitive, like Redis MATCH
        (b"x:tmp:1", False),
        (b"cache:a1", True),
        (b"cache:c1", False),
        (b"cache:a12", False),
        (b"exact", True),
        (b"exactly", False),
        (b"bin:\xff\x00key", False),
    ],
)
def test_is_ignored(key: bytes, ignored: bool) -> None:
    assert is_ignored(key, IGNORE) is ignored
    assert is_ignored(key, []) is False


# ----------------------------------------------------------------------------- zsets and streams


def _scores(mapping: dict[bytes, float]) -> Any:
    return mapping.get


ZSET_ROWS = [
    # rank, source pair, target pair, target scores, source scores, expected
    (0, (b"a", 1.0), (b"a", 1.5), {}, {}, "member a: score 1 vs 1.5"),
    (3, (b"m", 2.0), (b"m", 2.0000001), {}, {}, "member m: score 2 vs 2.0000001"),
    (1, (b"b", 2.0), (b"c", 3.0), {b"b": 7.0}, {}, "member b: score 2 vs 7"),
    (2, (b"c", 3.0), None, {}, {}, "member c missing on target"),
    (2, None, (b"d", 4.0), {}, {}, "member d not on source"),
    (5, (b"b", 2.0), (b"c", 3.0), {}, {}, "member b missing on target"),
    # the source member is on the target with its score: the target's member explains
    (5, (b"b", 2.0), (b"c", 3.0), {b"b": 2.0}, {}, "member c not on source"),
    (5, (b"b", 2.0), (b"c", 3.0), {b"b": 2.0}, {b"c": 9.5}, "member c: score 9.5 vs 3"),
    # both members sit elsewhere with their own scores: only the rank is known
    (7, (b"b", 2.0), (b"c", 3.0), {b"b": 2.0}, {b"c": 3.0}, "first difference at rank 7"),
    (0, (b"big", 1e16), (b"big", 2e16), {}, {}, "member big: score 1e+16 vs 2e+16"),
    (0, (b"i", float("inf")), (b"i", 1.0), {}, {}, "member i: score inf vs 1"),
    (0, (b"\xff", 1.0), (b"\xff", 2.0), {}, {}, "member b'\\xff': score 1 vs 2"),
]


@pytest.mark.parametrize(
    ("rank", "source_pair", "target_pair", "on_target", "on_source", "expected"), ZSET_ROWS
)
def test_describe_zset_difference(
    rank: int,
    source_pair: tuple[bytes, float] | None,
    target_pair: tuple[bytes, float] | None,
    on_target: dict[bytes, float],
    on_source: dict[bytes, float],
    expected: str,
) -> None:
    got = describe_zset_difference(
        rank, source_pair, target_pair, _scores(on_target), _scores(on_source)
    )
    assert got == expected


STREAM_META_ROWS = [
    # source XINFO STREAM, target XINFO STREAM, source groups, target groups, expected
    (_xinfo(5, b"1-5"), _xinfo(5, b"1-5"), [], [], None),
    (_xinfo(5, b"1-5"), _xinfo(4, b"1-5"), [], [], "length 5 vs 4"),
    (_xinfo(5, b"1-5"), _xinfo(4, b"1-4"), [], [], "length 5 vs 4; last-generated-id 1-5 vs 1-4"),
    # a field one server does not report (6.2: no entries-added) is not compared
    ([*_xinfo(5, b"1-5"), b"entries-added", 7], _xinfo(5, b"1-5"), [], [], None),
    (
        [*_xinfo(5, b"1-5"), b"entries-added", 7],
        [*_xinfo(5, b"1-5"), b"entries-added", 8],
        [],
        [],
        "entries-added 7 vs 8",
    ),
    (
        [*_xinfo(5, b"1-5"), b"max-deleted-entry-id", b"1-2"],
        [*_xinfo(5, b"1-5"), b"max-deleted-entry-id", b"0-0"],
        [],
        [],
        "max-deleted-entry-id 1-2 vs 0-0",
    ),
    (_xinfo(5, b"1-5"), _xinfo(5, b"1-5"), [_group(b"g", b"1-1")], [], "group g missing on target"),
    (_xinfo(5, b"1-5"), _xinfo(5, b"1-5"), [], [_group(b"h", b"1-1")], "group h not on source"),
    (
        _xinfo(5, b"1-5"),
        _xinfo(5, b"1-5"),
        [_group(b"g", b"1-1", pending=2)],
        [_group(b"g", b"1-1", pending=1)],
        "group g pending 2 vs 1",
    ),
    (
        _xinfo(5, b"1-5"),
        _xinfo(5, b"1-5"),
        [_group(b"g", b"1-1", consumers=2)],
        [_group(b"g", b"1-1", consumers=0)],
        "group g consumers 2 vs 0",
    ),
    (
        _xinfo(5, b"1-5"),
        _xinfo(5, b"1-5"),
        [_group(b"b", b"1-1"), _group(b"a", b"1-1")],
        [_group(b"c", b"1-1"), _group(b"d", b"1-1")],
        "group a missing on target; group b missing on target; group c not on source; "
        "group d not on source",
    ),
    # entries-read and lag are not compared (a native 7.0 replica's differ)
    (
        _xinfo(5, b"1-5"),
        _xinfo(5, b"1-5"),
        [[*_group(b"g", b"1-5"), b"entries-read", 3]],
        [[*_group(b"g", b"1-5"), b"entries-read", 1, b"lag", 4]],
        None,
    ),
    (_xinfo(5, b"1-5"), _xinfo(5, b"1-5"), None, None, None),
    (b"not a list", b"not a list", [], [], None),
]


@pytest.mark.parametrize(
    ("source_info", "target_info", "source_groups", "target_groups", "expected"),
    STREAM_META_ROWS,
)
def test_compare_stream_meta(
    source_info: Any, target_info: Any, source_groups: Any, target_groups: Any, expected: Any
) -> None:
    assert compare_stream_meta(source_info, target_info, source_groups, target_groups) == expected


def _entries(*ids: str, value: bytes = b"v") -> list[list[Any]]:
    return [[i.encode(), [b"f", value]] for i in ids]


STREAM_ENTRY_ROWS = [
    ([], [], None),
    (_entries("1-1", "1-2"), _entries("1-1", "1-2"), None),
    (_entries("1-1", "1-2"), _entries("1-1"), "entry 1-2 missing on target"),
    (_entries("1-1"), _entries("1-1", "1-2"), "entry 1-2 not on source"),
    (_entries("1-1", "1-2"), _entries("1-1", "1-3"), "entry 1-2 missing on target"),
    (_entries("1-1", "1-3"), _entries("1-1", "1-2"), "entry 1-2 not on source"),
    # ids compare as numbers, not as text
    (_entries("9-1"), _entries("10-1"), "entry 9-1 missing on target"),
    (_entries("1-10"), _entries("1-9"), "entry 1-9 not on source"),
    (_entries("1-1"), _entries("1-1", value=b"w"), "entry 1-1: fields differ"),
    ([], _entries("5-5"), "entry 5-5 not on source"),
]


@pytest.mark.parametrize(("source", "target", "expected"), STREAM_ENTRY_ROWS)
def test_compare_stream_entries_table(source: Any, target: Any, expected: str | None) -> None:
    assert compare_stream_entries(source, target) == expected


# ----------------------------------------------------------------------------- values in chunks


class Chunks:
    """Chunks handed out one at a time, counting how many were read."""

    def __init__(self, chunks: list[Any]) -> None:
        self.chunks = chunks
        self.read = 0

    def __iter__(self) -> Iterator[Any]:
        for chunk in self.chunks:
            self.read += 1
            yield chunk


STRING_CHUNK_ROWS = [
    # chunks (start, source, target), expected, chunks read
    ([], None, 0),
    ([(0, b"abcd", b"abcd"), (4, b"ef", b"ef")], None, 2),
    ([(0, b"abcd", b"abXd"), (4, b"ef", b"eX")], "first difference at byte 2", 1),
    ([(0, b"abcd", b"abcd"), (4, b"ef", b"eX"), (6, b"g", b"X")], "first difference at byte 5", 2),
    ([(0, b"ab", b"ab"), (2_000_000, b"xy", b"x")], "first difference at byte 2000001", 2),
]


@pytest.mark.parametrize(("chunks", "expected", "read"), STRING_CHUNK_ROWS)
def test_string_chunks_difference(chunks: list[Any], expected: str | None, read: int) -> None:
    source = Chunks(chunks)
    assert string_chunks_difference(source) == expected
    assert source.read == read  # no chunk past the first difference is read


LIST_CHUNK_ROWS = [
    ([(0, [b"a", b"b"], [b"a", b"b"]), (2, [b"c"], [b"c"])], None, 2),
    (
        [(0, [b"a", b"b"], [b"a", b"b"]), (2, [b"c"], [b"X"]), (3, [b"d"], [b"d"])],
        "first difference at index 2",
        2,
    ),
    ([(0, [b"a"], [b"X"]), (1, [b"b"], [b"b"])], "first difference at index 0", 1),
    ([(500, [b"a", b"b"], [b"a"])], "first difference at index 501", 1),
]


@pytest.mark.parametrize(("chunks", "expected", "read"), LIST_CHUNK_ROWS)
def test_list_chunks_difference(chunks: list[Any], expected: str | None, read: int) -> None:
    source = Chunks(chunks)
    assert list_chunks_difference(source) == expected
    assert source.read == read


ZSET_CHUNK_ROWS = [
    ([(0, [b"a", b"1", b"b", b"2"], [b"a", b"1", b"b", b"2"])], {}, {}, None, 1),
    (
        [
            (0, [b"a", b"1"], [b"a", b"1"]),
            (1, [b"m-3", b"3.3000000000000003"], [b"m-3", b"5000.5"]),
        ],
        {},
        {},
        "member m-3: score 3.3000000000000003 vs 5000.5",
        2,
    ),
    # rank 10 of a later chunk: the source member is gone from the target
    (
        [(0, [b"a", b"1"], [b"a", b"1"]), (10, [b"b", b"2"], [b"c", b"2"]), (11, [], [])],
        {},
        {b"c": 2.0},
        "member b missing on target",
        2,
    ),
    (
        [(10, [b"b", b"2"], [b"c", b"2"])],
        {b"b": 2.0},
        {b"c": 2.0},
        "first difference at rank 10",
        1,
    ),
]


@pytest.mark.parametrize(("chunks", "on_target", "on_source", "expected", "read"), ZSET_CHUNK_ROWS)
def test_zset_chunks_difference(
    chunks: list[Any],
    on_target: dict[bytes, float],
    on_source: dict[bytes, float],
    expected: str | None,
    read: int,
) -> None:
    source = Chunks(chunks)
    got = zset_chunks_difference(source, _scores(on_target), _scores(on_source))
    assert got == expected
    assert source.read == read


STREAM_CHUNK_ROWS = [
    (
        [(_entries("1-1", "1-2"), _entries("1-1", "1-2")), (_entries("1-3"), _entries("1-3"))],
        None,
        2,
    ),
    (
        [(_entries("1-1"), _entries("1-1", value=b"x")), (_entries("1-3"), _entries("1-4"))],
        "entry 1-1: fields differ",
        1,
    ),
    (
        [(_entries("1-1"), _entries("1-1")), (_entries("1-3"), _entries("1-4"))],
        "entry 1-3 missing on target",
        2,
    ),
]


@pytest.mark.parametrize(("chunks", "expected", "read"), STREAM_CHUNK_ROWS)
def test_stream_chunks_difference(chunks: list[Any], expected: str | None, read: int) -> None:
    source = Chunks(chunks)
    assert stream_chunks_difference(source) == expected
    assert source.read == read


SET_CHUNK_ROWS = [
    # SSCAN pages (members, on the target?) → expected; every page is read
    ([], None),
    ([([b"a", b"b"], [True, True]), ([], [])], None),
    ([([b"a", b"b"], [True, False])], "1 source member missing on target (e.g. b)"),
    (
        [([b"a"], [False]), ([b"b", b"c"], [True, False])],
        "2 source members missing on target (e.g. a)",
    ),
    ([([b"x"], [True]), ([b"\xff"], [False])], "1 source member missing on target (e.g. b'\\xff')"),
]


@pytest.mark.parametrize(("chunks", "expected"), SET_CHUNK_ROWS)
def test_set_chunks_difference(chunks: list[Any], expected: str | None) -> None:
    source = Chunks(chunks)
    assert set_chunks_difference(source) == expected
    assert source.read == len(chunks)  # counts all of them


HASH_CHUNK_ROWS = [
    ([], None),
    ([[(b"a", b"1", b"1")], []], None),
    ([[(b"a", b"1", b"1"), (b"field-500", b"v", b"other")]], "field field-500 differs"),
    ([[(b"a", b"1", None)]], "field a missing on target"),
    (
        [[(b"a", b"1", None)], [(b"b", b"2", b"3")]],
        "2 fields differ or are missing on target, e.g. field a missing on target",
    ),
    (
        [[(b"a", b"1", b"1")], [(b"b", b"2", b"3"), (b"c", b"1", None), (b"d", b"", None)]],
        "3 fields differ or are missing on target, e.g. field b differs",
    ),
    ([[(b"e", b"", b"")]], None),  # an empty value is not a missing one
]


@pytest.mark.parametrize(("chunks", "expected"), HASH_CHUNK_ROWS)
def test_hash_chunks_difference(chunks: list[Any], expected: str | None) -> None:
    source = Chunks(chunks)
    assert hash_chunks_difference(source) == expected
    assert source.read == len(chunks)


@pytest.mark.parametrize(
    ("source", "target", "expected"),
    [
        ({b"a", b"b"}, {b"a", b"b"}, None),
        (set(), set(), None),
        ({b"a", b"b", b"c"}, {b"c"}, "2 members missing on target (e.g. a)"),
        ({b"c"}, {b"c", b"z", b"y"}, "2 members not on source (e.g. y)"),
        ({b"a"}, {b"b"}, "1 member missing on target (e.g. a); 1 member not on source (e.g. b)"),
    ],
)
def test_describe_set_difference(source: set[bytes], target: set[bytes], expected: Any) -> None:
    assert describe_set_difference(source, target) == expected


@pytest.mark.parametrize(
    ("source", "target", "expected"),
    [
        ({}, {}, None),
        ({b"a": b"1"}, {b"a": b"1"}, None),
        ({b"a": b"1"}, {b"a": b"2"}, "field a differs"),
        ({b"a": b"1", b"b": b"2"}, {b"b": b"2"}, "field a missing on target"),
        ({b"b": b"2"}, {b"b": b"2", b"a": b"1"}, "field a not on source"),
        # source fields first (sorted), then the target's own
        (
            {b"b": b"1", b"c": b"1"},
            {b"a": b"1", b"c": b"2"},
            "3 fields differ, e.g. field b missing on target",
        ),
    ],
)
def test_describe_hash_difference(
    source: dict[bytes, bytes], target: dict[bytes, bytes], expected: Any
) -> None:
    assert describe_hash_difference(source, target) == expected


# ----------------------------------------------------------------------------- small parsers


@pytest.mark.parametrize(
    ("left", "right", "expected"),
    [
        ([], [], None),
        ([1, 2, 3], [1, 2, 3], None),
        ([1, 2, 3], [1, 9, 3], 1),
        ([1, 2], [1, 2, 3], 2),
        ([1, 2, 3], [1], 1),
        ([], [1], 0),
        (b"abc", b"abd", 2),
        ([(b"a", 1.0)], [(b"a", 1.0000001)], 0),
    ],
)
def test_first_difference_table(left: Any, right: Any, expected: int | None) -> None:
    assert first_difference(left, right) == expected


@pytest.mark.parametrize(
    ("stream_id", "parsed", "following"),
    [
        (b"0-0", (0, 0), b"0-1"),
        (b"1-5", (1, 5), b"1-6"),
        (b"1700000000000-42", (1700000000000, 42), b"1700000000000-43"),
        (b"7", (7, 0), b"7-1"),
        (b"3-18446744073709551615", (3, 2**64 - 1), b"4-0"),
    ],
)
def test_stream_ids(stream_id: bytes, parsed: tuple[int, int], following: bytes) -> None:
    assert parse_stream_id(stream_id) == parsed
    assert next_stream_id(stream_id) == following
    assert parse_stream_id(next_stream_id(stream_id)) > parsed
