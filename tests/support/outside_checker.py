"""An independent checker for sync targets (issue 17): compares a target with the ground
truth, a native replica of the source, after both caught up. It does not use replwatch's
own compare package (replwatch/compare/), so a bug there cannot hide one in the
syncer.

Compared, in every db: the key sets (`__replwatch:*` left out), each key's type, its value
by type-specific reads (GET, LRANGE, SMEMBERS, ZRANGE WITHSCORES, HGETALL; for streams
XINFO STREAM, XRANGE, XINFO GROUPS, XPENDING with details and XINFO CONSUMERS per group),
its PTTL (the target may keep a key up to the task's expire_grace longer, never shorter),
hash-field TTLs where both sides hold them, and the function libraries where both sides
have functions. Not compared: what a native replica does not reproduce either (a stream
group's entries-read and lag, idle times, encodings). On the target alone: the task's
checkpoint is in db 0 and no `__replwatch:*` key is in another db.

Every finding is a Difference (db, key, what), readable in a failure message.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import redis

from replwatch.sync.checkpoint import CHECKPOINT_PREFIX, checkpoint_key

from .servers import RedisProcess
from .syncing import TASK

DATABASES = 16  # all of them are compared
REPLWATCH_PREFIX = CHECKPOINT_PREFIX.split(":", 1)[0].encode() + b":"  # b"__replwatch:"
BATCH = 200  # keys per read pipeline
SHOW = 5  # examples per finding


def raw_client(proc: RedisProcess, db: int = 0, timeout: float = 10.0) -> redis.Redis:
    """A RESP2 client whose replies are left as the server sent them (no callbacks)."""
    client = redis.Redis(host=proc.host, port=proc.port, db=db, socket_timeout=timeout, protocol=2)
    client.response_callbacks.clear()
    return client


def scan_keys(client: redis.Redis, match: bytes | None = None) -> list[bytes]:
    """Every key of the client's db (SCAN; on a master it also reclaims expired keys)."""
    keys: list[bytes] = []
    cursor: Any = b"0"
    while True:
        args: list[Any] = ["SCAN", cursor, "COUNT", 1000]
        if match is not None:
            args += ["MATCH", match]
        cursor, batch = client.execute_command(*args)
        keys += batch
        if cursor in (b"0", 0, "0"):
            return keys


KINDS = (
    "checkpoint",
    "missing",
    "extra",
    "type",
    "ttl",
    "value",
    "field-ttl",
    "stream",
    "function",
)


@dataclass(frozen=True)
class Difference:
    db: int | None  # None: not about one database (functions)
    key: bytes | None
    what: str
    kind: str  # one of KINDS

    def __str__(self) -> str:
        if self.db is None:
            return self.what
        where = f"db {self.db}" + ("" if self.key is None else f" key {self.key!r}")
        return f"{where}: {self.what}"


def _pairs(flat: Sequence[Any]) -> dict[bytes, Any]:
    return {flat[i]: flat[i + 1] for i in range(0, len(flat) - 1, 2)}


def _text(value: Any) -> str:
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)


def _short(value: Any, limit: int = 60) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[:limit] + "…"


def _first_difference(a: Sequence[Any], b: Sequence[Any]) -> int:
    return next(
        (i for i, (x, y) in enumerate(zip(a, b, strict=False)) if x != y), min(len(a), len(b))
    )


def _sequence_diff(name: str, truth: Sequence[Any], got: Sequence[Any]) -> str:
    i = _first_difference(truth, got)
    at_truth = _short(truth[i]) if i < len(truth) else "(end)"
    at_got = _short(got[i]) if i < len(got) else "(end)"
    return (
        f"{name} differs: {len(got)} on the target, {len(truth)} on the replica; first "
        f"difference at {i}: target {at_got}, replica {at_truth}"
    )


