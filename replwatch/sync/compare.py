"""`replwatch compare`: verify that two Redis databases hold the same data.

The source is SCANned (never KEYS) in batches; per batch and per server the comparison takes
three pipelined round trips: TYPE + PTTL of every key, then its size (STRLEN, LLEN, SCARD,
HLEN, ZCARD, XLEN), then the whole value of the keys whose size is at most one chunk. A key
larger than one chunk is compared chunk by chunk, so memory stays bounded per key and no reply
is huge: strings by GETRANGE, lists by LRANGE ranges, zsets by ZRANGE ranges with scores, sets
by SSCAN on the source + SMISMEMBER on the target, hashes by HSCAN on the source + HMGET on the
target (cardinalities are compared first, so "every source member is on the target" means
equal), streams by XINFO STREAM (length, last-generated-id, entries-added and
max-deleted-entry-id where both servers report them, group count), XINFO GROUPS (per group
last-delivered-id, pending count, consumer count; not entries-read, see GROUP_FIELDS) and
XRANGE chunks. Any other type (modules) is compared by its DUMP payload without the 10-byte
trailer (RDB version + CRC), so two server versions that encode the value alike compare equal.
Scores are compared as numbers (Redis 6.2 prints 1.1 as 1.1000000000000001, 7.0 as 1.1).

TTLs are equal within `ttl_tolerance`, and the target's may also be up to `expire_grace` longer
(a sync task writes TTLs that much later: replwatch/sync/expiry.py; by default the largest
grace a checkpoint on the target records); a TTL on one side only is a difference. Then, unless
sampling, the target is SCANned too and every target key missing on the source is reported as
`extra`. With `sample`, N random source keys per database (RANDOMKEY; all of them when the
database has at most N keys) are checked for missing/different, extra keys are not checked and
the report says so.

A live system changes during a compare: a key found different (or missing, or extra) is read
again `recheck` times, `recheck_delay` after it was last seen different, and is reported only
if it still differs, so a sync in flight does not show as a false difference. Keys that SCAN
returns twice (it may, while a server rehashes) are compared and counted twice.

`rate` limits the work to that many key reads per second over both servers together (a token
bucket with 100 ms of burst): comparing a key costs 2 (source + target), each further chunk of
a large key 2 more, checking a target key for being extra 1 (EXISTS on the source; 2 more to
confirm one that is), each RANDOMKEY 1. SCAN calls themselves are not counted. Chunks bound the
number of elements per reply, not their size: a hash of 500 fields of 100 MB each is still read
in one HGETALL.

Keys matching `ignore` globs (default `__replwatch:*`: replwatch's own heartbeat and probe
keys, which differ by design while a sync runs) are skipped on both sides.

Exit codes (`main` / `run_compare`): they extend replwatch.cli's 0 ok / 1 failure / 2 config:
    0  the databases are equal
    1  they differ (the report lists how)
    2  usage error: bad URL or option (one line on stderr naming the option)
    3  the compare could not complete: refused, timeout, authentication, server error (one
       line on stderr); 1 is kept for "differ" so a script can tell the two apart.
Passwords never appear in output or errors: servers are named by their host:port label.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import fnmatch
import json
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final, Literal

import redis
from pydantic import ValidationError
from pydantic_core import PydanticCustomError
from redis.backoff import NoBackoff
from redis.retry import Retry

from replwatch.config import RedisEndpoint, TLSConfig, parse_duration, parse_redis_url
from replwatch.errors import ConfigError, RedisError
from replwatch.sync.checkpoint import CHECKPOINT_DB, CHECKPOINT_PREFIX

__all__ = [
    "EXIT_DIFFERENT",
    "EXIT_EQUAL",
    "EXIT_INCOMPLETE",
    "EXIT_USAGE",
    "CompareIncomplete",
    "CompareOptions",
    "CompareReport",
    "CompareUsageError",
    "DbPair",
    "Difference",
    "TokenBucket",
    "add_compare_arguments",
    "add_compare_parser",
    "compare_databases",
    "display_key",
    "main",
    "options_from_args",
    "render_json",
    "render_text",
    "run_compare",
]

EXIT_EQUAL: Final = 0
EXIT_DIFFERENT: Final = 1
EXIT_USAGE: Final = 2
EXIT_INCOMPLETE: Final = 3

DifferenceKind = Literal["missing", "extra", "type", "value", "ttl"]
DIFFERENCE_KINDS: Final[tuple[DifferenceKind, ...]] = ("missing", "extra", "type", "value", "ttl")
DEFAULT_IGNORE: Final[tuple[str, ...]] = ("__replwatch:*",)

Command = tuple[bytes | str | int, ...]
Finding = tuple[DifferenceKind, str]

# the size command of each core type, and the word used when two sizes differ
SIZE_COMMANDS: Final = {
    "string": "STRLEN",
    "list": "LLEN",
    "set": "SCARD",
    "zset": "ZCARD",
    "hash": "HLEN",
    "stream": "XLEN",
}
SIZE_NOUNS: Final = {
    "string": "length",
    "list": "length",
    "set": "cardinality",
    "zset": "cardinality",
    "hash": "fields",
    "stream": "length",
}
DUMP_TRAILER_BYTES: Final = 10  # 2-byte RDB version + 8-byte CRC64
STREAM_SEQ_MAX: Final = 2**64 - 1
SUSPECT_BUFFER: Final = 5000  # keys held for a recheck before one is forced
CHANGED: Final = "changed while being compared"
STREAM_FIELDS: Final = (
    "length",
    "last-generated-id",
    "entries-added",
    "max-deleted-entry-id",
    "groups",
)
# Not entries-read: Redis 7.0 replicates an XREADGROUP as XCLAIM … LASTID, which moves a
# replica's last-delivered-id but not its entries-read (Valkey 8.1 and 9.1 send XGROUP SETID
# … ENTRIESREAD too), so a native 7.0 replica reads other numbers than its master (seen: 1 vs
# 2, or nil) and so does a sync target; the server uses it only to estimate the group's lag.
GROUP_FIELDS: Final = ("last-delivered-id", "pending", "consumers")


# --------------------------------------------------------------------------- public values


@dataclass(frozen=True)
class CompareOptions:
    """What to compare and how gently. Durations are seconds."""

    db: int | None = None  # both servers' db; None: each URL's own db
    all_dbs: bool = False  # every db that has keys on either server (INFO keyspace)
    sample: int | None = None  # check N random source keys per db; no extra-key check
    rate: float | None = None  # key reads per second over both servers; None: unlimited
    ttl_tolerance: float = 2.0
    # target TTLs may be this much longer than the source's (a sync task's expire_grace);
    # None: the largest expire_grace_ms recorded by a checkpoint in the target's db 0
    expire_grace: float | None = None
    # source TTLs may be this much longer than the target's (the reverse task of a pair
    # writes the source); None: the largest a checkpoint in the source's db 0 records
    source_expire_grace: float | None = None
    recheck: int = 1
    recheck_delay: float = 0.5
    batch: int = 200  # SCAN COUNT and keys per pipeline
    chunk: int = 500  # elements per read of a large list/set/hash/zset/stream
    string_chunk_bytes: int = 1 << 20
    timeout: float = 10.0  # socket timeout per command
    max_differences: int = 100  # differences kept in the report (0: all); counts stay exact
    ignore: tuple[str, ...] = DEFAULT_IGNORE


@dataclass(frozen=True)
class DbPair:
    """A source db compared with a target db (the same number unless the URLs differ)."""

    source: int
    target: int

    def __str__(self) -> str:
        if self.source == self.target:
            return f"db {self.source}"
        return f"db {self.source} vs db {self.target}"


@dataclass(frozen=True)
class Difference:
    db: int  # the source db of the pair
    key: bytes
    kind: DifferenceKind
    detail: str

    def as_json(self) -> dict[str, object]:
        return {
            "db": self.db,
            "key": display_key(self.key),
            "kind": self.kind,
            "detail": self.detail,
        }


@dataclass(frozen=True)
class CompareReport:
    source: str  # host:port labels, never a password
    target: str
    dbs: tuple[DbPair, ...]
    checked: int  # source keys compared
    equal_keys: int
    missing: int  # keys missing on the target
    extra: int  # keys on the target only (0 when sampled: not checked)
    different: int  # keys on both sides that differ (type, value and/or TTL)
    kind_counts: dict[str, int]  # differences per kind (a key can differ in value and TTL)
    sampled: bool
    ignored: int  # source keys skipped by an ignore glob
    differences: tuple[Difference, ...]  # the first max_differences of them
    omitted: int  # differences found but not kept
    seconds: float
    expire_grace: float = 0.0  # target TTLs were allowed to be this much longer
    source_expire_grace: float = 0.0  # … and source TTLs this much longer (a pair)

    @property
    def equal(self) -> bool:
        return self.missing == 0 and self.extra == 0 and self.different == 0

    def as_json(self) -> dict[str, object]:
        return {
            "equal": self.equal,
            "source": self.source,
            "target": self.target,
            "dbs": [pair.source for pair in self.dbs],
            "target_dbs": [pair.target for pair in self.dbs],
            "checked": self.checked,
            "equal_keys": self.equal_keys,
            "missing": self.missing,
            "extra": self.extra,
            "different": self.different,
            "by_kind": dict(self.kind_counts),
            "sampled": self.sampled,
            "ignored": self.ignored,
            "differences": [d.as_json() for d in self.differences],
            "differences_omitted": self.omitted,
            "seconds": round(self.seconds, 3),
            "expire_grace_seconds": self.expire_grace,
            "source_expire_grace_seconds": self.source_expire_grace,
        }


class CompareIncomplete(RedisError):
    """The compare could not finish (connection, timeout, authentication, server error)."""


class CompareUsageError(ConfigError):
    """A bad option value; `source` is the option's name (e.g. --source)."""

    def __init__(self, option: str, problem: str) -> None:
        super().__init__(option, [problem])


