"""What a sync task is: one source → target copy with its batching, reconnect, TTL, HA and
fencing settings, and what it copies (filters: keys, commands, source dbs; db_map). The
checks that span a task's fields (a pair never flushes, a cluster target has db 0 only, two
source dbs never share a target db) live with it."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    Field,
    ModelWrapValidatorHandler,
    ValidatorFunctionWrapHandler,
    field_validator,
    model_validator,
)
from pydantic_core import PydanticCustomError

from replwatch.config.base import Check, StrictModel, run_checks, unique_names
from replwatch.config.endpoints import Auth, RedisEndpoint, TLSConfig
from replwatch.config.sync_endpoints import ClusterTarget, SyncSource, SyncTarget
from replwatch.config.units import Duration, Size

# commands that carry the stream itself: filtering them would break how it is applied
_STREAM_CONTROL = frozenset(("MULTI", "EXEC", "SELECT", "PING", "REPLCONF"))


def _regex(value: str) -> str:
    """A key regex (matched with re.search against the key's bytes)."""
    try:
        re.compile(value.encode())
    except re.error as exc:
        raise PydanticCustomError("regex", "invalid regex: {error}", {"error": str(exc)}) from None
    return value


def _command_name(value: str) -> str:
    name = value.strip().upper()
    if not re.fullmatch(r"[A-Z0-9_|.-]+", name):
        raise PydanticCustomError("command", "must be a command name like SET or FLUSHALL")
    if name in _STREAM_CONTROL:
        raise PydanticCustomError(
            "command",
            "{name} is part of how the stream is applied and cannot be filtered",
            {"name": name},
        )
    return name


RegexText = Annotated[str, AfterValidator(_regex)]
CommandName = Annotated[str, AfterValidator(_command_name)]
DbNumber = Annotated[int, Field(ge=0)]


class KeyFilterConfig(StrictModel):
    """A key passes when it matches an allow rule (or there are none) and no deny rule."""

    allow_prefixes: list[str] = Field(default_factory=list)
    deny_prefixes: list[str] = Field(default_factory=list)
    allow_regex: list[RegexText] = Field(default_factory=list)
    deny_regex: list[RegexText] = Field(default_factory=list)


class CommandFilterConfig(StrictModel):
    """Command names, case-insensitive: a command passes when it is in `allow` (or `allow`
    is empty) and not in `deny`."""

    allow: list[CommandName] = Field(default_factory=list)
    deny: list[CommandName] = Field(default_factory=list)


class DbFilterConfig(StrictModel):
    allow: list[DbNumber] | None = None  # only these source dbs; None: all


class SyncFilters(StrictModel):
    """What a sync task copies (replwatch/sync/filters.py applies it)."""

    keys: KeyFilterConfig = KeyFilterConfig()
    commands: CommandFilterConfig = CommandFilterConfig()
    dbs: DbFilterConfig = DbFilterConfig()


class SyncTask(StrictModel):
    """One source → target copy (replwatch/sync). The checkpoint hash on the target
    (`__replwatch:sync:<name>`) is the task's position and public record."""

    name: str
    source: SyncSource
    target: SyncTarget
    # the reverse task of a bidirectional pair: the source's transactions that carry that
    # task's checkpoint write are its echoes and are dropped whole (docs/syncer.md "Bidirectional
    # sync (pairs)")
    pair: str | None = None
    # the first full sync's snapshot: load it into the target, or skip it (read from the
    # source, nothing written; only the stream after it is applied) — the second task of a
    # pair brought up on a source that already holds a copy of the target's data
    snapshot: Literal["load", "skip"] = "load"
    # start with a full sync even when the checkpoint could be continued
    afresh: bool = False
    # a first full sync into a target that already holds keys: refuse (default), flush the
    # target first, or overwrite (keys of the source replace, other keys stay)
    existing_keys: Literal["refuse", "flush", "overwrite"] = "refuse"
    # a key of a module type in the snapshot: fail the task, or skip it (counted)
    on_module_key: Literal["fail", "skip"] = "fail"
    # commands per MULTI batch, and bytes: whichever is reached first closes a batch
    batch_size: int = Field(default=2000, ge=1, le=1_000_000)
    batch_bytes: Size = 4 * 1024 * 1024
    # full sync: keys whose serialized value is larger are written as several commands
    # instead of one RESTORE (memory and proto-max-bulk-len stay bounded)
    big_key_bytes: Size = 16 * 1024 * 1024
    # how the full sync writes keys: RESTORE when the target accepts the payload, else
    # plain commands (auto); or always plain commands
    write_mode: Literal["auto", "commands"] = "auto"
    reconnect_min: Duration = 1.0
    reconnect_max: Duration = 30.0
    # the stream: no byte from the source for this long ends the session (reconnect), like a
    # replica's repl-timeout; keep it above the source's repl-ping-replica-period (10s)
    source_timeout: Duration = 60.0
    # keys with a TTL live this much longer on the target than on the source: the target
    # never expires a key on its own clock before the source's DEL (or a PERSIST, a new
    # EXPIRE) reaches it through the stream, as long as the task is less than this behind.
    # 0: TTLs exactly as on the source (a key persisted near its expiry may then be lost)
    expire_grace: Duration = 300.0
    tls: TLSConfig | None = None  # over the top-level tls, for the source and the target
    # credentials of the source / the target when their URL (or block) has none; with
    # password_file (read at start and at reload, never through the admin API)
    source_auth: Auth | None = None
    target_auth: Auth | None = None
    # high availability: several daemons may run this task; one holds a lease in the
    # target (fencing token checked with every write), the others wait and take over when
    # it lapses. `lease`: how long a holder that stopped renewing keeps it
    ha: bool = False
    lease: Duration = 10.0
    # what is copied (keys, commands, source dbs) and where: source db -> target db
    # (unmapped dbs keep their number); see docs/syncer.md "Filters and db mapping"
    filters: SyncFilters | None = None
    db_map: dict[DbNumber, DbNumber] = Field(default_factory=dict)

    @field_validator("name")
    @classmethod
    def _name(cls, v: str) -> str:
        if not re.fullmatch(r"[A-Za-z0-9_.-]+", v):
            raise PydanticCustomError("name", "must be letters, digits, _ . - only")
        return v

    @field_validator("batch_bytes", "big_key_bytes")
    @classmethod
    def _positive_size(cls, v: int) -> int:
        if v < 1024:
            raise PydanticCustomError("size", "must be at least 1kb")
        return v

    @model_validator(mode="wrap")
    @classmethod
    def _checks(cls, data: Any, handler: ModelWrapValidatorHandler[SyncTask]) -> SyncTask:
        return run_checks(cls, data, handler, _TASK_CHECKS)


# The checks that span a task's fields, each reported on its own (every problem in one pass;
# a check reading a field that failed is skipped: see run_checks).


def _not_itself(task: SyncTask) -> None:
    source, target = task.source, task.target
    if isinstance(source, RedisEndpoint) and (source.host, source.port, source.db) == (
        target.host,
        target.port,
        target.db,
    ):
        raise PydanticCustomError("same", "target: must not be the source itself")


def _source_timeout(task: SyncTask) -> None:
    if task.source_timeout < 1.0:
        raise PydanticCustomError("source_timeout", "source_timeout: must be at least 1s")


def _lease(task: SyncTask) -> None:
    if task.lease < 1.0:
        raise PydanticCustomError("lease", "lease: must be at least 1s")


def _reconnect_min(task: SyncTask) -> None:
    if task.reconnect_min <= 0:
        raise PydanticCustomError(
            "reconnect", "reconnect_min: must be above 0 (0 would reconnect in a busy loop)"
        )


def _reconnect_order(task: SyncTask) -> None:
    if task.reconnect_max < task.reconnect_min:
        raise PydanticCustomError("reconnect", "reconnect_max: must not be less than reconnect_min")


def _cluster_db_map(task: SyncTask) -> None:
    """A cluster target has database 0 only."""
    mapped = {t for t in task.db_map.values() if t != 0}
    if isinstance(task.target, ClusterTarget) and mapped:
        raise PydanticCustomError(
            "dbmap",
            "db_map: a cluster target has database 0 only; map to 0 (got {dbs})",
            {"dbs": ", ".join(str(d) for d in sorted(mapped))},
        )


def _cluster_pair(task: SyncTask) -> None:
    """A pair's loop guard needs the checkpoint inside every transaction, which a cluster
    cannot do across slots."""
    if isinstance(task.target, ClusterTarget) and task.pair is not None:
        raise PydanticCustomError(
            "dbmap", "pair: a bidirectional pair cannot have a cluster target"
        )


def _cluster_ha(task: SyncTask) -> None:
    if isinstance(task.target, ClusterTarget) and task.ha:
        raise PydanticCustomError(
            "dbmap",
            "ha: a task with a cluster target cannot be fenced (its batches span many "
            "slots, the lease sits in one); run it in one daemon",
        )


def _db_map_one_to_one(task: SyncTask) -> None:
    """Two copied source dbs must not land in one target db (their keys would mix, and
    FLUSHDB/SWAPDB of one would hit the other); an unmapped db keeps its number. (A cluster
    target mapped elsewhere than 0 is _cluster_db_map's problem.)"""
    if isinstance(task.target, ClusterTarget) and any(t != 0 for t in task.db_map.values()):
        return
    allowed = task.filters.dbs.allow if task.filters is not None else None
    copied = set(allowed) if allowed is not None else None
    seen: dict[int, int] = {}
    sources = set(task.db_map) | {t for t in task.db_map.values() if t not in task.db_map}
    for source in sorted(sources):
        if copied is not None and source not in copied:
            continue
        target = task.db_map.get(source, source)
        if target in seen:
            raise PydanticCustomError(
                "dbmap",
                "db_map: source dbs {a} and {b} would both go to target db {t} (an "
                "unmapped db keeps its number; map it elsewhere or leave it out with "
                "filters.dbs.allow)",
                {"a": seen[target], "b": source, "t": target},
            )
        seen[target] = source


def _pair_never_flushes(task: SyncTask) -> None:
    if task.pair is not None and task.existing_keys == "flush":
        # the FLUSHALL would reach the reverse task's stream and wipe the other side too
        raise PydanticCustomError(
            "pair_flush",
            "existing_keys: flush cannot be used with pair (a pair task never flushes "
            "its target: the flush would be copied back and wipe the other side); use "
            "refuse or overwrite",
        )


def _pair_not_itself(task: SyncTask) -> None:
    if task.pair is not None and task.pair == task.name:
        raise PydanticCustomError("pair_self", "pair: must name the reverse task, not itself")


_TASK_CHECKS: tuple[Check[SyncTask], ...] = (
    _not_itself,
    _source_timeout,
    _lease,
    _reconnect_min,
    _reconnect_order,
    _cluster_db_map,
    _cluster_pair,
    _cluster_ha,
    _db_map_one_to_one,
    _pair_never_flushes,
    _pair_not_itself,
)


class SyncConfig(StrictModel):
    tasks: list[SyncTask] = Field(default_factory=list)
    # where `replwatch run` keeps the tasks created through the admin API and which tasks are
    # stopped (replwatch/tasks/task_state.py); relative paths are relative to the config
    # file's directory; default: <config dir>/replwatch-state
    state_dir: Path | None = None

    @field_validator("tasks", mode="wrap")
    @classmethod
    def _unique(cls, value: Any, handler: ValidatorFunctionWrapHandler) -> Any:
        return unique_names(value, handler, "task")

    def task(self, name: str) -> SyncTask | None:
        return next((t for t in self.tasks if t.name == name), None)
