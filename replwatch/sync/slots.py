"""Redis Cluster slots, pure: key → slot, a short hash tag for every slot, how a command of
the replication stream goes to a cluster (one slot, split per slot, every master), the slot
map from CLUSTER SLOTS and redirection errors (MOVED / ASK / TRYAGAIN / CLUSTERDOWN).

Used by replwatch/sync/cluster_target.py (docs/syncer.md "Redis Cluster as a target").
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from replwatch.decimal_text import is_decimal
from replwatch.keyslot import key_slot
from replwatch.sync.filters import key_positions

# --------------------------------------------------------------------------- routing

# keyless commands that change every master's data: applied on every master, with nothing
# else in flight (a barrier in the stream)
EVERY_MASTER = frozenset((b"FLUSHALL", b"FLUSHDB", b"FUNCTION", b"SCRIPT"))
# commands about other databases: a cluster has db 0 only
_DB_COMMANDS = frozenset((b"SWAPDB", b"MOVE"))
# split per slot (the stream shows only commands that succeeded on the source: an MSETNX
# there set all its keys, so its parts are MSETs)
_SPLIT_WIDTH = {b"DEL": 1, b"UNLINK": 1, b"TOUCH": 1, b"MSET": 2, b"MSETNX": 2}


class CrossSlotError(ValueError):
    """A command whose keys are in several slots and that cannot be split."""


@dataclass(frozen=True, slots=True)
class Route:
    """Where one command goes: `kind` is
    - "slot": the command as it is, to `slot`;
    - "split": `parts`, (slot, argv) each, instead of the command;
    - "every_master": to every master, as a barrier;
    - "anywhere": keyless (PUBLISH, a script without keys): to any one slot."""

    kind: str
    slot: int = -1
    parts: tuple[tuple[int, tuple[bytes, ...]], ...] = ()


ANYWHERE = Route("anywhere")
EVERY = Route("every_master")
# commands whose one key is argv[1] whatever their other arguments (what the full sync
# writes: snapshot_slot routes them without the general key table; a table test holds it to
# route())
FIRST_ARGUMENT_KEY = frozenset(
    (b"SET", b"RESTORE", b"RPUSH", b"SADD", b"ZADD", b"HSET", b"HMSET", b"XADD", b"PEXPIREAT")
)


def snapshot_slot(argv: Sequence[bytes]) -> int | None:
    """The slot of a full-sync command whose one key is argv[1] (FIRST_ARGUMENT_KEY, named
    in capitals as the loader writes them); None: ask route()."""
    if len(argv) > 1 and argv[0] in FIRST_ARGUMENT_KEY:
        return key_slot(argv[1])
    return None


def route(argv: Sequence[bytes]) -> Route:
    """How a command of the stream (in db 0) goes to a cluster. Raises CrossSlotError for
    keys in several slots that cannot be split, ValueError for a command about another
    database."""
    name = argv[0].upper()
    if name in EVERY_MASTER:
        return EVERY
    if name in _DB_COMMANDS:
        raise ValueError(f"{name.decode()} names another database (a cluster has db 0 only)")
    if name == b"COPY":
        for i in range(3, len(argv) - 1):
            if argv[i].upper() == b"DB" and argv[i + 1] != b"0":
                raise ValueError("COPY … DB names another database (a cluster has db 0 only)")
    if name == b"SPUBLISH":
        return Route("slot", key_slot(argv[1])) if len(argv) > 1 else ANYWHERE
    positions = key_positions(argv)
    if not positions:
        return ANYWHERE
    first = key_slot(argv[positions[0]])
    if len(positions) == 1:
        return Route("slot", first)
    slots = [key_slot(argv[i]) for i in positions]
    if all(s == first for s in slots):
        return Route("slot", first)
    width = _SPLIT_WIDTH.get(name)
    if width is None:
        raise CrossSlotError(
            f"{name.decode(errors='replace')} has keys in {len(set(slots))} cluster slots "
            f"and cannot be split (e.g. {argv[positions[0]][:60]!r} in slot {first})"
        )
    head = b"MSET" if name == b"MSETNX" else argv[0]
    grouped: dict[int, list[bytes]] = {}
    for i, slot in zip(positions, slots, strict=True):
        grouped.setdefault(slot, [head]).extend(argv[i : i + width])
    return Route("split", parts=tuple((s, tuple(a)) for s, a in grouped.items()))


# --------------------------------------------------------------------------- cluster replies


@dataclass(frozen=True, slots=True)
class SlotRange:
    start: int
    end: int  # inclusive
    host: str
    port: int


def parse_cluster_slots(reply: Any, asked: tuple[str, int]) -> list[SlotRange]:
    """CLUSTER SLOTS → the masters' slot ranges. A master announced with no address (""
    or "?") is the node that was asked."""
    if not isinstance(reply, list):
        raise ValueError("CLUSTER SLOTS returned no list")
    ranges = []
    for entry in reply:
        if not isinstance(entry, list) or len(entry) < 3 or not isinstance(entry[2], list):
            raise ValueError("CLUSTER SLOTS returned a malformed entry")
        master = entry[2]
        host = master[0].decode() if isinstance(master[0], bytes) else str(master[0])
        port = int(master[1])
        if host in ("", "?"):
            host = asked[0]
        ranges.append(SlotRange(int(entry[0]), int(entry[1]), host, port))
    return ranges


@dataclass(frozen=True, slots=True)
class Redirect:
    """A cluster error reply: MOVED / ASK (slot, host, port), TRYAGAIN, CLUSTERDOWN."""

    kind: str
    slot: int = -1
    host: str = ""
    port: int = 0


def parse_redirect(message: str) -> Redirect | None:
    """`MOVED 3999 127.0.0.1:6381` → Redirect("MOVED", 3999, "127.0.0.1", 6381); TRYAGAIN and
    CLUSTERDOWN errors → Redirect of that kind; any other error → None."""
    head, _, rest = message.partition(" ")
    if head in ("MOVED", "ASK"):
        slot, _, address = rest.partition(" ")
        host, _, port = address.rpartition(":")
        if not (is_decimal(slot) and is_decimal(port)):
            return None
        return Redirect(head, int(slot), host.strip("[]"), int(port))
    if head in ("TRYAGAIN", "CLUSTERDOWN"):
        return Redirect(head)
    return None


def first_redirect(replies: Sequence[Any], error_type: type) -> Redirect | None:
    """The redirection that explains a refused batch: MOVED first (the map changed), then
    ASK, then TRYAGAIN / CLUSTERDOWN; None when no reply is one."""
    found: list[Redirect] = []
    for reply in replies:
        if isinstance(reply, error_type):
            redirect = parse_redirect(str(reply))
            if redirect is not None:
                found.append(redirect)
    for kind in ("MOVED", "ASK", "TRYAGAIN", "CLUSTERDOWN"):
        for redirect in found:
            if redirect.kind == kind:
                return redirect
    return None


def already_applied(slot_offsets: dict[int, int], slot: int, end: int) -> bool:
    """On resume: the slot's checkpoint says commands up to its offset are applied there; a
    unit of the stream ending at `end` in that slot is applied already when the offset is
    at least `end`."""
    return slot_offsets.get(slot, -1) >= end
