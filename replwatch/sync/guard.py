"""The checks around one sync task's sessions, so a target that cannot take the data stops
the task with a clear error instead of a loop of flushes and source forks (issue 17).

The runner (task.py) calls them at fixed points of a session:

1. check_target: after connecting to the target and before the source is asked anything —
   a Sentinel, a cluster node given as a plain target, a replica (read-only, or writable:
   its master would wipe the copy) stop the task (FatalTaskError). The PING answer was
   checked when the link opened (writer.TargetLink, reader.SourceLink: WrongServer).
2. check_memory: after the source's handshake read its INFO (reader.SourceLink.read_facts),
   before PSYNC: an earlier shortfall that still holds stops the task (whatever the
   checkpoint), and when a full sync is what will happen, a copy that plainly does not fit
   the target's maxmemory does too. After a +FULLRESYNC that answered a request to
   continue, check_memory runs again before the good copy is flushed: one fork is then
   unavoidable, but the copy stays and the task stops.
3. check_evictions: a target that may evict (a maxmemory and an eviction policy) must not
   have evicted a key since the copy was whole (the checkpoint's evicted_keys, written when
   a full sync finishes; a snapshot load counts from its start): checked when a session
   continues a copy, at the end of a load and every few seconds of the stream. A copy that
   lost keys stops the task, is marked for a full sync (not resumable) and records a
   shortfall, so no restart forks the source again until maxmemory or the policy changed.
4. stop_message: the target refused a write with OOM or READONLY during the session: the
   one line the task stops with (numbers from a fresh INFO), the shortfall learned
   (recorded with the failure), and after an out-of-memory snapshot load the unusable
   half-loaded copy is flushed — only when this session had flushed the target itself
   (never keys that are not this task's: overwrite and pair tasks keep them) — so the
   target has room for the failure record and is not left full.
"""

from __future__ import annotations

import logging

from replwatch.config import SyncTask, TLSConfig
from replwatch.errors import RedisError
from replwatch.sync.checkpoint import Checkpoint
from replwatch.sync.cluster_target import ClusterTargetLink, open_target
from replwatch.sync.fatal import FatalTaskError
from replwatch.sync.lease import Fence
from replwatch.sync.preflight import (
    MemoryShortfall,
    Refusal,
    ServerFacts,
    eviction_message,
    evicts,
    free_for_copy,
    memory_problem,
    needed_after_oom,
    oom_message,
    readonly_message,
    shortfall_problem,
    target_problem,
)
from replwatch.sync.reader import SourceLink
from replwatch.sync.task_report import TaskReporter
from replwatch.sync.writer import CLIENT_NAME, TargetLink

log = logging.getLogger("replwatch.sync")


