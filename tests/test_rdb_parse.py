"""The streaming RDB parser (replwatch.sync.rdb).

Two halves:
- hand-built RDB byte strings for every type and encoding, including the ones the local servers
  never write (zipmap, ziplists, linked lists, quicklist v1, Redis 7.4's hash field expiry types,
  stream listpacks v1/v2, slot info, module values), plus corrupted, truncated and hostile
  inputs, each of which must fail fast with the right exception;
- real servers of all four builds: a dataset with every type in compact and large encodings,
  expiries, several databases, streams with groups and pending entries, a function library;
  SAVE, parse the dump.rdb and compare with what redis-py reads back, then check each key's
  `raw` against DUMP and RESTORE it.

The encoders below are written from the format descriptions in the Redis/Valkey sources
(listpack.c, ziplist.c, intset.c, zipmap.c, lzf_d.c, t_stream.c, rdb.c), independently of the
parser.
"""

from __future__ import annotations

import contextlib
import math
import struct
import time
import tracemalloc
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import redis

from replwatch.sync.dump import build_dump_payload, crc64, split_dump_payload
from replwatch.sync.rdb import (
    AuxField,
    BytesSource,
    FileSource,
    FunctionEntry,
    KeyEntry,
    ModuleAux,
    ModuleValue,
    RdbChecksumError,
    RdbEnd,
    RdbError,
    RdbEvent,
    RdbFormatError,
    RdbHeader,
    RdbModuleError,
    RdbTruncatedError,
    ResizeDb,
    SelectDb,
    SlotImport,
    SlotInfo,
    StreamID,
    StreamValue,
    decode_serialized_value,
    lzf_decompress,
    module_type_name,
    parse_rdb,
)

from .support.servers import ServerBuild, ServerSet

# ----------------------------------------------------------------------------- encoders


def enc_len(n: int, width: str = "auto") -> bytes:
    """rdbSaveLen; `width` forces an encoding ("32", "64") to test the wide forms."""
    if width == "64":
        return b"\x81" + struct.pack(">Q", n)
    if width == "32":
        return b"\x80" + struct.pack(">I", n)
    if n < 64:
        return bytes([n])
    if n < 16384:
        return bytes([0x40 | (n >> 8), n & 0xFF])
    if n <= 0xFFFFFFFF:
        return b"\x80" + struct.pack(">I", n)
    return b"\x81" + struct.pack(">Q", n)


def enc_str(data: bytes, width: str = "auto") -> bytes:
    return enc_len(len(data), width) + data


def enc_int_str(value: int) -> bytes:
    """rdbEncodeInteger: 0xC0 int8, 0xC1 int16, 0xC2 int32 (little endian)."""
    if -128 <= value <= 127:
        return b"\xc0" + struct.pack("<b", value)
    if -32768 <= value <= 32767:
        return b"\xc1" + struct.pack("<h", value)
    return b"\xc2" + struct.pack("<i", value)


def enc_lzf(plain: bytes, compressed: bytes) -> bytes:
    return b"\xc3" + enc_len(len(compressed)) + enc_len(len(plain)) + compressed


def lzf_literals(data: bytes) -> bytes:
    """LZF stream made of literal runs only (up to 32 bytes each)."""
    out = bytearray()
    for i in range(0, len(data), 32):
        chunk = data[i : i + 32]
        out.append(len(chunk) - 1)
        out += chunk
    return bytes(out)


def lzf_backref(length: int, distance: int) -> bytes:
    """One LZF back reference: copy `length` (>= 3) bytes from `distance` back."""
    n = length - 2
    d = distance - 1
    if n < 7:
        return bytes([(n << 5) | (d >> 8), d & 0xFF])
    return bytes([(7 << 5) | (d >> 8), n - 7, d & 0xFF])


def lp_backlen(entry_len: int) -> bytes:
    """lpEncodeBacklen: 7-bit groups, most significant first, all but the first with bit 7."""
    if entry_len <= 127:
        size = 1
    elif entry_len < 16383:
        size = 2
    elif entry_len < 2097151:
        size = 3
    elif entry_len < 268435455:
        size = 4
    else:
        size = 5
    groups = [(entry_len >> (7 * (size - 1 - i))) & 127 for i in range(size)]
    return bytes([groups[0]] + [g | 128 for g in groups[1:]])


def lp_entry(item: bytes | int) -> bytes:
    if isinstance(item, int):
        if 0 <= item <= 127:
            body = bytes([item])
        elif -4096 <= item <= 4095:
            v = item & 0x1FFF
            body = bytes([0xC0 | (v >> 8), v & 0xFF])
        elif -(1 << 15) <= item < 1 << 15:
            body = b"\xf1" + struct.pack("<h", item)
        elif -(1 << 23) <= item < 1 << 23:
            body = b"\xf2" + (item & 0xFFFFFF).to_bytes(3, "little")
        elif -(1 << 31) <= item < 1 << 31:
            body = b"\xf3" + struct.pack("<i", item)
        else:
            body = b"\xf4" + struct.pack("<q", item)
    elif len(item) < 64:
        body = bytes([0x80 | len(item)]) + item
    elif len(item) < 4096:
        body = bytes([0xE0 | (len(item) >> 8), len(item) & 0xFF]) + item
    else:
        body = b"\xf0" + struct.pack("<I", len(item)) + item
    return body + lp_backlen(len(body))


def listpack(items: Sequence[bytes | int], count: int | None = None) -> bytes:
    body = b"".join(lp_entry(i) for i in items)
    n = len(items) if count is None else count
    return struct.pack("<IH", 6 + len(body) + 1, min(n, 0xFFFF)) + body + b"\xff"


def zl_encoding(item: bytes | int) -> bytes:
    if isinstance(item, int):
        if 0 <= item <= 12:
            return bytes([0xF1 + item])
        if -128 <= item <= 127:
            return b"\xfe" + struct.pack("<b", item)
        if -(1 << 15) <= item < 1 << 15:
            return b"\xc0" + struct.pack("<h", item)
        if -(1 << 23) <= item < 1 << 23:
            return b"\xf0" + (item & 0xFFFFFF).to_bytes(3, "little")
        if -(1 << 31) <= item < 1 << 31:
            return b"\xd0" + struct.pack("<i", item)
        return b"\xe0" + struct.pack("<q", item)
    n = len(item)
    if n < 64:
        return bytes([n]) + item
    if n < 16384:
        return bytes([0x40 | (n >> 8), n & 0xFF]) + item
    return b"\x80" + struct.pack(">I", n) + item


def ziplist(items: Sequence[bytes | int]) -> bytes:
    entries = []
    prev = 0
    for item in items:
        prevlen = bytes([prev]) if prev < 254 else b"\xfe" + struct.pack("<I", prev)
        entry = prevlen + zl_encoding(item)
        entries.append(entry)
        prev = len(entry)
    body = b"".join(entries)
    tail = 10 + len(body) - (len(entries[-1]) if entries else 0)
    return struct.pack("<IIH", 10 + len(body) + 1, tail, len(items)) + body + b"\xff"


def intset(values: Sequence[int], width: int) -> bytes:
    code = {2: "h", 4: "i", 8: "q"}[width]
    return struct.pack("<II", width, len(values)) + struct.pack(f"<{len(values)}{code}", *values)


