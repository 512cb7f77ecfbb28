"""The syncer seen from outside (issue 17): a mixed workload on a source that has a native
replica, sync tasks run as `replwatch sync run` processes and killed -9 at random moments,
and a checker that compares each target with the replica, the ground truth.

- Workload: threads with their own connections write every type (binary keys and values,
  large values and collections big enough for the syncer's chunked path), counters, TTLs
  that expire and TTLs persisted at ~90% of their life (PERSIST, GETEX PERSIST, INCR then
  PERSIST, a longer PEXPIRE), EVAL scripts (one SELECTs another db), functions, MULTI/EXEC
  (with SELECT inside), SWAPDB, DEL/UNLINK/RENAME/COPY, streams with consumer groups driven by
  several clients (XADD with trimming, XREADGROUP, XACK, XCLAIM, XAUTOCLAIM, XDEL of pending
  entries) and, where source and target hold them, hash-field TTLs. It is seeded
  (REPLWATCH_TEST_SEED reproduces a run's choices; thread interleavings still vary, which is
  fine: the checker compares final states).
- Checker: written without replwatch's own compare module; every db, every key: type, a
  type-specific read, PTTL within [truth - tolerance, truth + expire_grace + tolerance],
  streams down to every pending entry, functions; the checkpoint in db 0 of the target only.
- run_scenario(): one source (+ replica) and one or more targets, each with its own task
  process, the faults, the waits, and one PairOutcome per target.
"""

from __future__ import annotations

import contextlib
import heapq
import os
import random
import signal
import subprocess
import threading
import time
import traceback
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import redis
import yaml

from replwatch.config import SyncTask, config_from_data
from replwatch.sync.checkpoint import Checkpoint, checkpoint_key

from .outside_checker import DATABASES, KINDS, Checker, Difference, raw_client, scan_keys
from .servers import RedisProcess, ServerBuild, ServerSet, wait_for, wait_synced
from .syncing import TASK, start_sync_process

SEED_ENV = "REPLWATCH_TEST_SEED"
SWAPPED = ((0, 1), (0, 2), (3, 4))  # SWAPDB pairs of the workload
MIXED_DBS = (0, 1, 2, 3, 4)  # ordinary keys (moved around by SWAPDB)
STREAM_DB = 5  # consumer-group streams (never swapped: their consumers stay put)
BIG_DB = 6  # the large values of the preload
KEYSPACE = 120  # keys per type namespace and db
LONG_TTL_MS = (600_000, 1_200_000)  # "long": never expires during a run
SHORT_TTL_MS = (300, 1_200)  # expires or is persisted during a run
SETTLED_TTL_MS = 100_000  # after the drain no key or field has less than this left
TASK_OPTIONS: dict[str, object] = {
    "reconnect_min": "200ms",
    "reconnect_max": "1s",
    "big_key_bytes": "64kb",  # the big hash/list/set of the preload go by the chunked path
}


def seed_from_env() -> int:
    """REPLWATCH_TEST_SEED, else a new seed (the outcome's report names it)."""
    text = os.environ.get(SEED_ENV, "").strip()
    return int(text) if text else time.time_ns() % 1_000_000_007


# ----------------------------------------------------------------------------- features


def holds_functions(build: ServerBuild) -> bool:
    return build.product == "valkey" or build.version_info >= (7, 0)


def replicates_relative_ttls(build: ServerBuild) -> bool:
    """Redis before 7.0 replicates PEXPIRE / SET PX as sent (7.0 made them absolute)."""
    return build.product == "redis" and build.version_info < (7, 0)


def claims_deleted_alike(source: ServerBuild, target: ServerBuild) -> bool:
    """A claim of a pending entry whose message is deleted does the same on both (Redis
    before 7.0 claims it; 7.0+ and Valkey remove it)."""

    def removes(build: ServerBuild) -> bool:
        return build.product == "valkey" or build.version_info >= (7, 0)

    return removes(source) == removes(target)


def holds_hash_field_ttl(build: ServerBuild) -> bool:
    if build.product == "valkey":
        return build.version_info >= (9, 0)
    return build.version_info >= (7, 4)


@dataclass(frozen=True)
class Features:
    """What the workload may use: what the source has and every target can hold. What a
    target cannot hold at all is left out of the workload, not waved through by the checker."""

    functions: bool
    hash_field_ttl: bool
    # claims of pending entries whose message is deleted: Redis 6.2 moves such an entry to
    # the claiming consumer, 7.0+ and Valkey remove it, so from a 6.2 source into a newer
    # target no command can reproduce the claim (the task logs each one it could not carry:
    # tests/test_sync_streams_compat.py); the workload then claims existing messages only
    claims_deleted: bool = True

    @classmethod
    def for_pair(cls, source: ServerBuild, target: ServerBuild) -> Features:
        return cls(
            holds_functions(source) and holds_functions(target),
            holds_hash_field_ttl(source) and holds_hash_field_ttl(target),
            claims_deleted_alike(source, target),
        )

    @classmethod
    def common(cls, source: ServerBuild, targets: Iterable[ServerBuild]) -> Features:
        pairs = [cls.for_pair(source, t) for t in targets]
        return cls(
            all(p.functions for p in pairs),
            all(p.hash_field_ttl for p in pairs),
            all(p.claims_deleted for p in pairs),
        )

    def __str__(self) -> str:
        used = [
            n
            for n, on in (
                ("functions", self.functions),
                ("hash-field TTLs", self.hash_field_ttl),
                ("claims of deleted messages", self.claims_deleted),
            )
            if on
        ]
        return ", ".join(used) or "no functions, no hash-field TTLs, no claims of deleted messages"


# ----------------------------------------------------------------------------- workload

Argv = tuple[Any, ...]

