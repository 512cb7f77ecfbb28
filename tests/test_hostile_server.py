"""The poller and the syncer's source link against a hostile server (tests/support/hostile.py):
garbage, half a reply then silence, silence from the start, a connection closed mid-reply, a
good answer then garbage, and hostile sizes (a 10 GB value followed by a flood, 2^31
elements, nesting 5,000 deep, a map keyed by an array).

Each must end in a typed error whose reason says what happened, attributed to the endpoint
(its label in the message, or the node label of the sample), with no traceback logged; the
component reconnects (the server counts a second connection); and once the server proxies
to a real redis-server the component recovers: the poller sees the node up as a master, the
sync task copies the source and catches up with it. While a server floods, memory stays
bounded.
"""

from __future__ import annotations

import asyncio
import logging
import time
import tracemalloc
from collections.abc import Iterator
from pathlib import Path

import pytest

from replwatch.config import config_from_data, parse_redis_url
from replwatch.errors import ProtocolFailure, RedisError, TimeoutFailure
from replwatch.state import GroupSnapshot
from replwatch.sync.checkpoint import checkpoint_key
from replwatch.sync.rdb import parse_rdb
from replwatch.sync.reader import FullResync, SourceLink

from .support.daemons import RunningDaemon, value
from .support.datasets import connect
from .support.hostile import Flood, HostileServer, Proxy, Recv, Script, Send, Stall, Trickle
from .support.monitor import make_monitor, node_view, watching
from .support.servers import RedisProcess, ServerSet, free_port, require_build, wait_for
from .support.syncing import TASK, RunnerThread, start, wait_caught_up

MEMORY_BOUND = 64 << 20
FLOOD = Flood(b"x" * 65536, 1 << 30)  # a gigabyte, unless the client goes away first

# ----------------------------------------------------------------------------- the poller

# the poller's connection sends CLIENT SETNAME, then the master's first poll: INFO
# replication, CLIENT LIST TYPE replica, CONFIG GET client-output-buffer-limit (one pipeline)
SETNAME_THEN_POLL = [Recv(), Send(b"+OK\r\n"), Recv(3)]

# case → (script, the reason the node's sample carries); the connection's errors name the
# endpoint in their message (a timeout's says "no reply within 0.4s", an INFO that is not
# one says what is wrong with it: the sample's node label names the endpoint)
POLLER_CASES: dict[str, tuple[Script, str]] = {
    "garbage": ([Send(b"\x00\x01 garbage\r\n"), Stall()], "protocol"),
    "stall-after-accept": ([Stall()], "timeout"),
    "half-reply-then-stall": ([Recv(), Send(b"+O"), Stall()], "timeout"),
    "close-mid-reply": ([*SETNAME_THEN_POLL, Send(b"$400\r\n# Replication\r\nrole:mas")], "reset"),
    "answer-then-garbage": ([*SETNAME_THEN_POLL, Send(b"*2\r\n:1\r\n@@\r\n"), Stall()], "protocol"),
    "10gb-value-then-flood": ([*SETNAME_THEN_POLL, Send(b"$10000000000\r\n"), FLOOD], "protocol"),
    "2^31-elements": ([*SETNAME_THEN_POLL, Send(b"*2147483647\r\n"), Stall()], "protocol"),
    "nested-5000-deep": ([*SETNAME_THEN_POLL, Send(b"*1\r\n" * 5000), Stall()], "protocol"),
    "map-keyed-by-array": (
        [*SETNAME_THEN_POLL, Send(b"%1\r\n*1\r\n:1\r\n:2\r\n"), Stall()],
        "protocol",
    ),
    "info-not-info": (
        [*SETNAME_THEN_POLL, Send(b"$11\r\nrole:banana\r\n*0\r\n*0\r\n"), Stall()],
        "protocol",
    ),
}


@pytest.fixture(scope="module")
def real(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisProcess]:
    """The real redis-server a hostile server turns into a proxy to. One for the module: the
    tests only poll it through the proxy (INFO, CLIENT LIST, CONFIG GET; no heartbeat), the
    daemon's at most writes its probe key; none stops, pauses or reconfigures it."""
    with ServerSet(require_build("redis-7.0"), tmp_path_factory.mktemp("real")) as servers:
        yield servers.start("real")