def zipmap(pairs: Sequence[tuple[bytes, bytes]], free: int = 0) -> bytes:
    def zm_len(n: int) -> bytes:
        return bytes([n]) if n < 254 else b"\xfe" + struct.pack("<I", n)

    out = bytearray([len(pairs) if len(pairs) < 254 else 254])
    for key, value in pairs:
        out += zm_len(len(key)) + key + zm_len(len(value)) + bytes([free]) + value + b"\x00" * free
    return bytes(out + b"\xff")


def stream_id_raw(ms: int, seq: int) -> bytes:
    return struct.pack(">QQ", ms, seq)


def stream_node(
    master: tuple[int, int],
    master_fields: Sequence[bytes],
    entries: Sequence[tuple[int, tuple[int, int], Sequence[tuple[bytes, bytes]]]],
) -> bytes:
    """A stream radix-tree node listpack: entries are (flags, (ms, seq), fields)."""
    live = sum(1 for flags, _, _ in entries if not flags & 1)
    items: list[bytes | int] = [live, len(entries) - live, len(master_fields), *master_fields, 0]
    for flags, (ms, seq), fields in entries:
        items += [flags, ms - master[0], seq - master[1]]
        if flags & 2:
            assert [f for f, _ in fields] == list(master_fields)
            items += [v for _, v in fields]
            items.append(len(fields) + 3)
        else:
            items.append(len(fields))
            for f, v in fields:
                items += [f, v]
            items.append(len(fields) * 2 + 4)
    return listpack(items)


def rdb_file(body: bytes, version: int = 11, magic: str = "REDIS", checksum: bool = True) -> bytes:
    head = f"{magic}{version:04d}" if magic == "REDIS" else f"{magic}{version:03d}"
    content = head.encode() + body + b"\xff"
    if version < 5:
        return content
    return content + (struct.pack("<Q", crc64(content)) if checksum else b"\x00" * 8)


def key_record(rdb_type: int, key: bytes, value: bytes) -> bytes:
    return bytes([rdb_type]) + enc_str(key) + value


def parse_all(data: bytes, **kwargs: Any) -> list[RdbEvent]:
    kwargs.setdefault("raw_limit", 1 << 20)
    return list(parse_rdb(BytesSource(data), **kwargs))


def keys_of(events: Sequence[RdbEvent]) -> list[KeyEntry]:
    return [e for e in events if isinstance(e, KeyEntry)]


# ----------------------------------------------------------------------------- encoder check


def test_encoders_match_known_server_bytes() -> None:
    """The test encoders reproduce bytes the servers wrote: DUMP of HSET h f v n 5 on
    Redis 7.0 (a listpack) and of RPUSH l a 1000 -100000 on Redis 6.2 (a ziplist)."""
    assert listpack([b"f", b"v", b"n", 5]) == bytes.fromhex("120000000400816602817602816e020501ff")
    assert ziplist([b"a", 1000, -100000]) == bytes.fromhex(
        "1700000011000000030000016103c0e80304f06079feff"
    )
    assert lp_backlen(127) == b"\x7f"
    assert lp_backlen(128) == bytes([1, 128])
    assert lp_backlen(16383) == bytes([0, 255, 255])


# ----------------------------------------------------------------------------- value table

MS = 1_800_000_000_000  # a fixed expire-at in ms
BIG = b"B" * 300  # forces 14-bit lengths and 5-byte ziplist prevlen
HUGE = b"H" * 5000  # forces 32-bit listpack string / 12-bit overflow
ALL_LP_ITEMS: list[bytes | int] = [
    b"s",
    0,
    127,
    -1,
    4095,
    -4096,
    30000,
    -30000,
    8_000_000,
    -8_000_000,
    2_000_000_000,
    -2_000_000_000,
    1 << 40,
    -(1 << 62),
    b"x" * 100,
    HUGE,
]


def as_bytes(items: Sequence[bytes | int]) -> list[bytes]:
    return [i if isinstance(i, bytes) else b"%d" % i for i in items]


ABC = b"abc" * 40  # LZF: "abc" then one long overlapping back reference

ZL_ITEMS: list[bytes | int] = [b"a", BIG, b"after-big", 0, 12, -100, 30000, 8_000_000]
ZL_ITEMS += [-8_000_000, -2_000_000_000, 1 << 40, -(1 << 50), b"z" * 20000]


@dataclass(frozen=True)
class ValueCase:
    name: str
    rdb_type: int
    serialized: bytes
    kind: str
    expected: Any
    field_expiry: list[tuple[bytes, int]] | None = None
    magic: str = "REDIS"
    version: int = 11


def hfe_metadata() -> bytes:
    """Redis 7.4 HASH_METADATA: min expire, then (ttl, field, value); ttl 0 = none, else
    expire-at = ttl + min_expire - 1."""
    out = struct.pack("<q", MS) + enc_len(3)
    out += enc_len(0) + enc_str(b"keep") + enc_str(b"1")
    out += enc_len(1) + enc_str(b"soon") + enc_str(b"2")
    out += enc_len(5001) + enc_str(b"later") + enc_str(b"3")
    return out


def hfe_metadata_pre_ga() -> bytes:
    out = enc_len(2)
    out += enc_len(MS, "64") + enc_str(b"a") + enc_str(b"1")
    out += enc_len(0) + enc_str(b"b") + enc_str(b"2")
    return out


def valkey_hash_2() -> bytes:
    out = enc_len(2)
    out += enc_str(b"a") + enc_str(b"1") + struct.pack("<q", MS)
    out += enc_str(b"b") + enc_str(b"2") + struct.pack("<q", -1)
    return out


def zset_string_scores() -> bytes:
    out = enc_len(4) + enc_str(b"a") + b"\x031.5" + enc_str(b"b") + b"\xfe"
    return out + enc_str(b"c") + b"\xff" + enc_str(b"d") + b"\x17-0.10000000000000000555"


HELLO_LZF = lzf_literals(b"hello ") + lzf_backref(11, 6) + b"\x00!"
DIGITS = b"0123456789" * 7
QL1_NODE = ziplist([b"q" * 40])
LP_PAIRS = list(zip(as_bytes(ALL_LP_ITEMS)[::2], as_bytes(ALL_LP_ITEMS)[1::2], strict=True))
LP_ZSET: list[bytes | int] = [b"a", 1, b"b", b"2.5", b"c", b"inf", b"d", b"-inf", 7, 1 << 40]

