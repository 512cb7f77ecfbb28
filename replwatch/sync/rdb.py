"""A streaming RDB parser: one event at a time, never the whole file.

Format references (read against the sources, not blog posts):
- Redis src/rdb.h, src/rdb.c (rdbLoadRioWithLoadingCtx, rdbLoadObject, rdbGenericLoadStringObject,
  rdbLoadLen, rdbLoadDoubleValue), src/listpack.c, src/ziplist.c, src/intset.c, src/zipmap.c,
  src/lzf_d.c, src/t_stream.c (stream listpack layout: master entry, per-entry flags and
  ID deltas), src/module.c (module type ids: 9 chars of a 64-char set + 10-bit encver).
- Redis CE 7.4 (RDB 12): RDB_OPCODE_SLOT_INFO 244 and hash field expiration types
  RDB_TYPE_HASH_METADATA_PRE_GA 22 / RDB_TYPE_HASH_LISTPACK_EX_PRE_GA 23 (7.4 RCs, absolute TTLs)
  and RDB_TYPE_HASH_METADATA 24 / RDB_TYPE_HASH_LISTPACK_EX 25 (a leading 8-byte "min expire";
  type 24 stores each field's TTL as a length, 0 = none, else expire = ttl + min_expire - 1;
  listpack types hold field/value/expire-at triplets, 0 = none).
- Valkey src/rdb.h, src/rdb.c, src/cluster_migrateslots.c: Valkey 9.0/9.1 write RDB version 80
  with magic "VALKEY080" (9.2 writes 81). Versions 12..79 are RDB_FOREIGN_VERSION_MIN..MAX, kept
  for Redis CE 7.4+ and refused by Valkey. Valkey gives type 22 its own meaning,
  RDB_TYPE_HASH_2 (a hashtable hash whose every field is followed by an 8-byte expire-at,
  -1 = none), and opcode 243 to RDB_OPCODE_SLOT_IMPORT (job name + slot ranges). So the type
  byte 22 is read according to the magic: "VALKEY" → Valkey's meaning, "REDIS" → Redis's.

Reading model: a source object with a blocking `read(n) -> bytes` that returns exactly n bytes
or raises (EOFError at the end of the input). A source may also offer `read_some(max_n)`
(1..max_n bytes that are already available, EOFError at the end): then the parser reads in
large blocks and works from its own buffer, which is much faster; a socket-backed source
must never return bytes past the end of the RDB from it. An optional `remaining` attribute
(bytes left, when known) lets hostile lengths fail before any read.

The parser tracks the CRC-64 of every byte it consumes (block by block, in C when crcmod is
installed; see dump.py) and checks the trailer. A key's `raw` is the type byte plus the exact
bytes of its serialized value (a RESTORE payload body: see dump.build_dump_payload), kept
when that value is at most `raw_limit` bytes; it is sliced from the read buffer, not
re-encoded.
"""

from __future__ import annotations

import struct
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, BinaryIO, Literal, Protocol, TypeAlias, cast

from replwatch.errors import ReplwatchError
from replwatch.sync.dump import crc64
from replwatch.sync.speedups import compiled

__all__ = [
    "DEFAULT_MAX_STRING_BYTES",
    "AuxField",
    "BytesSource",
    "ChunkedValue",
    "DecodedValue",
    "FileSource",
    "FunctionEntry",
    "KeyEntry",
    "ModuleAux",
    "ModuleValue",
    "RdbChecksumError",
    "RdbEnd",
    "RdbError",
    "RdbEvent",
    "RdbFormatError",
    "RdbHeader",
    "RdbModuleError",
    "RdbSource",
    "RdbTruncatedError",
    "ResizeDb",
    "SelectDb",
    "SlotImport",
    "SlotInfo",
    "StreamConsumer",
    "StreamEntry",
    "StreamGroup",
    "StreamID",
    "StreamPendingEntry",
    "StreamValue",
    "decode_serialized_value",
    "lzf_decompress",
    "module_type_name",
    "parse_rdb",
]

# ----------------------------------------------------------------------------- constants

RDB_TYPE_STRING = 0
RDB_TYPE_LIST = 1
RDB_TYPE_SET = 2
RDB_TYPE_ZSET = 3
RDB_TYPE_HASH = 4
RDB_TYPE_ZSET_2 = 5
RDB_TYPE_MODULE_PRE_GA = 6
RDB_TYPE_MODULE_2 = 7
RDB_TYPE_HASH_ZIPMAP = 9
RDB_TYPE_LIST_ZIPLIST = 10
RDB_TYPE_SET_INTSET = 11
RDB_TYPE_ZSET_ZIPLIST = 12
RDB_TYPE_HASH_ZIPLIST = 13
RDB_TYPE_LIST_QUICKLIST = 14
RDB_TYPE_STREAM_LISTPACKS = 15
RDB_TYPE_HASH_LISTPACK = 16
RDB_TYPE_ZSET_LISTPACK = 17
RDB_TYPE_LIST_QUICKLIST_2 = 18
RDB_TYPE_STREAM_LISTPACKS_2 = 19
RDB_TYPE_SET_LISTPACK = 20
RDB_TYPE_STREAM_LISTPACKS_3 = 21
# Redis CE 7.4+ (REDIS magic, RDB 12)
RDB_TYPE_HASH_METADATA_PRE_GA = 22
RDB_TYPE_HASH_LISTPACK_EX_PRE_GA = 23
RDB_TYPE_HASH_METADATA = 24
RDB_TYPE_HASH_LISTPACK_EX = 25
# Valkey 9.0+ (VALKEY magic, RDB 80)
VALKEY_RDB_TYPE_HASH_2 = 22

RDB_OPCODE_SLOT_IMPORT = 243  # Valkey 9.0 (Redis 8.x uses 243 for KEY_META: not supported)
RDB_OPCODE_SLOT_INFO = 244
RDB_OPCODE_FUNCTION2 = 245
RDB_OPCODE_FUNCTION_PRE_GA = 246
RDB_OPCODE_MODULE_AUX = 247
RDB_OPCODE_IDLE = 248
RDB_OPCODE_FREQ = 249
RDB_OPCODE_AUX = 250
RDB_OPCODE_RESIZEDB = 251
RDB_OPCODE_EXPIRETIME_MS = 252
RDB_OPCODE_EXPIRETIME = 253
RDB_OPCODE_SELECTDB = 254
RDB_OPCODE_EOF = 255

RDB_MODULE_OPCODE_EOF = 0
RDB_MODULE_OPCODE_SINT = 1
RDB_MODULE_OPCODE_UINT = 2
RDB_MODULE_OPCODE_FLOAT = 3
RDB_MODULE_OPCODE_DOUBLE = 4
RDB_MODULE_OPCODE_STRING = 5

QUICKLIST_NODE_CONTAINER_PLAIN = 1
QUICKLIST_NODE_CONTAINER_PACKED = 2

STREAM_ITEM_FLAG_DELETED = 1
STREAM_ITEM_FLAG_SAMEFIELDS = 2

MODULE_NAME_CHARSET = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"

DEFAULT_MAX_STRING_BYTES = 1 << 30  # one RDB string (a value, a listpack, a quicklist node)
_BLOCK = 256 * 1024  # read-ahead block when the source offers read_some()
_BIG_READ = 1 << 20  # strings longer than this are assembled from block-sized pieces
_LZF_MAX_RATIO = 88  # one 3-byte LZF back reference expands to at most 264 bytes

_U32_BE = struct.Struct(">I")
_U64_BE = struct.Struct(">Q")
_I32_LE = struct.Struct("<i")
_I64_LE = struct.Struct("<q")
_F32_LE = struct.Struct("<f")
_F64_LE = struct.Struct("<d")
_STREAM_ID = struct.Struct(">QQ")
_TYPE_PREFIX = tuple(bytes((t,)) for t in range(256))
# value types stored as one RDB string (or quicklist nodes): read as bytes with skip_decode
_SKIPPABLE = frozenset((9, 10, 11, 12, 13, 14, 16, 17, 18, 20))
# value types whose element count comes first: can be read chunk by chunk (stream_over)
_STREAMABLE = frozenset((1, 2, 3, 4, 5, 14, 18))

Kind = Literal["string", "list", "set", "zset", "hash", "stream", "module"]
OnModule = Literal["error", "skip"]


# ----------------------------------------------------------------------------- errors


class RdbError(ReplwatchError):
    """Base of the RDB parser's errors. `offset` is the byte offset in the input, if known."""

    def __init__(self, message: str, offset: int | None = None) -> None:
        self.offset = offset
        self.reason = message
        super().__init__(message if offset is None else f"{message} (at byte offset {offset})")


class RdbFormatError(RdbError):
    """The input is not a valid RDB stream: bad magic, unknown type or opcode, a corrupt
    encoding, a hostile length."""


class RdbTruncatedError(RdbFormatError):
    """The input ended (or will end, by a known remaining size) before a complete RDB."""


class RdbChecksumError(RdbFormatError):
    """The trailing CRC-64 does not match the content."""


class RdbModuleError(RdbError):
    """A module value or module aux data that the caller chose not to skip (on_module="error"),
    or one that cannot be skipped (pre-GA module format)."""

    def __init__(
        self, module_name: str, key: bytes | None, offset: int | None, detail: str = ""
    ) -> None:
        self.module_name = module_name
        self.key = key
        what = f"key {key!r}" if key is not None else "module aux data"
        message = f"RDB holds data of module type {module_name!r} ({what})"
        super().__init__(f"{message}: {detail}" if detail else message, offset)


# ----------------------------------------------------------------------------- events