def no_tracebacks(caplog: pytest.LogCaptureFixture) -> None:
    """Nothing was logged with a traceback or at ERROR (asyncio logs an exception escaping
    a protocol callback as 'Fatal error: protocol.data_received() call failed')."""
    bad = [r for r in caplog.records if r.exc_info or r.levelno >= logging.ERROR]
    assert not bad, [r.getMessage() for r in bad]


async def poll_until_recovered(hostile: HostileServer, real: RedisProcess, reason: str) -> None:
    monitor = make_monitor(hostile.url, heartbeat=False, timeout="400ms")
    label = hostile.label

    def failed(snap: GroupSnapshot) -> bool:
        return node_view(snap, label).error_reason == reason

    async with watching(monitor, period=0.05) as loop:
        snap = await loop.until(failed, 10, f"the node failing with reason {reason}")
        node = node_view(snap, label)
        assert not node.up and node.error_message
        if reason != "timeout" and "banana" not in node.error_message:
            assert label in node.error_message, node.error_message
        assert "Traceback" not in node.error_message
        # the next polls connect again, and fail the same way
        await loop.until(lambda s: hostile.connections >= 2 and failed(s), 10, "a reconnect")
        hostile.script = [Proxy(real.host, real.port)]
        snap = await loop.until(lambda s: node_view(s, label).up, 10, "the node up via the proxy")
        assert node_view(snap, label).role == "master"
        assert snap.master_up


@pytest.mark.parametrize("case", list(POLLER_CASES))
def test_poller_against_a_hostile_server(
    case: str, real: RedisProcess, caplog: pytest.LogCaptureFixture
) -> None:
    script, reason = POLLER_CASES[case]
    caplog.set_level(logging.WARNING)
    with HostileServer(script) as hostile:
        asyncio.run(poll_until_recovered(hostile, real, reason))
    no_tracebacks(caplog)


def test_poller_memory_while_a_server_floods(real: RedisProcess) -> None:
    """A 10 GB value followed by a flood: refused at its header; the poller's process does
    not buffer the flood (Python allocations, and bytes the server got to send)."""
    with HostileServer([*SETNAME_THEN_POLL, Send(b"$10000000000\r\n"), FLOOD]) as hostile:

        async def poll_twice() -> list[GroupSnapshot]:
            monitor = make_monitor(hostile.url, heartbeat=False, timeout="1s")
            async with watching(monitor, period=0.05) as loop:
                return [await loop.cycle(), await loop.cycle()]

        tracemalloc.start()
        try:
            snaps = asyncio.run(poll_twice())
            _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
        assert [node_view(s, hostile.label).error_reason for s in snaps] == ["protocol"] * 2
        assert peak < MEMORY_BOUND, peak
    # the poller closed each connection at once: the server's floods (a gigabyte each) got
    # no further than the socket buffers
    assert hostile.connections == 2
    assert hostile.bytes_sent < 32 << 20, hostile.bytes_sent


def test_daemon_against_a_hostile_master(real: RedisProcess, tmp_path: Path) -> None:
    """`replwatch run` whose group's master sends a 10 GB value then floods: the daemon's
    loop goes on (an error metric, no traceback in its log), polls again, and the node comes
    up once the server proxies to a real redis-server."""
    port = free_port()
    with HostileServer([*SETNAME_THEN_POLL, Send(b"$10000000000\r\n"), FLOOD]) as hostile:
        cfg = tmp_path / "config.yaml"
        cfg.write_text(
            f'exporter: {{listen: "127.0.0.1:{port}"}}\n'
            "poll: {interval: 200ms, timeout: 150ms}\n"
            "heartbeat: {enabled: false}\n"
            f'groups:\n  - {{name: g, master: "{hostile.label}"}}\n'
        )
        with RunningDaemon(cfg, port) as daemon:

            def metric(name: str, **labels: str) -> float | None:
                status, text = daemon.fetch("/metrics")
                return value(text, name, node=hostile.label, **labels) if status == 200 else None

            wait_for(
                lambda: metric("replwatch_node_last_error_info", reason="protocol") == 1,
                20,
                "the node's protocol error in /metrics",
            )
            hostile.wait_connections(3)
            hostile.script = [Proxy(real.host, real.port)]
            wait_for(lambda: metric("replwatch_node_up") == 1, 20, "the node up via the proxy")
            assert metric("replwatch_node_last_error_info", reason="protocol") is None
            assert daemon.proc.poll() is None
        log = daemon.log_text()
    assert "Traceback" not in log, log[-3000:]


