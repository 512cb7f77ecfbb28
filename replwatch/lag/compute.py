"""Turn one poll cycle's samples into a GroupSnapshot. Pure: no I/O, no clocks read.

Rules (each has a table test):
- byte lag = master offset − follower applied offset, when both are on the same replication
  stream (replid equal); clamped at 0 (the follower may be sampled a moment later).
- offset-clock lag: the follower's offset looked up in the master's OffsetClock.
- heartbeat lag: the heartbeat value read on the follower against HeartbeatHistory.
- best estimate: heartbeat when available, else the offset clock; then, when the follower
  cannot be seen (unreachable, link down, full sync), at least the time since it was last
  known current — so a paused or cut-off follower's lag grows with real time and is never 0.
- a node listed as a replica that reports role master is no follower: no lag is claimed.
- a follower whose replid differs from the master's (another master, or still syncing) has
  no byte lag (None) — offsets on different streams do not compare.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace

from replwatch.lag.heartbeat import HeartbeatHistory
from replwatch.lag.offset_clock import OffsetClock
from replwatch.observe.info import ClientEntry, ReplicaLine, ReplicationInfo
from replwatch.state import GroupSnapshot, NodeView, ReplicaView


@dataclass(frozen=True, slots=True)
class NodeSample:
    """One node's answers in one cycle (or the error that stopped them)."""

    label: str
    info: ReplicationInfo | None
    heartbeat: float | None = None  # heartbeat value read on the node (master seconds)
    clients: tuple[ClientEntry, ...] | None = None  # CLIENT LIST TYPE replica / master
    output_buffer_limit: int | None = None
    error_reason: str | None = None
    error_message: str | None = None
    started: float = 0.0  # monotonic
    finished: float = 0.0

    @property
    def ok(self) -> bool:
        return self.info is not None

    @property
    def at(self) -> float:
        return (self.started + self.finished) / 2


@dataclass(frozen=True, slots=True)
class ReplicaMemory:
    """What is remembered about a follower between cycles."""

    offset: int | None = None
    replid: str | None = None
    heartbeat: float | None = None
    current_at: float | None = None  # monotonic time it was last seen current (link up)
    contact_at: float | None = None  # monotonic time of the last successful poll
    seen_at: float | None = None  # monotonic time replwatch first polled it (or tried)


def _same_label(label: str) -> str:
    return label


def _match_line(
    lines: Sequence[ReplicaLine], label: str, map_label: Callable[[str], str] = _same_label
) -> ReplicaLine | None:
    for line in lines:
        if map_label(line.address) == label:
            return line
    _host, _, port = label.rpartition(":")
    by_port = [ln for ln in lines if str(ln.port) == port]
    if len(by_port) == 1:
        return by_port[0]
    return None


def _upstream_label(info: ReplicationInfo) -> str | None:
    if info.master_host is None or info.master_port is None:
        return None
    host = f"[{info.master_host}]" if ":" in info.master_host else info.master_host
    return f"{host}:{info.master_port}"


def _link_local_address(sample: NodeSample) -> str | None:
    """The replica's own address on its link to the master (CLIENT LIST TYPE master laddr)."""
    if not sample.clients:
        return None
    for entry in sample.clients:
        if "M" in entry.flags:
            return entry.laddr or None
    return None


