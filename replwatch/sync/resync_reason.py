"""Why the source answered +FULLRESYNC when the task asked to continue (pure).

A full resync costs the source a fork and the target a reload; an operator needs to know
which of the source's rules refused the position, and what to change. Before PSYNC the task
reads the source's INFO replication (and INFO server's uptime) on the replication connection;
the source decides (redis src/replication.c, masterTryPartialResynchronization) roughly so:

1. the asked replid is neither its replid nor its replid2 (or it is replid2 but the offset
   is past second_repl_offset, where the histories part): another history;
2. it has no backlog, or the asked offset is before the backlog's first byte or past its
   end: the backlog does not hold it.

full_resync_reason says which, with the numbers (the backlog's range and size, how far
behind the task was), in one line without the source's password.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from replwatch.observe.info import parse_info
from replwatch.sync.units import format_bytes


@dataclass(frozen=True, slots=True)
class SourceHistory:
    """The replication history a source describes in INFO replication / server."""

    replid: str
    replid2: str = ""
    offset: int = 0  # master_repl_offset
    second_offset: int = -1  # second_repl_offset: replid2 is valid below it
    backlog_active: bool = True
    backlog_first: int = 0  # repl_backlog_first_byte_offset
    backlog_histlen: int = 0
    backlog_size: int = 0
    uptime: int | None = None  # uptime_in_seconds

    @classmethod
    def parse(cls, replication: str | None, server: str | None = None) -> SourceHistory | None:
        """From INFO replication (and server) texts; None without a master_replid."""
        if not replication:
            return None
        fields = parse_info(replication)
        if server:
            fields.update(parse_info(server))
        replid = fields.get("master_replid")
        if not replid:
            return None
        return cls(
            replid=replid,
            replid2=fields.get("master_replid2", ""),
            offset=_int(fields, "master_repl_offset", 0),
            second_offset=_int(fields, "second_repl_offset", -1),
            backlog_active=fields.get("repl_backlog_active", "1") == "1",
            backlog_first=_int(fields, "repl_backlog_first_byte_offset", 0),
            backlog_histlen=_int(fields, "repl_backlog_histlen", 0),
            backlog_size=_int(fields, "repl_backlog_size", 0),
            uptime=_int(fields, "uptime_in_seconds", -1) if "uptime_in_seconds" in fields else None,
        )


def _int(fields: Mapping[str, str], name: str, default: int) -> int:
    try:
        return int(fields.get(name, default))
    except ValueError:
        return default


def _short(replid: str) -> str:
    return replid[:12] + "…" if len(replid) > 12 else replid


def full_resync_reason(
    source: str,
    replid: str,
    offset: int,
    history: SourceHistory | None,
    answered_replid: str,
    checkpoint_age: float | None = None,
) -> str:
    """Why `source` answered +FULLRESYNC <answered_replid> to a request to continue after
    `offset` of `replid` (the checkpoint's position), given what its INFO said just before
    (`history`, None when INFO was refused); `checkpoint_age`: seconds since the task last
    wrote its checkpoint (to tell a restart of the source)."""
    asked = f"offset {offset:,} of replid {_short(replid)}"
    if history is None:
        return (
            f"the source {source} refused to continue after {asked} (why is not known: it "
            "refused INFO replication to the task's user)"
        )
    wanted = offset + 1  # PSYNC asks for the first byte it does not have
    other_history = replid != history.replid and (
        replid != history.replid2 or wanted > history.second_offset
    )
    if other_history:
        if replid == history.replid2:
            return (
                f"the source {source} switched to a new replication history at offset "
                f"{history.second_offset - 1:,} (a failover: replid {_short(history.replid)}), "
                f"and the copy is at {asked}, past that point: it holds writes of the old "
                "master that the new one never had"
            )
        if (
            history.uptime is not None
            and checkpoint_age is not None
            and history.uptime < checkpoint_age
        ):
            return (
                f"the source {source} restarted {history.uptime}s ago with a new replication "
                f"history (replid {_short(history.replid)}, offset {history.offset:,}; the "
                f"copy is at {asked}): a restart without persistence, or from a snapshot of "
                "another history"
            )
        return (
            f"the source {source} is on another replication history (replid "
            f"{_short(history.replid)}, offset {history.offset:,}; the copy is at {asked}): "
            "it restarted without persistence, a failover promoted a node beyond the shared "
            "history, or another server answers at that address"
        )
    if not history.backlog_active:
        return (
            f"the source {source} has no replication backlog to continue from (the copy is at "
            f"{asked}): it had no replica for repl-backlog-ttl, or since it started"
        )
    first = history.backlog_first
    end = first + history.backlog_histlen  # the backlog holds [first, end)
    size = format_bytes(history.backlog_size) if history.backlog_size else "unknown"
    if wanted < first:
        lost = first - wanted
        return (
            f"the source's backlog no longer holds the copy's position: the task asked to "
            f"continue after {asked}, the backlog of {source} holds offsets {first:,}–"
            f"{max(first, end - 1):,} (repl-backlog-size {size}), {format_bytes(lost)} of "
            f"writes are gone from it: raise repl-backlog-size on {source} above what it "
            "takes in writes while the task is behind or down"
        )
    if wanted > end:
        return (
            f"the copy is ahead of the source {source}: it is at {asked}, the source only at "
            f"offset {history.offset:,}: the source lost writes the copy has (a restart from "
            "an older snapshot, or a failover to a replica that was behind)"
        )
    answered = (
        f" (it answered with replid {_short(answered_replid)})"
        if answered_replid != history.replid
        else ""
    )
    return (
        f"the source {source} refused to continue after {asked} although its INFO just before "
        f"held that position (backlog {first:,}–{max(first, end - 1):,}, repl-backlog-size "
        f"{size}){answered}: its backlog or history changed in between"
    )