@dataclass(frozen=True, slots=True)
class RdbHeader:
    magic: str  # "REDIS" or "VALKEY"
    version: int

    @property
    def valkey(self) -> bool:
        return self.magic == "VALKEY"


@dataclass(frozen=True, slots=True)
class AuxField:
    key: bytes
    value: bytes


@dataclass(frozen=True, slots=True)
class SelectDb:
    db: int


@dataclass(frozen=True, slots=True)
class ResizeDb:
    db_size: int
    expires_size: int


@dataclass(frozen=True, slots=True)
class SlotInfo:
    """Redis 7.4+ cluster sizing hint (opcode 244)."""

    slot: int
    slot_size: int
    expires_slot_size: int


@dataclass(frozen=True, slots=True)
class SlotImport:
    """Valkey 9 atomic slot migration in progress (opcode 243): job name and slot ranges."""

    job_name: bytes
    ranges: tuple[tuple[int, int], ...]


@dataclass(frozen=True, slots=True)
class FunctionEntry:
    """A function library (opcode 245): the code as given to FUNCTION LOAD."""

    code: bytes


@dataclass(frozen=True, slots=True)
class ModuleAux:
    """Module auxiliary data (opcode 247), skipped."""

    module_name: str
    module_id: int
    when: int


@dataclass(frozen=True, slots=True)
class StreamID:
    ms: int
    seq: int

    def __str__(self) -> str:
        return f"{self.ms}-{self.seq}"

    def encode(self) -> bytes:
        return b"%d-%d" % (self.ms, self.seq)


@dataclass(frozen=True, slots=True)
class StreamEntry:
    id: StreamID
    fields: tuple[tuple[bytes, bytes], ...]


@dataclass(frozen=True, slots=True)
class StreamPendingEntry:
    id: StreamID
    delivery_time_ms: int
    delivery_count: int
    consumer: bytes | None  # resolved from the consumers' PELs


@dataclass(frozen=True, slots=True)
class StreamConsumer:
    name: bytes
    seen_time_ms: int
    active_time_ms: int | None  # stream listpacks v3 (RDB 11+) only
    pending: tuple[StreamID, ...]


@dataclass(frozen=True, slots=True)
class StreamGroup:
    name: bytes
    last_id: StreamID
    entries_read: int | None  # v2+; -1 = unknown (SCG_INVALID_ENTRIES_READ)
    pending: tuple[StreamPendingEntry, ...]
    consumers: tuple[StreamConsumer, ...]


@dataclass(frozen=True, slots=True)
class StreamValue:
    entries: tuple[StreamEntry, ...]  # live entries, oldest first (deleted ones left out)
    length: int
    last_id: StreamID
    first_id: StreamID | None  # v2+ (RDB 10)
    max_deleted_id: StreamID | None  # v2+
    entries_added: int | None  # v2+
    groups: tuple[StreamGroup, ...]


@dataclass(frozen=True, slots=True)
class ModuleValue:
    """A skipped module value; the bytes are in KeyEntry.raw."""

    module_name: str
    module_id: int

    @property
    def encoding_version(self) -> int:
        return self.module_id & 1023


class ChunkedValue:
    """A big collection's elements, read from the RDB chunk by chunk while the consumer
    iterates (parse_rdb's stream_over): lists of bytes (list, set), (member, score) (zset)
    or (field, value) (hash). It must be consumed before the next event is asked for; what
    is left is skipped then. Memory holds one chunk, not the collection."""

    __slots__ = ("_chunks",)

    def __init__(self, chunks: Iterator[list[Any]]) -> None:
        self._chunks = chunks

    def __iter__(self) -> Iterator[list[Any]]:
        return self._chunks


Value: TypeAlias = (
    bytes
    | list[bytes]
    | list[tuple[bytes, float]]
    | list[tuple[bytes, bytes]]
    | StreamValue
    | ModuleValue
    | ChunkedValue
)


@dataclass(slots=True)  # not frozen: one per key, and a frozen __init__ costs 4x
class KeyEntry:
    """One key. `value` by kind: string → bytes; list, set → list[bytes]; zset →
    list[(member, score)]; hash → list[(field, value)]; stream → StreamValue; module →
    ModuleValue. `field_expiry` lists (field, expire-at ms) for hash fields with a TTL (hash
    field expiration types only; None otherwise). `raw` is the type byte + serialized value
    when that is at most raw_limit bytes (always for module values), else None."""

    db: int
    key: bytes
    kind: Kind
    value: Value | None  # None: not decoded (parse_rdb's skip_decode); raw holds it
    expire_ms: int | None
    raw: bytes | None
    rdb_type: int
    idle_seconds: int | None = None
    lfu_freq: int | None = None
    field_expiry: list[tuple[bytes, int]] | None = None


@dataclass(frozen=True, slots=True)
class RdbEnd:
    """The EOF opcode. `checksum` is the 8-byte trailer (empty before RDB 5); `verified` says
    whether it was checked (False when not asked to, or when the writer left it zero)."""

    checksum: bytes
    verified: bool


RdbEvent: TypeAlias = (
    RdbHeader
    | AuxField
    | SelectDb
    | ResizeDb
    | SlotInfo
    | SlotImport
    | FunctionEntry
    | ModuleAux
    | KeyEntry
    | RdbEnd
)


@dataclass(frozen=True, slots=True)
class DecodedValue:
    kind: Kind
    value: Value
    field_expiry: list[tuple[bytes, int]] | None


# ----------------------------------------------------------------------------- sources


class RdbSource(Protocol):
    """Blocking reads of exactly n bytes; EOFError when the input ends first."""

    def read(self, n: int, /) -> bytes: ...


class BytesSource:
    """An RDB held in memory."""

    __slots__ = ("_data", "_pos")

    def __init__(self, data: bytes | bytearray | memoryview) -> None:
        self._data = bytes(data)
        self._pos = 0

    @property
    def remaining(self) -> int:
        return len(self._data) - self._pos

    def read(self, n: int, /) -> bytes:
        end = self._pos + n
        if end > len(self._data):
            raise EOFError(f"needed {n} bytes, {len(self._data) - self._pos} left")
        chunk = self._data[self._pos : end]
        self._pos = end
        return chunk

    def read_some(self, max_n: int, /) -> bytes:
        if self._pos >= len(self._data):
            raise EOFError("no bytes left")
        end = min(self._pos + max_n, len(self._data))
        chunk = self._data[self._pos : end]
        self._pos = end
        return chunk


class FileSource:
    """A binary file object (an RDB file on disk, a pipe)."""

    __slots__ = ("_file",)

    def __init__(self, file: BinaryIO) -> None:
        self._file = file

    def read(self, n: int, /) -> bytes:
        parts: list[bytes] = []
        left = n
        while left > 0:
            chunk = self._file.read(left)
            if not chunk:
                raise EOFError(f"needed {n} bytes, file ended after {n - left}")
            parts.append(chunk)
            left -= len(chunk)
        return b"".join(parts)

    def read_some(self, max_n: int, /) -> bytes:
        chunk = self._file.read(max_n)
        if not chunk:
            raise EOFError("file ended")
        return chunk


# ----------------------------------------------------------------------------- reader


# RESP `SET key value`, or `MSET` and its pairs: how the loader writes plain strings
_SET_COMMAND = b"*3\r\n$3\r\nSET\r\n$%d\r\n%b\r\n$%d\r\n%b\r\n"
_MSET_HEAD = b"*%d\r\n$4\r\nMSET\r\n"
_BULK_PAIR = b"$%d\r\n%b\r\n$%d\r\n%b\r\n"


def string_run_py(buf: bytes, pos: int, end: int, limit: int, mset: bool) -> tuple[bytes, int, int]:
    """Plain string keys in buf[pos:end] as RESP `SET key value` commands (joined), or as one
    `MSET key value …` (`mset`), how many keys, and the position after them; at most `limit`.
    `pos` is at the first entry's key (its type byte read), each next entry's type byte is 0
    (a string without TTL or LRU/LFU data before it). Only keys stored plain and values stored
    plain or LZF-compressed (decoded here), with lengths under 16 KiB and wholly in buf[:end],
    and keys not starting with "_" (maybe one of replwatch's own), are taken; the position
    returned is the first entry not taken (its key when that is the first, else its type
    byte). The loader's commonest key without a call per key; the C loop in _speedups.c is
    this function, compiled."""
    out: list[bytes] = []
    append = out.append
    template = _BULK_PAIR if mset else _SET_COMMAND
    last = pos
    while True:
        if pos + 1 >= end:
            break
        b = buf[pos]
        if b < 0x40:
            ks = pos + 1
            ke = ks + b
        elif b < 0x80:
            ks = pos + 2
            ke = ks + (((b & 0x3F) << 8) | buf[pos + 1])
        else:
            break
        if ke + 1 >= end or ke == ks or buf[ks] == 95:  # (b"_")
            break
        b = buf[ke]
        if b < 0x40:
            vs = ke + 1
            ve = vs + b
        elif b < 0x80:
            vs = ke + 2
            ve = vs + (((b & 0x3F) << 8) | buf[ke + 1])
        elif b == 0xC3:  # LZF, both lengths short: decoded here (invalid: the per-key path)
            lzf = _short_lzf(buf, ke + 1, end)
            if lzf is None:
                break
            vs, ve, value = lzf
            append(template % (ke - ks, buf[ks:ke], len(value), value))
            last = ve
            if len(out) >= limit or ve >= end or buf[ve] != 0:
                break
            pos = ve + 1
            continue
        else:
            break
        if ve > end:
            break
        append(template % (ke - ks, buf[ks:ke], ve - vs, buf[vs:ve]))
        last = ve
        if len(out) >= limit or ve >= end or buf[ve] != 0:
            break
        pos = ve + 1  # the next entry's type byte: taken only when the entry is
    if mset and out:
        out.insert(0, _MSET_HEAD % (2 * len(out) + 1))
        return b"".join(out), len(out) - 1, last
    return b"".join(out), len(out), last


