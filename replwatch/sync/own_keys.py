"""replwatch's own keys in a sync task's way (pure).

Keys under `__replwatch:` are replwatch's own, never the user's data: sync checkpoints
(`__replwatch:sync:<task>`), the monitor's heartbeat and probe keys. A task never copies
them from its source (a chain A → B → C would otherwise carry task a→b's checkpoint into C,
frozen at the snapshot, and a task later pointed at C would continue from it; a heartbeat
copied into a target that replwatch also watches would fight the target's own), in the
snapshot or in the stream.

On the target, the task's checkpoint lives in db 0 and must stay there, whole, whatever the
source's stream does to the target's databases: FLUSHALL and FLUSHDB (of db 0) keep it (a
script saves it with DUMP and puts it back after the flush, in the same atomic step), and
SWAPDB 0 n moves it back to db 0 after the swap. Other tasks' checkpoints on the same target
are left to the command: their data went with it.
"""

from __future__ import annotations

from collections.abc import Sequence

from replwatch.sync.checkpoint import CHECKPOINT_DB
from replwatch.sync.filters import SPLITTABLE, Verdict, key_positions

OWN_PREFIX = b"__replwatch:"

# commands that may name a key after argument 1 (the fast path looks for the prefix in their
# bytes before it lets them through)
MULTI_KEY_COMMANDS = frozenset(
    (
        b"DEL",
        b"UNLINK",
        b"TOUCH",
        b"MSET",
        b"MSETNX",
        b"RENAME",
        b"RENAMENX",
        b"COPY",
        b"SMOVE",
        b"LMOVE",
        b"BLMOVE",
        b"RPOPLPUSH",
        b"BRPOPLPUSH",
        b"SINTERSTORE",
        b"SUNIONSTORE",
        b"SDIFFSTORE",
        b"ZUNIONSTORE",
        b"ZINTERSTORE",
        b"ZDIFFSTORE",
        b"ZRANGESTORE",
        b"GEOSEARCHSTORE",
        b"GEORADIUS",
        b"GEORADIUSBYMEMBER",
        b"PFMERGE",
        b"BITOP",
        b"SORT",
        b"LMPOP",
        b"BLMPOP",
        b"ZMPOP",
        b"BZMPOP",
        b"EVAL",
        b"EVALSHA",
        b"FCALL",
    )
)

# DUMP the checkpoint, run the flush (ARGV), RESTORE it: one atomic step on the target, and
# its effects (the flush, the RESTORE) are what replicates from it
PRESERVE_SCRIPT = (
    "if redis.replicate_commands then redis.replicate_commands() end "
    "local saved = redis.call('DUMP', KEYS[1]) "
    "redis.call(unpack(ARGV)) "
    "if saved then redis.call('RESTORE', KEYS[1], 0, saved) end "
    "return 1"
)

_FLUSHALL, _FLUSHDB, _SWAPDB, _SELECT = b"FLUSHALL", b"FLUSHDB", b"SWAPDB", b"SELECT"
CHECKPOINT_GUARDED = frozenset((_FLUSHALL, _FLUSHDB, _SWAPDB))


def own_keys_verdict(argv: Sequence[bytes]) -> Verdict | None:
    """None when the command names no key under OWN_PREFIX (forward it). Else a Verdict:
    a command about own keys only is dropped uncounted (replwatch's writes, not data);
    DEL/UNLINK/TOUCH/MSET keep their other keys; any other command that mixes own keys with
    the user's is dropped whole and counted as mixed_keys."""
    positions = key_positions(argv)
    own = [i for i in positions if argv[i].startswith(OWN_PREFIX)]
    if not own:
        return None
    if len(own) == len(positions):
        return Verdict(False)
    name = argv[0].upper()
    if name in SPLITTABLE:
        width = 2 if name == b"MSET" else 1
        kept: list[bytes] = [argv[0]]
        for i in positions:
            if i not in own:
                kept += argv[i : i + width]
        return Verdict(False, (tuple(kept),), ())
    return Verdict(False, (), (("mixed_keys", 1),))


def _number(arg: bytes) -> int | None:
    try:
        return int(arg)
    except ValueError:
        return None


def guard_checkpoint(
    argv: Sequence[bytes], target_db: int, checkpoint: bytes
) -> list[tuple[bytes, ...]] | None:
    """FLUSHALL / FLUSHDB / SWAPDB as applied to the target (db numbers already mapped)
    so that the task's `checkpoint` stays in db CHECKPOINT_DB with all its fields; None when
    the command cannot touch it. `target_db`: the db the target connection is in; the
    commands returned leave it there."""
    name = argv[0].upper()
    db = str(CHECKPOINT_DB).encode()
    back = str(target_db).encode()
    if name == _FLUSHALL or (name == _FLUSHDB and target_db == CHECKPOINT_DB):
        script = (b"EVAL", PRESERVE_SCRIPT.encode(), b"1", checkpoint, name, *argv[1:])
        if target_db == CHECKPOINT_DB:
            return [script]
        return [(_SELECT, db), script, (_SELECT, back)]
    if name == _SWAPDB and len(argv) == 3:
        a, b = _number(argv[1]), _number(argv[2])
        if a is None or b is None or a == b or CHECKPOINT_DB not in (a, b):
            return None
        other = str(b if a == CHECKPOINT_DB else a).encode()
        return [
            (argv[0], argv[1], argv[2]),
            (_SELECT, other),
            (b"MOVE", checkpoint, db),
            (_SELECT, back),
        ]
    return None
