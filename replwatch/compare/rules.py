"""Pure rules: given what was read of one key on both servers, what difference it is.

The order a key is judged in: not on the source (gone meanwhile: nothing to compare), missing
on the target, another type on the target, then its TTL and its value. TTLs are equal within
a tolerance, and one side's may also be longer by the expire grace a sync task writing that
side allows (replwatch/sync/expiry.py); a TTL on one side only is a difference. Values are
judged by size first (value_rules.py then says how equal-sized values differ). A key that
exists on the target only is `extra`. No I/O here: reading.py and scan.py read, these decide.
"""

from __future__ import annotations

import enum
import fnmatch
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any, Final, Literal

from replwatch.compare.display import format_ttl
from replwatch.compare.model import Finding
from replwatch.compare.value_rules import (
    CHANGED,
    compare_stream_entries,
    compare_stream_meta,
    compare_whole_value,
)

# the word used when the sizes of two values of a core type differ
SIZE_NOUNS: Final[Mapping[str, str]] = MappingProxyType(
    {
        "string": "length",
        "list": "length",
        "set": "cardinality",
        "zset": "cardinality",
        "hash": "fields",
        "stream": "length",
    }
)

KeyOutcome = Literal["equal", "missing", "different"]


@dataclass(frozen=True)
class KeyHead:
    """What TYPE and PTTL said of a key on one server ("none" when it does not exist;
    a PTTL below 0 when it has no TTL)."""

    type_name: str
    pttl: int


@dataclass(frozen=True)
class TtlAllowance:
    """How much two TTLs of a key may differ: `tolerance` either way, and the target's may be
    up to `grace` longer, the source's up to `source_grace` longer (seconds)."""

    tolerance: float
    grace: float = 0.0
    source_grace: float = 0.0


@dataclass(frozen=True)
class HeadVerdict:
    """A key judged by its type and TTL on both sides."""

    findings: tuple[Finding, ...] | None  # None: not on the source, nothing to compare
    value_type: str | None = None  # both sides hold this type: compare the values next


class ReadPlan(enum.Enum):
    """How a value of equal size on both sides is read next."""

    WHOLE = "whole"  # in one reply per side
    META_THEN_CHUNKS = "meta then chunks"  # a long stream: XINFO now, entries in chunks after
    CHUNKS = "chunks"  # chunk by chunk, memory bounded per key


# --------------------------------------------------------------------------- type and TTL


def head_verdict(source: KeyHead, target: KeyHead, allowance: TtlAllowance) -> HeadVerdict:
    """Missing, another type, or (same type) the TTL difference, if any."""
    if source.type_name == "none":
        return HeadVerdict(None)
    if target.type_name == "none":
        return HeadVerdict((("missing", f"missing on target (source type {source.type_name})"),))
    if source.type_name != target.type_name:
        return HeadVerdict((("type", f"type {source.type_name} vs {target.type_name}"),))
    ttl = ttl_finding(
        source.pttl, target.pttl, allowance.tolerance, allowance.grace, allowance.source_grace
    )
    return HeadVerdict((("ttl", ttl),) if ttl is not None else (), source.type_name)


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
        left = "none" if source_pttl < 0 else format_ttl(source_pttl)
        right = "none" if target_pttl < 0 else format_ttl(target_pttl)
        return f"ttl {left} vs {right}"
    longer = target_pttl - source_pttl
    if longer < -(tolerance + source_grace) * 1000 or longer > (grace + tolerance) * 1000:
        allowed = f"tolerance {tolerance:g}s" + (f", expire grace {grace:g}s" if grace else "")
        if source_grace:
            allowed += f", source expire grace {source_grace:g}s"
        return f"ttl {format_ttl(source_pttl)} vs {format_ttl(target_pttl)} ({allowed})"
    return None


# --------------------------------------------------------------------------- the value


def has_size(kind: str) -> bool:
    """Core types are sized first (STRLEN, LLEN …); module types go straight to DUMP."""
    return kind in SIZE_NOUNS


def size_verdict(
    kind: str, sizes: tuple[int, int] | None, chunk: int, string_chunk_bytes: int
) -> str | ReadPlan:
    """The size of a value on both sides (None: the key changed type while it was read) →
    the difference, or how to read the values next. A value larger than one chunk (bytes
    for strings, elements otherwise) is read in chunks; a stream's XINFO is always read
    whole, its entries too when they fit one chunk."""
    if sizes is None:
        return CHANGED
    source_size, target_size = sizes
    if source_size != target_size:
        return f"{SIZE_NOUNS[kind]} {source_size} vs {target_size}"
    if kind == "stream":
        return ReadPlan.WHOLE if source_size <= chunk else ReadPlan.META_THEN_CHUNKS
    limit = string_chunk_bytes if kind == "string" else chunk
    return ReadPlan.WHOLE if source_size <= limit else ReadPlan.CHUNKS


def whole_value_verdict(
    kind: str, plan: ReadPlan, replies: tuple[Sequence[Any], Sequence[Any]] | None
) -> str | Literal[ReadPlan.CHUNKS] | None:
    """What the whole-value reads returned on both sides (None: the key changed type
    meanwhile) → the difference, None when equal, or CHUNKS: a long stream whose metadata
    agree, so its entries are compared in chunks next. Streams read [XINFO STREAM, XINFO
    GROUPS] and, planned WHOLE, XRANGE; other types one reply."""
    if replies is None:
        return CHANGED
    source, target = replies
    if kind == "stream":
        detail = compare_stream_meta(source[0], target[0], source[1], target[1])
        if detail is None and plan is ReadPlan.META_THEN_CHUNKS:
            return ReadPlan.CHUNKS
        return detail or compare_stream_entries(source[2], target[2])
    return compare_whole_value(kind, source[0], target[0])


def key_findings(head: HeadVerdict, value_detail: str | None) -> list[Finding] | None:
    """The findings of one key: its value difference first, then its type/TTL findings."""
    if head.findings is None:
        return None
    value: list[Finding] = [("value", value_detail)] if value_detail is not None else []
    return value + list(head.findings)


def key_outcome(findings: Sequence[Finding]) -> KeyOutcome:
    """How a compared source key counts: missing on the target, different, or equal."""
    if not findings:
        return "equal"
    if any(kind == "missing" for kind, _ in findings):
        return "missing"
    return "different"


# --------------------------------------------------------------------------- extra, ignored


def is_extra(target_type: str, on_source: bool) -> bool:
    """A target key is extra while it exists there (TYPE is not none) and not on the source."""
    return target_type != "none" and not on_source


def extra_finding(target_type: str) -> Finding:
    return ("extra", f"on target only (type {target_type})")


def is_ignored(key: bytes, patterns: Sequence[bytes]) -> bool:
    """Whether a key matches one of the --ignore globs (case-sensitive, like Redis MATCH)."""
    return any(fnmatch.fnmatchcase(key, pattern) for pattern in patterns)
