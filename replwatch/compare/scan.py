"""Which keys and dbs a compare looks at: SCAN (never KEYS) in batches, a random sample
(RANDOMKEY), the dbs that have keys (INFO keyspace), and the expire grace recorded by sync
checkpoints. SCAN calls themselves are not charged to the rate limit; each RANDOMKEY costs 1.
Keys matching an ignore glob are skipped (those skipped on the source are handed to a
callback, which counts them)."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from typing import Any

from replwatch.compare.connection import Side, connected
from replwatch.compare.model import CompareOptions, DbPair
from replwatch.compare.ratelimit import TokenBucket
from replwatch.compare.rules import is_ignored
from replwatch.config import RedisEndpoint, TLSConfig
from replwatch.sync.checkpoint import CHECKPOINT_DB, CHECKPOINT_PREFIX

# the source keys an ignore glob left out of one SCAN batch
CountIgnored = Callable[[Sequence[bytes]], None]


def scan_keys(
    side: Side, batch: int, ignore: Sequence[bytes], count_ignored: CountIgnored | None = None
) -> Iterator[list[bytes]]:
    """Every key of the side's db not matching `ignore`, in lists of at most `batch` keys
    (SCAN COUNT `batch`). A key SCAN returns twice (it may, while a server rehashes) is
    yielded twice."""
    cursor: bytes | int = b"0"
    while True:
        reply = side.execute([("SCAN", cursor, "COUNT", batch)])[0]
        cursor, found = reply[0], list(reply[1])
        wanted = [key for key in found if not is_ignored(key, ignore)]
        if count_ignored is not None and len(wanted) < len(found):
            count_ignored([key for key in found if is_ignored(key, ignore)])
        for start in range(0, len(wanted), batch):
            yield wanted[start : start + batch]
        if int(cursor) == 0:
            return


def sample_keys(
    side: Side,
    wanted: int,
    batch: int,
    bucket: TokenBucket,
    ignore: Sequence[bytes],
    count_ignored: CountIgnored,
) -> list[bytes]:
    """`wanted` distinct random keys of the side's db (all of them when it is that small)."""
    size = int(side.execute([("DBSIZE",)])[0])
    if size <= wanted:
        return [key for keys in scan_keys(side, batch, ignore, count_ignored) for key in keys]
    chosen: dict[bytes, None] = {}
    attempts = 0
    while len(chosen) < wanted and attempts < 10 * wanted:
        count = min(batch, wanted - len(chosen))
        bucket.take(count)
        attempts += count
        for key in side.execute([("RANDOMKEY",)] * count):
            if key is None:
                return list(chosen)
            if is_ignored(key, ignore):
                continue
            chosen[key] = None
    return list(chosen)


def parse_keyspace(info: bytes) -> dict[int, int]:
    """INFO keyspace text → {db: keys}."""
    dbs: dict[int, int] = {}
    for line in info.decode("utf-8", "replace").splitlines():
        name, sep, rest = line.partition(":")
        if not sep or not name.startswith("db") or not name[2:].isdigit():
            continue
        fields = dict(part.partition("=")[::2] for part in rest.split(","))
        keys = fields.get("keys", "0")
        if keys.isdigit() and int(keys) > 0:
            dbs[int(name[2:])] = int(keys)
    return dbs


def db_pairs(
    source: RedisEndpoint, target: RedisEndpoint, options: CompareOptions, tls: TLSConfig | None
) -> list[DbPair]:
    """The dbs to compare: --db on both, else each URL's db, or (--all-dbs) every db that has
    keys on either server."""
    if options.db is not None:
        return [DbPair(options.db, options.db)]
    if not options.all_dbs:
        return [DbPair(source.db, target.db)]
    dbs: set[int] = set()
    for role, endpoint in (("source", source), ("target", target)):
        with connected(role, endpoint, endpoint.db, options.timeout, tls) as side:
            dbs.update(parse_keyspace(side.execute([("INFO", "keyspace")])[0]))
    return [DbPair(db, db) for db in sorted(dbs)]


def recorded_expire_grace(
    role: str, endpoint: RedisEndpoint, timeout: float, tls: TLSConfig | None
) -> float:
    """The largest expire_grace_ms a sync checkpoint in the server's db 0 records, in
    seconds (0 without one): its TTLs may be that much longer than the other side's."""
    grace_ms = 0
    with connected(role, endpoint, CHECKPOINT_DB, timeout, tls) as side:
        cursor: Any = b"0"
        while True:
            cursor, keys = side.execute(
                [("SCAN", cursor, "MATCH", CHECKPOINT_PREFIX + "*", "COUNT", 1000)]
            )[0]
            if keys:
                values = side.execute([("HGET", key, "expire_grace_ms") for key in keys])
                grace_ms = max(grace_ms, largest_grace_ms(values))
            if cursor in (b"0", 0, "0"):
                return grace_ms / 1000


def largest_grace_ms(values: Sequence[Any]) -> int:
    """HGET expire_grace_ms replies → the largest whole number among them (0: none)."""
    return max(
        (int(value) for value in values if isinstance(value, bytes) and value.isdigit()),
        default=0,
    )