# XCLAIM of the IDs (ARGV[3…]) whose message the stream still holds, to consumer ARGV[2]
CLAIM_EXISTING = (
    "local ids = {} "
    "for i = 3, #ARGV do "
    "if #redis.call('XRANGE', KEYS[1], ARGV[i], ARGV[i]) > 0 then ids[#ids + 1] = ARGV[i] end "
    "end "
    "if #ids == 0 then return 0 end "
    "return #redis.call('XCLAIM', KEYS[1], ARGV[1], ARGV[2], 0, unpack(ids))"
)

# replies a random workload provokes on purpose (a RENAME of a key just deleted, a claim in a
# group whose stream is gone …): counted, not failures
_EXPECTED_REFUSALS = (
    "WRONGTYPE",
    "no such key",
    "not an integer",
    "not a valid float",
    "index out of range",
    "NOGROUP",
    "would produce NaN",
    "increment or decrement would overflow",
)

SCRIPT_COUNTER = """
local n = redis.call('INCR', KEYS[1])
redis.call('HSET', KEYS[2], 'n', n, 'by', ARGV[1])
redis.call('RPUSH', KEYS[3], ARGV[1])
if n % 7 == 0 then redis.call('DEL', KEYS[3]) end
return n
"""
SCRIPT_OTHER_DB = """
redis.call('SELECT', ARGV[1])
redis.call('SET', KEYS[1], ARGV[2])
redis.call('PEXPIRE', KEYS[1], ARGV[3])
return 1
"""
LIBRARY_PRELOAD = """#!lua name=owlib
redis.register_function('ow_bump', function(keys, args)
  local n = redis.call('HINCRBY', keys[1], args[1], 1)
  redis.call('ZADD', keys[2], n, args[1])
  return n
end)
"""
LIBRARY_LIVE = """#!lua name=owlib2
redis.register_function('ow_stamp', function(keys, args)
  redis.call('SET', keys[1], args[1])
  return redis.call('LPUSH', keys[2], args[1])
end)
"""
ORDERS = b"ow:x:orders"
AUDIT = b"ow:x:audit"
# stream -> group -> consumers (created up front with XGROUP CREATECONSUMER: an empty
# XREADGROUP of Redis 6.2 creates a consumer without replicating it)
GROUPS: dict[bytes, dict[bytes, tuple[bytes, ...]]] = {
    ORDERS: {b"g1": (b"c1", b"c2", b"c3"), b"g2": (b"c1", b"c2")},
    AUDIT: {b"ga": (b"a1", b"a2")},
}


def _refusal_expected(exc: BaseException) -> bool:
    return isinstance(exc, redis.ResponseError) and any(
        text in str(exc) for text in _EXPECTED_REFUSALS
    )


class _Worker:
    """One workload thread: its own rng, connections (one per db) and counters."""

    def __init__(
        self, source: RedisProcess, index: int, rng: random.Random, stop: threading.Event
    ) -> None:
        self.source = source
        self.index = index  # the thread's number in the workload
        self.rng = rng
        self.stop = stop
        self.counts: Counter[str] = Counter()
        self._clients: dict[int, redis.Redis] = {}

    def client(self, db: int) -> redis.Redis:
        if db not in self._clients:
            self._clients[db] = raw_client(self.source, db)
        return self._clients[db]

    def call(self, db: int, *argv: Any) -> Any:
        """One command; an expected refusal is counted and returns None."""
        self.counts[str(argv[0]).lower()] += 1
        try:
            return self.client(db).execute_command(*argv)
        except redis.ResponseError as exc:
            if not _refusal_expected(exc):
                raise AssertionError(f"the source refused {argv[:4]!r}: {exc}") from exc
            self.counts["refused"] += 1
            return None

    def transaction(self, db: int, commands: Sequence[Argv]) -> list[Any]:
        pipe = self.client(db).pipeline(transaction=True)
        for argv in commands:
            pipe.execute_command(*argv)
        replies = pipe.execute(raise_on_error=False)
        self.counts["multi"] += 1
        for reply in replies:
            if isinstance(reply, Exception):
                if not _refusal_expected(reply):
                    raise AssertionError(f"the source refused a transaction: {reply}")
                self.counts["refused"] += 1
        return list(replies)

    def pace(self, seconds: float) -> None:
        """The workload's rate (not a synchronisation point)."""
        self.stop.wait(seconds)

    def close(self) -> None:
        for client in self._clients.values():
            with contextlib.suppress(Exception):
                client.close()
        self._clients.clear()

    # -- random material

    def blob(self, low: int = 0, high: int = 40) -> bytes:
        """Bytes with NULs and non-UTF-8 sequences now and then."""
        body = self.rng.randbytes(self.rng.randint(low, high))
        return body if self.rng.random() < 0.5 else b"v\x00\xff" + body.hex().encode()

    def key(self, kind: str) -> bytes:
        n = self.rng.randrange(KEYSPACE)
        if kind == "s" and n % 10 == 0:
            return b"ow:bin:\x00\xfe\xff" + bytes([n])  # binary key names
        return f"ow:{kind}:{n}".encode()