def _short_length(buf: bytes, p: int, end: int) -> tuple[int, int] | None:
    """A 6- or 14-bit RDB length at p and the position after it; None for anything else."""
    if p >= end:
        return None
    c = buf[p]
    if c < 0x40:
        return c, p + 1
    if c < 0x80 and p + 1 < end:
        return ((c & 0x3F) << 8) | buf[p + 1], p + 2
    return None


def _short_lzf(buf: bytes, p: int, end: int) -> tuple[int, int, bytes] | None:
    """An LZF value's compressed span and its decoded bytes, from its lengths at p (both
    short, the data wholly in buf[:end], valid LZF); None: the per-key path takes it."""
    compressed = _short_length(buf, p, end)
    if compressed is None:
        return None
    plain = _short_length(buf, compressed[1], end)
    if plain is None:
        return None
    start = plain[1]
    stop = start + compressed[0]
    if stop > end:
        return None
    try:
        return start, stop, lzf_decompress(buf[start:stop], plain[0])
    except RdbFormatError:
        return None


_StringRunLoop: TypeAlias = Callable[[bytes, int, int, int, bool], tuple[bytes, int, int]]


def _compiled_string_run() -> _StringRunLoop | None:
    """string_run_py compiled (_speedups.c), when it was built at install and
    REPLWATCH_PURE_PYTHON is not set."""
    return cast(_StringRunLoop | None, compiled("string_run"))


_LzfLoop: TypeAlias = Callable[[bytes, int], bytes | None]


def _compiled_lzf() -> _LzfLoop | None:
    """lzf_decompress compiled (_speedups.c: None for data that is not valid LZF, then the
    Python function says why), when it was built and REPLWATCH_PURE_PYTHON is not set."""
    return cast(_LzfLoop | None, compiled("lzf_decompress"))


@dataclass(frozen=True)
class StringRun:
    """Where runs of plain string keys go, as RESP `SET key value` commands or one `MSET`
    a run (`mset`): sink(db, commands, count of keys) answers how many the next run may
    hold."""

    sink: Callable[[int, bytes, int], int]
    room: int  # for the first run
    mset: bool = False


class _Reader:
    """Buffered reads with offsets, incremental CRC and byte capture (for KeyEntry.raw)."""

    __slots__ = (
        "_base",
        "_buf",
        "_cap_from",
        "_cap_limit",
        "_cap_on",
        "_cap_overflow",
        "_cap_parts",
        "_cap_size",
        "_crc",
        "_crc_from",
        "_end",
        "_lzf_loop",
        "_pos",
        "_read_exact",
        "_read_some",
        "_run_loop",
        "_source",
        "_track_crc",
        "max_string",
    )

    def __init__(self, source: RdbSource, *, track_crc: bool, max_string: int) -> None:
        self._source = source
        self._read_exact = source.read
        read_some = getattr(source, "read_some", None)
        self._read_some: Callable[[int], bytes] | None = read_some if callable(read_some) else None
        self._buf = b""
        self._pos = 0
        self._end = 0
        self._base = 0
        self._track_crc = track_crc
        self._crc = 0
        self._crc_from = 0
        self._cap_on = False
        self._cap_overflow = False
        self._cap_from = 0
        self._cap_parts: list[bytes] | None = None
        self._cap_size = 0
        self._cap_limit = 0
        self.max_string = max_string
        self._run_loop = _compiled_string_run() or string_run_py
        self._lzf_loop = _compiled_lzf()

    @property
    def offset(self) -> int:
        """Absolute offset of the next byte to be read."""
        return self._base + self._pos

    def remaining(self) -> int | None:
        """Bytes left in the input (buffered + in the source), when the source knows."""
        left = getattr(self._source, "remaining", None)
        if isinstance(left, int):
            return left + self._end - self._pos
        return None

    # -- hot paths

    def read(self, n: int) -> bytes:
        pos = self._pos
        end = pos + n
        if end <= self._end:
            self._pos = end
            return self._buf[pos:end]
        return self._read_slow(n)

    def byte(self) -> int:
        pos = self._pos
        if pos < self._end:
            self._pos = pos + 1
            return self._buf[pos]
        return self._read_slow(1)[0]

    def length(self) -> int:
        """A plain RDB length (rdbLoadLen without the encoded-value case)."""
        b = self.byte()
        if b < 0x40:
            return b
        if b < 0x80:
            return ((b & 0x3F) << 8) | self.byte()
        if b == 0x80:
            return int(_U32_BE.unpack(self.read(4))[0])
        if b == 0x81:
            return int(_U64_BE.unpack(self.read(8))[0])
        raise RdbFormatError(f"expected a length, found encoding byte {b:#04x}", self.offset - 1)

    def string(self) -> bytes:
        """An RDB string (rdbGenericLoadStringObject): plain, int-encoded or LZF."""
        pos = self._pos
        if pos + 1 < self._end:
            buf = self._buf
            b = buf[pos]
            if b < 0x40:
                end = pos + 1 + b
                if end <= self._end:
                    self._pos = end
                    return buf[pos + 1 : end]
            elif b < 0x80:
                end = pos + 2 + (((b & 0x3F) << 8) | buf[pos + 1])
                if end <= self._end:
                    self._pos = end
                    return buf[pos + 2 : end]
        return self._string_slow()

    def string_run(self, limit: int, mset: bool) -> tuple[bytes, int]:
        """Plain string keys from here on as RESP `SET key value` commands (joined) or one
        `MSET`, and how many, at most `limit` (string_run_py says which; the C loop of
        _speedups when it was built)."""
        data, count, self._pos = self._run_loop(self._buf, self._pos, self._end, limit, mset)
        return data, count

    def skip_string(self) -> None:
        """Read past an RDB string without decoding it (no LZF decompression): its bytes
        still count for the CRC and for a capture."""
        b = self.byte()
        if b < 0x40:
            n = b
        elif b < 0x80:
            n = ((b & 0x3F) << 8) | self.byte()
        elif b == 0x80:
            n = int(_U32_BE.unpack(self.read(4))[0])
        elif b == 0x81:
            n = int(_U64_BE.unpack(self.read(8))[0])
        elif b in (0xC0, 0xC1, 0xC2):
            n = {0xC0: 1, 0xC1: 2, 0xC2: 4}[b]
        elif b == 0xC3:
            n = self.length()  # compressed length
            self.length()  # plain length
        else:
            raise RdbFormatError(f"unknown string encoding byte {b:#04x}", self.offset - 1)
        if n:
            self.read(n)

    def _string_slow(self) -> bytes:
        start = self.offset
        b = self.byte()
        if b < 0x40:
            return self.read(b)
        if b < 0x80:
            return self.read(((b & 0x3F) << 8) | self.byte())
        if b == 0x80:
            return self.read(int(_U32_BE.unpack(self.read(4))[0]))
        if b == 0x81:
            return self.read(int(_U64_BE.unpack(self.read(8))[0]))
        if b == 0xC0:
            v = self.byte()
            return b"%d" % (v - 256 if v > 127 else v)
        if b == 0xC1:
            return b"%d" % int.from_bytes(self.read(2), "little", signed=True)
        if b == 0xC2:
            return b"%d" % _I32_LE.unpack(self.read(4))[0]
        if b == 0xC3:
            compressed_len = self.length()
            plain_len = self.length()
            if plain_len > self.max_string:
                raise RdbFormatError(
                    f"LZF string declares {plain_len} bytes, over the {self.max_string} cap",
                    start,
                )
            if plain_len > compressed_len * _LZF_MAX_RATIO + 8:
                raise RdbFormatError(
                    f"LZF string declares {plain_len} bytes from {compressed_len} compressed "
                    "bytes, more than LZF can expand",
                    start,
                )
            data = self.read(compressed_len)
            if self._lzf_loop is not None:
                plain = self._lzf_loop(data, plain_len)
                if plain is not None:
                    return plain
            return lzf_decompress(data, plain_len, offset=start)  # (or says what is wrong)
        raise RdbFormatError(f"unknown string encoding byte {b:#04x}", start)

    # -- buffer management

    def _read_slow(self, n: int) -> bytes:
        if n > self.max_string:
            raise RdbFormatError(
                f"declared length {n} is over the {self.max_string}-byte cap", self.offset
            )
        left = self.remaining()
        if left is not None and n > left:
            raise RdbTruncatedError(
                f"declared length {n} but only {left} bytes of input remain", self.offset
            )
        if n <= _BIG_READ:
            self._fill(n)
            pos = self._pos
            self._pos = pos + n
            return self._buf[pos : pos + n]
        parts: list[bytes] = []
        want = n
        while want:
            if self._pos >= self._end:
                self._fill(min(want, _BIG_READ))
            take = min(want, self._end - self._pos)
            pos = self._pos
            parts.append(self._buf[pos : pos + take])
            self._pos = pos + take
            want -= take
        return b"".join(parts)

    def _retire(self) -> None:
        """Account (CRC, capture) for the consumed part of the buffer before dropping it."""
        pos = self._pos
        if self._track_crc and self._crc_from < pos:
            self._crc = crc64(memoryview(self._buf)[self._crc_from : pos], self._crc)
            self._crc_from = pos
        if self._cap_on and self._cap_from < pos:
            piece = self._buf[self._cap_from : pos]
            self._cap_size += len(piece)
            if self._cap_size > self._cap_limit:
                self._cap_on = False
                self._cap_overflow = True
                self._cap_parts = None
            else:
                if self._cap_parts is None:
                    self._cap_parts = []
                self._cap_parts.append(piece)
            self._cap_from = pos

    def _fill(self, need: int) -> None:
        """Make at least `need` unread bytes available."""
        self._retire()
        tail = self._buf[self._pos :]
        pieces = [tail]
        have = len(tail)
        try:
            if self._read_some is not None:
                while have < need:
                    chunk = self._read_some(max(need - have, _BLOCK))
                    if not chunk:
                        raise EOFError("source returned no bytes")
                    pieces.append(chunk)
                    have += len(chunk)
            else:
                chunk = self._read_exact(need - have)
                if len(chunk) != need - have:
                    raise EOFError(f"source returned {len(chunk)} of {need - have} bytes")
                pieces.append(chunk)
                have += len(chunk)
        except EOFError as exc:
            raise RdbTruncatedError(
                f"input ended: needed {need} bytes, {have} available", self.offset
            ) from exc
        self._base += self._pos
        self._buf = b"".join(pieces)
        self._pos = 0
        self._end = len(self._buf)
        self._crc_from = 0
        self._cap_from = 0

    # -- CRC

    def crc(self) -> int:
        """CRC-64 of everything consumed so far."""
        if self._crc_from < self._pos:
            self._crc = crc64(memoryview(self._buf)[self._crc_from : self._pos], self._crc)
            self._crc_from = self._pos
        return self._crc

    # -- capture

    def begin_capture(self, limit: int) -> None:
        self._cap_on = True
        self._cap_overflow = False
        self._cap_from = self._pos
        self._cap_size = 0
        self._cap_limit = limit

    def end_capture(self) -> bytes | None:
        """The bytes consumed since begin_capture(), or None when they were over the limit."""
        if not self._cap_on:
            return None
        self._cap_on = False
        piece = self._buf[self._cap_from : self._pos]
        if self._cap_size + len(piece) > self._cap_limit:
            self._cap_parts = None
            return None
        parts = self._cap_parts
        if parts is None:
            return piece
        self._cap_parts = None
        parts.append(piece)
        return b"".join(parts)


