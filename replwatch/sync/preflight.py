"""What a sync session checks before it asks its source for anything (the pure parts).

Asking the source for a full sync makes it fork (BGSAVE, or a diskless child). A target that
cannot take the data would refuse it half-way, and a task that retried would make the source
fork again and again while its status looked healthy (issue 17). So every session first
looks at both servers (the reads are in reader.SourceLink / writer.TargetLink, the session
in task.py; the decisions are here, pure, table-tested):

- each side answers PING like a Redis server (an HTTP server does not), and is a data
  server (not a Sentinel; a cluster node only as a cluster target);
- the target is a master: a read-only replica refuses every write, a writable one would be
  wiped by its own master's next full resync;
- when a full sync is what will happen: the source's data (INFO memory
  used_memory_dataset) fits in what the target has free under maxmemory after the flush the
  full sync does (existing_keys / pair rules: snapshot_plan). A target with an eviction
  policy would evict synced keys instead of refusing them: "does not fit" is the same
  refusal there;
- what an earlier attempt learned: a full sync that ran out of memory (or was refused for
  memory) records the maxmemory, policy and the measured need (MemoryShortfall, in the
  checkpoint and the local task report); until the target's maxmemory or policy changes or
  the need fits, a new start is refused before PSYNC (`--afresh` tries anyway).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

from replwatch.observe.info import parse_info
from replwatch.sync.units import format_bytes

# the first byte of every RESP2/RESP3 reply
_RESP_TYPES = frozenset(b"+-:$*_,#!=(%~>|")
_EVICTING = re.compile(r"^(allkeys|volatile)-")
_READONLY = re.compile(r"(?:^|: )READONLY\b")
OOM_TEXT = "OOM command not allowed"

Refusal = Literal["oom", "readonly"]
Plan = Literal["overwrite", "flush", "if_foreign"]


def answers_resp(line: bytes) -> bool:
    """The first line a server sent back looks like a RESP reply (any type)."""
    return bool(line) and line[0] in _RESP_TYPES


def shown_reply(line: bytes, limit: int = 60) -> str:
    """A reply line as it may be quoted in a one-line message (printable ASCII only)."""
    text = "".join(c if " " <= c <= "~" else "?" for c in line[:limit].decode("latin-1"))
    return text + ("…" if len(line) > limit else "")


def not_redis(side: str, label: str, line: bytes) -> str:
    """The message for a node whose answer to PING is not RESP (`side`: source / target)."""
    return f"{side} {label} is not a Redis server (answered '{shown_reply(line)}' to PING)"


@dataclass(frozen=True, slots=True)
class ServerFacts:
    """What INFO server / replication / memory say about a node (None: not known, a
    section refused by an ACL or a field absent)."""

    mode: str | None = None  # redis_mode (server_mode on Valkey 8+): standalone|cluster|sentinel
    role: str | None = None  # master | replica
    master: str | None = None  # host:port of its master (a replica)
    read_only: bool | None = None
    maxmemory: int | None = None  # 0: no limit
    policy: str | None = None  # maxmemory_policy
    used_memory: int | None = None
    dataset: int | None = None  # used_memory_dataset: the data, without the overhead
    uptime: int | None = None  # uptime_in_seconds

    @classmethod
    def parse(cls, *sections: str | None) -> ServerFacts:
        """The facts from the texts of the INFO sections that were read (None: refused)."""
        fields: dict[str, str] = {}
        for text in sections:
            if text:
                fields.update(parse_info(text))
        role = fields.get("role")
        host, port = fields.get("master_host"), fields.get("master_port")
        read_only = fields.get("slave_read_only", fields.get("replica_read_only"))
        return cls(
            mode=fields.get("redis_mode", fields.get("server_mode")),
            role=None if role is None else ("master" if role == "master" else "replica"),
            master=f"{host}:{port}" if host and port else None,
            read_only=None if read_only is None else read_only == "1",
            maxmemory=_int(fields, "maxmemory"),
            policy=fields.get("maxmemory_policy"),
            used_memory=_int(fields, "used_memory"),
            dataset=_int(fields, "used_memory_dataset"),
            uptime=_int(fields, "uptime_in_seconds"),
        )


def _int(fields: Mapping[str, str], name: str) -> int | None:
    value = fields.get(name)
    if value is None or not value.isascii() or not value.isdigit():
        return None
    return int(value)


# --------------------------------------------------------------------------- which server


def source_problem(label: str, facts: ServerFacts) -> str | None:
    """Why this source cannot be replicated from (None: it can)."""
    if facts.mode == "sentinel":
        return (
            f"source {label} is a Redis Sentinel, not a data server: give the source as "
            f"source: {{sentinel: {{addresses: [{label}], master_name: …}}}} to follow the "
            "master it names"
        )
    return None


def target_problem(label: str, facts: ServerFacts, cluster_target: bool) -> str | None:
    """Why the task must not write to this target (None: it may)."""
    if facts.mode == "sentinel":
        return (
            f"target {label} is a Redis Sentinel, not a data server: point the task's target "
            "at a master"
        )
    if facts.mode == "cluster" and not cluster_target:
        return (
            f"target {label} is a Redis Cluster node: give the target as target: {{cluster: "
            f"{{startup_nodes: [{label}]}}}} so every key goes to the master owning its slot"
        )
    if facts.role == "replica":
        of = f" of {facts.master}" if facts.master else ""
        fix = (
            f"point the task's target at a master (or run REPLICAOF NO ONE on {label}), then "
            "start the task again"
        )
        if facts.read_only is False:
            return (
                f"target {label} is a writable replica{of}: its master would overwrite or wipe "
                f"what the task writes (a full resync of the replica flushes it); {fix}"
            )
        return f"target {label} is a read-only replica{of}: it refuses the task's writes; {fix}"
    return None


# --------------------------------------------------------------------------- memory


def snapshot_plan(existing_keys: str, pair: bool, ours_before: bool) -> Plan:
    """What a full sync does to the target before it loads the snapshot: `overwrite` (keys
    stay, the snapshot's replace theirs), `flush` (the target holds this task's earlier
    copy: replaced whole), `if_foreign` (a first full sync: the target's own keys are
    refused or flushed per existing_keys; an empty target is loaded as it is)."""
    if existing_keys == "overwrite":
        return "overwrite"
    if ours_before:
        # a pair's target holds its own live data too: a full sync never flushes it
        return "overwrite" if pair else "flush"
    return "if_foreign"


def free_for_copy(facts: ServerFacts, flushes: bool) -> int | None:
    """Bytes the target has for the copy under maxmemory: after the full sync's flush its
    used memory less its data (`flushes`), else what is free now. None: no limit, or not
    known."""
    if not facts.maxmemory or facts.used_memory is None:
        return None
    used = facts.used_memory
    if flushes:
        if facts.dataset is None:
            return None
        used -= facts.dataset
    return max(0, facts.maxmemory - used)


def _limit(facts: ServerFacts) -> str:
    policy = facts.policy or "policy unknown"
    return f"maxmemory {format_bytes(facts.maxmemory or 0)}, {policy}"


def _evicts(facts: ServerFacts) -> bool:
    return bool(facts.policy and _EVICTING.match(facts.policy))


def memory_problem(
    label: str, facts: ServerFacts, needed: int, flushes: bool, basis: str
) -> str | None:
    """Why the copy plainly does not fit in the target (None: it fits, or nothing says it
    does not). `basis` says where `needed` comes from. Without a flush (overwrite) the keys
    already there may be the very keys the snapshot replaces: they are counted as freed, so
    only a copy that could not fit even then is refused (the rest shows as OOM, if at all)."""
    free = free_for_copy(facts, True)
    if free is None or needed <= free:
        return None
    after = (
        "after the full sync's flush"
        if flushes
        else "even with every key on it replaced (existing_keys: overwrite)"
    )
    evicts = (
        f"; with {facts.policy} it would evict synced keys to make room" if _evicts(facts) else ""
    )
    assert facts.maxmemory is not None
    raise_to = facts.maxmemory + (needed - free)
    return (
        f"target {label} cannot hold the copy ({_limit(facts)}): {format_bytes(free)} free "
        f"{after}, about {format_bytes(needed)} needed ({basis}){evicts}: raise maxmemory on "
        f"{label} to at least {format_bytes(raise_to)} (or free memory there), then start the "
        "task again"
    )


@dataclass(frozen=True, slots=True)
class MemoryShortfall:
    """What a full sync that did not fit learned: the target's maxmemory and policy then,
    and about how much the copy needs (bytes). Kept in the checkpoint (FIELDS) and the
    local task report, so a new start is refused before PSYNC while nothing changed."""

    maxmemory: int
    policy: str
    needed: int

    FIELDS = ("oom_maxmemory", "oom_policy", "oom_needed")

    def fields(self) -> list[Any]:
        """As HSET arguments (field, value, …)."""
        return [*zip(self.FIELDS, (self.maxmemory, self.policy, self.needed), strict=True)]

    def flat(self) -> list[Any]:
        return [item for pair in self.fields() for item in pair]

    def as_dict(self) -> dict[str, Any]:
        return dict(self.fields())

    @classmethod
    def of(cls, data: Mapping[str, Any]) -> MemoryShortfall | None:
        """From a mapping holding FIELDS (None when one is missing or malformed)."""
        maxmemory, policy, needed = (data.get(name) for name in cls.FIELDS)
        try:
            if maxmemory is None or policy is None or needed is None:
                return None
            return cls(int(maxmemory), str(policy), int(needed))
        except (TypeError, ValueError):
            return None


def shortfall_problem(
    label: str, facts: ServerFacts, record: MemoryShortfall, flushes: bool
) -> str | None:
    """Why a new start is refused because of an earlier shortfall (None: something changed:
    maxmemory, the policy, or the copy fits what is free now). A target whose INFO memory
    cannot be read cannot show a change: refused (`--afresh` tries anyway)."""
    if facts.maxmemory is not None and facts.policy is not None:
        if (facts.maxmemory, facts.policy) != (record.maxmemory, record.policy):
            return None
        free = free_for_copy(facts, flushes)
        if free is not None and free >= record.needed:
            return None
    return (
        f"target {label} did not hold the copy in an earlier attempt (maxmemory "
        f"{format_bytes(record.maxmemory)}, {record.policy}; about "
        f"{format_bytes(record.needed)} needed) and its maxmemory and policy have not "
        f"changed: raise maxmemory on {label} (or free memory there), then start the task "
        "again (with --afresh to try anyway)"
    )


def needed_after_oom(
    base: int | None,
    used: int | None,
    keys_loaded: int,
    keys_total: int,
    free_before: int | None,
    source_dataset: int | None,
) -> int:
    """About how much memory the copy needs, learned from a snapshot load that ran out of
    it: the memory the loaded keys took (`used` at the failure − `base` before the load)
    scaled to every key of the snapshot, at least the source's own dataset, and more than
    was free before the load (it did not fit)."""
    candidates = [source_dataset or 0, (free_before or 0) + 1]
    if base is not None and used is not None and 0 < keys_loaded < keys_total:
        candidates.append((used - base) * keys_total // keys_loaded)
    return max(candidates)


def refusal_kind(message: str) -> Refusal | None:
    """The target refused a write because it is out of memory (`oom`) or a read-only
    replica (`readonly`), going by the server's error text inside `message`."""
    if OOM_TEXT in message:
        return "oom"
    if _READONLY.search(message):
        return "readonly"
    return None