class SessionGuard:
    """The checks of one task's sessions (see the module docstring). `shortfall` and
    `resync_reason` hold what the current session learned, for the failure record."""

    def __init__(self, task: SyncTask, reporter: TaskReporter) -> None:
        self.task = task
        self.label = task.target.label
        self.reporter = reporter
        self.target = ServerFacts()
        self.source = ServerFacts()
        self.base_used: int | None = None  # target used_memory right before a snapshot load
        self.shortfall: MemoryShortfall | None = None
        self.resync_reason: str | None = None
        self.evicted: int | None = None  # the target's evicted_keys when the copy was whole
        self.copy_incomplete = False  # the target evicted keys of the copy: full sync next

    def new_session(self) -> None:
        self.target, self.source, self.base_used = ServerFacts(), ServerFacts(), None
        self.shortfall, self.resync_reason = None, None
        self.copy_incomplete = False  # (evicted: kept for the runner's life, see check_copy)

    # ------------------------------------------------------------------ before PSYNC

    def check_target(self, target: TargetLink) -> None:
        """Stop the task when the target is no master it may write to (a cluster target's
        masters come from its slot map: nothing to check)."""
        if isinstance(target, ClusterTargetLink):
            return
        self.target = target.facts()
        problem = target_problem(self.label, self.target, cluster_target=False)
        if problem is not None:
            raise FatalTaskError(problem)
        if not evicts(self.target):
            self.evicted = None
        elif self.evicted is None:  # this runner's first session: counts from now
            self.evicted = target.evicted_keys()

    def check_copy(self, target: TargetLink, checkpoint: Checkpoint | None) -> None:
        """A session that may continue the copy: the target must not have evicted keys
        since the copy was whole (the count the checkpoint recorded then, or the one this
        runner saw first; a target restarted since counts from 0 again)."""
        if self.evicted is None or checkpoint is None or not checkpoint.resumable:
            return
        recorded = checkpoint.evicted_keys
        if recorded is not None and recorded < self.evicted:
            now = target.evicted_keys()
            if now is not None and recorded <= now:
                self.evicted = recorded
        self.check_evictions(target)

    def check_evictions(self, target: TargetLink) -> None:
        """Stop the task when the target evicted keys since the copy was whole (see the
        module docstring); a no-op for a target that does not evict."""
        if self.evicted is None:
            return
        now = target.evicted_keys()
        if now is None:
            return
        if now < self.evicted:  # CONFIG RESETSTAT
            self.evicted = now
            return
        if now > self.evicted:
            facts = self.target
            self.copy_incomplete = True
            if facts.maxmemory:
                # never fits until maxmemory or the policy changes (shortfall_problem)
                needed = max(facts.maxmemory, facts.used_memory or 0) + 1
                self.shortfall = MemoryShortfall(facts.maxmemory, facts.policy or "", needed)
            raise FatalTaskError(eviction_message(self.label, facts, now - self.evicted))

    def check_memory(
        self,
        source: SourceLink,
        checkpoint: Checkpoint | None,
        flushes: bool,
        full_sync: bool,
        afresh: bool,
    ) -> None:
        """Stop the task when the copy will not fit: an earlier shortfall that still holds
        (not with `afresh`), or, when a `full_sync` is what will happen, the source's data
        against what the target has free after its flush (`flushes`)."""
        self.source = source.facts
        record = self._recorded_shortfall(checkpoint)
        if record is not None and not afresh:
            problem = shortfall_problem(self.label, self.target, record, flushes)
            if problem is not None:
                self.shortfall = record
                raise FatalTaskError(problem)
        needed = self.source.dataset
        if not full_sync or not needed or not self._estimable():
            return
        problem = memory_problem(
            self.label, self.target, needed, flushes, "the source's used_memory_dataset"
        )
        if problem is not None:
            facts = self.target
            assert facts.maxmemory is not None
            self.shortfall = MemoryShortfall(facts.maxmemory, facts.policy or "", needed)
            raise FatalTaskError(problem)

    def _estimable(self) -> bool:
        """The source's dataset says what the copy needs: no filter leaves keys out (a
        filter's share is not known; a db_map only moves them), and the target is one node
        whose facts were read (check_target)."""
        return self.task.filters is None and self.target.role is not None

    def _recorded_shortfall(self, checkpoint: Checkpoint | None) -> MemoryShortfall | None:
        """The shortfall the checkpoint records; else the local report's, when the report is
        newer than the checkpoint (the target refused to record it)."""
        if checkpoint is not None:
            record = MemoryShortfall.of(
                {
                    "oom_maxmemory": checkpoint.oom_maxmemory,
                    "oom_policy": checkpoint.oom_policy,
                    "oom_needed": checkpoint.oom_needed,
                }
            )
            if record is not None:
                return record
        report = self.reporter.read()
        if report is None or report.memory_shortfall is None:
            return None
        updated = checkpoint.updated_at if checkpoint is not None else None
        if updated is not None and report.updated_at <= updated:
            return None
        return report.memory_shortfall

    def before_load(self, target: TargetLink) -> None:
        """The target's used memory once it is ready for the snapshot (after the flush):
        what the loaded keys take is measured from it when the load runs out of memory."""
        if isinstance(target, ClusterTargetLink):
            return
        try:
            self.base_used = target.facts().used_memory
            if self.evicted is not None:  # the new copy counts from here
                self.evicted = target.evicted_keys()
        except RedisError:
            self.base_used = None

    # ------------------------------------------------------------------ a refused write

    def stop_message(
        self,
        kind: Refusal,
        tls: TLSConfig,
        timeout: float,
        fence: Fence | None,
        keys: tuple[int, int] | None,
        flush_copy: bool,
    ) -> str:
        """The line the task stops with after the target refused a write (`kind`), during
        a snapshot load (`keys`: loaded, total) or the stream (None). With `flush_copy`
        (an out-of-memory load into a target this session flushed) the half-loaded copy is
        flushed first, and every other connection of the task on the target closed before
        (what a cut session still has queued there never runs after the flush)."""
        side: TargetLink | None
        try:
            name = f"{CLIENT_NAME}:{self.task.name}"  # the session's: close_others_named
            side = open_target(self.task.target, tls, timeout, 1, fence, client_name=name)
        except (RedisError, OSError):
            side = None
        try:
            facts = self._facts(side)
            if kind == "readonly":
                return readonly_message(self.label, facts)
            if keys is None:
                return oom_message(self.label, facts, None, None)
            loaded, total = keys
            free_before = None
            if facts.maxmemory and self.base_used is not None:
                free_before = max(0, facts.maxmemory - self.base_used)
            needed = needed_after_oom(
                self.base_used,
                facts.used_memory,
                loaded,
                total,
                free_before if free_before is not None else free_for_copy(facts, True),
                self.source.dataset if self._estimable() else None,
            )
            if facts.maxmemory is not None:
                self.shortfall = MemoryShortfall(facts.maxmemory, facts.policy or "", needed)
            if flush_copy and side is not None:
                self._flush(side)
            return oom_message(self.label, facts, keys, needed)
        finally:
            if side is not None:
                side.close()

    def _facts(self, side: TargetLink | None) -> ServerFacts:
        if side is None or isinstance(side, ClusterTargetLink):
            return self.target
        try:
            return side.facts()
        except (RedisError, OSError):
            return self.target

    def _flush(self, side: TargetLink) -> None:
        try:
            side.close_others_named()
            side.flush_keeping_checkpoints()
            log.info(
                "task %s: flushed the half-loaded snapshot from %s (it could not be used)",
                self.task.name,
                self.label,
            )
        except (RedisError, OSError) as exc:
            log.warning(
                "task %s: could not flush the half-loaded snapshot from %s: %s",
                self.task.name,
                self.label,
                exc,
            )
