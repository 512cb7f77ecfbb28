"""Fuzzing the RESP readers with hypothesis: the syncer's replication stream (SourceLink over a
real TCP connection, and the stream applier's inlined loop), the poller's connection
(_RespProtocol, fed the way asyncio feeds it) and the short request/response client of the
syncer (NodeClient).

Valid input comes from encoding commands and replies; it is then cut, flipped and spliced
with hostile headers (sizes of 10 GB and 2^31 elements, nesting thousands deep, maps keyed by
arrays, lines that never end). Every input must end in the right result or a typed error
(ReplwatchError) within a generous hang guard, and the hostile sizes must be refused before
anything big is buffered (tracemalloc peak, and bytes fed before the refusal).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import os
import time
import tracemalloc
from collections.abc import Callable, Iterator
from typing import Any

import hiredis
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from replwatch.config import TLSConfig, config_from_data, parse_redis_url
from replwatch.errors import ProtocolFailure, RedisError, ReplwatchError, TimeoutFailure
from replwatch.observe.connection import InFlight, _RespProtocol, encode_command
from replwatch.observe.info import (
    parse_client_list,
    parse_output_buffer_limit,
    parse_replication,
)
from replwatch.observe.resp_limits import REPLY_LIMITS, STREAM_LIMITS, ReplyGuard
from replwatch.sync.reader import SourceLink
from replwatch.sync.sources import NodeClient, NotMasterError, require_master
from replwatch.sync.stream_apply import StreamApplier
from replwatch.sync.task import SyncTaskRunner
from replwatch.sync.writer import TargetLink

from .support.hostile import Flood, HostileServer, Recv, Send, Stall
from .support.servers import RedisProcess, ServerSet, in_ci, require_build

HANG_GUARD = 3.0  # seconds per example: a hang guard (a loaded CI box), not a performance target
MEMORY_BOUND = 64 << 20  # tracemalloc peak while a 10 GB size is refused
# REPLWATCH_FUZZ_SCALE=50 runs 50 times the examples (a longer hunt by hand). CI runs the
# same examples every time (derandomized); no example database is written to the tree.
SCALE = int(os.environ.get("REPLWATCH_FUZZ_SCALE", "1"))
FUZZ = settings(
    derandomize=in_ci(),
    database=None,
    max_examples=150 * SCALE,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)

# headers and replies no reader may trust: huge sizes, deep nesting, RESP3 oddities
HOSTILE = [
    b"$9999999999\r\n",
    b"$10000000000\r\n",
    b"*2147483647\r\n",
    b"*4294967295\r\n",
    b"%2147483647\r\n",
    b"~99999999\r\n",
    b">2147483647\r\n",
    b"*1\r\n" * 3000,
    b"%1\r\n*1\r\n:1\r\n:2\r\n",
    b"$-5\r\n",
    b"*-7\r\n",
    b":99999999999999999999999\r\n",
    b"$" + b"9" * 40 + b"\r\n",
    b",not-a-double\r\n",
    b"#maybe\r\n",
    b"=3\r\nabc\r\n",
    b"(" + b"1" * 5000 + b"\r\n",
    b"*0\r\n",
    b"*1\r\n:7\r\n",
    b"*2\r\n$3\r\nSET\r\n*1\r\n$1\r\nk\r\n",
    b"+OK\r\n",
    b"\r\n",
    b"\x00\xff",
    b"+" + b"A" * 70_000,
]


def timed(fn: Callable[[], Any]) -> Any:
    started = time.monotonic()
    result = fn()
    elapsed = time.monotonic() - started
    assert elapsed < HANG_GUARD, f"took {elapsed:.2f}s"
    return result


def traced_peak(fn: Callable[[], Any]) -> tuple[Any, int]:
    """fn()'s result (or the exception it raised) and the tracemalloc peak meanwhile."""
    tracemalloc.start()
    try:
        try:
            result = fn()
        except Exception as exc:
            result = exc
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    return result, peak


# ----------------------------------------------------------------------------- strategies

args = st.binary(max_size=40) | st.sampled_from(
    [b"*99999999\r\n", b"\r\n$99999999999\r\n", b"*2147483647", b"$", b"\r\n*1\r\n"]
)  # values that look like hostile headers are data, and must pass
command = st.one_of(
    st.tuples(st.just(b"SET"), args, args),
    st.tuples(st.just(b"DEL"), args),
    st.tuples(st.just(b"RPUSH"), args, args, args),
    st.tuples(st.just(b"HSET"), args, args, args),
    st.tuples(st.just(b"PING")),
    st.tuples(st.just(b"SELECT"), st.just(b"0")),
).map(list)
streams = st.lists(command, min_size=1, max_size=25)


