"""DUMP/RESTORE payloads, CRC-64/Jones and RESTORE version rules (replwatch.sync.dump).

The version rules come from the sources (Redis verifyDumpPayload: version <= RDB_VERSION;
Valkey 9 rdbIsVersionAccepted: 1..11 and 80..RDB_VERSION, 12..79 "foreign"); the real-server
tests check them against the four local builds, and a cross-build matrix checks that a value
DUMPed on one build RESTOREs on another exactly when `RestoreTarget.payload_version_for` says so.
"""

from __future__ import annotations

import os
import struct
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis

from replwatch.sync import dump
from replwatch.sync.dump import (
    DumpPayloadError,
    RestoreTarget,
    build_dump_payload,
    crc64,
    min_rdb_version_for_type,
    restore_target_from_info,
    split_dump_payload,
)

from .support.servers import ServerSet, in_ci, server_builds

# ----------------------------------------------------------------------------- CRC


def test_crc64_check_value() -> None:
    assert crc64(b"123456789") == 0xE9C6D914C4B8D9CA
    assert crc64(b"") == 0


def test_crc64_chains_and_accepts_buffers() -> None:
    data = os.urandom(100_000)
    whole = crc64(data)
    assert crc64(data[40_000:], crc64(data[:40_000])) == whole
    assert crc64(memoryview(data)) == whole
    assert crc64(bytearray(data)) == whole
    assert crc64(data[:-1] + bytes([data[-1] ^ 1])) != whole


def test_crc64_fallback_agrees() -> None:
    data = os.urandom(5000)
    assert dump._crc64_python(data) == crc64(data)
    assert dump._crc64_python(b"123456789") == 0xE9C6D914C4B8D9CA


def test_crc64_runs_in_c() -> None:
    """The parser checks every RDB's CRC: the pure-Python loop is far too slow for that."""
    if dump.CRC64_IMPLEMENTATION != "crcmod-c" and not in_ci():
        pytest.skip("crcmod's C extension is not installed")
    assert dump.CRC64_IMPLEMENTATION == "crcmod-c"


# ----------------------------------------------------------------------------- payloads

# DUMP of `HSET h f v n 5` on Redis 7.0.15: a listpack hash, RDB 10
R70_HASH_DUMP = bytes.fromhex("1012120000000400816602817602816e020501ff0a008490939f57b4f3c2")


def test_split_known_payload() -> None:
    payload = split_dump_payload(R70_HASH_DUMP)
    assert payload.rdb_type == 16
    assert payload.rdb_version == 10
    assert payload.value == R70_HASH_DUMP[:-10]
    assert payload.crc == struct.unpack("<Q", R70_HASH_DUMP[-8:])[0]
    assert build_dump_payload(payload.value, 10) == R70_HASH_DUMP


def test_build_and_split_round_trip() -> None:
    value = b"\x00" + b"\x05hello"
    payload = build_dump_payload(value, 80)
    assert payload[-10:-8] == b"\x50\x00"
    assert split_dump_payload(payload) == dump.DumpPayload(value, 80, crc64(payload[:-8]))


@pytest.mark.parametrize(
    ("payload", "message"),
    [
        (b"\x00\x01a\x0a\x00", "too short"),
        (R70_HASH_DUMP[:-1] + b"\x00", "CRC mismatch"),
        (R70_HASH_DUMP[:5] + b"X" + R70_HASH_DUMP[6:], "CRC mismatch"),
        (R70_HASH_DUMP[:-10] + b"\x0b\x00" + R70_HASH_DUMP[-8:], "CRC mismatch"),
    ],
    ids=["short", "crc-byte", "body-byte", "version-byte"],
)
def test_split_rejects_bad_payloads(payload: bytes, message: str) -> None:
    with pytest.raises(DumpPayloadError, match=message):
        split_dump_payload(payload)


def test_split_without_verification() -> None:
    bad = R70_HASH_DUMP[:-1] + b"\x00"
    assert split_dump_payload(bad, verify=False).value == R70_HASH_DUMP[:-10]


def test_build_rejects_nonsense() -> None:
    with pytest.raises(DumpPayloadError):
        build_dump_payload(b"", 10)
    with pytest.raises(DumpPayloadError):
        build_dump_payload(b"\x00\x00", 70000)
    with pytest.raises(DumpPayloadError):
        build_dump_payload(b"\x00\x00", 0)


# ----------------------------------------------------------------------------- targets

