"""One compare run: for each db pair, every source key (SCANned, or a sample) is compared
with the target, then, unless sampling, every target key is checked for being extra. A key
found different is rechecked before it is reported (recheck.py). Raises CompareIncomplete
when a server cannot be reached or fails; never mentions a password."""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Sequence

from replwatch.compare.connection import Side, connected
from replwatch.compare.key_comparer import KeyComparer
from replwatch.compare.model import CompareOptions, CompareReport, DbPair, Finding
from replwatch.compare.ratelimit import TokenBucket, batch_size
from replwatch.compare.reading import PairReader
from replwatch.compare.recheck import SuspectKeys
from replwatch.compare.scan import db_pairs, recorded_expire_grace, sample_keys, scan_keys
from replwatch.compare.tally import Tally
from replwatch.config import RedisEndpoint, TLSConfig


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
        grace = recorded_expire_grace("target", target, options.timeout, tls)
        options = dataclasses.replace(options, expire_grace=grace)
    if options.source_expire_grace is None:
        grace = recorded_expire_grace("source", source, options.timeout, tls)
        options = dataclasses.replace(options, source_expire_grace=grace)
    bucket = TokenBucket(options.rate)
    tally = Tally(max_kept=options.max_differences)
    pairs = db_pairs(source, target, options, tls)
    for pair in pairs:
        with (
            connected("source", source, pair.source, options.timeout, tls) as source_side,
            connected("target", target, pair.target, options.timeout, tls) as target_side,
        ):
            DbComparison(source_side, target_side, pair, options, bucket, tally).run()
    seconds = time.monotonic() - started
    return tally.report(source.label, target.label, pairs, options, seconds)


class DbComparison:
    """Compares one source db with one target db, adding to a shared tally."""

    def __init__(
        self,
        source: Side,
        target: Side,
        pair: DbPair,
        options: CompareOptions,
        bucket: TokenBucket,
        tally: Tally,
    ) -> None:
        self.source = source
        self.target = target
        self.pair = pair
        self.options = options
        self.bucket = bucket
        self.tally = tally
        self.batch = batch_size(options.batch, options.rate)
        self.ignore = [pattern.encode() for pattern in options.ignore]
        self.reader = PairReader(source, target, bucket, options.chunk, options.string_chunk_bytes)
        self.keys = KeyComparer(self.reader, options)
        self.suspects = SuspectKeys()  # source keys found different
        self.extra_suspects = SuspectKeys()  # target keys found not on the source

    def run(self) -> None:
        if self.options.sample is not None:
            keys = sample_keys(
                self.source,
                self.options.sample,
                self.batch,
                self.bucket,
                self.ignore,
                self._count_ignored,
            )
            for batch in self._batches(keys):
                self._check_source_batch(batch)
        else:
            for batch in scan_keys(self.source, self.batch, self.ignore, self._count_ignored):
                self._check_source_batch(batch)
        self._settle_suspects()
        if self.options.sample is None:
            for batch in scan_keys(self.target, self.batch, self.ignore):
                self._check_extra_batch(batch)
            self._settle_extra_suspects()

    def _count_ignored(self, keys: Sequence[bytes]) -> None:
        self.tally.count_ignored(keys)

    def _batches(self, keys: Sequence[bytes]) -> list[list[bytes]]:
        return [list(keys[start : start + self.batch]) for start in range(0, len(keys), self.batch)]

    # -- source keys: missing / type / value / ttl

    def _check_source_batch(self, keys: list[bytes]) -> None:
        if not keys:
            return
        verdicts = self.keys.compare(keys)
        held: list[bytes] = []
        for key in keys:
            findings = verdicts[key]
            if findings is None:  # gone from the source meanwhile: nothing to compare
                continue
            self.tally.checked += 1
            if findings and self.options.recheck > 0:
                held.append(key)
            else:
                self.tally.settle(self.pair.source, key, findings)
        self.suspects.hold(held)
        if self.suspects.full:
            self._settle_suspects()

    def _settle_suspects(self) -> None:
        def still_differing(keys: list[bytes]) -> list[tuple[bytes, list[Finding]]]:
            still: list[tuple[bytes, list[Finding]]] = []
            for batch in self._batches(keys):
                still += [(k, f) for k, f in self.keys.compare(batch).items() if f]
            return still

        rechecked = self.suspects.recheck(
            self.options.recheck, self.options.recheck_delay, still_differing
        )
        self.tally.equal_keys += rechecked.resolved
        for key in rechecked.still:
            self.tally.settle(self.pair.source, key, rechecked.last.get(key) or [])

    # -- target keys: extra

    def _check_extra_batch(self, keys: list[bytes]) -> None:
        if not keys:
            return
        candidates = self.reader.absent_on_source(keys)
        if self.options.recheck > 0:
            self.extra_suspects.hold(candidates)
            if self.extra_suspects.full:
                self._settle_extra_suspects()
        else:
            for key, kind in self.reader.extra_types(candidates).items():
                self.tally.settle_extra(self.pair.source, key, kind)

    def _settle_extra_suspects(self) -> None:
        def still_extra(keys: list[bytes]) -> list[tuple[bytes, str]]:
            types: dict[bytes, str] = {}
            for batch in self._batches(keys):
                types.update(self.reader.extra_types(batch))
            return list(types.items())

        rechecked = self.extra_suspects.recheck(
            self.options.recheck, self.options.recheck_delay, still_extra
        )
        for key in rechecked.still:
            self.tally.settle_extra(self.pair.source, key, rechecked.last[key])
