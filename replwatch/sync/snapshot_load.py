"""The snapshot stage: RDB events (rdb.py) into the target, in pipelined batches.

Keys go by RESTORE when the target understands the payload, as plain commands otherwise
(commands.py); plain strings come straight from the parser's loop as SET bytes, big
collections chunk by chunk while they are read. Progress goes into the checkpoint (at most
once per PROGRESS_EVERY); a stop request ends the load between batches.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from typing import Any

import hiredis

from replwatch.errors import ProtocolFailure, RedisError
from replwatch.observe.connection import encode_command
from replwatch.sync.cluster_target import ClusterTargetLink
from replwatch.sync.commands import SET_COMMAND as _SET
from replwatch.sync.commands import (
    StreamGap,
    TargetCaps,
    describe_stream_gaps,
    key_writes,
    plain_commands,
    restore_command,
)
from replwatch.sync.fatal import FatalTaskError
from replwatch.sync.own_keys import OWN_PREFIX
from replwatch.sync.rdb import (
    FunctionEntry,
    KeyEntry,
    RdbEnd,
    RdbError,
    RdbHeader,
    RdbModuleError,
    ResizeDb,
    StringRun,
    parse_rdb,
)
from replwatch.sync.reader import RdbPayload
from replwatch.sync.stage import StageContext
from replwatch.sync.writer import OK_REPLY, QUEUED_REPLY, Batch, TargetLink, TargetRejected

log = logging.getLogger("replwatch.sync")

PROGRESS_EVERY = 1.0
# collections with more elements are read from the snapshot chunk by chunk as they are
# written (plain commands), never held whole: memory stays flat whatever the biggest key
STREAM_ELEMENTS_OVER = 20_000
_COLLECTIONS = frozenset(("list", "set", "zset", "hash", "stream"))
# heads of encoded commands that answer +OK: `$3\r\nSET\r\n`, `$7\r\nRESTORE\r\n`
_OK_COMMAND_HEADS = (b"$3\r\nSET\r\n", b"$7\r\nRESTORE\r\n")


def load_snapshot(
    ctx: StageContext, loader: SnapshotLoader, payload: RdbPayload, source_label: str
) -> None:
    """Read the whole snapshot from `payload` into the target through `loader`."""
    task = ctx.task
    events = parse_rdb(
        payload,
        raw_limit=task.big_key_bytes,
        on_module="skip" if task.on_module_key == "skip" else "error",
        keep_string_raw=False,  # strings are written with SET
        skip_decode=loader.restorable,  # values that go by RESTORE are not decoded
        stream_over=STREAM_ELEMENTS_OVER,  # big collections are read while written
        string_sink=loader.string_key,  # plain strings straight to SET bytes
        # … and runs of them formatted in the parser's loop (no filter to ask per key)
        string_run=None if ctx.filter is not None else loader.string_run(),
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
        raise ProtocolFailure(f"bad snapshot from {source_label}: {exc}") from None
    payload.finish()
    loader.flush()


def read_to_end(payload: RdbPayload, stopping: Callable[[], bool]) -> None:
    """snapshot: skip: the snapshot is read to its end, nothing of it written."""
    while True:
        if stopping():
            raise RedisError("stopped during the full sync", reason="stopped")
        try:
            payload.read_some(1 << 20)
        except EOFError:
            break
    payload.finish()


class SnapshotLoader:
    """Applies snapshot keys in pipelined batches (no MULTI: a half-loaded snapshot is
    never resumed, a restart loads it again) and reports progress into the checkpoint.
    A task of a pair wraps every batch in `MULTI … HMSET <checkpoint> … EXEC` instead, so
    the reverse task recognises the snapshot's writes in the target's stream and drops them
    like the stream batches (nothing of a full sync echoes back)."""

    def __init__(
        self, ctx: StageContext, target: TargetLink, caps: TargetCaps, replace: bool
    ) -> None:
        self.ctx = ctx
        self.store = ctx.store
        self.target = target
        self.caps = caps
        self.replace = replace
        self.source_valkey = False
        self.filter = ctx.filter
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
        self.use_restore = ctx.task.write_mode == "auto"
        self.all_ok = True  # the batch being built gets only +OK replies
        self._restorable: dict[int, bool] = {}
        self._versions: dict[int, int] = {}  # RDB version stamped on RESTORE, by type
        self.keys_sent = 0  # in batches sent (keys_loaded: confirmed by the target)
        self.payload: RdbPayload | None = None  # the snapshot being read (progress)
        self.batch_size = ctx.task.batch_size
        self.batch_bytes = ctx.task.batch_bytes
        self.in_multi = ctx.task.pair is not None
        self.grace_ms = round(ctx.task.expire_grace * 1000)
        self.own_keys_skipped = 0  # keys under __replwatch: (own_keys.py): never copied
        self.stream_pending_dropped = 0  # pending entries a target could not take (logged)
        self._mset = not isinstance(target, ClusterTargetLink)

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

    def string_run(self) -> StringRun:
        """Runs of plain strings (rdb.StringRun): one MSET a run (the target runs one
        command for many keys), SET each into a Cluster target (its keys' slots differ)."""
        return StringRun(self._take_run, self.batch_size, mset=self._mset)

    def _take_run(self, db: int, commands: bytes, keys: int) -> int:
        """A run of `keys` plain strings into the batch; how many the next run may hold."""
        if db != self.db:
            self._select(db)
        self.parts.append(commands)
        self.expect += 1 if self._mset else keys
        self.keys_in_batch += keys
        self.size += len(commands)
        if self.keys_in_batch >= self.batch_size or self.size >= self.batch_bytes:
            self.flush()
            # the parser's loop does not come back to the full sync's loop for these keys
            self.tick()
        return max(1, self.batch_size - self.keys_in_batch)

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
        commands = self.store.filtered_counts(self.filtered, self.target_db)
        self.parts.extend(commands)
        self.expect += len(commands)
        self.filtered = {}
        self.all_ok = False

    def tick(self) -> None:
        """Now and then during the snapshot: a stop request ends the session, progress
        goes into the checkpoint (at most once per PROGRESS_EVERY)."""
        if self.ctx.stopping():
            raise RedisError("stopped during the full sync", reason="stopped")
        if self.payload is not None:
            self.maybe_progress(self.payload.loaded)

    def key(self, entry: KeyEntry) -> None:
        if entry.key.startswith(OWN_PREFIX):
            self.own_keys_skipped += 1
            return
        if self.filter is not None and self._filtered_out(entry.db, entry.key):
            return
        if entry.kind == "module" and self.ctx.task.on_module_key == "skip":
            self.skipped += 1
            log.warning(
                "task %s: skipped module key %r in db %d",
                self.ctx.task.name,
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
                f"{self.ctx.task.target.label}: {exc}"
            ) from None
        self._add_key(data, replies, replies == 1 and data.startswith(_OK_COMMAND_HEADS, 4))

    def _stream_gaps_of(self, key: bytes) -> Callable[[Sequence[StreamGap]], None]:
        """What a stream written as plain commands could not carry to this target (pending
        entries with no owner, …): logged once per key, counted in stream_pending_dropped."""

        def report(gaps: Sequence[StreamGap]) -> None:
            self.stream_pending_dropped += sum(gap.pending_dropped for gap in gaps)
            log.warning("task %s: %s", self.ctx.task.name, describe_stream_gaps(key, gaps))

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
                f"{self.ctx.task.target.label}: {exc}"
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
        tail = self.store.snapshot_mark(self.keys_sent, self.db)
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
                    f"target {self.ctx.task.target.label} refused a snapshot write: "
                    f"{str(failed[0])[:200]}"
                )
            self.keys_loaded += keys

        return done

    def _checked(self, keys: int) -> Callable[[list[Any]], None]:
        def done(replies: list[Any]) -> None:
            for reply in replies:
                if isinstance(reply, hiredis.ReplyError):
                    raise TargetRejected(
                        f"target {self.ctx.task.target.label} refused a snapshot write: "
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
        cmds = self.store.snapshot_progress(
            self.keys_sent, self.keys_total, loaded_bytes, self.skipped, self.target_db
        )
        self.target.send(
            b"".join(cmds),
            Batch(len(cmds), self._progress_checked, "progress", prefix=OK_REPLY * len(cmds)),
        )

    def _progress_checked(self, replies: list[Any]) -> None:
        for reply in replies:
            if isinstance(reply, hiredis.ReplyError):
                raise TargetRejected(f"checkpoint write refused: {str(reply)[:200]}")
