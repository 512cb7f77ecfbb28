"""Watching sync tasks from the monitor side: the target's checkpoint plus the source's INFO.

A sync task is a follower of its source's replication stream. The checkpoint hash the syncer
keeps on the target (replwatch/sync/checkpoint.py) names the replid and offset applied there,
so the monitor reports a task without talking to the syncer process: SyncWatcher reads that
hash and the source's INFO replication concurrently, feeds the source's offset clock and
returns an immutable SyncTaskView (byte lag, time lag, state, full sync progress, counters).
SyncStore keeps the newest view per task for the exporter and `replwatch sync status`.

- byte lag = source master_repl_offset − checkpoint offset, only when the checkpoint is on
  the source's offset line: same replid, or the source's replid2 with an offset inside the
  shared history (offset < second_repl_offset: Redis sets second_repl_offset to the old
  offset + 1 when it shifts ids). Otherwise unknown (None), never a number across streams.
- time lag = the source's offset clock looked up at the checkpoint offset. A stale
  checkpoint (not updated for `stale_after` seconds while the source moved past it, or a
  full_sync one not updated for that long: a full sync records its progress every second)
  keeps the clock's answer; `stale` and `seconds_since_update` say so, and a stale task is
  not running.
- a full sync that has not finished (running, or left half-way by a stop or a failure): the
  target holds no usable copy yet, so the lag is not the snapshot's offset against the
  source's (0 on an idle source: issue 17). lag_seconds is at least the time since the full
  sync began and never exact (the copy reaches the snapshot's moment only once it is
  loaded); lag_bytes adds the snapshot's bytes not loaded yet when its size is known
  (unfinished_copy_lag), else it is a lower bound (lag_bytes_exact False: a diskless
  snapshot's size is unknown until it has been read).
- "unreachable" is not a state: source_up / target_up (with an error reason class) say who
  could not be read; the state comes from the checkpoint, "unknown" when there is none.
- the task process's local report (sync/task_report.py, in the state directory: `replwatch run`
  and `replwatch sync status -c` know it) is merged in: a report newer than the checkpoint
  that says failed or stopped wins, and so does its last error (a target that is out of
  memory or a replica refuses the checkpoint's write).
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Generic, TypeVar

import hiredis

from replwatch.config import (
    ClusterSource,
    Config,
    RedisEndpoint,
    SyncTask,
    TLSConfig,
    node_at,
    tls_over,
)
from replwatch.errors import ProtocolFailure, RedisError, TimeoutFailure
from replwatch.lag.offset_clock import OffsetClock
from replwatch.observe.connection import Command, Connection, classify_reply_error
from replwatch.observe.info import ReplicationInfo, parse_replication
from replwatch.sync.checkpoint import CHECKPOINT_DB, STATES, Checkpoint, checkpoint_key
from replwatch.sync.sources import (
    Locator,
    cluster_shards,
    shard_locator,
    shard_task,
    source_locator,
)
from replwatch.sync.task_report import TaskReport, merge_report, read_report, report_path

log = logging.getLogger("replwatch.sync.watch")  # name kept: log lines unchanged

UNKNOWN_STATE = "unknown"
# every value SyncTaskView.state can take (replwatch_sync_state exports one series each)
VIEW_STATES: tuple[str, ...] = (*STATES, UNKNOWN_STATE)
# states in which a task is doing its job (`replwatch sync status` exits 0)
RUNNING_STATES = frozenset({"full_sync", "incremental"})
DEFAULT_STALE_AFTER = 30.0

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class SyncTaskView:
    """One poll of one sync task, as the monitor sees it. Immutable; replaced whole."""

    task: str
    source: str  # source label, host:port (never a password)
    target: str  # target label
    state: str  # the checkpoint's state; "unknown" without a (readable) checkpoint
    checkpoint: Checkpoint | None
    source_up: bool
    target_up: bool
    source_error_reason: str | None = None
    source_error_message: str | None = None
    target_error_reason: str | None = None
    target_error_message: str | None = None
    source_offset: int | None = None  # the source's master_repl_offset
    source_replid: str | None = None
    applied_offset: int | None = None  # the checkpoint's offset
    lag_bytes: int | None = None
    lag_seconds: float | None = None
    lag_seconds_exact: bool = True  # False: the offset clock gives only a lower bound
    # False: lag_bytes is a lower bound (an unfinished full sync of a diskless snapshot,
    # whose size is unknown: only the stream since the snapshot is counted)
    lag_bytes_exact: bool = True
    seconds_since_update: float | None = None  # now − the checkpoint's updated_at
    stale: bool = False  # not updated for stale_after seconds while the source moved on
    progress: float | None = None  # share of a running full sync done (0–1)
    full_resyncs: int | None = None
    applied_commands: int | None = None
    filtered: dict[str, int] | None = None  # writes left out by the task's filters, by reason
    keys_loaded: int | None = None
    keys_total: int | None = None
    rdb_bytes_loaded: int | None = None
    rdb_bytes_total: int | None = None
    last_error: str | None = None  # the syncer's own: the checkpoint's, or its newer report's
    full_resync_reason: str | None = None  # why the last full sync happened (checkpoint)
    lease_token: int | None = None  # ha: the fencing token (grows with every takeover)
    lease_remaining_seconds: float | None = None  # ha: until the holder's lease ends
    taken_at: float = 0.0  # wall clock, seconds
    poll_seconds: float = 0.0
    # wall seconds of the newest checkpoint write known: this poll's, or, while the target
    # cannot be read, the last one read (the copy is at least that old)
    checkpoint_updated_at: float | None = None

    @property
    def running(self) -> bool:
        """Both sides answer and the task is in full_sync or incremental, with a checkpoint
        that is not stale (a task that stopped writing it is not doing its job)."""
        return self.source_up and self.target_up and self.state in RUNNING_STATES and not self.stale

    @property
    def full_sync_running(self) -> bool:
        return self.state == "full_sync"

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["running"] = self.running
        return data


# --------------------------------------------------------------------------- pure parts


def follower_lag_bytes(
    replid: str | None, offset: int | None, source: ReplicationInfo
) -> int | None:
    """Bytes a follower at (replid, offset) is behind `source`; None when that position is
    not on the source's offset line (another stream, or past the history the source shares
    with its previous replid)."""
    if not replid or offset is None:
        return None
    on_line = replid == source.replid or (
        bool(source.replid2) and replid == source.replid2 and offset < source.second_repl_offset
    )
    if not on_line:
        return None
    # INFO and the checkpoint are read concurrently: a checkpoint written a moment after the
    # INFO answer may be a few bytes ahead of it
    return max(0, source.master_repl_offset - offset)


def unfinished_copy_lag(
    cp: Checkpoint, stream_bytes: int | None, clock_seconds: float | None, now_wall: float
) -> tuple[int | None, float | None]:
    """Lag of a copy whose full sync has not finished (Checkpoint.snapshot_incomplete):
    bytes: the stream since the snapshot (`stream_bytes`) plus the snapshot's bytes not
    loaded yet, when its size is known; seconds: at least the time since the full sync
    began (a lower bound: the copy reaches the snapshot's moment only once loaded)."""
    lag_bytes = stream_bytes
    if lag_bytes is not None and cp.rdb_bytes_total and cp.rdb_bytes_loaded is not None:
        lag_bytes += max(0, cp.rdb_bytes_total - cp.rdb_bytes_loaded)
    seconds = clock_seconds
    if cp.full_sync_started_at is not None:
        since = max(0.0, now_wall - cp.full_sync_started_at / 1000.0)
        seconds = since if seconds is None else max(seconds, since)
    return lag_bytes, seconds


def parse_hgetall(reply: Any) -> dict[bytes | str, bytes | str]:
    """HGETALL's flat [field, value, …] reply (RESP2) or map (RESP3) → dict."""
    if isinstance(reply, dict):
        return {k: v for k, v in reply.items() if isinstance(k, bytes) and isinstance(v, bytes)}
    if not isinstance(reply, list) or len(reply) % 2:
        raise ProtocolFailure("HGETALL returned no field/value list")
    pairs = zip(reply[0::2], reply[1::2], strict=True)
    return {k: v for k, v in pairs if isinstance(k, bytes) and isinstance(v, bytes)}


@dataclass(frozen=True, slots=True)
class SideRead(Generic[T]):
    """What one side's read gave: a value, or an error reason class and message."""

    value: T | None
    at: float  # monotonic time the answer (or the failure) came
    error_reason: str | None = None
    error_message: str | None = None

    @property
    def up(self) -> bool:
        return self.error_reason is None


def build_view(
    task: SyncTask,
    source: SideRead[ReplicationInfo],
    target: SideRead[Checkpoint | None],
    clock: OffsetClock,
    now_mono: float,
    now_wall: float,
    stale_after: float,
    poll_seconds: float = 0.0,
    report: TaskReport | None = None,
    remembered: Checkpoint | None = None,
) -> SyncTaskView:
    """The view of one poll. `clock` must already have observed `source` (when it answered);
    `report`: the task process's local report (merged: sync/task_report.merge_report);
    `remembered`: the last checkpoint read, which stands for the copy's position while the
    target cannot be read (a stopped DR copy keeps a lag and a checkpoint age that grow,
    never a gap in the series: the copy is at least that far behind)."""
    cp = target.value if target.up else None
    known = cp if cp is not None or target.up else remembered
    info = source.value if source.up else None
    lag_bytes: int | None = None
    lag_seconds: float | None = None
    exact = known is cp
    if known is not None and info is not None:
        lag_bytes = follower_lag_bytes(known.replid, known.offset, info)
        if lag_bytes is not None and known.offset is not None:
            lag_seconds, clock_exact = clock.lag_of(known.offset, now_mono)
            exact = exact and clock_exact
    bytes_exact = True
    if known is not None and known.snapshot_incomplete:
        lag_bytes, lag_seconds = unfinished_copy_lag(known, lag_bytes, lag_seconds, now_wall)
        exact = False
        bytes_exact = bool(known.rdb_bytes_total)
    since_update = None
    if known is not None and known.updated_at is not None:
        since_update = max(0.0, now_wall - known.updated_at / 1000.0)
    # a full sync writes its progress every second: quiet that long, it is not running
    moving = bool(lag_bytes) or (cp is not None and cp.state == "full_sync")
    stale = bool(since_update is not None and since_update > stale_after and moving)
    running_full_sync = cp is not None and cp.state == "full_sync"
    state, last_error = merge_report(
        cp.state if cp is not None else UNKNOWN_STATE,
        cp.last_error if cp is not None else None,
        cp.updated_at if cp is not None else None,
        report,
    )
    return SyncTaskView(
        task=task.name,
        source=task.source.label,
        target=task.target.label,
        state=state,
        checkpoint=cp,
        source_up=source.up,
        target_up=target.up,
        source_error_reason=source.error_reason,
        source_error_message=source.error_message,
        target_error_reason=target.error_reason,
        target_error_message=target.error_message,
        source_offset=info.master_repl_offset if info is not None else None,
        source_replid=info.replid if info is not None else None,
        applied_offset=cp.offset if cp is not None else None,
        lag_bytes=lag_bytes,
        lag_seconds=lag_seconds,
        lag_seconds_exact=exact,
        lag_bytes_exact=bytes_exact,
        seconds_since_update=since_update,
        stale=stale,
        progress=cp.progress() if cp is not None and running_full_sync else None,
        full_resyncs=cp.full_resyncs if cp is not None else None,
        applied_commands=cp.applied_commands if cp is not None else None,
        filtered=dict(cp.filtered) if cp is not None else None,
        keys_loaded=cp.keys_loaded if cp is not None else None,
        keys_total=cp.keys_total if cp is not None else None,
        rdb_bytes_loaded=cp.rdb_bytes_loaded if cp is not None else None,
        rdb_bytes_total=cp.rdb_bytes_total if cp is not None else None,
        last_error=last_error,
        full_resync_reason=cp.full_resync_reason if cp is not None else None,
        lease_token=cp.lease_token if cp is not None else None,
        lease_remaining_seconds=(
            max(0.0, cp.lease_until / 1000.0 - now_wall)
            if cp is not None and cp.lease_until is not None
            else None
        ),
        taken_at=now_wall,
        poll_seconds=poll_seconds,
        checkpoint_updated_at=(
            known.updated_at / 1000.0 if known is not None and known.updated_at else None
        ),
    )


# --------------------------------------------------------------------------- I/O


class _Link:
    """One connection to one node, opened on first use and reopened on the next use after
    it failed. Each use is bounded by `timeout`, connect and AUTH included. With `locate`
    (a Sentinel or cluster source) the node is looked up again at every (re)open."""

    def __init__(
        self,
        endpoint: RedisEndpoint,
        timeout: float,
        tls: TLSConfig | None,
        locate: Locator | None = None,
        label: str | None = None,
    ) -> None:
        self.endpoint = endpoint
        self.label = label or endpoint.label
        self.timeout = timeout
        self.tls = tls
        self.locate = locate
        self._conn: Connection | None = None

    async def run(self, commands: Sequence[Command], hops: int = 3) -> list[Any]:
        """The replies; raises RedisError (reply errors classified, connection kept)."""
        try:
            replies = await asyncio.wait_for(self._run(commands), self.timeout)
        except TimeoutError:
            self.close()  # the stream position is unknown
            raise TimeoutFailure(f"no answer from {self.label} within {self.timeout:g}s") from None
        moved = _moved_to(replies)
        if moved is not None and hops > 0:
            # a cluster target: the checkpoint lives on the master owning its slot; this link
            # goes there from now on (and follows the next move the same way)
            self.close()
            self.endpoint = self.endpoint.model_copy(update={"host": moved[0], "port": moved[1]})
            return await self.run(commands, hops - 1)
        for reply in replies:
            if isinstance(reply, hiredis.ReplyError):
                raise classify_reply_error(str(reply))
        return replies

    async def _run(self, commands: Sequence[Command]) -> list[Any]:
        conn = self._conn
        if conn is None or conn.closed:
            self._conn = None
            if self.locate is not None:
                # blocking lookups (a few short requests): off the event loop
                self.endpoint = await asyncio.to_thread(self.locate)
            conn = await Connection.open(self.endpoint, self.timeout, self.tls)
            self._conn = conn
        return await conn.execute(commands, self.timeout, raise_errors=False)

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None


def _source_link(
    task: SyncTask, timeout: float, tls: TLSConfig | None, locate: Locator | None
) -> _Link:
    """The watcher's link to the task's source: its URL, or the node `locate` (by default
    the master the Sentinels name) finds at every reconnect."""
    source = task.source
    if isinstance(source, RedisEndpoint):
        return _Link(source, timeout, tls, locate)
    if locate is None:
        locate = source_locator(source, tls, timeout)
    # a placeholder until the first lookup (its label is the source's stable label)
    return _Link(node_at(source, "0.0.0.0", 1), timeout, tls, locate, label=source.label)


def _moved_to(replies: Sequence[Any]) -> tuple[str, int] | None:
    """host, port of a `MOVED <slot> <host>:<port>` reply, if one is there."""
    for reply in replies:
        if isinstance(reply, hiredis.ReplyError) and str(reply).startswith("MOVED "):
            host, _, port = str(reply).rpartition(" ")[2].rpartition(":")
            if port.isdigit():
                return host.strip("[]"), int(port)
    return None


async def _read_side(link: _Link, command: Command, parse: Callable[[Any], T]) -> SideRead[T]:
    try:
        replies = await link.run([command])
        return SideRead(parse(replies[0]), time.monotonic())
    except RedisError as exc:
        return SideRead(None, time.monotonic(), exc.reason, str(exc))


def _info_text(reply: Any) -> ReplicationInfo:
    if not isinstance(reply, bytes):
        raise ProtocolFailure("INFO returned no text")
    return parse_replication(reply.decode("utf-8", "replace"))


class SyncWatcher:
    """Polls one sync task: INFO replication on its source and the checkpoint hash in db 0
    of its target, concurrently, each bounded by `timeout`. Owns the source's offset clock.
    Not safe for concurrent polls; use it from one event loop."""

    def __init__(
        self,
        task: SyncTask,
        timeout: float,
        tls: TLSConfig,
        clock: OffsetClock | None = None,
        stale_after: float = DEFAULT_STALE_AFTER,
        wall_clock: Callable[[], float] = time.time,
        locate: Locator | None = None,
        report: Path | None = None,
    ) -> None:
        self.task = task
        self.report = report  # the task's local report file (sync/task_report.py), if known
        self.timeout = timeout
        self.stale_after = stale_after
        self.clock = clock if clock is not None else OffsetClock()
        self._wall = wall_clock
        effective_tls = tls_over(tls, task.tls)
        self._source = _source_link(task, timeout, effective_tls, locate)
        target = task.target.model_copy(update={"db": CHECKPOINT_DB})
        self._target = _Link(target, timeout, effective_tls)
        self._hgetall: Command = ("HGETALL", checkpoint_key(task.name))
        self._remembered: Checkpoint | None = None  # the last checkpoint read

    @property
    def name(self) -> str:
        return self.task.name

    async def poll(self) -> SyncTaskView:
        """One poll. Never raises for Redis problems: the view carries them."""
        started = time.monotonic()
        name = self.task.name
        source, target = await asyncio.gather(
            _read_side(self._source, ("INFO", "replication"), _info_text),
            _read_side(
                self._target, self._hgetall, lambda r: Checkpoint.from_hash(name, parse_hgetall(r))
            ),
        )
        info = source.value
        if info is not None and info.is_replica and self._source.locate is not None:
            # the node found before a failover is a replica now: find the master next poll
            self._source.close()
        if info is not None:
            self.clock.observe(info.master_repl_offset, source.at, info.replid, info.replid2)
        if target.up:
            self._remembered = target.value
        now = time.monotonic()
        return build_view(
            self.task,
            source,
            target,
            self.clock,
            now,
            self._wall(),
            self.stale_after,
            now - started,
            # (a small local file: read in the loop, like the clock)
            read_report(self.report) if self.report is not None else None,
            self._remembered,
        )

    def close(self) -> None:
        self._source.close()
        self._target.close()


def task_watchers(
    cfg: Config,
    task: SyncTask,
    stale_after: float = DEFAULT_STALE_AFTER,
    state_dir: Path | None = None,
) -> list[SyncWatcher]:
    """The watchers of one task: one; for a cluster source one per master shard found now
    (task `<name>@<shard>`, its own checkpoint and series; none while the cluster cannot be
    discovered: a blocking lookup bounded by the poll timeout per startup node). With the
    config's `state_dir`, each watcher merges the task's local report."""
    tls = tls_over(cfg.tls, task.tls)

    def clock() -> OffsetClock:
        return OffsetClock(cfg.lag.offset_clock_window, cfg.lag.offset_clock_max_points)

    if not isinstance(task.source, ClusterSource):
        report = None if state_dir is None else report_path(state_dir, task.name)
        return [SyncWatcher(task, cfg.poll.timeout, cfg.tls, clock(), stale_after, report=report)]
    try:
        shards = cluster_shards(task.source, tls, cfg.poll.timeout)
    except (RedisError, OSError) as exc:
        log.warning("sync task %s: cannot discover the cluster's shards: %s", task.name, exc)
        return []
    watchers = []
    for shard in shards:
        sharded = shard_task(task, shard.shard_id)
        watchers.append(
            SyncWatcher(
                sharded,
                cfg.poll.timeout,
                cfg.tls,
                clock(),
                stale_after,
                locate=shard_locator(task.source, shard.shard_id, tls, cfg.poll.timeout),
                report=None if state_dir is None else report_path(state_dir, sharded.name),
            )
        )
    return watchers


def build_sync_watchers(
    cfg: Config, stale_after: float = DEFAULT_STALE_AFTER, state_dir: Path | None = None
) -> list[SyncWatcher]:
    """The watchers of every configured task (task_watchers), with the poll timeout, TLS and
    offset clock size of the config."""
    return [w for task in cfg.sync.tasks for w in task_watchers(cfg, task, stale_after, state_dir)]


# --------------------------------------------------------------------------- store


class SyncStore:
    """The newest SyncTaskView per task. put() swaps the whole dict, so readers on other
    threads (the exporter) need no lock."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._views: dict[str, SyncTaskView] = {}
        self._expected: frozenset[str] = frozenset()

    def expect(self, names: Iterable[str]) -> None:
        """Declare the tasks that exist; views of other tasks are dropped (now and later)."""
        with self._lock:
            self._expected = frozenset(names)
            self._views = {
                k: v for k, v in self._views.items() if k.partition("@")[0] in self._expected
            }

    def put(self, view: SyncTaskView) -> None:
        with self._lock:
            # a cluster task's shards report as `<task>@<shard>`
            if view.task.partition("@")[0] not in self._expected:
                return
            views = dict(self._views)
            views[view.task] = view
            self._views = views

    def get(self, name: str) -> SyncTaskView | None:
        return self._views.get(name)

    def all(self) -> list[SyncTaskView]:
        views = self._views
        return [views[k] for k in sorted(views)]

    def ready(self) -> bool:
        """Every expected task has been polled at least once (True when none is expected)."""
        views = self._views
        seen = {k.partition("@")[0] for k in views}
        return all(k in seen for k in self._expected)


async def poll_into(watchers: Sequence[SyncWatcher], store: SyncStore) -> list[SyncTaskView]:
    """Poll every watcher concurrently and put the views into `store` (a scheduler job)."""
    views = list(await asyncio.gather(*(w.poll() for w in watchers)))
    for view in views:
        store.put(view)
    return views