VALUE_CASES = [
    ValueCase("string-6bit", 0, enc_str(b"hello"), "string", b"hello"),
    ValueCase("string-empty", 0, enc_str(b""), "string", b""),
    ValueCase("string-14bit", 0, enc_str(BIG), "string", BIG),
    ValueCase("string-32bit", 0, enc_str(b"w" * 70000), "string", b"w" * 70000),
    ValueCase("string-64bit-len", 0, enc_str(b"wide", "64"), "string", b"wide"),
    ValueCase("string-int8", 0, enc_int_str(-5), "string", b"-5"),
    ValueCase("string-int16", 0, enc_int_str(1000), "string", b"1000"),
    ValueCase("string-int32", 0, enc_int_str(-100000), "string", b"-100000"),
    ValueCase("string-lzf-literals", 0, enc_lzf(DIGITS, lzf_literals(DIGITS)), "string", DIGITS),
    ValueCase(
        "string-lzf-overlapping-backref",
        0,
        enc_lzf(ABC, lzf_literals(b"abc") + lzf_backref(len(ABC) - 3, 3)),
        "string",
        ABC,
    ),
    ValueCase(
        "string-lzf-short-backrefs",
        0,
        enc_lzf(b"hello hello hello!", HELLO_LZF),
        "string",
        b"hello hello hello!",
    ),
    ValueCase(
        "list-linked",
        1,
        enc_len(3) + enc_str(b"a") + enc_int_str(7) + enc_str(BIG),
        "list",
        [b"a", b"7", BIG],
        version=6,
    ),
    ValueCase(
        "list-ziplist-all-encodings",
        10,
        enc_str(ziplist(ZL_ITEMS)),
        "list",
        as_bytes(ZL_ITEMS),
        version=8,
    ),
    ValueCase(
        "list-quicklist-v1-with-lzf-node",
        14,
        enc_len(2) + enc_str(ziplist([b"a", b"b", 3])) + enc_lzf(QL1_NODE, lzf_literals(QL1_NODE)),
        "list",
        [b"a", b"b", b"3", b"q" * 40],
        version=9,
    ),
    ValueCase(
        "list-quicklist2-packed-and-plain",
        18,
        enc_len(3)
        + enc_len(2)
        + enc_str(listpack([b"a", 1, b"c"]))
        + enc_len(1)
        + enc_str(b"P" * 200)
        + enc_len(2)
        + enc_str(listpack([-7])),
        "list",
        [b"a", b"1", b"c", b"P" * 200, b"-7"],
        version=10,
    ),
    ValueCase("set-plain", 2, enc_len(2) + enc_str(b"x") + enc_str(b"y"), "set", [b"x", b"y"]),
    ValueCase("set-intset-16", 11, enc_str(intset([-3, 5, 300], 2)), "set", [b"-3", b"5", b"300"]),
    ValueCase("set-intset-32", 11, enc_str(intset([-70000, 7], 4)), "set", [b"-70000", b"7"]),
    ValueCase(
        "set-intset-64", 11, enc_str(intset([-(1 << 40), 9], 8)), "set", [b"-1099511627776", b"9"]
    ),
    ValueCase("set-listpack", 20, enc_str(listpack(ALL_LP_ITEMS)), "set", as_bytes(ALL_LP_ITEMS)),
    ValueCase(
        "zset-string-scores",
        3,
        zset_string_scores(),
        "zset",
        [(b"a", 1.5), (b"b", math.inf), (b"c", -math.inf), (b"d", -0.1)],
        version=6,
    ),
    ValueCase(
        "zset2-binary-scores",
        5,
        enc_len(2)
        + enc_str(b"a")
        + struct.pack("<d", 2.25)
        + enc_str(b"b")
        + struct.pack("<d", -1e300),
        "zset",
        [(b"a", 2.25), (b"b", -1e300)],
        version=9,
    ),
    ValueCase(
        "zset-ziplist",
        12,
        enc_str(ziplist([b"a", 1, b"b", b"2.5", b"c", -30000])),
        "zset",
        [(b"a", 1.0), (b"b", 2.5), (b"c", -30000.0)],
        version=9,
    ),
    ValueCase(
        "zset-listpack",
        17,
        enc_str(listpack(LP_ZSET)),
        "zset",
        [(b"a", 1.0), (b"b", 2.5), (b"c", math.inf), (b"d", -math.inf), (b"7", float(1 << 40))],
        version=10,
    ),
    ValueCase(
        "hash-plain",
        4,
        enc_len(2) + enc_str(b"f1") + enc_str(b"v1") + enc_str(b"f2") + enc_int_str(300),
        "hash",
        [(b"f1", b"v1"), (b"f2", b"300")],
        version=9,
    ),
    ValueCase(
        "hash-zipmap",
        9,
        enc_str(zipmap([(b"k", b"v"), (b"long", BIG)], free=2)),
        "hash",
        [(b"k", b"v"), (b"long", BIG)],
        version=3,
    ),
    ValueCase(
        "hash-ziplist",
        13,
        enc_str(ziplist([b"f", b"v", b"n", 5, b"big", BIG])),
        "hash",
        [(b"f", b"v"), (b"n", b"5"), (b"big", BIG)],
        version=9,
    ),
    ValueCase("hash-listpack", 16, enc_str(listpack(ALL_LP_ITEMS)), "hash", LP_PAIRS, version=10),
    ValueCase(
        "redis74-hash-metadata",
        24,
        hfe_metadata(),
        "hash",
        [(b"keep", b"1"), (b"soon", b"2"), (b"later", b"3")],
        [(b"soon", MS), (b"later", MS + 5000)],
        version=12,
    ),
    ValueCase(
        "redis74-hash-metadata-pre-ga",
        22,
        hfe_metadata_pre_ga(),
        "hash",
        [(b"a", b"1"), (b"b", b"2")],
        [(b"a", MS)],
        version=12,
    ),
    ValueCase(
        "redis74-hash-listpack-ex",
        25,
        struct.pack("<q", MS) + enc_str(listpack([b"a", b"1", MS, b"b", 2, 0])),
        "hash",
        [(b"a", b"1"), (b"b", b"2")],
        [(b"a", MS)],
        version=12,
    ),
    ValueCase(
        "redis74-hash-listpack-ex-pre-ga",
        23,
        enc_str(listpack([b"a", b"1", 0, b"b", b"2", MS + 1])),
        "hash",
        [(b"a", b"1"), (b"b", b"2")],
        [(b"b", MS + 1)],
        version=12,
    ),
    ValueCase(
        "valkey9-hash-2",
        22,
        valkey_hash_2(),
        "hash",
        [(b"a", b"1"), (b"b", b"2")],
        [(b"a", MS)],
        magic="VALKEY",
        version=80,
    ),
]


@pytest.mark.parametrize("case", VALUE_CASES, ids=lambda case: case.name)
def test_value_encodings(case: ValueCase) -> None:
    body = (
        b"\xfa" + enc_str(b"redis-ver") + enc_str(b"7.4.0")
        + b"\xfe" + enc_len(3)
        + b"\xfb" + enc_len(1) + enc_len(1)
        + b"\xfc" + struct.pack("<q", MS)
        + key_record(case.rdb_type, b"the-key", case.serialized)
    )  # fmt: skip
    events = parse_all(rdb_file(body, case.version, case.magic))
    assert events[0] == RdbHeader(case.magic, case.version)
    assert events[1] == AuxField(b"redis-ver", b"7.4.0")
    assert events[2] == SelectDb(3)
    assert events[3] == ResizeDb(1, 1)
    entry = events[4]
    assert isinstance(entry, KeyEntry)
    assert (entry.db, entry.key, entry.kind) == (3, b"the-key", case.kind)
    assert entry.rdb_type == case.rdb_type
    assert entry.value == case.expected
    assert entry.field_expiry == case.field_expiry
    assert entry.expire_ms == MS
    assert entry.raw == bytes([case.rdb_type]) + case.serialized
    last = events[-1]
    assert isinstance(last, RdbEnd)
    assert last.verified == (case.version >= 5)
    assert len(events) == 6
    # the raw bytes decode to the same value on their own (a DUMP payload body)
    decoded = decode_serialized_value(
        entry.raw, rdb_version=case.version, valkey=case.magic == "VALKEY"
    )
    assert (decoded.kind, decoded.value) == (case.kind, case.expected)
    assert decoded.field_expiry == case.field_expiry


# ----------------------------------------------------------------------------- streams


