"""The replication stream applied to a Redis Cluster target: per-slot batches with per-slot
checkpoints, and the task record holding the floor (replwatch/sync/cluster_target.py
explains the scheme). The interface is StreamApplier's (stream_apply.py, the one-target
applier): consume, flush, end_round, applied, pending_offset (stream_follow.StreamStage).

Units: a command (or a source transaction's part in one slot) with the stream offsets it
starts and ends at. A source transaction whose keys are in several target slots is applied
as one MULTI … EXEC per slot (each part atomic and exactly once; the whole is not atomic).
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import Any

import hiredis

from replwatch.keyslot import key_slot, slot_tags
from replwatch.observe.connection import encode_command
from replwatch.sync.checkpoint_store import StreamMark
from replwatch.sync.cluster_target import RECORD_EVERY, ClusterTargetLink, Job
from replwatch.sync.expiry import LAST_ARGUMENT_FORMS, later_last_argument, with_last_argument
from replwatch.sync.filters import Verdict
from replwatch.sync.own_keys import PRESERVE_SCRIPT
from replwatch.sync.reader import SourceLink
from replwatch.sync.slots import CrossSlotError, already_applied, route
from replwatch.sync.stage import StageContext
from replwatch.sync.writer import TargetRejected

log = logging.getLogger("replwatch.sync")

_MULTI, _EXEC, _SELECT = b"MULTI", b"EXEC", b"SELECT"
_FLUSHES = frozenset((b"FLUSHALL", b"FLUSHDB"))
# bytes of the stream held (queued per slot or in flight) before reading waits for replies
BUFFER_LIMIT = 64 * 1024 * 1024


@dataclass(eq=False, slots=True)
class _SlotQueue:
    parts: list[bytes] = field(default_factory=list)
    count: int = 0
    size: int = 0
    pending_start: int = -1  # stream offset the oldest queued unit starts at
    end: int = -1  # … the last queued unit ends at
    first_start: int = -1  # the oldest unconfirmed unit (queued or in flight)
    busy: bool = False  # a batch of this slot is in flight


class ClusterStreamApplier:
    def __init__(
        self,
        ctx: StageContext,
        target: ClusterTargetLink,
        source: SourceLink,
        replid: str,
        offset: int,
    ) -> None:
        self.ctx = ctx
        self.store = ctx.store
        self.target = target
        self.raw = source.raw
        self.replid = replid
        self.start_offset = offset
        self.pending_offset = offset
        self.full_sync_started_at: int | None = None
        self.full_sync_finished_at: int | None = None
        self.full_resyncs = 0
        self.batch_size = ctx.task.batch_size
        self.batch_bytes = ctx.task.batch_bytes
        self.filter = ctx.filter
        self.db = 0
        self.source_db = 0
        self.filtered: dict[str, int] = {}
        self.queues: dict[int, _SlotQueue] = {}
        self.buffered = 0
        self.in_tx = False
        self.tx_start = -1
        self.tx_parts: dict[int, list[bytes]] = {}
        self.tx_counts: dict[int, int] = {}
        self.record_key = ctx.store.key_bytes
        self.record_slot = key_slot(self.record_key)
        self.tags = slot_tags()
        self.slot_offsets: dict[int, int] = {}  # resume: slot → applied up to
        self.started = False
        self.recorded = -1  # the floor the record holds
        self.record_busy = False
        self.last_record = 0.0
        self.confirmed = 0  # commands confirmed, not yet counted in the record
        self.skipped = 0  # commands found applied already (resume)
        # redirects counted in the record so far: none (the full sync's go in with the first)
        self.redirects_recorded = dict.fromkeys(target.redirects, 0)
        # own keys left out, expiries a grace later; the record survives a FLUSH its own way
        self.rewriter = ctx.rewriter(False)
        self.later_forms = LAST_ARGUMENT_FORMS if self.rewriter.grace_ms else frozenset()
        ctx.position.replid, ctx.position.offset = replid, offset

    # ------------------------------------------------------------------ resume

    def _start(self) -> None:
        """Once, before the first unit: the slot checkpoints of this task's current
        generation (full_resyncs) that are past the floor."""
        if self.started:
            return
        self.started = True
        for slot, (offset, gen) in self.target.slot_checkpoints(self.store).items():
            if gen == self.full_resyncs and offset > self.start_offset:
                self.slot_offsets[slot] = offset
        if self.slot_offsets:
            log.info(
                "task %s: resuming after %d; %d slots of the cluster target are further on",
                self.ctx.task.name,
                self.start_offset,
                len(self.slot_offsets),
            )

    @property
    def applied(self) -> int:
        """The floor: every command up to it is applied in every slot."""
        floor = self.tx_start if self.in_tx else self.pending_offset
        for queue in self.queues.values():
            if queue.first_start < floor:
                floor = queue.first_start
        return floor

    # ------------------------------------------------------------------ reading

    def consume(self, link: SourceLink) -> bool:
        """The commands the link's reader holds; True right after a REPLCONF GETACK."""
        self._start()
        raw = self.raw
        for argv, start, end in link.commands():
            begin = self.pending_offset
            self.pending_offset += end - start
            if self._take(argv, raw, start, end, begin, self.pending_offset):
                return True
        return False

    def _take(
        self, argv: list[bytes], raw: bytearray, a: int, b: int, start: int, end: int
    ) -> bool:
        name = argv[0].upper()
        if name == _MULTI:
            self.in_tx, self.tx_start = True, start
            self.tx_parts, self.tx_counts = {}, {}
            return False
        if name == _EXEC:
            if self.in_tx:
                self._close_tx(end)
            return False
        if name == _SELECT:
            self._select(argv)
            return False
        if name == b"PING" or name == b"REPLCONF":
            return name == b"REPLCONF" and len(argv) > 1 and argv[1].upper() == b"GETACK"
        rewriter = self.rewriter
        if self.filter is None and name in self.later_forms and not rewriter.looks_own(argv):
            # the common expiries a grace later, the fast way (expiry.later_last_argument)
            later = later_last_argument(argv, rewriter.grace_ms)
            if later is not None:
                self._command(argv, with_last_argument(raw, a, b, argv[-1], later), start, end)
                return False
        if self.filter is None or rewriter.looks_own(argv):
            # own keys left out, expiries a grace later (target_rewrite.py)
            rewrite = (
                rewriter.rewrite(argv, 0)
                if rewriter.needs_look(name, len(argv)) or rewriter.looks_own(argv)
                else None
            )
            if rewrite is None:
                self._command(argv, bytes(raw[a:b]), start, end)
                return False
            verdict = Verdict(False, rewrite.commands, rewrite.dropped)
        elif self.db < 0:  # a source db the filter leaves out
            self._count(Verdict(False, (), (("db", 1),)))
            return False
        else:
            verdict = rewriter.filtered(self.filter, argv, self.source_db, self.db)
        self._count(verdict)
        if verdict.keep:
            self._command(argv, bytes(raw[a:b]), start, end)
        for command in verdict.commands:
            if command[0].upper() == _SELECT:
                continue  # (FLUSHALL for some dbs: a cluster has db 0 only)
            self._command(list(command), encode_command(command), start, end)
        return False

    def _select(self, argv: list[bytes]) -> None:
        try:
            db = int(argv[1])
        except (IndexError, ValueError):
            return
        self.source_db = db
        if self.filter is None:
            self.db = db
            return
        mapped = self.filter.select(db)
        self.db = -1 if mapped is None else mapped

    def _count(self, verdict: Verdict) -> None:
        for reason, count in verdict.dropped:
            self.filtered[reason] = self.filtered.get(reason, 0) + count

    def _command(self, argv: list[bytes], data: bytes, start: int, end: int) -> None:
        """One command of db `self.db` into its slot's unit (or the open transaction)."""
        if self.db != 0:
            raise TargetRejected(
                f"task {self.ctx.task.name}: the source wrote to db {self.source_db} "
                f"({argv[0][:30]!r}) but a Redis Cluster target has database 0 only: map it "
                f"to 0 with db_map or leave it out with filters.dbs.allow"
            )
        try:
            r = route(argv)
        except (CrossSlotError, ValueError) as exc:
            raise TargetRejected(
                f"task {self.ctx.task.name}: cannot apply a command to the Redis Cluster "
                f"target: {exc}"
            ) from None
        if r.kind == "slot":
            self._unit(r.slot, data, start, end)
        elif r.kind == "split":
            for slot, part in r.parts:
                self._unit(slot, encode_command(part), start, end)
        elif r.kind == "anywhere":
            self._unit(self.record_slot, data, start, end)
        else:
            self._barrier(argv, data, start, end)

    def _unit(self, slot: int, data: bytes, start: int, end: int) -> None:
        if self.in_tx:
            self.tx_parts.setdefault(slot, []).append(data)
            self.tx_counts[slot] = self.tx_counts.get(slot, 0) + 1
            return
        self._queue(slot, data, 1, start, end)

    def _close_tx(self, end: int) -> None:
        """EXEC: each slot's part of the transaction becomes one unit."""
        self.in_tx = False
        for slot, parts in self.tx_parts.items():
            self._queue(slot, b"".join(parts), self.tx_counts[slot], self.tx_start, end)
        self.tx_parts, self.tx_counts = {}, {}

    # ------------------------------------------------------------------ batches

    def _queue(self, slot: int, data: bytes, count: int, start: int, end: int) -> None:
        if self.slot_offsets and already_applied(self.slot_offsets, slot, end):
            self.skipped += count
            return
        queue = self.queues.get(slot)
        if queue is None:
            queue = self.queues[slot] = _SlotQueue()
        if not queue.parts:
            queue.pending_start = start
            if not queue.busy:
                queue.first_start = start
        queue.parts.append(data)
        queue.count += count
        queue.size += len(data)
        queue.end = end
        self.buffered += len(data)
        if not queue.busy and (queue.count >= self.batch_size or queue.size >= self.batch_bytes):
            self._send(slot, queue)
        while self.buffered > BUFFER_LIMIT:
            self.target.wait_some()

    def _send(self, slot: int, queue: _SlotQueue) -> None:
        checkpoint = self.store.slot_checkpoint(self.tags[slot], queue.end, self.full_resyncs)
        count, size, end = queue.count, queue.size, queue.end
        body = b"".join([*queue.parts, checkpoint])
        queue.parts, queue.count, queue.size, queue.pending_start = [], 0, 0, -1
        queue.busy = True

        def done(replies: list[Any]) -> None:
            self._confirmed(slot, count, size, end, replies)

        self.target.start(Job(slot, body, count + 1, True, done, "stream"))

    def _confirmed(self, slot: int, count: int, size: int, end: int, replies: list[Any]) -> None:
        errors = [r for r in replies if isinstance(r, hiredis.ReplyError)]
        if errors:
            self.ctx.counters.command_errors += len(errors)
            log.warning(
                "task %s: %d commands failed on the target, e.g. %s",
                self.ctx.task.name,
                len(errors),
                str(errors[0])[:200],
            )
        self.buffered -= size
        self.confirmed += count
        self.ctx.counters.commands_applied += count
        self.ctx.counters.batches += 1
        queue = self.queues[slot]
        queue.busy = False
        if queue.parts:
            queue.first_start = queue.pending_start
            self._send(slot, queue)  # what came meanwhile goes at once
        else:
            del self.queues[slot]

    def end_round(self) -> None:
        """(The units hold copies of their bytes: nothing refers to the link's buffer.)"""

    def flush(self, force: bool = False) -> None:
        """Send every slot's queued units (unless its previous batch is still in flight) and,
        now and then, the task record with the floor."""
        self._start()
        for slot, queue in list(self.queues.items()):
            if queue.parts and not queue.busy:
                self._send(slot, queue)
        floor = self.applied
        self.ctx.position.offset = floor
        if self.record_busy:
            self.target.push()
            return
        moved = floor != self.recorded or self.confirmed or self.filtered
        moved = moved or self.target.redirects != self.redirects_recorded
        idle = not self.queues
        if force or (moved and (idle or time.monotonic() - self.last_record >= RECORD_EVERY)):
            self._record(floor)
        self.target.push()

    def _record_commands(self, floor: int) -> tuple[bytes, int]:
        mark = StreamMark(
            self.replid,
            floor,
            0,
            self.full_resyncs,
            self.source_db if self.filter is not None else None,
            self.full_sync_started_at,
            self.full_sync_finished_at,
        )
        redirects = {}
        for kind, count in self.target.redirects.items():
            if count != self.redirects_recorded[kind]:
                redirects[kind] = count - self.redirects_recorded[kind]
                self.redirects_recorded[kind] = count
        commands = self.store.cluster_record(mark, self.confirmed, self.filtered, redirects)
        self.confirmed = 0
        self.filtered = {}
        return b"".join(commands), len(commands)

    def _record(self, floor: int) -> None:
        body, count = self._record_commands(floor)
        self.record_busy = True
        self.last_record = time.monotonic()

        def done(replies: list[Any]) -> None:
            self.record_busy = False
            self.recorded = max(self.recorded, floor)

        self.target.start(Job(self.record_slot, body, count, False, done, "checkpoint"))

    # ------------------------------------------------------------------ barriers

    def _barrier(self, argv: list[bytes], data: bytes, start: int, end: int) -> None:
        """FLUSHALL / FLUSHDB / FUNCTION / SCRIPT: everything before confirmed, then on every
        master; the record's master last, with the record at `end` (a FLUSH in the same
        MULTI, run by a script that keeps the record whole: own_keys.PRESERVE_SCRIPT)."""
        name = argv[0].upper()
        if self.in_tx:
            # the transaction's parts before it are units of their own; after the barrier
            # the floor may sit inside the transaction (a resume then sees a stray EXEC)
            self._close_tx(start)
            self.in_tx, self.tx_start = True, end
        self.flush()
        self.target.drain()
        while self.queues or self.record_busy:
            self.flush()
            self.target.drain()
        record_node = self.target.owner(self.record_slot)
        for master in self.target.masters:
            if master != record_node or name not in _FLUSHES:
                self.target.start(
                    Job(-1, data, 1, False, lambda _: None, name.decode(), node=master)
                )
        self.target.drain()
        body, count = self._record_commands(end)
        if name in _FLUSHES:
            keep = (b"EVAL", PRESERVE_SCRIPT.encode(), b"1", self.record_key, *argv)
            body = encode_command(keep) + body
            count += 1
        self.record_busy = True

        def done(replies: list[Any]) -> None:
            self.record_busy = False
            self.recorded = end

        self.target.start(Job(self.record_slot, body, count, name in _FLUSHES, done, "barrier"))
        self.target.drain()
        if name in _FLUSHES:
            self.slot_offsets = {}  # (the slot checkpoints went with the data)
        self.last_record = time.monotonic()
        self.ctx.position.offset = end
