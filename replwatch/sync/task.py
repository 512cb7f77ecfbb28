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
from collections.abc import Mapping
from pathlib import Path

from replwatch.config import SyncTask, TLSConfig, tls_over
from replwatch.errors import ProtocolFailure, RedisError, ReplwatchError
from replwatch.sync.checkpoint import Checkpoint
from replwatch.sync.checkpoint_store import CheckpointStore
from replwatch.sync.cluster_stream import ClusterStreamApplier
from replwatch.sync.cluster_target import ClusterTargetLink, open_target
from replwatch.sync.commands import TargetCaps
from replwatch.sync.dump import restore_target_from_info
from replwatch.sync.fatal import FatalTaskError
from replwatch.sync.filters import SyncFilter
from replwatch.sync.full_sync import FullSyncStage
from replwatch.sync.guard import SessionGuard
from replwatch.sync.ha import LeaseHolder
from replwatch.sync.lease import Fence, LeaseLost
from replwatch.sync.preflight import refusal_kind
from replwatch.sync.reader import Continue, FullResync, SourceLink
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
        self._full: FullSyncStage | None = None  # the session's full sync (full_sync.py)
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
            loader = None if self._full is None else self._full.loader
            keys = None
            if self.state == "full_sync":
                keys = (0, 0) if loader is None else (loader.keys_loaded, loader.keys_total)
            return self.guard.stop_message(
                kind,
                self.tls,
                self.io_timeout,
                self.fence,
                keys,
                flush_copy=keys is not None and self._full is not None and self._full.flushed,
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
        self.state = "starting"
        full = self._full = FullSyncStage(self.context(), self.guard, self.io_timeout)
        self.guard.new_session()
        target = open_target(
            self.task.target,
            self.tls,
            self.io_timeout,
            MAX_IN_FLIGHT,
            self.fence,
            client_name=f"{CLIENT_NAME}:{self.task.name}",
            stopping=lambda: self.stopping,
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
            loads = not full.skips_snapshot(checkpoint)
            flushes = full.plan(checkpoint) != "overwrite"
            if not resume and loads:
                full.refuse_foreign_keys(target, checkpoint)
            self.guard.check_memory(source, checkpoint, flushes, not resume and loads, afresh)
            if resume:
                assert checkpoint is not None
                reply = source.psync(checkpoint.replid, checkpoint.offset)
            else:
                reply = source.psync(None, None)
            self._afresh = False  # afresh applies to the first session of a start only
            if isinstance(reply, FullResync):
                reason = full.reason(source, checkpoint, reply, resume, afresh)
                if resume and loads:
                    # the target holds a good copy: one fork was unavoidable, the copy stays
                    # when the new one would not fit
                    self.guard.check_memory(source, checkpoint, flushes, True, True)
                self.state = "full_sync"
                full.run(source, target, checkpoint, reply, reason)
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
