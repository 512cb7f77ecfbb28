"""The stream stage for one target: commands of the source's replication stream applied in
`MULTI … <commands> … HSET <checkpoint> offset … EXEC` batches.

Source transactions are kept whole inside one batch, so the target's data and the recorded
position never disagree. Commands are forwarded as the stream's own bytes (spans of
SourceLink.raw, joined into runs), not encoded again; only what a rule must look at (the
stream's own MULTI/EXEC/SELECT/PING/REPLCONF, replwatch's own keys, what the task's filter
and rewrites watch, the common expiries with expire_grace) leaves that path. A Cluster
target has its own applier with the same interface (cluster_stream.py).
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Callable
from typing import Any

import hiredis

from replwatch.errors import ProtocolFailure
from replwatch.observe.connection import encode_command
from replwatch.sync.checkpoint_store import StreamMark
from replwatch.sync.expiry import LAST_ARGUMENT_FORMS, later_last_argument, with_last_argument
from replwatch.sync.filters import Verdict
from replwatch.sync.lease import Fence
from replwatch.sync.own_keys import OWN_PREFIX
from replwatch.sync.reader import SourceLink, check_aligned
from replwatch.sync.stage import StageContext
from replwatch.sync.stream_split import (
    CompiledSplit,
    command_length,
    compiled_split,
    counted_limits,
    encoded_length,
    marked,
    take_commands,
)
from replwatch.sync.target_rewrite import Rewrite
from replwatch.sync.writer import OK_REPLY, QUEUED_REPLY, Batch, TargetLink, TargetRejected

log = logging.getLogger("replwatch.sync")

_SPECIAL = frozenset((b"MULTI", b"EXEC", b"SELECT", b"PING", b"REPLCONF"))
_SELECT = b"SELECT"
MIXED_KEYS_WARN_EVERY = 60.0


class StreamApplier:
    """The command stream in MULTI batches with the checkpoint; source transactions are
    kept whole inside one batch. Commands are forwarded as the stream's own bytes (spans of
    SourceLink.raw, joined into runs), not encoded again."""

    def __init__(
        self,
        ctx: StageContext,
        target: TargetLink,
        source: SourceLink,
        replid: str,
        offset: int,
    ) -> None:
        self.ctx = ctx
        self.store = ctx.store
        self.target = target
        self.raw = source.raw
        self.replid = replid
        self.applied = offset  # confirmed by the target (EXEC answered)
        self.pending_offset = offset  # after the last command read
        self.batch_offset = offset  # what the batch being built ends at
        self.parts: list[bytes] = []
        self.count = 0  # commands in the batch being built
        self.size = 0
        self.run_start = self.run_end = -1  # the open run of forwarded bytes in `raw`
        self.db = target.db  # the stream's current db (and the target connection's)
        self.in_tx = False
        self.tx_parts: list[bytes] = []
        self.tx_count = 0
        self.tx_size = 0
        self.tx_run_start = self.tx_run_end = -1
        self.tx_dropped = False
        self.tx_left_out = False  # the open transaction had commands left out (own keys)
        self.tx_db = self.db  # the db selected when the open transaction began
        self.sent_offset = offset  # what the last batch sent ends at
        self.full_sync_started_at: int | None = None
        self.full_sync_finished_at: int | None = None
        self.full_resyncs = 0
        self.batch_size = ctx.task.batch_size
        self.batch_bytes = ctx.task.batch_bytes
        self.pair_key = ctx.pair_key
        self.filter = ctx.filter
        # with a filter: the source's selected db (self.db is the target's), commands left
        # out by reason not yet recorded, and those of the open transaction
        self.source_db = self.filter.source_db_of(self.db) if self.filter else self.db
        self.filtered: dict[str, int] = {}
        self.tx_filtered: dict[str, int] = {}
        self._mixed_warned = -MIXED_KEYS_WARN_EVERY
        # own keys left out, expiries a grace later, the checkpoint kept in db 0
        self.rewriter = ctx.rewriter(True)
        self.watched = self.rewriter.watched
        self.grace_ms = self.rewriter.grace_ms
        # what the stream splitter marks for add(): the stream's own commands and FLUSHes
        # always; what the rewrites watch (and the common expiries) past their plain form
        self._always = _SPECIAL | self.rewriter.watched_short
        looked_at = self.watched | (LAST_ARGUMENT_FORMS if self.grace_ms else frozenset())
        self._counted = looked_at - self._always
        # the commands of the read being applied (kept over a GETACK), the marked ones, and
        # the next one to take
        self._held: list[list[bytes]] | None = None
        self._marks: list[int] = []
        self._next = 0
        # the stream split in C when it was built (the same rules): the source's command
        # reader is then not fed at all
        self._split = compiled_split() if self.filter is None else None
        if self._split is not None:
            source.feeds_reader = False
            self._always_names = tuple(sorted(self._always))
            self._counted_limits = counted_limits(self._counted)
        ctx.position.replid, ctx.position.offset = replid, offset

    def consume(self, link: SourceLink) -> bool:
        """Take the commands the link's reader holds (SourceLink.feed_buffered), a read at a
        time (stream_split.py): the stretches between the commands a rule must look at go
        into the batch as runs of the stream's own bytes, those commands through add().
        True when it stopped right after a REPLCONF GETACK (answer it, then call again:
        the rest of the read is held)."""
        if self.filter is not None:
            return self._consume_filtered(link)
        if self._split is not None:
            return self._consume_compiled(link, self._split)
        label = link.endpoint.label
        if self._held is None:
            commands = take_commands(link.reader, label)
            if not commands:
                check_aligned(link.raw, link.raw_pos, label)
                return False
            # replwatch's own keys: only a read that holds the prefix's bytes is searched
            own = OWN_PREFIX if link.raw.find(OWN_PREFIX, link.raw_pos) >= 0 else None
            self._held = commands
            self._marks = marked(commands, self._always, self._counted, own)
            self._next = 0
        commands, marks = self._held, self._marks
        at = self._next
        for mark in marks:
            if mark < at:
                continue
            if mark > at:
                self._stretch(link, commands, at, mark)
            argv = commands[mark]
            start = link.raw_pos
            end = start + command_length(argv)
            self._check_end(link.raw, end, label)
            link.raw_pos = end
            at = mark + 1
            if not self.in_tx and self.run_end == start:
                # the command before was forwarded: the batch ends after it so far
                self.batch_offset = self.pending_offset
            if self.add(argv, start, end):
                self._next = at
                return True
        if at < len(commands):
            self._stretch(link, commands, at, len(commands))
        self._held = None
        check_aligned(link.raw, link.raw_pos, label)
        return False

    def _consume_compiled(self, link: SourceLink, split: CompiledSplit) -> bool:
        """consume() with the stream split in C (stream_split.compiled_split)."""
        raw = link.raw
        while True:
            room = len(raw) if self.in_tx else max(1, self.batch_size - self.count)
            start = link.raw_pos
            try:
                run_end, run_count, argv, end = split(
                    raw, start, room, self._always_names, self._counted_limits, OWN_PREFIX
                )
            except ValueError as exc:
                raise ProtocolFailure(
                    f"replication stream from {link.endpoint.label} {exc}"
                ) from None
            if run_count:
                link.raw_pos = run_end
                self._run(start, run_end, run_count)
            if argv is None:
                if run_count < room:
                    return False  # what is left is not a whole command
                continue
            link.raw_pos = end
            if not self.in_tx and self.run_end == run_end:
                # the command before was forwarded: the batch ends after it so far
                self.batch_offset = self.pending_offset
            if self.add(argv, run_end, end):
                return True

    @staticmethod
    def _check_end(raw: bytearray, end: int, label: str) -> None:
        if end > len(raw) or (end < len(raw) and raw[end] != 42):  # not at a b"*"
            check_aligned(raw, end, label)  # raises: not all bulk strings

    def _stretch(self, link: SourceLink, commands: list[list[bytes]], i: int, j: int) -> None:
        """commands[i:j], none of which a rule looks at: forwarded as the stream's bytes,
        in batches of at most batch_size commands (a transaction's stay in it)."""
        label = link.endpoint.label
        while i < j:
            room = j - i if self.in_tx else max(1, self.batch_size - self.count)
            upto = min(j, i + room)
            start = link.raw_pos
            end = start + encoded_length(commands[i:upto])
            self._check_end(link.raw, end, label)
            link.raw_pos = end
            self._run(start, end, upto - i)
            i = upto

    def _run(self, start: int, end: int, count: int) -> None:
        """`count` whole commands at raw[start:end] that no rule looks at, forwarded as they
        are (into the open transaction, or the batch: sent when full)."""
        length = end - start
        self.pending_offset += length
        if self.in_tx:
            if start != self.tx_run_end:
                self._close_tx_run()
                self.tx_run_start = start
            self.tx_run_end = end
            self.tx_count += count
            self.tx_size += length
            return
        if start != self.run_end:
            self._close_run()
            self.run_start = start
        self.run_end = end
        self.count += count
        self.size += length
        self.batch_offset = self.pending_offset
        if self.count >= self.batch_size or self.size >= self.batch_bytes:
            self.flush()

    def _consume_filtered(self, link: SourceLink) -> bool:
        """consume() for a task with filters: every command goes through _add_filtered."""
        return any(self._add_filtered(argv, start, end) for argv, start, end in link.commands())

    def _add_filtered(self, argv: list[bytes], start: int, end: int) -> bool:
        """add() through the task's filter: commands are kept, dropped, split or rewritten
        (db numbers mapped); a dropped command still moves the offset."""
        assert self.filter is not None
        name = argv[0].upper()
        if (name in _SPECIAL and name != _SELECT) or self.rewriter.looks_own(argv):
            return self.add(argv, start, end)
        self.pending_offset += end - start
        if name == _SELECT:
            db = _db_number(argv)
            if db is None:
                verdict: Verdict = Verdict(True)
            else:
                self.source_db = db
                mapped = self.filter.select(db)
                if mapped is None:  # a db that is not copied: its commands are dropped
                    verdict = Verdict(False)
                else:
                    self.db = mapped
                    keep = mapped == db
                    verdict = Verdict(keep, () if keep else ((b"SELECT", str(mapped).encode()),))
        else:
            verdict = self.rewriter.filtered(self.filter, argv, self.source_db, self.db)
        if verdict.dropped:
            self._count_filtered(verdict)
        if verdict.keep:
            self._forward(start, end, None, 1)
        elif verdict.commands:
            data = b"".join(encode_command(c) for c in verdict.commands)
            self._forward(start, end, data, len(verdict.commands))
        if not self.in_tx:
            self.batch_offset = self.pending_offset
            if self.count >= self.batch_size or self.size >= self.batch_bytes:
                self.flush()
        return False

    def _count_filtered(self, verdict: Verdict) -> None:
        counts = self.tx_filtered if self.in_tx else self.filtered
        for reason, count in verdict.dropped:
            counts[reason] = counts.get(reason, 0) + count
            if reason == "mixed_keys":
                now = time.monotonic()
                if now - self._mixed_warned >= MIXED_KEYS_WARN_EVERY:
                    self._mixed_warned = now
                    log.warning(
                        "task %s: dropped a command whose keys the filter splits between "
                        "copied and left out (counted as filtered:mixed_keys; warned once a "
                        "minute)",
                        self.ctx.task.name,
                    )

    def _forward(self, start: int, end: int, data: bytes | None, commands: int) -> None:
        """Into the batch (or the open transaction): the stream's own bytes raw[start:end]
        (data None), or `data` holding `commands` encoded commands in their place."""
        if self.in_tx:
            if data is None:
                if start != self.tx_run_end:
                    self._close_tx_run()
                    self.tx_run_start = start
                self.tx_run_end = end
            else:
                self._close_tx_run()
                self.tx_parts.append(data)
            self.tx_count += commands
            self.tx_size += end - start if data is None else len(data)
            return
        if data is None:
            if start != self.run_end:
                self._close_run()
                self.run_start = start
            self.run_end = end
        else:
            self._close_run()
            self.parts.append(data)
        self.count += commands
        self.size += end - start if data is None else len(data)

    def add(self, argv: list[bytes], start: int, end: int) -> bool:
        """Take one command of the stream (its bytes are raw[start:end]); True for
        REPLCONF GETACK (answer it now)."""
        self.pending_offset += end - start
        name = argv[0].upper()
        if name in _SPECIAL:
            return self._special(name, argv, start, end)
        if self.in_tx and self.pair_key is not None and len(argv) > 1 and argv[1] == self.pair_key:
            # our pair's checkpoint write: the whole transaction is an echo of what we wrote
            self.tx_dropped = True
        own = self.rewriter.looks_own(argv)
        later = (
            later_last_argument(argv, self.grace_ms)
            if self.grace_ms and not own and name in LAST_ARGUMENT_FORMS
            else None
        )
        if later is not None:  # (as in consume: the common expiries, the fast way)
            last = argv[-1]
            if len(later) == len(last):  # in the stream's own bytes: still a raw span
                self.raw[end - 2 - len(last) : end - 2] = later
                self._forward(start, end, None, 1)
            else:
                self._forward(start, end, with_last_argument(self.raw, start, end, last, later), 1)
        else:
            look = own or self.rewriter.needs_look(name, len(argv))
            rewrite = self.rewriter.rewrite(argv, self.db) if look else None
            if rewrite is None:
                self._forward(start, end, None, 1)
            else:
                self._apply_rewrite(rewrite, start, end)
        if not self.in_tx:
            self.batch_offset = self.pending_offset
            if self.count >= self.batch_size or self.size >= self.batch_bytes:
                self.flush()
        return False

    def _apply_rewrite(self, rewrite: Rewrite, start: int, end: int) -> None:
        """A rewritten command into the batch (or the open transaction); a command left out
        entirely (replwatch's own keys) still counts as taken for an empty transaction."""
        if rewrite.dropped:
            self._count_filtered(Verdict(False, (), rewrite.dropped))
        if rewrite.commands:
            data = b"".join(encode_command(c) for c in rewrite.commands)
            self._forward(start, end, data, len(rewrite.commands))
        elif self.in_tx:
            self.tx_left_out = True

    def _special(self, name: bytes, argv: list[bytes], start: int, end: int) -> bool:
        if name == b"MULTI":
            self.in_tx = True
            self.tx_dropped = False
            self.tx_left_out = False
            self.tx_filtered = {}
            self.tx_db = self.db
            self.tx_parts, self.tx_count, self.tx_size = [], 0, 0
            self.tx_run_start = self.tx_run_end = -1
            return False
        if name == b"EXEC":
            self._close_tx_run()
            self.in_tx = False
            if self.tx_dropped:
                self.ctx.counters.transactions_dropped += 1
                if self.db != self.tx_db:
                    # its SELECTs are dropped with it, and the stream goes on in the db it
                    # left selected without repeating a SELECT: say it to the target
                    self._close_run()
                    self.parts.append(encode_command(("SELECT", self.db)))
                    self.count += 1
            elif self.tx_count == 0 and self.pair_key is not None and not self.tx_left_out:
                # an empty transaction: all Redis 6.2 replicates of the reverse task's
                # unreplicated position write (_flush_position). Passing it writes no
                # position of ours, else the two tasks would answer each other for ever;
                # the next batch's position covers it.
                return False
            else:
                if self.tx_filtered:
                    for reason, count in self.tx_filtered.items():
                        self.filtered[reason] = self.filtered.get(reason, 0) + count
                    self.tx_filtered = {}
                self._close_run()
                self.parts.extend(self.tx_parts)
                self.count += self.tx_count
                self.size += self.tx_size
            self.tx_parts = []
            self.batch_offset = self.pending_offset
            if self.count >= self.batch_size or self.size >= self.batch_bytes:
                self.flush()
            return False
        if name == b"SELECT":
            if len(argv) > 1:
                with contextlib.suppress(ValueError):
                    self.db = int(argv[1])
            if self.in_tx:
                if start != self.tx_run_end:
                    self._close_tx_run()
                    self.tx_run_start = start
                self.tx_run_end = end
                self.tx_count += 1
                return False
            if start != self.run_end:
                self._close_run()
                self.run_start = start
            self.run_end = end
            self.count += 1
            self.batch_offset = self.pending_offset
            return False
        # PING, REPLCONF: not applied; they move the offset
        if not self.in_tx:
            self.batch_offset = self.pending_offset
        return name == b"REPLCONF" and len(argv) > 1 and argv[1].upper() == b"GETACK"

    def _close_run(self) -> None:
        if self.run_end > self.run_start >= 0:
            self.parts.append(bytes(self.raw[self.run_start : self.run_end]))
        self.run_start = self.run_end = -1

    def _close_tx_run(self) -> None:
        if self.tx_run_end > self.tx_run_start >= 0:
            self.tx_parts.append(bytes(self.raw[self.tx_run_start : self.tx_run_end]))
        self.tx_run_start = self.tx_run_end = -1

    def end_round(self) -> None:
        """Before the source link reads again (and drops the bytes consumed): copy out the
        open runs."""
        self._close_run()
        self._close_tx_run()

    def flush(self, force: bool = False) -> None:
        """Send the batch built so far (MULTI … checkpoint … EXEC); with nothing but
        skipped commands (PINGs) since the last batch, a checkpoint-only batch moves the
        recorded offset (`force`, or when the position moved)."""
        self._close_run()
        end = self.batch_offset
        # the db the stream has at `end`: a transaction read in part (its SELECTs seen, its
        # EXEC not yet) is not in this batch, so neither is the db it switched to
        db = self.tx_db if self.in_tx else self.db
        if not self.parts and not force and end <= self.sent_offset:
            return
        if not self.parts and self.pair_key is not None:
            self._flush_position(end, db)
            return
        count = self.count
        head = [encode_command(("MULTI",))]
        filtered = self.filtered if self.filter is not None else {}
        tail = self.store.stream_tail(self._mark(end, db), count, filtered, *self._lease_facts())
        if self.filter is not None:
            self.filtered = {}
        tail.append(encode_command(("EXEC",)))
        payload = b"".join(head + self.parts + tail)
        expect = 1 + count + len(tail)
        self.target.db = db
        self.sent_offset = end
        # MULTI's +OK, a +QUEUED per command, then EXEC's array
        prefix = OK_REPLY + QUEUED_REPLY * (count + len(tail) - 1)
        self.target.send(
            payload, Batch(expect, self._done(end, count), "stream", prefix=prefix, tail=1)
        )
        self.parts, self.count, self.size = [], 0, 0

    def _mark(self, end: int, db: int) -> StreamMark:
        return StreamMark(
            self.replid,
            end,
            db,
            self.full_resyncs,
            self.source_db if self.filter is not None else None,
            self.full_sync_started_at,
            self.full_sync_finished_at,
        )

    def _lease_facts(self) -> tuple[Fence | None, int | None]:
        return self.ctx.fence(), self.ctx.evicted()

    def _flush_position(self, end: int, db: int) -> None:
        """A pair task's checkpoint-only write (nothing applied since the last batch: only
        the reverse task's echoes, its checkpoint writes, PINGs): written by a script that
        keeps it out of the target's replication stream (redis.set_repl), else the reverse
        task would see it, record its own position past it, and the two would write each
        other's position for ever. The target's own replicas miss it too, which is safe: an
        older checkpoint there only re-reads stream bytes that are all dropped again."""
        tail = self.store.unreplicated_position(self._mark(end, db), *self._lease_facts())
        self.target.db = db
        self.sent_offset = end
        self.target.send(b"".join(tail), Batch(len(tail), self._position_done(end), "position"))

    def _position_done(self, end: int) -> Callable[[list[Any]], None]:
        def done(replies: list[Any]) -> None:
            failed = [r for r in replies if isinstance(r, hiredis.ReplyError)]
            if failed:
                raise TargetRejected(
                    f"target {self.ctx.task.target.label} refused the checkpoint write of "
                    f"a pair task (it needs EVAL): {str(failed[0])[:200]}"
                )
            self.applied = end
            self.ctx.position.offset = end

        return done

    def _done(self, end: int, count: int) -> Callable[[list[Any]], None]:
        def done(replies: list[Any]) -> None:
            exec_reply = replies[-1]
            if isinstance(exec_reply, hiredis.ReplyError) or exec_reply is None:
                first = next(
                    (r for r in replies[1:-1] if isinstance(r, hiredis.ReplyError)), exec_reply
                )
                raise TargetRejected(
                    f"target {self.ctx.task.target.label} refused a batch of the stream: "
                    f"{str(first)[:200]}"
                )
            # (the reply types looked at in C: a failed command is rare)
            if isinstance(exec_reply, list) and hiredis.ReplyError in set(map(type, exec_reply)):
                errors = [r for r in exec_reply if isinstance(r, hiredis.ReplyError)]
                if errors:
                    self.ctx.counters.command_errors += len(errors)
                    log.warning(
                        "task %s: %d commands failed on the target, e.g. %s",
                        self.ctx.task.name,
                        len(errors),
                        str(errors[0])[:200],
                    )
            self.applied = end
            self.ctx.counters.commands_applied += count
            self.ctx.counters.batches += 1
            self.ctx.position.offset = end

        return done


def _db_number(argv: list[bytes]) -> int | None:
    if len(argv) < 2:
        return None
    try:
        return int(argv[1])
    except ValueError:
        return None
