"""Splitting one fleet across several replwatch instances (`--shard i/n`).

Every group and every sync task belongs to exactly one of n shards, chosen by rendezvous
(highest-random-weight) hashing: each shard scores the name with a stable hash and the
highest score wins. Adding shard n+1 moves only the names it now wins (about 1/(n+1) of
them); nothing moves between the old shards, so their lag history stays where it is.

Groups and sync tasks are hashed in separate namespaces ("group:<name>", "task:<name>"),
so a group and a task of the same name are placed independently. The hash is BLAKE2b:
stable across processes, hosts and Python versions (Python's hash() is salted per process).
Pure functions over values; no I/O.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from typing import Literal

Kind = Literal["group", "task"]

_SHARD_RE = re.compile(r"^\s*([0-9]+)\s*/\s*([0-9]+)\s*$")
SHARD_FORMAT = "must be i/n with 1 <= i <= n, e.g. 2/3"


@dataclass(frozen=True, slots=True)
class ShardSpec:
    """Shard `index` of `count`, 1-based: ShardSpec(2, 3) is "2/3", the second of three."""

    index: int
    count: int

    def __post_init__(self) -> None:
        if not 1 <= self.index <= self.count:
            raise ValueError(f"shard {self.index}/{self.count}: {SHARD_FORMAT}")

    def __str__(self) -> str:
        return f"{self.index}/{self.count}"

    @property
    def slug(self) -> str:
        """The shard in keys and names, where '/' does not belong: "2-of-3"."""
        return f"{self.index}-of-{self.count}"


WHOLE_FLEET = ShardSpec(1, 1)


def parse_shard(text: str) -> ShardSpec:
    """Text "2/3" → ShardSpec(2, 3). ValueError naming the expected form otherwise."""
    match = _SHARD_RE.match(text) if isinstance(text, str) else None
    if match is None:
        raise ValueError(f"{text!r}: {SHARD_FORMAT}")
    index, count = int(match.group(1)), int(match.group(2))
    if not 1 <= index <= count:
        raise ValueError(f"{text!r}: {SHARD_FORMAT}")
    return ShardSpec(index, count)


def _weight(key: str, shard: int) -> int:
    digest = hashlib.blake2b(f"{key}\x00{shard}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big")


def owner(name: str, count: int, kind: Kind = "group") -> int:
    """The shard (1..count) that owns `name`: the one with the highest weight for it."""
    if count < 1:
        raise ValueError(f"shard count {count}: must be at least 1")
    if count == 1:
        return 1
    key = f"{kind}:{name}"
    # ties (a 64-bit collision) go to the lower shard number: max() keeps the first maximum
    return max(range(1, count + 1), key=lambda shard: _weight(key, shard))


def owns(spec: ShardSpec, name: str, kind: Kind = "group") -> bool:
    return owner(name, spec.count, kind) == spec.index