def encode(commands: list[list[bytes]]) -> bytes:
    return b"".join(encode_command(c) for c in commands)


@st.composite
def mutated(draw: st.DrawFn, valid: st.SearchStrategy[bytes]) -> bytes:
    """A valid input cut short, with bytes flipped, or with a hostile header spliced in."""
    data = bytearray(draw(valid))
    how = draw(st.sampled_from(["cut", "flip", "splice", "splice-cut"]))
    at = draw(st.integers(0, len(data)))
    if how == "cut":
        return bytes(data[:at])
    if how == "flip":
        for _ in range(draw(st.integers(1, 4))):
            if data:
                i = draw(st.integers(0, len(data) - 1))
                data[i] ^= draw(st.integers(1, 255))
        return bytes(data)
    data[at:at] = draw(st.sampled_from(HOSTILE))
    if how == "splice-cut":
        return bytes(data[: draw(st.integers(0, len(data)))])
    return bytes(data)


# ----------------------------------------------------------------------------- the syncer's stream


@pytest.fixture(scope="module")
def server() -> Iterator[HostileServer]:
    with HostileServer([]) as hostile:
        yield hostile


def read_stream(server: HostileServer, data: bytes) -> tuple[list[tuple[list[bytes], bytes]], Any]:
    """The commands a SourceLink reads from a connection that sends `data` and closes, each
    with its span's bytes; and the exception that ended the reading."""
    server.script = [Send(data)]
    link = SourceLink(parse_redis_url(server.url), None, HANG_GUARD)
    got: list[tuple[list[bytes], bytes]] = []
    try:
        while True:
            link.receive()
            link.feed_buffered()
            for argv, start, end in link.commands():
                got.append((argv, bytes(link.raw[start:end])))
    except Exception as exc:
        return got, exc
    finally:
        link.close()


@FUZZ
@given(streams)
def test_stream_of_commands_reads_back(server: HostileServer, commands: list[list[bytes]]) -> None:
    got, end = timed(lambda: read_stream(server, encode(commands)))
    assert [argv for argv, _ in got] == commands
    assert [span for _, span in got] == [encode_command(c) for c in commands]
    assert isinstance(end, RedisError) and end.reason == "reset", repr(end)


@FUZZ
@given(mutated(streams.map(encode)))
# a status line as an argument: 3 bytes shorter than its bulk string; the command must not be
# handed on (it was, with a span running past the stream's end)
@example(b"*3\r\n+OK\r\n$3\r\nSET\r\n$0\r\n\r\n")
@example(b"*2\r\n:5\r\n$1\r\nx\r\n*1\r\n$4\r\nPING\r\n")
def test_mutated_stream_ends_in_a_typed_error(server: HostileServer, data: bytes) -> None:
    got, end = timed(lambda: read_stream(server, data))
    assert isinstance(end, ReplwatchError), repr(end)
    assert server.label in str(end)
    for argv, span in got:  # spans are whole commands (hiredis, like Redis, does not look
        # at the two bytes after a bulk string, and takes a RESP3 set or push as an array)
        assert len(span) == len(encode_command(argv)) and span[:1] in (b"*", b"~", b">")


@pytest.mark.parametrize("hostile", HOSTILE, ids=lambda h: repr(h[:14]))
def test_hostile_header_in_the_stream(server: HostileServer, hostile: bytes) -> None:
    before = encode([[b"SET", b"k", b"v"]])
    got, end = timed(lambda: read_stream(server, before + hostile + before))
    # (an oversized header is refused with the read that holds it, before the commands
    # ahead of it are taken: the session ends, and resumes before them)
    assert [argv for argv, _ in got] in ([], [[b"SET", b"k", b"v"]])
    assert isinstance(end, ProtocolFailure), repr(end)
    assert server.label in str(end)


