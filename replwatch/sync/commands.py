"""A snapshot key as writes for the target: one RESTORE when the target understands the
payload, else plain commands (older targets, and keys too big for one RESTORE) split into
chunks. Pure: no I/O; the encoded bytes go into the writer's batches.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import cast

from replwatch.observe.connection import encode_command
from replwatch.sync.dump import RestoreTarget, build_dump_payload
from replwatch.sync.rdb import ChunkedValue, KeyEntry, StreamValue, decode_serialized_value

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


def restore_command(entry: KeyEntry, version: int) -> bytes:
    """RESTORE key ttl payload REPLACE [ABSTTL], encoded by one format operation."""
    assert entry.raw is not None
    payload = build_dump_payload(entry.raw, version)
    key = entry.key
    if entry.expire_ms:
        at = b"%d" % entry.expire_ms
        return _RESTORE_AT % (len(key), key, len(at), at, len(payload), payload)
    return _RESTORE % (len(key), key, len(payload), payload)


def key_writes(
    entry: KeyEntry,
    caps: TargetCaps,
    source_valkey: bool,
    replace: bool,
    chunk: int = CHUNK_ELEMENTS,
    use_restore: bool = True,
) -> tuple[bytes, int]:
    """The encoded writes for one key and how many replies they will get. `replace`: the
    key may exist on the target already (DEL it first when writing plain commands);
    `use_restore`: False writes plain commands even where RESTORE would do (module values,
    which have no commands, still go by RESTORE)."""
    if entry.kind == "string":
        key, value = entry.key, entry.value
        assert isinstance(value, bytes)
        # SET encoded by one format operation: most keys of most datasets are strings
        out = SET_COMMAND % (len(key), key, len(value), value)
        if entry.expire_ms:
            at = b"%d" % entry.expire_ms
            if caps.set_pxat:
                return _SET_PXAT % (len(key), key, len(value), value, len(at), at), 1
            return out + encode_command((b"PEXPIREAT", key, at)), 2
        return out, 1
    if entry.raw is not None and (use_restore or entry.kind == "module"):
        version = caps.restore.payload_version_for(entry.rdb_type, source_valkey=source_valkey)
        if version is not None and not entry.field_expiry:
            return restore_command(entry, version), 1
    if entry.value is None and entry.raw is not None:  # not decoded by the parser
        decoded = decode_serialized_value(
            entry.raw, rdb_version=caps.restore.rdb_version, valkey=source_valkey
        )
        entry = dataclasses.replace(entry, value=decoded.value, field_expiry=decoded.field_expiry)
    commands = list(plain_commands(entry, caps, chunk))
    if replace:
        commands.insert(0, (b"DEL", entry.key))
    return b"".join(encode_command(c) for c in commands), len(commands)


def plain_commands(
    entry: KeyEntry, caps: TargetCaps, chunk: int = CHUNK_ELEMENTS
) -> Iterator[Args]:
    """The key as ordinary write commands (then its TTL)."""
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
            yield (b"PEXPIREAT", key, entry.expire_ms)
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
                yield (b"HPEXPIREAT", key, at, b"FIELDS", 1, f)
    elif kind == "stream":
        assert isinstance(value, StreamValue)
        yield from _stream_commands(key, value, caps)
    else:
        raise ValueError(f"a {kind} value cannot be written as plain commands")
    if entry.expire_ms:
        yield (b"PEXPIREAT", key, entry.expire_ms)


def _stream_commands(key: bytes, stream: StreamValue, caps: TargetCaps) -> Iterator[Args]:
    for entry in stream.entries:
        flat: list[bytes] = []
        for f, v in entry.fields:
            flat += (f, v)
        yield (b"XADD", key, entry.id.encode(), *flat)
    zero = (stream.last_id.ms, stream.last_id.seq) == (0, 0)
    if not stream.entries:
        if zero:  # an empty stream that never had an entry: only XGROUP … MKSTREAM makes one
            yield (b"XGROUP", b"CREATE", key, b"__replwatch_seed", b"0", b"MKSTREAM")
            yield (b"XGROUP", b"DESTROY", key, b"__replwatch_seed")
        else:  # one entry at the last id, trimmed away at once
            yield (b"XADD", key, b"MAXLEN", 0, stream.last_id.encode(), b"-", b"-")
    if not zero:
        setid: list[bytes | int] = [b"XSETID", key, stream.last_id.encode()]
        if caps.stream_ids and stream.entries_added is not None and stream.max_deleted_id:
            setid += [
                b"ENTRIESADDED",
                stream.entries_added,
                b"MAXDELETEDID",
                stream.max_deleted_id.encode(),
            ]
        yield tuple(setid)
    for group in stream.groups:
        create: list[bytes | int] = [b"XGROUP", b"CREATE", key, group.name, group.last_id.encode()]
        if caps.stream_ids and group.entries_read is not None and group.entries_read >= 0:
            create += [b"ENTRIESREAD", group.entries_read]
        yield tuple(create)
        for consumer in group.consumers:
            yield (b"XGROUP", b"CREATECONSUMER", key, group.name, consumer.name)
        for pending in group.pending:
            if pending.consumer is None:
                continue
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