class Workload:
    """The mixed workload against the source (see the module docstring). preload() before
    the tasks start, start() / stop() around the run; stop() raises what a thread hit."""

    def __init__(
        self,
        source: RedisProcess,
        features: Features,
        seed: int,
        *,
        large_values: int = 2,
        pace: float = 0.002,
    ) -> None:
        self.source = source
        self.features = features
        self.seed = seed
        self.large_values = large_values  # multi-MB SETs during the run
        self.pace = pace
        self.counts: Counter[str] = Counter()
        self.errors: list[str] = []
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._live_library = threading.Event()
        self._lock = threading.Lock()

    # -- before the tasks

    def preload(self) -> int:
        """Large values, every type in several dbs, long TTLs, streams with groups and
        pending entries, a function library; returns the number of keys written."""
        rng = random.Random(self.seed)
        big = raw_client(self.source, BIG_DB)
        pipe = big.pipeline(transaction=False)
        pipe.execute_command("SET", b"big:str", rng.randbytes(3 * 1024 * 1024))
        fields: list[bytes] = []
        for i in range(25_000):
            fields += [b"f%d" % i, b"value-%d-" % i + rng.randbytes(4)]
        pipe.execute_command("HSET", b"big:hash", *fields)
        pipe.execute_command("RPUSH", b"big:list", *[b"item-%d" % i for i in range(25_000)])
        pipe.execute_command("SADD", b"big:set", *[b"member-%d" % i for i in range(20_000)])
        zset: list[Any] = []
        for i in range(10_000):
            zset += [i * 1.1, b"m-%d" % i]
        pipe.execute_command("ZADD", b"big:zset", *zset)
        pipe.execute_command("PEXPIRE", b"big:list", LONG_TTL_MS[1])
        pipe.execute()
        big.close()
        keys = 5
        for db in (*MIXED_DBS, BIG_DB):
            with raw_client(self.source, db) as client:
                pipe = client.pipeline(transaction=False)
                for i in range(KEYSPACE):
                    pipe.execute_command("SET", f"ow:s:{i}".encode(), rng.randbytes(20))
                    pipe.execute_command("SET", f"ow:n:{i}".encode(), i)
                    pipe.execute_command("RPUSH", f"ow:l:{i}".encode(), *range(i % 9 + 1))
                    pipe.execute_command("SADD", f"ow:t:{i}".encode(), *range(i % 7 + 1))
                    pipe.execute_command("ZADD", f"ow:z:{i}".encode(), i / 3, b"a", -i, b"b")
                    pipe.execute_command("HSET", f"ow:h:{i}".encode(), "a", i, "b", b"\x00\xff")
                    if i % 4 == 0:
                        ttl = rng.randint(*LONG_TTL_MS)
                        pipe.execute_command("PEXPIRE", f"ow:h:{i}".encode(), ttl)
                        pipe.execute_command("SET", f"ow:e:{i}".encode(), i, "PX", ttl)
                        keys += 1
                pipe.execute_command("SET", b"ow:bin:\x00\xfe\xff\x80", b"\x00\x01\xfe\xff")
                pipe.execute()
                keys += 6 * KEYSPACE + 1
        with raw_client(self.source, STREAM_DB) as client:
            for stream, groups in GROUPS.items():
                pipe = client.pipeline(transaction=False)
                for i in range(150):
                    pipe.execute_command("XADD", stream, "*", "n", i, "blob", rng.randbytes(8))
                pipe.execute()
                keys += 1
                for group, consumers in groups.items():
                    client.execute_command("XGROUP", "CREATE", stream, group, "0")
                    for consumer in consumers:
                        client.execute_command("XGROUP", "CREATECONSUMER", stream, group, consumer)
                    for consumer in consumers:
                        client.execute_command(
                            "XREADGROUP", "GROUP", group, consumer, "COUNT", 15, "STREAMS",
                            stream, ">",
                        )  # fmt: skip
        if self.features.functions:
            with raw_client(self.source) as client:
                client.execute_command("FUNCTION", "LOAD", LIBRARY_PRELOAD)
        if self.features.hash_field_ttl:
            with raw_client(self.source, 0) as client:
                for i in range(20):
                    client.execute_command(
                        "HSETEX", f"ow:hfp:{i}".encode(), "PX", rng.randint(*LONG_TTL_MS),
                        "FIELDS", 2, "a", i, "b", rng.randbytes(6),
                    )  # fmt: skip
                    client.execute_command("HSET", f"ow:hfp:{i}".encode(), "keep", 1)
                    keys += 1
        return keys

    # -- the run

    def start(self) -> None:
        jobs: list[tuple[str, Callable[[_Worker], None]]] = [
            ("mixed-0", self._mixed),
            ("mixed-1", self._mixed),
            ("ttl", self._ttls),
            ("swapdb", self._swapdb),
            ("stream-producer", self._producer),
            ("stream-consumer-0", self._consumer),
            ("stream-consumer-1", self._consumer),
        ]
        if self.features.hash_field_ttl:
            jobs.append(("field-ttl", self._field_ttls))
        for index, (name, job) in enumerate(jobs):
            rng = random.Random(self.seed * 1000 + index)
            worker = _Worker(self.source, index, rng, self._stop)
            thread = threading.Thread(
                target=self._run, args=(name, job, worker), name=f"workload-{name}", daemon=True
            )
            self._threads.append(thread)
            thread.start()

    def _run(self, name: str, job: Callable[[_Worker], None], worker: _Worker) -> None:
        try:
            job(worker)
        except BaseException:
            with self._lock:
                self.errors.append(f"workload thread {name}:\n{traceback.format_exc()}")
            self._stop.set()  # one broken thread ends the run: the test reports it
        finally:
            with self._lock:
                self.counts.update(worker.counts)
            worker.close()

    def stop(self) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(30)
        alive = [t.name for t in self._threads if t.is_alive()]
        self._threads.clear()
        if alive:
            self.errors.append(f"workload threads did not stop: {alive}")
        if self.errors:
            raise AssertionError("\n".join(self.errors))

    @property
    def stopped(self) -> bool:
        return self._stop.is_set()

    # -- the threads

    def _simple(self, w: _Worker) -> list[Argv]:
        """One random write of an ordinary type (used alone and inside transactions)."""
        rng = w.rng
        kind = rng.choice("snlthzk")
        if kind == "s":
            k = w.key("s")
            return [
                rng.choice(
                    [
                        ("SET", k, w.blob()),
                        ("SET", k, w.blob(), "PX", rng.randint(*LONG_TTL_MS)),
                        ("APPEND", k, w.blob(1, 8)),
                        ("SETRANGE", k, rng.randint(0, 30), w.blob(1, 5)),
                        ("GETDEL", k),
                        ("SET", k, w.blob(), "KEEPTTL"),
                    ]
                )
            ]
        if kind == "n":
            k = w.key("n")
            return [
                rng.choice(
                    [
                        ("INCR", k),
                        ("INCRBY", k, rng.randint(-50, 50)),
                        ("DECRBY", k, rng.randint(1, 9)),
                        ("INCRBYFLOAT", k, f"{rng.uniform(-2, 2):.3f}"),
                    ]
                )
            ]
        if kind == "l":
            k, k2 = w.key("l"), w.key("l")
            return [
                rng.choice(
                    [
                        ("RPUSH", k, w.blob(), w.blob()),
                        ("LPUSH", k, w.blob()),
                        ("LPOP", k),
                        ("RPOP", k, 2),
                        ("LTRIM", k, 0, rng.randint(3, 12)),
                        ("LSET", k, 0, w.blob()),
                        ("LMOVE", k, k2, "LEFT", "RIGHT"),
                        ("LINSERT", k, "BEFORE", b"1", w.blob()),
                    ]
                )
            ]
        if kind == "t":
            k, k2 = w.key("t"), w.key("t")
            return [
                rng.choice(
                    [
                        ("SADD", k, w.blob(0, 6), rng.randint(0, 30)),
                        ("SREM", k, rng.randint(0, 30)),
                        ("SPOP", k),
                        ("SMOVE", k, k2, rng.randint(0, 30)),
                    ]
                )
            ]
        if kind == "h":
            k = w.key("h")
            f = f"f{rng.randint(0, 15)}"
            return [
                rng.choice(
                    [
                        ("HSET", k, f, w.blob(), "g", rng.randint(0, 9)),
                        ("HDEL", k, f),
                        ("HINCRBY", k, "n", rng.randint(-5, 5)),
                        ("HINCRBYFLOAT", k, "x", f"{rng.uniform(0, 1):.4f}"),
                        ("HSETNX", k, f, w.blob()),
                    ]
                )
            ]
        if kind == "z":
            k = w.key("z")
            return [
                rng.choice(
                    [
                        ("ZADD", k, rng.uniform(-100, 100), w.blob(1, 6)),
                        ("ZINCRBY", k, rng.choice([0.5, 1, -2.25]), b"a"),
                        ("ZREM", k, b"b"),
                        ("ZPOPMIN", k),
                        ("ZREMRANGEBYRANK", k, 0, 1),
                    ]
                )
            ]
        kind2 = rng.choice("snlthz")
        k, k2 = w.key(kind2), w.key(kind2)
        while k2 == k:  # COPY onto itself is an error
            k2 = w.key(kind2)
        return [
            rng.choice(
                [
                    ("DEL", k),
                    ("UNLINK", k, k2),
                    ("RENAME", k, k2),
                    ("RENAMENX", k, k2),
                    ("COPY", k, k2, "REPLACE"),
                    ("COPY", k, k2, "DB", rng.choice(MIXED_DBS), "REPLACE"),
                    ("PEXPIRE", k, rng.randint(*LONG_TTL_MS)),
                    ("PERSIST", k),
                ]
            )
        ]

    def _mixed(self, w: _Worker) -> None:
        rng = w.rng
        started = time.monotonic()
        large_left = self.large_values if w.index == 0 else 0  # the first mixed thread's
        while not w.stop.is_set():
            db = rng.choice(MIXED_DBS)
            roll = rng.random()
            if roll < 0.62:
                for argv in self._simple(w):
                    w.call(db, *argv)
            elif roll < 0.72:
                commands = [argv for _ in range(rng.randint(2, 5)) for argv in self._simple(w)]
                if rng.random() < 0.4:  # a transaction that switches databases inside
                    other = rng.choice(MIXED_DBS)
                    commands[1:1] = [("SELECT", other)]
                    commands.append(("SELECT", db))
                w.transaction(db, commands)
            elif roll < 0.78:
                i = rng.randrange(KEYSPACE)
                w.call(
                    db, "EVAL", SCRIPT_COUNTER, 3, f"ow:n:{i}", f"ow:h:{i}", f"ow:l:{i}", w.blob()
                )
            elif roll < 0.81:
                w.call(
                    db, "EVAL", SCRIPT_OTHER_DB, 1, w.key("s"), rng.choice(MIXED_DBS), w.blob(),
                    rng.randint(*LONG_TTL_MS),
                )  # fmt: skip
            elif roll < 0.86 and self.features.functions:
                w.call(db, "FCALL", "ow_bump", 2, w.key("h"), w.key("z"), f"f{rng.randint(0, 5)}")
                if self._live_library.is_set():
                    w.call(db, "FCALL", "ow_stamp", 2, w.key("s"), w.key("l"), w.blob())
                elif w.index == 0 and time.monotonic() - started > 1.0:
                    w.call(0, "FUNCTION", "LOAD", "REPLACE", LIBRARY_LIVE)
                    self._live_library.set()
            elif roll < 0.92:
                self._big_write(w)
            elif roll < 0.95:
                w.call(db, "XADD", b"ow:xs", "MAXLEN", "~", 40, "*", "v", w.blob())
            elif large_left > 0 and time.monotonic() - started > 0.5 * (1 + w.counts["large"]):
                size = rng.randint(2, 4) * 1024 * 1024
                w.call(BIG_DB, "SET", f"ow:large:{rng.randrange(3)}".encode(), rng.randbytes(size))
                w.counts["large"] += 1
                large_left -= 1
            w.pace(self.pace)

    def _big_write(self, w: _Worker) -> None:
        """Small changes of the preload's large values (their keys stay big)."""
        rng = w.rng
        choice = rng.randrange(5)
        if choice == 0:
            w.call(BIG_DB, "HSET", b"big:hash", b"f%d" % rng.randrange(30_000), w.blob())
        elif choice == 1:
            w.call(BIG_DB, "RPUSH", b"big:list", w.blob())
            w.call(BIG_DB, "LPOP", b"big:list")
        elif choice == 2:
            w.call(BIG_DB, "SETRANGE", b"big:str", rng.randrange(3_000_000), w.blob(1, 64))
        elif choice == 3:
            w.call(BIG_DB, "SADD", b"big:set", w.blob(1, 8))
        else:
            w.call(BIG_DB, "ZINCRBY", b"big:zset", 1.5, b"m-%d" % rng.randrange(10_000))

    def _ttls(self, w: _Worker) -> None:
        """Keys with a short TTL: some expire, the others are saved at ~90% of their life
        by PERSIST, GETEX PERSIST, INCR then PERSIST or a longer PEXPIRE (the race a lagging
        target loses if it expires keys on its own clock)."""
        rng = w.rng
        due: list[tuple[float, int, int, bytes, str]] = []
        n = 0
        while not w.stop.is_set():
            now = time.monotonic()
            while due and due[0][0] <= now:
                _, _, db, key, action = heapq.heappop(due)
                if action == "persist":
                    w.call(db, "PERSIST", key)
                elif action == "getex":
                    w.call(db, "GETEX", key, "PERSIST")
                elif action == "incr":
                    w.call(db, "INCR", key)
                    w.call(db, "PERSIST", key)
                elif action == "extend":
                    w.call(db, "PEXPIRE", key, rng.randint(*LONG_TTL_MS))
                w.counts[f"ttl-{action}"] += 1
            if len(due) < 40:
                n += 1
                db = rng.choice(MIXED_DBS)
                ttl = rng.randint(*SHORT_TTL_MS)
                key = f"ow:ttl:{n}".encode()
                kind = rng.choice(("string", "string", "hash", "list", "zset"))
                actions: tuple[str, ...]
                if kind == "string":
                    w.call(db, "SET", key, rng.randint(0, 99), "PX", ttl)
                    actions = ("persist", "getex", "incr", "extend", "expire")
                else:
                    pipe_cmds: list[Argv] = [
                        {"hash": ("HSET", key, "a", 1), "list": ("RPUSH", key, 1, 2),
                         "zset": ("ZADD", key, 1, "a")}[kind],
                        ("PEXPIRE", key, ttl),
                    ]  # fmt: skip
                    w.transaction(db, pipe_cmds)
                    actions = ("persist", "extend", "expire")
                action = rng.choice(actions)
                heapq.heappush(due, (time.monotonic() + ttl * 0.9 / 1000, n, db, key, action))
            w.pace(0.004)

    def _field_ttls(self, w: _Worker) -> None:
        """Hash fields with a short TTL (Valkey 9 / Redis 7.4): expired or saved near the end
        by HPERSIST, HGETEX PERSIST or a longer HPEXPIRE."""
        rng = w.rng
        due: list[tuple[float, int, bytes, str]] = []
        n = 0
        while not w.stop.is_set():
            now = time.monotonic()
            while due and due[0][0] <= now:
                _, _, key, action = heapq.heappop(due)
                if action == "persist":
                    w.call(0, "HPERSIST", key, "FIELDS", 1, "a")
                elif action == "getex":
                    w.call(0, "HGETEX", key, "PERSIST", "FIELDS", 1, "b")
                elif action == "extend":
                    w.call(0, "HPEXPIRE", key, rng.randint(*LONG_TTL_MS), "FIELDS", 2, "a", "b")
                w.counts[f"field-ttl-{action}"] += 1
            if len(due) < 20:
                n += 1
                key = f"ow:hf:{n}".encode()
                ttl = rng.randint(*SHORT_TTL_MS)
                w.call(0, "HSETEX", key, "PX", ttl, "FIELDS", 2, "a", n, "b", w.blob())
                if rng.random() < 0.7:
                    w.call(0, "HSET", key, "keep", 1)
                action = rng.choice(("persist", "getex", "extend", "expire"))
                heapq.heappush(due, (time.monotonic() + ttl * 0.9 / 1000, n, key, action))
            w.pace(0.01)

    def _swapdb(self, w: _Worker) -> None:
        """SWAPDB of db 0 with another and of two other dbs (the target's checkpoint lives in
        db 0 and must stay there)."""
        while not w.stop.is_set():
            w.pace(w.rng.uniform(0.2, 0.6))
            if not w.stop.is_set():
                a, b = w.rng.choice(SWAPPED)
                w.call(0, "SWAPDB", a, b)

    def _producer(self, w: _Worker) -> None:
        """XADD with exact and approximate trimming (pending entries get trimmed away),
        XDEL of pending entries, XTRIM."""
        rng = w.rng
        i = 0
        while not w.stop.is_set():
            i += 1
            w.call(STREAM_DB, "XADD", ORDERS, "MAXLEN", "=", 180, "*", "n", i, "b", w.blob(0, 12))
            w.call(STREAM_DB, "XADD", AUDIT, "MAXLEN", "~", 120, "*", "n", i)
            if i % 15 == 0:
                pending = w.call(STREAM_DB, "XPENDING", ORDERS, "g1", "-", "+", 10) or []
                if pending:
                    w.call(STREAM_DB, "XDEL", ORDERS, rng.choice(pending)[0])
            if i % 40 == 0:
                w.call(STREAM_DB, "XTRIM", AUDIT, "MAXLEN", "=", rng.randint(40, 100))
            w.pace(0.003)

    def _consumer(self, w: _Worker) -> None:
        """Consumers of every group read, ack, re-read their history, claim and auto-claim
        (entries already deleted or trimmed included)."""
        rng = w.rng
        mine = w.index % 2
        owned = [
            (stream, group, consumer)
            for stream, groups in GROUPS.items()
            for group, consumers in groups.items()
            for j, consumer in enumerate(consumers)
            if j % 2 == mine
        ]
        while not w.stop.is_set():
            stream, group, me = rng.choice(owned)
            roll = rng.random()
            if roll < 0.45:
                noack = ("NOACK",) if rng.random() < 0.05 else ()
                got = w.call(
                    STREAM_DB, "XREADGROUP", "GROUP", group, me, "COUNT", rng.randint(1, 6),
                    *noack, "STREAMS", stream, ">",
                )  # fmt: skip
                ids = [entry[0] for _, entries in (got or []) for entry in entries]
                acked = [i for i in ids if rng.random() < 0.6]
                if acked:
                    w.call(STREAM_DB, "XACK", stream, group, *acked)
            elif roll < 0.55:
                w.call(
                    STREAM_DB, "XREADGROUP", "GROUP", group, me, "COUNT", 3, "STREAMS", stream,
                    "0",
                )  # fmt: skip
            elif roll < 0.75:
                pending = w.call(STREAM_DB, "XPENDING", stream, group, "-", "+", 8) or []
                theirs = [p[0] for p in pending if p[1] != me]
                if theirs:
                    justid = ("JUSTID",) if rng.random() < 0.3 else ()
                    if self.features.claims_deleted:
                        w.call(STREAM_DB, "XCLAIM", stream, group, me, 0, *theirs[:4], *justid)
                    else:  # existing messages only, checked and claimed in one step
                        w.call(
                            STREAM_DB, "EVAL", CLAIM_EXISTING, 1, stream, group, me,
                            *theirs[:4],
                        )  # fmt: skip
            elif roll < 0.88 and self.features.claims_deleted:
                justid = ("JUSTID",) if rng.random() < 0.3 else ()
                w.call(STREAM_DB, "XAUTOCLAIM", stream, group, me, 0, "0-0", "COUNT", 5, *justid)
            else:
                pending = w.call(STREAM_DB, "XPENDING", stream, group, "-", "+", 5, me) or []
                if pending:
                    w.call(STREAM_DB, "XACK", stream, group, *[p[0] for p in pending[:2]])
            w.pace(0.003)


