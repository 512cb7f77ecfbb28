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

import contextlib
import logging
import os
import socket
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import hiredis

from replwatch.config import SyncTask, TLSConfig, tls_over
from replwatch.errors import ProtocolFailure, RedisError, ReplwatchError, TimeoutFailure
from replwatch.observe.connection import READER_ERRORS, encode_command
from replwatch.sync.checkpoint import (
    CHECKPOINT_DB,
    SCHEMA_VERSION,
    Checkpoint,
    checkpoint_key,
)
from replwatch.sync.cluster_stream import ClusterStreamApplier
from replwatch.sync.cluster_target import ClusterTargetLink, open_target
from replwatch.sync.commands import SET_COMMAND as _SET
from replwatch.sync.commands import (
    StreamGap,
    TargetCaps,
    describe_stream_gaps,
    key_writes,
    plain_commands,
    restore_command,
)
from replwatch.sync.dump import restore_target_from_info
from replwatch.sync.expiry import (
    LAST_ARGUMENT_FORMS,
    PEXPIRE_FORMS,
    PX_UNITS,
    later_last_argument,
    with_last_argument,
)
from replwatch.sync.fatal import FatalTaskError
from replwatch.sync.filters import SyncFilter, Verdict
from replwatch.sync.guard import SessionGuard
from replwatch.sync.lease import (
    ACQUIRE_SCRIPT,
    RELEASE_SCRIPT,
    Fence,
    LeaseKeeper,
    LeaseLost,
    new_holder_id,
    parse_acquire,
)
from replwatch.sync.own_keys import OWN_PREFIX
from replwatch.sync.preflight import (
    MemoryShortfall,
    Plan,
    ServerFacts,
    readonly_message,
    refusal_kind,
    snapshot_plan,
)
from replwatch.sync.rdb import (
    FunctionEntry,
    KeyEntry,
    RdbEnd,
    RdbError,
    RdbHeader,
    RdbModuleError,
    ResizeDb,
    parse_rdb,
)
from replwatch.sync.reader import (
    Continue,
    FullResync,
    RdbPayload,
    SourceLink,
    check_aligned,
)
from replwatch.sync.resync_reason import full_resync_reason
from replwatch.sync.sources import Locator, source_locator
from replwatch.sync.stream_compat import StreamCompat
from replwatch.sync.target_rewrite import Rewrite, TargetRewriter
from replwatch.sync.task_report import TaskReporter
from replwatch.sync.writer import (
    CLIENT_NAME,
    OK_REPLY,
    QUEUED_REPLY,
    Batch,
    TargetLink,
    TargetRejected,
    now_ms,
)

log = logging.getLogger("replwatch.sync")

IO_TIMEOUT = 10.0  # connect and reply timeout for both sides
ACK_EVERY = 1.0
# a stream that brings no whole command for source_timeout and less than this of an unfinished
# one is stuck (a big value on a working link grows faster than 64 KiB a source_timeout)
TRICKLE_BYTES = 64 * 1024
PROGRESS_EVERY = 1.0
# how often the stream checks that the target evicted no key (INFO stats, when it may evict)
EVICTION_CHECK_EVERY = 5.0
MAX_IN_FLIGHT = 8
# collections with more elements are read from the snapshot chunk by chunk as they are
# written (plain commands), never held whole: memory stays flat whatever the biggest key
STREAM_ELEMENTS_OVER = 20_000
_SPECIAL = frozenset((b"MULTI", b"EXEC", b"SELECT", b"PING", b"REPLCONF"))
_COLLECTIONS = frozenset(("list", "set", "zset", "hash", "stream"))
# heads of encoded commands that answer +OK: `$3\r\nSET\r\n`, `$7\r\nRESTORE\r\n`
_OK_COMMAND_HEADS = (b"$3\r\nSET\r\n", b"$7\r\nRESTORE\r\n")
_SELECT = b"SELECT"
MIXED_KEYS_WARN_EVERY = 60.0
# while the source prepares a snapshot: the checkpoint's updated_at at most this often
KEEPALIVE_RECORD_EVERY = 5.0


# a pair task's checkpoint-only write, kept out of the replication stream (written to the AOF
# only); redis.replicate_commands() is needed before set_repl on Redis < 7 and a no-op after
_UNREPLICATED_HSET = (
    "if redis.replicate_commands then redis.replicate_commands() end "
    "redis.set_repl(redis.REPL_AOF) "
    "redis.call('HSET', KEYS[1], unpack(ARGV)) "
    "return 1"
)


def existing_keys_refused(task: SyncTask, foreign: int) -> str:
    """Why a first full sync into a target holding `foreign` keys stops (existing_keys:
    refuse), and what to set instead."""
    return (
        f"target {task.target.label} already holds {foreign} keys; a full sync would mix "
        f"them with the source's: set existing_keys: flush (delete them first) or overwrite "
        f"(keep keys the source does not have) on task {task.name}"
    )