@pytest.mark.parametrize(
    "head",
    [
        b"*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$10000000000\r\n",  # a 10 GB value
        b"*2147483647\r\n",
        b"*1\r\n*2147483647\r\n",
        b"+",  # a line that never ends
        b"*1\r\n$" + b"9" * 30,  # digits that never end
    ],
)
def test_flooded_stream_is_refused_early(server: HostileServer, head: bytes) -> None:
    """The head, then 256 MiB of filler: refused before more than a few MiB are buffered."""
    server.script = [Send(head), Flood(b"A" * 65536, 256 << 20)]
    link = SourceLink(parse_redis_url(server.url), None, HANG_GUARD)

    def read() -> None:
        while True:
            link.receive()
            link.feed_buffered()
            for _ in link.commands():
                pass

    try:
        started = time.monotonic()
        error, peak = traced_peak(read)
        elapsed = time.monotonic() - started
    finally:
        link.close()
    assert isinstance(error, ProtocolFailure), repr(error)
    assert server.label in str(error)
    assert elapsed < HANG_GUARD
    assert peak < MEMORY_BOUND, peak
    assert len(link.raw) < 4 * STREAM_LIMITS.max_line + 2 * (1 << 20)


def test_big_values_and_lookalike_text_are_not_refused(server: HostileServer) -> None:
    """A 20 MB value (an 8-digit size: a candidate the walk must clear) and values holding
    text that looks like hostile headers pass whole."""
    commands = [
        [b"SET", b"big", b"x" * 20_000_000],
        [b"SET", b"look", b"\r\n*99999999\r\n$99999999999\r\n" * 3],
        [b"PING"],
    ]
    got, end = timed(lambda: read_stream(server, encode(commands)))
    assert [argv for argv, _ in got] == commands
    assert isinstance(end, RedisError) and end.reason == "reset"


# ----------------------------------------------------------------------------- the stream applier


@pytest.fixture(scope="module")
def target(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisProcess]:
    with ServerSet(require_build("redis-7.0"), tmp_path_factory.mktemp("fuzz")) as servers:
        yield servers.start("target")


def apply_stream(
    server: HostileServer, target: RedisProcess, data: bytes, pure: bool = False
) -> Any:
    """The stream applier's inlined loop (stream_apply.StreamApplier.consume) over a connection that
    sends `data` and closes: the exception that ended it."""
    cfg = config_from_data(
        {"sync": {"tasks": [{"name": "fuzz", "source": server.url, "target": target.url}]}}
    )
    task = cfg.sync.tasks[0]
    runner = SyncTaskRunner(task, TLSConfig())
    out = TargetLink(task.target, None, 5, 8)
    server.script = [Send(data)]
    link = SourceLink(parse_redis_url(server.url), None, HANG_GUARD)
    # the stream split in C (when built) or the pure-Python path (REPLWATCH_PURE_PYTHON)
    with pure_python(pure):
        applier = StreamApplier(runner.context(), out, link, "r" * 40, 0)
    try:
        while True:
            link.receive()
            link.feed_buffered()
            while applier.consume(link):
                pass
            applier.end_round()
    except Exception as exc:
        return exc
    finally:
        link.close()
        out.close()


@contextlib.contextmanager
def pure_python(pure: bool) -> Iterator[None]:
    before = os.environ.pop("REPLWATCH_PURE_PYTHON", None)
    if pure:
        os.environ["REPLWATCH_PURE_PYTHON"] = "1"
    try:
        yield
    finally:
        os.environ.pop("REPLWATCH_PURE_PYTHON", None)
        if before is not None:
            os.environ["REPLWATCH_PURE_PYTHON"] = before


@settings(FUZZ, max_examples=60)
@given(mutated(streams.map(encode)), st.booleans())
def test_applier_loop_ends_in_a_typed_error(
    server: HostileServer, target: RedisProcess, data: bytes, pure: bool
) -> None:
    end = timed(lambda: apply_stream(server, target, data, pure))
    assert isinstance(end, ReplwatchError), repr(end)


@pytest.mark.parametrize("pure", [False, True], ids=["compiled", "pure"])
@pytest.mark.parametrize("hostile", HOSTILE, ids=lambda h: repr(h[:14]))
def test_applier_loop_refuses_hostile_replies(
    server: HostileServer, target: RedisProcess, hostile: bytes, pure: bool
) -> None:
    end = timed(lambda: apply_stream(server, target, encode([[b"PING"]]) + hostile, pure))
    assert isinstance(end, ReplwatchError), repr(end)


# ----------------------------------------------------------------------------- the poller