def compute_group(
    *,
    name: str,
    master_label: str,
    replica_labels: Sequence[str],
    discovered: frozenset[str],
    master: NodeSample,
    replicas: Mapping[str, NodeSample],
    clock: OffsetClock,
    heartbeat: HeartbeatHistory | None,
    memory: Mapping[str, ReplicaMemory],
    now_mono: float,
    now_wall: float,
    cycle: int,
    heartbeat_ok: bool | None = None,
    heartbeat_error: str | None = None,
    map_label: Callable[[str], str] = _same_label,
) -> tuple[GroupSnapshot, dict[str, ReplicaMemory]]:
    """`map_label`: an announced 'host:port' (a replica's master_host:master_port, a slave
    line's ip:port) → the label of the node replwatch polls there (address mapping)."""
    minfo = master.info
    master_role_ok = minfo is not None and not minfo.is_replica
    master_offset = minfo.master_repl_offset if minfo is not None else None
    master_replid = minfo.replid if minfo is not None else None
    backlog = minfo.backlog_size if minfo is not None else None

    # who reports ACK age / acked offset for whom: every node's slave lines
    lines_by_node: dict[str, tuple[ReplicaLine, ...]] = {}
    if minfo is not None:
        lines_by_node[master_label] = minfo.replicas
    for label, sample in replicas.items():
        if sample.info is not None:
            lines_by_node[label] = sample.info.replicas

    # output buffers: the master's CLIENT LIST TYPE replica keyed by remote address
    omem_by_addr: dict[str, int] = {}
    if master.clients:
        for entry in master.clients:
            omem_by_addr[entry.addr] = entry.omem

    nodes: list[NodeView] = [
        NodeView(
            label=master_label,
            configured_role="master",
            role=None if minfo is None else minfo.role,
            up=minfo is not None,
            error_reason=master.error_reason,
            error_message=master.error_message,
            poll_seconds=max(0.0, master.finished - master.started),
            repl_offset=master_offset,
            replid=master_replid,
            backlog_size=backlog,
        )
    ]
    replica_set = frozenset(replica_labels)
    views: list[ReplicaView] = []
    new_memory: dict[str, ReplicaMemory] = {}

    for label in replica_labels:
        sample = replicas.get(label) or NodeSample(label=label, info=None, error_reason="skipped")
        info = sample.info
        mem = memory.get(label, ReplicaMemory())
        nodes.append(
            NodeView(
                label=label,
                configured_role="replica",
                role=None if info is None else info.role,
                up=info is not None,
                error_reason=sample.error_reason,
                error_message=sample.error_message,
                poll_seconds=max(0.0, sample.finished - sample.started),
                repl_offset=None if info is None else info.master_repl_offset,
                replid=None if info is None else info.replid,
                backlog_size=None if info is None else info.backlog_size,
                discovered=label in discovered,
            )
        )
        upstream = _upstream_label(info) if info is not None else None
        if upstream is not None:
            upstream = map_label(upstream)
        # chained: replicates from another replica of the group (a proxy or NAT address
        # that is not a known node is not a chain)
        chained = upstream is not None and upstream in replica_set
        # the line that the upstream (or, failing that, the master) keeps for this follower
        line = None
        if upstream is not None and upstream in lines_by_node:
            line = _match_line(lines_by_node[upstream], label, map_label)
        if line is None and minfo is not None:
            line = _match_line(minfo.replicas, label, map_label)

        reachable = info is not None and info.is_replica
        link_up = bool(reachable and info is not None and info.link_up)
        syncing = bool(reachable and info is not None and info.sync_in_progress)
        same_stream = bool(
            reachable
            and info is not None
            and master_replid is not None
            and info.replid == master_replid
        )

        applied: int | None = None
        read: int | None = None
        if info is not None and reachable:
            applied = info.applied_offset
            read = info.read_offset
        # follower unreachable: what the master last heard (ACKed offset) or what we saw last
        known_offset = applied if same_stream else None
        if known_offset is None and not reachable:
            candidates = []
            if mem.offset is not None and mem.replid == master_replid:
                candidates.append(mem.offset)
            if line is not None and master_replid is not None:
                candidates.append(line.offset)
            known_offset = max(candidates) if candidates else None

        lag_bytes: int | None = None
        if master_offset is not None and known_offset is not None:
            lag_bytes = max(0, master_offset - known_offset)

        when = sample.at if reachable else now_mono
        offset_lag: float | None = None
        offset_exact = True
        if known_offset is not None and master.ok:
            offset_lag, offset_exact = clock.lag_of(known_offset, when)

        hb_seen = sample.heartbeat if reachable else mem.heartbeat
        hb_lag: float | None = None
        if heartbeat is not None and hb_seen is not None:
            # as of the reply: the GET may have waited behind the replication stream on a
            # starved link (the follower was read late, not early), so the reply time bounds
            # the error upward by the round trip instead of hiding up to half of it
            mono = sample.finished if reachable else now_mono
            hb_lag = heartbeat.lag_of(hb_seen, mono, now_wall - (now_mono - mono))

        current = reachable and link_up and not syncing and same_stream
        current_at = mem.current_at
        if current:
            current_at = sample.at

        best: float | None
        source: str
        if hb_lag is not None:
            best, source = hb_lag, "heartbeat"
        elif offset_lag is not None:
            best, source = offset_lag, "offset_clock"
        else:
            best, source = None, "none"
        seen_at = mem.seen_at if mem.seen_at is not None else sample.at
        if info is not None and not info.is_replica:
            # it answers as a master (promoted, or misconfigured): not a follower, no lag
            best, source, hb_lag, offset_lag = None, "none", None, None
        elif not current:
            # never seen current: at least as old as the time replwatch has known it
            since = current_at if current_at is not None else seen_at
            floor: float | None = max(0.0, now_mono - since)
            if info is not None and info.link_down_since_seconds is not None:
                # a difference of two whole-second unix times: it reads 1 as soon as 0.1 s
                # after the link broke, so only value - 1 is a floor
                floor = max(floor or 0.0, info.link_down_since_seconds - 1.0)
            if floor is not None and (best is None or floor > best):
                best, source = floor, "contact"

        ratio = None
        if lag_bytes is not None and backlog:
            ratio = lag_bytes / backlog

        omem: int | None = None
        local = _link_local_address(sample)
        if local is not None and local in omem_by_addr:
            omem = omem_by_addr[local]

        contact_at = sample.at if info is not None else mem.contact_at
        views.append(
            ReplicaView(
                label=label,
                upstream=upstream,
                reachable=reachable,
                link_up=link_up,
                sync_in_progress=syncing,
                following_master=same_stream,
                chained=chained,
                applied_offset=applied,
                read_offset=read,
                lag_bytes=lag_bytes,
                lag_seconds=best,
                lag_source=source,
                heartbeat_lag_seconds=hb_lag,
                offset_lag_seconds=offset_lag,
                offset_lag_exact=offset_exact,
                ack_age_seconds=line.ack_age if line is not None else None,
                link_down_seconds=None if info is None else info.link_down_since_seconds,
                backlog_usage_ratio=ratio,
                output_buffer_bytes=omem,
                output_buffer_limit_bytes=master.output_buffer_limit if omem is not None else None,
                seconds_since_contact=(
                    None if contact_at is None else max(0.0, now_mono - contact_at)
                ),
            )
        )
        new_memory[label] = replace(
            mem,
            offset=known_offset if known_offset is not None else mem.offset,
            replid=master_replid if known_offset is not None else mem.replid,
            heartbeat=hb_seen if hb_seen is not None else mem.heartbeat,
            current_at=current_at,
            contact_at=contact_at,
            seen_at=seen_at,
        )

    started = min([master.started] + [s.started for s in replicas.values()])
    finished = max([master.finished] + [s.finished for s in replicas.values()])
    snapshot = GroupSnapshot(
        name=name,
        master=master_label,
        master_up=minfo is not None,
        master_role_ok=master_role_ok,
        master_offset=master_offset,
        master_replid=master_replid,
        backlog_size=backlog,
        nodes=tuple(nodes),
        replicas=tuple(views),
        taken_at=now_wall,
        poll_seconds=max(0.0, finished - started),
        cycle=cycle,
        offset_resets=clock.resets,
        heartbeat_enabled=heartbeat is not None,
        heartbeat_ok=heartbeat_ok,
        heartbeat_error=heartbeat_error,
    )
    return snapshot, new_memory
