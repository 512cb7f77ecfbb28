#!/usr/bin/env python3
"""Coverage-guided fuzzing of the parsers with atheris (libFuzzer), by hand.

    pip install atheris                        # wheels for CPython 3.11 on x86-64 Linux
    python bench/fuzz_atheris.py corpus DIR    # seeds: real RDB files, DUMP values, RESP
    python bench/fuzz_atheris.py rdb DIR/rdb -max_total_time=600 -timeout=5
    python bench/fuzz_atheris.py resp DIR/resp -max_total_time=600 -timeout=5 -max_len=65536

Not a test and not run by CI (tests/test_fuzz_rdb.py and tests/test_fuzz_resp.py are the CI
side, with hypothesis); this is the long hunt. Arguments after the target are libFuzzer's
(-max_total_time, -jobs/-workers, -timeout as the hang guard, -rss_limit_mb). A crash is
any exception the target lets out: libFuzzer writes the input to crash-<sha1> and the
Python traceback to the terminal; replay one with `python bench/fuzz_atheris.py rdb FILE`.

Targets:
- rdb: parse_rdb over the input with the checksum off (so mutations reach the decoders),
  an option set chosen by the input's first byte (plain, streamed collections, undecoded
  compact values, a small string cap), and decode_serialized_value over the input. Anything
  but an RdbError escaping is a crash.
- resp: the input fed to the poller's connection protocol (_RespProtocol, in two reads
  split where the first byte says), and sent over a loopback connection to a SourceLink
  reading it as a replication stream (STREAM_LIMITS guard, hiredis, commands()). Anything
  but a ReplwatchError escaping is a crash.

`corpus DIR` starts Debian's /usr/bin/redis-server (its own directory, a free port, stopped
by pid at the end), fills it with every type in compact and big encodings, SAVEs, and
writes DIR/rdb/* (the RDB file and each key's DUMP value) and DIR/resp/* (encoded commands
and replies).
"""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import socket
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import atheris

with atheris.instrument_imports(include=["replwatch"]):
    from replwatch.config import parse_redis_url
    from replwatch.errors import RedisError, ReplwatchError
    from replwatch.observe.connection import InFlight, _RespProtocol, encode_command
    from replwatch.sync.rdb import (
        BytesSource,
        ChunkedValue,
        KeyEntry,
        RdbError,
        decode_serialized_value,
        parse_rdb,
    )
    from replwatch.sync.reader import SourceLink

from _procs import Processes, reserve_ports  # bench/ is on sys.path when run as a script

# ----------------------------------------------------------------------------- rdb

RDB_OPTIONS: list[dict[str, Any]] = [
    {},
    {"stream_over": 64},
    {"skip_decode": lambda t: True, "raw_limit": 1 << 20},
    {"skip_decode": lambda t: True, "max_string_bytes": 700, "raw_limit": 300},
]


def rdb_one(data: bytes) -> None:
    if not data:
        return
    options = {"raw_limit": 1 << 16, **RDB_OPTIONS[data[0] % len(RDB_OPTIONS)]}
    try:
        for event in parse_rdb(BytesSource(data[1:]), verify_checksum=False, **options):
            if isinstance(event, KeyEntry) and isinstance(event.value, ChunkedValue):
                for _ in event.value:
                    pass
    except RdbError:
        pass
    with contextlib.suppress(RdbError):
        decode_serialized_value(data[1:], rdb_version=data[0] % 13 or 80)


# ----------------------------------------------------------------------------- resp


class StreamPeer:
    """A loopback listener: each input is sent over a fresh connection to a SourceLink."""

    def __init__(self) -> None:
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.endpoint = parse_redis_url(f"redis://127.0.0.1:{self.listener.getsockname()[1]}")

    def read(self, data: bytes) -> None:
        link = SourceLink(self.endpoint, None, 1.0)
        conn, _ = self.listener.accept()
        try:
            conn.sendall(data)  # (-max_len keeps it within the socket buffers)
        finally:
            conn.close()
        try:
            while True:
                link.receive()
                link.feed_buffered()
                for _ in link.commands():
                    pass
        except ReplwatchError:
            pass
        finally:
            link.close()


LOOP = asyncio.new_event_loop()
PEER: StreamPeer | None = None


