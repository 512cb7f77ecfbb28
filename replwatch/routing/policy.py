"""Read-routing policy: pure functions over snapshots. No I/O, no clocks read.

Per replica a state machine, in rotation <-> out:
- out at once: unreachable, full sync in progress, link down, following another master, lag
  unknown (a hard reason);
- out when lag (best estimate, seconds) or byte lag stays above `trip` for `trip.for`; a lag of
  L seconds proves the replica has been above a threshold T for L - T seconds already (its data
  only moves forward), so that time counts towards `trip.for` too;
- back in only after lag stays at or below `recover` (lower thresholds) for `recover.for`,
  whatever took it out: hysteresis both ways, so lag hovering at a threshold does not flap.

Guards, applied to the result each cycle (they do not change the state machines):
- master unreachable (or no longer a master): the group is *degraded*; reads never go to the
  master; replicas that answer keep serving (possibly stale) because there is nowhere better.
- `min_in_rotation`: at least that many replicas stay serving, least lagged first, as long as
  replicas that are out only for lag exist;
- `max_out_ratio`: at most that share of the replicas is out (hard reasons count first);
  beyond it the least lagged lag-tripped replicas are kept serving.
When no replica serves and the master is up, reads go to the master.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, replace

from replwatch.config import RoutingConfig
from replwatch.state import GroupSnapshot, ReplicaView


@dataclass(frozen=True, slots=True)
class ReplicaRouteState:
    """The state machine of one replica (before guards)."""

    in_rotation: bool = True
    reason: str = "new"
    changed_at: float = 0.0
    over_since: float | None = None  # lag above trip since
    under_since: float | None = None  # lag at or below recover since


@dataclass(frozen=True, slots=True)
class RouteEntry:
    replica: str
    in_rotation: bool  # after guards: what clients should do
    reason: str
    lag_seconds: float | None
    lag_bytes: int | None
    since: float  # when the replica's state machine last changed (wall-clock seconds)
    applied_offset: int | None = None  # for read-your-writes in ReadRouter


@dataclass(frozen=True, slots=True)
class RoutingTable:
    group: str
    master: str
    master_up: bool
    degraded: bool
    reads_on_master: bool
    replicas: tuple[RouteEntry, ...]
    updated_at: float
    master_offset: int | None = None

    def signature(self) -> tuple[object, ...]:
        """What a change of is worth announcing at once."""
        return (
            self.degraded,
            self.reads_on_master,
            tuple((e.replica, e.in_rotation) for e in self.replicas),
        )

    def entry(self, replica: str) -> RouteEntry | None:
        return next((e for e in self.replicas if e.replica == replica), None)

    def to_dict(self) -> dict[str, object]:
        return {
            "group": self.group,
            "master": self.master,
            "master_up": self.master_up,
            "degraded": self.degraded,
            "reads_on_master": self.reads_on_master,
            "master_offset": self.master_offset,
            "read_from": [e.replica for e in self.replicas if e.in_rotation]
            or ([self.master] if self.reads_on_master else []),
            "replicas": [
                {
                    "replica": e.replica,
                    "in_rotation": e.in_rotation,
                    "reason": e.reason,
                    "lag_seconds": e.lag_seconds,
                    "lag_bytes": e.lag_bytes,
                    "since": e.since,
                    "applied_offset": e.applied_offset,
                }
                for e in self.replicas
            ],
            "updated_at": self.updated_at,
        }


def hard_reason(r: ReplicaView) -> str | None:
    """Why a replica must be out at once, or None."""
    if not r.reachable:
        return "unreachable"
    if r.sync_in_progress:
        return "full_sync"
    if not r.link_up:
        return "link_down"
    if not r.following_master:
        return "other_master"
    if r.lag_seconds is None:
        return "lag_unknown"
    return None


def _fmt(value: float) -> str:
    return f"{value:.3g}"


def over_trip(r: ReplicaView, cfg: RoutingConfig) -> str | None:
    t = cfg.trip
    if t.lag_seconds is not None and r.lag_seconds is not None and r.lag_seconds > t.lag_seconds:
        return f"lag {_fmt(r.lag_seconds)}s > {_fmt(t.lag_seconds)}s"
    if t.lag_bytes is not None and r.lag_bytes is not None and r.lag_bytes > t.lag_bytes:
        return f"lag {r.lag_bytes}B > {t.lag_bytes}B"
    return None


def under_recover(r: ReplicaView, cfg: RoutingConfig) -> bool:
    rec, trip = cfg.recover, cfg.trip
    limit_s = rec.lag_seconds if rec.lag_seconds is not None else trip.lag_seconds
    limit_b = rec.lag_bytes if rec.lag_bytes is not None else trip.lag_bytes
    if limit_s is not None and (r.lag_seconds is None or r.lag_seconds > limit_s):
        return False
    return not (limit_b is not None and r.lag_bytes is not None and r.lag_bytes > limit_b)


def step(
    state: ReplicaRouteState, r: ReplicaView, cfg: RoutingConfig, now: float
) -> ReplicaRouteState:
    """Advance one replica's state machine by one observation at time `now`."""
    hard = hard_reason(r)
    if state.in_rotation:
        if hard is not None:
            return ReplicaRouteState(False, hard, now)
        over = over_trip(r, cfg)
        if over is None:
            return replace(state, over_since=None, reason="ok")
        over_since = state.over_since if state.over_since is not None else now
        t = cfg.trip.lag_seconds
        if t is not None and r.lag_seconds is not None and r.lag_seconds > t:
            # a replica whose data is L seconds old now had data at least L - (now - x) old at
            # any earlier moment x (it only moves forward), so it has been above the threshold
            # since now - (L - T) at the latest: `for` counts proven time above it
            over_since = min(over_since, now - (r.lag_seconds - t))
        if now - over_since >= cfg.trip.for_:
            return ReplicaRouteState(False, over, now)
        return replace(state, over_since=over_since, reason=f"ok (over trip: {over})")
    # out of rotation
    if hard is not None:
        return replace(state, reason=hard, under_since=None)
    if not under_recover(r, cfg):
        over = over_trip(r, cfg)
        reason = over or "lag above recover threshold"
        return replace(state, reason=reason, under_since=None)
    under_since = state.under_since if state.under_since is not None else now
    if now - under_since >= cfg.recover.for_:
        return ReplicaRouteState(True, "ok", now)
    return replace(state, under_since=under_since, reason="recovering")