# ----------------------------------------------------------------------------- the source link

REPLID = b"f" * 40
# a tiny RDB: no keys, EOF, a zero checksum (not checked)
TINY_RDB = b"REDIS0010\xff" + b"\x00" * 8
# what a sync session's handshake gets from a master: PING, INFO server / replication /
# memory (refused, as an ACL may: the checks before PSYNC take them as unknown), REPLCONF x2,
# then PSYNC is read
HANDSHAKE = [
    Recv(),
    Send(b"+PONG\r\n"),
    Recv(),  # CLIENT SETNAME replwatch-sync:<task>
    Send(b"-NOPERM no names either\r\n"),  # ignored
    *[Recv(), Send(b"-NOPERM no INFO for you\r\n")] * 3,
    Recv(),
    Send(b"+OK\r\n"),
    Recv(),
    Send(b"+OK\r\n"),
    Recv(),
]
FULLRESYNC = Send(b"+FULLRESYNC %s 0\r\n$%d\r\n%s" % (REPLID, len(TINY_RDB), TINY_RDB))
SET_10GB = b"*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$10000000000\r\n"

SOURCE_CASES: dict[str, tuple[Script, type[RedisError], str]] = {
    "garbage": ([Send(b"\x00\x01 garbage\r\n" * 4), Stall()], ProtocolFailure, "protocol"),
    "stall-after-accept": ([Stall()], TimeoutFailure, "timeout"),
    "half-reply-then-stall": ([Recv(), Send(b"+PO"), Stall()], TimeoutFailure, "timeout"),
    "close-mid-reply": ([Recv(), Send(b"+PONG\r\n"), Recv(), Send(b"+O")], RedisError, "reset"),
    "answer-ping-then-garbage": (
        [Recv(), Send(b"+PONG\r\n"), Recv(), Send(b"\xff" * 100_000), Stall()],
        ProtocolFailure,
        "protocol",
    ),
    "bad-snapshot-length": (
        [*HANDSHAKE, Send(b"+FULLRESYNC %s 0\r\n$-5\r\n" % REPLID), Stall()],
        ProtocolFailure,
        "protocol",
    ),
    "stream-2^31-elements": (
        [*HANDSHAKE, FULLRESYNC, Send(b"*2147483647\r\n"), Stall()],
        ProtocolFailure,
        "protocol",
    ),
    "stream-10gb-value-then-flood": (
        [*HANDSHAKE, FULLRESYNC, Send(SET_10GB), FLOOD],
        ProtocolFailure,
        "protocol",
    ),
    "stream-nested-5000-deep": (
        [*HANDSHAKE, FULLRESYNC, Send(b"*1\r\n" * 5000), Stall()],
        ProtocolFailure,
        "protocol",
    ),
    "stream-not-commands": (
        [*HANDSHAKE, FULLRESYNC, Send(b"+OK\r\n:1\r\n"), Stall()],
        ProtocolFailure,
        "protocol",
    ),
}


def replicate_until_error(hostile: HostileServer) -> Exception:
    """What a sync session does with its source (handshake, PSYNC ? -1, snapshot, stream),
    until it fails; the error (ReplwatchError or not: the test then fails)."""
    # named as a task's link is (HANDSHAKE answers its CLIENT SETNAME with a refusal)
    link = SourceLink(parse_redis_url(hostile.url), None, 0.5, client_name="replwatch-sync:t")
    try:
        link.greet()
        link.read_facts()
        link.announce()
        reply = link.psync(None, None)
        assert isinstance(reply, FullResync), reply
        payload = link.payload()
        for _ in parse_rdb(payload, raw_limit=0):
            pass
        payload.finish()
        while True:
            link.receive()
            link.feed_buffered()
            for _ in link.commands():
                pass
    except Exception as exc:
        return exc
    finally:
        link.close()


