"""Every read and write of one task's checkpoint on the target (its fields: checkpoint.py).

The stages never spell a field list themselves: the full sync's records (start, progress,
end, a skipped snapshot), the stream batch's tail (`HSET <checkpoint> … HINCRBY …` inside
its MULTI), a pair task's unreplicated position write, a Cluster target's task record and
slot checkpoints, and the runner's last_error / end state all come from here, so the record
the monitor reads is written one way. Writes that travel inside a batch are returned as
encoded commands; the others are sent on the link given.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

from replwatch.config import SyncTask
from replwatch.errors import ProtocolFailure
from replwatch.keyslot import key_slot
from replwatch.observe.connection import encode_command
from replwatch.sync.checkpoint import CHECKPOINT_DB, SCHEMA_VERSION, Checkpoint, checkpoint_key
from replwatch.sync.lease import Fence
from replwatch.sync.preflight import MemoryShortfall
from replwatch.sync.writer import now_ms

# a pair task's checkpoint-only write, kept out of the replication stream (written to the AOF
# only); redis.replicate_commands() is needed before set_repl on Redis < 7 and a no-op after
UNREPLICATED_HSET = (
    "if redis.replicate_commands then redis.replicate_commands() end "
    "redis.set_repl(redis.REPL_AOF) "
    "redis.call('HSET', KEYS[1], unpack(ARGV)) "
    "return 1"
)


class RecordLink(Protocol):
    """What the store needs of a target connection (TargetLink, ClusterTargetLink)."""

    def select(self, db: int) -> None: ...

    def call(self, *args: Any) -> Any: ...

    def write(self, *args: Any) -> Any: ...


@dataclass(frozen=True)
class StreamMark:
    """Where a batch of the stream leaves the task: the position and what the record keeps
    whole in every batch (a FLUSHALL from the source applied in the same transaction must
    not leave a checkpoint that forgot its history)."""

    replid: str
    offset: int
    db: int
    full_resyncs: int
    source_db: int | None = None  # with a filter: the source's db (db is the target's)
    full_sync_started_at: int | None = None
    full_sync_finished_at: int | None = None


@dataclass(frozen=True)
class SnapshotTally:
    """What a finished snapshot load recorded."""

    keys_loaded: int
    keys_total: int
    rdb_bytes_loaded: int
    skipped_keys: int
    own_keys_skipped: int
    stream_pending_dropped: int
    evicted_keys: int | None


def _snapshot_done(replid: str, offset: int, finished: int) -> list[Any]:
    """A snapshot's end (loaded or skipped): the stream goes on from its position."""
    return ["state", "incremental", "replid", replid, "offset", offset,
            "full_sync_finished_at", finished]  # fmt: skip