# --------------------------------------------------------------------------- small helpers


def display_key(key: bytes) -> str:
    """A key (or member, field) for people: its text when it is printable UTF-8, else a Python
    bytes literal (b'\\xff\\x00k')."""
    try:
        text = key.decode("utf-8")
    except UnicodeDecodeError:
        return repr(key)
    if text.isprintable() and not text.startswith(("b'", 'b"')):
        return text
    return repr(key)


def _text(value: Any) -> str:
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    return str(value)


def _format_seconds(ms: int) -> str:
    return f"{ms / 1000:.1f}s"


def ttl_finding(
    source_pttl: int,
    target_pttl: int,
    tolerance: float,
    grace: float = 0.0,
    source_grace: float = 0.0,
) -> str | None:
    """PTTL replies (-1: no TTL) → a description when they differ by more than `tolerance`;
    the target's may also be up to `grace` longer (a sync task's expire_grace: the target
    keeps a key until the source's own expiry reaches it), the source's up to `source_grace`
    (a pair's reverse task does the same on the source)."""
    if source_pttl < 0 and target_pttl < 0:
        return None
    if source_pttl < 0 or target_pttl < 0:
        left = "none" if source_pttl < 0 else _format_seconds(source_pttl)
        right = "none" if target_pttl < 0 else _format_seconds(target_pttl)
        return f"ttl {left} vs {right}"
    longer = target_pttl - source_pttl
    if longer < -(tolerance + source_grace) * 1000 or longer > (grace + tolerance) * 1000:
        allowed = f"tolerance {tolerance:g}s" + (f", expire grace {grace:g}s" if grace else "")
        if source_grace:
            allowed += f", source expire grace {source_grace:g}s"
        return f"ttl {_format_seconds(source_pttl)} vs {_format_seconds(target_pttl)} ({allowed})"
    return None


def first_difference(left: Sequence[Any], right: Sequence[Any]) -> int | None:
    """The first index where two sequences differ (a missing element counts), or None."""
    for index, (a, b) in enumerate(zip(left, right, strict=False)):
        if a != b:
            return index
    if len(left) != len(right):
        return min(len(left), len(right))
    return None


def parse_stream_id(value: bytes) -> tuple[int, int]:
    ms, _, seq = value.partition(b"-")
    return int(ms), int(seq or 0)


def next_stream_id(value: bytes) -> bytes:
    """The smallest stream id after `value` (an inclusive XRANGE start that skips it)."""
    ms, seq = parse_stream_id(value)
    if seq == STREAM_SEQ_MAX:
        return b"%d-0" % (ms + 1)
    return b"%d-%d" % (ms, seq + 1)


def parse_keyspace(info: bytes) -> dict[int, int]:
    """INFO keyspace text → {db: keys}."""
    dbs: dict[int, int] = {}
    for line in info.decode("utf-8", "replace").splitlines():
        name, sep, rest = line.partition(":")
        if not sep or not name.startswith("db") or not name[2:].isdigit():
            continue
        fields = dict(part.partition("=")[::2] for part in rest.split(","))
        keys = fields.get("keys", "0")
        if keys.isdigit() and int(keys) > 0:
            dbs[int(name[2:])] = int(keys)
    return dbs


def _pairs(flat: Sequence[Any]) -> list[tuple[Any, Any]]:
    return list(zip(flat[::2], flat[1::2], strict=True))


def _info_dict(flat: Any) -> dict[str, Any]:
    """A flat [name, value, name, value …] reply (XINFO) → {name: value}."""
    if not isinstance(flat, list):
        return {}
    return {_text(name): value for name, value in _pairs(flat)}


def _score(value: Any) -> float:
    return float(value)


def _format_score(score: float) -> str:
    return str(int(score)) if score.is_integer() and abs(score) < 1e15 else repr(score)


def _count_phrase(count: int, singular: str, plural: str) -> str:
    return f"{count} {singular if count == 1 else plural}"


