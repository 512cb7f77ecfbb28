"""Fuzzing the RDB parser (replwatch.sync.rdb) with hypothesis, starting from real RDB files.

Each available server build (Debian's Redis 7.0, Redis 6.2, Valkey 8.1, Valkey 9.1) writes a
dataset with every type in its compact and big encodings (listpacks, ziplists, intsets,
quicklists, skiplists, hash tables, streams with groups, LZF-compressed strings, expiries,
several databases) and SAVEs it; a tiny dataset gives a file small enough to cut at every
offset. Those files, the serialized values in them (KeyEntry.raw, DUMP replies) and the
LZF, listpack, ziplist and intset blobs inside are then cut, flipped, lied about (header
fields, declared lengths) and spliced with hostile lengths. Every input must parse or fail
with an RdbError (DumpPayloadError for DUMP footers) within a generous hang guard, and a
declared 10 GB length must be refused with a bounded tracemalloc peak, from memory, from a
source without a size hint, and from a socket (the syncer's RdbPayload).
"""

from __future__ import annotations

import os
import struct
import time
import tracemalloc
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
from hypothesis import HealthCheck, given, settings
from hypothesis import event as count_outcome
from hypothesis import strategies as st

from replwatch.config import parse_redis_url
from replwatch.errors import RedisError
from replwatch.sync.dump import DumpPayloadError, build_dump_payload, split_dump_payload
from replwatch.sync.rdb import (
    BytesSource,
    ChunkedValue,
    KeyEntry,
    RdbChecksumError,
    RdbEnd,
    RdbError,
    RdbEvent,
    RdbFormatError,
    RdbHeader,
    RdbTruncatedError,
    decode_serialized_value,
    lzf_decompress,
    parse_rdb,
)
from replwatch.sync.reader import RdbPayload, SourceLink

from .support.hostile import Flood, HostileServer, Send
from .support.servers import (
    EXPECTED_BUILDS,
    ServerSet,
    available_builds,
    in_ci,
    missing_build_message,
)

