"""The syncer's optional C accelerator (replwatch/sync/_speedups.c) against the pure-Python
paths it compiles: the snapshot's plain-string runs (rdb.string_run_py) and the stream's
split (stream_split: take_commands + marked + encoded_length), on random and hostile bytes
and on a real server's snapshot; then a whole sync through the pure-Python paths only
(REPLWATCH_PURE_PYTHON), checked against its source like every other sync test (which run
the compiled paths when they were built)."""

from __future__ import annotations

import functools
import random
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import hiredis
import pytest
import redis

from replwatch.errors import ProtocolFailure
from replwatch.observe.connection import encode_command
from replwatch.sync import rdb
from replwatch.sync.rdb import KeyEntry, StringRun, parse_rdb, string_run_py
from replwatch.sync.stream_split import (
    command_reader,
    compiled_split,
    counted_limits,
    encoded_length,
    marked,
    take_commands,
)

from .support.datasets import build_dataset, connect
from .support.servers import RedisProcess, ServerSet
from .support.syncing import RunnerThread, assert_equal, make_task, wait_caught_up

OWN = b"__replwatch:"
ALWAYS = frozenset((b"MULTI", b"EXEC", b"SELECT", b"PING", b"REPLCONF", b"FLUSHALL"))
COUNTED = frozenset((b"SET", b"PEXPIRE", b"RENAME"))


def compiled() -> Any:
    """The built extension; without a compiler on this machine the test is skipped, with one
    it must have been built (scripts/test installs gcc and python3-dev)."""
    try:
        from replwatch.sync import _speedups  # type: ignore[attr-defined]
    except ImportError:
        if shutil.which("cc") is None and shutil.which("gcc") is None:
            pytest.skip("no C compiler here: the accelerator is not built (pure Python only)")
        raise
    return _speedups


# ----------------------------------------------------------------------------- snapshot runs


def rdb_length(n: int) -> bytes:
    if n < 0x40:
        return bytes([n])
    if n < 0x4000:
        return bytes([0x40 | (n >> 8), n & 0xFF])
    return b"\x80" + n.to_bytes(4, "big")


def entry(key: bytes, value: bytes) -> bytes:
    return rdb_length(len(key)) + key + rdb_length(len(value)) + value


@functools.cache
def packed_once(plain: bytes) -> bytes:
    """lzf_compress of `plain`, made once (compressing 16 KiB in Python takes a while)."""
    return lzf_compress(plain, random.Random(len(plain)))


def lzf_value(plain: bytes, rng: random.Random, damage: bool = False) -> bytes:
    """An RDB string value stored LZF-compressed (0xC3, compressed and plain lengths);
    `damage` flips a byte of the compressed data (or declares one byte more)."""
    packed = packed_once(plain)
    declared = len(plain)
    if damage:
        if packed and rng.random() < 0.7:
            at = rng.randrange(len(packed))
            packed = packed[:at] + bytes([packed[at] ^ rng.randrange(1, 256)]) + packed[at + 1 :]
        else:
            declared += 1
    return b"\xc3" + rdb_length(len(packed)) + rdb_length(declared) + packed


def random_entries(rng: random.Random) -> bytes:
    """String entries (the first one's type byte already read), with what ends a run
    between them: a TTL opcode, another type, an encoded length, EOF; values plain or
    LZF-compressed (some damaged: the per-key path must take those)."""
    keys = [b"k", b"_own", b"", b"x" * 63, b"x" * 64, b"x" * 16_383, b"x" * 16_384]
    values = [b"", b"v", b"y" * 63, b"y" * 64, b"y" * 200, b"y" * 16_384]
    data = b""
    for i in range(rng.randint(0, 8)):
        if i:
            data += rng.choice([b"\x00", b"\x00", b"\x00", b"\x02", b"\xfc" + b"\x00" * 8])
        key = rng.choice(keys) + b"%d" % i * rng.randint(0, 1)
        if rng.random() < 0.3:
            plain = rng.choice([b"ab" * 20, b"json {a: 1} " * 30, b"z" * 16_383, b"z" * 16_384])
            data += rdb_length(len(key)) + key + lzf_value(plain, rng, rng.random() < 0.2)
        else:
            data += entry(key, rng.choice(values))
    return data + rng.choice([b"", b"\x00", b"\xff", b"\xc0\x05"])