def decide(
    snapshot: GroupSnapshot,
    states: Mapping[str, ReplicaRouteState],
    cfg: RoutingConfig,
    now: float,
) -> tuple[RoutingTable, dict[str, ReplicaRouteState]]:
    """One routing decision for a group. `now` is wall-clock seconds (snapshot.taken_at)."""
    new_states: dict[str, ReplicaRouteState] = {}
    for r in snapshot.replicas:
        prev = states.get(r.label) or ReplicaRouteState(True, "new", now)
        new_states[r.label] = step(prev, r, cfg, now)

    views = {r.label: r for r in snapshot.replicas}
    serving = {label: s.in_rotation for label, s in new_states.items()}
    reasons = {label: s.reason for label, s in new_states.items()}
    master_ok = snapshot.master_up and snapshot.master_role_ok
    degraded = not master_ok

    if degraded:
        # nowhere better to send reads: every replica that answers keeps serving
        for label, r in views.items():
            if r.reachable and not r.sync_in_progress and not serving[label]:
                serving[label] = True
                reasons[label] = f"master down: serving anyway ({reasons[label]})"
    else:
        lag_out = sorted(
            (
                label
                for label, s in new_states.items()
                if not s.in_rotation and hard_reason(views[label]) is None
            ),
            key=lambda label: (views[label].lag_seconds or 0.0, views[label].lag_bytes or 0),
        )
        total = len(views)
        in_count = sum(serving.values())
        hard_out = total - in_count - len(lag_out)
        allowed_out = math.floor(cfg.max_out_ratio * total + 1e-9)
        need = max(
            cfg.min_in_rotation - in_count,
            len(lag_out) - max(0, allowed_out - hard_out),
            0,
        )
        for label in lag_out[:need]:
            serving[label] = True
            reasons[label] = f"kept by guard ({reasons[label]})"

    entries = tuple(
        RouteEntry(
            replica=label,
            in_rotation=serving[label],
            reason=reasons[label],
            lag_seconds=views[label].lag_seconds,
            lag_bytes=views[label].lag_bytes,
            since=new_states[label].changed_at,
            applied_offset=(views[label].applied_offset if views[label].following_master else None),
        )
        for label in views
    )
    table = RoutingTable(
        group=snapshot.name,
        master=snapshot.master,
        master_up=master_ok,
        degraded=degraded,
        reads_on_master=master_ok and not any(serving.values()),
        replicas=entries,
        updated_at=now,
        master_offset=snapshot.master_offset,
    )
    return table, new_states
