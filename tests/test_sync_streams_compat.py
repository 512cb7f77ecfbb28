"""Streams with consumer groups, copied as plain commands and across server generations.

- The snapshot of a stream as plain commands (commands.key_writes) carries every pending
  entry, those of deleted and trimmed messages too, with the stream's counters: XINFO STREAM
  FULL on the target equals the source's (same build, all four builds), also through a real
  sync task with write_mode: commands and from a newer source to an older target.
- stream_compat.stream_command_for_target: table tests, then the replication stream of a real
  7.0 / Valkey source (read off a replica link) replayed on Redis 6.2 through it ends equal to
  the source, where the same stream forwarded as it is does not; the other way (6.2 → 7.0) a
  claim the target cannot hold is kept and reported in the reply.
"""

from __future__ import annotations

import socket
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import hiredis
import pytest
import redis

from replwatch.config import parse_redis_url
from replwatch.errors import TimeoutFailure
from replwatch.observe.connection import encode_command
from replwatch.sync.commands import (
    StreamGap,
    TargetCaps,
    describe_stream_gaps,
    key_writes,
    stream_gaps,
)
from replwatch.sync.dump import RestoreTarget, restore_target_from_info, split_dump_payload
from replwatch.sync.rdb import (
    KeyEntry,
    StreamConsumer,
    StreamEntry,
    StreamGroup,
    StreamID,
    StreamPendingEntry,
    StreamValue,
    decode_serialized_value,
    parse_rdb,
)
from replwatch.sync.reader import FullResync, SourceLink
from replwatch.sync.stream_compat import (
    XCLAIM_DROPS_DELETED,
    XCLAIM_KEEPS_DELETED,
    StreamCompat,
    stream_command_for_target,
)

from .support.datasets import connect
from .support.servers import RedisProcess, ServerSet, require_build
from .support.syncing import RunnerThread, assert_equal, make_task, start, wait_caught_up

Reply = Any
KEYS = (b"orders", b"trimmed", b"all-gone", b"plain", b"no-groups")

# --------------------------------------------------------------------------- helpers


class Raw:
    """A connection that sends encoded commands and returns hiredis replies as they are
    (errors as hiredis.ReplyError values, nothing parsed by a client library)."""

    def __init__(self, proc: RedisProcess) -> None:
        self.sock = socket.create_connection((proc.host, proc.port), timeout=10)
        self.reader = hiredis.Reader()

    def send(self, data: bytes, replies: int) -> list[Reply]:
        self.sock.sendall(data)
        out: list[Reply] = []
        while len(out) < replies:
            reply = self.reader.gets()
            if reply is False:
                chunk = self.sock.recv(1 << 20)
                assert chunk, "connection closed"
                self.reader.feed(chunk)
                continue
            out.append(reply)
        return out

    def call(self, *args: bytes | str | int) -> Reply:
        return self.send(encode_command(args), 1)[0]

    def close(self) -> None:
        self.sock.close()


def raw(proc: RedisProcess) -> Iterator[Raw]:
    conn = Raw(proc)
    try:
        yield conn
    finally:
        conn.close()


def _pairs(flat: list[Reply]) -> dict[bytes, Reply]:
    return {flat[i]: flat[i + 1] for i in range(0, len(flat), 2)}


def stream_state(conn: Raw, key: bytes) -> dict[str, Any]:
    """What XINFO STREAM FULL says of a stream, less what no command can set (consumers'
    seen / active times, the radix tree's shape): per group its last ID, entries-read, PEL
    (id, consumer, delivery time, delivery count) and consumers with their PELs."""
    reply = conn.call("XINFO", "STREAM", key, "FULL", "COUNT", 0)
    assert not isinstance(reply, hiredis.ReplyError), reply
    info = _pairs(reply)
    state: dict[str, Any] = {
        name.decode(): info[name]
        for name in (
            b"length",
            b"last-generated-id",
            b"max-deleted-entry-id",
            b"entries-added",
            b"recorded-first-entry-id",
        )
        if name in info
    }
    state["entries"] = info[b"entries"]
    groups = {}
    for group_reply in info[b"groups"]:
        group = _pairs(group_reply)
        consumers = {}
        for consumer_reply in group[b"consumers"]:
            consumer = _pairs(consumer_reply)
            consumers[consumer[b"name"]] = (consumer[b"pel-count"], consumer[b"pending"])
        groups[group[b"name"]] = {
            "last-delivered-id": group[b"last-delivered-id"],
            "pel-count": group[b"pel-count"],
            "pending": group[b"pending"],
            "consumers": consumers,
            **({"entries-read": group[b"entries-read"]} if b"entries-read" in group else {}),
        }
    state["groups"] = groups
    return state