def _mapping_diff(name: str, truth: dict[Any, Any], got: dict[Any, Any]) -> str:
    missing = [k for k in truth if k not in got]
    extra = [k for k in got if k not in truth]
    changed = [k for k in truth if k in got and truth[k] != got[k]]
    parts = [f"{name} differs ({len(got)} on the target, {len(truth)} on the replica)"]
    if missing:
        shown = {k: truth[k] for k in sorted(missing)[:SHOW]}
        parts.append(f"missing on the target: {_short(shown, 300)}")
    if extra:
        shown = {k: got[k] for k in sorted(extra)[:SHOW]}
        parts.append(f"only on the target: {_short(shown, 300)}")
    for k in sorted(changed)[:SHOW]:
        parts.append(f"{_short(k)}: target {_short(got[k])}, replica {_short(truth[k])}")
    return "; ".join(parts)


@dataclass(frozen=True)
class _Stream:
    info: dict[bytes, Any]
    entries: list[tuple[bytes, tuple[bytes, ...]]]
    groups: dict[bytes, dict[bytes, Any]]
    pending: dict[bytes, dict[bytes, tuple[bytes, int]]]  # group -> id -> (consumer, count)
    consumers: dict[bytes, dict[bytes, int]]  # group -> consumer -> pending


class Checker:
    """Target against ground truth (see the module docstring). `grace_ms`: the task's
    expire_grace; `tolerance_ms`: the time reads on the two sides may be apart; `late_ms`:
    how much later than the replica the task may have applied a relative TTL (Redis before
    7.0 replicates PEXPIRE / SET PX as they were sent, so a target that applies them after a
    lag keeps the key that much longer — never shorter, which stays exact)."""

    def __init__(
        self,
        truth: RedisProcess,
        target: RedisProcess,
        *,
        grace_ms: int,
        tolerance_ms: int = 2000,
        late_ms: int = 0,
        functions: bool = False,
        field_ttls: bool = False,
        task: str = TASK,
    ) -> None:
        self.truth = truth
        self.target = target
        self.grace_ms = grace_ms
        self.tolerance_ms = tolerance_ms
        self.late_ms = late_ms
        self.functions = functions
        self.field_ttls = field_ttls
        self.task = task
        self.keys_compared = 0

    def differences(self) -> list[Difference]:
        found = self._checkpoint_place()
        for db in range(DATABASES):
            with raw_client(self.truth, db) as truth, raw_client(self.target, db) as target:
                found += self._database(db, truth, target)
        if self.functions:
            found += self._functions()
        return found

    # -- the target's own record

    def _checkpoint_place(self) -> list[Difference]:
        found: list[Difference] = []
        key = checkpoint_key(self.task).encode()
        with raw_client(self.target, 0) as client:
            kind = client.execute_command("TYPE", key)
        if kind != b"hash":
            found.append(
                Difference(
                    0, key, f"the task's checkpoint is not in db 0 (TYPE {kind!r})", "checkpoint"
                )
            )
        for db in range(1, DATABASES):
            with raw_client(self.target, db) as client:
                for stray in scan_keys(client, REPLWATCH_PREFIX + b"*"):
                    found.append(
                        Difference(
                            db, stray, "a replwatch key outside db 0 of the target", "checkpoint"
                        )
                    )
        return found

    # -- keys

    def _database(self, db: int, truth: redis.Redis, target: redis.Redis) -> list[Difference]:
        truth_keys = {k for k in scan_keys(truth) if not k.startswith(REPLWATCH_PREFIX)}
        target_keys = {k for k in scan_keys(target) if not k.startswith(REPLWATCH_PREFIX)}
        found = [
            Difference(db, k, "missing on the target (the source has it)", "missing")
            for k in sorted(truth_keys - target_keys)
        ]
        found += [
            Difference(db, k, "on the target only (the source deleted or expired it)", "extra")
            for k in sorted(target_keys - truth_keys)
        ]
        common = sorted(truth_keys & target_keys)
        for start in range(0, len(common), BATCH):
            found += self._batch(db, common[start : start + BATCH], truth, target)
        self.keys_compared += len(common)
        return found

    def _batch(
        self, db: int, keys: list[bytes], truth: redis.Redis, target: redis.Redis
    ) -> list[Difference]:
        heads_truth = _heads(truth, keys)
        heads_target = _heads(target, keys)
        found: list[Difference] = []
        same_type: list[tuple[bytes, bytes]] = []
        for key, (t_kind, t_ttl), (g_kind, g_ttl) in zip(
            keys, heads_truth, heads_target, strict=True
        ):
            if t_kind != g_kind:
                what = f"type {_text(g_kind)} on the target, {_text(t_kind)} on the replica"
                found.append(Difference(db, key, what, "type"))
                continue
            ttl_problem = self._ttl(t_ttl, g_ttl)
            if ttl_problem:
                found.append(Difference(db, key, ttl_problem, "ttl"))
            same_type.append((key, t_kind))
        plain = [(k, kind) for k, kind in same_type if kind != b"stream"]
        truth_values = _values(truth, plain)
        target_values = _values(target, plain)
        for (key, kind), t_value, g_value in zip(plain, truth_values, target_values, strict=True):
            if t_value != g_value:
                if isinstance(t_value, dict) and isinstance(g_value, dict):
                    what = _mapping_diff(_text(kind), t_value, g_value)
                elif isinstance(t_value, list) and isinstance(g_value, list):
                    what = _sequence_diff(_text(kind), t_value, g_value)
                else:
                    what = (
                        f"{_text(kind)} differs: target {_short(g_value)}, "
                        f"replica {_short(t_value)}"
                    )
                found.append(Difference(db, key, what, "value"))
            elif kind == b"hash" and self.field_ttls and isinstance(t_value, dict) and t_value:
                found += self._field_ttls(db, key, list(t_value), truth, target)
        for key, kind in same_type:
            if kind == b"stream":
                found += [
                    Difference(db, key, what, "stream")
                    for what in _stream_diff(_stream(truth, key), _stream(target, key))
                ]
        return found

    def _ttl(self, truth: int, got: int) -> str | None:
        """None when the target's PTTL fits: -1 for -1; else within the window."""
        if truth < 0 or got < 0:
            if truth == got:
                return None
            if truth == -1:
                return f"PTTL {got} ms on the target, but no TTL on the replica"
            return f"no TTL on the target, PTTL {truth} ms on the replica"
        low = truth - self.tolerance_ms
        high = truth + self.grace_ms + self.tolerance_ms + self.late_ms
        if low <= got <= high:
            return None
        late = f", late {self.late_ms}" if self.late_ms else ""
        return (
            f"PTTL {got} ms on the target, {truth} ms on the replica (allowed {low}..{high}: "
            f"tolerance {self.tolerance_ms}, grace {self.grace_ms}{late})"
        )

    def _field_ttls(
        self, db: int, key: bytes, fields: list[bytes], truth: redis.Redis, target: redis.Redis
    ) -> list[Difference]:
        t_ttls = truth.execute_command("HPTTL", key, "FIELDS", len(fields), *fields)
        g_ttls = target.execute_command("HPTTL", key, "FIELDS", len(fields), *fields)
        found = []
        for name, t, g in zip(fields, t_ttls, g_ttls, strict=True):
            problem = self._ttl(int(t), int(g))
            if problem:
                found.append(Difference(db, key, f"field {name!r}: {problem}", "field-ttl"))
        return found

    # -- functions

    def _functions(self) -> list[Difference]:
        truth, got = _libraries(self.truth), _libraries(self.target)
        found = []
        for name in sorted(truth.keys() | got.keys()):
            if name not in got:
                what = f"function library {name!r} missing on the target"
            elif name not in truth:
                what = f"function library {name!r} only on the target"
            elif truth[name] != got[name]:
                what = (
                    f"function library {name!r} differs: target {_short(got[name], 200)}, "
                    f"replica {_short(truth[name], 200)}"
                )
            else:
                continue
            found.append(Difference(None, None, what, "function"))
        return found


