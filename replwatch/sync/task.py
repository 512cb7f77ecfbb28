"""One sync task: source → target, full sync then the command stream, resumable.

A session: connect to the target, read the checkpoint; connect to the source as a replica
and ask to continue after the checkpoint's position (PSYNC <replid> <offset+1>) when it names
one, else for everything (PSYNC ? -1). A full sync loads the snapshot into the target
(RESTORE when the target understands the payload, plain commands otherwise) and ends with a
checkpoint naming the snapshot's position; then the stream is applied in batches, each one
`MULTI … <commands> … HSET <checkpoint> offset … EXEC`, so the target's data and the recorded
position never disagree: after a crash the task continues exactly there. The source is
ACKed the offset applied to the target (about once a second, and at once on GETACK).

Before PSYNC (a full sync makes the source fork) each session checks the target and the
source (guard.py, preflight.py): a target that cannot take the data stops the task before
the source is asked for a snapshot. Sessions end on errors and are retried with backoff; a
problem retrying cannot fix (a failed check, a non-empty target with existing_keys: refuse, a
module key with on_module_key: fail, the target refusing the snapshot's data, out of memory
or read-only) stops the task (FatalTaskError), recorded in the checkpoint and, as the target
may refuse that write, in the task's local report (task_report.py).
"""

from __future__ import annotations

import logging
import socket
import threading
import time
from collections.abc import Callable, Mapping
from pathlib import Path

from replwatch.config import SyncTask, TLSConfig, tls_over
from replwatch.errors import ProtocolFailure, RedisError, ReplwatchError
from replwatch.sync.checkpoint import Checkpoint
from replwatch.sync.checkpoint_store import CheckpointStore, SnapshotTally
from replwatch.sync.cluster_stream import ClusterStreamApplier
from replwatch.sync.cluster_target import ClusterTargetLink, open_target
from replwatch.sync.commands import TargetCaps
from replwatch.sync.dump import restore_target_from_info
from replwatch.sync.fatal import FatalTaskError
from replwatch.sync.filters import SyncFilter
from replwatch.sync.guard import SessionGuard
from replwatch.sync.ha import LeaseHolder
from replwatch.sync.lease import Fence, LeaseLost
from replwatch.sync.own_keys import OWN_PREFIX
from replwatch.sync.preflight import Plan, refusal_kind, snapshot_plan
from replwatch.sync.reader import Continue, FullResync, SourceLink
from replwatch.sync.resync_reason import full_resync_reason
from replwatch.sync.snapshot_load import SnapshotLoader, load_snapshot, read_to_end
from replwatch.sync.sources import Locator, source_locator
from replwatch.sync.stage import StageContext, StreamPosition, TaskCounters
from replwatch.sync.stream_apply import StreamApplier
from replwatch.sync.stream_compat import StreamCompat
from replwatch.sync.stream_follow import follow_stream
from replwatch.sync.target_rewrite import TargetRewriter
from replwatch.sync.task_report import TaskReporter
from replwatch.sync.writer import CLIENT_NAME, TargetLink, TargetRejected, now_ms

log = logging.getLogger("replwatch.sync")

IO_TIMEOUT = 10.0  # connect and reply timeout for both sides
MAX_IN_FLIGHT = 8
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