@dataclass
class TaskCounters:
    """What this process did (the checkpoint holds the totals across restarts)."""

    sessions: int = 0
    full_syncs: int = 0
    keys_loaded: int = 0
    commands_applied: int = 0
    batches: int = 0
    command_errors: int = 0
    transactions_dropped: int = 0


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
        self._loader: _SnapshotLoader | None = None  # the session's snapshot load
        self._flushed = False  # the session's full sync flushed the target (or found it empty)
        # where the source is at each (re)connect: its URL, or the master the Sentinels (or
        # the cluster, for one shard) name now (replwatch/sync/sources.py)
        self.locate_source = locate_source or source_locator(task.source, self.tls, io_timeout)
        self.stop_event = stop or threading.Event()
        self.io_timeout = io_timeout
        self.counters = TaskCounters()
        self.key = checkpoint_key(task.name)
        self.pair_key = checkpoint_key(task.pair).encode() if task.pair else None
        # None: nothing to filter or map (the stream goes the raw fast path)
        self.filter = SyncFilter.of(task)
        self._afresh = task.afresh
        self._host = socket.gethostname()
        self.state = "starting"
        # for tests and status: the applied offset and replid after each batch
        self.replid: str | None = None
        self.offset: int | None = None
        # high availability (task.ha): this process's holder id, and the lease while held
        self.holder = new_holder_id()
        self.fence: Fence | None = None
        self._keeper: LeaseKeeper | None = None
        self.leases_taken = 0
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

    def run(self) -> int:
        """Sessions with backoff until stopped (0) or a fatal error (1). With `ha`, only
        while holding the task's lease (standby until it can be taken)."""
        try:
            return self._run()
        finally:
            self._drop_lease(release=True)

    def _run(self) -> int:
        delay = self.task.reconnect_min
        while not self.stopping:
            started = time.monotonic()
            try:
                if self.task.ha and self.fence is None and not self._take_lease():
                    break  # stopped while standing by
                self.session()
            except LeaseLost as exc:
                log.warning("task %s: %s; standing by", self.task.name, exc)
                self._drop_lease(release=False)
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

    # ------------------------------------------------------------------ HA lease

    def _take_lease(self) -> bool:
        """Wait until this process holds the task's lease (True), or stop() (False). While
        another holder has it, the task stands by and tries again as its lease runs out."""
        task = self.task
        announced = False
        while not self.stopping:
            try:
                link = TargetLink(task.target, self.tls, self.io_timeout, 1)
                try:
                    link.select(CHECKPOINT_DB)
                    got = parse_acquire(
                        link.call(
                            "EVAL", ACQUIRE_SCRIPT, 1, self.key, self.holder, int(task.lease * 1000)
                        )
                    )
                finally:
                    link.close()
            except FatalTaskError:
                raise  # not a Redis server at all (its PING answer)
            except (RedisError, OSError) as exc:
                if refusal_kind(str(exc)) == "readonly":  # a replica: waiting cannot fix it
                    message = readonly_message(task.target.label, ServerFacts())
                    raise FatalTaskError(message) from None
                log.warning("task %s: cannot reach the lease: %s", task.name, exc)
                if self.stop_event.wait(min(task.lease / 3, task.reconnect_max)):
                    return False
                continue
            if got.acquired:
                self.fence = Fence(self.key, got.token, self.holder, got.until_ms)
                self._keeper = LeaseKeeper(
                    self._renew_link, self.fence, task.lease, self.io_timeout
                )
                self._keeper.start()
                self.leases_taken += 1
                log.info(
                    "task %s: holding the lease (token %d) as %s",
                    task.name,
                    got.token,
                    self.holder,
                )
                return True
            if not announced:
                log.info(
                    "task %s: standing by: %s holds the lease (%.1fs left)",
                    task.name,
                    got.holder,
                    got.remaining,
                )
                announced = True
            self.state = "standby"
            wait = min(max(got.remaining, 0.05), task.lease / 3)
            if self.stop_event.wait(wait):
                return False
        return False

    def _renew_link(self) -> TargetLink:
        """The lease keeper's connection: the target, in the checkpoint's db."""
        link = TargetLink(self.task.target, self.tls, self.io_timeout, 1)
        link.select(CHECKPOINT_DB)
        return link

    def _drop_lease(self, release: bool) -> None:
        """Stop renewing; with `release`, end the lease now (a clean stop: another daemon
        takes over at once)."""
        fence, keeper = self.fence, self._keeper
        self.fence, self._keeper = None, None
        if keeper is not None:
            keeper.stop()
        if fence is None or not release:
            return
        try:
            link = TargetLink(self.task.target, self.tls, self.io_timeout, 1)
        except (RedisError, OSError):
            return
        try:
            link.select(CHECKPOINT_DB)
            link.call("EVAL", RELEASE_SCRIPT, 1, self.key, fence.holder, fence.token)
        except (RedisError, OSError):
            pass
        finally:
            link.close()

    @property
    def lease_lost(self) -> bool:
        return self._keeper is not None and self._keeper.lost.is_set()

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
                target.select(CHECKPOINT_DB)
                target.write("HSET", self.key, "last_error", message[:500], "updated_at", now_ms())
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
                # a failure is recorded even before the task ever wrote (e.g. a refused target)
                target.select(CHECKPOINT_DB)
                if error is not None or target.call("EXISTS", self.key):
                    fields: list[Any] = ["state", state, "updated_at", now_ms()]
                    if error is not None:
                        fields += ["last_error", error[:500], *self._identity()]
                    if guard.shortfall is not None:
                        fields += guard.shortfall.flat()
                    if guard.resync_reason is not None:
                        fields += ["full_resync_reason", guard.resync_reason]
                    target.write("HSET", self.key, *fields)
                    if guard.copy_incomplete:  # the target evicted keys: full sync next
                        target.write("HDEL", self.key, "full_sync_finished_at")
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
        return target.read_checkpoint(self.task.name)

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
        """Load the snapshot into the target. `reason`: why this full sync happens
        (_full_sync_reason), recorded in the checkpoint."""
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
        target.select(CHECKPOINT_DB)
        target.write("HDEL", self.key, "full_sync_finished_at", "full_resync_reason")
        if reason is not None:
            why = ["full_resync_reason", reason]
            if self.guard.resync_reason is not None:  # unexpected: the task asked to continue
                why += ["last_error", f"full resync: {reason}"[:500]]
            target.write("HSET", self.key, *why)
        target.write(
            "HSET",
            self.key,
            *self._identity(),
            "state",
            "full_sync",
            "replid",
            reply.replid,
            "offset",
            reply.offset,
            "full_sync_started_at",
            started_at,
            "full_resyncs",
            resyncs - 1 if skip else resyncs,
            "rdb_bytes_loaded",
            0,
            "keys_loaded",
            0,
            "keys_total",
            0,
            "updated_at",
            started_at,
        )
        payload = source.payload(self._keepalive(target))
        target.write("HSET", self.key, "rdb_bytes_total", payload.length or 0)
        if skip:
            self._skip_snapshot(payload, target, reply)
            source.ack(reply.offset)  # a diskless source waits for it (see below)
            return
        caps = TargetCaps.of(restore_target_from_info(target.info))
        loader = _SnapshotLoader(self, target, caps, replace)
        self._loader = loader
        source.settimeout(self.io_timeout)
        events = parse_rdb(
            payload,
            raw_limit=task.big_key_bytes,
            on_module="skip" if task.on_module_key == "skip" else "error",
            keep_string_raw=False,  # strings are written with SET
            skip_decode=loader.restorable,  # values that go by RESTORE are not decoded
            stream_over=STREAM_ELEMENTS_OVER,  # big collections are read while written
            string_sink=loader.string_key,  # plain strings straight to SET bytes
        )
        loader.payload = payload
        add_key = loader.key
        seen = 0
        try:
            for event in events:
                if type(event) is KeyEntry:
                    add_key(event)
                    seen += 1
                    if seen & 1023:
                        continue
                elif isinstance(event, ResizeDb):
                    loader.keys_total += event.db_size
                elif isinstance(event, RdbHeader):
                    loader.source_valkey = event.valkey
                elif isinstance(event, FunctionEntry):
                    loader.function(event.code)
                elif isinstance(event, RdbEnd):
                    break
                loader.tick()  # every 1024 keys, and on other events
        except RdbModuleError as exc:
            raise FatalTaskError(
                f"{exc} (task {task.name}: set on_module_key: skip to leave such keys out)"
            ) from None
        except RdbError as exc:  # a corrupt or cut snapshot: retried like a lost connection
            raise ProtocolFailure(f"bad snapshot from {source.endpoint.label}: {exc}") from None
        payload.finish()
        loader.flush()
        target.drain()
        self.guard.check_evictions(target)  # a copy that lost keys is not one
        finished = now_ms()
        target.select(CHECKPOINT_DB)
        target.write(
            "HSET",
            self.key,
            "state",
            "incremental",
            "replid",
            reply.replid,
            "offset",
            reply.offset,
            "full_sync_finished_at",
            max(finished, started_at),
            "keys_loaded",
            loader.keys_loaded,
            "keys_total",
            max(loader.keys_total, loader.keys_loaded),
            "rdb_bytes_loaded",
            payload.loaded,
            "skipped_keys",
            loader.skipped,
            "own_keys_skipped",
            loader.own_keys_skipped,
            *(["evicted_keys", self.guard.evicted] if self.guard.evicted is not None else []),
            "stream_pending_dropped",
            loader.stream_pending_dropped,
            "updated_at",
            finished,
        )
        target.write("HDEL", self.key, *MemoryShortfall.FIELDS)  # it fitted
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
                target.write("HSET", self.key, "updated_at", now_ms())

        return alive

    def _skip_snapshot(self, payload: RdbPayload, target: TargetLink, reply: FullResync) -> None:
        """snapshot: skip (a first full sync only): read the snapshot to its end, write
        nothing of it; the stream after it is applied as usual."""
        log.info("task %s: snapshot: skip: the snapshot is read, not loaded", self.task.name)
        while True:
            if self.stopping:
                raise RedisError("stopped during the full sync", reason="stopped")
            try:
                payload.read_some(1 << 20)
            except EOFError:
                break
        payload.finish()
        finished = now_ms()
        target.select(CHECKPOINT_DB)
        target.write(
            "HSET",
            self.key,
            "state",
            "incremental",
            "replid",
            reply.replid,
            "offset",
            reply.offset,
            "full_sync_finished_at",
            finished,
            "rdb_bytes_loaded",
            payload.loaded,
            "full_resyncs",
            1,
            "snapshot_skipped",
            1,
            "updated_at",
            finished,
        )
        self.counters.full_syncs += 1

    def _identity(self) -> list[Any]:
        return [
            "version",
            SCHEMA_VERSION,
            "task",
            self.task.name,
            "source",
            self.task.source.label,
            "pid",
            os.getpid(),
            "host",
            self._host,
            "expire_grace_ms",
            round(self.task.expire_grace * 1000),
        ]

    # ------------------------------------------------------------------ incremental

    def incremental(
        self,
        source: SourceLink,
        target: TargetLink,
        checkpoint: Checkpoint | None,
        replid: str,
        offset: int,
    ) -> None:
        self.state = "incremental"
        fresh = target.read_checkpoint(self.task.name)  # (in the checkpoint's db)
        target.write("HSET", self.key, "state", "incremental", "updated_at", now_ms())
        if checkpoint is not None and fresh is not None and fresh.db is not None:
            # a continued stream goes on in the database it had selected at that offset
            target.select(fresh.db)
        stream: _StreamApplier | ClusterStreamApplier
        if isinstance(target, ClusterTargetLink):  # per-slot batches (cluster_stream.py)
            stream = ClusterStreamApplier(self, target, source, replid, offset)
        else:
            stream = _StreamApplier(self, target, source, replid, offset)
        stream.full_sync_started_at = fresh.full_sync_started_at if fresh else None
        stream.full_sync_finished_at = fresh.full_sync_finished_at if fresh else None
        stream.full_resyncs = fresh.full_resyncs if fresh else 0
        if fresh is not None and fresh.source_db is not None:
            stream.source_db = fresh.source_db  # (filtered: the source's db at that offset)
        if fresh is not None and fresh.replid != replid:
            # +CONTINUE with a new replid (the source switched streams after a failover):
            # the same offsets, a new name
            stream.flush(force=True)
        last_ack = 0.0
        last_data = time.monotonic()
        last_eviction_check = last_data
        silence = self.task.source_timeout
        # no whole command since (None: the last round took one), and the bytes held then
        unfinished_since: float | None = None
        unfinished_bytes = 0
        source.settimeout(0.05)
        while not self.stopping:
            if self.lease_lost:
                raise LeaseLost(f"lease of task {self.task.name} lost (renewal refused)")
            if time.monotonic() - last_eviction_check >= EVICTION_CHECK_EVERY:
                self.guard.check_evictions(target)  # (a no-op for a target that cannot evict)
                last_eviction_check = time.monotonic()
            try:
                # bytes already buffered (read together with +CONTINUE or the snapshot's
                # end) are taken first: waiting for more could wait for the next ping
                if not source.conn.available():
                    source.receive()
                last_data = time.monotonic()
            except TimeoutFailure:
                if time.monotonic() - last_data > silence:
                    # a master pings its replicas every repl-ping-replica-period (10 s): a
                    # source this quiet is paused or cut off without the connection closing
                    raise TimeoutFailure(
                        f"no data from the source {self.task.source.label} for "
                        f"{silence:g}s (source_timeout)"
                    ) from None
                stream.flush()
                target.poll_replies()
                if time.monotonic() - last_ack >= ACK_EVERY:
                    source.ack(stream.applied)
                    last_ack = time.monotonic()
                continue
            source.feed_buffered()
            while stream.consume(source):
                # REPLCONF GETACK: everything before it applied, then say where we are
                stream.flush(force=stream.pending_offset > stream.applied)
                target.drain()
                source.ack(stream.applied)
                last_ack = time.monotonic()
            stream.end_round()
            if source.raw_pos:  # (feed_buffered set it to 0: this round took a command)
                unfinished_since = None
            elif unfinished_since is None:
                unfinished_since, unfinished_bytes = time.monotonic(), len(source.raw)
            elif time.monotonic() - unfinished_since > silence:
                grew = len(source.raw) - unfinished_bytes
                if grew < TRICKLE_BYTES:
                    # bytes keep coming (never silent), a command never completes: a source
                    # trickling one command is as stuck as a silent one (a real master's
                    # pings are whole commands every 10 s)
                    raise TimeoutFailure(
                        f"no whole command from the source {self.task.source.label} for "
                        f"{silence:g}s (source_timeout), only {grew} bytes of an unfinished one"
                    )
                unfinished_since, unfinished_bytes = time.monotonic(), len(source.raw)
            if not source.conn.available():
                stream.flush()
            target.poll_replies()
            if time.monotonic() - last_ack >= ACK_EVERY:
                source.ack(stream.applied)
                last_ack = time.monotonic()
        stream.flush()
        target.drain()
        source.ack(stream.applied)