class TokenBucket:
    """At most `rate` units per second on average, bursts of `burst_seconds` worth. take(n)
    may overdraw the bucket and then sleeps the debt off, so a batch larger than the burst is
    allowed but paid for. rate None: no limit."""

    def __init__(
        self,
        rate: float | None,
        *,
        burst_seconds: float = 0.1,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.rate = rate
        self.capacity = max(1.0, (rate or 0.0) * burst_seconds)
        self._clock = clock
        self._sleep = sleep
        self._tokens = self.capacity
        self._last = clock()

    def take(self, units: int) -> None:
        if self.rate is None or units <= 0:
            return
        now = self._clock()
        self._tokens = min(self.capacity, self._tokens + (now - self._last) * self.rate)
        self._last = now
        self._tokens -= units
        if self._tokens < 0:
            self._sleep(-self._tokens / self.rate)
            self._tokens = 0.0
            self._last = self._clock()


# --------------------------------------------------------------------------- talking to Redis


def _failure_reason(exc: BaseException, timeout: float) -> str:
    if isinstance(exc, redis.AuthenticationError):
        return f"authentication failed: {_first_line(exc)}"
    if isinstance(exc, redis.TimeoutError):
        return f"timed out after {timeout:g}s"
    if isinstance(exc, redis.ConnectionError):
        text = _first_line(exc)
        if "refused" in text.lower():
            return "connection refused"
        return f"connection failed: {text}"
    if isinstance(exc, redis.ResponseError):
        text = _first_line(exc)
        upper = text.upper()
        if upper.startswith(("NOAUTH", "WRONGPASS", "INVALIDPASSWORD")) or (
            "AUTH" in upper and "PASSWORD" in upper
        ):
            return f"authentication failed: {text}"
        return f"server error: {text}"
    if isinstance(exc, OSError):
        return f"connection failed: {exc.strerror or exc}"
    return f"failed: {_first_line(exc)}"


def _first_line(exc: BaseException) -> str:
    lines = str(exc).strip().splitlines()
    return (lines[0] if lines else type(exc).__name__)[:200]


class Side:
    """One server's connection to one db, with the shared rate limiter. Every failure is
    raised as CompareIncomplete naming the role and host:port, never the password."""

    def __init__(
        self,
        role: str,
        endpoint: RedisEndpoint,
        db: int,
        timeout: float,
        tls: TLSConfig | None,
    ) -> None:
        self.role = role
        self.endpoint = endpoint
        self.db = db
        self.timeout = timeout
        self.client = _open_client(endpoint, db, timeout, tls)
        self.version: tuple[int, ...] = ()

    @property
    def name(self) -> str:
        return f"{self.role} {self.endpoint.label}"

    def connect(self) -> None:
        """PING and read the server version: fails early on refused / auth / timeout."""
        self.execute([("PING",)])
        info = self.execute([("INFO", "server")])[0]
        for line in _text(info).splitlines():
            if line.startswith("redis_version:"):
                self.version = tuple(
                    int(p) for p in line.partition(":")[2].strip().split(".") if p.isdigit()
                )

    def execute(self, commands: Sequence[Command]) -> list[Any]:
        """Run `commands` in one pipeline. Replies that are WRONGTYPE errors are returned as
        exception objects (the key changed type meanwhile); any other error reply fails."""
        if not commands:
            return []
        try:
            pipe = self.client.pipeline(transaction=False)
            for command in commands:
                _queue(pipe, command)
            replies = pipe.execute(raise_on_error=False)
        except (redis.RedisError, OSError) as exc:
            raise self._failure(exc) from None
        for command, reply in zip(commands, replies, strict=True):
            if isinstance(reply, redis.ResponseError) and not _is_wrongtype(reply):
                failure = self._failure(reply)
                raise CompareIncomplete(f"{failure} (in {_text(command[0]).upper()})") from None
        return replies

    def _failure(self, exc: BaseException) -> CompareIncomplete:
        message = f"{self.name}: {_failure_reason(exc, self.timeout)}"
        secret = self.endpoint.password
        if secret is not None and secret.get_secret_value():
            message = message.replace(secret.get_secret_value(), "***")
        return CompareIncomplete(message.replace("\n", " "))

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.client.close()


def _queue(pipe: redis.client.Pipeline, command: Command) -> None:
    pipe.execute_command(*command)  # type: ignore[no-untyped-call]


def _is_wrongtype(reply: Any) -> bool:
    return isinstance(reply, redis.ResponseError) and str(reply).startswith("WRONGTYPE")


def _open_client(
    endpoint: RedisEndpoint, db: int, timeout: float, tls: TLSConfig | None
) -> redis.Redis:
    tls_kwargs: dict[str, Any] = {}
    if endpoint.tls and tls is not None:
        tls_kwargs = {
            "ssl_ca_certs": str(tls.ca_file) if tls.ca_file else None,
            "ssl_certfile": str(tls.cert_file) if tls.cert_file else None,
            "ssl_keyfile": str(tls.key_file) if tls.key_file else None,
            "ssl_cert_reqs": "none" if tls.insecure_skip_verify else "required",
            "ssl_check_hostname": not tls.insecure_skip_verify,
        }
    client = redis.Redis(
        host=endpoint.host,
        port=endpoint.port,
        db=db,
        username=endpoint.username,
        password=endpoint.password.get_secret_value() if endpoint.password else None,
        ssl=endpoint.tls,
        socket_timeout=timeout,
        socket_connect_timeout=timeout,
        retry=Retry(NoBackoff(), 0),
        client_name="replwatch-compare",
        decode_responses=False,
        protocol=2,  # redis-py 8 defaults to RESP3 (maps, doubles); RESP2 replies are flat
        **tls_kwargs,
    )
    # raw RESP2 replies: bytes, ints, flat lists (scores as the server wrote them)
    client.response_callbacks.clear()
    return client


# --------------------------------------------------------------------------- tallying


@dataclass
class _Tally:
    """Counters and kept differences of one compare run (owned by compare_databases)."""

    max_kept: int
    checked: int = 0
    equal_keys: int = 0
    missing: int = 0
    extra: int = 0
    different: int = 0
    ignored: int = 0
    kind_counts: dict[str, int] = field(default_factory=lambda: dict.fromkeys(DIFFERENCE_KINDS, 0))
    kept: list[Difference] = field(default_factory=list)
    omitted: int = 0

    def settle(self, db: int, key: bytes, findings: list[Finding]) -> None:
        """The final verdict on one compared source key."""
        if not findings:
            self.equal_keys += 1
            return
        kinds = {kind for kind, _ in findings}
        if "missing" in kinds:
            self.missing += 1
        else:
            self.different += 1
        for kind, detail in findings:
            self._keep(Difference(db, key, kind, detail))

    def settle_extra(self, db: int, key: bytes, target_type: str) -> None:
        self.extra += 1
        self._keep(Difference(db, key, "extra", f"on target only (type {target_type})"))

    def _keep(self, difference: Difference) -> None:
        self.kind_counts[difference.kind] += 1
        if self.max_kept and len(self.kept) >= self.max_kept:
            self.omitted += 1
        else:
            self.kept.append(difference)


# --------------------------------------------------------------------------- one db pair


class _DbComparison:
    """Compares one source db with one target db, adding to a shared tally."""

    def __init__(
        self,
        source: Side,
        target: Side,
        pair: DbPair,
        options: CompareOptions,
        bucket: TokenBucket,
        tally: _Tally,
    ) -> None:
        self.source = source
        self.target = target
        self.pair = pair
        self.options = options
        self.bucket = bucket
        self.tally = tally
        self.batch = options.batch
        if options.rate is not None:
            # a batch costs 2 units per key: keep each one to ~100 ms of the budget
            self.batch = max(1, min(options.batch, int(options.rate / 20)))
        self.ignore = [pattern.encode() for pattern in options.ignore]
        self._suspects: list[bytes] = []
        self._suspects_seen = 0.0
        self._extra_suspects: list[bytes] = []
        self._extra_seen = 0.0

    # -- driving

    def run(self) -> None:
        if self.options.sample is not None:
            keys = self._sample_keys(self.options.sample)
            for start in range(0, len(keys), self.batch):
                self._check_source_batch(keys[start : start + self.batch])
        else:
            for keys in self._scan(self.source):
                self._check_source_batch(keys)
        self._flush_suspects()
        if self.options.sample is None:
            for keys in self._scan(self.target):
                self._check_extra_batch(keys)
            self._flush_extra_suspects()

    def _scan(self, side: Side) -> Iterator[list[bytes]]:
        cursor: bytes | int = b"0"
        while True:
            reply = side.execute([("SCAN", cursor, "COUNT", self.batch)])[0]
            cursor, found = reply[0], list(reply[1])
            wanted = [key for key in found if not self._ignored(key)]
            if side is self.source:
                self.tally.ignored += len(found) - len(wanted)
            for start in range(0, len(wanted), self.batch):
                yield wanted[start : start + self.batch]
            if int(cursor) == 0:
                return

    def _ignored(self, key: bytes) -> bool:
        return any(fnmatch.fnmatchcase(key, pattern) for pattern in self.ignore)

    def _sample_keys(self, wanted: int) -> list[bytes]:
        """`wanted` distinct random source keys (all of them when the db is that small)."""
        size = int(self.source.execute([("DBSIZE",)])[0])
        if size <= wanted:
            return [key for keys in self._scan(self.source) for key in keys]
        chosen: dict[bytes, None] = {}
        attempts = 0
        while len(chosen) < wanted and attempts < 10 * wanted:
            count = min(self.batch, wanted - len(chosen))
            self.bucket.take(count)
            attempts += count
            for key in self.source.execute([("RANDOMKEY",)] * count):
                if key is None:
                    return list(chosen)
                if self._ignored(key):
                    continue
                chosen[key] = None
        return list(chosen)

    # -- source keys: missing / type / value / ttl

    def _check_source_batch(self, keys: list[bytes]) -> None:
        if not keys:
            return
        verdicts = self.compare_keys(keys)
        for key in keys:
            findings = verdicts[key]
            if findings is None:  # gone from the source meanwhile: nothing to compare
                continue
            self.tally.checked += 1
            if findings and self.options.recheck > 0:
                self._suspects.append(key)
                self._suspects_seen = time.monotonic()
            else:
                self.tally.settle(self.pair.source, key, findings)
        if len(self._suspects) >= SUSPECT_BUFFER:
            self._flush_suspects()

    def _flush_suspects(self) -> None:
        pending = self._suspects
        self._suspects = []
        last: dict[bytes, list[Finding] | None] = {}
        for _ in range(self.options.recheck):
            if not pending:
                break
            _sleep_until(self._suspects_seen + self.options.recheck_delay)
            still: list[bytes] = []
            for start in range(0, len(pending), self.batch):
                verdicts = self.compare_keys(pending[start : start + self.batch])
                for key, findings in verdicts.items():
                    if findings:
                        still.append(key)
                        last[key] = findings
            self._suspects_seen = time.monotonic()
            differing = set(still)
            self.tally.equal_keys += sum(1 for key in pending if key not in differing)
            pending = still
        for key in pending:
            self.tally.settle(self.pair.source, key, last.get(key) or [])

    # -- target keys: extra

    def _check_extra_batch(self, keys: list[bytes]) -> None:
        if not keys:
            return
        self.bucket.take(len(keys))
        exists = self.source.execute([("EXISTS", key) for key in keys])
        candidates = [key for key, found in zip(keys, exists, strict=True) if not found]
        if self.options.recheck > 0:
            if candidates:
                self._extra_suspects.extend(candidates)
                self._extra_seen = time.monotonic()
            if len(self._extra_suspects) >= SUSPECT_BUFFER:
                self._flush_extra_suspects()
        else:
            for key, kind in self._confirm_extras(candidates).items():
                self.tally.settle_extra(self.pair.source, key, kind)

    def _flush_extra_suspects(self) -> None:
        pending = self._extra_suspects
        self._extra_suspects = []
        types: dict[bytes, str] = {}
        for _ in range(self.options.recheck):
            if not pending:
                break
            _sleep_until(self._extra_seen + self.options.recheck_delay)
            types = {}
            for start in range(0, len(pending), self.batch):
                types.update(self._confirm_extras(pending[start : start + self.batch]))
            self._extra_seen = time.monotonic()
            pending = list(types)
        for key in pending:
            self.tally.settle_extra(self.pair.source, key, types[key])

    def _confirm_extras(self, keys: list[bytes]) -> dict[bytes, str]:
        """The keys that are on the target and not on the source, with their target type."""
        if not keys:
            return {}
        self.bucket.take(2 * len(keys))
        on_target = self.target.execute([("TYPE", key) for key in keys])
        on_source = self.source.execute([("EXISTS", key) for key in keys])
        return {
            key: _text(kind)
            for key, kind, found in zip(keys, on_target, on_source, strict=True)
            if _text(kind) != "none" and not found
        }

    # -- comparing keys

    def compare_keys(self, keys: Sequence[bytes]) -> dict[bytes, list[Finding] | None]:
        """key → None (not on the source), [] (equal) or what differs."""
        self.bucket.take(2 * len(keys))
        heads: list[Command] = [c for key in keys for c in (("TYPE", key), ("PTTL", key))]
        source_heads = self.source.execute(heads)
        target_heads = self.target.execute(heads)
        verdicts: dict[bytes, list[Finding] | None] = {}
        same_type: list[tuple[bytes, str]] = []
        for index, key in enumerate(keys):
            source_type = _text(source_heads[2 * index])
            target_type = _text(target_heads[2 * index])
            if source_type == "none":
                verdicts[key] = None
            elif target_type == "none":
                verdicts[key] = [("missing", f"missing on target (source type {source_type})")]
            elif source_type != target_type:
                verdicts[key] = [("type", f"type {source_type} vs {target_type}")]
            else:
                findings: list[Finding] = []
                ttl = ttl_finding(
                    int(source_heads[2 * index + 1]),
                    int(target_heads[2 * index + 1]),
                    self.options.ttl_tolerance,
                    self.options.expire_grace or 0.0,
                    self.options.source_expire_grace or 0.0,
                )
                if ttl is not None:
                    findings.append(("ttl", ttl))
                verdicts[key] = findings
                same_type.append((key, source_type))
        for key, detail in self._compare_values(same_type).items():
            found = verdicts[key]
            if detail is not None and found is not None:
                found.insert(0, ("value", detail))
        return verdicts

    def _compare_values(self, keys: list[tuple[bytes, str]]) -> dict[bytes, str | None]:
        """(key, type) with the same type on both servers → a value difference or None."""
        details: dict[bytes, str | None] = {}
        sized = [(key, kind) for key, kind in keys if kind in SIZE_COMMANDS]
        size_commands: list[Command] = [(SIZE_COMMANDS[kind], key) for key, kind in sized]
        source_sizes = self.source.execute(size_commands)
        target_sizes = self.target.execute(size_commands)
        whole = [(key, kind, 0) for key, kind in keys if kind not in SIZE_COMMANDS]
        large: list[tuple[bytes, str, int]] = []
        for (key, kind), source_size, target_size in zip(
            sized, source_sizes, target_sizes, strict=True
        ):
            if _is_wrongtype(source_size) or _is_wrongtype(target_size):
                details[key] = CHANGED
            elif source_size != target_size:
                details[key] = f"{SIZE_NOUNS[kind]} {source_size} vs {target_size}"
            elif kind == "stream" or int(source_size) <= self._small_limit(kind):
                # streams: XINFO always here, the entries too when they fit one chunk
                whole.append((key, kind, int(source_size)))
            else:
                large.append((key, kind, int(source_size)))
        details.update(self._compare_whole(whole, large))
        for key, kind, size in large:
            details[key] = self._compare_large(key, kind, size)
        return details

    def _small_limit(self, kind: str) -> int:
        return self.options.string_chunk_bytes if kind == "string" else self.options.chunk

    def _whole_commands(self, key: bytes, kind: str, size: int) -> list[Command]:
        if kind == "string":
            return [("GET", key)]
        if kind == "list":
            return [("LRANGE", key, 0, -1)]
        if kind == "set":
            return [("SMEMBERS", key)]
        if kind == "hash":
            return [("HGETALL", key)]
        if kind == "zset":
            return [("ZRANGE", key, 0, -1, "WITHSCORES")]
        if kind == "stream":
            meta: list[Command] = [("XINFO", "STREAM", key), ("XINFO", "GROUPS", key)]
            return [*meta, ("XRANGE", key, "-", "+")] if size <= self.options.chunk else meta
        return [("DUMP", key)]

    def _compare_whole(
        self, keys: list[tuple[bytes, str, int]], large: list[tuple[bytes, str, int]]
    ) -> dict[bytes, str | None]:
        """Read whole values (small keys; stream metadata) in one pipeline per side. A stream
        whose entries do not fit one chunk is appended to `large` when its metadata agree."""
        commands = [self._whole_commands(key, kind, size) for key, kind, size in keys]
        flat = [c for group in commands for c in group]
        source_replies = self.source.execute(flat)
        target_replies = self.target.execute(flat)
        details: dict[bytes, str | None] = {}
        offset = 0
        for (key, kind, size), group in zip(keys, commands, strict=True):
            src = source_replies[offset : offset + len(group)]
            dst = target_replies[offset : offset + len(group)]
            offset += len(group)
            if any(_is_wrongtype(r) for r in (*src, *dst)):
                details[key] = CHANGED
            elif kind == "stream":
                detail = compare_stream_meta(src[0], dst[0], src[1], dst[1])
                if detail is None and len(group) == 2:
                    large.append((key, kind, size))  # entries compared in chunks
                    continue
                details[key] = detail or compare_stream_entries(src[2], dst[2])
            else:
                details[key] = compare_whole_value(kind, src[0], dst[0])
        return details

    def _compare_large(self, key: bytes, kind: str, size: int) -> str | None:
        try:
            if kind == "string":
                return self._large_string(key, size)
            if kind == "list":
                return self._large_list(key, size)
            if kind == "set":
                return self._large_set(key)
            if kind == "hash":
                return self._large_hash(key)
            if kind == "zset":
                return self._large_zset(key, size)
            return self._large_stream(key)
        except _KeyChanged:
            return CHANGED

    def _both(self, command: Command) -> tuple[Any, Any]:
        self.bucket.take(2)
        source_reply = self.source.execute([command])[0]
        target_reply = self.target.execute([command])[0]
        if _is_wrongtype(source_reply) or _is_wrongtype(target_reply):
            raise _KeyChanged
        return source_reply, target_reply

    def _large_string(self, key: bytes, size: int) -> str | None:
        step = self.options.string_chunk_bytes
        for start in range(0, size, step):
            src, dst = self._both(("GETRANGE", key, start, start + step - 1))
            index = first_difference(src, dst)
            if index is not None:
                return f"first difference at byte {start + index}"
        return None

    def _large_list(self, key: bytes, size: int) -> str | None:
        step = self.options.chunk
        for start in range(0, size, step):
            src, dst = self._both(("LRANGE", key, start, start + step - 1))
            index = first_difference(src, dst)
            if index is not None:
                return f"first difference at index {start + index}"
        return None

    def _large_set(self, key: bytes) -> str | None:
        """Equal cardinality, so every source member on the target means equal sets."""
        missing = 0
        example: bytes | None = None
        cursor: bytes | int = b"0"
        while True:
            self.bucket.take(2)
            reply = self.source.execute([("SSCAN", key, cursor, "COUNT", self.options.chunk)])[0]
            if _is_wrongtype(reply):
                raise _KeyChanged
            cursor, members = reply[0], list(reply[1])
            for member, found in zip(members, self._members_on_target(key, members), strict=True):
                if not found:
                    missing += 1
                    example = member if example is None else example
            if int(cursor) == 0:
                break
        if example is None:
            return None
        return (
            f"{_count_phrase(missing, 'source member', 'source members')} missing on target "
            f"(e.g. {display_key(example)})"
        )

    def _members_on_target(self, key: bytes, members: list[bytes]) -> list[bool]:
        if not members:
            return []
        if self.target.version >= (6, 2):
            reply = self.target.execute([("SMISMEMBER", key, *members)])[0]
            if _is_wrongtype(reply):
                raise _KeyChanged
            return [bool(found) for found in reply]
        replies = self.target.execute([("SISMEMBER", key, member) for member in members])
        if any(_is_wrongtype(r) for r in replies):
            raise _KeyChanged
        return [bool(found) for found in replies]

    def _large_hash(self, key: bytes) -> str | None:
        """Equal field counts, so every source field equal on the target means equal hashes."""
        problems = 0
        example: str | None = None
        cursor: bytes | int = b"0"
        while True:
            self.bucket.take(2)
            reply = self.source.execute([("HSCAN", key, cursor, "COUNT", self.options.chunk)])[0]
            if _is_wrongtype(reply):
                raise _KeyChanged
            cursor, pairs = reply[0], _pairs(reply[1])
            if pairs:
                values = self.target.execute([("HMGET", key, *(name for name, _ in pairs))])[0]
                if _is_wrongtype(values):
                    raise _KeyChanged
                for (name, value), other in zip(pairs, values, strict=True):
                    if other != value:
                        problems += 1
                        if example is None:
                            example = _field_problem(name, other is None)
            if int(cursor) == 0:
                break
        if example is None:
            return None
        if problems == 1:
            return example
        return f"{problems} fields differ or are missing on target, e.g. {example}"

    def _large_zset(self, key: bytes, size: int) -> str | None:
        step = self.options.chunk
        for start in range(0, size, step):
            src, dst = self._both(("ZRANGE", key, start, start + step - 1, "WITHSCORES"))
            source_pairs = [(m, _score(s)) for m, s in _pairs(src)]
            target_pairs = [(m, _score(s)) for m, s in _pairs(dst)]
            index = first_difference(source_pairs, target_pairs)
            if index is not None:
                return self._describe_zset(key, start + index, source_pairs, target_pairs, index)
        return None

    def _describe_zset(
        self,
        key: bytes,
        rank: int,
        source_pairs: list[tuple[bytes, float]],
        target_pairs: list[tuple[bytes, float]],
        index: int,
    ) -> str:
        def on(side: Side) -> Callable[[bytes], float | None]:
            def score(member: bytes) -> float | None:
                reply = side.execute([("ZSCORE", key, member)])[0]
                if _is_wrongtype(reply):
                    raise _KeyChanged
                return None if reply is None else _score(reply)

            return score

        return describe_zset_difference(
            rank,
            source_pairs[index] if index < len(source_pairs) else None,
            target_pairs[index] if index < len(target_pairs) else None,
            on(self.target),
            on(self.source),
        )

    def _large_stream(self, key: bytes) -> str | None:
        start = b"-"
        while True:
            src, dst = self._both(("XRANGE", key, start, "+", "COUNT", self.options.chunk))
            detail = compare_stream_entries(src, dst)
            if detail is not None:
                return detail
            if len(src) < self.options.chunk:
                return None
            start = next_stream_id(src[-1][0])


class _KeyChanged(Exception):
    """A key changed type while being read in chunks."""


def _sleep_until(deadline: float) -> None:
    delay = deadline - time.monotonic()
    if delay > 0:
        time.sleep(delay)


def _field_problem(name: bytes, missing: bool) -> str:
    if missing:
        return f"field {display_key(name)} missing on target"
    return f"field {display_key(name)} differs"


# --------------------------------------------------------------------------- pure comparisons


def compare_whole_value(kind: str, source: Any, target: Any) -> str | None:
    """Two whole values of the same type (raw replies) → the first difference, or None."""
    if source is None or target is None:
        return None if source is target else CHANGED
    if kind == "string":
        index = first_difference(source, target)
        return None if index is None else f"first difference at byte {index}"
    if kind == "list":
        index = first_difference(source, target)
        return None if index is None else f"first difference at index {index}"
    if kind == "set":
        return _describe_set_difference(set(source), set(target))
    if kind == "hash":
        return _describe_hash_difference(dict(_pairs(source)), dict(_pairs(target)))
    if kind == "zset":
        source_pairs = [(m, _score(s)) for m, s in _pairs(source)]
        target_pairs = [(m, _score(s)) for m, s in _pairs(target)]
        index = first_difference(source_pairs, target_pairs)
        if index is None:
            return None
        return describe_zset_difference(
            index,
            source_pairs[index] if index < len(source_pairs) else None,
            target_pairs[index] if index < len(target_pairs) else None,
            dict(target_pairs).get,
            dict(source_pairs).get,
        )
    # module types (and any type this version does not know): the DUMP payload body
    if source[:-DUMP_TRAILER_BYTES] == target[:-DUMP_TRAILER_BYTES]:
        return None
    return f"DUMP payloads differ ({len(source)} vs {len(target)} bytes)"


def _describe_set_difference(source: set[bytes], target: set[bytes]) -> str | None:
    only_source = sorted(source - target)
    only_target = sorted(target - source)
    parts = []
    if only_source:
        parts.append(
            f"{_count_phrase(len(only_source), 'member', 'members')} missing on target "
            f"(e.g. {display_key(only_source[0])})"
        )
    if only_target:
        parts.append(
            f"{_count_phrase(len(only_target), 'member', 'members')} not on source "
            f"(e.g. {display_key(only_target[0])})"
        )
    return "; ".join(parts) or None


def _describe_hash_difference(source: dict[bytes, bytes], target: dict[bytes, bytes]) -> str | None:
    problems = [
        _field_problem(name, name not in target)
        for name in sorted(source)
        if target.get(name) != source[name]
    ]
    problems += [
        f"field {display_key(name)} not on source" for name in sorted(set(target) - set(source))
    ]
    if not problems:
        return None
    if len(problems) == 1:
        return problems[0]
    return f"{len(problems)} fields differ, e.g. {problems[0]}"


def describe_zset_difference(
    rank: int,
    source_pair: tuple[bytes, float] | None,
    target_pair: tuple[bytes, float] | None,
    score_on_target: Callable[[bytes], float | None],
    score_on_source: Callable[[bytes], float | None],
) -> str:
    """Explain the first rank where two zsets differ, by member and score when possible."""
    if source_pair is not None and target_pair is not None and source_pair[0] == target_pair[0]:
        shown = display_key(source_pair[0])
        return (
            f"member {shown}: score {_format_score(source_pair[1])} vs "
            f"{_format_score(target_pair[1])}"
        )
    if source_pair is not None:
        member, score = source_pair
        other = score_on_target(member)
        if other is None:
            return f"member {display_key(member)} missing on target"
        if other != score:
            return (
                f"member {display_key(member)}: score {_format_score(score)} vs "
                f"{_format_score(other)}"
            )
    if target_pair is not None:
        member, score = target_pair
        other = score_on_source(member)
        if other is None:
            return f"member {display_key(member)} not on source"
        if other != score:
            return (
                f"member {display_key(member)}: score {_format_score(other)} vs "
                f"{_format_score(score)}"
            )
    return f"first difference at rank {rank}"


def compare_stream_meta(
    source_info: Any, target_info: Any, source_groups: Any, target_groups: Any
) -> str | None:
    """XINFO STREAM and XINFO GROUPS replies of both sides → the differences, or None.
    Fields one server does not report (entries-added before 7.0) are not compared."""
    source = _info_dict(source_info)
    target = _info_dict(target_info)
    parts = [
        f"{name} {_text(source[name])} vs {_text(target[name])}"
        for name in STREAM_FIELDS
        if name in source and name in target and source[name] != target[name]
    ]
    source_by_name = {_text(g.get("name")): g for g in map(_info_dict, source_groups or [])}
    target_by_name = {_text(g.get("name")): g for g in map(_info_dict, target_groups or [])}
    for name in sorted(set(source_by_name) - set(target_by_name)):
        parts.append(f"group {name} missing on target")
    for name in sorted(set(target_by_name) - set(source_by_name)):
        parts.append(f"group {name} not on source")
    for name in sorted(set(source_by_name) & set(target_by_name)):
        left, right = source_by_name[name], target_by_name[name]
        for attribute in GROUP_FIELDS:
            a, b = left.get(attribute), right.get(attribute)
            if a is not None and b is not None and a != b:
                parts.append(f"group {name} {attribute} {_text(a)} vs {_text(b)}")
    return "; ".join(parts) or None


def compare_stream_entries(source: Sequence[Any], target: Sequence[Any]) -> str | None:
    """Two XRANGE replies from the same start → the first differing entry, or None."""
    for source_entry, target_entry in zip(source, target, strict=False):
        source_id, target_id = source_entry[0], target_entry[0]
        if source_id == target_id:
            if list(source_entry[1]) != list(target_entry[1]):
                return f"entry {_text(source_id)}: fields differ"
            continue
        if parse_stream_id(source_id) < parse_stream_id(target_id):
            return f"entry {_text(source_id)} missing on target"
        return f"entry {_text(target_id)} not on source"
    if len(source) > len(target):
        return f"entry {_text(source[len(target)][0])} missing on target"
    if len(target) > len(source):
        return f"entry {_text(target[len(source)][0])} not on source"
    return None


# --------------------------------------------------------------------------- the run


@contextlib.contextmanager
def _connected(
    role: str, endpoint: RedisEndpoint, db: int, options: CompareOptions, tls: TLSConfig | None
) -> Iterator[Side]:
    side = Side(role, endpoint, db, options.timeout, tls)
    try:
        side.connect()
        yield side
    finally:
        side.close()


def _recorded_expire_grace(
    role: str, endpoint: RedisEndpoint, options: CompareOptions, tls: TLSConfig | None
) -> float:
    """The largest expire_grace_ms a sync checkpoint in the server's db 0 records, in
    seconds (0 without one): its TTLs may be that much longer than the other side's."""
    grace_ms = 0
    with _connected(role, endpoint, CHECKPOINT_DB, options, tls) as side:
        cursor: Any = b"0"
        while True:
            cursor, keys = side.execute(
                [("SCAN", cursor, "MATCH", CHECKPOINT_PREFIX + "*", "COUNT", 1000)]
            )[0]
            if keys:
                values = side.execute([("HGET", key, "expire_grace_ms") for key in keys])
                for value in values:
                    if isinstance(value, bytes) and value.isdigit():
                        grace_ms = max(grace_ms, int(value))
            if cursor in (b"0", 0, "0"):
                return grace_ms / 1000


def _db_pairs(
    source: RedisEndpoint, target: RedisEndpoint, options: CompareOptions, tls: TLSConfig | None
) -> list[DbPair]:
    if options.db is not None:
        return [DbPair(options.db, options.db)]
    if not options.all_dbs:
        return [DbPair(source.db, target.db)]
    dbs: set[int] = set()
    for role, endpoint in (("source", source), ("target", target)):
        with _connected(role, endpoint, endpoint.db, options, tls) as side:
            dbs.update(parse_keyspace(side.execute([("INFO", "keyspace")])[0]))
    return [DbPair(db, db) for db in sorted(dbs)]


def compare_databases(
    source: RedisEndpoint,
    target: RedisEndpoint,
    options: CompareOptions | None = None,
    *,
    tls: TLSConfig | None = None,
) -> CompareReport:
    """Compare the source's db(s) with the target's. Raises CompareIncomplete when a server
    cannot be reached or fails; never mentions a password."""
    options = options or CompareOptions()
    started = time.monotonic()
    if options.expire_grace is None:
        options = dataclasses.replace(
            options, expire_grace=_recorded_expire_grace("target", target, options, tls)
        )
    if options.source_expire_grace is None:
        options = dataclasses.replace(
            options, source_expire_grace=_recorded_expire_grace("source", source, options, tls)
        )
    bucket = TokenBucket(options.rate)
    tally = _Tally(max_kept=options.max_differences)
    pairs = _db_pairs(source, target, options, tls)
    for pair in pairs:
        with (
            _connected("source", source, pair.source, options, tls) as source_side,
            _connected("target", target, pair.target, options, tls) as target_side,
        ):
            _DbComparison(source_side, target_side, pair, options, bucket, tally).run()
    return CompareReport(
        source=source.label,
        target=target.label,
        dbs=tuple(pairs),
        checked=tally.checked,
        equal_keys=tally.equal_keys,
        missing=tally.missing,
        extra=tally.extra,
        different=tally.different,
        kind_counts=dict(tally.kind_counts),
        sampled=options.sample is not None,
        ignored=tally.ignored,
        differences=tuple(tally.kept),
        omitted=tally.omitted,
        seconds=time.monotonic() - started,
        expire_grace=options.expire_grace or 0.0,
        source_expire_grace=options.source_expire_grace or 0.0,
    )


# --------------------------------------------------------------------------- output


def render_text(report: CompareReport, options: CompareOptions | None = None) -> str:
    """The summary first, then the kept differences."""
    options = options or CompareOptions()
    if not report.dbs:
        where = "no database has keys"
    else:
        where = ", ".join(str(pair) for pair in report.dbs)
    verdict = "EQUAL" if report.equal else "DIFFERENT"
    kinds = ", ".join(
        f"{kind} {report.kind_counts[kind]}"
        for kind in ("type", "value", "ttl")
        if report.kind_counts.get(kind)
    )
    different = f"{report.different} different" + (f" ({kinds})" if kinds else "")
    extra = "extra not checked" if report.sampled else f"{report.extra} extra on target"
    lines = [
        f"source {report.source} vs target {report.target} ({where}): {verdict}",
        f"checked {report.checked} keys in {report.seconds:.2f}s: {report.equal_keys} equal, "
        f"{report.missing} missing on target, {different}; {extra}",
    ]
    if report.sampled:
        lines.append(
            f"note: sampled up to {options.sample} source keys per database; keys on the "
            "target only (extra keys) were not checked"
        )
    if report.expire_grace:
        lines.append(
            f"note: target TTLs may be up to {report.expire_grace:g}s longer than the source's "
            "(the sync task's expire_grace)"
        )
    if report.source_expire_grace:
        lines.append(
            f"note: source TTLs may be up to {report.source_expire_grace:g}s longer than the "
            "target's (the expire_grace of a task that writes the source)"
        )
    if report.ignored:
        lines.append(f"note: {report.ignored} source keys matched --ignore and were skipped")
    if report.differences:
        total = len(report.differences) + report.omitted
        lines.append(f"differences ({total}):")
        for diff in report.differences:
            lines.append(f"  db {diff.db}  {diff.kind:<7}  {display_key(diff.key)}: {diff.detail}")
        if report.omitted:
            lines.append(
                f"  ... {report.omitted} more not shown "
                f"(--max-differences {options.max_differences})"
            )
    return "\n".join(lines)


def render_json(report: CompareReport) -> str:
    return json.dumps(report.as_json(), indent=2)


# --------------------------------------------------------------------------- command line


def add_compare_arguments(parser: argparse.ArgumentParser) -> None:
    """The compare options. Values are validated by options_from_args (one-line errors)."""
    add = parser.add_argument
    add("--source", metavar="URL", help="source redis:// or rediss:// URL (required)")
    add("--target", metavar="URL", help="target redis:// or rediss:// URL (required)")
    add("--tls-ca-file", metavar="FILE", help="rediss://: the CA bundle to verify servers with")
    add("--tls-cert-file", metavar="FILE", help="rediss://: client certificate (PEM)")
    add("--tls-key-file", metavar="FILE", help="rediss://: the client certificate's key (PEM)")
    add(
        "--tls-insecure-skip-verify",
        action="store_true",
        help="rediss://: do not verify the servers' certificates (testing only)",
    )
    add("--db", metavar="N", help="compare db N on both (default: the db in each URL, else 0)")
    add("--all-dbs", action="store_true", help="compare every db that has keys on either side")
    add("--sample", metavar="N", help="check N random source keys per db; skips extra keys")
    add("--rate", metavar="KEYS_PER_S", help="key reads per second over both servers")
    add(
        "--ttl-tolerance",
        metavar="DURATION",
        default="2s",
        help="TTLs closer than this are equal (default: 2s)",
    )
    add(
        "--expire-grace",
        metavar="DURATION",
        help="target TTLs may be this much longer than the source's (a sync task's "
        "expire_grace; default: the largest one a sync checkpoint on the target records)",
    )
    add(
        "--recheck",
        metavar="N",
        default="1",
        help="re-read a differing key N times before reporting it (default: 1)",
    )
    add(
        "--recheck-delay",
        metavar="DURATION",
        default="500ms",
        help="wait this long before each re-read (default: 500ms)",
    )
    add("--batch", metavar="N", default="200", help="keys per SCAN and pipeline (default: 200)")
    add(
        "--chunk",
        metavar="N",
        default="500",
        help="elements per read of a large list/set/hash/zset/stream (default: 500)",
    )
    add("--timeout", metavar="DURATION", default="10s", help="per command (default: 10s)")
    add(
        "--max-differences",
        metavar="N",
        default="100",
        help="differences listed, 0 for all (default: 100; the counts are always exact)",
    )
    add(
        "--ignore",
        metavar="GLOB",
        action="append",
        default=[],
        help="skip keys matching GLOB (repeatable; __replwatch:* is always skipped)",
    )
    add("--json", action="store_true", help="print one JSON object")


def add_compare_parser(
    subparsers: argparse._SubParsersAction[argparse.ArgumentParser],
) -> argparse.ArgumentParser:
    """Add `compare` to the replwatch CLI; its handler is run_compare(args) -> exit code."""
    parser = subparsers.add_parser(
        "compare",
        help="verify that two Redis databases hold the same keys, values and TTLs",
        description=(
            "Compare a source and a target Redis: missing, extra, type, value and TTL "
            "differences. Exit 0 equal, 1 different, 2 usage error, 3 could not complete."
        ),
    )
    add_compare_arguments(parser)
    return parser


def _endpoint(option: str, value: str | None) -> RedisEndpoint:
    if not value:
        raise CompareUsageError(option, "required: a redis:// or rediss:// URL")
    try:
        return parse_redis_url(value)
    except PydanticCustomError as exc:
        raise CompareUsageError(option, str(exc)) from None
    except ValidationError as exc:
        problem = exc.errors()[0]["msg"] if exc.errors() else "invalid URL"
        raise CompareUsageError(option, problem) from None


def _whole_number(option: str, value: str, minimum: int) -> int:
    text = value.strip()
    if not text.isdigit() or int(text) < minimum:
        raise CompareUsageError(option, f"must be a whole number >= {minimum}, got {value!r}")
    return int(text)


def _duration(option: str, value: str, *, positive: bool = False) -> float:
    try:
        seconds = parse_duration(value)
    except PydanticCustomError as exc:
        raise CompareUsageError(option, str(exc)) from None
    if positive and seconds <= 0:
        raise CompareUsageError(option, "must be above 0")
    return seconds


def _rate(value: str | None) -> float | None:
    if value is None:
        return None
    try:
        rate = float(value)
    except ValueError:
        rate = -1.0
    if not rate > 0 or rate == float("inf"):
        raise CompareUsageError(
            "--rate", f"must be a positive number of keys per second, got {value!r}"
        )
    return rate


def options_from_args(
    args: argparse.Namespace,
) -> tuple[RedisEndpoint, RedisEndpoint, CompareOptions]:
    """Validate parsed arguments; raises CompareUsageError naming the option."""
    source = _endpoint("--source", args.source)
    target = _endpoint("--target", args.target)
    db = None if args.db is None else _whole_number("--db", args.db, 0)
    if db is not None and args.all_dbs:
        raise CompareUsageError("--all-dbs", "cannot be combined with --db")
    options = CompareOptions(
        db=db,
        all_dbs=bool(args.all_dbs),
        sample=None if args.sample is None else _whole_number("--sample", args.sample, 1),
        rate=_rate(args.rate),
        ttl_tolerance=_duration("--ttl-tolerance", args.ttl_tolerance),
        expire_grace=(
            None
            if getattr(args, "expire_grace", None) is None
            else _duration("--expire-grace", args.expire_grace)
        ),
        recheck=_whole_number("--recheck", args.recheck, 0),
        recheck_delay=_duration("--recheck-delay", args.recheck_delay),
        batch=_whole_number("--batch", args.batch, 1),
        chunk=_whole_number("--chunk", args.chunk, 1),
        timeout=_duration("--timeout", args.timeout, positive=True),
        max_differences=_whole_number("--max-differences", args.max_differences, 0),
        ignore=(*DEFAULT_IGNORE, *args.ignore),
    )
    return source, target, options


def tls_from_args(args: argparse.Namespace) -> TLSConfig:
    """The --tls-* options as a TLSConfig; a file that cannot be read is a usage error."""
    files = {
        "ca_file": getattr(args, "tls_ca_file", None),
        "cert_file": getattr(args, "tls_cert_file", None),
        "key_file": getattr(args, "tls_key_file", None),
    }
    for name, path in files.items():
        if path is not None and not Path(path).is_file():
            flag = "--tls-" + name.replace("_", "-")
            raise ConfigError(flag, [f"{path}: no such file"])
    if files["key_file"] and not files["cert_file"]:
        raise ConfigError("--tls-key-file", ["given without --tls-cert-file"])
    return TLSConfig(
        ca_file=files["ca_file"],
        cert_file=files["cert_file"],
        key_file=files["key_file"],
        insecure_skip_verify=bool(getattr(args, "tls_insecure_skip_verify", False)),
    )


def run_compare(args: argparse.Namespace) -> int:
    """The `compare` command: prints the report (or one error line) and returns the exit
    code. It handles its own errors, so the caller must not map them to its own codes."""
    try:
        source, target, options = options_from_args(args)
    except ConfigError as exc:
        print(f"replwatch compare: {exc}", file=sys.stderr)
        return EXIT_USAGE
    try:
        tls = tls_from_args(args)
    except ConfigError as exc:
        print(f"replwatch compare: {exc}", file=sys.stderr)
        return EXIT_USAGE
    try:
        report = compare_databases(source, target, options, tls=tls)
    except RedisError as exc:
        print(f"replwatch compare: error: {exc}", file=sys.stderr)
        return EXIT_INCOMPLETE
    print(render_json(report) if args.json else render_text(report, options))
    return EXIT_EQUAL if report.equal else EXIT_DIFFERENT


def main(argv: Sequence[str] | None = None) -> int:
    """Stand-alone entry: `python -m replwatch.sync.compare --source URL --target URL …`."""
    parser = argparse.ArgumentParser(
        prog="replwatch compare",
        description="Verify that two Redis databases hold the same keys, values and TTLs.",
    )
    add_compare_arguments(parser)
    args = parser.parse_args(argv)
    try:
        return run_compare(args)
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