# ----------------------------------------------------------------------------- waiting


def _short_lived(proc: RedisProcess, field_ttls: bool) -> list[str]:
    """Keys (and hash fields) of the source that still have less than SETTLED_TTL_MS to
    live, or that expired without being reclaimed yet. SCAN on a master deletes the expired
    keys it meets (and replicates the DEL), so polling this ends the expiries."""
    found: list[str] = []
    for db in range(DATABASES):
        with raw_client(proc, db) as client:
            keys = scan_keys(client)
            if not keys:
                continue
            pipe = client.pipeline(transaction=False)
            for key in keys:
                pipe.execute_command("PTTL", key)
            for key, pttl in zip(keys, pipe.execute(), strict=True):
                if 0 <= int(pttl) < SETTLED_TTL_MS:
                    found.append(f"db {db} {key!r} pttl {pttl}")
            if not field_ttls:
                continue
            for key in keys:
                if not key.startswith(b"ow:hf"):
                    continue
                names = client.execute_command("HKEYS", key)
                if int(client.execute_command("HLEN", key)) != len(names):
                    found.append(f"db {db} {key!r}: expired fields not reclaimed yet")
                if names:
                    ttls = client.execute_command("HPTTL", key, "FIELDS", len(names), *names)
                    if any(0 <= int(t) < SETTLED_TTL_MS for t in ttls):
                        found.append(f"db {db} {key!r}: fields with a short TTL")
    return found