def oom_message(
    label: str,
    facts: ServerFacts,
    keys: tuple[int, int] | None,
    needed: int | None,
) -> str:
    """The one line a task stops with when the target ran out of memory: during the
    snapshot (`keys`: loaded, total) or while applying the stream (`keys` None)."""
    limit = _limit(facts) if facts.maxmemory is not None else "maxmemory unknown: INFO refused"
    if keys is None:
        where = "applying the replication stream"
    else:
        loaded, total = keys
        where = (
            f"after {loaded:,} of {total:,} keys of the snapshot"
            if total
            else f"after {loaded:,} keys of the snapshot"
        )
    need = f" (the copy needs about {format_bytes(needed)})" if needed else ""
    return (
        f"target {label} ran out of memory ({limit}) {where}{need}: raise maxmemory on "
        f"{label} (or free memory there), then start the task again"
    )


def evicts(facts: ServerFacts) -> bool:
    """The target may evict keys (a maxmemory and a policy other than noeviction; unknown
    counts as may)."""
    return facts.maxmemory != 0 and facts.policy != "noeviction"


def eviction_message(label: str, facts: ServerFacts, evicted: int) -> str:
    """The one line a task stops with when the target evicted keys while it ran: the copy
    may have lost any of them (a native replica does not evict; a target does)."""
    limit = _limit(facts) if facts.maxmemory is not None else "maxmemory unknown: INFO refused"
    return (
        f"target {label} evicted {evicted:,} keys while the task ran ({limit}): the copy is "
        f"incomplete; raise maxmemory on {label} (or set maxmemory-policy noeviction there), "
        "then start the task again (it begins with a full sync)"
    )


def readonly_message(label: str, facts: ServerFacts) -> str:
    """The one line a task stops with when the target refused a write as a replica."""
    of = f" of {facts.master}" if facts.master else ""
    return (
        f"target {label} refused a write: it is a read-only replica{of} now (READONLY): "
        f"point the task's target at a master (or run REPLICAOF NO ONE on {label}), then "
        "start the task again"
    )