def stream_body(rdb_type: int) -> bytes:
    """Two nodes; samefields + own-fields entries; one deleted entry; a group with a PEL."""
    node1 = stream_node(
        (1000, 0),
        [b"temp", b"hum"],
        [
            (2, (1000, 0), [(b"temp", b"20"), (b"hum", b"50")]),
            (1, (1000, 1), [(b"temp", b"21"), (b"hum", b"51")]),  # deleted
            (0, (1001, 0), [(b"other", b"x")]),
            (2, (1002, 5), [(b"temp", b"-3"), (b"hum", BIG)]),
        ],
    )
    node2 = stream_node((2000, 0), [b"k"], [(2, (2000, 0), [(b"k", b"v")])])
    out = enc_len(2)
    out += enc_str(stream_id_raw(1000, 0)) + enc_str(node1)
    out += enc_str(stream_id_raw(2000, 0)) + enc_str(node2)
    out += enc_len(4) + enc_len(2000) + enc_len(0)  # length, last id
    if rdb_type >= 19:
        out += enc_len(1000) + enc_len(0)  # first id
        out += enc_len(1000) + enc_len(1)  # max deleted id
        out += enc_len(5)  # entries added
    out += enc_len(2)  # groups
    # group g1: 2 pending, consumer alice owns both, consumer bob owns none
    out += enc_str(b"g1") + enc_len(1002) + enc_len(5)
    if rdb_type >= 19:
        out += enc_len(3)  # entries read
    out += enc_len(2)
    out += stream_id_raw(1000, 0) + struct.pack("<q", MS) + enc_len(2)
    out += stream_id_raw(1002, 5) + struct.pack("<q", MS + 7) + enc_len(1)
    out += enc_len(2)
    out += enc_str(b"alice") + struct.pack("<q", MS + 10)
    if rdb_type >= 21:
        out += struct.pack("<q", MS + 11)
    out += enc_len(2) + stream_id_raw(1000, 0) + stream_id_raw(1002, 5)
    out += enc_str(b"bob") + struct.pack("<q", MS + 20)
    if rdb_type >= 21:
        out += struct.pack("<q", -1)
    out += enc_len(0)
    # group g2: nothing read, entries_read unknown (-1 saved as a 64-bit length)
    out += enc_str(b"g2") + enc_len(0) + enc_len(0)
    if rdb_type >= 19:
        out += enc_len((1 << 64) - 1)
    out += enc_len(0) + enc_len(0)
    return out


@pytest.mark.parametrize("rdb_type", [15, 19, 21], ids=["v1", "v2", "v3"])
def test_stream_listpacks(rdb_type: int) -> None:
    serialized = stream_body(rdb_type)
    events = parse_all(rdb_file(key_record(rdb_type, b"s", serialized), 11))
    (entry,) = keys_of(events)
    assert entry.kind == "stream" and entry.raw == bytes([rdb_type]) + serialized
    value = entry.value
    assert isinstance(value, StreamValue)
    assert [(str(e.id), e.fields) for e in value.entries] == [
        ("1000-0", ((b"temp", b"20"), (b"hum", b"50"))),
        ("1001-0", ((b"other", b"x"),)),
        ("1002-5", ((b"temp", b"-3"), (b"hum", BIG))),
        ("2000-0", ((b"k", b"v"),)),
    ]
    assert value.length == 4 and value.last_id == StreamID(2000, 0)
    if rdb_type >= 19:
        assert value.first_id == StreamID(1000, 0)
        assert value.max_deleted_id == StreamID(1000, 1)
        assert value.entries_added == 5
    else:
        assert value.first_id is value.max_deleted_id is value.entries_added is None
    g1, g2 = value.groups
    assert (g1.name, g1.last_id) == (b"g1", StreamID(1002, 5))
    assert g1.entries_read == (3 if rdb_type >= 19 else None)
    assert [(str(p.id), p.delivery_time_ms, p.delivery_count, p.consumer) for p in g1.pending] == [
        ("1000-0", MS, 2, b"alice"),
        ("1002-5", MS + 7, 1, b"alice"),
    ]
    alice, bob = g1.consumers
    assert (alice.name, alice.seen_time_ms) == (b"alice", MS + 10)
    assert alice.active_time_ms == (MS + 11 if rdb_type >= 21 else None)
    assert alice.pending == (StreamID(1000, 0), StreamID(1002, 5))
    assert (bob.name, bob.pending) == (b"bob", ())
    assert bob.active_time_ms == (-1 if rdb_type >= 21 else None)
    assert g2.entries_read == (-1 if rdb_type >= 19 else None)
    assert (g2.pending, g2.consumers) == ((), ())


def test_stream_consumer_pel_must_be_in_group_pel() -> None:
    serialized = bytearray(stream_body(21))
    # alice's second PEL id: 1002-5 → 1002-6 (not in the group PEL)
    marker = stream_id_raw(1000, 0) + stream_id_raw(1002, 5)
    at = bytes(serialized).index(marker) + 16
    serialized[at : at + 16] = stream_id_raw(1002, 6)
    with pytest.raises(RdbFormatError, match="consumer PEL entry missing"):
        parse_all(rdb_file(key_record(21, b"s", bytes(serialized)), 11))


# ----------------------------------------------------------------------------- opcodes


def module_id(name: str, encver: int) -> int:
    charset = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
    value = 0
    for ch in name:
        value = (value << 6) | charset.index(ch)
    return (value << 10) | encver


MODULE_OPS = (  # a self-describing module body (RDB_TYPE_MODULE_2) after the module id
    enc_len(1) + enc_len(42)  # SINT
    + enc_len(2) + enc_len(1 << 40, "64")  # UINT
    + enc_len(3) + struct.pack("<f", 1.5)  # FLOAT
    + enc_len(4) + struct.pack("<d", 2.5)  # DOUBLE
    + enc_len(5) + enc_str(b'{"a":1}')  # STRING
    + enc_len(5) + enc_lzf(b"0123456789" * 3, lzf_literals(b"0123456789" * 3))
    + enc_len(0)  # EOF
)  # fmt: skip
MODULE_BODY = enc_len(module_id("ReJSON-RL", 3)) + MODULE_OPS


def test_module_name_from_id() -> None:
    assert module_type_name(module_id("ReJSON-RL", 3)) == "ReJSON-RL"
    assert module_type_name(module_id("MBbloom--", 1)) == "MBbloom--"


def test_module_value_skipped_with_raw() -> None:
    data = rdb_file(key_record(7, b"doc", MODULE_BODY) + key_record(0, b"after", enc_str(b"x")))
    entries = keys_of(parse_all(data, raw_limit=0))  # raw kept for modules whatever the limit
    assert entries[0].kind == "module"
    assert entries[0].value == ModuleValue("ReJSON-RL", module_id("ReJSON-RL", 3))
    assert isinstance(entries[0].value, ModuleValue) and entries[0].value.encoding_version == 3
    assert entries[0].raw == b"\x07" + MODULE_BODY
    assert (entries[1].key, entries[1].value, entries[1].raw) == (b"after", b"x", None)


def test_module_value_error_names_module_and_key() -> None:
    data = rdb_file(key_record(7, b"doc", MODULE_BODY))
    with pytest.raises(RdbModuleError, match=r"'ReJSON-RL' \(key b'doc'\)") as info:
        parse_all(data, on_module="error")
    assert (info.value.module_name, info.value.key) == ("ReJSON-RL", b"doc")
    assert info.value.offset == 9 + 1 + 4  # magic, type byte, key


