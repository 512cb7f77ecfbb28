"""What a command of the source's stream becomes on the target, beyond the task's filters
(pure): replwatch's own keys left out (own_keys.py), expiries a grace later (expiry.py),
stream commands as the target's generation needs them (stream_compat.py), the task's
checkpoint kept in place under FLUSHALL / FLUSHDB / SWAPDB (own_keys.py).

The stream appliers forward most commands as the stream's own bytes; `watched` names the
commands they must hand to `rewrite` first (with `looks_own` for the rest), so the common
case costs one set lookup.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from replwatch.sync.expiry import EXPIRY_COMMANDS, delay_expiry
from replwatch.sync.filters import SyncFilter, Verdict
from replwatch.sync.own_keys import (
    CHECKPOINT_GUARDED,
    MULTI_KEY_COMMANDS,
    OWN_PREFIX,
    guard_checkpoint,
    own_keys_verdict,
)
from replwatch.sync.stream_compat import StreamCompat, stream_command_for_target

Command = tuple[bytes, ...]
_SELECT = b"SELECT"
_SET = b"SET"


@dataclass(frozen=True, slots=True)
class Rewrite:
    """A command's replacement: `commands` to send instead (empty: dropped), and writes
    left out by reason (counted like the filters' drops)."""

    commands: tuple[Command, ...]
    dropped: tuple[tuple[str, int], ...] = ()


@dataclass(frozen=True, slots=True)
class TargetRewriter:
    """The rewrite rules of one task. `checkpoint`: the task's checkpoint key, guarded under
    FLUSHALL / FLUSHDB / SWAPDB (None: not guarded, e.g. a cluster target, which keeps its
    record its own way); `grace_ms`: expire_grace in milliseconds (0: TTLs as they are);
    `compat`: the source's and the target's stream generations (None: alike)."""

    checkpoint: bytes | None
    grace_ms: int
    compat: StreamCompat | None = None

    @property
    def watched(self) -> frozenset[bytes]:
        """Command names (upper case) that may need a rewrite; argv[1] under OWN_PREFIX
        (looks_own) makes any command one."""
        names = set(MULTI_KEY_COMMANDS)
        if self.grace_ms > 0:
            names |= EXPIRY_COMMANDS
        if self.checkpoint is not None:
            names |= CHECKPOINT_GUARDED
        if self.compat is not None:
            names |= self.compat.names
        return frozenset(names)

    @property
    def watched_short(self) -> frozenset[bytes]:
        """The watched names that matter with two arguments or fewer (FLUSHALL, FLUSHDB);
        any other needs three (a second key, a time), SET five (a time option and its value):
        `DEL key`, the source's expiry, stays on the fast path."""
        return CHECKPOINT_GUARDED if self.checkpoint is not None else frozenset()

    def needs_look(self, name: bytes, n: int) -> bool:
        """A command of `n` arguments named `name` (upper case) may need rewrite()."""
        return name in self.watched and (
            (n > 4 if name == b"SET" else n > 2) or name in self.watched_short
        )

    @staticmethod
    def looks_own(argv: Sequence[bytes]) -> bool:
        """Its first key argument is one of replwatch's own (the common case of own keys:
        checkpoints, heartbeats)."""
        return len(argv) > 1 and argv[1].startswith(OWN_PREFIX)

    def rewrite(self, argv: Sequence[bytes], target_db: int) -> Rewrite | None:
        """None: forward the command as it is. `target_db`: the db the target connection
        is in when it runs (after the task's db mapping)."""
        own = own_keys_verdict(argv) if self._may_name_own(argv) else None
        if own is not None:
            if not own.commands:
                return Rewrite((), own.dropped)
            commands: list[Command] = [tuple(c) for c in own.commands]
            changed = True
        else:
            commands = [tuple(argv)]
            changed = False
        out: list[Command] = []
        db = target_db
        for command in commands:
            replaced = self._one(command, db)
            if replaced is None:
                out.append(command)
            else:
                out += replaced
                changed = True
            for c in replaced or (command,):
                if c[0].upper() == _SELECT and len(c) > 1 and c[1].isdigit():
                    db = int(c[1])
        if not changed:
            return None
        return Rewrite(tuple(out), own.dropped if own is not None else ())

    def rewrite_verdict(self, verdict: Verdict, argv: Sequence[bytes], target_db: int) -> Rewrite:
        """A filter's verdict on `argv` (kept, or replaced by commands) with these rules
        applied to what it sends; the verdict's own drops stay counted."""
        sent: list[Command] = (
            [tuple(argv)] if verdict.keep else [tuple(c) for c in verdict.commands]
        )
        out: list[Command] = []
        dropped = list(verdict.dropped)
        db = target_db
        for command in sent:
            if command[0].upper() == _SELECT and len(command) > 1 and command[1].isdigit():
                out.append(command)
                db = int(command[1])
                continue
            rewritten = self.rewrite(command, db)
            if rewritten is None:
                out.append(command)
            else:
                out += rewritten.commands
                dropped += rewritten.dropped
        return Rewrite(tuple(out), tuple(dropped))

    def filtered(
        self, task_filter: SyncFilter, argv: Sequence[bytes], source_db: int, target_db: int
    ) -> Verdict:
        """The task's filter on one stream command (source_db: the source's selected db,
        target_db: the mapped one), then these rules on what it lets through: the one
        verdict both stream appliers (one target, a Cluster target) apply."""
        verdict = task_filter.command(argv, source_db, target_db)
        if (verdict.keep or verdict.commands) and (
            self.needs_look(argv[0].upper(), len(argv)) or not verdict.keep
        ):
            rewrite = self.rewrite_verdict(verdict, argv, target_db)
            verdict = Verdict(False, rewrite.commands, rewrite.dropped)
        return verdict

    def _may_name_own(self, argv: Sequence[bytes]) -> bool:
        if self.looks_own(argv):
            return True
        if argv[0].upper() not in MULTI_KEY_COMMANDS:
            return False
        return any(arg.startswith(OWN_PREFIX) for arg in argv[2:])

    def _one(self, command: Command, db: int) -> list[Command] | None:
        """Expiry grace, the stream generation, the checkpoint guard, for one command."""
        name = command[0].upper()
        compat = self.compat
        if compat is not None and name in compat.names:
            replaced = stream_command_for_target(command, compat)
            return None if replaced is None else list(replaced)
        if self.grace_ms > 0 and name in EXPIRY_COMMANDS:
            if name == _SET and len(command) <= 3:
                return None
            later = delay_expiry(command, self.grace_ms)
            return None if later is None else [tuple(later)]
        if self.checkpoint is not None and name in CHECKPOINT_GUARDED:
            return guard_checkpoint(command, db, self.checkpoint)
        return None