def wait_expiries_settled(proc: RedisProcess, field_ttls: bool, timeout: float = 20) -> None:
    """Until no key or field of the source is about to expire: from then on the source's
    data no longer changes by itself, so replica and targets can be compared at leisure."""
    last: list[list[str]] = []

    def settled() -> bool:
        last[:] = [_short_lived(proc, field_ttls)]
        return not last[0]

    try:
        wait_for(settled, timeout, "the short TTLs of the source to run out", interval=0.1)
    except AssertionError as exc:
        raise AssertionError(f"{exc}; still short-lived: {last[0][:5] if last else '?'}") from None


def read_checkpoint(target: RedisProcess, task: str = TASK) -> Checkpoint | None:
    with raw_client(target) as client:
        flat = client.execute_command("HGETALL", checkpoint_key(task))
    return Checkpoint.from_hash(task, dict(zip(flat[::2], flat[1::2], strict=True)))


def task_caught_up(source: RedisProcess, target: RedisProcess, task: str = TASK) -> bool:
    """The checkpoint (moved with the data) says incremental at the source's position."""
    cp = read_checkpoint(target, task)
    info = source.info("replication")
    return bool(
        cp is not None
        and cp.state == "incremental"
        and cp.replid == info["master_replid"]
        and cp.offset is not None
        and cp.offset >= int(info["master_repl_offset"])
    )