def test_module_pre_ga_and_bad_opcode_cannot_be_skipped() -> None:
    pre_ga = rdb_file(key_record(6, b"old", enc_len(module_id("oldmodule", 0)) + b"\x00"))
    with pytest.raises(RdbModuleError, match="pre-GA"):
        parse_all(pre_ga)
    bad = rdb_file(key_record(7, b"k", enc_len(module_id("ReJSON-RL", 3)) + enc_len(9)))
    with pytest.raises(RdbModuleError, match="unknown module opcode 9"):
        parse_all(bad)


def test_module_aux() -> None:
    aux = b"\xf7" + enc_len(module_id("MBbloom--", 2)) + enc_len(2) + enc_len(1) + MODULE_OPS
    data = rdb_file(aux + key_record(0, b"k", enc_str(b"v")))
    events = parse_all(data)
    assert events[1] == ModuleAux("MBbloom--", module_id("MBbloom--", 2), 1)
    assert keys_of(events)[0].value == b"v"
    with pytest.raises(RdbModuleError, match="'MBbloom--' \\(module aux data\\)"):
        parse_all(data, on_module="error")


def test_key_attributes_and_meta_opcodes() -> None:
    body = (
        b"\xf5" + enc_str(b"#!lua name=lib\nredis.register_function('f', function() end)")
        + b"\xfe" + enc_len(0)
        + b"\xfd" + struct.pack("<i", 1_900_000_000)
        + key_record(0, b"sec", enc_str(b"1"))
        + b"\xf8" + enc_len(3600)
        + key_record(0, b"idle", enc_str(b"2"))
        + b"\xf9" + b"\x05"
        + b"\xfc" + struct.pack("<q", MS)
        + key_record(0, b"freq", enc_str(b"3"))
        + key_record(0, b"plain", enc_str(b"4"))
        + b"\xfe" + enc_len(15)
        + b"\xf4" + enc_len(12000) + enc_len(10) + enc_len(2)
        + key_record(0, b"db15", enc_str(b"5"))
    )  # fmt: skip
    events = parse_all(rdb_file(body, 12))
    assert events[1] == FunctionEntry(
        b"#!lua name=lib\nredis.register_function('f', function() end)"
    )
    assert SlotInfo(12000, 10, 2) in events
    entries = {e.key: e for e in keys_of(events)}
    assert entries[b"sec"].expire_ms == 1_900_000_000_000
    assert (entries[b"idle"].idle_seconds, entries[b"idle"].expire_ms) == (3600, None)
    assert (entries[b"freq"].lfu_freq, entries[b"freq"].expire_ms) == (5, MS)
    assert (entries[b"plain"].idle_seconds, entries[b"plain"].lfu_freq) == (None, None)
    assert entries[b"plain"].expire_ms is None
    assert (entries[b"db15"].db, entries[b"plain"].db) == (15, 0)


def test_valkey_slot_import_and_foreign_opcodes() -> None:
    name = b"a" * 40
    body = b"\xf3" + enc_str(name) + enc_len(2) + enc_len(0) + enc_len(99)
    body += enc_len(16000) + enc_len(16383)
    events = parse_all(rdb_file(body, 80, "VALKEY"))
    assert events[1] == SlotImport(name, ((0, 99), (16000, 16383)))
    with pytest.raises(RdbFormatError, match="unknown opcode 243 for REDIS") as info:
        parse_all(rdb_file(body, 12))  # 243 is Redis 8's KEY_META: not this format
    assert info.value.offset == 9
    # Valkey 9.2's path hash (type 23, RDB 81) is not known
    with pytest.raises(RdbFormatError, match="unknown value type 23 for VALKEY"):
        parse_all(rdb_file(key_record(23, b"k", b""), 80, "VALKEY"))


def test_old_rdb_without_checksum_and_zero_checksum() -> None:
    events = parse_all(rdb_file(key_record(0, b"k", enc_str(b"v")), 4))
    assert events[-1] == RdbEnd(b"", False)
    events = parse_all(rdb_file(key_record(0, b"k", enc_str(b"v")), 11, checksum=False))
    assert events[-1] == RdbEnd(b"\x00" * 8, False)


# ----------------------------------------------------------------------------- bad input

GOOD = rdb_file(
    b"\xfa" + enc_str(b"redis-ver") + enc_str(b"7.2.4")
    + b"\xfe" + enc_len(0)
    + key_record(0, b"s", enc_lzf(ABC, lzf_literals(b"abc") + lzf_backref(len(ABC) - 3, 3)))
    + key_record(18, b"l", enc_len(1) + enc_len(2) + enc_str(listpack([b"a", 1, BIG])))
    + key_record(16, b"h", enc_str(listpack([b"f", b"v", b"n", 300])))
    + key_record(11, b"i", enc_str(intset([1, 2, 3], 2)))
    + b"\xfc" + struct.pack("<q", MS)
    + key_record(5, b"z", enc_len(1) + enc_str(b"m") + struct.pack("<d", 1.25))
    + key_record(21, b"st", stream_body(21)),
    11,
)  # fmt: skip


def fails_fast(data: bytes, **kwargs: Any) -> RdbError:
    started = time.monotonic()
    with pytest.raises(RdbError) as info:
        parse_all(data, **kwargs)
    assert time.monotonic() - started < 1.0
    return info.value


def test_good_input_parses() -> None:
    events = parse_all(GOOD)
    assert [e.key for e in keys_of(events)] == [b"s", b"l", b"h", b"i", b"z", b"st"]
    assert events[-1] == RdbEnd(GOOD[-8:], True)


def test_every_truncation_is_a_truncation_error() -> None:
    for cut in range(len(GOOD)):
        error = fails_fast(GOOD[:cut])
        assert isinstance(error, RdbFormatError), (cut, error)
        if cut >= 9:
            assert isinstance(error, RdbTruncatedError), (cut, error)


def test_every_single_byte_corruption_is_detected() -> None:
    for at in range(len(GOOD)):
        corrupt = bytearray(GOOD)
        corrupt[at] ^= 0x5A
        error = fails_fast(bytes(corrupt))
        assert isinstance(error, RdbError), at


def test_corruption_without_checksum_never_leaks_other_exceptions() -> None:
    """With the CRC off, a corrupt body either parses or raises an RdbError: never
    IndexError, struct.error, UnicodeError, MemoryError …"""
    for at in range(9, len(GOOD) - 8):
        for flip in (0x01, 0x80, 0xFF):
            corrupt = bytearray(GOOD)
            corrupt[at] ^= flip
            with contextlib.suppress(RdbError):
                parse_all(bytes(corrupt), verify_checksum=False)


def test_checksum_mismatch() -> None:
    corrupt = GOOD[:-1] + bytes([GOOD[-1] ^ 1])
    error = fails_fast(corrupt)
    assert isinstance(error, RdbChecksumError)
    assert error.offset == len(GOOD) - 8
    events = parse_all(corrupt, verify_checksum=False)
    assert events[-1] == RdbEnd(corrupt[-8:], False)


def key_only(rdb_type: int, serialized: bytes, version: int = 11) -> bytes:
    return rdb_file(key_record(rdb_type, b"k", serialized), version)


