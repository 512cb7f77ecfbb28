"""Comparing a batch of source keys with the target: reading.py reads, the rules judge.

A key's verdict is None (not on the source: gone meanwhile), [] (equal) or its findings.
"""

from __future__ import annotations

from collections.abc import Sequence

from replwatch.compare.model import CompareOptions, Finding
from replwatch.compare.reading import KeyChanged, PairReader, ValueRead
from replwatch.compare.rules import (
    HeadVerdict,
    ReadPlan,
    TtlAllowance,
    has_size,
    head_verdict,
    key_findings,
    size_verdict,
    whole_value_verdict,
)
from replwatch.compare.value_rules import (
    CHANGED,
    hash_chunks_difference,
    list_chunks_difference,
    set_chunks_difference,
    stream_chunks_difference,
    string_chunks_difference,
    zset_chunks_difference,
)


class KeyComparer:
    """Judges keys by type and TTL, then by size, whole value or chunk by chunk."""

    def __init__(self, reader: PairReader, options: CompareOptions) -> None:
        self.reader = reader
        self.options = options
        self.allowance = TtlAllowance(
            options.ttl_tolerance, options.expire_grace or 0.0, options.source_expire_grace or 0.0
        )

    def compare(self, keys: Sequence[bytes]) -> dict[bytes, list[Finding] | None]:
        """key → None (not on the source), [] (equal) or what differs."""
        heads: dict[bytes, HeadVerdict] = {}
        same_type: list[tuple[bytes, str]] = []
        for key, (source, target) in zip(keys, self.reader.heads(keys), strict=True):
            heads[key] = verdict = head_verdict(source, target, self.allowance)
            if verdict.value_type is not None:
                same_type.append((key, verdict.value_type))
        details = self._value_differences(same_type)
        return {key: key_findings(head, details.get(key)) for key, head in heads.items()}

    def _value_differences(self, keys: list[tuple[bytes, str]]) -> dict[bytes, str | None]:
        """(key, type) with the same type on both servers → a value difference or None."""
        details: dict[bytes, str | None] = {}
        sized = [(key, kind) for key, kind in keys if has_size(kind)]
        whole = [
            ValueRead(key, kind, 0, ReadPlan.WHOLE) for key, kind in keys if not has_size(kind)
        ]
        chunked: list[ValueRead] = []
        for (key, kind), sizes in zip(sized, self.reader.sizes(sized), strict=True):
            plan = size_verdict(kind, sizes, self.options.chunk, self.options.string_chunk_bytes)
            if isinstance(plan, str):
                details[key] = plan
            elif sizes is not None:  # a plan is only made of sizes that were read
                read = ValueRead(key, kind, sizes[0], plan)
                (chunked if plan is ReadPlan.CHUNKS else whole).append(read)
        for read, replies in zip(whole, self.reader.whole_values(whole), strict=True):
            verdict = whole_value_verdict(read.kind, read.plan, replies)
            if verdict is ReadPlan.CHUNKS:
                chunked.append(read)  # a long stream whose metadata agree: its entries
            else:
                details[read.key] = verdict
        for read in chunked:
            details[read.key] = self._chunked_difference(read)
        return details

    def _chunked_difference(self, read: ValueRead) -> str | None:
        reader, key = self.reader, read.key
        try:
            if read.kind == "string":
                return string_chunks_difference(reader.string_chunks(key, read.size))
            if read.kind == "list":
                return list_chunks_difference(reader.list_chunks(key, read.size))
            if read.kind == "set":
                return set_chunks_difference(reader.set_chunks(key))
            if read.kind == "hash":
                return hash_chunks_difference(reader.hash_chunks(key))
            if read.kind == "zset":
                return zset_chunks_difference(
                    reader.zset_chunks(key, read.size),
                    reader.score_lookup(reader.target, key),
                    reader.score_lookup(reader.source, key),
                )
            return stream_chunks_difference(reader.stream_chunks(key))
        except KeyChanged:
            return CHANGED