def wait_task_caught_up(process: SyncProcess, source: RedisProcess, timeout: float) -> None:
    """Until the task's checkpoint reaches the source's offset (a run that ended by itself
    is recorded and started again meanwhile)."""

    def caught_up() -> bool:
        process.check_alive()
        return task_caught_up(source, process.target, process.task)

    wait_for(caught_up, timeout, "the task to catch up with the source")


# ----------------------------------------------------------------------------- task processes


def write_task_config(
    path: Path, source: RedisProcess, target: RedisProcess, **options: object
) -> SyncTask:
    """A config file with one task `TASK` (TASK_OPTIONS plus `options`); returns the task as
    replwatch reads it (its expire_grace is the checker's TTL allowance)."""
    data = {
        "sync": {
            "tasks": [
                {"name": TASK, "source": source.url, "target": target.url} | TASK_OPTIONS | options
            ]
        }
    }
    path.write_text(yaml.safe_dump(data))
    return config_from_data(data).sync.tasks[0]


def expire_grace_ms(task: SyncTask) -> int:
    """The task's expire_grace in ms (0 for a replwatch without the option)."""
    return round(float(getattr(task, "expire_grace", 0.0)) * 1000)


class SyncProcess:
    """`replwatch sync run -c CONFIG --task NAME` as a child process in its own session;
    kill9() is a crash at that moment, stop() a SIGTERM (then SIGKILL)."""

    def __init__(self, config: Path, log: Path, target: RedisProcess, task: str = TASK) -> None:
        self.config = config
        self.log = log
        self.target = target
        self.task = task
        self.proc: subprocess.Popen[bytes] | None = None
        self.kills: Counter[str] = Counter()  # by the checkpoint's state at the kill
        self.exits: list[int] = []  # exit codes of runs that ended on their own

    def start(self) -> None:
        with self.log.open("ab") as log:
            log.write(f"--- start at {time.strftime('%H:%M:%S')}\n".encode())
            log.flush()
        self.proc = start_sync_process(self.config, self.log, self.task)

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc is not None else None

    def check_alive(self) -> None:
        """A run that ended by itself is recorded (and the task started again)."""
        if self.proc is not None and self.proc.poll() is not None:
            self.exits.append(self.proc.returncode)
            self.start()

    def kill9(self) -> str:
        """SIGKILL now; returns the checkpoint's state at the kill."""
        self.check_alive()
        cp = None
        with contextlib.suppress(redis.RedisError, OSError):
            cp = read_checkpoint(self.target, self.task)
        state = cp.state if cp is not None else "starting"
        assert self.proc is not None
        with contextlib.suppress(ProcessLookupError):
            os.kill(self.proc.pid, signal.SIGKILL)
        self.proc.wait(10)
        self.proc = None
        self.kills[state] += 1
        return state

    def stop(self, grace: float = 15) -> int | None:
        """SIGTERM and the exit code (None when it had to be killed); idempotent."""
        proc, self.proc = self.proc, None
        if proc is None:
            return None
        if proc.poll() is not None:
            self.exits.append(proc.returncode)
            return proc.returncode
        with contextlib.suppress(ProcessLookupError):
            os.kill(proc.pid, signal.SIGTERM)
        try:
            return proc.wait(grace)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.kill(proc.pid, signal.SIGKILL)
            proc.wait(10)
            return None

    def log_tail(self, chars: int = 2500) -> str:
        if not self.log.exists():
            return "(no log)"
        return self.log.read_text(errors="replace")[-chars:]

    def target_errors(self, limit: int = 3) -> list[str]:
        """The log's lines about commands the target refused (the syncer only warns)."""
        if not self.log.exists():
            return []
        lines = self.log.read_text(errors="replace").splitlines()
        hits = [ln for ln in lines if "failed on the target" in ln or "refused" in ln]
        return [ln[-300:] for ln in hits[:limit]]