@pytest.mark.parametrize("case", list(SOURCE_CASES))
def test_source_link_against_a_hostile_server(case: str) -> None:
    script, error_type, reason = SOURCE_CASES[case]
    with HostileServer(script) as hostile:
        started = time.monotonic()
        tracemalloc.start()
        try:
            error = replicate_until_error(hostile)
            _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
        assert time.monotonic() - started < 3
    assert isinstance(error, error_type), repr(error)
    assert isinstance(error, RedisError) and error.reason == reason, repr(error)
    assert hostile.label in str(error), str(error)
    assert peak < MEMORY_BOUND, peak


# ----------------------------------------------------------------------------- a sync task

TASK_CASES: dict[str, Script] = {
    **{
        case: SOURCE_CASES[case][0]
        # ("garbage" answers PING with bytes that are not RESP: not a Redis server at all,
        # which stops the task instead: tests/test_sync_preflight.py)
        for case in (
            "stall-after-accept",
            "close-mid-reply",
            "stream-2^31-elements",
            "stream-10gb-value-then-flood",
        )
    },
    # (once an AssertionError that ended the task's thread)
    "continue-without-checkpoint": [*HANDSHAKE, Send(b"+CONTINUE\r\n"), Stall()],
    # never silent (a byte every 50 ms), never a whole command: a stall all the same
    "stream-trickled-forever": [
        *HANDSHAKE,
        FULLRESYNC,
        Trickle(b"*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$100000\r\n" + b"x" * 100_000, 0.05),
    ],
}


@pytest.fixture
def pair(debian_servers: ServerSet) -> Iterator[tuple[RedisProcess, RedisProcess]]:
    source = debian_servers.start("source")
    target = debian_servers.start("target")
    with connect(source) as client:
        client.mset({f"key:{i}": f"value-{i}" for i in range(200)})
        client.rpush("list", *range(50))
    yield source, target


def last_error(target: RedisProcess) -> str | None:
    with connect(target) as client:
        value = client.hget(checkpoint_key(TASK), "last_error")
    return None if value is None else value.decode()


@pytest.mark.parametrize("case", list(TASK_CASES))
def test_sync_task_against_a_hostile_source(
    case: str,
    pair: tuple[RedisProcess, RedisProcess],
    runners: list[RunnerThread],
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A sync task whose source is hostile: each session ends in a recorded error naming the
    source (the task's thread lives on), it reconnects, and once the source is a proxy to a
    real redis-server it copies it and follows its stream."""
    source, target = pair
    script = TASK_CASES[case]
    caplog.set_level(logging.WARNING, logger="replwatch")
    with HostileServer(script) as hostile:
        cfg = config_from_data(
            {
                "sync": {
                    "tasks": [
                        {
                            "name": TASK,
                            "source": hostile.url,
                            "target": target.url,
                            "reconnect_min": "100ms",
                            "reconnect_max": "200ms",
                            "source_timeout": "1s",
                        }
                    ]
                }
            }
        )
        runner = start(cfg.sync.tasks[0], runners, io_timeout=0.5)
        error = wait_for(lambda: last_error(target), 10, "the task to record an error")
        assert hostile.label in error, error
        if case == "stream-trickled-forever":
            assert "no whole command from the source" in error, error
        assert "Traceback" not in error
        hostile.wait_connections(2)
        assert runner.thread.is_alive() and runner.exit_code is None
        hostile.script = [Proxy(source.host, source.port)]
        wait_caught_up_via(hostile, source, target)
        with connect(source) as src, connect(target) as dst:
            src.set("after", "recovery")
            wait_for(lambda: dst.get("after") == b"recovery", 10, "the stream applied")
            assert dst.dbsize() == src.dbsize() + 1  # (and the checkpoint)
        assert runner.stop() == 0
    ended = [r.getMessage() for r in caplog.records if "session ended" in r.getMessage()]
    assert ended and all(hostile.label in m for m in ended), ended
    no_tracebacks(caplog)


def wait_caught_up_via(hostile: HostileServer, source: RedisProcess, target: RedisProcess) -> None:
    """wait_caught_up, with the hostile server's connections in the failure message."""
    try:
        wait_caught_up(source, target, timeout=20)
    except AssertionError as exc:
        raise AssertionError(f"{exc} ({hostile})") from None