def _heads(client: redis.Redis, keys: list[bytes]) -> list[tuple[bytes, int]]:
    pipe = client.pipeline(transaction=False)
    for key in keys:
        pipe.execute_command("TYPE", key)
        pipe.execute_command("PTTL", key)
    replies = pipe.execute()
    return [(replies[i], int(replies[i + 1])) for i in range(0, len(replies), 2)]


_READS = {
    b"string": ("GET",),
    b"list": ("LRANGE", 0, -1),
    b"set": ("SMEMBERS",),
    b"zset": ("ZRANGE", 0, -1, "WITHSCORES"),
    b"hash": ("HGETALL",),
}


def _values(client: redis.Redis, keys: list[tuple[bytes, bytes]]) -> list[Any]:
    """Each key's value by its type, in a comparable form (scores as floats: 6.2 and 7.0
    print them differently)."""
    pipe = client.pipeline(transaction=False)
    for key, kind in keys:
        read = _READS.get(kind)
        if read is None:
            raise AssertionError(f"key {key!r} has a type the checker does not know: {kind!r}")
        pipe.execute_command(read[0], key, *read[1:])
    out: list[Any] = []
    for (_, kind), reply in zip(keys, pipe.execute(), strict=True):
        if kind == b"set":
            out.append(sorted(reply))
        elif kind == b"zset":
            out.append([(reply[i], float(reply[i + 1])) for i in range(0, len(reply), 2)])
        elif kind == b"hash":
            out.append(_pairs(reply))
        else:
            out.append(reply)
    return out


