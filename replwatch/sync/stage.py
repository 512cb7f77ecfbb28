"""What a stage of a sync session gets from its task: a narrow context, not the runner.

The snapshot loader and the stream appliers (one target, a Cluster target) read the task's
settings, write the checkpoint through its store, count into the task's counters and ask
whether to stop, hold the lease's fence and know what the target has evicted; nothing else
of the runner that strings them together (task.py).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from replwatch.config import SyncTask
from replwatch.sync.checkpoint import checkpoint_key
from replwatch.sync.checkpoint_store import CheckpointStore
from replwatch.sync.filters import SyncFilter
from replwatch.sync.lease import Fence
from replwatch.sync.target_rewrite import TargetRewriter


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


@dataclass
class StreamPosition:
    """The stream the task follows and the offset the target confirmed (status, tests)."""

    replid: str | None = None
    offset: int | None = None


@dataclass(frozen=True)
class StageContext:
    """One session's view of its task, handed to each stage."""

    task: SyncTask
    store: CheckpointStore
    filter: SyncFilter | None  # None: nothing to filter or map (the raw fast path)
    counters: TaskCounters
    position: StreamPosition
    # the stream's rewrite rules (target_rewrite.py); True: keep the checkpoint in db 0
    rewriter: Callable[[bool], TargetRewriter]
    stopping: Callable[[], bool]
    fence: Callable[[], Fence | None]  # the lease held now (ha), written with each batch
    evicted: Callable[[], int | None]  # the target's evicted_keys when the copy began

    @property
    def pair_key(self) -> bytes | None:
        """The reverse task's checkpoint key (a pair): its writes are echoes."""
        pair = self.task.pair
        return None if pair is None else checkpoint_key(pair).encode()