INFO_CASES: list[tuple[dict[str, Any], str, int]] = [
    ({"redis_version": "6.2.14"}, "redis", 9),
    ({"redis_version": "5.0.7"}, "redis", 9),
    ({"redis_version": "4.0.14"}, "redis", 8),
    ({"redis_version": "7.0.15"}, "redis", 10),
    ({"redis_version": "7.2.4"}, "redis", 11),
    ({"redis_version": "7.4.1"}, "redis", 12),
    ({"redis_version": "8.0.2"}, "redis", 12),
    ({"redis_version": "7.2.4", "server_name": "valkey", "valkey_version": "7.2.5"}, "valkey", 11),
    ({"redis_version": "7.2.4", "server_name": "valkey", "valkey_version": "8.0.1"}, "valkey", 11),
    ({"redis_version": "7.2.4", "server_name": "valkey", "valkey_version": "8.1.8"}, "valkey", 11),
    ({"redis_version": "7.2.4", "server_name": "valkey", "valkey_version": "9.0.0"}, "valkey", 80),
    ({"redis_version": "7.2.4", "server_name": "valkey", "valkey_version": "9.1.2"}, "valkey", 80),
    ({"redis_version": "7.2.4", "server_name": "valkey", "valkey_version": "9.2.0"}, "valkey", 81),
    ({"redis_version": "7.2.4", "valkey_version": "9.0.3"}, "valkey", 80),
]


@pytest.mark.parametrize(("info", "product", "rdb_version"), INFO_CASES)
def test_restore_target_from_info(info: dict[str, Any], product: str, rdb_version: int) -> None:
    target = restore_target_from_info(info)
    assert (target.product, target.rdb_version) == (product, rdb_version)


def test_restore_target_needs_a_version() -> None:
    with pytest.raises(ValueError, match="neither"):
        restore_target_from_info({"server_name": "redis"})
    with pytest.raises(ValueError, match="unrecognised"):
        restore_target_from_info({"redis_version": "unstable"})


REDIS_70 = RestoreTarget("redis", (7, 0, 15), 10)
REDIS_74 = RestoreTarget("redis", (7, 4, 1), 12)
VALKEY_81 = RestoreTarget("valkey", (8, 1, 8), 11)
VALKEY_91 = RestoreTarget("valkey", (9, 1, 2), 80)


@pytest.mark.parametrize(
    ("target", "accepted", "refused"),
    [
        (REDIS_70, [1, 9, 10], [0, 11, 12, 80]),
        (REDIS_74, [9, 11, 12], [13, 80]),
        (VALKEY_81, [1, 9, 11], [12, 80]),
        (VALKEY_91, [1, 9, 10, 11, 80], [0, 12, 50, 79, 81]),
    ],
    ids=["redis-7.0", "redis-7.4", "valkey-8.1", "valkey-9.1"],
)
def test_accepts(target: RestoreTarget, accepted: list[int], refused: list[int]) -> None:
    assert [v for v in accepted if target.accepts(v)] == accepted
    assert [v for v in refused if target.accepts(v)] == []


def test_valkey_relaxed_accepts_foreign_versions() -> None:
    assert VALKEY_91.accepts(12, relaxed=True)
    assert VALKEY_91.accepts(200, relaxed=True)
    assert not VALKEY_91.accepts(0, relaxed=True)


def test_type_support() -> None:
    assert min_rdb_version_for_type(16, valkey=False) == 10
    assert min_rdb_version_for_type(22, valkey=True) == 80
    assert min_rdb_version_for_type(25, valkey=False) == 12
    assert min_rdb_version_for_type(25, valkey=True) is None
    assert min_rdb_version_for_type(8, valkey=False) is None
    # Redis 7.0 knows the 7.0 listpacks, not 7.2's set listpack or stream v3
    assert REDIS_70.payload_version_for(16, source_valkey=False) == 10
    assert REDIS_70.payload_version_for(20, source_valkey=True) is None
    assert REDIS_70.payload_version_for(21, source_valkey=False) is None
    # Valkey 9 takes everything up to 21 and its own 22, never Redis 7.4's 22-25
    assert VALKEY_91.payload_version_for(21, source_valkey=False) == 80
    assert VALKEY_91.payload_version_for(22, source_valkey=True) == 80
    assert VALKEY_91.payload_version_for(24, source_valkey=False) is None
    assert VALKEY_91.payload_version_for(22, source_valkey=False) is None
    # …and Redis 7.4 never takes Valkey's 22
    assert REDIS_74.payload_version_for(22, source_valkey=True) is None
    assert REDIS_74.payload_version_for(24, source_valkey=False) == 12
    assert VALKEY_81.payload_version_for(22, source_valkey=True) is None


# ----------------------------------------------------------------------------- real servers

STAMPS = [1, 9, 10, 11, 12, 13, 50, 79, 80, 81, 82]


def test_real_server_version_rules(redis_servers: ServerSet) -> None:
    """What each build's RESTORE takes matches RestoreTarget.accepts(), version by version."""
    server = redis_servers.start("restore")
    client = server.client()
    target = restore_target_from_info(client.info("server"))
    client.set("probe", "value")
    payload = split_dump_payload(client.dump("probe"))
    assert payload.rdb_version == target.rdb_version
    assert payload.rdb_type == 0
    outcomes: dict[int, bool] = {}
    for stamp in STAMPS:
        key = f"stamped:{stamp}"
        try:
            client.restore(key, 0, build_dump_payload(payload.value, stamp))
        except redis.ResponseError as exc:
            assert "payload version or checksum are wrong" in str(exc)
            outcomes[stamp] = False
        else:
            assert client.get(key) == b"value"
            outcomes[stamp] = True
    assert outcomes == {stamp: target.accepts(stamp) for stamp in STAMPS}
    # the server checks our CRC: one flipped bit and it refuses
    good = build_dump_payload(payload.value, target.rdb_version)
    with pytest.raises(redis.ResponseError, match="checksum"):
        client.restore("flipped", 0, good[:-1] + bytes([good[-1] ^ 1]))


