"""A snapshot key as writes for the target: one RESTORE when the target understands the
payload, else plain commands (older targets, and keys too big for one RESTORE) split into
chunks. Pure: no I/O; the encoded bytes go into the writer's batches.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import cast

from replwatch.observe.connection import encode_command
from replwatch.sync.dump import RestoreTarget, build_dump_payload
from replwatch.sync.rdb import (
    ChunkedValue,
    KeyEntry,
    StreamID,
    StreamValue,
    decode_serialized_value,
)

Args = Sequence[bytes | str | int | float]

SET_COMMAND = b"*3\r\n$3\r\nSET\r\n$%d\r\n%b\r\n$%d\r\n%b\r\n"
_SET_PXAT = b"*5\r\n$3\r\nSET\r\n$%d\r\n%b\r\n$%d\r\n%b\r\n$4\r\nPXAT\r\n$%d\r\n%b\r\n"
_RESTORE = b"*5\r\n$7\r\nRESTORE\r\n$%d\r\n%b\r\n$1\r\n0\r\n$%d\r\n%b\r\n$7\r\nREPLACE\r\n"
_RESTORE_AT = (
    b"*6\r\n$7\r\nRESTORE\r\n$%d\r\n%b\r\n$%d\r\n%b\r\n$%d\r\n%b\r\n"
    b"$7\r\nREPLACE\r\n$6\r\nABSTTL\r\n"
)
CHUNK_ELEMENTS = 512
_CHUNK_VERBS = {"list": b"RPUSH", "set": b"SADD", "zset": b"ZADD", "hash": b"HSET"}
CHUNK_BYTES = 1024 * 1024
# called with what a stream's plain commands cannot carry (plain_commands' on_gaps)
GapSink = Callable[[tuple["StreamGap", ...]], None]


@dataclass(frozen=True, slots=True)
class TargetCaps:
    """What the target understands, from its INFO server."""

    restore: RestoreTarget
    set_pxat: bool  # SET … PXAT (6.2+)
    stream_ids: bool  # XSETID ENTRIESADDED/MAXDELETEDID, XGROUP CREATE ENTRIESREAD (7.0+)
    hash_field_ttl: bool  # HPEXPIREAT (Redis 7.4+, Valkey 9.0+)

    @classmethod
    def of(cls, restore: RestoreTarget) -> TargetCaps:
        v = tuple(restore.version)
        if restore.valkey:
            return cls(restore, True, True, v >= (9, 0))
        return cls(restore, v >= (6, 2), v >= (7, 0), v >= (7, 4))


def _chunks(items: Sequence[bytes], per: int) -> Iterator[Sequence[bytes]]:
    """Runs of at most `per` items and about CHUNK_BYTES."""
    start = 0
    size = 0
    for i, item in enumerate(items):
        size += len(item)
        if i - start + 1 >= per or size >= CHUNK_BYTES:
            yield items[start : i + 1]
            start, size = i + 1, 0
    if start < len(items):
        yield items[start:]


def _score(score: float) -> bytes:
    if score != score:  # NaN cannot be stored; never in an RDB either
        raise ValueError("NaN score")
    return repr(score).encode()


def restore_command(entry: KeyEntry, version: int, grace_ms: int = 0) -> bytes:
    """RESTORE key ttl payload REPLACE [ABSTTL], encoded by one format operation; the
    expiry `grace_ms` later (a task's expire_grace: replwatch/sync/expiry.py)."""
    assert entry.raw is not None
    payload = build_dump_payload(entry.raw, version)
    key = entry.key
    if entry.expire_ms:
        at = b"%d" % (entry.expire_ms + grace_ms)
        return _RESTORE_AT % (len(key), key, len(at), at, len(payload), payload)
    return _RESTORE % (len(key), key, len(payload), payload)


def key_writes(
    entry: KeyEntry,
    caps: TargetCaps,
    source_valkey: bool,
    replace: bool,
    chunk: int = CHUNK_ELEMENTS,
    use_restore: bool = True,
    on_gaps: GapSink | None = None,
    grace_ms: int = 0,
) -> tuple[bytes, int]:
    """The encoded writes for one key and how many replies they will get. `replace`: the
    key may exist on the target already (DEL it first when writing plain commands);
    `use_restore`: False writes plain commands even where RESTORE would do (module values,
    which have no commands, still go by RESTORE); `on_gaps`: see plain_commands; the key's
    and its hash fields' expiry `grace_ms` later (a task's expire_grace)."""
    if entry.kind == "string":
        key, value = entry.key, entry.value
        assert isinstance(value, bytes)
        # SET encoded by one format operation: most keys of most datasets are strings
        out = SET_COMMAND % (len(key), key, len(value), value)
        if entry.expire_ms:
            at = b"%d" % (entry.expire_ms + grace_ms)
            if caps.set_pxat:
                return _SET_PXAT % (len(key), key, len(value), value, len(at), at), 1
            return out + encode_command((b"PEXPIREAT", key, at)), 2
        return out, 1
    if entry.raw is not None and (use_restore or entry.kind == "module"):
        version = caps.restore.payload_version_for(entry.rdb_type, source_valkey=source_valkey)
        if version is not None and not entry.field_expiry:
            return restore_command(entry, version, grace_ms), 1
    if entry.value is None and entry.raw is not None:  # not decoded by the parser
        decoded = decode_serialized_value(
            entry.raw, rdb_version=caps.restore.rdb_version, valkey=source_valkey
        )
        entry = dataclasses.replace(entry, value=decoded.value, field_expiry=decoded.field_expiry)
    commands = list(plain_commands(entry, caps, chunk, on_gaps, grace_ms))
    if replace:
        commands.insert(0, (b"DEL", entry.key))
    return b"".join(encode_command(c) for c in commands), len(commands)


def plain_commands(
    entry: KeyEntry,
    caps: TargetCaps,
    chunk: int = CHUNK_ELEMENTS,
    on_gaps: GapSink | None = None,
    grace_ms: int = 0,
) -> Iterator[Args]:
    """The key as ordinary write commands (then its TTL, and its hash fields' TTLs, each
    `grace_ms` later). `on_gaps` is called once, before the first command, with what a
    stream's commands cannot carry (stream_gaps), when that is anything: the caller logs it
    once per key."""
    key = entry.key
    value = entry.value
    kind = entry.kind
    if isinstance(value, ChunkedValue):  # a big collection, read while it is written
        verb = _CHUNK_VERBS[kind]
        for piece in value:
            if kind == "zset":
                yield (verb, key, *[x for m, sc in piece for x in (_score(sc), m)])
            elif kind == "hash":
                yield (verb, key, *[x for pair in piece for x in pair])
            else:
                yield (verb, key, *piece)
        if entry.expire_ms:
            yield (b"PEXPIREAT", key, entry.expire_ms + grace_ms)
        return
    if kind == "string":
        assert isinstance(value, bytes)
        yield (b"SET", key, value)
    elif kind == "list":
        for part in _chunks(cast(list[bytes], value), chunk):
            yield (b"RPUSH", key, *part)
    elif kind == "set":
        for part in _chunks(cast(list[bytes], value), chunk):
            yield (b"SADD", key, *part)
    elif kind == "zset":
        flat: list[bytes] = []
        for member, score in cast(list[tuple[bytes, float]], value):
            flat += (_score(score), member)
        for part in _chunks(flat, chunk * 2):
            yield (b"ZADD", key, *part)
    elif kind == "hash":
        flat = []
        for f, v in cast(list[tuple[bytes, bytes]], value):
            flat += (f, v)
        for part in _chunks(flat, chunk * 2):
            yield (b"HSET", key, *part)
        if entry.field_expiry and caps.hash_field_ttl:
            for f, at in entry.field_expiry:
                yield (b"HPEXPIREAT", key, at + grace_ms, b"FIELDS", 1, f)
    elif kind == "stream":
        assert isinstance(value, StreamValue)
        if on_gaps is not None and (gaps := stream_gaps(value, caps)):
            on_gaps(gaps)
        yield from _stream_commands(key, value, caps, chunk)
    else:
        raise ValueError(f"a {kind} value cannot be written as plain commands")
    if entry.expire_ms:
        yield (b"PEXPIREAT", key, entry.expire_ms + grace_ms)


def _stream_commands(
    key: bytes, stream: StreamValue, caps: TargetCaps, chunk: int = CHUNK_ELEMENTS
) -> Iterator[Args]:
    """A stream as commands, consumer groups and every pending entry included.

    XCLAIM … FORCE creates a pending entry only for a message the stream holds, and the
    source's PEL also names messages deleted (XDEL) or trimmed since they were delivered. So
    each such ID gets a placeholder entry, written in ID order among the real ones; the
    pending entries are claimed; then the placeholders go: those before the first real entry
    by an exact XTRIM (which leaves max-deleted-entry-id alone, as the source's trimming did),
    the others by XDEL (the source XDELed them too). XSETID comes last: it restores the last
    ID and, on 7.0+, entries-added and max-deleted-entry-id, which the placeholders moved."""
    plan = _plan_stream(stream, caps)
    entries = stream.entries
    placeholders = plan.placeholders
    at = 0
    for entry in entries:
        while at < len(placeholders) and _id(placeholders[at]) < _id(entry.id):
            yield (b"XADD", key, placeholders[at].encode(), *_PLACEHOLDER_FIELDS)
            at += 1
        flat: list[bytes] = []
        for f, v in entry.fields:
            flat += (f, v)
        yield (b"XADD", key, entry.id.encode(), *flat)
    for placeholder in placeholders[at:]:
        yield (b"XADD", key, placeholder.encode(), *_PLACEHOLDER_FIELDS)
    zero = (stream.last_id.ms, stream.last_id.seq) == (0, 0)
    if not entries and not placeholders:
        if zero:  # an empty stream that never had an entry: only XGROUP … MKSTREAM makes one
            yield (b"XGROUP", b"CREATE", key, b"__replwatch_seed", b"0", b"MKSTREAM")
            yield (b"XGROUP", b"DESTROY", key, b"__replwatch_seed")
        else:  # one entry at the last id, trimmed away at once
            yield (b"XADD", key, b"MAXLEN", 0, stream.last_id.encode(), b"-", b"-")
    for group in stream.groups:
        create: list[bytes | int] = [b"XGROUP", b"CREATE", key, group.name, group.last_id.encode()]
        if caps.stream_ids and group.entries_read is not None and group.entries_read >= 0:
            create += [b"ENTRIESREAD", group.entries_read]
        yield tuple(create)
        for consumer in group.consumers:
            yield (b"XGROUP", b"CREATECONSUMER", key, group.name, consumer.name)
        for pending in group.pending:
            if pending.consumer is None or not plan.carries(pending.id):
                continue  # counted by stream_gaps
            yield (
                b"XCLAIM",
                key,
                group.name,
                pending.consumer,
                0,
                pending.id.encode(),
                b"TIME",
                pending.delivery_time_ms,
                b"RETRYCOUNT",
                pending.delivery_count,
                b"FORCE",
                b"JUSTID",
            )
    deleted = placeholders[plan.head :]
    for part in _chunks([p.encode() for p in deleted], chunk):
        yield (b"XDEL", key, *part)
    if plan.head:
        yield (b"XTRIM", key, b"MAXLEN", len(entries))
    if not zero:
        setid: list[bytes | int] = [b"XSETID", key, stream.last_id.encode()]
        if caps.stream_ids:
            added = stream.length if stream.entries_added is None else stream.entries_added
            # 7.0 ignores MAXDELETEDID 0-0 (stream_gaps reports what that leaves)
            deleted_id = stream.max_deleted_id or StreamID(0, 0)
            setid += [b"ENTRIESADDED", added, b"MAXDELETEDID", deleted_id.encode()]
        yield tuple(setid)


# a placeholder entry's one field (XADD needs one); placeholders never outlive the key's writes
_PLACEHOLDER_FIELDS = (b"__replwatch", b"placeholder")


def _id(stream_id: StreamID) -> tuple[int, int]:
    return stream_id.ms, stream_id.seq


@dataclass(frozen=True, slots=True)
class _StreamPlan:
    """Which pending IDs a stream's writes carry and where placeholders go: `placeholders`
    (ascending) are the carried pending IDs the stream has no entry for, the first `head` of
    them before its first entry (all of them when it has none); `dropped_above`: pending IDs
    above the last ID, which a 7.0+ target cannot hold (its XSETID refuses a last ID under
    max-deleted-entry-id)."""

    placeholders: tuple[StreamID, ...]
    head: int
    dropped_above: frozenset[StreamID]

    def carries(self, stream_id: StreamID) -> bool:
        return stream_id not in self.dropped_above


def _plan_stream(stream: StreamValue, caps: TargetCaps) -> _StreamPlan:
    last = _id(stream.last_id)
    pending = {p.id for g in stream.groups for p in g.pending if p.consumer is not None}
    above = frozenset(i for i in pending if caps.stream_ids and _id(i) > last)
    live = {e.id for e in stream.entries}
    placeholders = tuple(sorted(pending - live - above, key=_id))
    if stream.entries:
        first = _id(stream.entries[0].id)
        head = sum(1 for p in placeholders if _id(p) < first)
    else:
        head = len(placeholders)
    return _StreamPlan(placeholders, head, above)


@dataclass(frozen=True, slots=True)
class StreamGap:
    """Something of a source stream that its plain-command writes cannot reproduce on the
    target: `pending_dropped` pending entries of `group` left out (0: a field differs),
    `why` in words. Consumers' seen/active times are never carried (any command that
    recreates a consumer stamps the target's clock) and are not listed."""

    group: bytes | None  # None: the stream itself
    pending_dropped: int
    why: str


def stream_gaps(stream: StreamValue, caps: TargetCaps) -> tuple[StreamGap, ...]:
    """What `plain_commands` leaves out of this stream on a target with these caps (empty:
    nothing that XINFO STREAM FULL shows, bar consumer times). Computed from the same plan
    as the commands, so the two never disagree. Pure; call it once per key to log it."""
    plan = _plan_stream(stream, caps)
    gaps: list[StreamGap] = []
    for group in stream.groups:
        orphans = sum(1 for p in group.pending if p.consumer is None)
        if orphans:
            gaps.append(StreamGap(group.name, orphans, "pending entries owned by no consumer"))
        above = sum(
            1 for p in group.pending if p.consumer is not None and p.id in plan.dropped_above
        )
        if above:
            gaps.append(
                StreamGap(
                    group.name,
                    above,
                    f"pending entries above the stream's last ID {stream.last_id} (a 7.0+ "
                    "target cannot hold them)",
                )
            )
    deleted = plan.placeholders[plan.head :]
    if caps.stream_ids and deleted and stream.max_deleted_id == StreamID(0, 0):
        gaps.append(
            StreamGap(
                None,
                0,
                f"max-deleted-entry-id reads {deleted[-1]} on the target, 0-0 on the source "
                "(XSETID cannot set 0-0)",
            )
        )
    return tuple(gaps)


def describe_stream_gaps(key: bytes, gaps: Sequence[StreamGap]) -> str:
    """One line for a log: the key, then per gap its group and how many pending entries
    were dropped, e.g. `stream b'orders': group b'g': 2 pending entries dropped (…)`."""
    parts = []
    for gap in gaps:
        where = "" if gap.group is None else f"group {gap.group[:100]!r}: "
        dropped = f"{gap.pending_dropped} pending entries dropped " if gap.pending_dropped else ""
        parts.append(f"{where}{dropped}({gap.why})" if dropped else f"{where}{gap.why}")
    return f"stream {key[:100]!r}: " + "; ".join(parts)