# ----------------------------------------------------------------------------- streams


def _stream(client: redis.Redis, key: bytes) -> _Stream:
    info = _pairs(client.execute_command("XINFO", "STREAM", key))
    entries = [(e[0], tuple(e[1] or ())) for e in client.execute_command("XRANGE", key, "-", "+")]
    groups = {}
    pending: dict[bytes, dict[bytes, tuple[bytes, int]]] = {}
    consumers: dict[bytes, dict[bytes, int]] = {}
    for raw in client.execute_command("XINFO", "GROUPS", key):
        group = _pairs(raw)
        name = group[b"name"]
        groups[name] = group
        rows = client.execute_command("XPENDING", key, name, "-", "+", 1_000_000)
        pending[name] = {row[0]: (row[1], int(row[3])) for row in rows}
        consumers[name] = {
            c[b"name"]: int(c[b"pending"])
            for c in map(_pairs, client.execute_command("XINFO", "CONSUMERS", key, name))
        }
    return _Stream(info, entries, groups, pending, consumers)


def _stream_diff(truth: _Stream, got: _Stream) -> Iterator[str]:
    """What differs, stream by stream: what a native replica reproduces (not entries-read,
    lag or idle times; max-deleted-entry-id and entries-added when both report them)."""
    for name in (b"length", b"last-generated-id", b"max-deleted-entry-id", b"entries-added"):
        if name in truth.info and name in got.info and truth.info[name] != got.info[name]:
            yield (
                f"stream {_text(name)}: {_text(got.info[name])} on the target, "
                f"{_text(truth.info[name])} on the replica"
            )
    if truth.entries != got.entries:
        yield _mapping_diff("stream entries", dict(truth.entries), dict(got.entries))
    for group in sorted(truth.groups.keys() | got.groups.keys()):
        if group not in got.groups:
            yield f"stream group {group!r} missing on the target"
            continue
        if group not in truth.groups:
            yield f"stream group {group!r} only on the target"
            continue
        t, g = truth.groups[group], got.groups[group]
        for name in (b"last-delivered-id", b"pending", b"consumers"):
            if t.get(name) != g.get(name):
                yield (
                    f"stream group {group!r} {_text(name)}: {_text(g.get(name))} on the target, "
                    f"{_text(t.get(name))} on the replica"
                )
        if truth.pending[group] != got.pending[group]:
            yield _mapping_diff(
                f"stream group {group!r} pending entries (id: consumer, deliveries)",
                truth.pending[group],
                got.pending[group],
            )
        if truth.consumers[group] != got.consumers[group]:
            yield _mapping_diff(
                f"stream group {group!r} consumers (name: pending)",
                truth.consumers[group],
                got.consumers[group],
            )


# ----------------------------------------------------------------------------- functions


def _libraries(proc: RedisProcess) -> dict[bytes, tuple[Any, ...]]:
    """FUNCTION LIST WITHCODE as library -> (engine, code, ((function, flags), ...))."""
    with raw_client(proc) as client:
        reply = client.execute_command("FUNCTION", "LIST", "WITHCODE")
    out: dict[bytes, tuple[Any, ...]] = {}
    for raw in reply:
        lib = _pairs(raw)
        functions = tuple(
            sorted(
                (f[b"name"], tuple(sorted(f[b"flags"] or ())))
                for f in map(_pairs, lib[b"functions"])
            )
        )
        out[lib[b"library_name"]] = (lib[b"engine"], lib[b"library_code"], functions)
    return out