def reply_values() -> st.SearchStrategy[tuple[bytes, Any]]:
    """(wire bytes, what hiredis makes of them) for RESP2 replies, nested."""
    leaves = st.one_of(
        st.binary(max_size=40).map(lambda b: (b"$%d\r\n%s\r\n" % (len(b), b), b)),
        st.from_regex(rb"[a-zA-Z0-9 :=,._-]{0,30}", fullmatch=True).map(
            lambda b: (b"+" + b + b"\r\n", b)
        ),
        st.integers(-(2**63), 2**63 - 1).map(lambda n: (b":%d\r\n" % n, n)),
        st.just((b"$-1\r\n", None)),
        st.from_regex(rb"ERR [a-z ]{0,20}", fullmatch=True).map(
            lambda b: (b"-" + b + b"\r\n", ("error", b.decode()))
        ),
    )
    return st.recursive(
        leaves,
        lambda children: st.lists(children, max_size=4).map(
            lambda items: (
                b"*%d\r\n" % len(items) + b"".join(w for w, _ in items),
                [v for _, v in items],
            )
        ),
        max_leaves=12,
    )


def wire_of(replies: list[tuple[bytes, Any]]) -> bytes:
    return b"".join(wire for wire, _ in replies)


def normal(value: Any) -> Any:
    if isinstance(value, hiredis.ReplyError):
        return ("error", str(value))
    if isinstance(value, list):
        return [normal(v) for v in value]
    return value


def deliver(chunks: list[bytes], count: int) -> tuple[Any, int]:
    """Feed a _RespProtocol `chunks` as asyncio would, waiting for `count` replies, then
    lose the connection: (the replies or the exception the pipeline ended with, how many
    bytes were fed before it ended)."""
    loop = asyncio.new_event_loop()
    try:
        protocol = _RespProtocol("fuzz:1")
        future: asyncio.Future[list[Any]] = loop.create_future()
        protocol.waiters.append(InFlight(count, future, 0.0))
        fed = 0
        for chunk in chunks:
            if future.done():
                break
            protocol.data_received(chunk)  # must never raise
            fed += len(chunk)
        protocol.connection_lost(None)
        assert future.done()
        error = future.exception()
        return (error if error is not None else future.result()), fed
    finally:
        loop.close()