class _SnapshotLoader:
    """Applies snapshot keys in pipelined batches (no MULTI: a half-loaded snapshot is
    never resumed, a restart loads it again) and reports progress into the checkpoint.
    A task of a pair wraps every batch in `MULTI … HMSET <checkpoint> … EXEC` instead, so
    the reverse task recognises the snapshot's writes in the target's stream and drops them
    like the stream batches (nothing of a full sync echoes back)."""

    def __init__(
        self, runner: SyncTaskRunner, target: TargetLink, caps: TargetCaps, replace: bool
    ) -> None:
        self.runner = runner
        self.target = target
        self.caps = caps
        self.replace = replace
        self.source_valkey = False
        self.filter = runner.filter
        # the source db of the keys being written (-1 with a filter: the first key selects
        # its mapped db) and the target db selected for them
        self.db = target.db if self.filter is None else -1
        self.target_db = target.db
        self.filtered: dict[str, int] = {}  # keys left out, by reason, not yet recorded
        self.strings_left_out = 0
        self.parts: list[bytes] = []
        self.expect = 0
        self.size = 0
        self.keys_in_batch = 0
        self.keys_loaded = 0
        self.keys_total = 0
        self.skipped = 0
        self._last_progress = time.monotonic()
        self.use_restore = runner.task.write_mode == "auto"
        self.all_ok = True  # the batch being built gets only +OK replies
        self._restorable: dict[int, bool] = {}
        self._versions: dict[int, int] = {}  # RDB version stamped on RESTORE, by type
        self.keys_sent = 0  # in batches sent (keys_loaded: confirmed by the target)
        self.payload: RdbPayload | None = None  # the snapshot being read (progress)
        self.batch_size = runner.task.batch_size
        self.batch_bytes = runner.task.batch_bytes
        self.in_multi = runner.task.pair is not None
        self.grace_ms = round(runner.task.expire_grace * 1000)
        self.own_keys_skipped = 0  # keys under __replwatch: (own_keys.py): never copied
        self.stream_pending_dropped = 0  # pending entries a target could not take (logged)

    def string_key(self, db: int, key: bytes, value: bytes) -> None:
        """A plain string without TTL, from the parser's loop (no event object)."""
        if key.startswith(OWN_PREFIX):
            self.own_keys_skipped += 1
            return
        if self.filter is not None and self._filtered_out(db, key):
            self.strings_left_out += 1
            if not self.strings_left_out & 1023:
                self.tick()  # (as when keys are written: stop requests and progress)
            return
        if db != self.db:
            self._select(db)
        data = _SET % (len(key), key, len(value), value)
        self.parts.append(data)
        self.expect += 1
        self.size += len(data)
        self.keys_in_batch += 1
        if self.keys_in_batch >= self.batch_size or self.size >= self.batch_bytes:
            self.flush()
            # the parser's loop does not come back to the full sync's loop for these keys
            self.tick()

    def _select(self, db: int) -> None:
        mapped = db if self.filter is None else self.filter.map_db(db)
        self.parts.append(encode_command(("SELECT", mapped)))
        self.expect += 1
        self.db = db
        self.target_db = mapped

    def _filtered_out(self, db: int, key: bytes) -> bool:
        """The task's filter leaves this key out (counted)."""
        assert self.filter is not None
        reason = self.filter.snapshot_key(db, key)
        if reason is None:
            return False
        self.filtered[reason] = self.filtered.get(reason, 0) + 1
        return True

    def _filtered_counts(self) -> None:
        """The keys left out since the last batch, added to the checkpoint's
        filtered:<reason> counters (in db 0, then back)."""
        self.parts.append(encode_command(("SELECT", CHECKPOINT_DB)))
        for reason, count in self.filtered.items():
            field = f"filtered:{reason}"
            self.parts.append(encode_command(("HINCRBY", self.runner.key, field, count)))
        self.parts.append(encode_command(("SELECT", self.target_db)))
        self.expect += 2 + len(self.filtered)
        self.filtered = {}
        self.all_ok = False

    def tick(self) -> None:
        """Now and then during the snapshot: a stop request ends the session, progress
        goes into the checkpoint (at most once per PROGRESS_EVERY)."""
        if self.runner.stopping:
            raise RedisError("stopped during the full sync", reason="stopped")
        if self.payload is not None:
            self.maybe_progress(self.payload.loaded)

    def key(self, entry: KeyEntry) -> None:
        if entry.key.startswith(OWN_PREFIX):
            self.own_keys_skipped += 1
            return
        if self.filter is not None and self._filtered_out(entry.db, entry.key):
            return
        if entry.kind == "module" and self.runner.task.on_module_key == "skip":
            self.skipped += 1
            log.warning(
                "task %s: skipped module key %r in db %d",
                self.runner.task.name,
                entry.key[:100],
                entry.db,
            )
            return
        if entry.db != self.db:
            self._select(entry.db)
        if entry.raw is None and entry.kind in _COLLECTIONS:
            self._big_key(entry)
            return
        if (
            entry.raw is not None
            and entry.kind != "string"
            and not entry.field_expiry
            and self.restorable(entry.rdb_type)
        ):
            command = restore_command(entry, self._versions[entry.rdb_type], self.grace_ms)
            self._add_key(command, 1, True)
            return
        try:
            data, replies = key_writes(
                entry,
                self.caps,
                self.source_valkey,
                self.replace,
                use_restore=self.use_restore,
                on_gaps=self._stream_gaps_of(entry.key),
                grace_ms=self.grace_ms,  # (expiry.py)
            )
        except ValueError as exc:
            raise FatalTaskError(
                f"key {entry.key[:100]!r} in db {entry.db} cannot be written to "
                f"{self.runner.task.target.label}: {exc}"
            ) from None
        self._add_key(data, replies, replies == 1 and data.startswith(_OK_COMMAND_HEADS, 4))

    def _stream_gaps_of(self, key: bytes) -> Callable[[Sequence[StreamGap]], None]:
        """What a stream written as plain commands could not carry to this target (pending
        entries with no owner, …): logged once per key, counted in stream_pending_dropped."""

        def report(gaps: Sequence[StreamGap]) -> None:
            self.stream_pending_dropped += sum(gap.pending_dropped for gap in gaps)
            log.warning("task %s: %s", self.runner.task.name, describe_stream_gaps(key, gaps))

        return report

    def _add_key(self, data: bytes, replies: int, answers_ok: bool) -> None:
        """One key's encoded writes into the batch (`answers_ok`: every reply is +OK)."""
        self.parts.append(data)
        self.expect += replies
        self.size += len(data)
        self.keys_in_batch += 1
        if not answers_ok:
            self.all_ok = False
        if self.keys_in_batch >= self.batch_size or self.size >= self.batch_bytes:
            self.flush()

    def _big_key(self, entry: KeyEntry) -> None:
        """A value over big_key_bytes: its plain commands go into the batches chunk by
        chunk as they are encoded, so memory holds the decoded value and one batch, not
        the whole key encoded (and joined) on top."""
        self.all_ok = False
        if self.replace:
            self._add_command(encode_command((b"DEL", entry.key)))
        try:
            gaps = self._stream_gaps_of(entry.key)
            for command in plain_commands(entry, self.caps, on_gaps=gaps, grace_ms=self.grace_ms):
                self._add_command(encode_command(command))
        except ValueError as exc:
            raise FatalTaskError(
                f"key {entry.key[:100]!r} in db {entry.db} cannot be written to "
                f"{self.runner.task.target.label}: {exc}"
            ) from None
        self.keys_in_batch += 1

    def _add_command(self, data: bytes) -> None:
        self.parts.append(data)
        self.expect += 1
        self.size += len(data)
        if self.size >= self.batch_bytes:
            self.flush()  # counts the keys completed before; the big key counts at its end
            self.all_ok = False

    def restorable(self, rdb_type: int) -> bool:
        """Will a value of this type go to the target by RESTORE (then the parser need
        not decode it)?"""
        known = self._restorable.get(rdb_type)
        if known is None:
            version = self.caps.restore.payload_version_for(
                rdb_type, source_valkey=self.source_valkey
            )
            known = self.use_restore and version is not None
            if version is not None:
                self._versions[rdb_type] = version
            self._restorable[rdb_type] = known
        return known

    def function(self, code: bytes) -> None:
        if self.filter is not None and not self.filter.command_allowed(b"FUNCTION"):
            self.filtered["command"] = self.filtered.get("command", 0) + 1
            return
        self.parts.append(encode_command(("FUNCTION", "LOAD", "REPLACE", code)))
        self.expect += 1
        self.all_ok = False  # FUNCTION LOAD answers with the library's name

    def flush(self) -> None:
        if self.filtered:
            self._filtered_counts()
        if not self.parts:
            return
        if self.in_multi:
            self._flush_marked()
            return
        keys = self.keys_in_batch
        self.keys_sent += keys
        payload = b"".join(self.parts)
        self.target.db = self.target_db
        prefix = OK_REPLY * self.expect if self.all_ok else None
        self.target.send(
            payload, Batch(self.expect, self._checked(keys), "snapshot", prefix=prefix)
        )
        self.parts, self.expect, self.size, self.keys_in_batch = [], 0, 0, 0
        self.all_ok = True

    def _flush_marked(self) -> None:
        """The batch as `MULTI … <keys> … HMSET <checkpoint> keys_loaded … EXEC` (a pair
        task): the checkpoint write marks the transaction as this task's. It is the last
        write, so the stream of the target is back in the checkpoint's db after it."""
        keys = self.keys_in_batch
        self.keys_sent += keys
        tail = []
        if self.db != CHECKPOINT_DB:
            tail.append(encode_command(("SELECT", CHECKPOINT_DB)))
        tail.append(encode_command(("HMSET", self.runner.key, "keys_loaded", self.keys_sent)))
        if self.db != CHECKPOINT_DB:
            tail.append(encode_command(("SELECT", self.db)))
        tail.append(encode_command(("EXEC",)))
        queued = self.expect + len(tail) - 1
        payload = b"".join([encode_command(("MULTI",)), *self.parts, *tail])
        self.target.db = self.db
        self.target.send(
            payload,
            Batch(
                1 + queued + 1,
                self._exec_checked(keys),
                "snapshot",
                prefix=OK_REPLY + QUEUED_REPLY * queued,
                tail=1,
            ),
        )
        self.parts, self.expect, self.size, self.keys_in_batch = [], 0, 0, 0
        self.all_ok = True

    def _exec_checked(self, keys: int) -> Callable[[list[Any]], None]:
        """A marked batch's replies: its last one is EXEC's (the others, when present,
        are +OK / +QUEUED or the error that aborted the transaction)."""

        def done(replies: list[Any]) -> None:
            exec_reply = replies[-1]
            if isinstance(exec_reply, list):
                failed = [r for r in exec_reply if isinstance(r, hiredis.ReplyError)]
            else:
                failed = [r for r in replies if isinstance(r, hiredis.ReplyError)] or [exec_reply]
            if failed:
                raise TargetRejected(
                    f"target {self.runner.task.target.label} refused a snapshot write: "
                    f"{str(failed[0])[:200]}"
                )
            self.keys_loaded += keys

        return done

    def _checked(self, keys: int) -> Callable[[list[Any]], None]:
        def done(replies: list[Any]) -> None:
            for reply in replies:
                if isinstance(reply, hiredis.ReplyError):
                    raise TargetRejected(
                        f"target {self.runner.task.target.label} refused a snapshot write: "
                        f"{str(reply)[:200]}"
                    )
            self.keys_loaded += keys

        return done

    def maybe_progress(self, loaded_bytes: int) -> None:
        now = time.monotonic()
        if now - self._last_progress < PROGRESS_EVERY:
            return
        self._last_progress = now
        self.flush()
        back = self.target_db
        cmds = []
        if back != CHECKPOINT_DB:
            cmds.append(encode_command(("SELECT", CHECKPOINT_DB)))
        cmds.append(
            encode_command(
                (
                    "HMSET",  # not HSET: HMSET answers +OK, so the batch takes the fast path
                    self.runner.key,
                    "keys_loaded",  # progress: sent (the final count: confirmed)
                    self.keys_sent,
                    "keys_total",
                    max(self.keys_total, self.keys_sent),
                    "rdb_bytes_loaded",
                    loaded_bytes,
                    "skipped_keys",
                    self.skipped,
                    "updated_at",
                    now_ms(),
                )
            )
        )
        if back != CHECKPOINT_DB:
            cmds.append(encode_command(("SELECT", back)))
        self.target.send(
            b"".join(cmds),
            Batch(len(cmds), self._progress_checked, "progress", prefix=OK_REPLY * len(cmds)),
        )

    def _progress_checked(self, replies: list[Any]) -> None:
        for reply in replies:
            if isinstance(reply, hiredis.ReplyError):
                raise TargetRejected(f"checkpoint write refused: {str(reply)[:200]}")


