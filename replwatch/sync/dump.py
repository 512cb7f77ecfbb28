"""DUMP/RESTORE payloads, CRC-64/Jones, and which RDB version a RESTORE target accepts.

A DUMP payload (Redis src/cluster.c createDumpPayload / verifyDumpPayload, Valkey the same) is

    <type byte> <value, serialized as in an RDB file> <RDB version: 2 B, LE> <CRC64: 8 B, LE>

where the CRC covers everything before it. The CRC is Redis's crc64 (src/crc64.c): "Jones"
polynomial 0xad93d23594c935a9, reflected in and out, initial value 0, no final xor;
crc64(b"123456789") == 0xe9c6d914c4b8d9ca. The same CRC, computed over a whole RDB file up to
and including its EOF opcode, is the file's 8-byte little-endian trailer.

RESTORE rules, from the sources:
- Redis (every version): the payload's RDB version must be <= the server's RDB_VERSION.
- Valkey 9.x (src/rdb.c rdbIsVersionAccepted(rdbver, false, false), called by
  verifyDumpPayload): with the default `rdb-version-check strict`, versions 1..11 and
  80..RDB_VERSION are accepted; 12..79 are the "foreign" range (Redis CE 7.4+) and rejected,
  as is anything above RDB_VERSION. `rdb-version-check relaxed` accepts any version >= 1.
  Valkey 7.2 / 8.x behave like Redis with RDB_VERSION 11.
The type byte must also be one the target knows (`RestoreTarget.supports_type`).

The CRC runs in C through the `crcmod` package's extension module when it is installed
(about 400 MB/s here); otherwise a table-driven pure-Python loop is used (a few MB/s: correct,
but far too slow to verify a large RDB — `CRC64_IMPLEMENTATION` says which one is active).
"""

from __future__ import annotations

import importlib
import re
import struct
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from replwatch.errors import ReplwatchError

__all__ = [
    "CRC64_IMPLEMENTATION",
    "DumpPayload",
    "DumpPayloadError",
    "RestoreTarget",
    "build_dump_payload",
    "crc64",
    "min_rdb_version_for_type",
    "restore_target_from_info",
    "split_dump_payload",
]

CRC64_JONES_POLY_REFLECTED = 0x95AC9329AC4BC9B5  # 0xad93d23594c935a9 bit-reversed
_FOOTER = struct.Struct("<HQ")
FOOTER_SIZE = _FOOTER.size  # 10

Buffer = bytes | bytearray | memoryview


class DumpPayloadError(ReplwatchError):
    """A DUMP payload is too short or its CRC does not match."""


# ----------------------------------------------------------------------------- CRC-64/Jones


def _crc64_table() -> tuple[int, ...]:
    table = []
    for byte in range(256):
        crc = byte
        for _ in range(8):
            crc = (crc >> 1) ^ CRC64_JONES_POLY_REFLECTED if crc & 1 else crc >> 1
        table.append(crc)
    return tuple(table)


_TABLE = _crc64_table()


def _crc64_python(data: Buffer, crc: int = 0) -> int:
    """Table-driven CRC-64/Jones, one byte per step (the fallback; slow)."""
    table = _TABLE
    for byte in bytes(data):
        crc = table[(crc ^ byte) & 0xFF] ^ (crc >> 8)
    return crc


def _load_crc64() -> tuple[Callable[[Buffer, int], int], str]:
    """crcmod's C extension when importable (imported dynamically: crcmod ships no types)."""
    try:
        crcmod: Any = importlib.import_module("crcmod")
        importlib.import_module("crcmod._crcfunext")  # the C extension, not the pure fallback
    except ImportError:
        return _crc64_python, "python-table"
    fun = crcmod.mkCrcFun(0x1AD93D23594C935A9, initCrc=0, rev=True, xorOut=0)

    def crc64_c(data: Buffer, crc: int = 0) -> int:
        return int(fun(data, crc))

    return crc64_c, "crcmod-c"


_CRC64, CRC64_IMPLEMENTATION = _load_crc64()


def crc64(data: Buffer, crc: int = 0) -> int:
    """CRC-64/Jones of `data`, continuing from `crc` (pass the previous result to chain)."""
    return _CRC64(data, crc)


# ----------------------------------------------------------------------------- payloads


@dataclass(frozen=True, slots=True)
class DumpPayload:
    """A DUMP payload taken apart. `value` is the type byte + serialized value."""

    value: bytes
    rdb_version: int
    crc: int

    @property
    def rdb_type(self) -> int:
        return self.value[0]


def build_dump_payload(value: Buffer, rdb_version: int) -> bytes:
    """type byte + serialized value (e.g. KeyEntry.raw) → a payload RESTORE accepts."""
    if not value:
        raise DumpPayloadError("cannot build a DUMP payload from an empty value")
    if not 0 < rdb_version <= 0xFFFF:
        raise DumpPayloadError(f"RDB version {rdb_version} does not fit the 2-byte footer")
    body = bytes(value) + struct.pack("<H", rdb_version)
    return body + struct.pack("<Q", crc64(body))


def split_dump_payload(payload: Buffer, *, verify: bool = True) -> DumpPayload:
    """A DUMP reply → (type byte + value, RDB version, CRC); checks the CRC unless told not to.

    A CRC of 0 is accepted as "not computed" only when `verify` is False."""
    data = bytes(payload)
    if len(data) < FOOTER_SIZE + 1:
        raise DumpPayloadError(
            f"DUMP payload of {len(data)} bytes is too short (type byte + 10-byte footer)"
        )
    version, crc = _FOOTER.unpack_from(data, len(data) - FOOTER_SIZE)
    if verify:
        computed = crc64(memoryview(data)[:-8])
        if computed != crc:
            raise DumpPayloadError(
                f"DUMP payload CRC mismatch: footer says {crc:#018x}, "
                f"content gives {computed:#018x}"
            )
    return DumpPayload(data[:-FOOTER_SIZE], version, crc)


