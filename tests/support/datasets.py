"""A dataset with every type in small (compact) and large encodings, TTLs, two databases,
streams with consumer groups and pending entries: written by the same commands on any server
build (compare and sync tests)."""

from __future__ import annotations

import time

import redis

from .servers import RedisProcess

TTL_SECONDS = 1000
BINARY_KEY = b"bin:\xff\x00key"


def connect(proc: RedisProcess, db: int = 0, password: str | None = None) -> redis.Redis:
    return redis.Redis(
        host=proc.host, port=proc.port, db=db, password=password, socket_timeout=10, protocol=2
    )


def write_burst(proc: RedisProcess, n: int = 20) -> None:
    """`n` SETs of the current time in one pipeline: keeps a master's offset moving."""
    with connect(proc) as client:
        pipe = client.pipeline(transaction=False)
        for i in range(n):
            pipe.set(f"w:{i}", time.time())
        pipe.execute()


def build_dataset(proc: RedisProcess, password: str | None = None) -> int:
    """The same data, written by the same commands, on any server; returns the key count."""
    with connect(proc, 0, password) as db0, connect(proc, 3, password) as db3:
        pipe = db0.pipeline(transaction=False)
        pipe.set("str:small", "hello")
        pipe.set("str:int", 12345)
        pipe.set("str:big", b"0123456789abcdef" * (160 * 1024))  # 2.5 MiB: read in chunks
        pipe.set("str:ttl", "expiring", ex=TTL_SECONDS)
        pipe.set(BINARY_KEY, b"\x00\xff\xfe")
        pipe.rpush("list:small", "a", "b", "c", "b")
        pipe.rpush("list:big", *[f"item-{i}" for i in range(1000)])
        pipe.sadd("set:int", 1, 2, 3, 99)
        pipe.sadd("set:small", "x", "y", "z")
        pipe.sadd("set:big", *[f"member-{i}" for i in range(2000)])
        pipe.hset("hash:small", mapping={"name": "ada", "lang": "en", "n": 1})
        pipe.hset("hash:big", mapping={f"field-{i}": f"value-{i}" for i in range(1000)})
        pipe.expire("hash:big", TTL_SECONDS)
        pipe.zadd("zset:small", {"a": 1, "b": 2.5, "c": float("-inf")})
        pipe.zadd("zset:big", {f"m-{i}": i * 1.1 for i in range(1000)})
        pipe.zadd("zset:inf", {"top": float("inf"), "tie-a": 5, "tie-b": 5})
        for i in range(1, 11):
            pipe.xadd("stream:small", {"n": i, "kind": "small"}, id=f"1-{i}")
        for i in range(1, 1201):
            pipe.xadd("stream:big", {"n": i}, id=f"2-{i}")
        pipe.xadd("stream:empty", {"gone": 1}, id="3-1")
        pipe.xtrim("stream:empty", maxlen=0)
        pipe.execute()
        db0.xgroup_create("stream:small", "g1", id="0")
        db0.xgroup_create("stream:small", "g2", id="$")
        db0.xreadgroup("g1", "consumer-1", {"stream:small": ">"}, count=3)
        db0.xgroup_create("stream:big", "gb", id="0")
        db0.xreadgroup("gb", "c", {"stream:big": ">"}, count=700)
        pipe = db3.pipeline(transaction=False)
        pipe.set("db3:str", "three")
        pipe.rpush("db3:list", "1", "2", "3")
        pipe.hset("db3:hash", mapping={"a": "1"})
        pipe.set("db3:ttl", "t", px=TTL_SECONDS * 1000)
        pipe.execute()
        return int(db0.dbsize()) + int(db3.dbsize())