class SyncTaskRunner:
    """Runs one task until stop() or a fatal error."""

    def __init__(
        self,
        task: SyncTask,
        tls: TLSConfig,
        stop: threading.Event | None = None,
        io_timeout: float = IO_TIMEOUT,
        locate_source: Locator | None = None,
        report_path: Path | None = None,
    ) -> None:
        self.task = task
        self.tls = tls_over(tls, task.tls)
        # the local record of errors and of how the task ended (task_report.py): a target
        # that refuses writes refuses the checkpoint's too
        self.reporter = TaskReporter(report_path, task.name)
        # the checks before PSYNC and the stop message of a refused write (guard.py)
        self.guard = SessionGuard(task, self.reporter)
        self._loader: SnapshotLoader | None = None  # the session's snapshot load
        self._flushed = False  # the session's full sync flushed the target (or found it empty)
        # where the source is at each (re)connect: its URL, or the master the Sentinels (or
        # the cluster, for one shard) name now (replwatch/sync/sources.py)
        self.locate_source = locate_source or source_locator(task.source, self.tls, io_timeout)
        self.stop_event = stop or threading.Event()
        self.io_timeout = io_timeout
        self.counters = TaskCounters()
        self.store = CheckpointStore(task, socket.gethostname())
        self.key = self.store.key
        # None: nothing to filter or map (the stream goes the raw fast path)
        self.filter = SyncFilter.of(task)
        self._afresh = task.afresh
        self.state = "starting"
        # for tests and status: the applied offset and replid after each batch
        self.position = StreamPosition()
        # high availability (task.ha): the task's lease, held or waited for (ha.py)
        self.lease = LeaseHolder(
            task, self.key, self._target_link, self.stop_event, io_timeout, self._standing_by
        )
        # the source's and the target's stream generations (set by each session)
        self.stream_compat: StreamCompat | None = None

    # ------------------------------------------------------------------ lifecycle

    def stop(self) -> None:
        self.stop_event.set()

    @property
    def stopping(self) -> bool:
        return self.stop_event.is_set()

    def rewriter(self, guard_checkpoint: bool) -> TargetRewriter:
        """The stream's rewrite rules for this session (target_rewrite.py): own keys left
        out, expire_grace, stream commands for the target's generation (stream_compat.py),
        and (`guard_checkpoint`) the checkpoint kept in db 0."""
        return TargetRewriter(
            self.key.encode() if guard_checkpoint else None,
            round(self.task.expire_grace * 1000),
            self.stream_compat,
        )

    @property
    def fence(self) -> Fence | None:
        return self.lease.fence

    def context(self) -> StageContext:
        """What the stages of a session get from the task (stage.py)."""
        return StageContext(
            self.task,
            self.store,
            self.filter,
            self.counters,
            self.position,
            lambda guard_checkpoint: self.rewriter(guard_checkpoint),
            lambda: self.stopping,
            lambda: self.lease.fence,
            lambda: self.guard.evicted,
        )

    def _target_link(self) -> TargetLink:
        return TargetLink(self.task.target, self.tls, self.io_timeout, 1)

    def _standing_by(self) -> None:
        self.state = "standby"

    def run(self) -> int:
        """Sessions with backoff until stopped (0) or a fatal error (1). With `ha`, only
        while holding the task's lease (standby until it can be taken)."""
        try:
            return self._run()
        finally:
            self.lease.drop(release=True)

    def _run(self) -> int:
        delay = self.task.reconnect_min
        while not self.stopping:
            started = time.monotonic()
            try:
                if self.task.ha and self.lease.fence is None and not self.lease.hold():
                    break  # stopped while standing by
                self.session()
            except LeaseLost as exc:
                log.warning("task %s: %s; standing by", self.task.name, exc)
                self.lease.drop(release=False)
                continue
            except (RedisError, OSError, EOFError, ReplwatchError) as exc:
                fatal = self._fatal_message(exc)
                if fatal is not None:
                    log.error("task %s failed: %s", self.task.name, fatal)
                    self._record_end("failed", fatal)
                    return 1
                if self.stopping:
                    break
                if self._retry_wait(exc, delay):
                    break
                if time.monotonic() - started > 30:
                    delay = self.task.reconnect_min
                else:
                    delay = min(self.task.reconnect_max, delay * 2)
                continue
            if not self.stopping:
                delay = self.task.reconnect_min
        self._record_end("stopped", None)
        return 0

    def _fatal_message(self, exc: BaseException) -> str | None:
        """The line the task stops with when retrying cannot fix `exc`; None: retry.

        The target refusing a write as out of memory or as a read-only replica stops the
        task (every retry would flush the target again and make the source fork again for
        a new snapshot: issue 17), with a message from guard.stop_message; so does any other
        refusal of the data (TargetRejected) and a FatalTaskError."""
        kind = refusal_kind(str(exc))
        if kind is not None:
            loader = self._loader
            keys = None
            if self.state == "full_sync":
                keys = (0, 0) if loader is None else (loader.keys_loaded, loader.keys_total)
            return self.guard.stop_message(
                kind,
                self.tls,
                self.io_timeout,
                self.fence,
                keys,
                flush_copy=keys is not None and self._flushed,
            )
        if isinstance(exc, FatalTaskError | TargetRejected):
            return str(exc)
        return None

    def _retry_wait(self, exc: Exception, delay: float) -> bool:
        """Record the error, wait `delay`; True when stopped meanwhile."""
        log.warning("task %s: session ended: %s; retrying in %.1fs", self.task.name, exc, delay)
        self._record_error(str(exc))
        return self.stop_event.wait(delay)

    def _side_conn(self) -> TargetLink | None:
        """A connection for a status write; None when the target is unreachable, or when an
        HA task does not hold its lease (the holder's record is not ours to write)."""
        if self.task.ha and self.fence is None:
            return None
        try:
            return open_target(self.task.target, self.tls, self.io_timeout, 1, self.fence)
        except (RedisError, OSError):
            return None

    def _record_error(self, message: str) -> None:
        """last_error into the checkpoint (when the target takes the write) and into the
        local report (always)."""
        target = self._side_conn()
        if target is not None:
            try:
                self.store.record_error(target, message)
            except (RedisError, OSError):
                pass
            finally:
                target.close()
        self.reporter.write(self.state, now_ms(), message, self.guard.resync_reason)

    def _record_end(self, state: str, error: str | None) -> None:
        """The end state into the checkpoint (when the target takes the write; a failure
        with what the session learned: a memory shortfall, why it did a full resync) and
        into the local report (always)."""
        self.state = state
        guard = self.guard
        target = self._side_conn()
        if target is not None:
            try:
                self.store.record_end(
                    target,
                    state,
                    error,
                    guard.shortfall,
                    guard.resync_reason,
                    guard.copy_incomplete,
                )
            except (RedisError, OSError):
                pass
            finally:
                target.close()
        self.reporter.write(state, now_ms(), error, guard.resync_reason, guard.shortfall)

    # ------------------------------------------------------------------ one session

    def session(self) -> None:
        """One session. Before PSYNC (which makes the source fork when it answers with a
        full sync) the target and the source are checked (guard.py): a target that cannot
        take the data stops the task without the source being asked for a snapshot."""
        self.counters.sessions += 1
        self.state, self._loader, self._flushed = "starting", None, False
        self.guard.new_session()
        target = open_target(
            self.task.target,
            self.tls,
            self.io_timeout,
            MAX_IN_FLIGHT,
            self.fence,
            client_name=f"{CLIENT_NAME}:{self.task.name}",
        )
        source: SourceLink | None = None
        try:
            self.guard.check_target(target)  # a replica, a Sentinel: the source is not asked
            checkpoint = self._claim_target(target)
            self.guard.check_copy(target, checkpoint)  # evicted keys: no copy to continue
            source = SourceLink(
                self.locate_source(),
                self.tls,
                self.io_timeout,
                client_name=f"{CLIENT_NAME}:{self.task.name}",  # the monitor names it by it
            )
            source.greet()
            source.read_facts()
            source.announce()
            self.stream_compat = _stream_compat(source.server, target.info)
            afresh = self._afresh
            resume = checkpoint is not None and checkpoint.resumable and not afresh
            loads = not self._skips_snapshot(checkpoint)
            flushes = self._plan(checkpoint) != "overwrite"
            if not resume and loads:
                self._refuse_foreign_keys(target, checkpoint)
            self.guard.check_memory(source, checkpoint, flushes, not resume and loads, afresh)
            if resume:
                assert checkpoint is not None
                reply = source.psync(checkpoint.replid, checkpoint.offset)
            else:
                reply = source.psync(None, None)
            self._afresh = False  # afresh applies to the first session of a start only
            if isinstance(reply, FullResync):
                reason = self._full_sync_reason(source, checkpoint, reply, resume, afresh)
                if resume and loads:
                    # the target holds a good copy: one fork was unavoidable, the copy stays
                    # when the new one would not fit
                    self.guard.check_memory(source, checkpoint, flushes, True, True)
                self.full_sync(source, target, checkpoint, reply, reason)
                offset, replid = reply.offset, reply.replid
            else:
                if not resume or checkpoint is None or checkpoint.offset is None:
                    raise ProtocolFailure(
                        f"{source.endpoint.label} answered +CONTINUE to a PSYNC that asked "
                        "for a full sync"
                    )
                assert isinstance(reply, Continue)
                replid = reply.replid or checkpoint.replid or ""
                offset = checkpoint.offset
                log.info("task %s: continuing %s after offset %d", self.task.name, replid, offset)
            self.incremental(source, target, checkpoint, replid, offset)
        finally:
            if source is not None:
                source.close()
            target.close()

    def _claim_target(self, target: TargetLink) -> Checkpoint | None:
        """The checkpoint, read once no earlier session of this task can write any more.

        A session cut off from the target leaves the batches it sent in the network and in
        the send queue of its closed socket; TCP delivers them when the link heals, maybe
        after a new session read the checkpoint, and they would be applied twice (and move
        the checkpoint back). So every other connection of the task on the target (its
        client name) is closed first: what it has not executed then never is."""
        closed = target.close_others_named()  # a cluster target: on every master
        if closed is None:
            log.warning(
                "task %s: target %s refuses CLIENT LIST or CLIENT KILL: a batch of an "
                "earlier session that was cut off from it could still arrive after this "
                "session resumed, and be applied twice (allow both to the task's user)",
                self.task.name,
                self.task.target.label,
            )
        elif closed:
            log.info("task %s: closed %d connection(s) of earlier sessions", self.task.name, closed)
        return self.store.read(target)

    # ------------------------------------------------------------------ full sync

    def _plan(self, checkpoint: Checkpoint | None) -> Plan:
        """What a full sync does to the target first (preflight.snapshot_plan): overwrite
        (existing_keys: overwrite never deletes; a pair's target holds its own live data,
        and a FLUSHALL would be copied back to the other side), flush (the target holds this
        task's copy: replaced whole, so keys deleted on the source meanwhile go too), or
        if_foreign (a first full sync: existing_keys decides)."""
        ours_before = checkpoint is not None and checkpoint.full_resyncs > 0
        return snapshot_plan(self.task.existing_keys, self.task.pair is not None, ours_before)

    def _skips_snapshot(self, checkpoint: Checkpoint | None) -> bool:
        """snapshot: skip holds for the first full sync only, until it completes."""
        resyncs = checkpoint.full_resyncs if checkpoint is not None else 0
        return self.task.snapshot == "skip" and resyncs == 0

    def _refuse_foreign_keys(self, target: TargetLink, checkpoint: Checkpoint | None) -> None:
        """Before PSYNC: a first full sync into a target holding keys under existing_keys:
        refuse stops the task without the source forking for a snapshot that would not be
        loaded (and again at every start the supervisor retries)."""
        if self._plan(checkpoint) != "if_foreign" or self.task.existing_keys != "refuse":
            return
        foreign = target.keys_outside(OWN_PREFIX)
        if foreign:
            raise FatalTaskError(existing_keys_refused(self.task, foreign))

    def _full_sync_reason(
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

    def _prepare_target(self, target: TargetLink, checkpoint: Checkpoint | None) -> bool:
        """Make the target ready for a snapshot (_plan); True when keys may already exist
        on it (overwrite), so plain-command writes must delete a key first."""
        plan = self._plan(checkpoint)
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

    def full_sync(
        self,
        source: SourceLink,
        target: TargetLink,
        checkpoint: Checkpoint | None,
        reply: FullResync,
        reason: str | None = None,
    ) -> None:
        """Load the snapshot into the target (snapshot_load.py). `reason`: why this full
        sync happens (_full_sync_reason), recorded in the checkpoint."""
        task = self.task
        self.state = "full_sync"
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
        skip = self._skips_snapshot(checkpoint)
        replace = False if skip else self._prepare_target(target, checkpoint)
        self._flushed = not skip and not replace
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
            read_to_end(payload, lambda: self.stopping)
            self.store.snapshot_skipped(target, reply.replid, reply.offset, payload.loaded)
            self.counters.full_syncs += 1
            source.ack(reply.offset)  # a diskless source waits for it (see below)
            return
        caps = TargetCaps.of(restore_target_from_info(target.info))
        loader = SnapshotLoader(self.context(), target, caps, replace)
        self._loader = loader
        source.settimeout(self.io_timeout)
        load_snapshot(self.context(), loader, payload, source.endpoint.label)
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
        self.counters.full_syncs += 1
        self.counters.keys_loaded += loader.keys_loaded
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
            if self.stopping:
                raise RedisError("stopped during the full sync", reason="stopped")
            if time.monotonic() - last >= KEEPALIVE_RECORD_EVERY:
                last = time.monotonic()
                self.store.touch(target)

        return alive

    # ------------------------------------------------------------------ incremental

    def incremental(
        self,
        source: SourceLink,
        target: TargetLink,
        checkpoint: Checkpoint | None,
        replid: str,
        offset: int,
    ) -> None:
        """The stream after `offset` (stream_apply.py; a Cluster target: cluster_stream.py)
        until the session ends (stream_follow.py)."""
        self.state = "incremental"
        fresh = self.store.read(target)  # (in the checkpoint's db)
        self.store.incremental_begins(target)
        if checkpoint is not None and fresh is not None and fresh.db is not None:
            # a continued stream goes on in the database it had selected at that offset
            target.select(fresh.db)
        stream: StreamApplier | ClusterStreamApplier
        if isinstance(target, ClusterTargetLink):  # per-slot batches (cluster_stream.py)
            stream = ClusterStreamApplier(self.context(), target, source, replid, offset)
        else:
            stream = StreamApplier(self.context(), target, source, replid, offset)
        stream.full_sync_started_at = fresh.full_sync_started_at if fresh else None
        stream.full_sync_finished_at = fresh.full_sync_finished_at if fresh else None
        stream.full_resyncs = fresh.full_resyncs if fresh else 0
        if fresh is not None and fresh.source_db is not None:
            stream.source_db = fresh.source_db  # (filtered: the source's db at that offset)
        if fresh is not None and fresh.replid != replid:
            # +CONTINUE with a new replid (the source switched streams after a failover):
            # the same offsets, a new name
            stream.flush(force=True)
        follow_stream(
            self.task.name,
            self.task.source.label,
            self.task.source_timeout,
            source,
            target,
            stream,
            lambda: self.stopping,
            lambda: self.lease.lost,
            lambda: self.guard.check_evictions(target),
        )


def _stream_compat(
    source_server: Mapping[str, str], target_server: Mapping[str, str]
) -> StreamCompat | None:
    """How stream commands differ between the source's generation and the target's (INFO
    server of each); None when the source's version is unknown (an ACL refused INFO): the
    stream then goes as a native replica of the target's version would take it."""
    try:
        source = TargetCaps.of(restore_target_from_info(source_server))
        target = TargetCaps.of(restore_target_from_info(target_server))
    except ValueError:
        return None
    return StreamCompat.between(source, target)