# ----------------------------------------------------------------------------- pure decoders


def module_type_name(module_id: int) -> str:
    """The 9-character module type name encoded in a 64-bit module id (module.c)."""
    bits = module_id >> 10
    chars = []
    for _ in range(9):
        chars.append(MODULE_NAME_CHARSET[bits & 63])
        bits >>= 6
    return "".join(reversed(chars))


def lzf_decompress(data: bytes, expected_length: int, *, offset: int | None = None) -> bytes:
    """liblzf's lzf_decompress (lzf_d.c): literal runs and back references.

    The caller bounds `expected_length` (LZF expands at most ~88x), so the output is checked
    once at the end rather than per token."""
    out = bytearray()
    i = 0
    n = len(data)
    size = 0  # len(out), tracked by hand
    try:
        while i < n:
            ctrl = data[i]
            i += 1
            if ctrl < 32:  # literal run of ctrl + 1 bytes
                j = i + ctrl + 1
                out += data[i:j]
                size += j - i
                i = j
            else:  # back reference: length 3..264, distance 1..8192
                length = (ctrl >> 5) + 2
                if length == 9:
                    length += data[i]
                    i += 1
                start = size - (((ctrl & 0x1F) << 8) | data[i]) - 1
                i += 1
                if start < 0:
                    raise RdbFormatError(
                        "LZF back reference points before the start of the output", offset
                    )
                if size - start >= length:
                    out += out[start : start + length]
                else:  # overlapping copy: the last `distance` bytes repeat
                    pattern = out[start:]
                    repeats, rest = divmod(length, size - start)
                    out += pattern * repeats + pattern[:rest]
                size += length
    except IndexError:
        raise RdbFormatError("LZF data ends inside a back reference", offset) from None
    if i > n:
        raise RdbFormatError("LZF literal run goes past the compressed data", offset)
    if size != expected_length:
        raise RdbFormatError(
            f"LZF data expands to {size} bytes, declared {expected_length}", offset
        )
    return bytes(out)


def _backlen_size(entry_len: int) -> int:
    """Bytes of a listpack entry's back-length field (lpEncodeBacklen)."""
    if entry_len <= 127:
        return 1
    if entry_len < 16383:
        return 2
    if entry_len < 2097151:
        return 3
    if entry_len < 268435455:
        return 4
    return 5


def _listpack(lp: bytes, offset: int | None, ints_as_bytes: bool) -> list[bytes | int]:
    """The elements of a listpack (listpack.c). Integers stay ints unless `ints_as_bytes`."""
    size = len(lp)
    if size < 7:
        raise RdbFormatError(f"listpack of {size} bytes is shorter than its header", offset)
    total, count = struct.unpack_from("<IH", lp, 0)
    if total != size:
        raise RdbFormatError(f"listpack header says {total} bytes, blob has {size}", offset)
    last = size - 1
    if lp[last] != 0xFF:
        raise RdbFormatError("listpack does not end with 0xFF", offset)
    out: list[bytes | int] = []
    append = out.append
    pos = 6
    v: int
    # A string that claims more bytes than there are moves `pos` past the terminator, which
    # ends the loop and fails the final position check: no per-entry bounds test needed.
    try:
        while pos < last:
            b = lp[pos]
            if 0x80 <= b < 0xC0:  # string, 6-bit length (entry <= 64 bytes: 1-byte backlen)
                end = pos + 1 + (b & 0x3F)
                append(lp[pos + 1 : end])
                pos = end + 1
                continue
            if b < 0x80:  # 7-bit unsigned
                append(b"%d" % b if ints_as_bytes else b)
                pos += 2
                continue
            if b < 0xE0:  # 13-bit signed
                v = ((b & 0x1F) << 8) | lp[pos + 1]
                if v >= 4096:
                    v -= 8192
                pos += 3
            elif b < 0xF0:  # string, 12-bit length
                n = ((b & 0x0F) << 8) | lp[pos + 1]
                end = pos + 2 + n
                append(lp[pos + 2 : end])
                pos = end + (1 if n < 126 else _backlen_size(n + 2))
                continue
            elif b == 0xF0:  # string, 32-bit length
                n = struct.unpack_from("<I", lp, pos + 1)[0]
                end = pos + 5 + n
                append(lp[pos + 5 : end])
                pos = end + _backlen_size(n + 5)
                continue
            elif b == 0xF1:
                v = struct.unpack_from("<h", lp, pos + 1)[0]
                pos += 4
            elif b == 0xF2:
                v = int.from_bytes(lp[pos + 1 : pos + 4], "little", signed=True)
                pos += 5
            elif b == 0xF3:
                v = struct.unpack_from("<i", lp, pos + 1)[0]
                pos += 6
            elif b == 0xF4:
                v = struct.unpack_from("<q", lp, pos + 1)[0]
                pos += 10
            else:
                raise RdbFormatError(f"listpack entry at +{pos} has bad encoding {b:#04x}", offset)
            append(b"%d" % v if ints_as_bytes else v)
    except (IndexError, struct.error):
        raise RdbFormatError(f"listpack entry at +{pos} runs past the end", offset) from None
    if pos > last:
        raise RdbFormatError("listpack's last entry runs past the end", offset)
    if count != 0xFFFF and count != len(out):
        raise RdbFormatError(f"listpack header counts {count} entries, found {len(out)}", offset)
    return out


def _listpack_strings(lp: bytes, offset: int | None) -> list[bytes]:
    return _listpack(lp, offset, True)  # type: ignore[return-value]


def _ziplist(zl: bytes, offset: int | None) -> list[bytes]:
    """The elements of a ziplist (ziplist.c), integers rendered as decimal bytes."""
    size = len(zl)
    if size < 11:
        raise RdbFormatError(f"ziplist of {size} bytes is shorter than its header", offset)
    total, _tail, count = struct.unpack_from("<IIH", zl, 0)
    if total != size:
        raise RdbFormatError(f"ziplist header says {total} bytes, blob has {size}", offset)
    last = size - 1
    if zl[last] != 0xFF:
        raise RdbFormatError("ziplist does not end with 0xFF", offset)
    out: list[bytes] = []
    append = out.append
    pos = 10
    try:
        while pos < last:
            pos += 1 if zl[pos] < 0xFE else 5  # previous entry length
            enc = zl[pos]
            top = enc >> 6
            if top == 0:
                start = pos + 1
                end = start + (enc & 0x3F)
            elif top == 1:
                start = pos + 2
                end = start + (((enc & 0x3F) << 8) | zl[pos + 1])
            elif enc == 0x80:
                start = pos + 5
                end = start + struct.unpack_from(">I", zl, pos + 1)[0]
            else:
                if enc == 0xC0:
                    v = struct.unpack_from("<h", zl, pos + 1)[0]
                    pos += 3
                elif enc == 0xD0:
                    v = struct.unpack_from("<i", zl, pos + 1)[0]
                    pos += 5
                elif enc == 0xE0:
                    v = struct.unpack_from("<q", zl, pos + 1)[0]
                    pos += 9
                elif enc == 0xF0:
                    v = int.from_bytes(zl[pos + 1 : pos + 4], "little", signed=True)
                    if pos + 4 > last:
                        raise IndexError
                    pos += 4
                elif enc == 0xFE:
                    v = zl[pos + 1]
                    if v > 127:
                        v -= 256
                    pos += 2
                elif 0xF1 <= enc <= 0xFD:  # 4-bit immediate 0..12
                    v = (enc & 0x0F) - 1
                    pos += 1
                else:
                    raise RdbFormatError(
                        f"ziplist entry at +{pos} has bad encoding {enc:#04x}", offset
                    )
                if pos > last:
                    raise IndexError
                append(b"%d" % v)
                continue
            if end > last:
                raise IndexError
            append(zl[start:end])
            pos = end
    except (IndexError, struct.error):
        raise RdbFormatError(f"ziplist entry at +{pos} runs past the end", offset) from None
    if pos != last:
        raise RdbFormatError(f"ziplist entries end at +{pos}, terminator at +{last}", offset)
    if count != 0xFFFF and count != len(out):
        raise RdbFormatError(f"ziplist header counts {count} entries, found {len(out)}", offset)
    return out