# ----------------------------------------------------------------------------- scenario


@dataclass(frozen=True)
class Settings:
    """How long and how hard one scenario runs."""

    stream_seconds: float = 4.0  # workload after every task finished its first full sync
    full_sync_kills: int = 1  # per task, during its full sync
    stream_kills: int = 1  # per task, at random moments of the stream
    max_downtime: float = 1.0  # a killed task stays down up to this long (its lag grows)
    snapshot_seconds: float = 0.6  # the source's snapshot slowed to about this long
    large_values: int = 2  # multi-MB SETs during the run
    catch_up_timeout: float = 60.0


@dataclass
class PairOutcome:
    """What one source → target task went through and what the checker found."""

    source: ServerBuild
    target: ServerBuild
    seed: int
    features: Features
    log: Path
    differences: list[Difference] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    kills: Counter[str] = field(default_factory=Counter)
    exits: list[int] = field(default_factory=list)
    workload: Counter[str] = field(default_factory=Counter)
    keys_compared: int = 0
    target_errors: list[str] = field(default_factory=list)
    log_tail: str = ""

    @property
    def ok(self) -> bool:
        return not self.differences and not self.problems

    def report(self, per_kind: int = 8) -> str:
        lines = [
            f"{self.source.name} -> {self.target.name}: seed {self.seed} "
            f"({SEED_ENV}={self.seed} repeats the workload's choices); "
            f"workload with {self.features}; "
            f"kills by checkpoint state {dict(self.kills)}; {self.keys_compared} keys compared",
        ]
        if self.problems:
            lines.append("problems:")
            lines += [f"  {p}" for p in self.problems]
        if self.differences:
            lines.append(f"{len(self.differences)} differences from the replica:")
            for kind in KINDS:
                of_kind = [d for d in self.differences if d.kind == kind]
                if of_kind:
                    shown = of_kind[:per_kind]
                    more = f" (first {len(shown)})" if len(of_kind) > len(shown) else ""
                    lines.append(f"  {len(of_kind)} {kind}{more}:")
                    lines += [f"    {d}" for d in shown]
        if self.target_errors:
            lines.append("commands the target refused (task log):")
            lines += [f"  {e}" for e in self.target_errors]
        if self.problems:
            lines.append(f"task log ({self.log}), tail:\n{self.log_tail}")
        return "\n".join(lines)


def _keys_in(proc: RedisProcess) -> int:
    info = proc.info("keyspace")
    return sum(int(v["keys"]) for v in info.values() if isinstance(v, dict))