class CheckpointStore:
    """The checkpoint of one task: `__replwatch:sync:<task>` in db CHECKPOINT_DB."""

    def __init__(self, task: SyncTask, host: str) -> None:
        self.task = task
        self.key = checkpoint_key(task.name)
        self.key_bytes = self.key.encode()
        self.host = host

    # ------------------------------------------------------------------ reads

    def read(self, link: RecordLink) -> Checkpoint | None:
        """The checkpoint (the link is left in CHECKPOINT_DB); None before the first write."""
        link.select(CHECKPOINT_DB)
        reply = link.call("HGETALL", self.key)
        if not isinstance(reply, list):
            raise ProtocolFailure("HGETALL of the checkpoint returned no list")
        return Checkpoint.from_hash(self.task.name, dict(zip(reply[::2], reply[1::2], strict=True)))

    def slot_key(self, tag: str) -> bytes:
        """A Cluster target's checkpoint of the slot hash tag `tag` belongs to."""
        return b"%s:{%s}" % (self.key_bytes, tag.encode())

    def slot_pattern(self) -> str:
        """SCAN MATCH pattern of this task's slot checkpoints."""
        return self.key + ":*"

    @staticmethod
    def slot_entries(found: Iterable[tuple[bytes, Any, Any]]) -> dict[int, tuple[int, int]]:
        """(key, offset, gen) read on the masters → slot: (offset, gen)."""
        return {
            key_slot(key): (int(offset), int(gen or 0))
            for key, offset, gen in found
            if offset is not None
        }

    # ------------------------------------------------------------------ fields

    def identity(self) -> list[Any]:
        task = self.task
        return [
            "version",
            SCHEMA_VERSION,
            "task",
            task.name,
            "source",
            task.source.label,
            "pid",
            os.getpid(),
            "host",
            self.host,
            "expire_grace_ms",
            round(task.expire_grace * 1000),
        ]

    def stream_fields(
        self, mark: StreamMark, fence: Fence | None = None, evicted: int | None = None
    ) -> list[Any]:
        """The HSET fields of a stream batch (or a Cluster target's task record)."""
        fields: list[Any] = ["state", "incremental", "replid", mark.replid, "offset", mark.offset]
        fields += ["db", mark.db, "updated_at", now_ms()]
        fields += ["task", self.task.name, "source", self.task.source.label]
        fields += ["full_resyncs", mark.full_resyncs]
        if fence is not None:  # a FLUSHALL in this batch must not end the lease
            fields += ["lease_holder", fence.holder, "lease_token", fence.token]
            fields += ["lease_until", fence.until_ms]
        if mark.source_db is not None:
            fields += ["source_db", mark.source_db]
        if mark.full_sync_finished_at is not None:
            fields += ["full_sync_finished_at", mark.full_sync_finished_at]
        if mark.full_sync_started_at is not None:
            fields += ["full_sync_started_at", mark.full_sync_started_at]
        if evicted is not None:  # (an allkeys-* target may evict the checkpoint itself)
            fields += ["evicted_keys", evicted]
        return fields

    # ------------------------------------------------------------------ inside batches

    def stream_tail(
        self,
        mark: StreamMark,
        applied: int,
        filtered: Mapping[str, int],
        fence: Fence | None,
        evicted: int | None,
    ) -> list[bytes]:
        """A stream batch's checkpoint writes, before its EXEC (the batch's db is mark.db)."""
        tail: list[bytes] = []
        if mark.db != CHECKPOINT_DB:
            tail.append(encode_command(("SELECT", CHECKPOINT_DB)))
        tail.append(encode_command(("HSET", self.key, *self.stream_fields(mark, fence, evicted))))
        tail.append(encode_command(("HINCRBY", self.key, "applied_commands", applied)))
        for reason, dropped in filtered.items():
            tail.append(encode_command(("HINCRBY", self.key, f"filtered:{reason}", dropped)))
        if mark.db != CHECKPOINT_DB:
            tail.append(encode_command(("SELECT", mark.db)))
        return tail

    def unreplicated_position(
        self, mark: StreamMark, fence: Fence | None, evicted: int | None
    ) -> list[bytes]:
        """A pair task's checkpoint-only write, by a script that keeps it out of the
        target's replication stream (redis.set_repl)."""
        tail: list[bytes] = []
        if mark.db != CHECKPOINT_DB:
            tail.append(encode_command(("SELECT", CHECKPOINT_DB)))
        fields = self.stream_fields(mark, fence, evicted)
        tail.append(encode_command(("EVAL", UNREPLICATED_HSET, 1, self.key, *fields)))
        if mark.db != CHECKPOINT_DB:
            tail.append(encode_command(("SELECT", mark.db)))
        return tail

    def filtered_counts(self, filtered: Mapping[str, int], back_to: int) -> list[bytes]:
        """Snapshot keys left out by reason, added to filtered:<reason> (in db 0, then
        back to `back_to`)."""
        commands = [encode_command(("SELECT", CHECKPOINT_DB))]
        for reason, count in filtered.items():
            commands.append(encode_command(("HINCRBY", self.key, f"filtered:{reason}", count)))
        commands.append(encode_command(("SELECT", back_to)))
        return commands

    def snapshot_mark(self, keys_sent: int, db: int) -> list[bytes]:
        """A pair task's snapshot batch ends with this (then EXEC): the checkpoint write that
        marks the transaction as this task's, leaving the stream in `db` after it."""
        tail = []
        if db != CHECKPOINT_DB:
            tail.append(encode_command(("SELECT", CHECKPOINT_DB)))
        tail.append(encode_command(("HMSET", self.key, "keys_loaded", keys_sent)))
        if db != CHECKPOINT_DB:
            tail.append(encode_command(("SELECT", db)))
        return tail

    def snapshot_progress(
        self, keys_sent: int, keys_total: int, loaded_bytes: int, skipped: int, db: int
    ) -> list[bytes]:
        """Progress of a snapshot load (every command answers +OK), leaving `db` selected."""
        commands = []
        if db != CHECKPOINT_DB:
            commands.append(encode_command(("SELECT", CHECKPOINT_DB)))
        commands.append(
            encode_command(
                (
                    "HMSET",  # not HSET: HMSET answers +OK, so the batch takes the fast path
                    self.key,
                    "keys_loaded",  # progress: sent (the final count: confirmed)
                    keys_sent,
                    "keys_total",
                    max(keys_total, keys_sent),
                    "rdb_bytes_loaded",
                    loaded_bytes,
                    "skipped_keys",
                    skipped,
                    "updated_at",
                    now_ms(),
                )
            )
        )
        if db != CHECKPOINT_DB:
            commands.append(encode_command(("SELECT", db)))
        return commands

    def cluster_record(
        self,
        mark: StreamMark,
        applied: int,
        filtered: Mapping[str, int],
        redirects: Mapping[str, int],
    ) -> list[bytes]:
        """A Cluster target's task record (the floor in `mark`) and its counters."""
        key = self.key_bytes
        commands = [encode_command((b"HSET", key, *self.stream_fields(mark)))]
        commands.append(encode_command((b"HINCRBY", key, b"applied_commands", applied)))
        for reason, count in filtered.items():
            commands.append(encode_command((b"HINCRBY", key, f"filtered:{reason}", count)))
        for kind, delta in redirects.items():
            field = f"cluster_redirects:{kind.lower()}"
            commands.append(encode_command((b"HINCRBY", key, field, delta)))
        return commands

    def slot_checkpoint(self, tag: str, end: int, gen: int) -> bytes:
        return encode_command((b"HSET", self.slot_key(tag), b"offset", end, b"gen", gen))

    # ------------------------------------------------------------------ direct writes

    def touch(self, link: RecordLink) -> None:
        """updated_at now (a task waiting for the source's snapshot is alive)."""
        link.write("HSET", self.key, "updated_at", now_ms())

    def incremental_begins(self, link: RecordLink) -> None:
        link.write("HSET", self.key, "state", "incremental", "updated_at", now_ms())

    def full_sync_begins(
        self,
        link: RecordLink,
        replid: str,
        offset: int,
        started_at: int,
        full_resyncs: int,
        reason: str | None,
        unexpected: bool,
    ) -> None:
        """A full sync starts: its position, counters at 0; `reason` why (with
        `unexpected`, the task had asked to continue: also the last error)."""
        link.select(CHECKPOINT_DB)
        link.write("HDEL", self.key, "full_sync_finished_at", "full_resync_reason")
        if reason is not None:
            why = ["full_resync_reason", reason]
            if unexpected:
                why += ["last_error", f"full resync: {reason}"[:500]]
            link.write("HSET", self.key, *why)
        link.write(
            "HSET",
            self.key,
            *self.identity(),
            "state",
            "full_sync",
            "replid",
            replid,
            "offset",
            offset,
            "full_sync_started_at",
            started_at,
            "full_resyncs",
            full_resyncs,
            "rdb_bytes_loaded",
            0,
            "keys_loaded",
            0,
            "keys_total",
            0,
            "updated_at",
            started_at,
        )

    def snapshot_size(self, link: RecordLink, length: int | None) -> None:
        link.write("HSET", self.key, "rdb_bytes_total", length or 0)

    def full_sync_ends(
        self, link: RecordLink, replid: str, offset: int, started_at: int, tally: SnapshotTally
    ) -> int:
        """The snapshot is loaded: the stream goes on from its position. Returns the time
        recorded as full_sync_finished_at."""
        finished = now_ms()
        link.select(CHECKPOINT_DB)
        link.write(
            "HSET",
            self.key,
            *_snapshot_done(replid, offset, max(finished, started_at)),
            "keys_loaded",
            tally.keys_loaded,
            "keys_total",
            max(tally.keys_total, tally.keys_loaded),
            "rdb_bytes_loaded",
            tally.rdb_bytes_loaded,
            "skipped_keys",
            tally.skipped_keys,
            "own_keys_skipped",
            tally.own_keys_skipped,
            *(["evicted_keys", tally.evicted_keys] if tally.evicted_keys is not None else []),
            "stream_pending_dropped",
            tally.stream_pending_dropped,
            "updated_at",
            finished,
        )
        link.write("HDEL", self.key, *MemoryShortfall.FIELDS)  # it fitted
        return finished

    def snapshot_skipped(self, link: RecordLink, replid: str, offset: int, loaded: int) -> None:
        """snapshot: skip: the snapshot was read, not loaded; the stream goes on after it."""
        finished = now_ms()
        link.select(CHECKPOINT_DB)
        link.write(
            "HSET",
            self.key,
            *_snapshot_done(replid, offset, finished),
            "rdb_bytes_loaded",
            loaded,
            "full_resyncs",
            1,
            "snapshot_skipped",
            1,
            "updated_at",
            finished,
        )

    def record_error(self, link: RecordLink, message: str) -> None:
        link.select(CHECKPOINT_DB)
        link.write("HSET", self.key, "last_error", message[:500], "updated_at", now_ms())

    def record_end(
        self,
        link: RecordLink,
        state: str,
        error: str | None,
        shortfall: MemoryShortfall | None,
        resync_reason: str | None,
        copy_incomplete: bool,
    ) -> None:
        """The end state (a failure with what the session learned: a memory shortfall, why
        it did a full resync). A failure is recorded even before the task ever wrote (e.g.
        a refused target); a clean stop only updates a checkpoint that exists."""
        link.select(CHECKPOINT_DB)
        if error is None and not link.call("EXISTS", self.key):
            return
        fields: list[Any] = ["state", state, "updated_at", now_ms()]
        if error is not None:
            fields += ["last_error", error[:500], *self.identity()]
        if shortfall is not None:
            fields += shortfall.flat()
        if resync_reason is not None:
            fields += ["full_resync_reason", resync_reason]
        link.write("HSET", self.key, *fields)
        if copy_incomplete:  # the target evicted keys: full sync next
            link.write("HDEL", self.key, "full_sync_finished_at")