_INTSET_CODES = {2: "h", 4: "i", 8: "q"}


def _intset(data: bytes, offset: int | None) -> list[bytes]:
    """The members of an intset (intset.c) as decimal bytes."""
    if len(data) < 8:
        raise RdbFormatError(f"intset of {len(data)} bytes is shorter than its header", offset)
    width, count = struct.unpack_from("<II", data, 0)
    code = _INTSET_CODES.get(width)
    if code is None:
        raise RdbFormatError(f"intset has bad integer width {width}", offset)
    if len(data) != 8 + width * count:
        raise RdbFormatError(
            f"intset of {count} x {width}-byte integers cannot be {len(data)} bytes", offset
        )
    return [b"%d" % v for v in struct.unpack_from(f"<{count}{code}", data, 8)]


def _zipmap(zm: bytes, offset: int | None) -> list[tuple[bytes, bytes]]:
    """The pairs of a zipmap (zipmap.c, Redis < 2.6 hashes)."""
    out: list[tuple[bytes, bytes]] = []
    pos = 1  # zmlen
    size = len(zm)

    def length(at: int) -> tuple[int, int]:
        b = zm[at]
        if b < 254:
            return b, at + 1
        if b == 254:
            return int(struct.unpack_from("<I", zm, at + 1)[0]), at + 5
        raise RdbFormatError(f"zipmap length at +{at} is the end marker", offset)

    try:
        while zm[pos] != 0xFF:
            key_len, pos = length(pos)
            key = zm[pos : pos + key_len]
            pos += key_len
            value_len, pos = length(pos)
            free = zm[pos]
            pos += 1
            value = zm[pos : pos + value_len]
            pos += value_len + free
            if pos >= size:
                raise IndexError
            out.append((key, value))
    except (IndexError, struct.error):
        raise RdbFormatError(f"zipmap entry at +{pos} runs past the end", offset) from None
    if pos != size - 1:
        raise RdbFormatError(f"zipmap ends at +{pos} of {size} bytes", offset)
    return out


def _pairs(items: list[bytes], what: str, offset: int | None) -> list[tuple[bytes, bytes]]:
    if len(items) % 2:
        raise RdbFormatError(f"{what} has an odd number of elements ({len(items)})", offset)
    return list(zip(items[::2], items[1::2], strict=True))


def _score(raw: bytes | int, offset: int | None) -> float:
    if isinstance(raw, int):
        return float(raw)
    try:
        return float(raw)
    except ValueError:
        raise RdbFormatError(f"sorted set score {raw!r} is not a number", offset) from None


def _zset_pairs(
    items: Sequence[bytes | int], what: str, offset: int | None
) -> list[tuple[bytes, float]]:
    if len(items) % 2:
        raise RdbFormatError(f"{what} has an odd number of elements ({len(items)})", offset)
    out: list[tuple[bytes, float]] = []
    for i in range(0, len(items), 2):
        member = items[i]
        out.append(
            (
                member if isinstance(member, bytes) else b"%d" % member,
                _score(items[i + 1], offset),
            )
        )
    return out


def _as_bytes(item: bytes | int) -> bytes:
    return item if isinstance(item, bytes) else b"%d" % item


def _stream_node_entries(node_key: bytes, lp: bytes, offset: int | None) -> list[StreamEntry]:
    """The live entries of one stream radix-tree node (t_stream.c listpack layout):
    master entry [count, deleted, n, field_1..field_n, 0], then per entry
    [flags, ms-delta, seq-delta, (values | n, field, value, ...), lp-count]."""
    master_ms, master_seq = _STREAM_ID.unpack(node_key)
    items = _listpack(lp, offset, False)
    entries: list[StreamEntry] = []
    try:
        live, deleted, n_master = items[0], items[1], items[2]
        if not (isinstance(live, int) and isinstance(deleted, int) and isinstance(n_master, int)):
            raise RdbFormatError("stream node master entry is not numeric", offset)
        master_fields = [_as_bytes(f) for f in items[3 : 3 + n_master]]
        if len(master_fields) != n_master or items[3 + n_master] != 0:
            raise RdbFormatError("stream node master entry is malformed", offset)
        i = 4 + n_master
        total = len(items)
        while i < total:
            flags, ms_delta, seq_delta = items[i], items[i + 1], items[i + 2]
            if not (
                isinstance(flags, int) and isinstance(ms_delta, int) and isinstance(seq_delta, int)
            ):
                raise RdbFormatError("stream entry header is not numeric", offset)
            i += 3
            if flags & STREAM_ITEM_FLAG_SAMEFIELDS:
                values = items[i : i + n_master]
                if len(values) != n_master:
                    raise IndexError
                fields = tuple(zip(master_fields, map(_as_bytes, values), strict=True))
                i += n_master
            else:
                n_fields = items[i]
                if not isinstance(n_fields, int) or n_fields < 0:
                    raise RdbFormatError("stream entry field count is not a number", offset)
                flat = items[i + 1 : i + 1 + 2 * n_fields]
                if len(flat) != 2 * n_fields:
                    raise IndexError
                it = iter(map(_as_bytes, flat))
                fields = tuple(zip(it, it, strict=True))
                i += 1 + 2 * n_fields
            i += 1  # lp-count
            if i > total:
                raise IndexError
            if not flags & STREAM_ITEM_FLAG_DELETED:
                entries.append(
                    StreamEntry(StreamID(master_ms + ms_delta, master_seq + seq_delta), fields)
                )
    except IndexError:
        raise RdbFormatError("stream node listpack ends inside an entry", offset) from None
    if len(entries) != live:
        raise RdbFormatError(
            f"stream node master entry counts {live} live entries, found {len(entries)}", offset
        )
    return entries


def _signed64(value: int) -> int:
    return value - (1 << 64) if value >= 1 << 63 else value


# ----------------------------------------------------------------------------- parser

_KINDS: dict[int, Kind] = {
    RDB_TYPE_STRING: "string",
    RDB_TYPE_LIST: "list",
    RDB_TYPE_LIST_ZIPLIST: "list",
    RDB_TYPE_LIST_QUICKLIST: "list",
    RDB_TYPE_LIST_QUICKLIST_2: "list",
    RDB_TYPE_SET: "set",
    RDB_TYPE_SET_INTSET: "set",
    RDB_TYPE_SET_LISTPACK: "set",
    RDB_TYPE_ZSET: "zset",
    RDB_TYPE_ZSET_2: "zset",
    RDB_TYPE_ZSET_ZIPLIST: "zset",
    RDB_TYPE_ZSET_LISTPACK: "zset",
    RDB_TYPE_HASH: "hash",
    RDB_TYPE_HASH_ZIPMAP: "hash",
    RDB_TYPE_HASH_ZIPLIST: "hash",
    RDB_TYPE_HASH_LISTPACK: "hash",
    RDB_TYPE_STREAM_LISTPACKS: "stream",
    RDB_TYPE_STREAM_LISTPACKS_2: "stream",
    RDB_TYPE_STREAM_LISTPACKS_3: "stream",
    RDB_TYPE_MODULE_PRE_GA: "module",
    RDB_TYPE_MODULE_2: "module",
}
_REDIS_KINDS: dict[int, Kind] = {
    **_KINDS,
    RDB_TYPE_HASH_METADATA_PRE_GA: "hash",
    RDB_TYPE_HASH_LISTPACK_EX_PRE_GA: "hash",
    RDB_TYPE_HASH_METADATA: "hash",
    RDB_TYPE_HASH_LISTPACK_EX: "hash",
}
_VALKEY_KINDS: dict[int, Kind] = {**_KINDS, VALKEY_RDB_TYPE_HASH_2: "hash"}

_Decoded = tuple[Value, list[tuple[bytes, int]] | None]