class _StreamApplier:
    """The command stream in MULTI batches with the checkpoint; source transactions are
    kept whole inside one batch. Commands are forwarded as the stream's own bytes (spans of
    SourceLink.raw, joined into runs), not encoded again."""

    def __init__(
        self,
        runner: SyncTaskRunner,
        target: TargetLink,
        source: SourceLink,
        replid: str,
        offset: int,
    ) -> None:
        self.runner = runner
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
        self.batch_size = runner.task.batch_size
        self.batch_bytes = runner.task.batch_bytes
        self.pair_key = runner.pair_key
        self.filter = runner.filter
        # with a filter: the source's selected db (self.db is the target's), commands left
        # out by reason not yet recorded, and those of the open transaction
        self.source_db = self.filter.source_db_of(self.db) if self.filter else self.db
        self.filtered: dict[str, int] = {}
        self.tx_filtered: dict[str, int] = {}
        self._mixed_warned = -MIXED_KEYS_WARN_EVERY
        # own keys left out, expiries a grace later, the checkpoint kept in db 0
        self.rewriter = runner.rewriter(guard_checkpoint=True)
        self.watched = self.rewriter.watched
        self.grace_ms = self.rewriter.grace_ms
        runner.replid, runner.offset = replid, offset

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
            verdict = self.filter.command(argv, self.source_db, self.db)
            if (verdict.keep or verdict.commands) and (
                self.rewriter.needs_look(name, len(argv)) or not verdict.keep
            ):
                rewrite = self.rewriter.rewrite_verdict(verdict, argv, self.db)
                verdict = Verdict(False, rewrite.commands, rewrite.dropped)
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
                        self.runner.task.name,
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
                self.runner.counters.transactions_dropped += 1
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
        runner = self.runner
        count = self.count
        head = [encode_command(("MULTI",))]
        tail: list[bytes] = []
        if db != CHECKPOINT_DB:
            tail.append(encode_command(("SELECT", CHECKPOINT_DB)))
        fields = self._checkpoint_fields(end, db)
        tail.append(encode_command(("HSET", runner.key, *fields)))
        tail.append(encode_command(("HINCRBY", runner.key, "applied_commands", count)))
        if self.filter is not None:
            for reason, dropped in self.filtered.items():
                tail.append(encode_command(("HINCRBY", runner.key, f"filtered:{reason}", dropped)))
            self.filtered = {}
        if db != CHECKPOINT_DB:
            tail.append(encode_command(("SELECT", db)))
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

    def _checkpoint_fields(self, end: int, db: int) -> list[Any]:
        runner = self.runner
        fields: list[Any] = [
            "state",
            "incremental",
            "replid",
            self.replid,
            "offset",
            end,
            "db",
            db,
            "updated_at",
            now_ms(),
        ]
        # the record's core, whole in every batch: a FLUSHALL/FLUSHDB from the source (applied
        # in this same transaction) must not leave a checkpoint that forgot its history
        fields += ["task", runner.task.name, "source", runner.task.source.label]
        fields += ["full_resyncs", self.full_resyncs]
        fence = runner.fence
        if fence is not None:  # a FLUSHALL in this batch must not end the lease
            fields += ["lease_holder", fence.holder, "lease_token", fence.token]
            fields += ["lease_until", fence.until_ms]
        if self.filter is not None:
            fields += ["source_db", self.source_db]  # (db: the target's, maybe mapped)
        if self.full_sync_finished_at is not None:
            fields += ["full_sync_finished_at", self.full_sync_finished_at]
        if self.full_sync_started_at is not None:
            fields += ["full_sync_started_at", self.full_sync_started_at]
        evicted = runner.guard.evicted
        if evicted is not None:  # (an allkeys-* target may evict the checkpoint itself)
            fields += ["evicted_keys", evicted]
        return fields

    def _flush_position(self, end: int, db: int) -> None:
        """A pair task's checkpoint-only write (nothing applied since the last batch: only
        the reverse task's echoes, its checkpoint writes, PINGs): written by a script that
        keeps it out of the target's replication stream (redis.set_repl), else the reverse
        task would see it, record its own position past it, and the two would write each
        other's position for ever. The target's own replicas miss it too, which is safe: an
        older checkpoint there only re-reads stream bytes that are all dropped again."""
        tail: list[bytes] = []
        if db != CHECKPOINT_DB:
            tail.append(encode_command(("SELECT", CHECKPOINT_DB)))
        fields = self._checkpoint_fields(end, db)
        tail.append(encode_command(("EVAL", _UNREPLICATED_HSET, 1, self.runner.key, *fields)))
        if db != CHECKPOINT_DB:
            tail.append(encode_command(("SELECT", db)))
        self.target.db = db
        self.sent_offset = end
        self.target.send(b"".join(tail), Batch(len(tail), self._position_done(end), "position"))

    def _position_done(self, end: int) -> Callable[[list[Any]], None]:
        def done(replies: list[Any]) -> None:
            failed = [r for r in replies if isinstance(r, hiredis.ReplyError)]
            if failed:
                raise TargetRejected(
                    f"target {self.runner.task.target.label} refused the checkpoint write of "
                    f"a pair task (it needs EVAL): {str(failed[0])[:200]}"
                )
            self.applied = end
            self.runner.offset = end

        return done

    def _done(self, end: int, count: int) -> Callable[[list[Any]], None]:
        def done(replies: list[Any]) -> None:
            exec_reply = replies[-1]
            if isinstance(exec_reply, hiredis.ReplyError) or exec_reply is None:
                first = next(
                    (r for r in replies[1:-1] if isinstance(r, hiredis.ReplyError)), exec_reply
                )
                raise TargetRejected(
                    f"target {self.runner.task.target.label} refused a batch of the stream: "
                    f"{str(first)[:200]}"
                )
            if isinstance(exec_reply, list):
                errors = [r for r in exec_reply if isinstance(r, hiredis.ReplyError)]
                if errors:
                    self.runner.counters.command_errors += len(errors)
                    log.warning(
                        "task %s: %d commands failed on the target, e.g. %s",
                        self.runner.task.name,
                        len(errors),
                        str(errors[0])[:200],
                    )
            self.applied = end
            self.runner.counters.commands_applied += count
            self.runner.counters.batches += 1
            self.runner.offset = end

        return done


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


def _db_number(argv: list[bytes]) -> int | None:
    if len(argv) < 2:
        return None
    try:
        return int(argv[1])
    except ValueError:
        return None
