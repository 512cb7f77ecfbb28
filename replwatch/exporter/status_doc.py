"""The status page's data (`GET /status.json`): every group with its master and replicas
(time lag by every estimate, byte lag, backlog risk, link, routing state and reason, the last
WAIT probe, the recent lag for a chart) and every sync task, worst first. Pure: built from the
stores' values and `now`; no secret can reach it (views carry labels, never URLs).

Severity, per replica and per group: "bad" (cannot be read from: unreachable, link down,
full sync, out of rotation, or the master is down), "warn" (in rotation but lagging by a
second or more, or the backlog is half used, or the last WAIT probe failed), "ok". A group
names its reasons (group_reasons: "master down", "1 replica out of rotation", "WAIT timeout
1/2"), each with its own severity; the group's severity is the worst of them.

Lag is as of `now` (state.lag_reading, what `replwatch status` prints too): a replica that
cannot be seen reads as a lower bound (`lag_at_least`) or unknown (null), never 0. Followers
of the master that are none of the group's replicas (a replwatch sync task, by its task
name) are listed under `others`, and the WAIT probe says how many of its acknowledgements
they could account for (wait_accounting).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from replwatch.lag.history import LagSeries
from replwatch.observe.probe import ProbeResult
from replwatch.routing.policy import RoutingTable
from replwatch.state import (
    GroupSnapshot,
    OtherFollower,
    ReplicaView,
    lag_reading,
    link_state,
)
from replwatch.tasks.watch import SyncTaskView

SEVERITY_ORDER = {"bad": 0, "warn": 1, "ok": 2}
# a replica's problem in a group's reasons, by its link state
LINK_PROBLEMS = {
    "unreachable": "unreachable",
    "down": "with link down",
    "full-sync": "in full sync",
    "other-master": "following another master",
}
WARN_LAG_SECONDS = 1.0
WARN_BACKLOG_RATIO = 0.5
BAD_BACKLOG_RATIO = 0.9


@dataclass(frozen=True)
class StatusSources:
    """What the document is built from, as the daemon holds it (each a callable returning
    the current values, read on the HTTP thread)."""

    snapshots: Callable[[], Sequence[GroupSnapshot]]
    routing: Callable[[str], RoutingTable | None]
    probes: Callable[[], Mapping[str, ProbeResult]]
    sync: Callable[[], Sequence[SyncTaskView]]
    history: Callable[[str], Mapping[str, LagSeries]]
    poll_interval: float
    history_window: float
    version: str


def backlog_risk(ratio: float | None) -> str | None:
    if ratio is None:
        return None
    if ratio >= BAD_BACKLOG_RATIO:
        return "bad"
    if ratio >= WARN_BACKLOG_RATIO:
        return "warn"
    return "ok"


def replica_severity(
    link: str, in_rotation: bool | None, lag: float | None, risk: str | None
) -> str:
    if link != "up" or in_rotation is False or risk == "bad":
        return "bad"
    if (lag is not None and lag >= WARN_LAG_SECONDS) or risk == "warn":
        return "warn"
    return "ok"


def _round(value: float | None, digits: int = 3) -> float | None:
    return None if value is None else round(value, digits)


def plural(n: int, word: str, words: str | None = None) -> str:
    return f"{n} {word if n == 1 else (words or word + 's')}"


def history_doc(series: LagSeries | None) -> dict[str, Any] | None:
    """The chart's data, compact (a few hundred bytes per replica, sent every poll):
    bucket i starts at start + i × step; lag seconds with 2 decimals, null where unknown."""
    if series is None:
        return None
    return {
        "start": round(series.start, 3),
        "step": series.step,
        "lag": [None if v is None else round(v, 2) for v in series.values],
    }


def replica_doc(
    r: ReplicaView, table: RoutingTable | None, series: LagSeries | None, now: float
) -> dict[str, Any]:
    entry = table.entry(r.label) if table is not None else None
    link = link_state(r)
    risk = backlog_risk(r.backlog_usage_ratio)
    in_rotation = entry.in_rotation if entry is not None else None
    reading = lag_reading(r, now)
    return {
        "label": r.label,
        "upstream": r.upstream,
        "chained": r.chained,
        "link": link,
        "lag_seconds": _round(reading.seconds),
        "lag_at_least": reading.at_least,
        "lag_lower_seconds": _round(reading.lower),
        "lag_upper_seconds": _round(reading.upper),
        "lag_source": r.lag_source,
        "heartbeat_lag_seconds": _round(r.heartbeat_lag_seconds),
        "offset_lag_seconds": _round(r.offset_lag_seconds),
        "offset_lag_exact": r.offset_lag_exact,
        "ack_age_seconds": _round(r.ack_age_seconds),
        "link_down_seconds": _round(r.link_down_seconds),
        "lag_bytes": r.lag_bytes,
        "backlog_usage_ratio": _round(r.backlog_usage_ratio, 4),
        "backlog_risk": risk,
        "in_rotation": in_rotation,
        "routing_reason": entry.reason if entry is not None else None,
        "routing_since": entry.since if entry is not None else None,
        "severity": replica_severity(link, in_rotation, reading.seconds, risk),
        "history": history_doc(series),
    }


def other_doc(o: OtherFollower) -> dict[str, Any]:
    return {
        "name": o.name,
        "address": o.address,
        "task": o.tasks[0] if len(o.tasks) == 1 else None,
        "tasks": list(o.tasks),
        "state": o.state,
        "lag_bytes": o.lag_bytes,
        "ack_age_seconds": o.ack_age_seconds,
    }


def wait_accounting(
    result: ProbeResult | None, others: Sequence[OtherFollower], listed_online: int
) -> str | None:
    """How many of a WAIT probe's acknowledgements the master's other followers (online ones:
    WAIT counts them) could account for; None when there are none. When every online follower
    acknowledged (`listed_online` listed replicas + the others), exactly; else at most."""
    online = [o for o in others if o.state == "online"]
    if result is None or result.acked is None or not online:
        return None
    k = len(online)
    them = f"{plural(k, 'other follower')}: {', '.join(o.name for o in online)}"
    if result.acked == listed_online + k:
        return f"{plural(listed_online, 'listed replica')} + {them}"
    if result.acked == 0:
        return f"asked of {plural(listed_online, 'listed replica')} + {them}"
    return f"up to {min(result.acked, k)} of them from {them}"


def probe_doc(
    result: ProbeResult | None, now: float, accounting: str | None = None
) -> dict[str, Any] | None:
    if result is None:
        return None
    return {
        "result": result.result,
        "seconds": _round(result.seconds, 6),
        "acked": result.acked,
        "wanted": result.wanted,
        "reason": result.reason,
        "age_seconds": _round(max(0.0, now - result.at)) if result.at else None,
        "accounting": accounting,
    }


def replica_problem(doc: Mapping[str, Any]) -> str | None:
    """What makes a replica's severity what it is (its doc), in words; None when ok."""
    if doc["severity"] == "ok":
        return None
    link = str(doc["link"])
    if link != "up":
        return LINK_PROBLEMS.get(link, link)
    if doc["in_rotation"] is False:
        return "out of rotation"
    if doc["backlog_risk"] == "bad":
        return f"near a full resync (backlog {BAD_BACKLOG_RATIO:.0%} used)"
    if doc["lag_seconds"] is not None and doc["lag_seconds"] >= WARN_LAG_SECONDS:
        return f"lagging {WARN_LAG_SECONDS:g}s or more"
    return f"backlog {WARN_BACKLOG_RATIO:.0%} used"


