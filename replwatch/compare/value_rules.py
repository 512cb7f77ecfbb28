"""Pure rules: how two values of the same type differ, described for people.

Inputs are raw RESP2 replies as read from both servers (bytes, ints, flat lists); a value too
large for one reply arrives as an iterable of chunks, which these folds consume only until the
first difference (reading.py reads each chunk on demand). No I/O here: ZSCORE lookups a zset
description needs are passed in as functions.

Scores are compared as numbers (Redis 6.2 prints 1.1 as 1.1000000000000001, 7.0 as 1.1). Module
types (and any type this version does not know) compare by their DUMP payload without its
10-byte trailer (RDB version + CRC), so two server versions that encode a value alike agree.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from typing import Any, Final

from replwatch.compare.display import count_phrase, display_key, format_score, reply_text

CHANGED: Final = "changed while being compared"  # the key changed type while it was read
DUMP_TRAILER_BYTES: Final = 10  # 2-byte RDB version + 8-byte CRC64
STREAM_SEQ_MAX: Final = 2**64 - 1
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

ScoreLookup = Callable[[bytes], float | None]  # a member's score on one side, None: absent


# --------------------------------------------------------------------------- reply shapes


def first_difference(left: Sequence[Any], right: Sequence[Any]) -> int | None:
    """The first index where two sequences differ (a missing element counts), or None."""
    for index, (a, b) in enumerate(zip(left, right, strict=False)):
        if a != b:
            return index
    if len(left) != len(right):
        return min(len(left), len(right))
    return None


def reply_pairs(flat: Sequence[Any]) -> list[tuple[Any, Any]]:
    """A flat [a, b, c, d] reply (HGETALL, ZRANGE … WITHSCORES) → [(a, b), (c, d)]."""
    return list(zip(flat[::2], flat[1::2], strict=True))


def info_dict(flat: Any) -> dict[str, Any]:
    """A flat [name, value, name, value …] reply (XINFO) → {name: value}."""
    if not isinstance(flat, list):
        return {}
    return {reply_text(name): value for name, value in reply_pairs(flat)}


def scored(flat: Sequence[Any]) -> list[tuple[bytes, float]]:
    """A ZRANGE … WITHSCORES reply → [(member, score as a number)]."""
    return [(member, float(score)) for member, score in reply_pairs(flat)]


def parse_stream_id(value: bytes) -> tuple[int, int]:
    ms, _, seq = value.partition(b"-")
    return int(ms), int(seq or 0)


def next_stream_id(value: bytes) -> bytes:
    """The smallest stream id after `value` (an inclusive XRANGE start that skips it)."""
    ms, seq = parse_stream_id(value)
    if seq == STREAM_SEQ_MAX:
        return b"%d-0" % (ms + 1)
    return b"%d-%d" % (ms, seq + 1)


# --------------------------------------------------------------------------- whole values


def compare_whole_value(kind: str, source: Any, target: Any) -> str | None:
    """Two whole values of the same type (raw replies) → the first difference, or None."""
    if source is None or target is None:
        return None if source is target else CHANGED
    if kind == "string":
        return _at(first_difference(source, target), "byte")
    if kind == "list":
        return _at(first_difference(source, target), "index")
    if kind == "set":
        return describe_set_difference(set(source), set(target))
    if kind == "hash":
        return describe_hash_difference(dict(reply_pairs(source)), dict(reply_pairs(target)))
    if kind == "zset":
        source_pairs, target_pairs = scored(source), scored(target)
        index = first_difference(source_pairs, target_pairs)
        if index is None:
            return None
        return _describe_zset_at(
            index, index, source_pairs, target_pairs, dict(target_pairs).get, dict(source_pairs).get
        )
    # module types (and any type this version does not know): the DUMP payload body
    if source[:-DUMP_TRAILER_BYTES] == target[:-DUMP_TRAILER_BYTES]:
        return None
    return f"DUMP payloads differ ({len(source)} vs {len(target)} bytes)"


def _at(index: int | None, unit: str) -> str | None:
    return None if index is None else f"first difference at {unit} {index}"


def describe_set_difference(source: set[bytes], target: set[bytes]) -> str | None:
    """Two whole sets → how many members each side lacks, with the smallest as an example."""
    only_source = sorted(source - target)
    only_target = sorted(target - source)
    parts = []
    if only_source:
        parts.append(
            f"{count_phrase(len(only_source), 'member', 'members')} missing on target "
            f"(e.g. {display_key(only_source[0])})"
        )
    if only_target:
        parts.append(
            f"{count_phrase(len(only_target), 'member', 'members')} not on source "
            f"(e.g. {display_key(only_target[0])})"
        )
    return "; ".join(parts) or None


def field_problem(name: bytes, missing: bool) -> str:
    """One source field that the target lacks or holds another value for."""
    if missing:
        return f"field {display_key(name)} missing on target"
    return f"field {display_key(name)} differs"


def describe_hash_difference(source: dict[bytes, bytes], target: dict[bytes, bytes]) -> str | None:
    """Two whole hashes → the differing field, or how many differ and the first of them."""
    problems = [
        field_problem(name, name not in target)
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
    score_on_target: ScoreLookup,
    score_on_source: ScoreLookup,
) -> str:
    """Explain the first rank where two zsets differ, by member and score when possible."""
    if source_pair is not None and target_pair is not None and source_pair[0] == target_pair[0]:
        shown = display_key(source_pair[0])
        return (
            f"member {shown}: score {format_score(source_pair[1])} vs "
            f"{format_score(target_pair[1])}"
        )
    if source_pair is not None:
        member, score = source_pair
        other = score_on_target(member)
        if other is None:
            return f"member {display_key(member)} missing on target"
        if other != score:
            return (
                f"member {display_key(member)}: score {format_score(score)} vs "
                f"{format_score(other)}"
            )
    if target_pair is not None:
        member, score = target_pair
        other = score_on_source(member)
        if other is None:
            return f"member {display_key(member)} not on source"
        if other != score:
            return (
                f"member {display_key(member)}: score {format_score(other)} vs "
                f"{format_score(score)}"
            )
    return f"first difference at rank {rank}"


def _describe_zset_at(
    rank: int,
    index: int,
    source_pairs: list[tuple[bytes, float]],
    target_pairs: list[tuple[bytes, float]],
    score_on_target: ScoreLookup,
    score_on_source: ScoreLookup,
) -> str:
    return describe_zset_difference(
        rank,
        source_pairs[index] if index < len(source_pairs) else None,
        target_pairs[index] if index < len(target_pairs) else None,
        score_on_target,
        score_on_source,
    )


def compare_stream_meta(
    source_info: Any, target_info: Any, source_groups: Any, target_groups: Any
) -> str | None:
    """XINFO STREAM and XINFO GROUPS replies of both sides → the differences, or None.
    Fields one server does not report (entries-added before 7.0) are not compared."""
    source = info_dict(source_info)
    target = info_dict(target_info)
    parts = [
        f"{name} {reply_text(source[name])} vs {reply_text(target[name])}"
        for name in STREAM_FIELDS
        if name in source and name in target and source[name] != target[name]
    ]
    source_by_name = {reply_text(g.get("name")): g for g in map(info_dict, source_groups or [])}
    target_by_name = {reply_text(g.get("name")): g for g in map(info_dict, target_groups or [])}
    for name in sorted(set(source_by_name) - set(target_by_name)):
        parts.append(f"group {name} missing on target")
    for name in sorted(set(target_by_name) - set(source_by_name)):
        parts.append(f"group {name} not on source")
    for name in sorted(set(source_by_name) & set(target_by_name)):
        left, right = source_by_name[name], target_by_name[name]
        for attribute in GROUP_FIELDS:
            a, b = left.get(attribute), right.get(attribute)
            if a is not None and b is not None and a != b:
                parts.append(f"group {name} {attribute} {reply_text(a)} vs {reply_text(b)}")
    return "; ".join(parts) or None


def compare_stream_entries(source: Sequence[Any], target: Sequence[Any]) -> str | None:
    """Two XRANGE replies from the same start → the first differing entry, or None."""
    for source_entry, target_entry in zip(source, target, strict=False):
        source_id, target_id = source_entry[0], target_entry[0]
        if source_id == target_id:
            if list(source_entry[1]) != list(target_entry[1]):
                return f"entry {reply_text(source_id)}: fields differ"
            continue
        if parse_stream_id(source_id) < parse_stream_id(target_id):
            return f"entry {reply_text(source_id)} missing on target"
        return f"entry {reply_text(target_id)} not on source"
    if len(source) > len(target):
        return f"entry {reply_text(source[len(target)][0])} missing on target"
    if len(target) > len(source):
        return f"entry {reply_text(target[len(source)][0])} not on source"
    return None


# --------------------------------------------------------------------------- values in chunks
# Each chunk is what one read returned on both sides, from the same start; the sizes (or
# cardinalities) were equal, so the first differing chunk holds the first difference.


def string_chunks_difference(chunks: Iterable[tuple[int, bytes, bytes]]) -> str | None:
    """GETRANGE chunks (start byte, source bytes, target bytes) → the first differing byte."""
    return _first_in_chunks(chunks, "byte")


def list_chunks_difference(chunks: Iterable[tuple[int, list[Any], list[Any]]]) -> str | None:
    """LRANGE chunks (start index, source items, target items) → the first differing index."""
    return _first_in_chunks(chunks, "index")


def _first_in_chunks(
    chunks: Iterable[tuple[int, Sequence[Any], Sequence[Any]]], unit: str
) -> str | None:
    for start, source, target in chunks:
        index = first_difference(source, target)
        if index is not None:
            return _at(start + index, unit)
    return None


def zset_chunks_difference(
    chunks: Iterable[tuple[int, list[Any], list[Any]]],
    score_on_target: ScoreLookup,
    score_on_source: ScoreLookup,
) -> str | None:
    """ZRANGE … WITHSCORES chunks (start rank, source reply, target reply) → the first
    differing member, explained with the other side's score of it."""
    for start, source, target in chunks:
        source_pairs, target_pairs = scored(source), scored(target)
        index = first_difference(source_pairs, target_pairs)
        if index is not None:
            return _describe_zset_at(
                start + index, index, source_pairs, target_pairs, score_on_target, score_on_source
            )
    return None


