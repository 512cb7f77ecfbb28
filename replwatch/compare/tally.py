"""The running counts of one compare and the differences it keeps (the first max_kept of
them; the counts stay exact), turned into the CompareReport at the end."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from replwatch.compare.model import (
    DEFAULT_IGNORE,
    DIFFERENCE_KINDS,
    CompareOptions,
    CompareReport,
    DbPair,
    Difference,
    Finding,
)
from replwatch.compare.rules import extra_finding, is_ignored, key_outcome

_OWN_KEYS = [pattern.encode() for pattern in DEFAULT_IGNORE]


@dataclass
class Tally:
    """Counters and kept differences of one compare run (owned by compare_databases)."""

    max_kept: int
    checked: int = 0
    equal_keys: int = 0
    missing: int = 0
    extra: int = 0
    different: int = 0
    ignored: int = 0  # source keys an ignore glob left out, replwatch's own included
    own_keys: int = 0  # of those, replwatch's own (__replwatch:*)
    kind_counts: dict[str, int] = field(default_factory=lambda: dict.fromkeys(DIFFERENCE_KINDS, 0))
    kept: list[Difference] = field(default_factory=list)
    omitted: int = 0

    def count_ignored(self, keys: Sequence[bytes]) -> None:
        """Source keys an ignore glob left out: replwatch's own ones are counted apart."""
        self.ignored += len(keys)
        self.own_keys += sum(1 for key in keys if is_ignored(key, _OWN_KEYS))

    def settle(self, db: int, key: bytes, findings: Sequence[Finding]) -> None:
        """The final verdict on one compared source key."""
        outcome = key_outcome(findings)
        if outcome == "equal":
            self.equal_keys += 1
            return
        if outcome == "missing":
            self.missing += 1
        else:
            self.different += 1
        for kind, detail in findings:
            self._keep(Difference(db, key, kind, detail))

    def settle_extra(self, db: int, key: bytes, target_type: str) -> None:
        """A target key confirmed not to be on the source."""
        self.extra += 1
        kind, detail = extra_finding(target_type)
        self._keep(Difference(db, key, kind, detail))

    def _keep(self, difference: Difference) -> None:
        self.kind_counts[difference.kind] += 1
        if self.max_kept and len(self.kept) >= self.max_kept:
            self.omitted += 1
        else:
            self.kept.append(difference)

    def report(
        self,
        source: str,
        target: str,
        pairs: Sequence[DbPair],
        options: CompareOptions,
        seconds: float,
    ) -> CompareReport:
        """The report of the run; `source` and `target` are host:port labels."""
        return CompareReport(
            source=source,
            target=target,
            dbs=tuple(pairs),
            checked=self.checked,
            equal_keys=self.equal_keys,
            missing=self.missing,
            extra=self.extra,
            different=self.different,
            kind_counts=dict(self.kind_counts),
            sampled=options.sample is not None,
            ignored=self.ignored,
            own_keys=self.own_keys,
            differences=tuple(self.kept),
            omitted=self.omitted,
            seconds=seconds,
            expire_grace=options.expire_grace or 0.0,
            source_expire_grace=options.source_expire_grace or 0.0,
        )
