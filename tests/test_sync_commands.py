"""Table tests: a snapshot key as the writes the target gets (commands.key_writes)."""

from __future__ import annotations

import hiredis
import pytest

from replwatch.sync.commands import TargetCaps, key_writes
from replwatch.sync.dump import RestoreTarget, split_dump_payload
from replwatch.sync.rdb import (
    KeyEntry,
    StreamConsumer,
    StreamEntry,
    StreamGroup,
    StreamID,
    StreamPendingEntry,
    StreamValue,
)

REDIS_70 = TargetCaps.of(RestoreTarget("redis", (7, 0, 15), 10))
REDIS_62 = TargetCaps.of(RestoreTarget("redis", (6, 2, 14), 9))
REDIS_60 = TargetCaps.of(RestoreTarget("redis", (6, 0, 9), 9))


def decode(data: bytes) -> list[list[bytes]]:
    """Encoded commands back into argv lists (a RESP request is an array of bulk strings)."""
    reader = hiredis.Reader()
    reader.feed(data)
    out = []
    while (item := reader.gets()) is not False:
        out.append(item)
    return out


def entry(
    kind: str, value: object, rdb_type: int, raw: bytes | None = None, **kw: object
) -> KeyEntry:
    return KeyEntry(0, b"k", kind, value, kw.pop("expire_ms", None), raw, rdb_type, **kw)  # type: ignore[arg-type]


STREAM = StreamValue(
    entries=(
        StreamEntry(StreamID(1, 1), ((b"a", b"1"),)),
        StreamEntry(StreamID(1, 2), ((b"b", b"2"),)),
    ),
    length=2,
    last_id=StreamID(1, 5),
    first_id=StreamID(1, 1),
    max_deleted_id=StreamID(1, 4),
    entries_added=5,
    groups=(
        StreamGroup(
            b"g",
            StreamID(1, 2),
            2,
            (StreamPendingEntry(StreamID(1, 2), 1700000000000, 3, b"c1"),),
            (StreamConsumer(b"c1", 1700000000000, 1700000000000, (StreamID(1, 2),)),),
        ),
    ),
)

CASES = [
    ("string", entry("string", b"v", 0), REDIS_70, [[b"SET", b"k", b"v"]]),
    (
        "string with ttl, 6.2+",
        entry("string", b"v", 0, expire_ms=1800000000000),
        REDIS_62,
        [[b"SET", b"k", b"v", b"PXAT", b"1800000000000"]],
    ),
    (
        "string with ttl, 6.0",
        entry("string", b"v", 0, expire_ms=1800000000000),
        REDIS_60,
        [[b"SET", b"k", b"v"], [b"PEXPIREAT", b"k", b"1800000000000"]],
    ),
    ("list", entry("list", [b"a", b"b"], 18), REDIS_70, [[b"RPUSH", b"k", b"a", b"b"]]),
    ("set", entry("set", [b"x"], 20), REDIS_70, [[b"SADD", b"k", b"x"]]),
    (
        "zset with inf",
        entry("zset", [(b"m", 1.5), (b"top", float("inf"))], 17),
        REDIS_70,
        [[b"ZADD", b"k", b"1.5", b"m", b"inf", b"top"]],
    ),
    (
        "hash with ttl",
        entry("hash", [(b"f", b"v")], 16, expire_ms=1800000000000),
        REDIS_70,
        [[b"HSET", b"k", b"f", b"v"], [b"PEXPIREAT", b"k", b"1800000000000"]],
    ),
    (
        "stream, 7.0 target",
        entry("stream", STREAM, 19),
        REDIS_70,
        [
            [b"XADD", b"k", b"1-1", b"a", b"1"],
            [b"XADD", b"k", b"1-2", b"b", b"2"],
            [b"XGROUP", b"CREATE", b"k", b"g", b"1-2", b"ENTRIESREAD", b"2"],
            [b"XGROUP", b"CREATECONSUMER", b"k", b"g", b"c1"],
            [
                b"XCLAIM",
                b"k",
                b"g",
                b"c1",
                b"0",
                b"1-2",
                b"TIME",
                b"1700000000000",
                b"RETRYCOUNT",
                b"3",
                b"FORCE",
                b"JUSTID",
            ],
            [b"XSETID", b"k", b"1-5", b"ENTRIESADDED", b"5", b"MAXDELETEDID", b"1-4"],
        ],
    ),
    (
        "stream, 6.2 target: no 7.0 arguments",
        entry("stream", STREAM, 19),
        REDIS_62,
        [
            [b"XADD", b"k", b"1-1", b"a", b"1"],
            [b"XADD", b"k", b"1-2", b"b", b"2"],
            [b"XGROUP", b"CREATE", b"k", b"g", b"1-2"],
            [b"XGROUP", b"CREATECONSUMER", b"k", b"g", b"c1"],
            [
                b"XCLAIM",
                b"k",
                b"g",
                b"c1",
                b"0",
                b"1-2",
                b"TIME",
                b"1700000000000",
                b"RETRYCOUNT",
                b"3",
                b"FORCE",
                b"JUSTID",
            ],
            [b"XSETID", b"k", b"1-5"],
        ],
    ),
]


@pytest.mark.parametrize(("what", "key", "caps", "expected"), CASES, ids=[c[0] for c in CASES])
def test_plain_commands(
    what: str, key: KeyEntry, caps: TargetCaps, expected: list[list[bytes]]
) -> None:
    data, replies = key_writes(key, caps, source_valkey=False, replace=False)
    assert decode(data) == expected
    assert replies == len(expected)


def test_replace_deletes_first_and_chunks_are_bounded() -> None:
    big = entry("list", [b"%d" % i for i in range(1200)], 18)
    data, replies = key_writes(big, REDIS_70, source_valkey=False, replace=True, chunk=500)
    commands = decode(data)
    assert commands[0] == [b"DEL", b"k"]
    assert [len(c) - 2 for c in commands[1:]] == [500, 500, 200]
    assert replies == 4


@pytest.mark.parametrize(
    ("caps", "rdb_type", "restored"),
    [
        (REDIS_70, 18, True),  # quicklist2: 7.0 loads it
        (REDIS_62, 18, False),  # 6.2 cannot: plain commands
        (REDIS_70, 20, False),  # set listpack (RDB 11) on 7.0: plain commands
    ],
)
def test_restore_only_when_the_target_can_load_the_type(
    caps: TargetCaps, rdb_type: int, restored: bool
) -> None:
    key = entry(
        "list", [b"a"], rdb_type, raw=bytes([rdb_type]) + b"payload", expire_ms=1800000000000
    )
    data, _ = key_writes(key, caps, source_valkey=False, replace=False)
    commands = decode(data)
    if restored:
        assert commands[0][:3] == [b"RESTORE", b"k", b"1800000000000"]
        assert commands[0][4:] == [b"REPLACE", b"ABSTTL"]
        payload = split_dump_payload(commands[0][3])
        assert payload.rdb_version == caps.restore.rdb_version
    else:
        assert commands[0] == [b"RPUSH", b"k", b"a"]
    nope, _ = key_writes(key, caps, source_valkey=False, replace=False, use_restore=False)
    assert decode(nope)[0][0] == b"RPUSH"