def group_reasons(
    snapshot: GroupSnapshot, replicas: Sequence[Mapping[str, Any]], probe: ProbeResult | None
) -> list[dict[str, str]]:
    """Why the group is not ok, worst first: its master, its replicas (each counted once, by
    its worst problem), its last WAIT probe. Empty when it is ok."""
    reasons: list[tuple[str, str]] = []
    if not snapshot.master_up:
        reasons.append(("bad", "master down"))
    elif not snapshot.master_role_ok:
        reasons.append(("bad", "master reports role replica"))
    problems = Counter((r["severity"], replica_problem(r)) for r in replicas)
    for (severity, what), n in problems.items():
        if what is not None:
            reasons.append((severity, f"{plural(n, 'replica')} {what}"))
    if probe is not None and probe.result != "ok":
        if probe.result == "timeout":
            text = f"WAIT timeout {probe.acked}/{probe.wanted}"
        else:
            text = f"WAIT error ({probe.reason})" if probe.reason else "WAIT error"
        reasons.append(("warn", text))
    reasons.sort(key=lambda item: SEVERITY_ORDER[item[0]])  # stable: the order above
    return [{"severity": severity, "text": text} for severity, text in reasons]


def _worst_first(item: Mapping[str, Any]) -> tuple[int, float, str]:
    lag = item.get("worst_lag_seconds", item.get("lag_seconds"))
    name = str(item.get("name", item.get("label")))
    return (SEVERITY_ORDER[item["severity"]], -(lag or 0.0), name)