# ----------------------------------------------------------------------------- targets

# The RDB version that introduced each type byte, per dialect. Types 0-21 are shared; Redis
# CE 7.4 (RDB 12) gave 22-25 to hash field expiry, Valkey 9.0 (RDB 80) gave 22 to its own
# hash-with-field-expiry format (RDB_TYPE_HASH_2): the same byte means different things.
_SHARED_TYPE_MIN_VERSION: dict[int, int] = {
    0: 1, 1: 1, 2: 1, 3: 1, 4: 1,
    5: 8,  # ZSET_2
    7: 8,  # MODULE_2
    9: 2, 10: 4, 11: 4, 12: 4, 13: 4,
    14: 7,  # LIST_QUICKLIST
    15: 9,  # STREAM_LISTPACKS
    16: 10, 17: 10, 18: 10, 19: 10,  # 7.0 listpacks, quicklist 2, stream v2
    20: 11, 21: 11,  # set listpack, stream v3
}  # fmt: skip
_REDIS_TYPE_MIN_VERSION = {**_SHARED_TYPE_MIN_VERSION, 22: 12, 23: 12, 24: 12, 25: 12}
_VALKEY_TYPE_MIN_VERSION = {**_SHARED_TYPE_MIN_VERSION, 22: 80}


def min_rdb_version_for_type(rdb_type: int, *, valkey: bool) -> int | None:
    """The first RDB version that has this type byte in the given dialect; None if none does."""
    table = _VALKEY_TYPE_MIN_VERSION if valkey else _REDIS_TYPE_MIN_VERSION
    return table.get(rdb_type)


VALKEY_FOREIGN_VERSIONS = range(12, 80)  # RDB_FOREIGN_VERSION_MIN..MAX in valkey src/rdb.h


@dataclass(frozen=True, slots=True)
class RestoreTarget:
    """What a server accepts in RESTORE. `rdb_version` is its own RDB_VERSION (what DUMP writes)."""

    product: str  # "redis" | "valkey"
    version: tuple[int, ...]
    rdb_version: int

    @property
    def valkey(self) -> bool:
        return self.product == "valkey"

    def accepts(self, payload_version: int, *, relaxed: bool = False) -> bool:
        """Would verifyDumpPayload take a payload stamped with this RDB version?

        `relaxed` models Valkey's `rdb-version-check relaxed` (9.0+)."""
        if payload_version < 1:
            return False
        if self.valkey and self.rdb_version >= 80:
            if relaxed:
                return True
            return payload_version <= self.rdb_version and (
                payload_version not in VALKEY_FOREIGN_VERSIONS
            )
        return payload_version <= self.rdb_version

    def supports_type(self, rdb_type: int, *, source_valkey: bool) -> bool:
        """Can this server load a value with this type byte, written by a Redis
        (`source_valkey=False`) or a Valkey (`True`) source?"""
        needed = min_rdb_version_for_type(rdb_type, valkey=source_valkey)
        if needed is None:
            return False
        if self.valkey != source_valkey and needed > 11:
            return False  # 22+ mean different things on the two sides
        return needed <= self.rdb_version

    def payload_version_for(self, rdb_type: int, *, source_valkey: bool) -> int | None:
        """The RDB version to stamp on a RESTORE payload carrying this type, or None when the
        target cannot load it (then apply the value as plain commands)."""
        if not self.supports_type(rdb_type, source_valkey=source_valkey):
            return None
        return self.rdb_version


_VERSION_RE = re.compile(r"(\d+)\.(\d+)(?:\.(\d+))?")


def _parse_version(text: str) -> tuple[int, int, int]:
    match = _VERSION_RE.match(text.strip())
    if match is None:
        raise ValueError(f"unrecognised server version {text!r}")
    major, minor, patch = match.groups()
    return int(major), int(minor), int(patch or 0)


def _redis_rdb_version(version: tuple[int, int, int]) -> int:
    if version >= (7, 4):
        return 12  # 7.4 .. 8.x; newer Redis accept 12 as well (older versions always are)
    if version >= (7, 2):
        return 11
    if version >= (7, 0):
        return 10
    if version >= (5, 0):
        return 9
    if version >= (4, 0):
        return 8
    if version >= (3, 2):
        return 7
    return 6


def _valkey_rdb_version(version: tuple[int, int, int]) -> int:
    # RDB_VERSION_MAP in valkey src/rdb.h: {11, 7.2}, {80, 9.0}, {81, 9.2}
    if version >= (9, 2):
        return 81
    if version >= (9, 0):
        return 80
    return 11


def restore_target_from_info(info: Mapping[str, Any]) -> RestoreTarget:
    """INFO (server section, as redis-py parses it) → what RESTORE accepts there.

    Valkey reports `server_name:valkey` and `valkey_version` (8.0+); its `redis_version` is
    frozen at 7.2.4 and says nothing about the RDB format."""
    valkey_version = info.get("valkey_version")
    is_valkey = str(info.get("server_name", "")).lower() == "valkey" or bool(valkey_version)
    if is_valkey:
        version = _parse_version(str(valkey_version or info.get("redis_version", "7.2.4")))
        return RestoreTarget("valkey", version, _valkey_rdb_version(version))
    redis_version = info.get("redis_version")
    if redis_version is None:
        raise ValueError("INFO has neither redis_version nor valkey_version")
    version = _parse_version(str(redis_version))
    return RestoreTarget("redis", version, _redis_rdb_version(version))
