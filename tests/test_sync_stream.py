"""The stream applier's positions, command by command, against a real target: the recorded
offset never includes a source transaction that is not complete, whatever the read
boundaries (a wrong offset would apply commands twice after a restart)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import redis

from replwatch.config import TLSConfig, config_from_data, parse_redis_url
from replwatch.observe.connection import encode_command
from replwatch.sync.checkpoint import checkpoint_key
from replwatch.sync.stream_apply import StreamApplier
from replwatch.sync.stream_split import command_reader, compiled_split
from replwatch.sync.task import SyncTaskRunner
from replwatch.sync.writer import TargetLink

from .support.servers import RedisProcess, ServerSet


class StreamBytes:
    """What a SourceLink gives the applier: a command reader and the bytes fed to it."""

    def __init__(self) -> None:
        self.reader = command_reader()
        self.raw = bytearray()
        self.raw_pos = 0
        self.endpoint = parse_redis_url("redis://127.0.0.1:1")

    def feed(self, data: bytes) -> None:
        if self.raw_pos:
            del self.raw[: self.raw_pos]
            self.raw_pos = 0
        self.reader.feed(data)
        self.raw += data


def commands(*argvs: tuple[str, ...]) -> bytes:
    return b"".join(encode_command(a) for a in argvs)


@pytest.fixture
def target(debian_servers: ServerSet) -> Iterator[RedisProcess]:
    yield debian_servers.start("target")


def applier(target: RedisProcess, batch_size: int = 100) -> tuple[StreamApplier, StreamBytes]:
    cfg = config_from_data(
        {
            "sync": {
                "tasks": [
                    {
                        "name": "t",
                        "source": "redis://127.0.0.1:1",
                        "target": target.url,
                        "batch_size": batch_size,
                    }
                ]
            }
        }
    )
    runner = SyncTaskRunner(cfg.sync.tasks[0], TLSConfig())
    link = TargetLink(cfg.sync.tasks[0].target, None, 5, 8)
    stream = StreamBytes()
    return StreamApplier(runner.context(), link, stream, "r" * 40, 0), stream  # type: ignore[arg-type]


def recorded(target: RedisProcess) -> int:
    """The checkpoint's offset; 0 before the first batch wrote one."""
    return int(target.client().hget(checkpoint_key("t"), "offset") or 0)


def run(applier_: StreamApplier, stream: StreamBytes) -> None:
    while applier_.consume(stream):  # type: ignore[arg-type]
        pass
    applier_.end_round()
    applier_.flush()
    applier_.target.drain()


@pytest.fixture(params=["compiled", "pure"])
def split_path(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Both ways the applier splits the stream: in C (stream_split.compiled_split, when
    built) and the pure-Python path (REPLWATCH_PURE_PYTHON)."""
    if request.param == "pure":
        monkeypatch.setenv("REPLWATCH_PURE_PYTHON", "1")
    elif compiled_split() is None:
        pytest.skip("the C accelerator is not built here")
    return str(request.param)


@pytest.mark.parametrize("split", [1, 7, 40, 50, 70, 90, 10_000])
def test_offsets_never_cut_a_transaction(target: RedisProcess, split: int, split_path: str) -> None:
    a = commands(("SET", "a", "1"))
    tx_open = commands(("MULTI",), ("SET", "b", "1"), ("INCR", "n"))
    tx_close = commands(("EXEC",))
    tail = commands(("PING",), ("SELECT", "3"), ("SET", "c", "1"))
    data = a + tx_open + tx_close + tail
    app, stream = applier(target)
    done_at = []
    for i in range(0, len(data), split):
        stream.feed(data[i : i + split])
        run(app, stream)
        fed = min(len(data), i + split)
        done_at.append((fed, recorded(target)))
    complete = [len(a), len(a + tx_open + tx_close), len(a + tx_open + tx_close) + 14]
    boundaries = [0, *complete, len(data) - len(commands(("SET", "c", "1"))), len(data)]
    for fed, offset in done_at:
        # exactly the last command boundary fed that is not inside the transaction: less
        # would apply commands twice after a restart, more would skip some
        assert offset == max(b for b in boundaries if b <= fed), (split, fed, offset)
    assert recorded(target) == len(data)
    client = target.client()
    assert client.get("a") == b"1" and client.get("b") == b"1" and client.get("n") == b"1"
    with redis.Redis(host=target.host, port=target.port, db=3) as db3:
        assert db3.get("c") == b"1"
