"""Renders snapshots for `replwatch status`: a table per group, or JSON. Pure.

The lag is the one every surface shows (state.lag_reading, as of `now`): a replica that could
not be seen or never synced reads as a `>=` bound or `-`, never 0; `status_ok` is the exit
status's rule.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from replwatch.state import GroupSnapshot, LagReading, OtherFollower, lag_reading, link_state


def _seconds(value: float | None, exact: bool = True) -> str:
    if value is None:
        return "-"
    return f"{'' if exact else '>='}{value:.2f}s"


def _bytes(value: int | None) -> str:
    if value is None:
        return "-"
    for unit, size in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if value >= size:
            return f"{value / size:.1f}{unit}"
    return f"{value}B"


def _lag(reading: LagReading) -> str:
    if reading.seconds is None:
        return "-"
    return _seconds(reading.seconds, not reading.at_least)


def _other(o: OtherFollower) -> str:
    """`sync task a_to_b (127.0.0.1:0, online, 0B behind)`, `10.0.0.5:6380 (online, …)`."""
    label = f"sync task {' or '.join(o.tasks)}" if o.tasks else o.address
    details = ([o.address] if o.tasks else []) + [o.state]
    if o.lag_bytes is not None:
        details.append(f"{_bytes(o.lag_bytes)} behind")
    return f"{label} ({', '.join(details)})"


def status_ok(snapshots: Sequence[GroupSnapshot]) -> bool:
    """Every node answered and every replica's link is up (not unreachable, down, in a full
    sync or following another master)."""
    return all(n.up for s in snapshots for n in s.nodes) and all(
        link_state(r) == "up" for s in snapshots for r in s.replicas
    )


def render_table(snapshots: Sequence[GroupSnapshot], now: float) -> str:
    out: list[str] = []
    headers = (
        "REPLICA",
        "LINK",
        "LAG BYTES",
        "LAG",
        "HEARTBEAT",
        "OFFSET CLOCK",
        "ACK AGE",
        "BACKLOG RISK",
    )
    for s in snapshots:
        master = next(n for n in s.nodes if n.label == s.master)
        if master.up:
            state = "up" if s.master_role_ok else "up, but reports role replica"
            state += f", offset {s.master_offset}"
        else:
            state = f"DOWN ({master.error_reason}: {master.error_message})"
        out.append(f"group {s.name}  master {s.master} ({state})")
        rows = [headers]
        for r in s.replicas:
            name = r.label + (" (chained)" if r.chained else "")
            rows.append(
                (
                    name,
                    link_state(r),
                    _bytes(r.lag_bytes),
                    _lag(lag_reading(r, now)),
                    _seconds(r.heartbeat_lag_seconds),
                    _seconds(r.offset_lag_seconds, r.offset_lag_exact),
                    _seconds(r.ack_age_seconds),
                    "-" if r.backlog_usage_ratio is None else f"{r.backlog_usage_ratio:.1%}",
                )
            )
        if len(rows) == 1:
            out.append("  (no replicas)")
        else:
            widths = [max(len(row[i]) for row in rows) for i in range(len(headers))]
            for row in rows:
                out.append("  " + "  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)))
        if s.others:
            out.append("  other followers of the master: " + "; ".join(map(_other, s.others)))
        for n in s.nodes:
            if not n.up and n.label != s.master:
                out.append(f"  ! {n.label}: {n.error_reason}: {n.error_message}")
        out.append("")
    return "\n".join(out)


def _group_json(s: GroupSnapshot, now: float) -> dict[str, Any]:
    """The snapshot's fields, each replica's `lag_seconds` as of `now` (null: unknown) with
    `lag_at_least` (a lower bound only) and its bounds, and `link`; each other follower's
    `name`."""
    doc = s.to_dict()
    for view, replica in zip(s.replicas, doc["replicas"], strict=True):
        reading = lag_reading(view, now)
        replica["link"] = link_state(view)
        replica["lag_seconds"] = reading.seconds
        replica["lag_at_least"] = reading.at_least
        replica["lag_lower_seconds"] = reading.lower
        replica["lag_upper_seconds"] = reading.upper
    for other, entry in zip(s.others, doc["others"], strict=True):
        entry["name"] = other.name
    return doc


def render_json(snapshots: Sequence[GroupSnapshot], now: float) -> str:
    groups = [_group_json(s, now) for s in snapshots]
    return json.dumps({"generated_at": now, "groups": groups}, indent=2, sort_keys=True)
