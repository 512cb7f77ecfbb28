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
from replwatch.observe.connection import READER_ERRORS, encode_command
from replwatch.sync.checkpoint_store import StreamMark
from replwatch.sync.expiry import (
    LAST_ARGUMENT_FORMS,
    PEXPIRE_FORMS,
    PX_UNITS,
    later_last_argument,
    with_last_argument,
)
from replwatch.sync.filters import Verdict
from replwatch.sync.lease import Fence
from replwatch.sync.own_keys import OWN_PREFIX
from replwatch.sync.reader import SourceLink, check_aligned
from replwatch.sync.stage import StageContext
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
        ctx.position.replid, ctx.position.offset = replid, offset

    def consume(self, link: SourceLink) -> bool:
        """Take the commands the link's reader holds (SourceLink.feed_buffered), the common
        case inline with its counters in locals; True when it stopped right after a
        REPLCONF GETACK (answer it, then call again). A command's span in `raw` comes from
        its exact RESP length (reader.command_length, inline: per argument 5 bytes plus its
        size plus its size's digits, and the digits of all sizes are len(repr(sizes)) - 2n)."""
        if self.filter is not None:
            return self._consume_filtered(link)
        gets = link.reader.gets
        pos = link.raw_pos
        raw = link.raw
        special = _SPECIAL
        prefix = OWN_PREFIX
        # what may need more than forwarding: the stream's own commands, what the task's
        # rewrites watch (target_rewrite.py), the common expiries
        looked_at = special | self.watched | (LAST_ARGUMENT_FORMS if self.grace_ms else set())
        watched_short = self.rewriter.watched_short
        grace_ms = self.grace_ms
        px_units, pexpire_forms = PX_UNITS, PEXPIRE_FORMS
        batch_size, batch_bytes = self.batch_size, self.batch_bytes
        count, size, pending, run_end = self.count, self.size, self.pending_offset, self.run_end
        try:
            while True:
                try:
                    argv = gets()
                except READER_ERRORS as exc:
                    raise ProtocolFailure(
                        f"bad replication stream from {link.endpoint.label}: {exc}"
                    ) from None
                if argv is False:
                    check_aligned(link.raw, pos, link.endpoint.label)
                    return False
                if type(argv) is not list:
                    raise ProtocolFailure(
                        f"replication stream from {link.endpoint.label} holds a non-command reply"
                    )
                n = len(argv)
                try:  # (an argument that is no string: a nested array shows in check_aligned)
                    sizes = list(map(len, argv))
                    name = argv[0].upper()
                    own_key = n > 1 and argv[1].startswith(prefix)
                except (TypeError, AttributeError, IndexError):
                    raise ProtocolFailure(
                        f"replication stream from {link.endpoint.label} holds a reply that is "
                        "not a command"
                    ) from None
                start = pos
                pos += 3 + len(str(n)) + 3 * n + sum(sizes) + len(repr(sizes))
                if pos > len(raw) or (pos < len(raw) and raw[pos] != 42):  # not at a b"*"
                    check_aligned(raw, pos, link.endpoint.label)  # raises: not all bulk strings
                if self.in_tx or own_key or name in looked_at:
                    # the common expiries a grace later (expiry.later_last_argument, inlined:
                    # the hot path of TTL-heavy streams): SET … PX|PXAT n, PEXPIRE|PEXPIREAT
                    # key n; any other form (or a time that deletes at once) takes add()'s
                    # full rewrite
                    later = None
                    if (
                        grace_ms
                        and ((n == 5 and name == b"SET") or (n == 3 and name in pexpire_forms))
                        and not own_key
                        and not self.in_tx
                    ):
                        absolute = px_units.get(argv[3]) if n == 5 else pexpire_forms[name]
                        if absolute is not None:
                            try:
                                number = int(argv[-1])
                            except ValueError:
                                number = 0
                            if number > 0 or (absolute and number < 0):
                                later = b"%d" % (number + grace_ms)
                    if later is not None and len(later) == sizes[-1]:
                        # same length: the digits are replaced in the stream's own bytes
                        # (the command stays a raw span)
                        raw[pos - 2 - sizes[-1] : pos - 2] = later
                    elif (
                        later is not None
                        or self.in_tx
                        or own_key
                        or name in special
                        or (n > 4 if name == b"SET" else n > 2)
                        or name in watched_short
                    ):
                        self.count, self.size, self.pending_offset = count, size, pending
                        self.run_end = run_end
                        if not self.in_tx and run_end == start:
                            # the command before was forwarded: the batch ends after it so far
                            self.batch_offset = pending
                        getack = self.add(argv, start, pos)
                        count, size, pending = self.count, self.size, self.pending_offset
                        run_end = self.run_end
                        if getack:
                            return True
                        continue
                if start != run_end:
                    self.run_end = run_end
                    self._close_run()
                    self.run_start = start
                run_end = pos
                count += 1
                size += pos - start
                pending += pos - start
                if count >= batch_size or size >= batch_bytes:
                    self.count, self.size, self.pending_offset = count, size, pending
                    self.run_end = run_end
                    self.batch_offset = pending
                    self.flush()
                    count, size, run_end = self.count, self.size, self.run_end
        finally:
            link.raw_pos = pos
            self.count, self.size, self.pending_offset = count, size, pending
            self.run_end = run_end
            if not self.in_tx and run_end == pos:
                self.batch_offset = pending

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
            if isinstance(exec_reply, list):
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