def run_scenario(
    source_build: ServerBuild,
    target_builds: Sequence[ServerBuild],
    workdir: Path,
    settings: Settings,
    seed: int,
) -> dict[str, PairOutcome]:
    """One source with a native replica, one target and task process per target build, the
    workload (what every target can hold), kill -9 of each task during its full sync and at
    random moments of the stream, then — once the source's short TTLs ran out and replica
    and tasks caught up — the checker, target by target. Every process it starts is
    stopped before it returns, whatever happened."""
    rng = random.Random(seed)
    features = Features.common(source_build, target_builds)
    sources = ServerSet(source_build, workdir / "source")
    target_sets = [ServerSet(b, workdir / f"target-{b.name}") for b in target_builds]
    tasks: dict[str, tuple[SyncProcess, SyncTask]] = {}
    outcomes: dict[str, PairOutcome] = {}
    workload: Workload | None = None
    try:
        source = sources.start("source", extra=["--repl-backlog-size", "256mb"])
        replica = sources.start("replica", replica_of=source)
        wait_synced(replica, source)
        workload = Workload(source, features, seed, large_values=settings.large_values)
        workload.preload()
        delay_us = int(settings.snapshot_seconds * 1e6 / max(1, _keys_in(source)))
        with raw_client(source) as client:
            client.execute_command("CONFIG", "SET", "rdb-key-save-delay", delay_us)
        for build, servers in zip(target_builds, target_sets, strict=True):
            target = servers.start("target")
            config = workdir / f"task-{build.name}.yaml"
            task = write_task_config(config, source, target)
            log = workdir / f"task-{build.name}.log"
            tasks[build.name] = (SyncProcess(config, log, target), task)
            outcomes[build.name] = PairOutcome(source_build, build, seed, features, log)
        workload.start()
        full_syncs_began = time.monotonic()
        try:
            _kill_during_full_syncs(list(tasks.values()), settings, rng)
        except AssertionError as exc:
            logs = "\n".join(
                f"task log into {name}:\n{p.log_tail(800)}" for name, (p, _) in tasks.items()
            )
            raise AssertionError(f"{exc}\n{logs}\nsource log:\n{source.log_tail(800)}") from None
        full_sync_seconds = time.monotonic() - full_syncs_began
        with raw_client(source) as client:
            client.execute_command("CONFIG", "SET", "rdb-key-save-delay", 0)
        _kill_during_stream([p for p, _ in tasks.values()], settings, rng, workload)
        workload.stop()
        for outcome in outcomes.values():
            outcome.workload = Counter(workload.counts)
        wait_expiries_settled(source, features.hash_field_ttl)
        wait_synced(replica, source, timeout=60)
        for name, (process, task) in tasks.items():
            _check_pair(
                outcomes[name], process, task, source, replica, settings, features,
                full_sync_seconds,
            )  # fmt: skip
        return outcomes
    finally:
        if workload is not None and not workload.stopped:
            with contextlib.suppress(AssertionError):
                workload.stop()
        for process, _ in tasks.values():
            process.stop()
        for servers in (*target_sets, sources):
            servers.close()


def _kill_during_full_syncs(
    tasks: list[tuple[SyncProcess, SyncTask]], settings: Settings, rng: random.Random
) -> None:
    """The tasks start one after the other, each killed `full_sync_kills` times at a random
    moment of its own full sync (the run's pid in the checkpoint tells that run's full sync
    from the one a killed run left behind); then until every task finished a full sync."""
    for process, _task in tasks:
        process.start()
        for _ in range(settings.full_sync_kills):

            def loading(p: SyncProcess = process) -> bool:
                p.check_alive()
                cp = read_checkpoint(p.target)
                return (
                    cp is not None and cp.pid == p.pid and cp.state in ("full_sync", "incremental")
                )

            wait_for(loading, 60, f"the full sync of the task into {process.target.build.name}")
            time.sleep(rng.uniform(0.02, 0.3))  # the crash's moment (the fault, not a wait)
            process.kill9()
            process.start()

    def finished() -> bool:
        for process, _task in tasks:
            process.check_alive()
            cp = read_checkpoint(process.target)
            if cp is None or not cp.resumable:
                if cp is not None and cp.full_resyncs > settings.full_sync_kills + 5:
                    raise AssertionError(
                        f"the task into {process.target.build.name} began {cp.full_resyncs} "
                        f"full syncs and finished none (last error: {cp.last_error})"
                    )
                return False
        return True

    wait_for(finished, settings.catch_up_timeout, "every task to finish a full sync")


def _kill_during_stream(
    processes: list[SyncProcess], settings: Settings, rng: random.Random, workload: Workload
) -> None:
    """`stream_kills` kills per task at random moments of `stream_seconds` of workload;
    each killed task stays down a random while (so it lags) before it starts again."""
    schedule = sorted(
        (rng.uniform(0, settings.stream_seconds * 0.8), i)
        for i in range(len(processes))
        for _ in range(settings.stream_kills)
    )
    started = time.monotonic()
    for at, i in schedule:
        time.sleep(max(0.0, started + at - time.monotonic()))  # the fault's timing
        if workload.stopped:  # a workload thread failed: stop() reports it
            return
        processes[i].kill9()
        time.sleep(rng.uniform(0.0, settings.max_downtime))
        processes[i].start()
    time.sleep(max(0.0, started + settings.stream_seconds - time.monotonic()))


def _check_pair(
    outcome: PairOutcome,
    process: SyncProcess,
    task: SyncTask,
    source: RedisProcess,
    replica: RedisProcess,
    settings: Settings,
    features: Features,
    full_sync_seconds: float,
) -> None:
    target = process.target
    try:
        wait_task_caught_up(process, source, settings.catch_up_timeout)
    except AssertionError as exc:
        outcome.problems.append(f"{exc}; checkpoint: {read_checkpoint(target)}")
    else:
        checker = Checker(
            replica,
            target,
            grace_ms=expire_grace_ms(task),
            # a relative TTL applied after a kill's downtime and the catch-up that follows, or
            # written while the full syncs were killed and begun again and applied once the
            # last one was done (a soak run saw 18-20 s with three such kills)
            late_ms=round((full_sync_seconds + settings.max_downtime + 10) * 1000)
            if replicates_relative_ttls(outcome.source)
            else 0,
            functions=features.functions,
            field_ttls=features.hash_field_ttl,
        )
        outcome.differences = checker.differences()
        outcome.keys_compared = checker.keys_compared
    code = process.stop()
    if code != 0:
        outcome.problems.append(f"the task process ended with {code} on SIGTERM (0 expected)")
    outcome.kills = process.kills
    outcome.exits = process.exits
    if process.exits:
        outcome.problems.append(f"the task process exited by itself with {process.exits}")
    outcome.target_errors = process.target_errors()
    outcome.log_tail = process.log_tail()
