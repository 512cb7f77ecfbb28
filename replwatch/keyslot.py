"""Redis Cluster key slots, pure: key → slot, a short hash tag for every slot, and a key of
one's own in a slot a shard owns.

Shared by the monitor (heartbeat and probe keys on every shard of a cluster) and the sync
engine (replwatch/sync/slots.py), so it sits below both.
"""

from __future__ import annotations

import importlib
from collections.abc import Sequence
from itertools import count
from typing import Any

# crcmod (a dependency) ships no types: imported dynamically, as in sync/dump.py
_crcmod: Any = importlib.import_module("crcmod.predefined")

SLOTS = 16384
# CRC16-CCITT (XMODEM), as Redis Cluster's keyHashSlot
_crc16 = _crcmod.mkPredefinedCrcFun("xmodem")


def key_slot(key: bytes) -> int:
    """The cluster slot of a key: CRC16 of the key, or of its hash tag (the text between the
    first `{` and the first `}` after it, when not empty), modulo 16384."""
    start = key.find(b"{")
    if start >= 0:
        end = key.find(b"}", start + 1)
        if end > start + 1:
            key = key[start + 1 : end]
    return int(_crc16(key)) & (SLOTS - 1)


def slot_tags() -> tuple[str, ...]:
    """For every slot s, a short text whose CRC16 lands in s (`tags[s]`): the key
    `…{tags[s]}` is in slot s. The first such text among "0", "1", "2", … (deterministic)."""
    tags: list[str | None] = [None] * SLOTS
    missing = SLOTS
    n = 0
    while missing:
        text = str(n)
        slot = int(_crc16(text.encode())) & (SLOTS - 1)
        if tags[slot] is None:
            tags[slot] = text
            missing -= 1
        n += 1
    return tuple(t for t in tags if t is not None)


def owns(slots: Sequence[tuple[int, int]], slot: int) -> bool:
    return any(start <= slot <= end for start, end in slots)


def key_in_slots(base: str, slots: Sequence[tuple[int, int]], keep: str | None = None) -> str:
    """`base` with a hash tag that lands in one of `slots` (inclusive ranges): `keep` while
    its slot is still among them (a key does not move without need), else `base{n}` with
    the first n = 0, 1, 2, … that lands there. A `{` in `base` would be the key's hash tag,
    so the tag goes in front then: `{n}base`. No slots: `base` itself."""
    if not slots:
        return base
    if keep is not None and owns(slots, key_slot(keep.encode())):
        return keep
    for n in count():
        tag = f"{{{n}}}"
        key = f"{tag}{base}" if "{" in base else f"{base}{tag}"
        if owns(slots, key_slot(key.encode())):
            return key
    raise AssertionError("unreachable: every slot has a tag")
