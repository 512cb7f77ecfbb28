"""What a sync task copies: key, command and database filters, and the db mapping (pure).

Semantics (docs/syncer.md "Filters and db mapping"):

- A key passes when it matches an allow rule (`allow_prefixes`, `allow_regex`; no allow rules:
  every key) and no deny rule (`deny_prefixes`, `deny_regex`): deny wins. Regexes are
  searched (re.search) in the key's bytes; anchor them with ^ to match from the start.
- A command passes when it is in `commands.allow` (or that list is empty) and not in
  `commands.deny`. MULTI/EXEC/SELECT/PING/REPLCONF are how the stream is applied and are
  never filtered (the config refuses them).
- `dbs.allow`: only the stream of these source dbs is copied (and their snapshot keys).
- `db_map`: source db → target db; unmapped dbs keep their number. Commands that name a db
  are mapped too: SELECT, SWAPDB (dropped unless both dbs are copied), MOVE (to a db that is
  not copied: becomes DEL, the key leaves the copy), COPY … DB n (dropped when n is not
  copied). FLUSHALL with `dbs.allow` set becomes a FLUSHDB in each copied db.
- Multi-key commands whose keys disagree: DEL, UNLINK, TOUCH and MSET are split (the allowed
  keys are kept); any other command is dropped whole (reason `mixed_keys`).
- Counting (`filtered:<reason>` in the checkpoint): one per key a write is withheld for in a
  split command and in the snapshot, one per command otherwise. Reasons are REASONS.
- A command whose keys are not known here is taken to have its key at argument 1 (the Redis
  convention); keyless commands (FLUSHDB, FLUSHALL, SWAPDB, FUNCTION, SCRIPT, PUBLISH…) are
  not key-filtered.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field

from replwatch.config import SyncTask

REASONS = ("key_not_allowed", "key_prefix", "key_regex", "command", "db", "mixed_keys")

# --------------------------------------------------------------------------- key positions


@dataclass(frozen=True, slots=True)
class KeySpec:
    """Where a command's keys are, like the Redis command table: argv[first], then every
    `step`-th argument up to `last` (negative: counted from the end, -1 = the last one).
    `numkeys`: the index of a numkeys argument; the keys follow it (and `first`/`last`
    name keys before it, e.g. the destination of ZUNIONSTORE)."""

    first: int
    last: int
    step: int = 1
    numkeys: int | None = None


_ONE = KeySpec(1, 1)
_TWO = KeySpec(1, 2)
_ALL = KeySpec(1, -1)
_NONE = KeySpec(0, -1)  # no keys (first 0 is never a key)

KEY_SPECS: dict[bytes, KeySpec] = {
    # keyless
    **dict.fromkeys(
        (
            b"FLUSHALL",
            b"FLUSHDB",
            b"SWAPDB",
            b"FUNCTION",
            b"SCRIPT",
            b"PUBLISH",
            b"SPUBLISH",
            b"PING",
            b"MULTI",
            b"EXEC",
            b"SELECT",
            b"REPLCONF",
        ),
        _NONE,
    ),
    # every argument a key
    **dict.fromkeys(
        (
            b"DEL",
            b"UNLINK",
            b"TOUCH",
            b"SINTERSTORE",
            b"SUNIONSTORE",
            b"SDIFFSTORE",
            b"PFMERGE",
            b"WATCH",
        ),
        _ALL,
    ),
    # key, value pairs
    b"MSET": KeySpec(1, -1, 2),
    b"MSETNX": KeySpec(1, -1, 2),
    # two keys
    **dict.fromkeys(
        (
            b"RPOPLPUSH",
            b"BRPOPLPUSH",
            b"LMOVE",
            b"BLMOVE",
            b"SMOVE",
            b"RENAME",
            b"RENAMENX",
            b"COPY",
            b"ZRANGESTORE",
            b"GEOSEARCHSTORE",
        ),
        _TWO,
    ),
    # destination, numkeys, keys
    **dict.fromkeys((b"ZUNIONSTORE", b"ZINTERSTORE", b"ZDIFFSTORE"), KeySpec(1, 1, numkeys=2)),
    # numkeys first
    **dict.fromkeys(
        (b"LMPOP", b"BLMPOP", b"ZMPOP", b"BZMPOP", b"SINTERCARD", b"ZINTERCARD"),
        KeySpec(0, -1, numkeys=1),
    ),
    # scripts (propagated as such only with verbatim script replication)
    **dict.fromkeys(
        (b"EVAL", b"EVALSHA", b"EVAL_RO", b"EVALSHA_RO", b"FCALL", b"FCALL_RO"),
        KeySpec(0, -1, numkeys=2),
    ),
    b"BITOP": KeySpec(2, -1),
    b"XGROUP": KeySpec(2, 2),  # XGROUP CREATE|SETID|DESTROY|CREATECONSUMER|DELCONSUMER key …
    b"OBJECT": KeySpec(2, 2),
}
# everything else (SET, HSET, LPUSH, XADD, EXPIRE, RESTORE, SETRANGE, GEOADD, PFADD, MOVE…):
# one key at argument 1
SPLITTABLE = frozenset((b"DEL", b"UNLINK", b"TOUCH", b"MSET"))


def key_positions(argv: Sequence[bytes]) -> list[int]:
    """Indexes of the keys in a command (argv[0] its name, any case)."""
    name = argv[0].upper()
    n = len(argv)
    if name == b"SORT" or name == b"SORT_RO":
        sort_keys = [1] if n > 1 else []
        for i in range(2, n - 1):
            if argv[i].upper() == b"STORE":
                sort_keys.append(i + 1)
                break
        return sort_keys
    spec = KEY_SPECS.get(name, _ONE)
    keys: list[int] = []
    if spec.numkeys is not None:
        if spec.first > 0:
            keys += [i for i in range(spec.first, spec.last + 1) if i < n]
        if spec.numkeys < n:
            try:
                count = int(argv[spec.numkeys])
            except ValueError:
                count = 0
            keys += [i for i in range(spec.numkeys + 1, spec.numkeys + 1 + count) if i < n]
        return keys
    if spec.first == 0:
        return []
    last = spec.last if spec.last >= 0 else n + spec.last
    return list(range(spec.first, min(last, n - 1) + 1, spec.step))


# --------------------------------------------------------------------------- decisions


@dataclass(frozen=True, slots=True)
class Verdict:
    """What to do with one command of the stream: forward it as it is (`keep`), send
    `commands` instead (empty: drop it), and the writes withheld by reason."""

    keep: bool
    commands: tuple[tuple[bytes, ...], ...] = ()
    dropped: tuple[tuple[str, int], ...] = ()


KEEP = Verdict(True)


def _drop(reason: str, count: int = 1) -> Verdict:
    return Verdict(False, (), ((reason, count),))


@dataclass(frozen=True)
class SyncFilter:
    """A task's filters compiled. `active`: anything to filter or map at all (a task
    without it takes the raw fast path)."""

    allow_prefixes: tuple[bytes, ...] = ()
    deny_prefixes: tuple[bytes, ...] = ()
    allow_regex: tuple[re.Pattern[bytes], ...] = ()
    deny_regex: tuple[re.Pattern[bytes], ...] = ()
    allow_commands: frozenset[bytes] = frozenset()
    deny_commands: frozenset[bytes] = frozenset()
    allow_dbs: frozenset[int] | None = None
    db_map: dict[int, int] = field(default_factory=dict)

    @classmethod
    def of(cls, task: SyncTask) -> SyncFilter | None:
        """The task's filter; None when it has no filters and no db mapping."""
        f = task.filters
        db_map = {s: t for s, t in task.db_map.items() if s != t}
        if f is None and not db_map:
            return None
        if f is None:
            return cls(db_map=db_map)
        compiled = cls(
            allow_prefixes=tuple(p.encode() for p in f.keys.allow_prefixes),
            deny_prefixes=tuple(p.encode() for p in f.keys.deny_prefixes),
            allow_regex=tuple(re.compile(r.encode()) for r in f.keys.allow_regex),
            deny_regex=tuple(re.compile(r.encode()) for r in f.keys.deny_regex),
            allow_commands=frozenset(c.encode() for c in f.commands.allow),
            deny_commands=frozenset(c.encode() for c in f.commands.deny),
            allow_dbs=frozenset(f.dbs.allow) if f.dbs.allow is not None else None,
            db_map=db_map,
        )
        return compiled if compiled.active else None

    @property
    def active(self) -> bool:
        return bool(
            self.filters_keys
            or self.allow_commands
            or self.deny_commands
            or self.allow_dbs is not None
            or self.db_map
        )

    @property
    def filters_keys(self) -> bool:
        return bool(
            self.allow_prefixes or self.deny_prefixes or self.allow_regex or self.deny_regex
        )

    # ------------------------------------------------------------------ single decisions

    def key_reason(self, key: bytes) -> str | None:
        """None when the key passes, else why not (deny rules first: deny wins)."""
        if self.deny_prefixes and key.startswith(self.deny_prefixes):
            return "key_prefix"
        for pattern in self.deny_regex:
            if pattern.search(key):
                return "key_regex"
        if self.allow_prefixes or self.allow_regex:
            if self.allow_prefixes and key.startswith(self.allow_prefixes):
                return None
            if any(pattern.search(key) for pattern in self.allow_regex):
                return None
            return "key_not_allowed"
        return None

    def command_allowed(self, name: bytes) -> bool:
        """`name` upper-case."""
        if self.allow_commands and name not in self.allow_commands:
            return False
        return name not in self.deny_commands

    def db_allowed(self, db: int) -> bool:
        return self.allow_dbs is None or db in self.allow_dbs

    def map_db(self, db: int) -> int:
        return self.db_map.get(db, db)

    def source_db_of(self, target_db: int) -> int:
        """The source db that goes to `target_db` (the mapping is one to one)."""
        for source, target in self.db_map.items():
            if target == target_db:
                return source
        return target_db

    def select(self, db: int) -> int | None:
        """SELECT db in the stream: the target db to select, None when db is not copied."""
        return self.map_db(db) if self.db_allowed(db) else None

    def snapshot_key(self, db: int, key: bytes) -> str | None:
        """A snapshot key: None when it is copied, else the reason."""
        if not self.db_allowed(db):
            return "db"
        return self.key_reason(key)

    # ------------------------------------------------------------------ commands

    def command(self, argv: Sequence[bytes], db: int, target_db: int) -> Verdict:
        """One command of the stream (not MULTI/EXEC/SELECT/PING/REPLCONF), run in source db
        `db` while the target connection is in `target_db`."""
        name = argv[0].upper()
        if name == b"FLUSHALL" or name == b"SWAPDB":
            if not self.command_allowed(name):
                return _drop("command")
            return self._all_dbs(name, argv, target_db)
        if not self.db_allowed(db):
            return _drop("db")
        if not self.command_allowed(name):
            return _drop("command")
        positions = key_positions(argv)
        if name == b"MOVE" or name == b"COPY":
            return self._db_argument(name, argv, positions)
        return self._keys(name, argv, positions)

    def _keys(self, name: bytes, argv: Sequence[bytes], positions: list[int]) -> Verdict:
        if not positions or not self.filters_keys:
            return KEEP
        reasons = [self.key_reason(argv[i]) for i in positions]
        denied = [r for r in reasons if r is not None]
        if not denied:
            return KEEP
        if name in SPLITTABLE:
            counts: dict[str, int] = {}
            for denied_for in denied:
                counts[denied_for] = counts.get(denied_for, 0) + 1
            dropped = tuple(counts.items())
            if len(denied) == len(reasons):
                return Verdict(False, (), dropped)
            width = 2 if name == b"MSET" else 1
            kept: list[bytes] = [argv[0]]
            for i, why in zip(positions, reasons, strict=True):
                if why is None:
                    kept += argv[i : i + width]
            return Verdict(False, (tuple(kept),), dropped)
        if len(denied) == len(reasons):
            return _drop(denied[0])
        return _drop("mixed_keys")

    def _db_argument(self, name: bytes, argv: Sequence[bytes], positions: list[int]) -> Verdict:
        """MOVE key db; COPY source destination [DB db] [REPLACE]: the keys, then the db."""
        verdict = self._keys(name, argv, positions)
        if not verdict.keep:
            return verdict
        if name == b"MOVE":
            if len(argv) != 3:
                return KEEP
            to = _int(argv[2])
            if to is None:
                return KEEP
            if not self.db_allowed(to):
                return Verdict(False, ((b"DEL", argv[1]),), ())
            return KEEP if self.map_db(to) == to else _with(argv, 2, self.map_db(to))
        for i in range(3, len(argv) - 1):
            if argv[i].upper() == b"DB":
                to = _int(argv[i + 1])
                if to is None:
                    return KEEP
                if not self.db_allowed(to):
                    return _drop("db")
                return KEEP if self.map_db(to) == to else _with(argv, i + 1, self.map_db(to))
        return KEEP

    def _all_dbs(self, name: bytes, argv: Sequence[bytes], target_db: int) -> Verdict:
        """FLUSHALL and SWAPDB: commands about dbs, not the current one."""
        if name == b"SWAPDB":
            if len(argv) != 3:
                return KEEP
            a, b = _int(argv[1]), _int(argv[2])
            if a is None or b is None:
                return KEEP
            if not (self.db_allowed(a) and self.db_allowed(b)):
                return _drop("db")
            ma, mb = self.map_db(a), self.map_db(b)
            if (ma, mb) == (a, b):
                return KEEP
            return Verdict(False, ((argv[0], str(ma).encode(), str(mb).encode()),), ())
        if self.allow_dbs is None:
            return KEEP  # every db is copied: the target's FLUSHALL is the source's
        commands: list[tuple[bytes, ...]] = []
        for db in sorted(self.allow_dbs):
            commands += [(b"SELECT", str(self.map_db(db)).encode()), (b"FLUSHDB", *argv[1:])]
        commands.append((b"SELECT", str(target_db).encode()))
        return Verdict(False, tuple(commands), ())


def _int(arg: bytes) -> int | None:
    try:
        return int(arg)
    except ValueError:
        return None


def _with(argv: Sequence[bytes], index: int, db: int) -> Verdict:
    rewritten = list(argv)
    rewritten[index] = str(db).encode()
    return Verdict(False, (tuple(rewritten),), ())