BAD_CASES: list[tuple[str, bytes, type[RdbError], str]] = [
    ("bad-magic", b"RUBIS0009" + b"\xff" + b"\x00" * 8, RdbFormatError, "bad magic"),
    ("bad-version-digits", b"REDIS00x9\xff" + b"\x00" * 8, RdbFormatError, "bad RDB version"),
    ("valkey-magic-old-version", rdb_file(b"", 80, "VALKEY").replace(b"VALKEY080", b"VALKEY011"),
     RdbFormatError, "not valid with magic VALKEY"),
    ("redis-magic-valkey-version", rdb_file(b"", 11).replace(b"REDIS0011", b"REDIS0080"),
     RdbFormatError, "not valid with magic REDIS"),
    ("unknown-type", key_only(30, b""), RdbFormatError, "unknown value type 30"),
    ("unknown-opcode", rdb_file(b"\xf2", 11), RdbFormatError, "unknown opcode 242"),
    ("function-pre-ga", rdb_file(b"\xf6" + enc_str(b"x"), 10), RdbFormatError, "pre-GA"),
    ("bad-string-encoding", key_only(0, b"\xc4"), RdbFormatError, "string encoding byte 0xc4"),
    ("length-where-encoded", key_only(1, b"\xc0\x01"), RdbFormatError, "expected a length"),
    ("hostile-string-length", key_only(0, enc_len(1 << 40)), RdbFormatError, "over the"),
    ("string-longer-than-input", key_only(0, enc_len(10_000_000) + b"abc"), RdbTruncatedError,
     "only"),
    ("hostile-list-count", key_only(1, enc_len(1 << 62)), RdbTruncatedError, "declared"),
    ("hostile-zset-count", key_only(5, enc_len(1 << 33)), RdbTruncatedError, "declared"),
    ("hostile-stream-groups", key_only(15, enc_len(0) + enc_len(0) * 3 + enc_len(1 << 50)),
     RdbTruncatedError, "stream groups"),
    ("lzf-backref-before-start", key_only(0, enc_lzf(b"x" * 10, lzf_backref(10, 5))),
     RdbFormatError, "before the start"),
    ("lzf-literal-past-end", key_only(0, enc_lzf(b"x" * 10, b"\x09xx")), RdbFormatError,
     "literal run"),
    ("lzf-short-output", key_only(0, enc_lzf(b"x" * 10, lzf_literals(b"x" * 9))),
     RdbFormatError, "expands to 9 bytes, declared 10"),
    ("lzf-long-output", key_only(0, enc_lzf(b"x" * 8, lzf_literals(b"x" * 9))),
     RdbFormatError, "expands to 9 bytes, declared 8"),
    ("lzf-cut-backref", key_only(0, enc_lzf(b"x" * 10, b"\x00x\xe0")), RdbFormatError,
     "ends inside a back reference"),
    ("lzf-impossible-ratio", key_only(0, b"\xc3" + enc_len(2) + enc_len(1 << 29) + b"\x00x"),
     RdbFormatError, "more than LZF can expand"),
    ("lzf-declared-over-cap", key_only(0, b"\xc3" + enc_len(2) + enc_len(1 << 40) + b"\x00x"),
     RdbFormatError, "over the"),
    ("listpack-size-mismatch", key_only(20, enc_str(listpack([b"a"])[:-2] + b"\xff")),
     RdbFormatError, "header says"),
    ("listpack-bad-encoding", key_only(20, enc_str(struct.pack("<IH", 9, 1) + b"\xf5\x01\xff")),
     RdbFormatError, "bad encoding 0xf5"),
    ("listpack-string-past-end",
     key_only(20, enc_str(struct.pack("<IH", 11, 1) + b"\x85ab\x06\xff")), RdbFormatError,
     "runs past the end"),
    ("listpack-count-mismatch", key_only(20, enc_str(listpack([b"a", b"b"], count=3))),
     RdbFormatError, "counts 3 entries, found 2"),
    ("listpack-no-terminator", key_only(20, enc_str(listpack([b"a"])[:-1] + b"\x00")),
     RdbFormatError, "does not end with 0xFF"),
    ("ziplist-bad-encoding",
     key_only(10, enc_str(struct.pack("<IIH", 13, 10, 1) + b"\x00\xc5\xff")), RdbFormatError,
     "bad encoding 0xc5"),
    ("ziplist-string-past-end",
     key_only(10, enc_str(struct.pack("<IIH", 14, 10, 1) + b"\x00\x09a\xff")), RdbFormatError,
     "runs past the end"),
    ("ziplist-count-mismatch", key_only(10, enc_str(ziplist([b"a"])[:8] + b"\x05\x00"
     + ziplist([b"a"])[10:])), RdbFormatError, "counts 5 entries, found 1"),
    ("intset-bad-width", key_only(11, enc_str(struct.pack("<II", 3, 1) + b"abc")),
     RdbFormatError, "bad integer width 3"),
    ("intset-bad-size", key_only(11, enc_str(intset([1, 2], 2) + b"\x00")), RdbFormatError,
     "cannot be"),
    ("zipmap-past-end", key_only(9, enc_str(b"\x01\x05ab")), RdbFormatError, "zipmap"),
    ("hash-listpack-odd", key_only(16, enc_str(listpack([b"a", b"b", b"c"]))), RdbFormatError,
     "odd number"),
    ("zset-listpack-bad-score", key_only(17, enc_str(listpack([b"a", b"x1"]))), RdbFormatError,
     "not a number"),
    ("zset-string-score-garbage", key_only(3, enc_len(1) + enc_str(b"a") + b"\x03abc", 6),
     RdbFormatError, "not a number"),
    ("quicklist2-bad-container", key_only(18, enc_len(1) + enc_len(3) + enc_str(b"x")),
     RdbFormatError, "container 3"),
    ("stream-node-key-size", key_only(15, enc_len(1) + enc_str(b"short") + enc_str(b"")),
     RdbFormatError, "stream node key is 5 bytes"),
    ("stream-live-count", key_only(15, enc_len(1) + enc_str(stream_id_raw(1, 0))
     + enc_str(listpack([2, 0, 1, b"f", 0, 2, 0, 0, b"v", 4])) + b"\x00" * 9),
     RdbFormatError, "counts 2 live entries, found 1"),
    ("hash-listpack-ex-not-triplets",
     rdb_file(key_record(25, b"k", struct.pack("<q", 0) + enc_str(listpack([b"a", b"b"]))), 12),
     RdbFormatError, "not triplets"),
    ("valkey-hash2-bad-expiry",
     rdb_file(key_record(22, b"k", enc_len(1) + enc_str(b"f") + enc_str(b"v")
                         + struct.pack("<q", -5)), 80, "VALKEY"), RdbFormatError,
     "expire-at -5 is invalid"),
    ("module-aux-bad-when", rdb_file(b"\xf7" + enc_len(module_id("ReJSON-RL", 1)) + enc_len(1)
     + enc_len(1) + b"\x00"), RdbFormatError, "bad when-opcode 1"),
]  # fmt: skip


@pytest.mark.parametrize("case", BAD_CASES, ids=lambda case: case[0])
def test_bad_inputs_fail_fast(case: tuple[str, bytes, type[RdbError], str]) -> None:
    _, data, error_type, message = case
    error = fails_fast(data)
    assert isinstance(error, error_type), repr(error)
    assert message in str(error)
    assert "at byte offset" in str(error)


def test_error_offsets_point_at_the_problem() -> None:
    data = rdb_file(key_record(0, b"ok", enc_str(b"v")) + key_record(30, b"k", b""))
    error = fails_fast(data)
    assert error.offset == 9 + 1 + 3 + 2  # header, first key record: type, key, value
    assert data[error.offset] == 30


