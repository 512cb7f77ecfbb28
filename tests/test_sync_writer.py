"""The target link's reply accounting against a real server: pipelined batches whose +OK /
+QUEUED runs are checked by one comparison, EXEC arrays parsed, errors at queue time and at
run time, in any mix, and the stream still aligned afterwards (a PING answers PONG)."""

from __future__ import annotations

from typing import Any

import hiredis
import pytest

from replwatch.config import parse_redis_url
from replwatch.observe.connection import encode_command
from replwatch.sync.writer import OK_REPLY, QUEUED_REPLY, Batch, TargetLink

from .support.servers import ServerSet


def stream_batch(commands: list[tuple[Any, ...]]) -> tuple[bytes, int, bytes]:
    payload = b"".join(encode_command(c) for c in [("MULTI",), *commands, ("EXEC",)])
    return payload, len(commands) + 2, OK_REPLY + QUEUED_REPLY * len(commands)


@pytest.mark.parametrize("in_flight", [1, 3, 8])
def test_pipelined_batches_keep_replies_aligned(debian_servers: ServerSet, in_flight: int) -> None:
    server = debian_servers.start("target")
    link = TargetLink(parse_redis_url(server.url), None, 5, in_flight)
    seen: list[tuple[str, list[Any]]] = []

    def record(name: str) -> Any:
        return lambda replies: seen.append((name, replies))

    try:
        link.call("SET", "text", "not a number")
        for round_ in range(20):
            ok = [("SET", f"k{round_}:{i}", i) for i in range(50)]
            data = b"".join(encode_command(c) for c in ok)
            link.send(data, Batch(50, record(f"ok{round_}"), prefix=OK_REPLY * 50))
            payload, expect, prefix = stream_batch([("INCR", f"n{round_}"), ("INCR", "text")])
            link.send(payload, Batch(expect, record(f"tx{round_}"), prefix=prefix, tail=1))
            payload, expect, prefix = stream_batch([("SET", "x", 1), ("NOSUCHCOMMAND",)])
            link.send(payload, Batch(expect, record(f"abort{round_}"), prefix=prefix, tail=1))
            if round_ % 3 == 0:
                link.poll_replies()
        link.drain()
        assert link.call("PING") == b"PONG"  # nothing left over, nothing missing
        by_name = dict(seen)
        assert [name for name, _ in seen][:3] == ["ok0", "tx0", "abort0"]
        assert len(seen) == 60
        for round_ in range(20):
            assert by_name[f"ok{round_}"] in ([], [b"OK"] * 50)  # fast path: nothing to look at
            tx = by_name[f"tx{round_}"]
            exec_reply = tx[-1]
            assert isinstance(exec_reply, list) and exec_reply[0] == 1
            assert isinstance(exec_reply[1], hiredis.ReplyError)  # INCR of a text value
            abort = by_name[f"abort{round_}"]
            assert len(abort) == 4  # parsed reply by reply: +OK, +QUEUED, -ERR, -EXECABORT
            assert isinstance(abort[2], hiredis.ReplyError) and "unknown command" in str(abort[2])
            assert isinstance(abort[3], hiredis.ReplyError) and "EXECABORT" in str(abort[3])
        assert link.call("GET", "n19") == b"1" and link.call("GET", "k19:49") == b"49"
    finally:
        link.close()
