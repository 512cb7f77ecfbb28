"""The values of a compare: its options, the db pairs, one difference, the report, and the two
errors. Plain frozen data: the rules produce findings, run.py tallies them into a report,
render.py and the JSON output read it."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final, Literal

from replwatch.compare.display import display_key
from replwatch.errors import ConfigError, RedisError

DifferenceKind = Literal["missing", "extra", "type", "value", "ttl"]
DIFFERENCE_KINDS: Final[tuple[DifferenceKind, ...]] = ("missing", "extra", "type", "value", "ttl")
# replwatch's own heartbeat and probe keys differ by design while a sync runs
DEFAULT_IGNORE: Final[tuple[str, ...]] = ("__replwatch:*",)

# one way a key differs, with its description ("value", "first difference at byte 4")
Finding = tuple[DifferenceKind, str]


@dataclass(frozen=True)
class CompareOptions:
    """What to compare and how gently. Durations are seconds."""

    db: int | None = None  # both servers' db; None: each URL's own db
    all_dbs: bool = False  # every db that has keys on either server (INFO keyspace)
    sample: int | None = None  # check N random source keys per db; no extra-key check
    rate: float | None = None  # key reads per second over both servers; None: unlimited
    ttl_tolerance: float = 2.0
    # target TTLs may be this much longer than the source's (a sync task's expire_grace);
    # None: the largest expire_grace_ms recorded by a checkpoint in the target's db 0
    expire_grace: float | None = None
    # source TTLs may be this much longer than the target's (the reverse task of a pair
    # writes the source); None: the largest a checkpoint in the source's db 0 records
    source_expire_grace: float | None = None
    recheck: int = 1
    recheck_delay: float = 0.5
    batch: int = 200  # SCAN COUNT and keys per pipeline
    chunk: int = 500  # elements per read of a large list/set/hash/zset/stream
    string_chunk_bytes: int = 1 << 20
    timeout: float = 10.0  # socket timeout per command
    max_differences: int = 100  # differences kept in the report (0: all); counts stay exact
    ignore: tuple[str, ...] = DEFAULT_IGNORE


@dataclass(frozen=True)
class DbPair:
    """A source db compared with a target db (the same number unless the URLs differ)."""

    source: int
    target: int

    def __str__(self) -> str:
        if self.source == self.target:
            return f"db {self.source}"
        return f"db {self.source} vs db {self.target}"


@dataclass(frozen=True)
class Difference:
    """One reported way one key differs."""

    db: int  # the source db of the pair
    key: bytes
    kind: DifferenceKind
    detail: str

    def as_json(self) -> dict[str, object]:
        return {
            "db": self.db,
            "key": display_key(self.key),
            "kind": self.kind,
            "detail": self.detail,
        }


@dataclass(frozen=True)
class CompareReport:
    """The outcome of one compare: exact counts and the first max_differences differences."""

    source: str  # host:port labels, never a password
    target: str
    dbs: tuple[DbPair, ...]
    checked: int  # source keys compared
    equal_keys: int
    missing: int  # keys missing on the target
    extra: int  # keys on the target only (0 when sampled: not checked)
    different: int  # keys on both sides that differ (type, value and/or TTL)
    kind_counts: dict[str, int]  # differences per kind (a key can differ in value and TTL)
    sampled: bool
    ignored: int  # source keys skipped by an ignore glob (replwatch's own included)
    differences: tuple[Difference, ...]  # the first max_differences of them
    omitted: int  # differences found but not kept
    seconds: float
    expire_grace: float = 0.0  # target TTLs were allowed to be this much longer
    source_expire_grace: float = 0.0  # … and source TTLs this much longer (a pair)
    own_keys: int = 0  # of the ignored keys, replwatch's own (__replwatch:*, always left out)

    @property
    def ignored_by_option(self) -> int:
        """Source keys left out by the --ignore globs given (not replwatch's own)."""
        return self.ignored - self.own_keys

    @property
    def equal(self) -> bool:
        return self.missing == 0 and self.extra == 0 and self.different == 0

    def as_json(self) -> dict[str, object]:
        return {
            "equal": self.equal,
            "source": self.source,
            "target": self.target,
            "dbs": [pair.source for pair in self.dbs],
            "target_dbs": [pair.target for pair in self.dbs],
            "checked": self.checked,
            "equal_keys": self.equal_keys,
            "missing": self.missing,
            "extra": self.extra,
            "different": self.different,
            "by_kind": dict(self.kind_counts),
            "sampled": self.sampled,
            "ignored": self.ignored,
            "own_keys_ignored": self.own_keys,
            "differences": [d.as_json() for d in self.differences],
            "differences_omitted": self.omitted,
            "seconds": round(self.seconds, 3),
            "expire_grace_seconds": self.expire_grace,
            "source_expire_grace_seconds": self.source_expire_grace,
        }


class CompareIncomplete(RedisError):
    """The compare could not finish (connection, timeout, authentication, server error)."""


class CompareUsageError(ConfigError):
    """A bad option value; `source` is the option's name (e.g. --source)."""

    def __init__(self, option: str, problem: str) -> None:
        super().__init__(option, [problem])