def split(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({min(c, len(data)) for c in cuts} | {0, len(data)})
    return [data[a:b] for a, b in itertools.pairwise(points)] or [b""]


@FUZZ
@given(st.lists(reply_values(), min_size=1, max_size=6), st.lists(st.integers(0, 2000)))
def test_replies_read_back_whatever_the_reads(
    replies: list[tuple[bytes, Any]], cuts: list[int]
) -> None:
    wire = b"".join(w for w, _ in replies)
    result, _ = timed(lambda: deliver(split(wire, cuts), len(replies)))
    assert normal(result) == [v for _, v in replies]


@FUZZ
@given(
    mutated(st.lists(reply_values(), min_size=1, max_size=6).map(wire_of)),
    st.lists(st.integers(0, 2000)),
    st.integers(1, 6),
)
def test_mutated_replies_end_in_a_typed_error(data: bytes, cuts: list[int], count: int) -> None:
    result, _ = timed(lambda: deliver(split(data, cuts), count))
    assert isinstance(result, list | RedisError), repr(result)
    if isinstance(result, ProtocolFailure):
        assert "fuzz:1" in str(result)


# the HOSTILE headers whose size is over the limits (of replies, and of the stream)
OVERSIZED = [*HOSTILE[:7], HOSTILE[12]]


@pytest.mark.parametrize("hostile", HOSTILE, ids=lambda h: repr(h[:14]))
def test_hostile_reply_split_anywhere(hostile: bytes) -> None:
    """Every split of the hostile bytes into two reads: a typed error, or (for what hiredis
    takes) a reply; never an exception out of data_received."""
    for cut in range(0, min(len(hostile), 40) + 1):
        result, _ = timed(lambda cut=cut: deliver([hostile[:cut], hostile[cut:]], 1))
        assert isinstance(result, list | RedisError), (cut, repr(result))
        if hostile in OVERSIZED:
            assert isinstance(result, ProtocolFailure), (cut, result)
            assert "declares" in str(result)


def test_oversized_headers_are_the_expected_ones() -> None:
    for header in OVERSIZED:
        size = int(header[1:].split(b"\r\n")[0])
        limit = STREAM_LIMITS.max_bulk if header[:1] == b"$" else STREAM_LIMITS.max_aggregate
        assert size > limit, header


@pytest.mark.parametrize(
    "head",
    [b"$10000000000\r\n", b"*2147483647\r\n", b"*1\r\n%2147483647\r\n", b"+"],
)
def test_flooded_reply_is_refused_early(head: bytes) -> None:
    """The head, then 1 MiB reads of filler: refused before max_pending bytes are buffered."""
    limit = REPLY_LIMITS.max_pending + (2 << 20)
    chunks = [head] + [b"x" * (1 << 20)] * (limit >> 20)
    (result, fed), peak = traced_peak(lambda: deliver(chunks, 1))
    assert isinstance(result, ProtocolFailure), repr(result)
    assert fed < limit
    if head != b"+":  # (a line that never ends is refused once too much is pending)
        assert fed <= len(head) and peak < MEMORY_BOUND, (fed, peak)


def test_guard_catches_a_header_split_across_reads() -> None:
    for header in (b"*2147483647\r\n", b"$99999999999\r\n"):
        for cut in range(len(header) + 1):
            guard = ReplyGuard()
            problems = [guard.check(b"+OK\r\n" + header[:cut]), guard.check(header[cut:])]
            assert any(problems), (header, cut)


INFO_KEYS = [
    "role",
    "master_replid",
    "master_repl_offset",
    "second_repl_offset",
    "repl_backlog_size",
    "repl_backlog_first_byte_offset",
    "repl_backlog_histlen",
    "master_host",
    "master_port",
    "master_link_status",
    "master_last_io_seconds_ago",
    "master_sync_in_progress",
    "slave_repl_offset",
    "slave_read_repl_offset",
    "master_link_down_since_seconds",
    "slave_read_only",
    "slave0",
    "slave1",
]
INFO_VALUES = st.sampled_from(
    [
        "master",
        "slave",
        "0",
        "-1",
        "²",  # str.isdigit() says yes, int() says no
        "٣",
        "1e400",
        "nan",
        "9" * 5000,  # over int()'s digit limit
        "ip=10.0.0.1,port=²,state=online,offset=5,lag=0",
        "ip=::1,port=6379,state=online,offset=x,lag=0",
        "id=1 addr=1.2.3.4:5 laddr=1.2.3.4:6 flags=S omem=² tot-mem=1",
    ]
) | st.text(max_size=30)


@FUZZ
@given(
    st.sampled_from(["master", "slave"]),
    st.lists(st.tuples(st.sampled_from(INFO_KEYS[1:]), INFO_VALUES), max_size=12),
)
def test_reply_text_parsers_fail_typed(role: str, lines: list[tuple[str, str]]) -> None:
    """What the poller makes of the text replies (INFO replication, CLIENT LIST, CONFIG GET):
    a value or a ProtocolFailure, never ValueError (a master_port of "²" once escaped the
    poll and ended the group's whole cycle)."""
    text = "\r\n".join(f"{key}:{value}" for key, value in [("role", role), *lines])
    for parse in (parse_replication, parse_client_list, parse_output_buffer_limit):
        with contextlib.suppress(ProtocolFailure):
            parse(text)


def test_replica_info_with_a_superscript_port() -> None:
    info = parse_replication("role:slave\r\nmaster_host:10.0.0.1\r\nmaster_port:²\r\n")
    assert info.role == "replica" and info.master_port is None


# ----------------------------------------------------------------------------- NodeClient


def node_call(server: HostileServer, reply: bytes, timeout: float = 0.5) -> Any:
    server.script = [Recv(), Send(reply)]  # and close
    try:
        with NodeClient(parse_redis_url(server.url), None, timeout) as client:
            return client.call("ROLE")
    except Exception as exc:
        return exc


@settings(FUZZ, max_examples=60)
@given(mutated(reply_values().map(lambda r: r[0])))
def test_node_client_mutated_replies(server: HostileServer, data: bytes) -> None:
    result = timed(lambda: node_call(server, data))
    assert not isinstance(result, Exception) or isinstance(result, RedisError), repr(result)


def test_node_client_trickle_is_bounded_by_its_timeout(server: HostileServer) -> None:
    """A reply trickled a byte at a time never completes: the call gives up after about
    its timeout, not after the first silence longer than it."""
    server.script = [Recv(), Send(b"$1000\r\n")] + [Send(b"x"), Stall(0.05)] * 400
    started = time.monotonic()
    with (
        pytest.raises(TimeoutFailure) as info,
        NodeClient(parse_redis_url(server.url), None, 0.5) as client,
    ):
        client.call("ROLE")
    assert time.monotonic() - started < HANG_GUARD
    assert server.label in str(info.value)


def test_deeply_nested_role_is_no_master(server: HostileServer) -> None:
    """ROLE answered by arrays nested 1,000 deep (what hiredis still takes): no
    RecursionError from turning it into text."""
    server.script = [Recv(), Send(b"*1\r\n" * 1000 + b":1\r\n"), Stall(5)]
    with pytest.raises(NotMasterError, match=r"is a \?, not a master"):
        require_master(parse_redis_url(server.url), None, 0.5)