class ExactSource:
    """Only read(n): no read-ahead, no size hint (like a plain socket reader)."""

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.pos = 0
        self.calls = 0

    def read(self, n: int, /) -> bytes:
        self.calls += 1
        if self.pos + n > len(self.data):
            raise EOFError
        chunk = self.data[self.pos : self.pos + n]
        self.pos += n
        return chunk


class DribbleSource(ExactSource):
    """read_some() hands out one byte at a time: every buffer boundary gets crossed."""

    def read_some(self, max_n: int, /) -> bytes:
        return self.read(1)


def test_hostile_length_without_size_hint_allocates_nothing_big() -> None:
    data = key_only(0, enc_len(900_000_000) + b"only a few bytes")
    tracemalloc.start()
    try:
        with pytest.raises(RdbTruncatedError, match="input ended"):
            list(parse_rdb(ExactSource(data), raw_limit=1 << 30))
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 4 << 20


def test_sources_give_identical_events() -> None:
    reference = parse_all(GOOD)
    exact = ExactSource(GOOD + b"TRAILING")
    assert list(parse_rdb(exact, raw_limit=1 << 20)) == reference
    assert exact.data[exact.pos :] == b"TRAILING"  # nothing read past the checksum
    dribble = DribbleSource(GOOD)
    assert list(parse_rdb(dribble, raw_limit=1 << 20)) == reference
    assert dribble.pos == len(GOOD)


def test_raw_limit() -> None:
    events = parse_all(GOOD, raw_limit=40)
    raws = {e.key: e.raw for e in keys_of(events)}
    assert raws[b"i"] == bytes([11]) + enc_str(intset([1, 2, 3], 2))  # 16 bytes
    assert raws[b"l"] is None  # 300+ bytes
    assert raws[b"st"] is None
    assert all(e.raw is None for e in keys_of(parse_all(GOOD, raw_limit=0)))
    # a value just at the limit is kept, one byte over is not
    size = len(raws[b"i"]) - 1
    at_limit = {e.key: e.raw for e in keys_of(parse_all(GOOD, raw_limit=size))}
    over = {e.key: e.raw for e in keys_of(parse_all(GOOD, raw_limit=size - 1))}
    assert at_limit[b"i"] is not None and over[b"i"] is None


def test_raw_survives_buffer_boundaries() -> None:
    """A capture that spans many refills (1-byte reads) and one over the limit mid-way."""
    events = list(parse_rdb(DribbleSource(GOOD), raw_limit=100))
    small = list(parse_rdb(BytesSource(GOOD), raw_limit=100))
    assert events == small
    assert {e.key for e in keys_of(events) if e.raw is None} == {b"l", b"st"}


def test_memory_does_not_grow_with_the_dataset() -> None:
    body = b"".join(
        key_record(0, b"key:%d" % i, enc_str(b"%d" % i + b"v" * 100)) for i in range(100_000)
    )
    data = rdb_file(b"\xfe\x00" + body, 11)
    assert len(data) > 10 << 20
    source = BytesSource(data)
    tracemalloc.start()
    try:
        count = 0
        for event in parse_rdb(source, raw_limit=1 << 20):
            count += isinstance(event, KeyEntry)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert count == 100_000
    assert peak < 3 << 20, f"peak {peak} bytes while parsing {len(data)} bytes"


def test_lzf_decompress_directly() -> None:
    assert lzf_decompress(lzf_literals(b"xyz"), 3) == b"xyz"
    long_ref = lzf_literals(b"ab") + lzf_backref(264, 2)
    assert lzf_decompress(long_ref, 266) == b"ab" * 133
    with pytest.raises(RdbFormatError):
        lzf_decompress(long_ref, 265)


# ----------------------------------------------------------------------------- real servers

FAR = 4_000_000_000_000  # an expire-at far in the future (ms)
FUNCTION_CODE = (
    "#!lua name=rwlib\nredis.register_function('rw_echo', function(keys, args) return args[1] end)"
)


def populate(client: redis.Redis, build: ServerBuild) -> None:
    """Every type, compact and large encodings, expiries, three databases."""
    modern = build.version_info >= (7, 0) or build.product == "valkey"
    if modern:
        client.execute_command("DEBUG", "QUICKLIST-PACKED-THRESHOLD", "1000")
    client.config_set("list-compress-depth", "1")  # inner quicklist nodes LZF-compressed
    pipe = client.pipeline(transaction=False)
    pipe.select(0)
    pipe.set("str:small", "hello")
    pipe.set("str:int", "12345")
    pipe.set("str:neg", "-7")
    pipe.set("str:int32", "-100000")
    pipe.set("str:empty", "")
    pipe.set("str:lzf", "abc" * 100)
    pipe.set("str:big", bytes(range(256)) * 3)
    pipe.set("str:ttl", "expiring")
    pipe.pexpireat("str:ttl", FAR)
    pipe.rpush("list:small", "a", "b", 1, 300, -5, "c" * 70)
    pipe.rpush("list:big", *[b"item-%d-" % i + b"x" * (i % 50) for i in range(2000)])
    if modern:
        pipe.rpush("list:plain", "small", "P" * 5000, "after")
    pipe.sadd("set:int", 1, 2, 3, -50000, 1 << 40)
    pipe.sadd("set:str", "apple", "banana", "cherry")
    pipe.sadd("set:big", *[f"member-{i}" for i in range(600)])
    pipe.sadd("set:bigint", *range(1000))
    pipe.zadd("zset:small", {"a": 1, "b": 2.5, "c": -3.25, "d": float("inf")})
    pipe.zadd("zset:big", {f"m{i}": i / 7 for i in range(300)})
    pipe.hset("hash:small", mapping={"f1": "v1", "f2": 2, "f3": "x" * 30})
    pipe.hset("hash:big", mapping={f"field{i}": f"value{i}" for i in range(1000)})
    pipe.hset("hash:longval", mapping={"k": "v" * 100})
    pipe.pexpireat("hash:big", FAR + 1)
    for i in range(150):
        fields = {"temp": i, "hum": 40 + i % 7} if i % 3 else {"other": f"x{i}"}
        pipe.xadd("stream:big", fields, id=f"{1000 + i}-{i % 2}")
    pipe.xadd("stream:small", {"a": 1}, id="1-1")
    pipe.select(1)
    pipe.set("db1:key", "in db 1")
    pipe.hset("db1:hash", "f", "v")
    pipe.select(3)
    pipe.set("db3:key", "in db 3")
    pipe.pexpireat("db3:key", FAR + 2)
    pipe.select(0)
    pipe.execute()
    client.xdel("stream:big", "1010-0", "1011-1", "1149-1")
    client.xgroup_create("stream:big", "g1", id="0")
    client.xgroup_create("stream:big", "g2", id="$")
    client.xreadgroup("g1", "alice", {"stream:big": ">"}, count=5)
    client.xreadgroup("g1", "bob", {"stream:big": ">"}, count=3)
    client.xack("stream:big", "g1", "1001-1", "1002-0")
    client.xclaim("stream:big", "g1", "bob", 0, ["1003-1"])
    if modern:
        client.function_load(FUNCTION_CODE)
    if build.product == "valkey" and build.version_info >= (9, 0):
        client.hset("hash:hfe", mapping={"keep": "1", "soon": "2", "later": "3"})
        client.execute_command("HPEXPIREAT", "hash:hfe", FAR, "FIELDS", 1, "soon")
        client.execute_command("HPEXPIREAT", "hash:hfe", FAR + 9, "FIELDS", 1, "later")