def resp_one(data: bytes) -> None:
    global PEER
    if not data:
        return
    cut = 1 + data[0] * (len(data) - 1) // 255
    protocol = _RespProtocol("fuzz:1")
    future: asyncio.Future[list[Any]] = LOOP.create_future()
    protocol.waiters.append(InFlight(2, future, 0.0))
    protocol.data_received(data[1:cut])
    protocol.data_received(data[cut:])
    protocol.connection_lost(None)
    error = future.exception()
    if error is not None and not isinstance(error, RedisError):
        raise error
    if PEER is None:
        PEER = StreamPeer()
    PEER.read(data[1:])


# ----------------------------------------------------------------------------- corpus


def make_corpus(out: Path) -> None:
    import redis

    server = shutil.which("redis-server") or "/usr/bin/redis-server"
    (out / "rdb").mkdir(parents=True, exist_ok=True)
    (out / "resp").mkdir(parents=True, exist_ok=True)
    procs = Processes()
    work = Path(tempfile.mkdtemp(prefix="replwatch-fuzz-"))
    try:
        (port,) = reserve_ports(1)
        args = [server, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--dir"]
        procs.start([*args, str(work), "--appendonly", "no"], work / "server.log")
        client = redis.Redis(port=port, socket_timeout=10)
        deadline = time.monotonic() + 10
        while True:
            try:
                client.ping()
                break
            except redis.ConnectionError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)
        pipe = client.pipeline(transaction=False)
        pipe.set("s", "v")
        pipe.set("lzf", "abc" * 50)
        pipe.set("ttl", "t", px=10**9)
        pipe.rpush("l", "a", 7, -300, "b" * 30)
        pipe.rpush("l:big", *[f"item-{i}" for i in range(300)])
        pipe.sadd("si", 1, 2, -50000, 1 << 40)
        pipe.sadd("ss", *[f"m{i}" for i in range(200)])
        pipe.zadd("z", {"a": 1, "b": 2.5})
        pipe.zadd("z:big", {f"m{i}": i / 3 for i in range(200)})
        pipe.hset("h", mapping={"f": "v", "g": 7})
        pipe.hset("h:big", mapping={f"f{i}": f"v{i}" for i in range(200)})
        for i in range(1, 40):
            pipe.xadd("x", {"n": i}, id=f"1-{i}")
        pipe.execute()
        client.xgroup_create("x", "g", id="0")
        client.xreadgroup("g", "c", {"x": ">"}, count=3)
        client.save()
        (out / "rdb" / "real.rdb").write_bytes(b"\x00" + (work / "dump.rdb").read_bytes())
        for i, key in enumerate(sorted(client.keys("*"))):
            dump = client.dump(key)
            assert isinstance(dump, bytes)
            # an option byte, then the type byte + value (the 10-byte footer dropped)
            (out / "rdb" / f"value-{i}.bin").write_bytes(b"\x0a" + dump[:-10])
        client.close()
    finally:
        procs.stop_all(grace=5)
        shutil.rmtree(work, ignore_errors=True)
    samples = {
        "stream": b"".join(
            encode_command(c)
            for c in (("SELECT", "0"), ("SET", "k", "v"), ("MULTI",), ("INCR", "n"), ("EXEC",))
        ),
        "replies": b"+OK\r\n$5\r\nhello\r\n*2\r\n:1\r\n$-1\r\n-ERR no\r\n",
        "resp3": b"%1\r\n+a\r\n:1\r\n~2\r\n:1\r\n:2\r\n_\r\n,1.5\r\n#t\r\n",
    }
    for name, data in samples.items():
        (out / "resp" / name).write_bytes(b"\x80" + data)
    print(f"corpus written to {out}/rdb and {out}/resp")


# ----------------------------------------------------------------------------- main

TARGETS: dict[str, Callable[[bytes], None]] = {"rdb": rdb_one, "resp": resp_one}


def main() -> None:
    if len(sys.argv) >= 3 and sys.argv[1] == "corpus":
        make_corpus(Path(sys.argv[2]))
        return
    if len(sys.argv) < 2 or sys.argv[1] not in TARGETS:
        sys.exit(__doc__)
    target = TARGETS[sys.argv[1]]
    atheris.Setup([sys.argv[0], *sys.argv[2:]], target)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