def common(left: dict[str, Any], right: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """Both states without the fields only one server reports (6.2 has no entries-added,
    max-deleted-entry-id, recorded-first-entry-id or entries-read)."""

    def only(state: dict[str, Any], other: dict[str, Any]) -> dict[str, Any]:
        out = {k: v for k, v in state.items() if k in other}
        out["groups"] = {
            name: {k: v for k, v in group.items() if k in other["groups"].get(name, group)}
            for name, group in state["groups"].items()
        }
        return out

    return only(left, right), only(right, left)


def caps_of(proc: RedisProcess) -> TargetCaps:
    with connect(proc) as client:
        return TargetCaps.of(restore_target_from_info(client.info("server")))


def pending_ids(state: dict[str, Any], group: bytes) -> list[bytes]:
    return [p[0] for p in state["groups"][group]["pending"]]


# --------------------------------------------------------------------------- the dataset


def build_streams(proc: RedisProcess) -> None:
    """Streams whose groups were read by several clients, acknowledged, claimed, and whose
    pending messages were then deleted and trimmed (same commands on every build)."""
    with connect(proc) as admin, connect(proc) as alice, connect(proc) as bob:
        pipe = admin.pipeline(transaction=False)
        for i in range(1, 21):
            pipe.xadd("orders", {"n": i}, id=f"1-{i}")
        for i in range(1, 11):
            pipe.xadd("trimmed", {"n": i}, id=f"2-{i}")
        for i in range(1, 6):
            pipe.xadd("all-gone", {"n": i}, id=f"3-{i}")
        pipe.xadd("plain", {"only": "entries"}, id="4-1")
        pipe.xadd("no-groups", {"a": 1}, id="5-1")
        pipe.xadd("no-groups", {"a": 2}, id="5-2")
        pipe.execute()
        admin.xdel("no-groups", "5-1")
        admin.xgroup_create("orders", "g1", id="0")
        admin.xgroup_create("orders", "g2", id="0")
        admin.xgroup_create("orders", "idle", id="$")
        admin.xgroup_createconsumer("orders", "idle", "nobody")
        alice.xreadgroup("g1", "alice", {"orders": ">"}, count=8)
        bob.xreadgroup("g1", "bob", {"orders": ">"}, count=6)
        alice.xack("orders", "g1", "1-2", "1-3")
        bob.xreadgroup("g2", "carol", {"orders": ">"}, count=15)
        bob.xclaim("orders", "g1", "bob", 0, ["1-4", "1-5"], justid=True)
        admin.xdel("orders", "1-6", "1-10")  # pending in g1 and g2: between entries
        # 1-1 … 1-4 go: pending, before the first entry
        admin.xtrim("orders", maxlen=14, approximate=False)
        admin.xadd("orders", {"n": 21}, id="1-21")
        alice.xreadgroup("g1", "alice", {"orders": ">"}, count=1, noack=True)
        # trimmed only: max-deleted-entry-id stays 0-0 on the source
        admin.xgroup_create("trimmed", "g", id="0")
        alice.xreadgroup("g", "c", {"trimmed": ">"})
        admin.xtrim("trimmed", maxlen=3, approximate=False)
        # every message gone, five still pending
        admin.xgroup_create("all-gone", "g", id="0")
        bob.xreadgroup("g", "c", {"all-gone": ">"})
        admin.xtrim("all-gone", maxlen=0, approximate=False)


# --------------------------------------------------------------------------- the snapshot


def write_as_commands(
    source: RedisProcess, target: RedisProcess, key: bytes
) -> tuple[StreamGap, ...] | None:
    """The source key (DUMP, decoded) written to the target by key_writes' plain commands;
    returns what on_gaps got (None: not called). Every reply must be a success."""
    caps = caps_of(target)
    source_valkey = caps_of(source).restore.valkey
    with connect(source) as client:
        dumped = client.dump(key)
    assert isinstance(dumped, bytes)
    payload = split_dump_payload(dumped)
    decoded = decode_serialized_value(
        payload.value, rdb_version=payload.rdb_version, valkey=source_valkey
    )
    entry = KeyEntry(0, key, "stream", decoded.value, None, None, payload.value[0])
    seen: list[tuple[StreamGap, ...]] = []
    data, count = key_writes(
        entry, caps, source_valkey, replace=True, use_restore=False, on_gaps=seen.append
    )
    conn = Raw(target)
    try:
        replies = conn.send(data, count)
    finally:
        conn.close()
    errors = [r for r in replies if isinstance(r, hiredis.ReplyError)]
    assert not errors, errors
    assert len(seen) <= 1, "on_gaps is called once per key"
    return seen[0] if seen else None


def test_plain_commands_carry_every_pending_entry(redis_servers: ServerSet) -> None:
    """Same build on both sides: XINFO STREAM FULL equal field for field, also for pending
    entries whose messages were XDELed (between entries) or trimmed (before the first one,
    or all of them), and max-deleted-entry-id / entries-added where the build has them."""
    source = redis_servers.start("source")
    target = redis_servers.start("target")
    build_streams(source)
    for key in KEYS:
        gaps = write_as_commands(source, target, key)
        assert gaps is None, describe_stream_gaps(key, gaps or ())
    conn_s, conn_t = Raw(source), Raw(target)
    try:
        for key in KEYS:
            assert stream_state(conn_t, key) == stream_state(conn_s, key), key
        # the orders stream kept what made the issue: pending entries of deleted messages
        orders = stream_state(conn_s, b"orders")
        assert b"1-1" in pending_ids(orders, b"g1") and b"1-6" in pending_ids(orders, b"g1")
        assert len(pending_ids(stream_state(conn_t, b"all-gone"), b"g")) == 5
    finally:
        conn_s.close()
        conn_t.close()


def live_group_traffic(proc: RedisProcess) -> None:
    """After the snapshot: reads, an acknowledgement, claims of a deleted and a trimmed
    message (XCLAIM, XAUTOCLAIM), deletes and trims of pending messages, and a NOACK read.
    None of it needs a rewrite between the builds it is used with."""
    with connect(proc) as admin, connect(proc) as alice, connect(proc) as bob:
        admin.xadd("orders", {"n": 22}, id="1-22")
        bob.xreadgroup("g2", "dave", {"orders": ">"})
        alice.xack("orders", "g2", "1-11")
        admin.xdel("orders", "1-12")
        bob.xclaim("orders", "g2", "erin", 0, ["1-12", "1-13"], justid=True)
        bob.xautoclaim("orders", "g1", "bob", 0, "0-0", count=3, justid=True)
        admin.xtrim("trimmed", maxlen=1, approximate=False)
        alice.xreadgroup("g1", "alice", {"orders": ">"}, noack=True)


SYNC_PAIRS = [
    ("redis-7.0", "redis-7.0"),
    ("redis-7.0", "redis-6.2"),  # newer to older: plain commands (RDB 10 streams)
    ("valkey-9.1", "redis-7.0"),  # listpacks v3 streams: plain commands
    ("valkey-8.1", "redis-6.2"),
]


@pytest.mark.timeout(120)
@pytest.mark.parametrize(
    ("source_build", "target_build"), SYNC_PAIRS, ids=[f"{s}-to-{t}" for s, t in SYNC_PAIRS]
)
def test_sync_task_with_plain_commands_carries_consumer_groups(
    source_build: str, target_build: str, tmp_path: Path, runners: list[RunnerThread]
) -> None:
    """A real task (write_mode: commands): after the full sync the target's groups, pending
    entries (deleted and trimmed messages' included), consumers and counters equal the
    source's in every field both servers report; compare finds no difference."""
    with (
        ServerSet(require_build(source_build), tmp_path / "s") as sources,
        ServerSet(require_build(target_build), tmp_path / "t") as targets,
    ):
        source, target = sources.start("source"), targets.start("target")
        build_streams(source)
        start(make_task(source, target, write_mode="commands"), runners)
        wait_caught_up(source, target)
        conn_s, conn_t = Raw(source), Raw(target)
        try:
            for key in KEYS:
                mine, theirs = common(stream_state(conn_t, key), stream_state(conn_s, key))
                assert mine == theirs, key
            assert_equal(source, target)
            if target_build == "redis-6.2":
                return  # the stream from a 7.0+ source needs stream_compat (tested below)
            live_group_traffic(source)
            wait_caught_up(source, target)
            for key in KEYS:
                mine, theirs = common(stream_state(conn_t, key), stream_state(conn_s, key))
                if source_build == "redis-7.0":  # see compare.GROUP_FIELDS
                    for group in (*mine["groups"].values(), *theirs["groups"].values()):
                        group.pop("entries-read", None)
                assert mine == theirs, key
            assert_equal(source, target)
        finally:
            conn_s.close()
            conn_t.close()
            for runner in runners:
                runner.stop()
            runners.clear()


# --------------------------------------------------------------------------- gaps (pure)

REDIS_70 = TargetCaps.of(RestoreTarget("redis", (7, 0, 15), 10))
REDIS_62 = TargetCaps.of(RestoreTarget("redis", (6, 2, 14), 9))
FIRST, LAST, NONE_DELETED = StreamID(1, 5), StreamID(1, 9), StreamID(0, 0)


def _stream(
    pending: tuple[tuple[StreamID, bytes | None], ...],
    entries: tuple[StreamID, ...] = (FIRST,),
    last: StreamID = LAST,
    max_deleted: StreamID | None = NONE_DELETED,
) -> StreamValue:
    return StreamValue(
        entries=tuple(StreamEntry(i, ((b"f", b"v"),)) for i in entries),
        length=len(entries),
        last_id=last,
        first_id=entries[0] if entries else None,
        max_deleted_id=max_deleted,
        entries_added=9,
        groups=(
            StreamGroup(
                b"g",
                last,
                9,
                tuple(StreamPendingEntry(i, 1700000000000, 2, c) for i, c in pending),
                (StreamConsumer(b"c", 1, None, tuple(i for i, c in pending if c)),),
            ),
        ),
    )


def _claim(stream_id: bytes) -> list[bytes]:
    return [b"XCLAIM", b"k", b"g", b"c", b"0", stream_id, b"TIME", b"1700000000000"]


GAP_CASES = [
    (
        "trimmed and deleted pending: placeholders, trimmed and deleted again",
        _stream(((StreamID(1, 2), b"c"), (StreamID(1, 7), b"c")), max_deleted=StreamID(1, 7)),
        REDIS_70,
        [
            [b"XADD", b"k", b"1-2", b"__replwatch", b"placeholder"],
            [b"XADD", b"k", b"1-5", b"f", b"v"],
            [b"XADD", b"k", b"1-7", b"__replwatch", b"placeholder"],
            [b"XGROUP", b"CREATE", b"k", b"g", b"1-9", b"ENTRIESREAD", b"9"],
            [b"XGROUP", b"CREATECONSUMER", b"k", b"g", b"c"],
            _claim(b"1-2"),
            _claim(b"1-7"),
            [b"XDEL", b"k", b"1-7"],
            [b"XTRIM", b"k", b"MAXLEN", b"1"],
            [b"XSETID", b"k", b"1-9", b"ENTRIESADDED", b"9", b"MAXDELETEDID", b"1-7"],
        ],
        "",
    ),
    (
        "a pending entry owned by no consumer is left out and reported",
        _stream(((StreamID(1, 5), None),)),
        REDIS_62,
        None,
        "stream b'k': group b'g': 1 pending entries dropped (pending entries owned by no consumer)",
    ),
    (
        "above the last id: held by 6.2",
        _stream(((StreamID(2, 1), b"c"),)),
        REDIS_62,
        None,
        "",
    ),
    (
        "above the last id: not by 7.0",
        _stream(((StreamID(2, 1), b"c"),)),
        REDIS_70,
        None,
        "stream b'k': group b'g': 1 pending entries dropped (pending entries above the "
        "stream's last ID 1-9 (a 7.0+ target cannot hold them))",
    ),
    (
        "deleted between entries while max-deleted-entry-id says 0-0",
        _stream(((StreamID(1, 7), b"c"),), entries=(StreamID(1, 5), StreamID(1, 8))),
        REDIS_70,
        None,
        "stream b'k': max-deleted-entry-id reads 1-7 on the target, 0-0 on the source "
        "(XSETID cannot set 0-0)",
    ),
    (
        "the same on 6.2, which has no such field",
        _stream(((StreamID(1, 7), b"c"),), entries=(StreamID(1, 5), StreamID(1, 8))),
        REDIS_62,
        None,
        "",
    ),
]


@pytest.mark.parametrize(
    ("what", "stream", "caps", "commands", "gaps"), GAP_CASES, ids=[c[0] for c in GAP_CASES]
)
def test_stream_plain_commands_and_their_gaps(
    what: str,
    stream: StreamValue,
    caps: TargetCaps,
    commands: list[list[bytes]] | None,
    gaps: str,
) -> None:
    entry = KeyEntry(0, b"k", "stream", stream, None, None, 19)
    seen: list[tuple[StreamGap, ...]] = []
    data, count = key_writes(entry, caps, False, replace=False, on_gaps=seen.append)
    written = decode(data)
    assert len(written) == count
    if commands is not None:
        assert [c[:8] for c in written] == commands
    assert seen == ([stream_gaps(stream, caps)] if gaps else [])
    assert (describe_stream_gaps(b"k", seen[0]) if seen else "") == gaps
    claimed = {c[5] for c in written if c[0] == b"XCLAIM"}
    dropped = sum(g.pending_dropped for g in stream_gaps(stream, caps))
    assert len(claimed) + dropped == len(stream.groups[0].pending)


def decode(data: bytes) -> list[list[bytes]]:
    reader = hiredis.Reader()
    reader.feed(data)
    out = []
    while (item := reader.gets()) is not False:
        out.append(item)
    return out


# --------------------------------------------------------------------------- stream_compat (pure)

DOWN = StreamCompat(source_stream_ids=True, target_stream_ids=False)  # 7.0+ → 6.2
SAME = StreamCompat(source_stream_ids=True, target_stream_ids=True)
UP = StreamCompat(source_stream_ids=False, target_stream_ids=True)  # 6.2 → 7.0+
OLD = StreamCompat(source_stream_ids=False, target_stream_ids=False)  # 6.2 → 6.2


def test_names_per_pair() -> None:
    assert SAME.names == {b"XADD", b"XTRIM"}
    assert DOWN.names == {b"XADD", b"XTRIM", b"XSETID", b"XGROUP", b"XCLAIM"}
    assert UP.names == {b"XADD", b"XTRIM", b"XCLAIM"}
    assert OLD.names == {b"XADD", b"XTRIM", b"XSETID", b"XGROUP"}
    assert StreamCompat.between(REDIS_70, REDIS_62) == DOWN
    assert StreamCompat.between(REDIS_62, REDIS_70) == UP


def _argv(text: str) -> list[bytes]:
    return [word.encode() for word in text.split()]


def _eval(script: str, rest: str) -> list[tuple[bytes, ...]]:
    return [(b"EVAL", script.encode(), b"1", *_argv(rest))]


REWRITES = [
    ("plain XADD", SAME, "XADD k 5-1 a 1", None),
    ("XADD whose field is LIMIT", SAME, "XADD k 5-1 LIMIT 100", None),
    (
        "exact trim with LIMIT (as propagated)",
        SAME,
        "XADD k MAXLEN = 251 LIMIT 100 5-1 LIMIT x",
        [_argv("XADD k MAXLEN = 251 5-1 LIMIT x")],
    ),
    (
        "lower case, NOMKSTREAM, MINID",
        DOWN,
        "xadd k nomkstream minid 3-0 limit 5 6-1 a 1",
        [_argv("xadd k nomkstream minid 3-0 6-1 a 1")],
    ),
    ("approximate trim keeps LIMIT", SAME, "XADD k MAXLEN ~ 10 LIMIT 100 * a 1", None),
    ("XADD with a trim, no LIMIT", OLD, "XADD k MAXLEN = 2 5-1 a 1", None),
    (
        "XTRIM exact with LIMIT",
        UP,
        "XTRIM k MAXLEN = 151 LIMIT 100",
        [_argv("XTRIM k MAXLEN = 151")],
    ),
    ("XTRIM approximate", SAME, "XTRIM k MINID ~ 5 LIMIT 100", None),
    ("XTRIM plain", DOWN, "XTRIM k MAXLEN 0", None),
    (
        "XSETID to 6.2",
        DOWN,
        "XSETID k 5-0 ENTRIESADDED 10 MAXDELETEDID 1-1",
        [_argv("XSETID k 5-0")],
    ),
    ("XSETID to 7.0", SAME, "XSETID k 5-0 ENTRIESADDED 10 MAXDELETEDID 1-1", None),
    ("bare XSETID", DOWN, "XSETID k 5-0", None),
    (
        "XGROUP CREATE to 6.2",
        DOWN,
        "XGROUP CREATE k g 0 MKSTREAM ENTRIESREAD 3",
        [_argv("XGROUP CREATE k g 0 MKSTREAM")],
    ),
    (
        "XGROUP SETID to 6.2 (a NOACK read)",
        DOWN,
        "xgroup setid k g 1-5 entriesread 5",
        [_argv("xgroup setid k g 1-5")],
    ),
    ("XGROUP CREATE without it", DOWN, "XGROUP CREATE k g $", None),
    ("XGROUP CREATECONSUMER", DOWN, "XGROUP CREATECONSUMER k ENTRIESREAD c", None),
    (
        "XCLAIM to 6.2",
        DOWN,
        "XCLAIM k g c1 0 1-2 TIME 17 RETRYCOUNT 1 FORCE JUSTID LASTID 1-3",
        _eval(XCLAIM_DROPS_DELETED, "k 1 g c1 0 1-2 TIME 17 RETRYCOUNT 1 FORCE JUSTID LASTID 1-3"),
    ),
    (
        "XCLAIM of IDs written short",
        DOWN,
        "XCLAIM k g c 0 5 6-1 JUSTID",
        _eval(XCLAIM_DROPS_DELETED, "k 2 g c 0 5-0 6-1 JUSTID"),
    ),
    (
        "XCLAIM from 6.2",
        UP,
        "XCLAIM k g c 0 1-2 FORCE",
        _eval(XCLAIM_KEEPS_DELETED, "k 1 g c 0 1-2 FORCE"),
    ),
    ("XCLAIM, same generation", SAME, "XCLAIM k g c 0 1-2", None),
    ("XCLAIM without an ID", DOWN, "XCLAIM k g c 0 JUSTID", None),
    ("XCLAIM cut short", DOWN, "XCLAIM k g c", None),
]


@pytest.mark.parametrize(
    ("what", "compat", "command", "expected"), REWRITES, ids=[r[0] for r in REWRITES]
)
def test_stream_command_for_target(
    what: str,
    compat: StreamCompat,
    command: str,
    expected: list[list[bytes]] | list[tuple[bytes, ...]] | None,
) -> None:
    argv = _argv(command)
    result = stream_command_for_target(argv, compat)
    if expected is None:
        assert result is None
    else:
        assert result is not None
        assert [list(c) for c in result] == [list(c) for c in expected]


# --------------------------------------------------------------------------- replayed streams


class Tap:
    """A replica link to a server, attached while it is empty: every command it propagates
    afterwards, as a replica (or a sync task) receives it."""

    def __init__(self, proc: RedisProcess) -> None:
        self.proc = proc
        self.link = SourceLink(parse_redis_url(proc.url), None, 10)
        self.link.handshake()
        reply = self.link.psync(None, None)
        assert isinstance(reply, FullResync)
        payload = self.link.payload()
        for _ in parse_rdb(payload, raw_limit=0, verify_checksum=False):
            pass
        payload.finish()
        self.offset = reply.offset
        self.link.ack(self.offset)  # a diskless source streams once it has this ACK

    def commands(self) -> list[list[bytes]]:
        """Everything propagated up to the server's current offset (no PING, REPLCONF)."""
        with connect(self.proc) as client:
            end = int(client.info("replication")["master_repl_offset"])
        out: list[list[bytes]] = []
        deadline = time.monotonic() + 20
        self.link.settimeout(0.2)
        while True:
            self.link.feed_buffered()  # (the payload's last read may hold commands already)
            for argv, start_at, end_at in self.link.commands():
                self.offset += end_at - start_at
                if argv[0].upper() not in (b"PING", b"REPLCONF"):
                    out.append(argv)
            if self.offset >= end:
                return out
            assert time.monotonic() < deadline, f"the stream stopped at {self.offset} of {end}"
            try:
                self.link.receive()
            except TimeoutFailure:  # a diskless source streams after an ACK once it is done
                self.link.ack(self.offset)

    def close(self) -> None:
        self.link.close()


def replay(
    commands: list[list[bytes]],
    target: RedisProcess,
    rewrite: Callable[[list[bytes]], tuple[tuple[bytes, ...], ...] | None],
) -> list[hiredis.ReplyError]:
    """The commands sent to the target as a sync task's client would send them, each through
    `rewrite` first; the error replies (EXEC's included)."""
    sent: list[bytes] = []
    for argv in commands:
        replaced = rewrite(argv)
        sent += [encode_command(c) for c in (replaced if replaced is not None else (argv,))]
    conn = Raw(target)
    try:
        replies = conn.send(b"".join(sent), len(sent))
    finally:
        conn.close()
    errors = []
    for reply in replies:
        for item in reply if isinstance(reply, list) else [reply]:
            if isinstance(item, hiredis.ReplyError):
                errors.append(item)
    return errors


def through(compat: StreamCompat) -> Callable[[list[bytes]], tuple[tuple[bytes, ...], ...] | None]:
    names = compat.names

    def rewrite(argv: list[bytes]) -> tuple[tuple[bytes, ...], ...] | None:
        return stream_command_for_target(argv, compat) if argv[0].upper() in names else None

    return rewrite


def unchanged(argv: list[bytes]) -> None:
    return None


def newer_source_traffic(proc: RedisProcess) -> None:
    """What only 7.0+ sources send: XGROUP CREATE … ENTRIESREAD, XSETID … ENTRIESADDED
    MAXDELETEDID; and an approximate trim with LIMIT (any source)."""
    with connect(proc) as client:
        client.execute_command("XGROUP", "CREATE", "orders", "late", "1-15", "ENTRIESREAD", 9)
        client.execute_command(
            "XSETID", "no-groups", "5-9", "ENTRIESADDED", 9, "MAXDELETEDID", "5-1"
        )
        capped_traffic(client)


def capped_traffic(client: redis.Redis) -> None:
    pipe = client.pipeline(transaction=False)
    for i in range(1, 301):
        pipe.xadd("capped", {"n": i}, id=f"6-{i}")
    pipe.execute()
    client.xadd("capped", {"n": 301}, id="6-301", maxlen=10, approximate=True, limit=100)
    client.xtrim("capped", maxlen=10, approximate=True, limit=100)


@pytest.mark.timeout(120)
@pytest.mark.parametrize("source_build", ["redis-7.0", "valkey-8.1", "valkey-9.1"])
def test_newer_source_stream_replayed_on_6_2(source_build: str, tmp_path: Path) -> None:
    """A 7.0+ source's stream (groups read by several clients, XCLAIM / XAUTOCLAIM of deleted
    and trimmed messages, NOACK reads, ENTRIESREAD / ENTRIESADDED, trims with LIMIT) replayed
    on Redis 6.2 through stream_command_for_target: no error, and every stream equal to the
    source's in the fields 6.2 has. Forwarded as it is, the same stream fails on 6.2 and ends
    with other pending entries."""
    with (
        ServerSet(require_build(source_build), tmp_path / "s") as sources,
        ServerSet(require_build("redis-6.2"), tmp_path / "t") as targets,
    ):
        source = sources.start("source")
        fixed, forwarded = targets.start("fixed"), targets.start("forwarded")
        tap = Tap(source)
        try:
            build_streams(source)
            live_group_traffic(source)
            newer_source_traffic(source)
            commands = tap.commands()
        finally:
            tap.close()
        compat = StreamCompat.between(caps_of(source), caps_of(fixed))
        assert replay(commands, fixed, through(compat)) == []
        naive = replay(commands, forwarded, unchanged)
        conns = {p: Raw(p) for p in (source, fixed, forwarded)}
        try:
            states = {
                p: {k: stream_state(c, k) for k in (*KEYS, b"capped")} for p, c in conns.items()
            }
        finally:
            for conn in conns.values():
                conn.close()
        for key in (*KEYS, b"capped"):
            mine, theirs = common(states[fixed][key], states[source][key])
            assert mine == theirs, key
        # the control: forwarded as it is, 6.2 refuses commands (ENTRIESREAD, LIMIT …) and
        # claims what the source removed
        texts = " / ".join(str(e) for e in naive)
        for refusal in ("LIMIT cannot be used", "for 'xsetid'", "for 'CREATE'", "for 'SETID'"):
            assert refusal in texts, texts
        claimed_by_62 = set(pending_ids(states[forwarded][b"orders"], b"g2"))
        assert claimed_by_62 - set(pending_ids(states[source][b"orders"], b"g2")), naive


@pytest.mark.timeout(120)
@pytest.mark.parametrize("target_build", ["redis-7.0", "valkey-9.1"])
def test_6_2_source_claims_of_deleted_messages_are_kept_and_reported(
    target_build: str, tmp_path: Path
) -> None:
    """Redis 6.2 claims a pending entry whose message is deleted (XCLAIM, XAUTOCLAIM); a
    7.0+ target cannot: through stream_command_for_target the entry stays pending there (with
    its previous consumer) and the reply names it, where forwarded as it is the entry is
    silently gone (what a native 7.0 replica of a 6.2 master does too)."""
    with (
        ServerSet(require_build("redis-6.2"), tmp_path / "s") as sources,
        ServerSet(require_build(target_build), tmp_path / "t") as targets,
    ):
        source = sources.start("source")
        fixed, forwarded = targets.start("fixed"), targets.start("forwarded")
        tap = Tap(source)
        try:
            build_streams(source)
            live_group_traffic(source)
            commands = tap.commands()
        finally:
            tap.close()
        compat = StreamCompat.between(caps_of(source), caps_of(fixed))
        errors = replay(commands, fixed, through(compat))
        assert replay(commands, forwarded, unchanged) == []  # nothing says a word
        conns = {p: Raw(p) for p in (source, fixed, forwarded)}
        try:
            orders = {p: stream_state(c, b"orders") for p, c in conns.items()}
        finally:
            for conn in conns.values():
                conn.close()
        for group in (b"g1", b"g2"):
            source_ids = pending_ids(orders[source], group)
            assert pending_ids(orders[fixed], group) == source_ids, group
            assert len(pending_ids(orders[forwarded], group)) < len(source_ids), group
        # each entry the target could not claim is named in an error reply, and only those
        not_claimed = {
            (group, p[0])
            for group in (b"g1", b"g2")
            for p, q in zip(
                orders[fixed]["groups"][group]["pending"],
                orders[source]["groups"][group]["pending"],
                strict=True,
            )
            if p != q  # the previous consumer, delivery time and count
        }
        assert not_claimed
        reported = set()
        for error in errors:
            text = str(error)
            assert text.startswith("REPLWATCH stream orders group "), text
            group = text.split()[4].rstrip(":").encode()
            ids = text.split(": pending ")[1].split(" not claimed")[0].split()
            reported |= {(group, i.encode()) for i in ids}
        assert reported == not_claimed