def read_value(client: redis.Redis, key: bytes, kind: str) -> Any:
    """The value as redis-py reads it, normalised like the parser's output."""
    if kind == "string":
        return client.get(key)
    if kind == "list":
        return client.lrange(key, 0, -1)
    if kind == "set":
        return sorted(client.smembers(key))
    if kind == "zset":
        return sorted(client.zrange(key, 0, -1, withscores=True))
    if kind == "hash":
        return sorted(client.hgetall(key).items())
    raise AssertionError(kind)


def normalise(kind: str, value: Any) -> Any:
    if kind in ("set", "zset", "hash"):
        return sorted(value)
    return value


def parsed_stream_matches(
    client: redis.Redis, key: bytes, value: StreamValue, build: ServerBuild
) -> None:
    entries = client.xrange(key)
    assert [(e.id.encode(), dict(e.fields)) for e in value.entries] == [
        (eid, fields) for eid, fields in entries
    ]
    info = client.xinfo_stream(key)
    assert value.length == info["length"] == len(entries)
    assert value.last_id.encode() == info["last-generated-id"]
    modern = build.version_info >= (7, 0) or build.product == "valkey"
    if modern:
        assert value.max_deleted_id is not None and value.first_id is not None
        assert value.max_deleted_id.encode() == info["max-deleted-entry-id"]
        assert value.entries_added == info["entries-added"]
        assert value.first_id.encode() == info["recorded-first-entry-id"]
    groups = {g["name"]: g for g in client.xinfo_groups(key)}
    assert {g.name for g in value.groups} == set(groups)
    now_ms = int(client.time()[0]) * 1000
    for group in value.groups:
        server = groups[group.name]
        assert group.last_id.encode() == server["last-delivered-id"]
        if modern:
            assert group.entries_read == server["entries-read"] or (
                group.entries_read == -1 and server["entries-read"] is None
            )
        assert len(group.pending) == server["pending"]
        detail = client.xpending_range(key, group.name, "-", "+", 1000)
        assert [(p.id.encode(), p.consumer, p.delivery_count) for p in group.pending] == [
            (d["message_id"], d["consumer"], d["times_delivered"]) for d in detail
        ]
        for p, d in zip(group.pending, detail, strict=True):
            # the server reports idle = now - delivery time
            assert abs(now_ms - p.delivery_time_ms - d["time_since_delivered"]) < 5000
        consumers = {c["name"]: c for c in client.xinfo_consumers(key, group.name)}
        assert {c.name for c in group.consumers} == set(consumers)
        for consumer in group.consumers:
            assert len(consumer.pending) == consumers[consumer.name]["pending"]
            assert all(
                p.consumer == consumer.name for p in group.pending if p.id in consumer.pending
            )


def test_real_server_rdb(redis_servers: ServerSet) -> None:
    build = redis_servers.build
    server = redis_servers.start("rdb")
    client = server.client(timeout=30)
    populate(client, build)
    client.save()
    path = Path(server.dir) / "dump.rdb"
    with path.open("rb") as f:
        events = list(parse_rdb(FileSource(f), raw_limit=1 << 30))

    header = events[0]
    assert isinstance(header, RdbHeader)
    expected_version = {"redis-6.2": 9, "redis-7.0": 10, "valkey-8.1": 11, "valkey-9.1": 80}
    assert header.version == expected_version[build.name]
    assert header.magic == ("VALKEY" if build.name == "valkey-9.1" else "REDIS")
    end = events[-1]
    assert isinstance(end, RdbEnd) and end.verified
    assert end.checksum == path.read_bytes()[-8:]

    modern = build.version_info >= (7, 0) or build.product == "valkey"
    functions = [e.code for e in events if isinstance(e, FunctionEntry)]
    assert functions == ([FUNCTION_CODE.encode()] if modern else [])

    dbs = {
        db: redis.Redis(host=server.host, port=server.port, db=db, socket_timeout=30)
        for db in (0, 1, 3)
    }
    entries = keys_of(events)
    by_db: dict[int, set[bytes]] = {}
    for entry in entries:
        by_db.setdefault(entry.db, set()).add(entry.key)
    assert set(by_db) == set(dbs)
    for db, db_client in dbs.items():
        assert by_db[db] == set(db_client.keys("*")), f"db {db}"

    seen_types: set[int] = set()
    now_ms = int(time.time() * 1000)
    for entry in entries:
        seen_types.add(entry.rdb_type)
        db_client = dbs[entry.db]
        assert db_client.type(entry.key).decode() == entry.kind, entry.key
        ttl = db_client.pttl(entry.key)
        if entry.expire_ms is None:
            assert ttl == -1, entry.key
        else:
            assert entry.expire_ms in (FAR, FAR + 1, FAR + 2), entry.key
            assert abs(entry.expire_ms - now_ms - ttl) < 60_000
        if entry.kind == "stream":
            assert isinstance(entry.value, StreamValue)
            parsed_stream_matches(db_client, entry.key, entry.value, build)
        else:
            assert normalise(entry.kind, entry.value) == read_value(
                db_client, entry.key, entry.kind
            ), entry.key
        if entry.key == b"hash:hfe":
            assert entry.rdb_type == 22
            assert sorted(entry.field_expiry or []) == [(b"later", FAR + 9), (b"soon", FAR)]
        else:
            assert not entry.field_expiry

        # raw is exactly what DUMP serializes; stamped into a payload, RESTORE takes it
        payload = split_dump_payload(db_client.dump(entry.key))
        assert payload.rdb_version == header.version
        assert entry.raw == payload.value, entry.key
        restored = b"restored:" + entry.key
        db_client.restore(restored, 0, build_dump_payload(entry.raw, header.version))
        again = decode_serialized_value(
            split_dump_payload(db_client.dump(restored)).value, rdb_version=header.version
        )
        assert again.kind == entry.kind
        if isinstance(entry.value, StreamValue):
            assert isinstance(again.value, StreamValue)
            assert again.value.entries == entry.value.entries
            assert again.value.groups == entry.value.groups
        else:
            assert normalise(again.kind, again.value) == normalise(entry.kind, entry.value)
        assert again.field_expiry == entry.field_expiry or not (
            again.field_expiry or entry.field_expiry
        )
        db_client.delete(restored)

    expected_types = {
        "redis-6.2": {0, 2, 4, 5, 11, 12, 13, 14, 15},
        "redis-7.0": {0, 2, 4, 5, 11, 16, 17, 18, 19},
        "valkey-8.1": {0, 2, 4, 5, 11, 16, 17, 18, 20, 21},
        "valkey-9.1": {0, 2, 4, 5, 11, 16, 17, 18, 20, 21, 22},
    }[build.name]
    assert seen_types == expected_types
    if modern:
        plain = next(e for e in entries if e.key == b"list:plain")
        assert plain.value == [b"small", b"P" * 5000, b"after"]
    for db_client in dbs.values():
        db_client.close()


def test_real_server_rdb_checksum_detects_a_flipped_byte(debian_servers: ServerSet) -> None:
    server = debian_servers.start("flip")
    client = server.client()
    value = bytes(range(60))  # nothing for LZF to compress: stored verbatim
    client.set("k", value)
    client.save()
    data = bytearray((Path(server.dir) / "dump.rdb").read_bytes())
    at = bytes(data).index(value) + 30
    data[at] ^= 1
    with pytest.raises(RdbChecksumError):
        parse_all(bytes(data))
    entry = keys_of(parse_all(bytes(data), verify_checksum=False))[0]
    assert entry.value != value and len(entry.value) == len(value)
