"""A sync task's checkpoint: the hash it keeps on the target, its public record.

The writer updates it inside the same MULTI/EXEC as the data it applies, so the position it
records is exactly what the target holds: a restart resumes there (PSYNC <replid>
<offset+1>) and nothing is lost or applied twice. The monitor and `replwatch sync status` read
it (plus the source's INFO) to report a task without talking to the syncer process.

Key: `__replwatch:sync:<task name>` in db 0 of the target (`checkpoint_key`). Fields (all
strings; times are unix milliseconds of the syncer's clock):

    version                  schema version (1)
    task, source             task name; the source as host:port (never a password)
    state                    starting | full_sync | incremental | stopped | failed
    replid, offset           the source replication stream and the last offset applied
                             (during a full sync: the offset the snapshot was taken at)
    db                       the stream's selected database at that offset (a continued
                             stream does not repeat its SELECT)
    source_db                with filters or a db_map: the source's selected database at
                             that offset (db is then the target's, maybe mapped)
    filtered:<reason>        writes the task's filters left out, by reason (key_not_allowed,
                             key_prefix, key_regex, command, db, mixed_keys; see
                             replwatch/sync/filters.py): snapshot keys and stream commands
    updated_at               when the syncer last wrote the checkpoint
    full_sync_started_at     when the current or last full sync began
    full_sync_finished_at    when it ended (absent while one is running)
    full_resyncs             full syncs done so far (the first one included)
    applied_commands         commands applied from the replication stream (incremental)
    rdb_bytes_total          size of the snapshot being loaded (0 when the source streamed
                             it diskless: the size is not known in advance; read as None)
    rdb_bytes_loaded         bytes of it read so far
    keys_total               keys in the snapshot (sum of its RESIZEDB hints; 0 if absent)
    keys_loaded              keys applied so far
    skipped_keys             keys not applied (module types with on_module_key: skip)
    own_keys_skipped         snapshot keys under __replwatch: left out (replwatch's own:
                             other tasks' checkpoints, heartbeat, probe; never copied)
    stream_pending_dropped   pending entries of streams the snapshot could not carry to this
                             target as plain commands (logged per key; commands.stream_gaps)
    evicted_keys             a target that may evict (maxmemory and an eviction policy): its
                             INFO evicted_keys when the full sync finished; more later means
                             keys of the copy may be gone: the task stops (guard.py)
    expire_grace_ms          the task's expire_grace: TTLs on the target are this much later
                             than on the source (replwatch/sync/expiry.py)
    snapshot_skipped         1: the first full sync's snapshot was read, not loaded
                             (snapshot: skip)
    last_error               the last error that stopped or restarted the task (no secrets);
                             a target that refuses the write (out of memory, read-only) keeps
                             the error in the task's local report instead
                             (replwatch/sync/task_report.py)
    full_resync_reason       why the last full sync happened when the task had asked to
                             continue (the backlog no longer held its position, another
                             replication history, …: replwatch/sync/resync_reason.py)
    oom_maxmemory, oom_policy, oom_needed
                             a full sync that did not fit in the target: its maxmemory and
                             maxmemory-policy then and about how many bytes the copy needs;
                             a new start is refused before PSYNC until maxmemory or the policy
                             changed or the need fits (replwatch/sync/preflight.py). Removed
                             when a full sync completes
    pid, host                the process that writes it
    lease_holder, lease_token, lease_until
                             a task with `ha: true`: the process holding the task's lease
                             (host:pid:random), its fencing token (grows with every
                             takeover) and when the lease ends (the target's clock, ms)
    cluster_redirects:<kind> a cluster target: MOVED / ASK / TRYAGAIN / CLUSTERDOWN replies
                             followed (moved, ask, tryagain, clusterdown), the full
                             sync's included

A cluster target (replwatch/sync/cluster_target.py) also has one hash per target slot the
stream wrote to, `__replwatch:sync:<task>:{<tag>}` with `offset` and `gen` (full_resyncs),
and `offset` above is then the floor: applied in every slot.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

CHECKPOINT_PREFIX = "__replwatch:sync:"
CHECKPOINT_DB = 0
SCHEMA_VERSION = 1
STATES = ("starting", "full_sync", "incremental", "stopped", "failed")


def checkpoint_key(task: str) -> str:
    return CHECKPOINT_PREFIX + task


def _text(raw: Mapping[bytes | str, bytes | str], name: str) -> str | None:
    value = raw.get(name)
    if value is None:
        value = raw.get(name.encode())
    if value is None:
        return None
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else value


def _int(raw: Mapping[bytes | str, bytes | str], name: str) -> int | None:
    text = _text(raw, name)
    if text is None or text == "":
        return None
    try:
        return int(text)
    except ValueError:
        return None


FILTERED_PREFIX = "filtered:"


def _filtered(raw: Mapping[bytes | str, bytes | str]) -> dict[str, int]:
    """The filtered:<reason> counters (malformed values left out)."""
    counts: dict[str, int] = {}
    for name in raw:
        text = name.decode("utf-8", "replace") if isinstance(name, bytes) else name
        if text.startswith(FILTERED_PREFIX):
            value = _int(raw, text)
            if value is not None:
                counts[text[len(FILTERED_PREFIX) :]] = value
    return dict(sorted(counts.items()))


@dataclass(frozen=True, slots=True)
class Checkpoint:
    """The checkpoint hash, typed. Absent or malformed numbers read as None."""

    task: str
    state: str = "starting"
    source: str | None = None
    replid: str | None = None
    offset: int | None = None
    db: int | None = None
    source_db: int | None = None
    updated_at: int | None = None
    full_sync_started_at: int | None = None
    full_sync_finished_at: int | None = None
    full_resyncs: int = 0
    applied_commands: int = 0
    rdb_bytes_total: int | None = None
    rdb_bytes_loaded: int | None = None
    keys_total: int | None = None
    keys_loaded: int | None = None
    skipped_keys: int = 0
    last_error: str | None = None
    pid: int | None = None
    host: str | None = None
    lease_holder: str | None = None
    lease_token: int | None = None
    lease_until: int | None = None
    full_resync_reason: str | None = None
    oom_maxmemory: int | None = None
    oom_policy: str | None = None
    oom_needed: int | None = None
    evicted_keys: int | None = None  # the target's INFO evicted_keys when the copy was whole
    filtered: dict[str, int] = field(default_factory=dict)  # by reason
    extra: dict[str, str] = field(default_factory=dict, compare=False)

    @classmethod
    def from_hash(cls, task: str, raw: Mapping[bytes | str, bytes | str]) -> Checkpoint | None:
        """The checkpoint from HGETALL's reply; None when the hash is empty (no task has
        written to this target yet)."""
        if not raw:
            return None
        state = _text(raw, "state") or "starting"
        return cls(
            task=_text(raw, "task") or task,
            state=state if state in STATES else "starting",
            source=_text(raw, "source"),
            replid=_text(raw, "replid") or None,
            offset=_int(raw, "offset"),
            db=_int(raw, "db"),
            source_db=_int(raw, "source_db"),
            updated_at=_int(raw, "updated_at"),
            full_sync_started_at=_int(raw, "full_sync_started_at"),
            full_sync_finished_at=_int(raw, "full_sync_finished_at"),
            full_resyncs=_int(raw, "full_resyncs") or 0,
            applied_commands=_int(raw, "applied_commands") or 0,
            # 0 is what a diskless snapshot records: its size is unknown (None), not 0
            rdb_bytes_total=_int(raw, "rdb_bytes_total") or None,
            rdb_bytes_loaded=_int(raw, "rdb_bytes_loaded"),
            keys_total=_int(raw, "keys_total"),
            keys_loaded=_int(raw, "keys_loaded"),
            skipped_keys=_int(raw, "skipped_keys") or 0,
            last_error=_text(raw, "last_error") or None,
            pid=_int(raw, "pid"),
            host=_text(raw, "host"),
            lease_holder=_text(raw, "lease_holder"),
            lease_token=_int(raw, "lease_token"),
            lease_until=_int(raw, "lease_until"),
            full_resync_reason=_text(raw, "full_resync_reason") or None,
            oom_maxmemory=_int(raw, "oom_maxmemory"),
            oom_policy=_text(raw, "oom_policy") or None,
            oom_needed=_int(raw, "oom_needed"),
            evicted_keys=_int(raw, "evicted_keys"),
            filtered=_filtered(raw),
        )

    @property
    def resumable(self) -> bool:
        """It names a position in a source stream that a PSYNC can continue from: only
        after a full sync finished (a half-loaded snapshot cannot be continued)."""
        return (
            self.replid is not None
            and self.offset is not None
            and self.full_sync_finished_at is not None
            and (
                self.full_sync_started_at is None
                or self.full_sync_finished_at >= self.full_sync_started_at
            )
        )

    @property
    def snapshot_incomplete(self) -> bool:
        """A full sync began and has not finished (running, or it stopped or failed
        half-way): the target holds no usable copy yet, whatever the offset says."""
        if self.full_sync_started_at is None:
            return self.state == "full_sync"
        return (
            self.full_sync_finished_at is None
            or self.full_sync_finished_at < self.full_sync_started_at
        )

    def progress(self) -> float | None:
        """Share of a running full sync done (0–1): bytes when the size is known, else
        keys; None when neither is known."""
        if self.rdb_bytes_total and self.rdb_bytes_loaded is not None:
            return min(1.0, self.rdb_bytes_loaded / self.rdb_bytes_total)
        if self.keys_total and self.keys_loaded is not None:
            return min(1.0, self.keys_loaded / self.keys_total)
        return None