@pytest.mark.parametrize("mset", [False, True])
def test_string_run_compiled_is_the_python_loop(mset: bool) -> None:
    run_c = compiled().string_run
    rng = random.Random(7)
    taken = 0
    for _ in range(4000):
        data = random_entries(rng)  # (LZF values among them)
        end = rng.randint(0, len(data))
        limit = rng.randint(1, 6)
        expected = string_run_py(data, 0, end, limit, mset)
        assert run_c(data, 0, end, limit, mset) == expected, (data[:80], end, limit)
        taken += expected[1]
    assert taken > 1000  # the rows took runs, not only refusals


@pytest.mark.parametrize(
    ("data", "limit", "keys", "after"),
    [
        (entry(b"a", b"1") + b"\x00" + entry(b"b", b"2"), 10, [(b"a", b"1"), (b"b", b"2")], 9),
        (entry(b"a", b"1") + b"\x00" + entry(b"b", b"2"), 1, [(b"a", b"1")], 4),
        (entry(b"a", b"1") + b"\xfc", 10, [(b"a", b"1")], 4),  # a TTL next: its type byte
        (entry(b"_x", b"1"), 10, [], 0),  # maybe replwatch's own: the per-key path
        (entry(b"a", b"1") + b"\x00" + entry(b"_x", b"2"), 10, [(b"a", b"1")], 4),
        (b"\xc0\x05" + entry(b"a", b"1")[1:], 10, [], 0),  # an int-encoded key
        (entry(b"a", b"v" * 16_384), 10, [], 0),  # a 32-bit length
        (entry(b"a", b"12345")[:-1], 10, [], 0),  # not all buffered
        # LZF values decoded in the run: a literal run then a back reference ("abcabc")
        (b"\x01a\xc3\x06\x06\x02abc\x20\x02", 10, [(b"a", b"abcabc")], 11),
        (b"\x01a\xc3\x06\x07\x02abc\x20\x02", 10, [], 0),  # declared 7: invalid
        (  # an LZF value, then a plain one
            b"\x01a\xc3\x06\x06\x02abc\x20\x02" + b"\x00" + entry(b"b", b"2"),
            10,
            [(b"a", b"abcabc"), (b"b", b"2")],
            16,
        ),
        (b"\x01a\xc3\x06\x06\x02abc\x20\x02"[:-1], 10, [], 0),  # not all buffered
    ],
)
@pytest.mark.parametrize("mset", [False, True])
def test_string_run_rows(
    data: bytes, limit: int, keys: list[tuple[bytes, bytes]], after: int, mset: bool
) -> None:
    for run in (string_run_py, compiled().string_run):
        commands, count, pos = run(data, 0, len(data), limit, mset)
        assert (count, pos) == (len(keys), after)
        assert resp_commands(commands) == (
            ([[b"MSET", *[x for kv in keys for x in kv]]] if keys else [])
            if mset
            else [[b"SET", k, v] for k, v in keys]
        )


def resp_commands(data: bytes) -> list[Any]:
    reader = hiredis.Reader()
    reader.feed(data)
    out = []
    while (item := reader.gets()) is not False:
        out.append(item)
    return out


@pytest.fixture
def snapshot(debian_servers: ServerSet) -> Iterator[bytes]:
    """A real server's RDB: strings of every shape the runs take or refuse (plain and
    LZF-compressed values), in two dbs."""
    server = debian_servers.start("rdb")
    with connect(server) as client, connect(server, 4) as db4:
        pipe = client.pipeline(transaction=False)
        for i in range(3000):
            pipe.set(f"key:{i}", f"value:{i}")
        for i in range(500):  # stored LZF-compressed (over 20 bytes, compressible)
            pipe.set(f"zip:{i}", f"{i}:" + "compressible " * (2 + i % 40))
        pipe.set("_underscore", "x")
        pipe.set("__replwatch:heartbeat", "1")
        pipe.set("int", 12345)  # int-encoded
        pipe.set("long", b"z" * 20_000)  # 32-bit length, maybe LZF
        pipe.set("ttl", "t", ex=1000)
        pipe.set("empty", "")
        pipe.rpush("list", "a", "b")
        pipe.execute()
        db4.set("four", "4")
        client.save()
        folder, name = (
            client.config_get("dir")["dir"],
            client.config_get("dbfilename")["dbfilename"],
        )
    yield (Path(folder) / name).read_bytes()


