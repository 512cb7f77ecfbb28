"""Turn one poll cycle's samples into a GroupSnapshot. Pure: no I/O, no clocks read.

Rules (each has a table test):
- byte lag = master offset − follower applied offset, when both are on the same replication
  stream (replid equal); clamped at 0 (the follower may be sampled a moment later).
- offset-clock lag: the follower's offset looked up in the master's OffsetClock.
- heartbeat lag: the heartbeat value read on the follower against HeartbeatHistory.
- readings (lag/trend.py): the follower's applied offset looked up in the offset clock as of
  its answer (poll), and its ACKs as the master's samples time them (ack, lag/acks.py); the
  readings that follow one line form a segment whose least-squares line is the trend.
- best estimate: the trend, as of now (state.LagTrend: every surface evaluates it when it is
  read), while its newest reading is fresh; else the heartbeat when available, else the
  offset clock. Then, when the follower cannot be seen (unreachable, link down, full sync)
  and its master hears no progress from it either, at least the time since it was last
  known current — so a paused or cut-off follower's lag grows with real time, never 0.
- a node listed as a replica that reports role master is no follower: no lag is claimed.
- a follower whose replid differs from the master's (another master, or still syncing) has
  no byte lag (None) — offsets on different streams do not compare.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace

from replwatch.lag.followers import match_line, other_followers
from replwatch.lag.heartbeat import HeartbeatHistory
from replwatch.lag.offset_clock import OffsetClock
from replwatch.lag.trend import Reading, add_reading, fit
from replwatch.observe.info import ClientEntry, ReplicaLine, ReplicationInfo
from replwatch.state import GroupSnapshot, LagTrend, NodeView, ReplicaView

# the trend speaks for the follower while its newest reading is at most this old: readings
# come about twice a second (its polls, its ACKs); older, the follower is not heard from
TREND_FRESH = 2.5
# a poll answered within this is a prompt, direct reading: the ACKs add nothing to it
PROMPT_POLL = 0.1


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
    readings: tuple[Reading, ...] = ()  # the current segment of its lag readings (trend.py)


def _same_label(label: str) -> str:
    return label


def _poll_reading(sample: NodeSample, applied: int | None, clock: OffsetClock) -> Reading | None:
    """The follower's applied offset in the offset clock, as of its answer: a request that
    waited in a saturated link was answered late, not early, so the offset is as of then."""
    if applied is None or not sample.ok or not len(clock):
        return None  # (an empty clock cannot tell when the master was anywhere)
    at = sample.finished
    passed = clock.time_of(applied)
    if passed is None:
        return Reading(at, 0.0, 0.0, "poll")  # it had all the master had at its last sample
    if not passed.exact:
        return None  # older than the clock's table (a new master, a one-shot poll): no time
    bracket = clock.bracket_of(applied)
    half = 0.0 if bracket is None else (bracket[1] - bracket[0]) / 2
    return Reading(at, at - passed.time, half, "poll")


def _readings(
    segment: tuple[Reading, ...],
    acks: Sequence[Reading],
    poll: Reading | None,
    following: bool,
) -> tuple[Reading, ...]:
    """The follower's segment with this cycle's readings added in time order (none while it
    follows another stream: its offsets are not on the master's line)."""
    if not following:
        return ()
    news = sorted((*acks, *(() if poll is None else (poll,))), key=lambda r: r.at)
    for reading in news:
        segment = add_reading(segment, reading)
    return segment


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
    ack_readings: Mapping[str, Sequence[Reading]] | None = None,
) -> tuple[GroupSnapshot, dict[str, ReplicaMemory]]:
    """`map_label`: an announced 'host:port' (a replica's master_host:master_port, a slave
    line's ip:port) → the label of the node replwatch polls there (address mapping).
    `ack_readings`: per follower, the readings its ACKs gave since the last cycle."""
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
            line = match_line(lines_by_node[upstream], label, map_label)
        if line is None and minfo is not None:
            line = match_line(minfo.replicas, label, map_label)

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

        poll = _poll_reading(sample, applied, clock) if current and master.ok else None
        # a prompt direct reading is the best there is; the ACKs (timed to a quarter second)
        # speak when the follower's own answers are slow or do not come
        prompt = poll is not None and sample.finished - sample.started <= PROMPT_POLL
        segment = _readings(
            mem.readings,
            () if prompt else (ack_readings or {}).get(label, ()),
            poll,
            following=(same_stream or not reachable) and master_replid is not None,
        )
        acked = [r.at for r in (ack_readings or {}).get(label, ())]
        if acked and line is not None and line.state == "online":
            # its master hears it make progress (ACKs): current, whatever its own polls say
            current_at = max(current_at or 0.0, max(acked))

        def wall(mono: float) -> float:
            return now_wall - (now_mono - mono)

        best: float | None
        source: str
        trend: LagTrend | None = None
        fitted = fit(segment)
        if fitted is not None and now_mono - fitted.at <= TREND_FRESH:
            trend = LagTrend(wall(fitted.at), fitted.lag, fitted.slope, fitted.lower, fitted.upper)
            best = trend.at_time(now_wall)[0]
            source = "offset_clock" if fitted.kind == "poll" else "ack"
        elif hb_lag is not None:
            best, source = hb_lag, "heartbeat"
        elif offset_lag is not None:
            best, source = offset_lag, "offset_clock"
            if not reachable:
                # the newest offset known (its master's line): no progress is assumed since
                trend = LagTrend(now_wall, offset_lag, 1.0, 0.0, offset_lag)
        else:
            best, source = None, "none"
        seen_at = mem.seen_at if mem.seen_at is not None else sample.at
        if info is not None and not info.is_replica:
            # it answers as a master (promoted, or misconfigured): not a follower, no lag
            best, source, hb_lag, offset_lag, trend, segment = None, "none", None, None, None, ()
        elif not (current or (current_at is not None and current_at > (mem.current_at or 0))):
            # never seen current: at least as old as the time replwatch has known it
            since = current_at if current_at is not None else seen_at
            floor: float | None = max(0.0, now_mono - since)
            if info is not None and info.link_down_since_seconds is not None:
                # a difference of two whole-second unix times: it reads 1 as soon as 0.1 s
                # after the link broke, so only value - 1 is a floor
                floor = max(floor or 0.0, info.link_down_since_seconds - 1.0)
            if floor is not None and (best is None or floor > best):
                best, source = floor, "contact"
                # and it keeps growing with real time until it is heard from again
                trend = LagTrend(now_wall, floor, 1.0, floor, None)

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
                trend=trend,
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
            readings=segment,
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
        others=other_followers(minfo, master.clients, replica_labels, map_label),
    )
    return snapshot, new_memory