HANG_GUARD = 3.0  # seconds per example: a hang guard (a loaded CI box), not a performance target
MEMORY_BOUND = 64 << 20
# REPLWATCH_FUZZ_SCALE=50 runs 50 times the examples (a longer hunt by hand). CI runs the
# same examples every time (derandomized); no example database is written to the tree.
SCALE = int(os.environ.get("REPLWATCH_FUZZ_SCALE", "1"))
FUZZ = settings(
    derandomize=in_ci(),
    database=None,
    max_examples=120 * SCALE,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
FAR = 4_000_000_000_000  # an expire-at far in the future (ms)

# ----------------------------------------------------------------------------- real files


def fill(client: redis.Redis, tiny: bool) -> None:
    """Every type, compact and (unless tiny) big encodings, LZF strings, expiries, dbs."""
    pipe = client.pipeline(transaction=False)
    pipe.set("s", "v")
    pipe.set("n", 12345)
    pipe.set("lzf", "abc" * 50)  # compressible: stored LZF-compressed
    pipe.set("ttl", "t")
    pipe.pexpireat("ttl", FAR)
    pipe.rpush("l", "a", 7, -300, "b" * 30)
    pipe.sadd("si", 1, 2, -50000, 1 << 40)
    pipe.sadd("ss", "x", "y")
    pipe.zadd("z", {"a": 1, "b": 2.5, "c": float("-inf")})
    pipe.hset("h", mapping={"f": "v", "g": 7})
    pipe.xadd("x", {"a": 1, "b": "two"}, id="1-1")
    pipe.xadd("x", {"a": 2, "b": "three"}, id="1-2")
    if not tiny:
        pipe.rpush("l:big", *[f"item-{i}-" + "x" * (i % 40) for i in range(600)])
        pipe.sadd("s:big", *[f"member-{i}" for i in range(300)])
        pipe.sadd("si:big", *range(700))
        pipe.zadd("z:big", {f"m{i}": i / 3 for i in range(200)})
        pipe.hset("h:big", mapping={f"field{i}": f"value{i}" for i in range(300)})
        pipe.hset("h:long", mapping={"k": "v" * 100})
        pipe.set("lzf:big", "0123456789" * 400)
        for i in range(120):
            pipe.xadd("x:big", {"t": i, "h": i % 7} if i % 3 else {"o": f"x{i}"}, id=f"5-{i}")
        pipe.select(2)
        pipe.set("db2", "two")
        pipe.select(0)
    pipe.execute()
    client.xgroup_create("x", "g", id="0")
    client.xreadgroup("g", "c", {"x": ">"}, count=1)
    if not tiny:
        client.xdel("x:big", "5-10", "5-11")
        client.xgroup_create("x:big", "g1", id="0")
        client.xreadgroup("g1", "alice", {"x:big": ">"}, count=5)


class RealRdb:
    """One build's files, and the DUMP replies of the big file's keys."""

    def __init__(self, build: str, tiny: bytes, full: bytes, dumps: list[bytes]) -> None:
        self.build = build
        self.tiny = tiny
        self.full = full
        self.dumps = dumps

    def __repr__(self) -> str:
        return f"<RealRdb {self.build}>"


@pytest.fixture(scope="module")
def real(tmp_path_factory: pytest.TempPathFactory) -> Iterator[list[RealRdb]]:
    builds = available_builds()
    missing = [name for name in EXPECTED_BUILDS if name not in builds]
    if missing and in_ci():
        pytest.fail(missing_build_message(missing[0]), pytrace=False)
    if not builds:
        pytest.skip(missing_build_message(EXPECTED_BUILDS[0]))
    files: list[RealRdb] = []
    for name in EXPECTED_BUILDS:
        if name not in builds:
            continue
        with ServerSet(builds[name], tmp_path_factory.mktemp(name)) as servers:
            made: dict[str, bytes] = {}
            dumps: list[bytes] = []
            for kind in ("tiny", "full"):
                server = servers.start(f"{kind}-{name}")
                client = server.client(timeout=30)
                fill(client, tiny=kind == "tiny")
                client.save()
                made[kind] = (Path(server.dir) / "dump.rdb").read_bytes()
                if kind == "full":
                    dumps = [client.dump(key) for key in sorted(client.keys("*"))]
                server.stop()
            files.append(RealRdb(name, made["tiny"], made["full"], dumps))
    yield files


def parse_all(
    data: bytes, source: Callable[[bytes], Any] = BytesSource, **options: Any
) -> list[RdbEvent]:
    """Every event (big collections read through, when streamed)."""
    options.setdefault("raw_limit", 1 << 20)
    events: list[RdbEvent] = []
    for event in parse_rdb(source(data), **options):
        if isinstance(event, KeyEntry) and isinstance(event.value, ChunkedValue):
            for _ in event.value:
                pass
        events.append(event)
    return events


def outcome(fn: Callable[[], Any]) -> Any:
    """fn()'s result, or the exception it raised; fails the test past the hang guard."""
    started = time.monotonic()
    try:
        result = fn()
    except Exception as exc:
        result = exc
    elapsed = time.monotonic() - started
    assert elapsed < HANG_GUARD, f"took {elapsed:.2f}s"
    return result


class ExactSource:
    """Only read(n): no read-ahead, no size hint (the parser cannot tell a lie up front)."""

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.pos = 0

    def read(self, n: int, /) -> bytes:
        if self.pos + n > len(self.data):
            raise EOFError
        chunk = self.data[self.pos : self.pos + n]
        self.pos += n
        return chunk


# ----------------------------------------------------------------------------- whole files


def test_real_files_parse(real: list[RealRdb]) -> None:
    for rdb in real:
        for data in (rdb.tiny, rdb.full):
            events = parse_all(data)
            assert isinstance(events[0], RdbHeader)
            assert isinstance(events[-1], RdbEnd) and events[-1].verified, rdb
            assert sum(isinstance(e, KeyEntry) for e in events) >= 10


def test_tiny_real_file_cut_at_every_offset(real: list[RealRdb]) -> None:
    for rdb in real:
        for cut in range(len(rdb.tiny)):
            error = outcome(lambda data=rdb.tiny[:cut]: parse_all(data))
            assert isinstance(error, RdbTruncatedError if cut >= 9 else RdbFormatError), (
                rdb,
                cut,
                error,
            )


@FUZZ
@given(st.data())
def test_cut_real_file(real: list[RealRdb], data: st.DataObject) -> None:
    rdb = data.draw(st.sampled_from(real))
    cut = data.draw(st.integers(9, len(rdb.full) - 1))
    for source in (BytesSource, ExactSource):
        error = outcome(lambda source=source: parse_all(rdb.full[:cut], source))
        assert isinstance(error, RdbTruncatedError), (rdb, cut, source, error)


@st.composite
def corrupted(draw: st.DrawFn, original: bytes) -> bytes:
    data = bytearray(original)
    how = draw(st.sampled_from(["flip", "insert", "delete", "repeat", "hostile-length"]))
    at = draw(st.integers(9, len(data) - 1))
    if how == "flip":
        for _ in range(draw(st.integers(1, 4))):
            data[draw(st.integers(9, len(data) - 1))] ^= draw(st.integers(1, 255))
    elif how == "insert":
        data[at:at] = draw(st.binary(min_size=1, max_size=16))
    elif how == "delete":
        del data[at : at + draw(st.integers(1, 16))]
    elif how == "repeat":
        data[at:at] = data[at : at + draw(st.integers(1, 64))]
    else:
        data[at:at] = draw(st.sampled_from(HOSTILE_LENGTHS))
    return bytes(data)


# length encodings no parser may trust: 10 GB, 2^62, 2^32-1, an LZF string claiming 512 MiB
# (and 1 TiB) from three bytes
HOSTILE_LENGTHS = [
    b"\x81" + struct.pack(">Q", 10 << 30),
    b"\x81" + struct.pack(">Q", 1 << 62),
    b"\x80\xff\xff\xff\xff",
    b"\xc3\x03" + b"\x80" + struct.pack(">I", 1 << 29) + b"\x00ab",
    b"\xc3\x03" + b"\x81" + struct.pack(">Q", 1 << 40) + b"\x00ab",
]


@FUZZ
@given(st.data())
def test_corrupted_real_file_is_detected(real: list[RealRdb], data: st.DataObject) -> None:
    rdb = data.draw(st.sampled_from(real))
    broken = data.draw(corrupted(rdb.full))
    result = outcome(lambda: parse_all(broken))
    if isinstance(result, Exception):
        assert isinstance(result, RdbError), repr(result)
    else:  # it parsed: only when nothing that matters changed, or the CRC could not say
        end = result[-1]
        assert isinstance(end, RdbEnd)
        assert not end.verified or result == parse_all(rdb.full), "a corruption went unnoticed"


@FUZZ
@given(
    st.data(),
    st.sampled_from(
        [
            {},
            {"stream_over": 64},
            {"skip_decode": lambda t: True},
            # a small string cap: values, quicklists and LZF strings bump into it
            {"skip_decode": lambda t: True, "max_string_bytes": 700, "raw_limit": 300},
            {"max_string_bytes": 700, "stream_over": 64},
        ]
    ),
    st.booleans(),
)
def test_corrupted_real_file_without_checksum_fails_typed(
    real: list[RealRdb], data: st.DataObject, options: dict[str, Any], exact: bool
) -> None:
    rdb = data.draw(st.sampled_from(real))
    broken = data.draw(corrupted(rdb.full))
    source = ExactSource if exact else BytesSource
    result = outcome(lambda: parse_all(broken, source, verify_checksum=False, **options))
    assert not isinstance(result, Exception) or isinstance(result, RdbError), repr(result)


@pytest.mark.parametrize("cap", [40, 700, 5000])
def test_small_string_cap_on_real_files(real: list[RealRdb], cap: int) -> None:
    """A string cap below the values' sizes: every way of reading a value (decoded, kept as
    raw, skipped undecoded, streamed) refuses it typed (it once was an AssertionError when an
    undecoded quicklist's nodes, or a string with its length prefix, passed the cap)."""
    options: list[dict[str, Any]] = [
        {},
        {"skip_decode": lambda t: True, "raw_limit": cap // 2},
        {"skip_decode": lambda t: True, "raw_limit": 1 << 20},
        {"stream_over": 64},
    ]
    for rdb in real:
        for option in options:
            result = outcome(lambda o=option, d=rdb.full: parse_all(d, max_string_bytes=cap, **o))
            if isinstance(result, list) and cap > 40:  # (streamed elements fit a cap)
                continue
            assert isinstance(result, RdbFormatError) and "cap" in str(result), (rdb, result)


def value_offset(rdb: bytes) -> int:
    """Where the value of the key "s" (= "v", a short plain RDB string) starts."""
    record = b"\x00\x01s\x01v"
    at = rdb.index(record)
    assert rdb.count(record) == 1
    return at + 3


@pytest.mark.parametrize("hostile", HOSTILE_LENGTHS, ids=lambda h: h[:1].hex() + str(len(h)))
@pytest.mark.parametrize("source", [BytesSource, ExactSource], ids=["sized", "unsized"])
def test_hostile_length_in_a_real_file(
    real: list[RealRdb], hostile: bytes, source: Callable[[bytes], Any]
) -> None:
    """A real file whose first string value declares a hostile length: refused at once,
    without buffering towards it."""
    for rdb in real:
        at = value_offset(rdb.full)
        data = rdb.full[:at] + hostile + rdb.full[at:]
        tracemalloc.start()
        try:
            error = outcome(lambda data=data: parse_all(data, source))
            _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
        assert isinstance(error, RdbError), repr(error)
        assert peak < MEMORY_BOUND, peak


# ----------------------------------------------------------------------------- over a socket


@pytest.fixture(scope="module")
def server() -> Iterator[HostileServer]:
    with HostileServer([]) as hostile:
        yield hostile


def payload_events(server: HostileServer, length: int | None, mark: bytes | None) -> Any:
    link = SourceLink(parse_redis_url(server.url), None, HANG_GUARD)
    try:
        payload = RdbPayload(link.conn, length, mark)
        return parse_all(b"", lambda _: payload)
    except Exception as exc:
        return exc
    finally:
        link.close()


@FUZZ
@given(st.data())
def test_snapshot_over_a_socket_cut_or_lying(
    real: list[RealRdb], server: HostileServer, data: st.DataObject
) -> None:
    """The syncer's RdbPayload: a disk payload whose declared size lies (more or less than
    is sent), or a diskless one cut before its end mark, then the source closes."""
    rdb = data.draw(st.sampled_from(real))
    sent = rdb.full[: data.draw(st.integers(0, len(rdb.full)))]
    server.script = [Send(sent)]
    mode = data.draw(st.sampled_from(["disk", "diskless"]))
    if mode == "disk":
        declared = len(rdb.full) + data.draw(st.integers(-len(rdb.full), 1 << 40))
        result = outcome(lambda: payload_events(server, declared, None))
    else:
        result = outcome(lambda: payload_events(server, None, b"M" * 40))
    # only a disk payload sent whole ends (the parser stops at the EOF opcode even when the
    # declared size is bigger); a diskless one waits for its mark, which never comes
    if mode == "disk" and len(sent) == len(rdb.full) <= declared:
        assert isinstance(result, list) and isinstance(result[-1], RdbEnd), repr(result)
    else:
        assert isinstance(result, RdbError | RedisError), repr(result)


def test_flooded_snapshot_with_a_10gb_string_is_refused(
    real: list[RealRdb], server: HostileServer
) -> None:
    """A diskless snapshot (no size to check against) whose first value declares 10 GB, then
    a flood: refused before the flood is buffered."""
    rdb = real[0]
    at = value_offset(rdb.full)
    head = rdb.full[:at] + HOSTILE_LENGTHS[0]
    server.script = [Send(head), Flood(b"A" * 65536, 256 << 20)]
    tracemalloc.start()
    try:
        error = outcome(lambda: payload_events(server, None, b"M" * 40))
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert isinstance(error, RdbFormatError) and "over the" in str(error), repr(error)
    assert peak < MEMORY_BOUND, peak


# ----------------------------------------------------------------------------- serialized values


def rdb_len(n: int) -> bytes:
    if n < 64:
        return bytes([n])
    if n < 16384:
        return bytes([0x40 | (n >> 8), n & 0xFF])
    return b"\x80" + struct.pack(">I", n)


def read_len(raw: bytes, at: int) -> tuple[int, int]:
    """An RDB length (not an encoded value) at `at`: (length, where it ends)."""
    b = raw[at]
    if b < 0x40:
        return b, at + 1
    if b < 0x80:
        return ((b & 0x3F) << 8) | raw[at + 1], at + 2
    if b == 0x80:
        return struct.unpack_from(">I", raw, at + 1)[0], at + 5
    assert b == 0x81, hex(b)
    return struct.unpack_from(">Q", raw, at + 1)[0], at + 9


def read_string(raw: bytes, at: int) -> tuple[bytes, int]:
    """An RDB string at `at` (plain or LZF; written independently of the parser, from
    rdb.c's rdbGenericLoadStringObject): (its bytes, where it ends)."""
    if raw[at] == 0xC3:
        compressed, at = read_len(raw, at + 1)
        plain, at = read_len(raw, at)
        return lzf_decompress(raw[at : at + compressed], plain), at + compressed
    n, at = read_len(raw, at)
    return raw[at : at + n], at + n


def blobs(raw: bytes) -> list[tuple[int, int, bytes]]:
    """The encoded blobs (listpack, ziplist, intset) of a serialized compact value: (start,
    end, blob) of each RDB string holding one."""
    t = raw[0]
    found: list[tuple[int, int, bytes]] = []
    if t in (10, 11, 12, 13, 16, 17, 20):
        blob, end = read_string(raw, 1)
        found.append((1, end, blob))
    elif t in (14, 18, 15, 19, 21):
        n, at = read_len(raw, 1)
        for _ in range(n):
            if t == 18:
                _, at = read_len(raw, at)
            elif t in (15, 19, 21):
                _, at = read_string(raw, at)  # the node's master ID
            start = at
            blob, at = read_string(raw, at)
            found.append((start, at, blob))
    return found


@st.composite
def lying_blob(draw: st.DrawFn, blob: bytes) -> bytes:
    """The blob with a header field lying (total bytes, tail, count, width), an entry's
    length or encoding byte changed, cut short, or grown."""
    data = bytearray(blob)
    how = draw(st.sampled_from(["header", "entry", "cut", "grow"]))
    if how == "header" and len(data) >= 10:
        at = draw(st.sampled_from([0, 4, 8]))
        width = draw(st.sampled_from([1, 2, 4]))
        lie = draw(st.sampled_from([0, 1, 0xFF, 0xFFFF, 0x7FFFFFFF, 0xFFFFFFFF]))
        data[at : at + width] = (lie & ((1 << (8 * width)) - 1)).to_bytes(width, "little")
    elif how == "entry" and len(data) > 7:
        at = draw(st.integers(6, len(data) - 1))
        data[at] = draw(st.sampled_from([0x3F, 0x7F, 0xBF, 0xEF, 0xF0, 0xF4, 0xF5, 0xFE, 0xFF]))
    elif how == "cut":
        del data[draw(st.integers(0, len(data))) :]
    else:
        at = draw(st.integers(0, len(data)))
        data[at:at] = draw(st.binary(min_size=1, max_size=12))
    return bytes(data)


Value = tuple[bytes, int, bool]


@pytest.fixture(scope="module")
def values(real: list[RealRdb]) -> list[Value]:
    """(type byte + serialized value, RDB version, valkey) of every key in the big files."""
    values = []
    for rdb in real:
        events = parse_all(rdb.full, raw_limit=1 << 30)
        header = events[0]
        assert isinstance(header, RdbHeader)
        for event in events:
            if isinstance(event, KeyEntry) and event.raw is not None:
                values.append((event.raw, header.version, header.valkey))
    return values


@FUZZ
@given(st.data())
def test_lying_blobs_in_real_values(values: list[Value], data: st.DataObject) -> None:
    compact = [v for v in values if blobs(v[0])]
    raw, version, valkey = data.draw(st.sampled_from(compact))
    start, end, blob = data.draw(st.sampled_from(blobs(raw)))
    lie = data.draw(lying_blob(blob))
    mutated = raw[:start] + rdb_len(len(lie)) + lie + raw[end:]
    result = outcome(lambda: decode_serialized_value(mutated, rdb_version=version, valkey=valkey))
    count_outcome(f"type {raw[0]}: {type(result).__name__}")
    assert not isinstance(result, Exception) or isinstance(result, RdbError), repr(result)


@FUZZ
@given(st.data())
def test_flipped_real_values(values: list[Value], data: st.DataObject) -> None:
    raw, version, valkey = data.draw(st.sampled_from(values))
    mutated = bytearray(raw)
    for _ in range(data.draw(st.integers(1, 3))):
        mutated[data.draw(st.integers(0, len(mutated) - 1))] ^= data.draw(st.integers(1, 255))
    cut = data.draw(st.integers(1, len(mutated)))
    result = outcome(
        lambda: decode_serialized_value(bytes(mutated[:cut]), rdb_version=version, valkey=valkey)
    )
    assert not isinstance(result, Exception) or isinstance(result, RdbError), repr(result)


def test_real_values_include_every_compact_encoding(
    real: list[RealRdb], values: list[Value]
) -> None:
    """The blob fuzzing reaches listpacks, ziplists, intsets and quicklist/stream nodes."""
    types = {raw[0] for raw, _, _ in values if blobs(raw)}
    builds = {rdb.build for rdb in real}
    assert {11, 16, 17, 18} <= types or "redis-7.0" not in builds, types
    assert {12, 13, 14, 15} <= types or "redis-6.2" not in builds, types
    assert {20, 21} <= types or "valkey-8.1" not in builds, types


@FUZZ
@given(st.data())
def test_mutated_dump_replies(real: list[RealRdb], data: st.DataObject) -> None:
    """DUMP replies of the real keys, mutated (then with a recomputed footer, so the value
    itself is what is tested): DumpPayloadError, RdbError, or a value."""
    rdb = data.draw(st.sampled_from(real))
    dump = bytearray(data.draw(st.sampled_from(rdb.dumps)))
    dump[data.draw(st.integers(0, len(dump) - 1))] ^= data.draw(st.integers(1, 255))
    refooter = data.draw(st.booleans())

    def decode() -> Any:
        payload = split_dump_payload(bytes(dump), verify=not refooter)
        if refooter:
            payload = split_dump_payload(build_dump_payload(payload.value, payload.rdb_version))
        return decode_serialized_value(payload.value, rdb_version=payload.rdb_version)

    result = outcome(decode)
    if refooter:
        assert not isinstance(result, Exception) or isinstance(
            result, RdbError | DumpPayloadError
        ), repr(result)
    else:
        assert isinstance(result, DumpPayloadError), "a flipped byte passed the DUMP CRC"


# ----------------------------------------------------------------------------- LZF


@st.composite
def lzf_streams(draw: st.DrawFn) -> tuple[bytes, bytes]:
    """(compressed, plain): literal runs and back references, as lzf_c.c emits them."""
    out = bytearray()
    plain = bytearray()
    for _ in range(draw(st.integers(1, 12))):
        if plain and draw(st.booleans()):
            length = draw(st.integers(3, 264))
            distance = draw(st.integers(1, min(len(plain), 8192)))
            n, d = length - 2, distance - 1
            if n < 7:
                out += bytes([(n << 5) | (d >> 8), d & 0xFF])
            else:
                out += bytes([(7 << 5) | (d >> 8), n - 7, d & 0xFF])
            for _ in range(length):
                plain.append(plain[-distance])
        else:
            literal = draw(st.binary(min_size=1, max_size=32))
            out.append(len(literal) - 1)
            out += literal
            plain += literal
    return bytes(out), bytes(plain)


@FUZZ
@given(lzf_streams())
def test_lzf_round_trip(stream: tuple[bytes, bytes]) -> None:
    compressed, plain = stream
    assert lzf_decompress(compressed, len(plain)) == plain


@FUZZ
@given(lzf_streams(), st.data())
def test_bad_lzf_fails_typed(stream: tuple[bytes, bytes], data: st.DataObject) -> None:
    compressed, plain = stream
    broken = bytearray(compressed)
    how = data.draw(st.sampled_from(["flip", "cut", "length"]))
    expected = len(plain)
    if how == "flip":
        broken[data.draw(st.integers(0, len(broken) - 1))] ^= data.draw(st.integers(1, 255))
    elif how == "cut":
        del broken[data.draw(st.integers(0, len(broken) - 1)) :]
    else:
        expected = data.draw(st.integers(0, 2 * expected + 10))
    result = outcome(lambda: lzf_decompress(bytes(broken), expected, offset=5))
    if isinstance(result, Exception):
        assert isinstance(result, RdbFormatError) and result.offset == 5, repr(result)
    else:
        assert len(result) == expected


def test_checksum_still_guards_a_real_file(real: list[RealRdb]) -> None:
    """(A control for the properties above: one flipped byte in a value is found by the CRC,
    and only by it.)"""
    rdb = real[0]
    at = value_offset(rdb.full) + 1  # the value's byte, "v"
    broken = rdb.full[:at] + b"w" + rdb.full[at + 1 :]
    assert isinstance(outcome(lambda: parse_all(broken)), RdbChecksumError)
    events = parse_all(broken, verify_checksum=False)
    assert any(isinstance(e, KeyEntry) and e.key == b"s" and e.value == b"w" for e in events)
