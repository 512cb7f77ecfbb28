"""A sync task whose source is a Redis Cluster: one reader per master shard, one target.

The runner discovers the master shards (replwatch/sync/sources.py: CLUSTER SHARDS, else
CLUSTER NODES) and runs one SyncTaskRunner per shard in a thread of the task's process. Each
shard is a normal task under a derived name, `<task>@<shard>` (shard = `s<lowest slot it
owns>`, which a failover inside the shard keeps), so each has its own checkpoint
(`__replwatch:sync:<task>@<shard>` on the target) and its own series in the metrics. A
shard's runner finds its master again at every reconnect, so it follows a failover inside the
shard like a Sentinel source does (PSYNC through the promoted replica's replid2).

All shards write into the one target, so a shard's full sync must not flush the others' keys:
the shard tasks run with `existing_keys: overwrite`, and the task's own `existing_keys`
(refuse / flush) is applied once, here, before the first sync (when no shard has a checkpoint
yet). Every few seconds the shards are discovered again and a runner is started for a shard
not seen before.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass, field
from pathlib import Path

from replwatch.config import ClusterSource, SyncTask, TLSConfig, tls_over
from replwatch.errors import RedisError
from replwatch.sync.checkpoint import CHECKPOINT_DB, checkpoint_key
from replwatch.sync.full_sync import existing_keys_refused
from replwatch.sync.own_keys import OWN_PREFIX
from replwatch.sync.sources import cluster_shards, shard_locator, shard_task, shard_task_name
from replwatch.sync.task import IO_TIMEOUT, SyncTaskRunner
from replwatch.sync.task_report import report_path
from replwatch.sync.writer import TargetLink

log = logging.getLogger("replwatch.sync.cluster")

REDISCOVER_EVERY = 10.0


@dataclass
class _ShardThread:
    runner: SyncTaskRunner
    thread: threading.Thread
    exit_code: list[int] = field(default_factory=list)


class ClusterTaskRunner:
    """Runs one reader per master shard of a cluster source until stop() or until every
    shard's runner ended (the highest exit code)."""

    def __init__(
        self,
        task: SyncTask,
        tls: TLSConfig,
        stop: threading.Event | None = None,
        io_timeout: float = IO_TIMEOUT,
        state_dir: Path | None = None,
    ) -> None:
        if not isinstance(task.source, ClusterSource):
            raise ValueError(f"task {task.name}: the source is not a cluster")
        self.task = task
        self.source: ClusterSource = task.source
        self.tls = tls_over(tls, task.tls)
        self.stop_event = stop or threading.Event()
        self.io_timeout = io_timeout
        self.state_dir = state_dir  # each shard keeps its local report there (task_report.py)
        self.shards: dict[str, _ShardThread] = {}

    def stop(self) -> None:
        self.stop_event.set()

    @property
    def stopping(self) -> bool:
        return self.stop_event.is_set()

    def run(self) -> int:
        delay = self.task.reconnect_min
        prepared = False
        while not self.stopping:
            try:
                if not prepared:
                    if not self._prepare_target():
                        return 1
                    prepared = True
                self._start_new_shards()
            except (RedisError, OSError) as exc:
                log.warning("task %s: cluster discovery: %s", self.task.name, exc)
                if self.stop_event.wait(delay):
                    break
                delay = min(self.task.reconnect_max, delay * 2)
                continue
            delay = self.task.reconnect_min
            if self.shards and not any(s.thread.is_alive() for s in self.shards.values()):
                break  # every shard ended (failed)
            self.stop_event.wait(REDISCOVER_EVERY)
        for shard in self.shards.values():
            shard.runner.stop()
        for shard in self.shards.values():
            shard.thread.join()
        return max((code for s in self.shards.values() for code in s.exit_code), default=0)

    def _start_new_shards(self) -> None:
        for shard in cluster_shards(self.source, self.tls, self.io_timeout):
            if shard.shard_id in self.shards:
                continue
            task = shard_task(self.task, shard.shard_id)
            report = None if self.state_dir is None else report_path(self.state_dir, task.name)
            runner = SyncTaskRunner(
                task,
                self.tls,
                self.stop_event,
                self.io_timeout,
                locate_source=shard_locator(self.source, shard.shard_id, self.tls, self.io_timeout),
                report_path=report,
            )
            record = _ShardThread(runner, threading.Thread())
            record.thread = threading.Thread(
                target=lambda r=record: r.exit_code.append(r.runner.run()),
                name=f"sync-{runner.task.name}",
                daemon=True,
            )
            self.shards[shard.shard_id] = record
            log.info(
                "task %s: shard %s (slots %s) from %s",
                self.task.name,
                shard.shard_id,
                ",".join(f"{a}-{b}" for a, b in shard.slots),
                shard.label,
            )
            record.thread.start()

    def _prepare_target(self) -> bool:
        """The task's existing_keys, once for all shards, before any shard synced: False
        when the target holds foreign keys under `refuse` (the task fails)."""
        if self.task.existing_keys == "overwrite":
            return True
        target = TargetLink(self.task.target, self.tls, self.io_timeout, 1)
        try:
            target.select(CHECKPOINT_DB)
            prefix = checkpoint_key(shard_task_name(self.task.name, ""))
            cursor, ours = target.call("SCAN", 0, "MATCH", prefix + "*", "COUNT", 10_000)
            while not ours and cursor != b"0":
                cursor, ours = target.call("SCAN", cursor, "MATCH", prefix + "*", "COUNT", 10_000)
            if ours:
                return True  # the shards synced before: each one's checkpoint decides
            foreign = target.keys_outside(OWN_PREFIX)
            if not foreign:
                return True
            if self.task.existing_keys == "refuse":
                message = existing_keys_refused(self.task, foreign)
                log.error("task %s failed: %s", self.task.name, message)
                return False
            target.flush_keeping_checkpoints()
            return True
        finally:
            target.close()
