"""Reading keys from both servers for a compare: the I/O, and no verdicts.

Per batch of keys and per server there are three pipelined round trips: TYPE + PTTL of every
key, then the sizes (STRLEN, LLEN, SCARD, HLEN, ZCARD, XLEN), then the whole values of keys
of at most one chunk. A larger value is read chunk by chunk, lazily (the rules stop reading
at the first difference), so memory stays bounded per key and no reply is huge: strings by
GETRANGE, lists by LRANGE ranges, zsets by ZRANGE ranges with scores, sets by SSCAN on the
source + SMISMEMBER on the target, hashes by HSCAN on the source + HMGET on the target,
streams by XINFO STREAM, XINFO GROUPS and XRANGE chunks. Any other type (modules) is read by
DUMP. Chunks bound the number of elements per reply, not their size: a hash of 500 fields of
100 MB each is still read in one HGETALL.

Every read is charged to the shared rate limit: comparing a key costs 2 (source + target),
each further chunk of a large key 2 more, checking a target key for being extra 1 (EXISTS on
the source; 2 more to confirm one that is). A reply that is a WRONGTYPE error means the key
changed type meanwhile: a batched read returns None for that key, a chunked one raises
KeyChanged.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from types import MappingProxyType
from typing import Any, Final, NamedTuple

from replwatch.compare.connection import Command, Side, is_wrongtype
from replwatch.compare.display import reply_text
from replwatch.compare.ratelimit import TokenBucket
from replwatch.compare.rules import KeyHead, ReadPlan, is_extra
from replwatch.compare.value_rules import ScoreLookup, next_stream_id, reply_pairs

# the size command of each core type (rules.has_size: the same types)
SIZE_COMMANDS: Final[Mapping[str, str]] = MappingProxyType(
    {
        "string": "STRLEN",
        "list": "LLEN",
        "set": "SCARD",
        "zset": "ZCARD",
        "hash": "HLEN",
        "stream": "XLEN",
    }
)

BothReplies = tuple[list[Any], list[Any]]  # what the source and the target replied


class KeyChanged(Exception):
    """A key changed type while being read in chunks."""


class ValueRead(NamedTuple):
    """A value to read: its key, type, size (the same on both sides) and how to read it."""

    key: bytes
    kind: str
    size: int
    plan: ReadPlan


class PairReader:
    """Reads keys from the source and the target (source first), charging the rate limit."""

    def __init__(
        self, source: Side, target: Side, bucket: TokenBucket, chunk: int, string_chunk_bytes: int
    ) -> None:
        self.source = source
        self.target = target
        self.bucket = bucket
        self.chunk = chunk
        self.string_chunk_bytes = string_chunk_bytes

    # -- batched reads

    def heads(self, keys: Sequence[bytes]) -> list[tuple[KeyHead, KeyHead]]:
        """TYPE and PTTL of every key on both sides."""
        self.bucket.take(2 * len(keys))
        commands: list[Command] = [c for key in keys for c in (("TYPE", key), ("PTTL", key))]
        source, target = self._on_both(commands)
        return [
            (
                KeyHead(reply_text(source[2 * i]), int(source[2 * i + 1])),
                KeyHead(reply_text(target[2 * i]), int(target[2 * i + 1])),
            )
            for i in range(len(keys))
        ]

    def sizes(self, keys: Sequence[tuple[bytes, str]]) -> list[tuple[int, int] | None]:
        """The size of every (key, core type) on both sides; None: the key changed type."""
        source, target = self._on_both([(SIZE_COMMANDS[kind], key) for key, kind in keys])
        return [
            None if is_wrongtype(a) or is_wrongtype(b) else (int(a), int(b))
            for a, b in zip(source, target, strict=True)
        ]

    def whole_values(self, reads: Sequence[ValueRead]) -> list[BothReplies | None]:
        """The whole value of every key (a stream's XINFO, and its entries when planned
        WHOLE) in one pipeline per side; None: the key changed type."""
        groups = [_whole_value_commands(read) for read in reads]
        source, target = self._on_both([c for group in groups for c in group])
        replies: list[BothReplies | None] = []
        offset = 0
        for group in groups:
            src = source[offset : offset + len(group)]
            dst = target[offset : offset + len(group)]
            offset += len(group)
            changed = any(is_wrongtype(r) for r in (*src, *dst))
            replies.append(None if changed else (src, dst))
        return replies

    def absent_on_source(self, keys: Sequence[bytes]) -> list[bytes]:
        """The target keys that EXISTS does not find on the source (extra candidates)."""
        self.bucket.take(len(keys))
        exists = self.source.execute([("EXISTS", key) for key in keys])
        return [key for key, found in zip(keys, exists, strict=True) if not found]

    def extra_types(self, keys: Sequence[bytes]) -> dict[bytes, str]:
        """The keys that are on the target and not on the source, with their target type."""
        if not keys:
            return {}
        self.bucket.take(2 * len(keys))
        on_target = self.target.execute([("TYPE", key) for key in keys])
        on_source = self.source.execute([("EXISTS", key) for key in keys])
        return {
            key: reply_text(kind)
            for key, kind, found in zip(keys, on_target, on_source, strict=True)
            if is_extra(reply_text(kind), bool(found))
        }

    def _on_both(self, commands: Sequence[Command]) -> BothReplies:
        return self.source.execute(commands), self.target.execute(commands)

    # -- chunked reads: generators, one read per chunk when the next chunk is wanted

    def string_chunks(self, key: bytes, size: int) -> Iterator[tuple[int, bytes, bytes]]:
        step = self.string_chunk_bytes
        for start in range(0, size, step):
            src, dst = self._chunk(("GETRANGE", key, start, start + step - 1))
            yield start, src, dst

    def list_chunks(self, key: bytes, size: int) -> Iterator[tuple[int, list[Any], list[Any]]]:
        for start in range(0, size, self.chunk):
            src, dst = self._chunk(("LRANGE", key, start, start + self.chunk - 1))
            yield start, src, dst

    def zset_chunks(self, key: bytes, size: int) -> Iterator[tuple[int, list[Any], list[Any]]]:
        for start in range(0, size, self.chunk):
            command = ("ZRANGE", key, start, start + self.chunk - 1, "WITHSCORES")
            src, dst = self._chunk(command)
            yield start, src, dst

    def stream_chunks(self, key: bytes) -> Iterator[tuple[list[Any], list[Any]]]:
        start = b"-"
        while True:
            src, dst = self._chunk(("XRANGE", key, start, "+", "COUNT", self.chunk))
            yield src, dst
            if len(src) < self.chunk:
                return
            start = next_stream_id(src[-1][0])

    def set_chunks(self, key: bytes) -> Iterator[tuple[list[bytes], list[bool]]]:
        """SSCAN pages of the source, with whether the target has each member."""
        cursor: bytes | int = b"0"
        while True:
            self.bucket.take(2)
            reply = self.source.execute([("SSCAN", key, cursor, "COUNT", self.chunk)])[0]
            if is_wrongtype(reply):
                raise KeyChanged
            cursor, members = reply[0], list(reply[1])
            yield members, self._members_on_target(key, members)
            if int(cursor) == 0:
                return

    def hash_chunks(self, key: bytes) -> Iterator[list[tuple[bytes, bytes, bytes | None]]]:
        """HSCAN pages of the source as (field, source value, target value or None)."""
        cursor: bytes | int = b"0"
        while True:
            self.bucket.take(2)
            reply = self.source.execute([("HSCAN", key, cursor, "COUNT", self.chunk)])[0]
            if is_wrongtype(reply):
                raise KeyChanged
            cursor, pairs = reply[0], reply_pairs(reply[1])
            fields: list[tuple[bytes, bytes, bytes | None]] = []
            if pairs:
                values = self.target.execute([("HMGET", key, *(name for name, _ in pairs))])[0]
                if is_wrongtype(values):
                    raise KeyChanged
                fields = [
                    (name, value, other) for (name, value), other in zip(pairs, values, strict=True)
                ]
            yield fields
            if int(cursor) == 0:
                return

    def score_lookup(self, side: Side, key: bytes) -> ScoreLookup:
        """A member's score in the zset `key` on `side` (ZSCORE, not charged), None: absent."""

        def score(member: bytes) -> float | None:
            reply = side.execute([("ZSCORE", key, member)])[0]
            if is_wrongtype(reply):
                raise KeyChanged
            return None if reply is None else float(reply)

        return score

    def _chunk(self, command: Command) -> tuple[Any, Any]:
        self.bucket.take(2)
        source_reply = self.source.execute([command])[0]
        target_reply = self.target.execute([command])[0]
        if is_wrongtype(source_reply) or is_wrongtype(target_reply):
            raise KeyChanged
        return source_reply, target_reply

    def _members_on_target(self, key: bytes, members: list[bytes]) -> list[bool]:
        if not members:
            return []
        if self.target.version >= (6, 2):
            reply = self.target.execute([("SMISMEMBER", key, *members)])[0]
            if is_wrongtype(reply):
                raise KeyChanged
            return [bool(found) for found in reply]
        replies = self.target.execute([("SISMEMBER", key, member) for member in members])
        if any(is_wrongtype(r) for r in replies):
            raise KeyChanged
        return [bool(found) for found in replies]


def _whole_value_commands(read: ValueRead) -> list[Command]:
    key = read.key
    if read.kind == "string":
        return [("GET", key)]
    if read.kind == "list":
        return [("LRANGE", key, 0, -1)]
    if read.kind == "set":
        return [("SMEMBERS", key)]
    if read.kind == "hash":
        return [("HGETALL", key)]
    if read.kind == "zset":
        return [("ZRANGE", key, 0, -1, "WITHSCORES")]
    if read.kind == "stream":
        meta: list[Command] = [("XINFO", "STREAM", key), ("XINFO", "GROUPS", key)]
        return [*meta, ("XRANGE", key, "-", "+")] if read.plan is ReadPlan.WHOLE else meta
    return [("DUMP", key)]