def populate_portable(client: redis.Redis, valkey9: bool) -> None:
    client.set("str", "hello")
    client.set("num", "12345")
    client.set("lzf", "abc" * 50)
    client.rpush("list", "a", "b", 3)
    client.rpush("biglist", *[f"item{i}" for i in range(500)])
    client.sadd("intset", 1, 2, 3)
    client.sadd("strset", "x", "y")
    client.zadd("zset", {"a": 1, "b": 2.5})
    client.zadd("bigzset", {f"m{i}": i for i in range(200)})
    client.hset("hash", mapping={"f": "v", "n": 5})
    client.hset("bighash", mapping={f"f{i}": "v" * 70 for i in range(20)})
    client.xadd("stream", {"a": 1}, id="1-1")
    client.xadd("stream", {"b": 2}, id="2-1")
    client.xgroup_create("stream", "g", id="0")
    client.xreadgroup("g", "c", {"stream": ">"}, count=1)
    if valkey9:
        client.hset("hfe", mapping={"a": "1", "b": "2"})
        client.execute_command("HPEXPIREAT", "hfe", 4_000_000_000_000, "FIELDS", 1, "a")


def snapshot(client: redis.Redis, key: bytes) -> Any:
    kind = client.type(key).decode()
    if kind == "string":
        return kind, client.get(key)
    if kind == "list":
        return kind, client.lrange(key, 0, -1)
    if kind == "set":
        return kind, sorted(client.smembers(key))
    if kind == "zset":
        return kind, client.zrange(key, 0, -1, withscores=True)
    if kind == "hash":
        fields = sorted(client.hgetall(key).items())
        if key.endswith(b"hfe"):  # Valkey 9 field expiry survives the trip
            names = [f for f, _ in fields]
            expiry = client.execute_command("HPEXPIRETIME", key, "FIELDS", len(names), *names)
            return kind, fields, expiry
        return kind, fields
    if kind == "stream":
        groups = [
            (g["name"], g["last-delivered-id"], g["pending"]) for g in client.xinfo_groups(key)
        ]
        return kind, client.xrange(key), groups
    raise AssertionError(kind)


@pytest.fixture
def all_builds(tmp_path: Path) -> Iterator[dict[str, redis.Redis]]:
    builds = server_builds()
    if len(builds) < 2:
        message = f"needs at least two server builds, have {[b.name for b in builds]}"
        if in_ci():
            pytest.fail(message, pytrace=False)
        pytest.skip(message)
    sets = [ServerSet(build, tmp_path / build.name) for build in builds]
    try:
        clients = {}
        for build, servers in zip(builds, sets, strict=True):
            clients[build.name] = servers.start("node").client(timeout=10)
        yield clients
    finally:
        for servers in sets:
            servers.close()


def test_cross_build_restore_matrix(all_builds: dict[str, redis.Redis]) -> None:
    """A value DUMPed on one build RESTOREs on another exactly when payload_version_for()
    gives a version; when it says None the target really cannot load that type."""
    targets = {name: restore_target_from_info(c.info("server")) for name, c in all_builds.items()}
    dumped: dict[str, list[tuple[bytes, Any, dump.DumpPayload]]] = {}
    for name, client in all_builds.items():
        target = targets[name]
        populate_portable(client, target.valkey and target.rdb_version >= 80)
        dumped[name] = [
            (key, snapshot(client, key), split_dump_payload(client.dump(key)))
            for key in sorted(client.keys("*"))
        ]
    restored = refused = 0
    for source, items in dumped.items():
        source_valkey = targets[source].valkey
        for dest, client in all_builds.items():
            target = targets[dest]
            for key, expected, payload in items:
                new_key = b"from:" + source.encode() + b":" + key
                stamp = target.payload_version_for(payload.rdb_type, source_valkey=source_valkey)
                if stamp is not None:
                    client.restore(new_key, 0, build_dump_payload(payload.value, stamp))
                    assert snapshot(client, new_key) == expected, (source, dest, key)
                    restored += 1
                else:
                    # stamped with the target's own version so only the type can be refused
                    with pytest.raises(redis.ResponseError, match="Bad data format"):
                        client.restore(
                            new_key, 0, build_dump_payload(payload.value, target.rdb_version)
                        )
                    refused += 1
    assert restored > 0
    if {"redis-6.2", "redis-7.0"} <= set(all_builds):
        assert refused > 0  # 7.0's listpacks cannot go to 6.2