def stream_chunks_difference(chunks: Iterable[tuple[list[Any], list[Any]]]) -> str | None:
    """XRANGE chunks of both sides, each from the same start → the first differing entry."""
    for source, target in chunks:
        detail = compare_stream_entries(source, target)
        if detail is not None:
            return detail
    return None


def set_chunks_difference(chunks: Iterable[tuple[list[bytes], list[bool]]]) -> str | None:
    """SSCAN pages of the source with, per member, whether the target has it. The
    cardinalities are equal, so every source member on the target means equal sets."""
    missing = 0
    example: bytes | None = None
    for members, on_target in chunks:
        for member, found in zip(members, on_target, strict=True):
            if not found:
                missing += 1
                example = member if example is None else example
    if example is None:
        return None
    return (
        f"{count_phrase(missing, 'source member', 'source members')} missing on target "
        f"(e.g. {display_key(example)})"
    )


def hash_chunks_difference(
    chunks: Iterable[list[tuple[bytes, bytes, bytes | None]]],
) -> str | None:
    """HSCAN pages of the source as (field, source value, target value or None). The field
    counts are equal, so every source field equal on the target means equal hashes."""
    problems = 0
    example: str | None = None
    for fields in chunks:
        for name, value, other in fields:
            if other != value:
                problems += 1
                if example is None:
                    example = field_problem(name, other is None)
    if example is None:
        return None
    if problems == 1:
        return example
    return f"{problems} fields differ or are missing on target, e.g. {example}"
