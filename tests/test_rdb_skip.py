"""parse_rdb's skip_decode against a real snapshot: compact values come through as bytes
only, and those bytes decode to exactly what full decoding gives."""

from __future__ import annotations

from pathlib import Path

from replwatch.sync.rdb import (
    ChunkedValue,
    FileSource,
    KeyEntry,
    decode_serialized_value,
    parse_rdb,
)

from .support.datasets import build_dataset, connect
from .support.servers import ServerSet


def keys(path: Path, **options: object) -> dict[tuple[int, bytes], KeyEntry]:
    with path.open("rb") as f:
        return {
            (e.db, e.key): e
            for e in parse_rdb(FileSource(f), raw_limit=1 << 20, **options)  # type: ignore[arg-type]
            if isinstance(e, KeyEntry)
        }


def test_skip_decode_keeps_bytes_that_decode_the_same(debian_servers: ServerSet) -> None:
    server = debian_servers.start("source")
    build_dataset(server)
    with connect(server) as client:
        client.config_set("list-max-listpack-size", 4)  # several quicklist nodes
        client.rpush("list:nodes", *[f"n{i}" for i in range(20)])
        client.save()
    rdb = server.dir / "dump.rdb"
    assert rdb.is_file()
    decoded = keys(rdb)
    skipped = keys(rdb, skip_decode=lambda t: True)
    assert decoded.keys() == skipped.keys()
    undecoded = 0
    for name, full in decoded.items():
        fast = skipped[name]
        if fast.value is None:
            undecoded += 1
            assert fast.raw is not None and fast.raw == full.raw, name
            again = decode_serialized_value(fast.raw, rdb_version=10)
            assert again.value == full.value, name
        else:
            assert fast.value == full.value, name
    # the compact values of the dataset (small list/set/zset/hash, quicklists) were skipped;
    # plain strings and streams never are
    assert undecoded >= 8, undecoded
    assert skipped[(0, b"list:nodes")].value is None
    assert skipped[(0, b"str:small")].value == b"hello"
    # a compact value over raw_limit is decoded after all
    with rdb.open("rb") as f:
        tiny = {
            (e.db, e.key): e
            for e in parse_rdb(FileSource(f), raw_limit=16, skip_decode=lambda t: True)
            if isinstance(e, KeyEntry)
        }
    assert tiny[(0, b"list:nodes")].raw is None
    assert tiny[(0, b"list:nodes")].value == [f"n{i}".encode() for i in range(20)]


def test_stream_over_reads_big_collections_in_chunks(debian_servers: ServerSet) -> None:
    server = debian_servers.start("source")
    with connect(server) as client:
        client.config_set("list-max-listpack-size", 16)
        client.hset("big:hash", mapping={f"f{i}": f"v{i}" for i in range(3000)})
        client.sadd("big:set", *[f"m{i}" for i in range(3000)])
        client.zadd("big:zset", {f"z{i}": i / 7 for i in range(3000)})
        client.rpush("big:list", *[f"e{i}" for i in range(3000)])
        client.set("after", "still aligned")
        client.save()
    rdb = server.dir / "dump.rdb"
    decoded = keys(rdb)
    for consume in (True, False):
        with rdb.open("rb") as f:
            seen: dict[bytes, object] = {}
            for e in parse_rdb(FileSource(f), raw_limit=1 << 20, stream_over=1000):
                if not isinstance(e, KeyEntry):
                    continue
                if isinstance(e.value, ChunkedValue):
                    assert e.raw is None
                    chunks = list(e.value) if consume else []
                    assert all(len(c) <= 512 for c in chunks)
                    seen[e.key] = [x for c in chunks for x in c]
                else:
                    seen[e.key] = e.value
        assert seen[b"after"] == b"still aligned"  # a half-read value is skipped whole
        for name in (b"big:hash", b"big:set", b"big:zset", b"big:list"):
            if consume:
                assert seen[name] == decoded[(0, name)].value, name
            else:
                assert seen[name] == [], name