def group_doc(
    snapshot: GroupSnapshot,
    table: RoutingTable | None,
    probe: ProbeResult | None,
    history: Mapping[str, LagSeries],
    now: float,
) -> dict[str, Any]:
    master = next((n for n in snapshot.nodes if n.label == snapshot.master), None)
    replicas = sorted(
        (replica_doc(r, table, history.get(r.label), now) for r in snapshot.replicas),
        key=_worst_first,
    )
    lags = [r["lag_seconds"] for r in replicas if r["lag_seconds"] is not None]
    reasons = group_reasons(snapshot, replicas, probe)
    severity = reasons[0]["severity"] if reasons else "ok"
    # WAIT counts the master's direct followers: the listed ones whose link is up, the others
    listed_online = sum(1 for r in snapshot.replicas if link_state(r) == "up" and not r.chained)
    accounting = wait_accounting(probe, snapshot.others, listed_online)
    return {
        "name": snapshot.name,
        "master": snapshot.master,
        "master_up": snapshot.master_up,
        "master_role_ok": snapshot.master_role_ok,
        "master_error": (
            f"{master.error_reason}: {master.error_message}"
            if master is not None and not master.up
            else None
        ),
        "master_offset": snapshot.master_offset,
        "degraded": table.degraded if table is not None else None,
        "reads_on_master": table.reads_on_master if table is not None else None,
        "in_rotation": sum(1 for r in replicas if r["in_rotation"]),
        "probe": probe_doc(probe, now, accounting),
        "severity": severity,
        "reasons": reasons,
        "worst_lag_seconds": max(lags) if lags else None,
        "age_seconds": _round(max(0.0, now - snapshot.taken_at)),
        "replicas": replicas,
        "others": [other_doc(o) for o in snapshot.others],
    }


def sync_doc(view: SyncTaskView) -> dict[str, Any]:
    error = view.source_error_message or view.target_error_message or view.last_error
    if not view.running or view.stale:
        severity = "bad"
    elif view.state == "full_sync" or (view.lag_seconds or 0.0) >= WARN_LAG_SECONDS:
        severity = "warn"
    else:
        severity = "ok"
    return {
        "name": view.task,
        "source": view.source,
        "target": view.target,
        "state": view.state,
        "running": view.running,
        "source_up": view.source_up,
        "target_up": view.target_up,
        "lag_seconds": _round(view.lag_seconds),
        "lag_seconds_exact": view.lag_seconds_exact,
        "lag_bytes": view.lag_bytes,
        "progress": _round(view.progress, 4),
        "keys_loaded": view.keys_loaded,
        "keys_total": view.keys_total,
        "stale": view.stale,
        "error": error,
        "severity": severity,
    }


def status_document(sources: StatusSources, now: float) -> dict[str, Any]:
    probes = sources.probes()
    groups = sorted(
        (
            group_doc(s, sources.routing(s.name), probes.get(s.name), sources.history(s.name), now)
            for s in sources.snapshots()
        ),
        key=_worst_first,
    )
    tasks = sorted((sync_doc(v) for v in sources.sync()), key=_worst_first)
    replicas = [r for g in groups for r in g["replicas"]]
    return {
        "generated_at": now,
        "version": sources.version,
        "poll_interval": sources.poll_interval,
        "history_window": sources.history_window,
        "summary": {
            "groups": len(groups),
            "groups_bad": sum(1 for g in groups if g["severity"] == "bad"),
            "replicas": len(replicas),
            "replicas_in_rotation": sum(1 for r in replicas if r["in_rotation"]),
            "replicas_bad": sum(1 for r in replicas if r["severity"] == "bad"),
            "tasks": len(tasks),
            "tasks_bad": sum(1 for t in tasks if t["severity"] == "bad"),
        },
        "groups": groups,
        "sync": tasks,
    }