def strings_of(data: bytes, run: StringRun | None, sink: Callable[..., None] | None) -> None:
    for event in parse_rdb(_Source(data), raw_limit=0, string_sink=sink, string_run=run):
        if isinstance(event, KeyEntry) and event.kind == "string" and sink is not None:
            sink(event.db, event.key, event.value)


class _Source:
    def __init__(self, data: bytes) -> None:
        self.data, self.pos = data, 0

    def read(self, n: int) -> bytes:
        chunk = self.data[self.pos : self.pos + n]
        if len(chunk) < n:
            raise EOFError
        self.pos += n
        return chunk

    def read_some(self, n: int) -> bytes:
        chunk = self.data[self.pos : self.pos + min(n, 1000)]  # small reads: runs end often
        if not chunk:
            raise EOFError
        self.pos += len(chunk)
        return chunk


@pytest.mark.parametrize("mset", [False, True])
@pytest.mark.parametrize("pure", [False, True])
def test_snapshot_strings_by_runs_are_the_events(
    snapshot: bytes, mset: bool, pure: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    if pure:
        monkeypatch.setenv("REPLWATCH_PURE_PYTHON", "1")
    else:
        compiled()
    expected: dict[tuple[int, bytes], Any] = {}
    strings_of(snapshot, None, lambda db, key, value: expected.__setitem__((db, key), value))
    got: dict[tuple[int, bytes], Any] = {}
    runs: list[int] = []

    def take(db: int, commands: bytes, count: int) -> int:
        runs.append(count)
        for command in resp_commands(commands):
            pairs = command[1:]
            assert command[0] == (b"MSET" if mset else b"SET")
            for key, value in zip(pairs[::2], pairs[1::2], strict=True):
                got[(db, key)] = value
        return 500

    strings_of(snapshot, StringRun(take, 500, mset), lambda db, k, v: got.__setitem__((db, k), v))
    assert {k: (v if isinstance(v, bytes) else str(v).encode()) for k, v in got.items()} == {
        k: (v if isinstance(v, bytes) else str(v).encode()) for k, v in expected.items()
    }
    # most keys came by runs (a run ends where a read ends: those keys take the per-key path),
    # the compressed ones too
    assert sum(runs) > 0.9 * 3500 and max(runs) <= 500 and len(runs) > 6


def test_the_pure_python_switch_reaches_the_parser(monkeypatch: pytest.MonkeyPatch) -> None:
    compiled()
    assert rdb._compiled_string_run() is not None
    monkeypatch.setenv("REPLWATCH_PURE_PYTHON", "1")
    assert rdb._compiled_string_run() is None and compiled_split() is None


# ----------------------------------------------------------------------------- LZF


def lzf_compress(data: bytes, rng: random.Random) -> bytes:
    """Valid LZF for `data` (liblzf's format), with literal runs and back references of
    every length class, overlapping ones included, chosen at random where matches exist."""
    out = bytearray()
    literal = bytearray()

    def flush() -> None:
        for i in range(0, len(literal), 32):
            part = literal[i : i + 32]
            out.append(len(part) - 1)
            out.extend(part)
        literal.clear()

    i = 0
    while i < len(data):
        best = 0
        distance = 0
        for back in rng.sample(range(1, min(i, 8192) + 1), min(i, 24)):
            n = 0
            while i + n < len(data) and n < 264 and data[i + n] == data[i - back + n]:
                n += 1
            if n > best:
                best, distance = n, back
        if best >= 3 and rng.random() < 0.9:
            flush()
            length = best - 2
            if length < 7:
                out.append((length << 5) | ((distance - 1) >> 8))
            else:
                out.append((7 << 5) | ((distance - 1) >> 8))
                out.append(length - 7)
            out.append((distance - 1) & 0xFF)
            i += best
        else:
            literal.append(data[i])
            i += 1
    flush()
    return bytes(out)


def test_lzf_compiled_is_the_python_decoder() -> None:
    """Valid LZF of repetitive and random data decodes the same in C and in Python; damaged
    data (a cut, a flipped byte, a wrong declared length) is refused by both (the C one
    answers None and the Python one says why)."""
    lib = compiled()
    rng = random.Random(20261207)
    for _ in range(400):
        size = rng.choice([0, 1, 3, 31, 33, 264, 300, 5000, 9000])
        alphabet = rng.choice([b"a", b"ab", b"abc" * 5, bytes(range(256))])
        plain = bytes(rng.choice(alphabet) for _ in range(size))
        packed = lzf_compress(plain, rng)
        assert rdb.lzf_decompress(packed, len(plain)) == plain
        assert lib.lzf_decompress(packed, len(plain)) == plain
        damaged = [packed[: rng.randrange(len(packed))]] if packed else []
        if packed:
            at = rng.randrange(len(packed))
            damaged.append(
                packed[:at] + bytes([packed[at] ^ rng.randrange(1, 256)]) + packed[at + 1 :]
            )
        for data, length in [*((d, len(plain)) for d in damaged), (packed, len(plain) + 1)]:
            try:
                expected: bytes | None = rdb.lzf_decompress(data, length)
            except rdb.RdbFormatError:
                expected = None
            assert lib.lzf_decompress(data, length) == expected, (data, length)


def test_lzf_strings_of_a_real_snapshot_both_ways(
    debian_servers: ServerSet, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A real server's RDB with LZF-compressed values (rdbcompression): the parser's events
    through the C decoder equal those through the Python one."""
    compiled()
    server = debian_servers.start("lzf")
    with connect(server) as client:
        pipe = client.pipeline(transaction=False)
        for i in range(500):
            pipe.set(f"k{i}", f"{i}:" + 'json-ish {"a": 1, "b": [1, 2, 3]} ' * (1 + i % 9))
        pipe.hset("h", mapping={f"f{i}": "v" * (30 + i) for i in range(50)})
        pipe.execute()
        client.save()
        folder, name = (
            client.config_get("dir")["dir"],
            client.config_get("dbfilename")["dbfilename"],
        )
    data = (Path(folder) / name).read_bytes()

    def events() -> list[Any]:
        return [
            (e.key, e.kind, e.value)
            for e in parse_rdb(_Source(data), raw_limit=0)
            if isinstance(e, KeyEntry)
        ]

    python_calls = []
    decode = rdb.lzf_decompress

    def counted(data: bytes, length: int, *, offset: int | None = None) -> bytes:
        python_calls.append(length)
        return decode(data, length, offset=offset)

    monkeypatch.setattr(rdb, "lzf_decompress", counted)
    assert rdb._compiled_lzf() is not None
    with_c = events()
    assert python_calls == []  # every compressed string decoded in C
    monkeypatch.setenv("REPLWATCH_PURE_PYTHON", "1")
    assert rdb._compiled_lzf() is None
    assert events() == with_c and len(with_c) == 501
    assert len(python_calls) > 400  # the snapshot's values were LZF-compressed


# ----------------------------------------------------------------------------- stream split


def random_stream(rng: random.Random) -> list[list[bytes]]:
    pool = [
        [b"SET", b"k", b"v"],
        [b"set", b"k", b"v", b"PX", b"100"],
        [b"INCR", b"n"],
        [b"LPUSH", b"l", b"x" * rng.choice([0, 9, 10, 200, 70_000])],
        [b"MULTI"],
        [b"exec"],
        [b"SELECT", b"3"],
        [b"PING"],
        [b"REPLCONF", b"GETACK", b"*"],
        [b"PEXPIRE", b"k", b"5"],
        [b"HSET", b"__replwatch:sync:t", b"offset", b"1"],
        [b"GET", b"x" * 40],
        [b"Z" * 40, b"k"],
    ]
    return [rng.choice(pool) for _ in range(rng.randint(0, 30))]


def python_events(data: bytes) -> list[Any]:
    """What the pure-Python path finds in `data`: (run bytes, run commands) and (argv, span)."""
    reader = command_reader()
    reader.feed(data)
    commands = take_commands(reader, "s")
    own = OWN if data.find(OWN) >= 0 else None
    events: list[Any] = []
    pos = at = 0
    for mark in marked(commands, ALWAYS, COUNTED, own):
        if mark > at:
            length = encoded_length(commands[at:mark])
            events.append(("run", length, mark - at))
            pos += length
        end = pos + encoded_length([commands[mark]])
        events.append(("look", commands[mark], pos, end))
        pos, at = end, mark + 1
    if at < len(commands):
        events.append(("run", encoded_length(commands[at:]), len(commands) - at))
    return events


def compiled_events(data: bytes, room: int) -> list[Any]:
    split = compiled().split_stream
    events: list[Any] = []
    pos = 0
    raw = bytearray(data)
    while True:
        run_end, count, argv, end = split(
            raw, pos, room, tuple(ALWAYS), counted_limits(COUNTED), OWN
        )
        if count:
            if events and events[-1][0] == "run":  # (room cuts a run the Python path keeps)
                _, length, n = events.pop()
                events.append(("run", length + run_end - pos, n + count))
            else:
                events.append(("run", run_end - pos, count))
        pos = run_end
        if argv is None:
            if count < room:
                return events
            continue
        events.append(("look", argv, pos, end))
        pos = end


def test_split_compiled_is_the_python_path() -> None:
    rng = random.Random(11)
    looked = 0
    for _ in range(1500):
        commands = random_stream(rng)
        data = b"".join(encode_command(c) for c in commands)
        cut = rng.randint(0, len(data))  # a read ends anywhere
        expected = python_events(data[:cut])
        assert compiled_events(data[:cut], rng.choice([1, 3, 1000])) == expected, commands
        looked += sum(1 for e in expected if e[0] == "look")
    assert looked > 1000


@pytest.mark.parametrize(
    "data",
    [
        b"+OK\r\n",
        b":0\r\n",
        b"*0\r\n",
        b"*-1\r\n",
        b"*2\r\n$3\r\nSET\r\n:1\r\n",
        b"*2\r\n$3\r\nSET\r\n$-1\r\n",
        b"*2\r\n$3\r\nSET\r\n+OK\r\n",
        b"*1\r\n$3\r\nSETX\r\n",  # not where its length says
        b"*1\r\n$x\r\n",
        b"*1\r\n$4\r\nPING\r\n?",
    ],
)
def test_split_refuses_what_the_python_path_refuses(data: bytes) -> None:
    with pytest.raises(ProtocolFailure):
        python_events_checked(data)
    with pytest.raises(ValueError):
        compiled_events(data, 1000)


def python_events_checked(data: bytes) -> list[Any]:
    """python_events plus the alignment check the applier makes at the end of a read."""
    events = python_events(data)
    end = sum(e[1] for e in events if e[0] == "run") + sum(
        e[3] - e[2] for e in events if e[0] == "look"
    )
    if end != len(data) and data[end : end + 1] != b"*":
        raise ProtocolFailure("misaligned")
    return events


# ----------------------------------------------------------------------------- a whole sync


@pytest.mark.timeout(120)
def test_a_sync_through_the_pure_python_paths(
    debian_servers: ServerSet, runners: list[RunnerThread], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Full sync (runs of strings, every other type) and the stream (runs, transactions,
    expiries a grace later, another db) with the accelerator switched off: the copy is
    its source (compare), as every other sync test proves for the compiled paths."""
    monkeypatch.setenv("REPLWATCH_PURE_PYTHON", "1")
    source: RedisProcess = debian_servers.start("source")
    target: RedisProcess = debian_servers.start("target")
    build_dataset(source)
    with connect(source) as client:
        pipe = client.pipeline(transaction=False)
        for i in range(5000):
            pipe.set(f"plain:{i}", i)
        pipe.execute()
    runners.append(RunnerThread(make_task(source, target)))
    wait_caught_up(source, target)
    assert_equal(source, target)
    with connect(source) as client:
        for i in range(300):
            client.incr("live:n")
            client.set(f"live:{i}", "x" * (i % 50), px=600_000)
            if i % 20 == 0:
                pipe = client.pipeline(transaction=True)
                pipe.set(f"tx:{i}", i)
                pipe.lpush("tx:list", i)
                pipe.execute()
        with redis.Redis(host=source.host, port=source.port, db=2) as db2:
            db2.set("two", "2")
    wait_caught_up(source, target)
    assert_equal(source, target)
    with connect(target) as client:
        assert int(client.get("live:n") or 0) == 300
        assert client.pttl("live:7") > 600_000  # the grace: later than on the source