class _Parser:
    def __init__(
        self,
        source: RdbSource,
        *,
        raw_limit: int,
        verify_checksum: bool,
        on_module: OnModule,
        max_string: int,
        keep_string_raw: bool = True,
        skip_decode: Callable[[int], bool] | None = None,
        stream_over: int = 0,
        string_sink: Callable[[int, bytes, bytes], None] | None = None,
        string_run: StringRun | None = None,
    ) -> None:
        if on_module not in ("error", "skip"):
            raise ValueError(f"on_module must be 'error' or 'skip', not {on_module!r}")
        self.r = _Reader(source, track_crc=verify_checksum, max_string=max_string)
        self.raw_limit = raw_limit
        self.keep_string_raw = keep_string_raw
        self.skip_decode = skip_decode
        self.stream_over = stream_over
        self.string_sink = string_sink
        self.string_run = string_run
        self.verify_checksum = verify_checksum
        self.on_module = on_module
        self.magic = "REDIS"
        self.version = 0
        self.kinds = _REDIS_KINDS
        self.decoders: dict[int, Callable[[int], _Decoded]] = {}
        self.set_dialect("REDIS", 0)

    def set_dialect(self, magic: str, version: int) -> None:
        """Type bytes 22+ mean different things in Redis and Valkey RDBs (see the module doc)."""
        self.magic = magic
        self.version = version
        self.kinds = _VALKEY_KINDS if magic == "VALKEY" else _REDIS_KINDS
        decoders: dict[int, Callable[[int], _Decoded]] = {
            RDB_TYPE_LIST: self.plain_strings,
            RDB_TYPE_SET: self.plain_strings,
            RDB_TYPE_SET_INTSET: self.intset,
            RDB_TYPE_SET_LISTPACK: self.listpack_strings,
            RDB_TYPE_LIST_ZIPLIST: self.ziplist_strings,
            RDB_TYPE_LIST_QUICKLIST: self.quicklist,
            RDB_TYPE_LIST_QUICKLIST_2: self.quicklist_2,
            RDB_TYPE_ZSET: self.zset_plain,
            RDB_TYPE_ZSET_2: self.zset_plain,
            RDB_TYPE_ZSET_ZIPLIST: self.zset_ziplist,
            RDB_TYPE_ZSET_LISTPACK: self.zset_listpack,
            RDB_TYPE_HASH: self.hash_plain,
            RDB_TYPE_HASH_LISTPACK: self.hash_listpack,
            RDB_TYPE_HASH_ZIPLIST: self.hash_ziplist,
            RDB_TYPE_HASH_ZIPMAP: self.hash_zipmap,
            RDB_TYPE_STREAM_LISTPACKS: self.stream_value,
            RDB_TYPE_STREAM_LISTPACKS_2: self.stream_value,
            RDB_TYPE_STREAM_LISTPACKS_3: self.stream_value,
        }
        if magic == "VALKEY":
            decoders[VALKEY_RDB_TYPE_HASH_2] = self.valkey_hash_2
        else:
            decoders[RDB_TYPE_HASH_METADATA_PRE_GA] = self.redis_hash_metadata
            decoders[RDB_TYPE_HASH_METADATA] = self.redis_hash_metadata
            decoders[RDB_TYPE_HASH_LISTPACK_EX_PRE_GA] = self.redis_hash_listpack_ex
            decoders[RDB_TYPE_HASH_LISTPACK_EX] = self.redis_hash_listpack_ex
        self.decoders = decoders

    # -- top level

    def header(self) -> RdbHeader:
        head = self.r.read(9)
        if head.startswith(b"REDIS"):
            magic, digits = "REDIS", head[5:]
        elif head.startswith(b"VALKEY"):
            magic, digits = "VALKEY", head[6:]
        else:
            raise RdbFormatError(f"bad magic {head!r}: not an RDB file", 0)
        if not digits.isdigit():
            raise RdbFormatError(f"bad RDB version field {digits!r} in {head!r}", len(head) - 4)
        version = int(digits)
        if (
            version < 1
            or (magic == "VALKEY" and version < 80)
            or (magic == "REDIS" and version >= 80)
        ):
            raise RdbFormatError(f"RDB version {version} is not valid with magic {magic}", 5)
        self.set_dialect(magic, version)
        return RdbHeader(magic, version)

    def events(self) -> Iterator[RdbEvent]:
        r = self.r
        yield self.header()
        db = 0
        expire_ms: int | None = None
        idle: int | None = None
        freq: int | None = None
        raw_limit = self.raw_limit
        kinds = self.kinds
        decoders = self.decoders
        skip = self.skip_decode
        sink = self.string_sink
        run = self.string_run
        room = 0 if run is None else run.room
        while True:
            t = r.byte()
            if t == RDB_TYPE_STRING:
                if run is not None and expire_ms is None and idle is None and freq is None:
                    commands, taken = r.string_run(room, run.mset)
                    if taken:
                        room = run.sink(db, commands, taken)
                        continue
                key = r.string()
                if sink is not None and expire_ms is None and idle is None and freq is None:
                    sink(db, key, r.string())  # the common case, no event object at all
                    continue
                if raw_limit and self.keep_string_raw:
                    r.begin_capture(raw_limit)
                    value: Value = r.string()
                    captured = r.end_capture()
                    raw = None if captured is None else b"\x00" + captured
                else:
                    value = r.string()
                    raw = None
                yield KeyEntry(db, key, "string", value, expire_ms, raw, t, idle, freq)
                expire_ms = idle = freq = None
            elif t < RDB_OPCODE_SLOT_IMPORT:
                kind = kinds.get(t)
                if kind is None:
                    what = "value type" if t < 200 else "opcode"
                    raise RdbFormatError(
                        f"unknown {what} {t} for {self.magic} RDB version {self.version}",
                        r.offset - 1,
                    )
                key = r.string()
                if kind == "module":
                    entry = self.module_key(t, db, key, expire_ms, idle, freq)
                elif (skip is not None and t in _SKIPPABLE and skip(t)) or (
                    self.stream_over and t in _STREAMABLE
                ):
                    if skip is not None and t in _SKIPPABLE and skip(t):
                        entry = self.undecoded_key(t, db, key, kind, expire_ms, idle, freq)
                    else:
                        entry = self.maybe_streamed_key(t, db, key, kind, expire_ms, idle, freq)
                    yield entry
                    if isinstance(entry.value, ChunkedValue):
                        for _ in entry.value:  # whatever the consumer left
                            pass
                    expire_ms = idle = freq = None
                    continue
                else:
                    if raw_limit:
                        r.begin_capture(raw_limit)
                    value, field_expiry = decoders[t](t)
                    captured = r.end_capture() if raw_limit else None
                    raw = None if captured is None else _TYPE_PREFIX[t] + captured
                    entry = KeyEntry(
                        db, key, kind, value, expire_ms, raw, t, idle, freq, field_expiry
                    )
                yield entry
                expire_ms = idle = freq = None
            elif t == RDB_OPCODE_EXPIRETIME_MS:
                expire_ms = int(_I64_LE.unpack(r.read(8))[0])
            elif t == RDB_OPCODE_EXPIRETIME:
                expire_ms = int(_I32_LE.unpack(r.read(4))[0]) * 1000
            elif t == RDB_OPCODE_IDLE:
                idle = r.length()
            elif t == RDB_OPCODE_FREQ:
                freq = r.byte()
            elif t == RDB_OPCODE_SELECTDB:
                db = r.length()
                yield SelectDb(db)
            elif t == RDB_OPCODE_RESIZEDB:
                yield ResizeDb(r.length(), r.length())
            elif t == RDB_OPCODE_AUX:
                yield AuxField(r.string(), r.string())
            elif t == RDB_OPCODE_FUNCTION2:
                yield FunctionEntry(r.string())
            elif t == RDB_OPCODE_SLOT_INFO:
                yield SlotInfo(r.length(), r.length(), r.length())
            elif t == RDB_OPCODE_MODULE_AUX:
                yield self.module_aux()
            elif t == RDB_OPCODE_SLOT_IMPORT and self.magic == "VALKEY":
                job = r.string()
                count = self.count(r.length(), 2, "slot import ranges")
                yield SlotImport(job, tuple((r.length(), r.length()) for _ in range(count)))
            elif t == RDB_OPCODE_EOF:
                yield self.end()
                return
            elif t == RDB_OPCODE_FUNCTION_PRE_GA:
                raise RdbFormatError(
                    "function library in the pre-GA format (opcode 246, Redis 7.0 RC) "
                    "is not supported",
                    r.offset - 1,
                )
            else:
                raise RdbFormatError(
                    f"unknown opcode {t} for {self.magic} RDB version {self.version}",
                    r.offset - 1,
                )

    def end(self) -> RdbEnd:
        r = self.r
        if self.version < 5:
            return RdbEnd(b"", False)
        computed = r.crc() if self.verify_checksum else 0
        checksum = r.read(8)
        stored = int.from_bytes(checksum, "little")
        if not self.verify_checksum or stored == 0:
            return RdbEnd(checksum, False)
        if stored != computed:
            raise RdbChecksumError(
                f"RDB checksum mismatch: trailer {stored:#018x}, content {computed:#018x}",
                r.offset - 8,
            )
        return RdbEnd(checksum, True)

    # -- helpers

    def maybe_streamed_key(
        self,
        t: int,
        db: int,
        key: bytes,
        kind: Kind,
        expire_ms: int | None,
        idle: int | None,
        freq: int | None,
    ) -> KeyEntry:
        """stream_over: a collection with more elements (quicklists: more nodes than
        stream_over / 128) comes as a ChunkedValue read while it is consumed; a smaller one
        is decoded as usual (and captured as raw)."""
        r = self.r
        raw_limit = self.raw_limit
        if raw_limit:
            r.begin_capture(raw_limit)
        n = r.length()
        quicklist = t in (RDB_TYPE_LIST_QUICKLIST, RDB_TYPE_LIST_QUICKLIST_2)
        if n > (max(1, self.stream_over // 128) if quicklist else self.stream_over):
            if raw_limit:
                r.end_capture()  # no raw: the value is never held whole
            chunks = self.chunks(t, self.count(n, 1, f"{kind} elements"))
            return KeyEntry(db, key, kind, ChunkedValue(chunks), expire_ms, None, t, idle, freq)
        value, field_expiry = self.counted(t, self.count(n, 1, f"{kind} elements"))
        captured = r.end_capture() if raw_limit else None
        raw = None if captured is None else _TYPE_PREFIX[t] + captured
        return KeyEntry(db, key, kind, value, expire_ms, raw, t, idle, freq, field_expiry)

    def counted(self, t: int, n: int) -> _Decoded:
        """A streamable type's value after its count was read, decoded whole."""
        items: list[Any] = []
        for chunk in self.chunks(t, n):
            items.extend(chunk)
        return items, None

    def chunks(self, t: int, n: int, size: int = 512) -> Iterator[list[Any]]:
        r = self.r
        if t in (RDB_TYPE_LIST, RDB_TYPE_SET):
            while n:
                take = min(n, size)
                n -= take
                yield [r.string() for _ in range(take)]
        elif t in (RDB_TYPE_ZSET, RDB_TYPE_ZSET_2):
            read_score = self.binary_double if t == RDB_TYPE_ZSET_2 else self.string_double
            while n:
                take = min(n, size)
                n -= take
                pairs: list[Any] = []
                for _ in range(take):
                    member = r.string()
                    pairs.append((member, read_score()))
                yield pairs
        elif t == RDB_TYPE_HASH:
            while n:
                take = min(n, size)
                n -= take
                yield [(r.string(), r.string()) for _ in range(take)]
        elif t == RDB_TYPE_LIST_QUICKLIST:
            for _ in range(n):
                at = r.offset
                yield _ziplist(r.string(), at)
        else:  # RDB_TYPE_LIST_QUICKLIST_2
            for _ in range(n):
                container = r.length()
                at = r.offset
                node = r.string()
                if container == QUICKLIST_NODE_CONTAINER_PACKED:
                    yield _listpack_strings(node, at)
                elif container == QUICKLIST_NODE_CONTAINER_PLAIN:
                    yield [node]
                else:
                    raise RdbFormatError(f"quicklist node container {container} unknown", at)

    def undecoded_key(
        self,
        t: int,
        db: int,
        key: bytes,
        kind: Kind,
        expire_ms: int | None,
        idle: int | None,
        freq: int | None,
    ) -> KeyEntry:
        """skip_decode: a compact value (one string, or quicklist nodes) read as bytes only;
        `value` stays None and `raw` carries it. One over raw_limit is decoded from those
        bytes after all (the consumer then needs its elements)."""
        r = self.r
        r.begin_capture(self.r.max_string)
        if t in (RDB_TYPE_LIST_QUICKLIST, RDB_TYPE_LIST_QUICKLIST_2):
            nodes = self.count(r.length(), 1, "quicklist nodes")
            if self.stream_over and nodes > max(1, self.stream_over // 128):
                r.end_capture()  # a big list: read while consumed, never held whole
                chunks = self.chunks(t, nodes)
                return KeyEntry(db, key, kind, ChunkedValue(chunks), expire_ms, None, t, idle, freq)
            for _ in range(nodes):
                if t == RDB_TYPE_LIST_QUICKLIST_2:
                    r.length()
                r.skip_string()
        else:
            r.skip_string()
        body = r.end_capture()
        if body is None:  # (quicklist nodes, or one string with its length prefix)
            raise RdbFormatError(
                f"the serialized value of key {key[:60]!r} is over the {r.max_string}-byte cap",
                r.offset,
            )
        raw = _TYPE_PREFIX[t] + body
        if len(body) <= self.raw_limit:
            return KeyEntry(db, key, kind, None, expire_ms, raw, t, idle, freq)
        decoded = decode_serialized_value(
            raw, rdb_version=self.version, valkey=self.magic == "VALKEY"
        )
        return KeyEntry(
            db, key, kind, decoded.value, expire_ms, None, t, idle, freq, decoded.field_expiry
        )

    def count(self, n: int, min_bytes_each: int, what: str) -> int:
        """A declared element count, refused at once when the input cannot hold it."""
        left = self.r.remaining()
        if left is not None and n * min_bytes_each > left:
            raise RdbTruncatedError(
                f"{what}: declared {n} elements but only {left} bytes of input remain",
                self.r.offset,
            )
        return n

    def binary_double(self) -> float:
        return float(_F64_LE.unpack(self.r.read(8))[0])

    def string_double(self) -> float:
        r = self.r
        n = r.byte()
        if n == 253:
            return float("nan")
        if n == 254:
            return float("inf")
        if n == 255:
            return float("-inf")
        text = r.read(n)
        try:
            return float(text)
        except ValueError:
            raise RdbFormatError(f"score {text!r} is not a number", r.offset - n) from None

    def millis(self) -> int:
        return int(_I64_LE.unpack(self.r.read(8))[0])

    def stream_id(self) -> StreamID:
        return StreamID(self.r.length(), self.r.length())

    # -- values

    def value(self, t: int) -> _Decoded:
        """Decode one value of type `t` (the type byte and key already read)."""
        decode = self.decoders.get(t)
        if decode is None:
            raise RdbFormatError(f"unknown value type {t}", self.r.offset)
        return decode(t)

    def plain_strings(self, t: int) -> _Decoded:
        r = self.r
        n = self.count(r.length(), 1, "list/set")
        return [r.string() for _ in range(n)], None

    def intset(self, t: int) -> _Decoded:
        at = self.r.offset
        return _intset(self.r.string(), at), None

    def listpack_strings(self, t: int) -> _Decoded:
        at = self.r.offset
        return _listpack_strings(self.r.string(), at), None

    def ziplist_strings(self, t: int) -> _Decoded:
        at = self.r.offset
        return _ziplist(self.r.string(), at), None

    def quicklist(self, t: int) -> _Decoded:
        r = self.r
        n = self.count(r.length(), 1, "quicklist nodes")
        items: list[bytes] = []
        for _ in range(n):
            node_at = r.offset
            items.extend(_ziplist(r.string(), node_at))
        return items, None

    def quicklist_2(self, t: int) -> _Decoded:
        r = self.r
        n = self.count(r.length(), 2, "quicklist nodes")
        items: list[bytes] = []
        for _ in range(n):
            container = r.length()
            node_at = r.offset
            node = r.string()
            if container == QUICKLIST_NODE_CONTAINER_PACKED:
                items.extend(_listpack_strings(node, node_at))
            elif container == QUICKLIST_NODE_CONTAINER_PLAIN:
                items.append(node)
            else:
                raise RdbFormatError(f"quicklist node container {container} unknown", node_at)
        return items, None

    def zset_plain(self, t: int) -> _Decoded:
        r = self.r
        n = self.count(r.length(), 2, "sorted set")
        read_score = self.binary_double if t == RDB_TYPE_ZSET_2 else self.string_double
        pairs: list[tuple[bytes, float]] = []
        for _ in range(n):
            member = r.string()
            pairs.append((member, read_score()))
        return pairs, None

    def zset_ziplist(self, t: int) -> _Decoded:
        at = self.r.offset
        return _zset_pairs(_ziplist(self.r.string(), at), "zset ziplist", at), None

    def zset_listpack(self, t: int) -> _Decoded:
        at = self.r.offset
        return _zset_pairs(_listpack(self.r.string(), at, False), "zset listpack", at), None

    def hash_plain(self, t: int) -> _Decoded:
        r = self.r
        n = self.count(r.length(), 2, "hash")
        return [(r.string(), r.string()) for _ in range(n)], None

    def hash_listpack(self, t: int) -> _Decoded:
        at = self.r.offset
        return _pairs(_listpack_strings(self.r.string(), at), "hash listpack", at), None

    def hash_ziplist(self, t: int) -> _Decoded:
        at = self.r.offset
        return _pairs(_ziplist(self.r.string(), at), "hash ziplist", at), None

    def hash_zipmap(self, t: int) -> _Decoded:
        at = self.r.offset
        return _zipmap(self.r.string(), at), None

    def stream_value(self, t: int) -> _Decoded:
        return self.stream(t), None

    def valkey_hash_2(self, t: int) -> _Decoded:
        """Valkey RDB_TYPE_HASH_2: n x (field, value, 8-byte expire-at ms, -1 = none)."""
        r = self.r
        n = self.count(r.length(), 10, "hash")
        pairs: list[tuple[bytes, bytes]] = []
        expiry: list[tuple[bytes, int]] = []
        for _ in range(n):
            field = r.string()
            value = r.string()
            expire = self.millis()
            if expire < -1:
                raise RdbFormatError(f"hash field expire-at {expire} is invalid", r.offset - 8)
            pairs.append((field, value))
            if expire != -1:
                expiry.append((field, expire))
        return pairs, expiry

    def redis_hash_metadata(self, t: int) -> _Decoded:
        """Redis 7.4 RDB_TYPE_HASH_METADATA(_PRE_GA): [min expire,] n x (ttl, field, value)."""
        r = self.r
        min_expire = self.millis() if t == RDB_TYPE_HASH_METADATA else 0
        n = self.count(r.length(), 3, "hash")
        pairs: list[tuple[bytes, bytes]] = []
        expiry: list[tuple[bytes, int]] = []
        for _ in range(n):
            ttl = r.length()
            field = r.string()
            value = r.string()
            pairs.append((field, value))
            if ttl:
                expiry.append((field, ttl + min_expire - 1 if t == RDB_TYPE_HASH_METADATA else ttl))
        return pairs, expiry

    def redis_hash_listpack_ex(self, t: int) -> _Decoded:
        """Redis 7.4 RDB_TYPE_HASH_LISTPACK_EX(_PRE_GA): [min expire,] listpack of
        (field, value, expire-at ms or 0) triplets."""
        r = self.r
        if t == RDB_TYPE_HASH_LISTPACK_EX:
            self.millis()  # min expire: a hint, the triplets carry absolute times
        at = r.offset
        items = _listpack(r.string(), at, False)
        if len(items) % 3:
            raise RdbFormatError(f"hash listpack-ex has {len(items)} elements, not triplets", at)
        pairs: list[tuple[bytes, bytes]] = []
        expiry: list[tuple[bytes, int]] = []
        for i in range(0, len(items), 3):
            field = _as_bytes(items[i])
            pairs.append((field, _as_bytes(items[i + 1])))
            ttl = items[i + 2]
            if not isinstance(ttl, int):
                raise RdbFormatError("hash listpack-ex expire-at is not an integer", at)
            if ttl:
                expiry.append((field, ttl))
        return pairs, expiry

    def stream(self, t: int) -> StreamValue:
        r = self.r
        n_nodes = self.count(r.length(), 2, "stream nodes")
        entries: list[StreamEntry] = []
        for _ in range(n_nodes):
            key_at = r.offset
            node_key = r.string()
            if len(node_key) != 16:
                raise RdbFormatError(
                    f"stream node key is {len(node_key)} bytes, a stream ID is 16", key_at
                )
            lp_at = r.offset
            entries.extend(_stream_node_entries(node_key, r.string(), lp_at))
        length = r.length()
        last_id = self.stream_id()
        first_id = max_deleted_id = None
        entries_added = None
        if t >= RDB_TYPE_STREAM_LISTPACKS_2:
            first_id = self.stream_id()
            max_deleted_id = self.stream_id()
            entries_added = r.length()
        n_groups = self.count(r.length(), 4, "stream groups")
        groups = tuple(self.stream_group(t) for _ in range(n_groups))
        return StreamValue(
            tuple(entries), length, last_id, first_id, max_deleted_id, entries_added, groups
        )

    def stream_group(self, t: int) -> StreamGroup:
        r = self.r
        name = r.string()
        last_id = self.stream_id()
        entries_read = _signed64(r.length()) if t >= RDB_TYPE_STREAM_LISTPACKS_2 else None
        n_pending = self.count(r.length(), 17, "stream group PEL")
        nacks: dict[bytes, tuple[int, int]] = {}
        for _ in range(n_pending):
            raw_id = r.read(16)
            delivery_time = self.millis()
            nacks[raw_id] = (delivery_time, r.length())
        owners: dict[bytes, bytes] = {}
        n_consumers = self.count(r.length(), 10, "stream consumers")
        consumers: list[StreamConsumer] = []
        for _ in range(n_consumers):
            consumer = r.string()
            seen = self.millis()
            active = self.millis() if t >= RDB_TYPE_STREAM_LISTPACKS_3 else None
            n_own = self.count(r.length(), 16, "stream consumer PEL")
            own: list[StreamID] = []
            for _ in range(n_own):
                at = r.offset
                raw_id = r.read(16)
                if raw_id not in nacks:
                    raise RdbFormatError("consumer PEL entry missing from the group PEL", at)
                owners[raw_id] = consumer
                own.append(StreamID(*_STREAM_ID.unpack(raw_id)))
            consumers.append(StreamConsumer(consumer, seen, active, tuple(own)))
        pending = tuple(
            StreamPendingEntry(
                StreamID(*_STREAM_ID.unpack(raw_id)), when, count, owners.get(raw_id)
            )
            for raw_id, (when, count) in nacks.items()
        )
        return StreamGroup(name, last_id, entries_read, pending, tuple(consumers))

    # -- modules

    def skip_module_body(self, name: str, key: bytes | None) -> None:
        """Skip a self-describing (RDB_TYPE_MODULE_2 style) body up to its EOF opcode."""
        r = self.r
        while True:
            at = r.offset
            op = r.length()
            if op == RDB_MODULE_OPCODE_EOF:
                return
            if op in (RDB_MODULE_OPCODE_SINT, RDB_MODULE_OPCODE_UINT):
                r.length()
            elif op == RDB_MODULE_OPCODE_FLOAT:
                r.read(4)
            elif op == RDB_MODULE_OPCODE_DOUBLE:
                r.read(8)
            elif op == RDB_MODULE_OPCODE_STRING:
                r.string()
            else:
                raise RdbModuleError(name, key, at, f"unknown module opcode {op}")

    def module_key(
        self,
        t: int,
        db: int,
        key: bytes,
        expire_ms: int | None,
        idle: int | None,
        freq: int | None,
    ) -> KeyEntry:
        r = self.r
        at = r.offset
        r.begin_capture(r.max_string)
        module_id = r.length()
        name = module_type_name(module_id)
        if t == RDB_TYPE_MODULE_PRE_GA:
            r.end_capture()
            raise RdbModuleError(name, key, at, "pre-GA module format cannot be skipped")
        if self.on_module == "error":
            r.end_capture()
            raise RdbModuleError(
                name, key, at, "load the module on the target or parse with on_module='skip'"
            )
        self.skip_module_body(name, key)
        captured = r.end_capture()
        raw = None if captured is None else _TYPE_PREFIX[t] + captured
        value = ModuleValue(name, module_id)
        return KeyEntry(db, key, "module", value, expire_ms, raw, t, idle, freq)

    def module_aux(self) -> ModuleAux:
        r = self.r
        at = r.offset
        module_id = r.length()
        when_opcode = r.length()
        when = r.length()
        name = module_type_name(module_id)
        if when_opcode != RDB_MODULE_OPCODE_UINT:
            raise RdbFormatError(f"module aux for {name!r} has bad when-opcode {when_opcode}", at)
        if self.on_module == "error":
            raise RdbModuleError(name, None, at, "parse with on_module='skip' to ignore it")
        self.skip_module_body(name, None)
        return ModuleAux(name, module_id, when)


# ----------------------------------------------------------------------------- entry points


def parse_rdb(
    source: RdbSource,
    *,
    raw_limit: int,
    verify_checksum: bool = True,
    on_module: OnModule = "skip",
    max_string_bytes: int = DEFAULT_MAX_STRING_BYTES,
    keep_string_raw: bool = True,
    skip_decode: Callable[[int], bool] | None = None,
    stream_over: int = 0,
    string_sink: Callable[[int, bytes, bytes], None] | None = None,
    string_run: StringRun | None = None,
) -> Iterator[RdbEvent]:
    """Events of the RDB read from `source`, one at a time, ending with RdbEnd.

    raw_limit: keep KeyEntry.raw for values whose serialized form is at most this many bytes
    (0 = never). verify_checksum: check the CRC-64 trailer (RdbChecksumError). on_module:
    "skip" yields module values as KeyEntry(kind="module", raw=...) and module aux data as
    ModuleAux; "error" raises RdbModuleError. max_string_bytes: a declared string length over
    this is refused (RdbFormatError) before anything is read. keep_string_raw=False: no
    `raw` for plain strings (a writer that SETs them does not need it; saves a copy per key).
    skip_decode(rdb_type) → True: a compact value of that type (ziplist, listpack, intset,
    zipmap, quicklist) is not decoded: KeyEntry.value is None and raw holds it (a writer
    that RESTOREs it needs nothing more; decode_serialized_value gives the elements).
    stream_over > 0: a list, set, zset or hash (hashtable, skiplist, linked list or quicklist
    encoding) with more elements than that comes as a ChunkedValue, read while consumed.
    string_sink(db, key, value): plain strings without a TTL (or LRU/LFU data) are handed to
    it instead of being yielded as KeyEntry events (a loader's fast path). string_run: runs of
    them (short, stored plain) handed over together as SET commands (faster still; what it
    does not take goes to string_sink).
    Nothing is read past the EOF opcode and its checksum."""
    parser = _Parser(
        source,
        raw_limit=raw_limit,
        verify_checksum=verify_checksum,
        on_module=on_module,
        max_string=max_string_bytes,
        keep_string_raw=keep_string_raw,
        skip_decode=skip_decode,
        stream_over=stream_over,
        string_sink=string_sink,
        string_run=string_run,
    )
    return parser.events()


def decode_serialized_value(
    raw: bytes,
    *,
    rdb_version: int,
    valkey: bool | None = None,
    on_module: OnModule = "skip",
) -> DecodedValue:
    """Decode a type byte + serialized value (KeyEntry.raw, or DumpPayload.value from a DUMP
    reply). The type byte 22 is read as Valkey's when `valkey` (default: rdb_version >= 80)."""
    if not raw:
        raise RdbFormatError("empty serialized value", 0)
    is_valkey = rdb_version >= 80 if valkey is None else valkey
    parser = _Parser(
        BytesSource(raw),
        raw_limit=0,
        verify_checksum=False,
        on_module=on_module,
        max_string=DEFAULT_MAX_STRING_BYTES,
    )
    parser.set_dialect("VALKEY" if is_valkey else "REDIS", rdb_version)
    t = parser.r.byte()
    kind = parser.kinds.get(t)
    if kind is None:
        raise RdbFormatError(f"unknown value type {t} for RDB version {rdb_version}", 0)
    if kind == "module":
        entry = parser.module_key(t, 0, b"", None, None, None)
        assert entry.value is not None
        result = DecodedValue("module", entry.value, None)
    elif t == RDB_TYPE_STRING:
        result = DecodedValue("string", parser.r.string(), None)
    else:
        value, field_expiry = parser.value(t)
        result = DecodedValue(kind, value, field_expiry)
    if parser.r.offset != len(raw):
        raise RdbFormatError(
            f"serialized value ends at byte {parser.r.offset} of {len(raw)}", parser.r.offset
        )
    return result
