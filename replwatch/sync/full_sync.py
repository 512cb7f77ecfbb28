"""The full sync of one session: what it does to the target first (flush, keep, refuse),
why it happens, and the snapshot loaded (snapshot_load.py) between the checkpoint's records
of its start and its end (checkpoint_store.py).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

from replwatch.config import SyncTask
from replwatch.errors import RedisError
from replwatch.sync.checkpoint import Checkpoint
from replwatch.sync.checkpoint_store import SnapshotTally
from replwatch.sync.commands import TargetCaps
from replwatch.sync.dump import restore_target_from_info
from replwatch.sync.fatal import FatalTaskError
from replwatch.sync.guard import SessionGuard
from replwatch.sync.own_keys import OWN_PREFIX
from replwatch.sync.preflight import Plan, snapshot_plan
from replwatch.sync.reader import FullResync, SourceLink
from replwatch.sync.resync_reason import full_resync_reason
from replwatch.sync.snapshot_load import SnapshotLoader, load_snapshot, read_to_end
from replwatch.sync.stage import StageContext
from replwatch.sync.writer import TargetLink, now_ms

log = logging.getLogger("replwatch.sync")

# while the source prepares a snapshot: the checkpoint's updated_at at most this often
KEEPALIVE_RECORD_EVERY = 5.0


def existing_keys_refused(task: SyncTask, foreign: int) -> str:
    """Why a first full sync into a target holding `foreign` keys stops (existing_keys:
    refuse), and what to set instead."""
    return (
        f"target {task.target.label} already holds {foreign} keys; a full sync would mix "
        f"them with the source's: set existing_keys: flush (delete them first) or overwrite "
        f"(keep keys the source does not have) on task {task.name}"
    )


class FullSyncStage:
    """One session's full sync (the runner asks it before PSYNC what it will do, then runs
    it when the source answers +FULLRESYNC)."""

    def __init__(self, ctx: StageContext, guard: SessionGuard, io_timeout: float) -> None:
        self.ctx = ctx
        self.task = ctx.task
        self.store = ctx.store
        self.guard = guard
        self.io_timeout = io_timeout
        self.loader: SnapshotLoader | None = None  # the snapshot being loaded
        self.flushed = False  # it flushed the target (or found it empty)

    def plan(self, checkpoint: Checkpoint | None) -> Plan:
        """What a full sync does to the target first (preflight.snapshot_plan): overwrite
        (existing_keys: overwrite never deletes; a pair's target holds its own live data,
        and a FLUSHALL would be copied back to the other side), flush (the target holds this
        task's copy: replaced whole, so keys deleted on the source meanwhile go too), or
        if_foreign (a first full sync: existing_keys decides)."""
        ours_before = checkpoint is not None and checkpoint.full_resyncs > 0
        return snapshot_plan(self.task.existing_keys, self.task.pair is not None, ours_before)

    def skips_snapshot(self, checkpoint: Checkpoint | None) -> bool:
        """snapshot: skip holds for the first full sync only, until it completes."""
        resyncs = checkpoint.full_resyncs if checkpoint is not None else 0
        return self.task.snapshot == "skip" and resyncs == 0

    def refuse_foreign_keys(self, target: TargetLink, checkpoint: Checkpoint | None) -> None:
        """Before PSYNC: a first full sync into a target holding keys under existing_keys:
        refuse stops the task without the source forking for a snapshot that would not be
        loaded (and again at every start the supervisor retries)."""
        if self.plan(checkpoint) != "if_foreign" or self.task.existing_keys != "refuse":
            return
        foreign = target.keys_outside(OWN_PREFIX)
        if foreign:
            raise FatalTaskError(existing_keys_refused(self.task, foreign))

    def reason(
        self,
        source: SourceLink,
        checkpoint: Checkpoint | None,
        reply: FullResync,
        resume: bool,
        afresh: bool,
    ) -> str | None:
        """Why this full sync happens (None: the task's first). Asked to continue, the
        source's own rules are told apart (resync_reason.py): logged, and kept as the
        checkpoint's full_resync_reason and last error."""
        if checkpoint is None or (checkpoint.full_resyncs == 0 and not resume):
            return None
        if not resume:
            if afresh:
                return "the task was started afresh"
            return "the last full sync did not finish (a half-loaded copy cannot be continued)"
        assert checkpoint.replid is not None and checkpoint.offset is not None
        age = None
        if checkpoint.updated_at is not None:
            age = max(0.0, (now_ms() - checkpoint.updated_at) / 1000)
        reason = full_resync_reason(
            source.endpoint.label,
            checkpoint.replid,
            checkpoint.offset,
            source.history,
            reply.replid,
            age,
        )
        log.warning("task %s: full resync: %s", self.task.name, reason)
        self.guard.resync_reason = reason
        return reason

    def prepare_target(self, target: TargetLink, checkpoint: Checkpoint | None) -> bool:
        """Make the target ready for a snapshot (_plan); True when keys may already exist
        on it (overwrite), so plain-command writes must delete a key first."""
        plan = self.plan(checkpoint)
        if plan == "overwrite":
            return True
        if plan == "flush":
            target.flush_keeping_checkpoints()
            return False
        foreign = target.keys_outside(OWN_PREFIX)
        if not foreign:
            return False
        if self.task.existing_keys == "refuse":
            raise FatalTaskError(existing_keys_refused(self.task, foreign))
        target.flush_keeping_checkpoints()  # existing_keys: flush
        return False

    def run(
        self,
        source: SourceLink,
        target: TargetLink,
        checkpoint: Checkpoint | None,
        reply: FullResync,
        reason: str | None = None,
    ) -> None:
        """Load the snapshot into the target (snapshot_load.py). `reason`: why this full
        sync happens (reason()), recorded in the checkpoint."""
        task = self.task
        log.info(
            "task %s: full sync from %s (replid %s offset %d)",
            task.name,
            task.source.label,
            reply.replid,
            reply.offset,
        )
        resyncs = (checkpoint.full_resyncs if checkpoint else 0) + 1
        # snapshot: skip holds for the first full sync only, until it completes (it counts
        # in full_resyncs only then, so an interrupted skip is skipped again on retry)
        skip = self.skips_snapshot(checkpoint)
        replace = False if skip else self.prepare_target(target, checkpoint)
        self.flushed = not skip and not replace
        if not skip:
            self.guard.before_load(target)
        started_at = now_ms()
        self.store.full_sync_begins(
            target,
            reply.replid,
            reply.offset,
            started_at,
            resyncs - 1 if skip else resyncs,
            reason,
            unexpected=self.guard.resync_reason is not None,  # the task had asked to continue
        )
        payload = source.payload(self._keepalive(target))
        self.store.snapshot_size(target, payload.length)
        if skip:
            log.info("task %s: snapshot: skip: the snapshot is read, not loaded", task.name)
            read_to_end(payload, self.ctx.stopping)
            self.store.snapshot_skipped(target, reply.replid, reply.offset, payload.loaded)
            self.ctx.counters.full_syncs += 1
            source.ack(reply.offset)  # a diskless source waits for it (see below)
            return
        caps = TargetCaps.of(restore_target_from_info(target.info))
        loader = SnapshotLoader(self.ctx, target, caps, replace)
        self.loader = loader
        source.settimeout(self.io_timeout)
        load_snapshot(self.ctx, loader, payload, source.endpoint.label)
        target.drain()
        self.guard.check_evictions(target)  # a copy that lost keys is not one
        tally = SnapshotTally(
            loader.keys_loaded,
            loader.keys_total,
            payload.loaded,
            loader.skipped,
            loader.own_keys_skipped,
            loader.stream_pending_dropped,
            self.guard.evicted,
        )
        finished = self.store.full_sync_ends(target, reply.replid, reply.offset, started_at, tally)
        self.ctx.counters.full_syncs += 1
        self.ctx.counters.keys_loaded += loader.keys_loaded
        log.info(
            "task %s: full sync done: %d keys, %d bytes in %.1fs",
            task.name,
            loader.keys_loaded,
            payload.loaded,
            (finished - started_at) / 1000,
        )
        if loader.own_keys_skipped:
            log.info(
                "task %s: left out %d keys under __replwatch: (replwatch's own: checkpoints, "
                "heartbeat, probe; never copied)",
                task.name,
                loader.own_keys_skipped,
            )
        # a diskless source waits for this first ACK before it streams commands
        source.ack(reply.offset)

    def _keepalive(self, target: TargetLink) -> Callable[[], None]:
        """Called for each newline the source sends while it prepares the snapshot (a
        BGSAVE may take minutes): a stop request ends the wait, and the checkpoint's
        updated_at moves now and then, so the monitor does not take the wait for a task
        that died (a full_sync checkpoint not updated for its stale threshold)."""
        last = time.monotonic()

        def alive() -> None:
            nonlocal last
            if self.ctx.stopping():
                raise RedisError("stopped during the full sync", reason="stopped")
            if time.monotonic() - last >= KEEPALIVE_RECORD_EVERY:
                last = time.monotonic()
                self.store.touch(target)

        return alive
