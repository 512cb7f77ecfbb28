"""Renders snapshots for `replwatch status`: a table per group, or JSON. Pure."""

from __future__ import annotations

import json
from collections.abc import Sequence

from replwatch.state import GroupSnapshot, link_state


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


def render_table(snapshots: Sequence[GroupSnapshot]) -> str:
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
                    _seconds(r.lag_seconds),
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
        for n in s.nodes:
            if not n.up and n.label != s.master:
                out.append(f"  ! {n.label}: {n.error_reason}: {n.error_message}")
        out.append("")
    return "\n".join(out)


def render_json(snapshots: Sequence[GroupSnapshot]) -> str:
    return json.dumps({"groups": [s.to_dict() for s in snapshots]}, indent=2, sort_keys=True)
