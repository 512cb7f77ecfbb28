"""Generates replwatch's Grafana dashboards (grafana/replwatch-*.json).

    python grafana/generate.py          # (re)write the JSON files next to this script
    python grafana/generate.py --check  # exit 1 when a committed file differs from the output

The dashboards are plain data built here so that every panel gets the same datasource
reference, a unit and a description; tests/test_dashboards.py checks the committed files
against this generator's output and every metric name against a real /metrics exposition.
Thresholds follow the shipped alert rules (alerts/replwatch.rules.yml): replica lag warning
5 s / critical 30 s, backlog risk 0.8, sync task lag 30 s.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

Json = dict[str, Any]

HERE = Path(__file__).resolve().parent
SCHEMA_VERSION = 39
DS: Json = {"type": "prometheus", "uid": "${datasource}"}
TAGS = ["redis", "replwatch"]

FLEET_UID = "replwatch-fleet"
GROUP_UID = "replwatch-group"
SYNC_UID = "replwatch-sync"

# alert thresholds (alerts/replwatch.rules.yml)
LAG_WARN, LAG_CRIT = 5, 30
BACKLOG_WARN, BACKLOG_CRIT = 0.5, 0.8
SYNC_LAG_WARN, SYNC_LAG_CRIT = 5, 30

# replwatch_sync_state folded into one number per task (see SYNC_STATE_EXPR)
SYNC_STATES = ["unknown", "starting", "full_sync", "incremental", "stopped", "failed"]
SYNC_STATE_COLORS = ["text", "blue", "orange", "green", "yellow", "red"]


# ----------------------------------------------------------------------------- building blocks


def target(expr: str, legend: str, ref: str, **extra: Any) -> Json:
    return {"refId": ref, "datasource": DS, "expr": expr, "legendFormat": legend, **extra}


def targets(*pairs: tuple[str, str], **extra: Any) -> list[Json]:
    return [target(e, leg, chr(ord("A") + i), **extra) for i, (e, leg) in enumerate(pairs)]


def steps(*levels: tuple[float, str]) -> Json:
    """Absolute thresholds: green below the first level."""
    return {
        "mode": "absolute",
        "steps": [{"color": "green", "value": None}]
        + [{"color": color, "value": value} for value, color in levels],
    }


def lag_thresholds() -> Json:
    return steps((LAG_WARN, "yellow"), (LAG_CRIT, "red"))


def backlog_thresholds() -> Json:
    return steps((BACKLOG_WARN, "yellow"), (BACKLOG_CRIT, "red"))


def value_map(*entries: tuple[int, str, str]) -> list[Json]:
    return [
        {
            "type": "value",
            "options": {
                str(value): {"text": text, "color": color, "index": i}
                for i, (value, text, color) in enumerate(entries)
            },
        }
    ]


PLAIN_STAT: Json = {
    "reduceOptions": {"calcs": ["lastNotNull"], "fields": "", "values": False},
    "colorMode": "none",
    "graphMode": "none",
    "textMode": "auto",
}

UP_DOWN = value_map((1, "up", "green"), (0, "down", "red"))


class Layout:
    """Places panels left to right on a 24-column grid, wrapping to a new row."""

    def __init__(self) -> None:
        self.x = 0
        self.y = 0
        self.row_h = 0
        self.next_id = 1
        self.panels: list[Json] = []

    def add(self, panel: Json, w: int, h: int = 8) -> None:
        if self.x + w > 24:
            self.newline()
        panel["id"] = self.next_id
        self.next_id += 1
        panel["gridPos"] = {"h": h, "w": w, "x": self.x, "y": self.y}
        self.panels.append(panel)
        self.x += w
        self.row_h = max(self.row_h, h)

    def newline(self) -> None:
        if self.x:
            self.y += self.row_h
        self.x, self.row_h = 0, 0

    def row(self, title: str) -> None:
        self.newline()
        self.add({"type": "row", "title": title, "collapsed": False, "panels": []}, 24, 1)
        self.newline()


def panel(
    kind: str,
    title: str,
    description: str,
    unit: str,
    tgts: list[Json],
    *,
    thresholds: Json | None = None,
    mappings: list[Json] | None = None,
    minimum: float | None = None,
    maximum: float | None = None,
    options: Json | None = None,
    custom: Json | None = None,
    overrides: list[Json] | None = None,
    links: list[Json] | None = None,
    transformations: list[Json] | None = None,
) -> Json:
    defaults: Json = {"unit": unit}
    if thresholds is not None:
        defaults["thresholds"] = thresholds
        defaults["color"] = (
            {"mode": "thresholds"} if kind != "timeseries" else {"mode": "palette-classic"}
        )
    if mappings is not None:
        defaults["mappings"] = mappings
        defaults["color"] = {"mode": "thresholds"}
    if minimum is not None:
        defaults["min"] = minimum
    if maximum is not None:
        defaults["max"] = maximum
    if custom is not None:
        defaults["custom"] = custom
    if links is not None:
        defaults["links"] = links
    out: Json = {
        "type": kind,
        "title": title,
        "description": description,
        "datasource": DS,
        "fieldConfig": {"defaults": defaults, "overrides": overrides or []},
        "options": options or {},
        "targets": tgts,
    }
    if transformations:
        out["transformations"] = transformations
    return out


def timeseries(title: str, description: str, unit: str, tgts: list[Json], **kw: Any) -> Json:
    kw.setdefault(
        "options",
        {
            "legend": {
                "displayMode": "table",
                "placement": "bottom",
                "calcs": ["lastNotNull", "max"],
            },
            "tooltip": {"mode": "multi", "sort": "desc"},
        },
    )
    if "thresholds" in kw:
        kw.setdefault("custom", {"thresholdsStyle": {"mode": "dashed"}})
    return panel("timeseries", title, description, unit, tgts, **kw)


def stat(title: str, description: str, unit: str, tgts: list[Json], **kw: Any) -> Json:
    kw.setdefault(
        "options",
        {
            "reduceOptions": {"calcs": ["lastNotNull"], "fields": "", "values": False},
            "colorMode": "background",
            "graphMode": "none",
            "textMode": "auto",
        },
    )
    for t in tgts:
        t["instant"] = True
    return panel("stat", title, description, unit, tgts, **kw)


def state_timeline(title: str, description: str, tgts: list[Json], mappings: list[Json]) -> Json:
    return panel(
        "state-timeline",
        title,
        description,
        "none",
        tgts,
        mappings=mappings,
        thresholds=steps(),
        options={
            "showValue": "never",
            "mergeValues": True,
            "rowHeight": 0.8,
            "legend": {"displayMode": "list", "placement": "bottom", "showLegend": True},
        },
    )


def table(title: str, description: str, tgts: list[Json], overrides: list[Json], **kw: Any) -> Json:
    for t in tgts:
        t["instant"] = True
        t["format"] = "table"
    return panel(
        "table",
        title,
        description,
        "none",
        tgts,
        overrides=overrides,
        options={"showHeader": True, "cellHeight": "sm"},
        **kw,
    )


def column(name: str, cell: str | None = None, **props: Any) -> Json:
    """A table column's overrides; `cell` is its cell display (color-background, ...)."""
    properties = [{"id": key, "value": value} for key, value in props.items()]
    if cell is not None:
        properties.append({"id": "custom.cellOptions", "value": {"type": cell}})
    return {"matcher": {"id": "byName", "options": name}, "properties": properties}


def query_var(name: str, label: str, query: str, *, multi: bool, include_all: bool) -> Json:
    return {
        "name": name,
        "label": label,
        "type": "query",
        "datasource": DS,
        "query": {"query": query, "refId": f"{name}-variable"},
        "definition": query,
        "refresh": 2,
        "sort": 1,
        "multi": multi,
        "includeAll": include_all,
        "current": {},
        "options": [],
        "hide": 0,
    }


DATASOURCE_VAR: Json = {
    "name": "datasource",
    "label": "Data source",
    "type": "datasource",
    "query": "prometheus",
    "current": {},
    "options": [],
    "refresh": 1,
    "regex": "",
    "hide": 0,
}


def dashboard(
    uid: str, title: str, description: str, variables: list[Json], layout: Layout
) -> Json:
    return {
        "uid": uid,
        "title": title,
        "description": description,
        "tags": TAGS,
        "schemaVersion": SCHEMA_VERSION,
        "version": 1,
        "editable": True,
        "graphTooltip": 1,
        "time": {"from": "now-1h", "to": "now"},
        "refresh": "30s",
        "timezone": "",
        "links": [
            {
                "type": "dashboards",
                "title": "replwatch",
                "tags": ["replwatch"],
                "asDropdown": True,
                "includeVars": False,
                "keepTime": True,
            }
        ],
        "annotations": {"list": []},
        "templating": {"list": [DATASOURCE_VAR, *variables]},
        "panels": layout.panels,
    }


def drill_link(title: str, uid: str, var: str, field: str) -> Json:
    return {
        "title": title,
        "url": f"/d/{uid}/?${{datasource:queryparam}}&var-{var}=${{__data.fields.{field}}}"
        "&${__url_time_range}",
    }


# ----------------------------------------------------------------------------- fleet


def fleet() -> Json:
    g = 'group=~"$group"'
    lay = Layout()
    lay.row("Fleet at a glance")
    lay.add(
        stat(
            "Groups",
            "Groups replwatch polls (replwatch_master_role_ok has one series per group).",
            "short",
            targets((f"count(replwatch_master_role_ok{{{g}}})", "groups")),
            thresholds=steps(),
            options=PLAIN_STAT,
        ),
        4,
        4,
    )
    lay.add(
        stat(
            "Worst time lag",
            "The largest best-estimate time lag of any replica (heartbeat when available, "
            "else offset clock). Yellow from 5 s, red from 30 s: the RedisReplicaLag alerts.",
            "s",
            targets((f"max(replwatch_replica_lag_seconds{{{g}}})", "worst lag")),
            thresholds=lag_thresholds(),
        ),
        4,
        4,
    )
    lay.add(
        stat(
            "Worst backlog risk",
            "The largest byte lag / repl_backlog_size of any replica: at 100% a reconnect of "
            "that replica needs a full resync.",
            "percentunit",
            targets((f"max(replwatch_replica_backlog_usage_ratio{{{g}}})", "worst risk")),
            thresholds=backlog_thresholds(),
        ),
        4,
        4,
    )
    lay.add(
        stat(
            "Replica links down",
            "Replicas whose master_link_status is not up (or that cannot be reached).",
            "short",
            targets((f"count(replwatch_replica_link_up{{{g}}} == 0) or vector(0)", "links down")),
            thresholds=steps((1, "red")),
        ),
        4,
        4,
    )
    lay.add(
        stat(
            "Groups reading from master",
            "Groups where no replica serves reads, so reads go to the master "
            "(replwatch_routing_reads_on_master).",
            "short",
            targets((f"sum(replwatch_routing_reads_on_master{{{g}}})", "on master")),
            thresholds=steps((1, "orange")),
        ),
        4,
        4,
    )
    lay.add(
        stat(
            "Masters not OK",
            "Groups whose configured master does not answer or is no longer a master "
            "(replwatch_master_role_ok == 0; a failover happened or the master is down).",
            "short",
            targets((f"count(replwatch_master_role_ok{{{g}}} == 0) or vector(0)", "masters")),
            thresholds=steps((1, "red")),
        ),
        4,
        4,
    )
    lay.add(
        table(
            "Groups, worst lag first",
            "One row per group: its worst replica time lag and byte lag, worst backlog risk, "
            "replicas with the link up / configured, replicas serving reads, and whether the "
            "master is OK. Sorted by time lag, worst first. Click a group for its drill-down.",
            targets(
                (f"group:replwatch_replica_lag_seconds:max{{{g}}}", "lag"),
                (f"group:replwatch_replica_lag_bytes:max{{{g}}}", "bytes"),
                (f"group:replwatch_replica_backlog_usage_ratio:max{{{g}}}", "risk"),
                (f"sum by (group) (replwatch_replica_link_up{{{g}}})", "links up"),
                (f"count by (group) (replwatch_replica_link_up{{{g}}})", "replicas"),
                (f"max by (group) (replwatch_routing_replicas_in_rotation{{{g}}})", "serving"),
                (f"max by (group) (replwatch_master_role_ok{{{g}}})", "master ok"),
            ),
            overrides=[
                column(
                    "Worst time lag", unit="s", cell="color-background", thresholds=lag_thresholds()
                ),
                column("Worst byte lag", unit="bytes"),
                column(
                    "Backlog risk",
                    unit="percentunit",
                    cell="color-background",
                    thresholds=backlog_thresholds(),
                ),
                column("Links up", unit="short"),
                column("Replicas", unit="short"),
                column("Serving reads", unit="short"),
                column(
                    "Master OK",
                    unit="none",
                    mappings=value_map((1, "yes", "green"), (0, "NO", "red")),
                    cell="color-text",
                ),
                column(
                    "group",
                    links=[drill_link("Open ${__data.fields.group}", GROUP_UID, "group", "group")],
                ),
            ],
            transformations=[
                {"id": "merge", "options": {}},
                {
                    "id": "organize",
                    "options": {
                        "excludeByName": {"Time": True},
                        "renameByName": {
                            "Value #A": "Worst time lag",
                            "Value #B": "Worst byte lag",
                            "Value #C": "Backlog risk",
                            "Value #D": "Links up",
                            "Value #E": "Replicas",
                            "Value #F": "Serving reads",
                            "Value #G": "Master OK",
                        },
                    },
                },
                {"id": "sortBy", "options": {"sort": [{"field": "Worst time lag", "desc": True}]}},
            ],
        ),
        24,
        9,
    )
    lay.row("Lag per group")
    lay.add(
        timeseries(
            "Worst time lag per group",
            "The worst replica's best-estimate time lag in each group, in seconds: how old the "
            "data a read from that replica may return is.",
            "s",
            targets((f"group:replwatch_replica_lag_seconds:max{{{g}}}", "{{group}}")),
            thresholds=lag_thresholds(),
            minimum=0,
        ),
        12,
    )
    lay.add(
        timeseries(
            "Worst backlog risk and output buffer use per group",
            "The worst replica's byte lag divided by the master's repl_backlog_size (at 100% a "
            "disconnect means a full resync instead of a partial one), and the worst replica "
            "output buffer on the master against its hard limit (at 100% the master drops "
            "the replica).",
            "percentunit",
            targets(
                (f"group:replwatch_replica_backlog_usage_ratio:max{{{g}}}", "{{group}} backlog"),
                (
                    f"group:replwatch_replica_output_buffer_usage_ratio:max{{{g}}}",
                    "{{group}} output buffer",
                ),
            ),
            thresholds=backlog_thresholds(),
            minimum=0,
        ),
        12,
    )
    lay.row("Link and routing state")
    lay.add(
        state_timeline(
            "Replica links per group",
            "Green while every replica of the group reports its master link up; red while at "
            "least one does not (or cannot be reached).",
            targets((f"group:replwatch_replica_link_up:min{{{g}}}", "{{group}}")),
            value_map((1, "all up", "green"), (0, "a link down", "red")),
        ),
        12,
    )
    lay.add(
        state_timeline(
            "Read routing per group",
            "normal: replicas serve reads; reads on master: no replica is in rotation; "
            "degraded: the master is down (replicas still serve); no read target: both.",
            targets(
                (
                    f"max by (group) (replwatch_routing_degraded{{{g}}}) * 2"
                    f" + max by (group) (replwatch_routing_reads_on_master{{{g}}})",
                    "{{group}}",
                )
            ),
            value_map(
                (0, "normal", "green"),
                (1, "reads on master", "orange"),
                (2, "degraded", "red"),
                (3, "no read target", "dark-red"),
            ),
        ),
        12,
    )
    lay.add(
        timeseries(
            "Replicas serving reads",
            "Replicas in read rotation per group (after the routing guards).",
            "short",
            targets(
                (f"max by (group) (replwatch_routing_replicas_in_rotation{{{g}}})", "{{group}}")
            ),
            minimum=0,
            custom={"drawStyle": "line", "lineInterpolation": "stepAfter"},
        ),
        12,
    )
    lay.add(
        timeseries(
            "Nodes down",
            "Nodes (masters and replicas) that did not answer their last poll, per group.",
            "short",
            targets((f"count by (group) (replwatch_node_up{{{g}}} == 0)", "{{group}}")),
            thresholds=steps((1, "red")),
            minimum=0,
        ),
        12,
    )
    lay.row("WAIT probes")
    lay.add(
        timeseries(
            "WAIT probe latency p99 per group",
            "99th percentile over 5m of the time from the probe write on the master to WAIT's "
            "answer (probes that got every replica asked for; the recording rule "
            "group:replwatch_probe_wait_seconds:p99_5m, which RedisWaitProbeSlow uses).",
            "s",
            targets((f"group:replwatch_probe_wait_seconds:p99_5m{{{g}}}", "{{group}} p99")),
            minimum=0,
        ),
        12,
    )
    lay.add(
        timeseries(
            "WAIT probes failing per group",
            "Probes per second that did not get enough acknowledgements in time (timeout) or "
            "got no answer (error), per group and result.",
            "ops",
            targets(
                (
                    "sum by (group, result) "
                    f'(rate(replwatch_probe_total{{{g},result!="ok"}}[$__rate_interval]))',
                    "{{group}} {{result}}",
                )
            ),
            thresholds=steps((0.001, "red")),
            minimum=0,
        ),
        12,
    )
    lay.add(
        timeseries(
            "WAIT probe success per group (5m)",
            "Share of the group's WAIT probes that got every acknowledgement in time over the "
            "last 5m (the recording rule group:replwatch_probe_success:ratio_5m): 100% is "
            "every probe.",
            "percentunit",
            targets((f"group:replwatch_probe_success:ratio_5m{{{g}}}", "{{group}}")),
            minimum=0,
        ),
        12,
    )
    lay.row("replwatch itself")
    lay.add(
        timeseries(
            "Seconds since last poll",
            "How long ago each group's last poll cycle completed. It should stay near the "
            "poll interval; growing means replwatch is stuck or overloaded.",
            "s",
            targets((f"time() - replwatch_last_poll_timestamp_seconds{{{g}}}", "{{group}}")),
            thresholds=steps((10, "yellow"), (30, "red")),
            minimum=0,
        ),
        8,
    )
    lay.add(
        timeseries(
            "Poll duration",
            "Wall time of each group's last poll cycle (all nodes polled concurrently).",
            "s",
            targets((f"replwatch_poll_duration_seconds{{{g}}}", "{{group}}")),
            minimum=0,
        ),
        8,
    )
    lay.add(
        timeseries(
            "Scheduler trouble",
            "Scheduled jobs per second that were missed, skipped because the previous run was "
            "still going, or ended in an error. Should be zero.",
            "ops",
            targets(
                (
                    "sum by (kind, outcome) (rate(replwatch_scheduler_runs_total"
                    '{outcome=~"missed|skipped_overrun|error"}[$__rate_interval]))',
                    "{{kind}} {{outcome}}",
                )
            ),
            thresholds=steps((0.001, "red")),
            minimum=0,
        ),
        8,
    )
    lay.add(
        timeseries(
            "Heartbeat writes failing",
            "Groups whose last heartbeat write failed (1). Heartbeat lag goes stale while it is.",
            "short",
            targets((f"1 - replwatch_heartbeat_last_write_ok{{{g}}}", "{{group}}")),
            thresholds=steps((1, "red")),
            minimum=0,
            maximum=1,
        ),
        8,
    )
    lay.add(
        timeseries(
            "replwatch CPU",
            "CPU seconds per second used by each replwatch process (1 = one core).",
            "percentunit",
            targets(("rate(process_cpu_seconds_total[$__rate_interval])", "{{instance}}")),
            minimum=0,
        ),
        8,
    )
    lay.add(
        timeseries(
            "replwatch memory",
            "Resident memory of each replwatch process.",
            "bytes",
            targets(("process_resident_memory_bytes", "{{instance}}")),
            minimum=0,
        ),
        8,
    )
    lay.add(
        table(
            "Groups and their masters",
            "Every monitored group: the node polled as its master now, where its nodes come "
            "from (static, sentinel, cluster), its configured group and a cluster shard's slots "
            "(replwatch_group_info). A Sentinel or cluster group's master changes here after a "
            "failover.",
            targets((f"replwatch_group_info{{{g}}}", "{{group}}")),
            overrides=[],
            transformations=[
                {
                    "id": "organize",
                    "options": {"excludeByName": {"Time": True, "Value": True, "__name__": True}},
                }
            ],
        ),
        12,
        6,
    )
    lay.add(
        timeseries(
            "Failovers followed and shard slots",
            "Masters moved in Sentinel / cluster groups (increase), and the slots each cluster "
            "shard owns (a resharding shows here).",
            "short",
            targets(
                (
                    f"increase(replwatch_group_master_changes_total{{{g}}}[$__rate_interval])",
                    "{{group}} master moved",
                ),
                (f"replwatch_cluster_shard_slots{{{g}}}", "{{group}} slots"),
            ),
            minimum=0,
        ),
        12,
        6,
    )
    lay.add(
        stat(
            "Config reload",
            "1: the newest config reload (SIGHUP, POST /-/reload) worked; 0: it failed and the "
            "previous config runs (see the log). Also failed reloads and the instance's shard.",
            "short",
            targets(
                ("replwatch_config_last_reload_successful", "{{instance}} last reload ok"),
                ("replwatch_config_reloads_failed_total", "{{instance}} failed reloads"),
                (
                    "time() - replwatch_config_last_reload_success_timestamp_seconds",
                    "{{instance}} config age s",
                ),
                ("replwatch_shard_info", "{{instance}} shard {{index}}/{{count}}"),
                (f"replwatch_group_poll_cycles_total{{{g}}}", "{{group}} cycles"),
            ),
        ),
        24,
        5,
    )
    lay.add(
        table(
            "replwatch versions",
            "replwatch and Python versions of every replwatch scraped (replwatch_build_info).",
            targets(("replwatch_build_info", "{{version}}")),
            overrides=[],
            transformations=[
                {
                    "id": "organize",
                    "options": {"excludeByName": {"Time": True, "Value": True, "__name__": True}},
                }
            ],
        ),
        24,
        5,
    )
    return dashboard(
        FLEET_UID,
        "replwatch / fleet overview",
        "Every Redis group replwatch watches: worst lag first, link and routing state, WAIT "
        "probes, and replwatch's own health.",
        [
            query_var(
                "group",
                "Group",
                "label_values(replwatch_master_role_ok, group)",
                multi=True,
                include_all=True,
            )
        ],
        lay,
    )


# ----------------------------------------------------------------------------- group


def group() -> Json:
    sel = 'group=~"$group",replica=~"$replica"'
    g = 'group=~"$group"'
    lay = Layout()
    lay.row("Time lag")
    lay.add(
        timeseries(
            "Time lag: best, its bounds, heartbeat, offset clock, ACK age",
            "Views of lag per replica, side by side. best: replwatch's estimate as of the "
            "scrape (the trend of its offset readings, its own and its ACKs on the master; see "
            "docs/lag.md), between its lower and upper bound (dotted: how "
            "sure replwatch is). heartbeat: master clock now minus the first heartbeat the "
            "replica has not applied. offset clock: how long ago the master moved past the "
            "replica's offset at the last poll. ACK age: INFO's lag= field, seconds since the "
            "replica's last ACK; NOT replication delay (it stays ~1 s on a lagging replica that "
            "ACKs).",
            "s",
            targets(
                (f"replwatch_replica_lag_seconds{{{sel}}}", "{{replica}} best"),
                (f"replwatch_replica_lag_lower_bound_seconds{{{sel}}}", "{{replica}} lower bound"),
                (f"replwatch_replica_lag_upper_bound_seconds{{{sel}}}", "{{replica}} upper bound"),
                (f"replwatch_replica_heartbeat_lag_seconds{{{sel}}}", "{{replica}} heartbeat"),
                (f"replwatch_replica_offset_lag_seconds{{{sel}}}", "{{replica}} offset clock"),
                (f"replwatch_replica_ack_age_seconds{{{sel}}}", "{{replica}} ACK age"),
            ),
            thresholds=lag_thresholds(),
            minimum=0,
            overrides=[
                {
                    "matcher": {"id": "byRegexp", "options": ".* best$"},
                    "properties": [{"id": "custom.lineWidth", "value": 3}],
                },
                {
                    "matcher": {"id": "byRegexp", "options": ".* ACK age$"},
                    "properties": [
                        {"id": "custom.lineStyle", "value": {"fill": "dash", "dash": [10, 10]}}
                    ],
                },
                {
                    "matcher": {"id": "byRegexp", "options": ".* (lower|upper) bound$"},
                    "properties": [
                        {"id": "custom.lineStyle", "value": {"fill": "dot", "dash": [2, 6]}},
                        {"id": "custom.lineWidth", "value": 1},
                    ],
                },
            ],
        ),
        16,
        9,
    )
    lay.add(
        stat(
            "Best time lag now",
            "Each replica's best-estimate time lag at the last scrape. Yellow from 5 s, red "
            "from 30 s (the RedisReplicaLag alerts).",
            "s",
            targets((f"replwatch_replica_lag_seconds{{{sel}}}", "{{replica}}")),
            thresholds=lag_thresholds(),
        ),
        8,
        9,
    )
    lay.row("Bytes and buffers")
    lay.add(
        timeseries(
            "Byte lag vs backlog size",
            "Master offset minus each replica's applied offset, against the master's "
            "repl_backlog_size: once the byte lag passes the backlog, a reconnect of that "
            "replica needs a full resync.",
            "bytes",
            targets(
                (f"replwatch_replica_lag_bytes{{{sel}}}", "{{replica}} byte lag"),
                (
                    f"replwatch_backlog_size_bytes{{{g}}} and on (group, node) "
                    f'replwatch_node_up{{{g},role="master"}}',
                    "backlog size (master {{node}})",
                ),
            ),
            minimum=0,
            overrides=[
                {
                    "matcher": {"id": "byRegexp", "options": "^backlog size.*"},
                    "properties": [
                        {"id": "color", "value": {"mode": "fixed", "fixedColor": "red"}},
                        {"id": "custom.lineStyle", "value": {"fill": "dash", "dash": [10, 10]}},
                    ],
                }
            ],
        ),
        12,
    )
    lay.add(
        timeseries(
            "Backlog risk",
            "Byte lag / repl_backlog_size per replica. At 100% a disconnect means a full "
            "resync; the RedisReplicaBacklogAtRisk alert fires above 80%.",
            "percentunit",
            targets((f"replwatch_replica_backlog_usage_ratio{{{sel}}}", "{{replica}}")),
            thresholds=backlog_thresholds(),
            minimum=0,
        ),
        12,
    )
    lay.add(
        timeseries(
            "Replica output buffer",
            "Memory the master holds in each replica's output buffer (CLIENT LIST omem): "
            "writes the replica has not received yet.",
            "bytes",
            targets((f"replwatch_replica_output_buffer_bytes{{{sel}}}", "{{replica}}")),
            minimum=0,
        ),
        12,
    )
    lay.add(
        timeseries(
            "Replica output buffer use",
            "Output buffer / the master's replica hard limit (client-output-buffer-limit "
            "replica): at 100% the master drops the replica, which then needs a resync.",
            "percentunit",
            targets((f"replwatch_replica_output_buffer_usage_ratio{{{sel}}}", "{{replica}}")),
            thresholds=steps((0.5, "yellow"), (0.8, "red")),
            minimum=0,
        ),
        12,
    )
    lay.row("Link state and full resyncs")
    lay.add(
        state_timeline(
            "Replication link",
            "master_link_status per replica: up, or down (also while the replica cannot be "
            "reached).",
            targets((f"replwatch_replica_link_up{{{sel}}}", "{{replica}}")),
            UP_DOWN,
        ),
        12,
    )
    lay.add(
        state_timeline(
            "Full resyncs",
            "Periods each replica spent in a full sync from its master (master_sync_in_progress). "
            "Repeated orange bars are a full-resync loop: backlog or output buffer too small.",
            targets((f"replwatch_replica_sync_in_progress{{{sel}}}", "{{replica}}")),
            value_map((1, "full sync", "orange"), (0, "streaming", "green")),
        ),
        12,
    )
    lay.add(
        stat(
            "Full syncs in range",
            "Full syncs per replica that started or ended in the dashboard's time range "
            "(changes of master_sync_in_progress as scraped: a sync shorter than a scrape "
            "interval can be missed).",
            "short",
            targets(
                (
                    "ceil(sum by (replica) (changes(replwatch_replica_sync_in_progress"
                    f"{{{sel}}}[$__range])) / 2)",
                    "{{replica}}",
                )
            ),
            thresholds=steps((1, "yellow"), (3, "red")),
        ),
        8,
    )
    lay.add(
        timeseries(
            "Link down / not heard from for",
            "Seconds the replica reports its master link down (master_link_down_since_seconds), "
            "and seconds since replwatch last heard from it at all — what covers a frozen or "
            "dead replica, which reports nothing.",
            "s",
            targets(
                (f"replwatch_replica_link_down_seconds{{{sel}}}", "{{replica}} link down"),
                (f"replwatch_replica_seconds_since_contact{{{sel}}}", "{{replica}} not heard"),
            ),
            minimum=0,
        ),
        8,
    )
    lay.add(
        state_timeline(
            "Following the master",
            "Whether each replica is on the group master's replication stream (same replid). "
            "'other stream' after a failover or while it follows another master.",
            targets((f"replwatch_replica_following_master{{{sel}}}", "{{replica}}")),
            value_map((1, "following", "green"), (0, "other stream", "red")),
        ),
        8,
    )
    lay.row("WAIT probe")
    lay.add(
        panel(
            "heatmap",
            "WAIT probe latency",
            "Distribution of the time from the probe write on the master to WAIT's answer "
            "(probes that got every replica asked for), from replwatch_probe_wait_seconds' "
            "buckets. Cells: probes per bucket per interval.",
            "short",
            targets(
                (
                    "sum by (le) (increase(replwatch_probe_wait_seconds_bucket"
                    f"{{{g}}}[$__rate_interval]))",
                    "{{le}}",
                ),
                format="heatmap",
            ),
            options={
                "calculate": False,
                "yAxis": {"axisPlacement": "left", "unit": "s"},
                "rowsFrame": {"layout": "auto"},
                "color": {"mode": "scheme", "scheme": "Oranges", "steps": 64},
                "cellGap": 1,
                "tooltip": {"mode": "single", "yHistogram": True},
                "legend": {"show": True},
            },
        ),
        12,
    )
    lay.add(
        timeseries(
            "WAIT probe results",
            "Probes per second by result: ok (enough replicas acknowledged in time), timeout "
            "(fewer did), error (no answer, or the configured master is a replica).",
            "ops",
            targets(
                (
                    f"sum by (result) (rate(replwatch_probe_total{{{g}}}[$__rate_interval]))",
                    "{{result}}",
                )
            ),
            minimum=0,
            overrides=[
                {
                    "matcher": {"id": "byName", "options": "ok"},
                    "properties": [
                        {"id": "color", "value": {"mode": "fixed", "fixedColor": "green"}}
                    ],
                }
            ],
        ),
        6,
    )
    lay.add(
        timeseries(
            "Replicas acknowledging",
            "The newest probe: replicas it waited for and replicas that acknowledged it.",
            "short",
            targets(
                (f"replwatch_probe_wanted_replicas{{{g}}}", "wanted"),
                (f"replwatch_probe_acked_replicas{{{g}}}", "acknowledged"),
            ),
            minimum=0,
        ),
        6,
    )
    lay.add(
        table(
            "WAIT probe errors now",
            "Present while the newest probe failed, with the reason (e.g. not_master: the "
            "configured master is a replica; timeout; refused). Empty while probes succeed.",
            targets((f"replwatch_probe_last_error_info{{{g}}}", "{{reason}}")),
            overrides=[],
            transformations=[
                {
                    "id": "organize",
                    "options": {"excludeByName": {"Time": True, "Value": True, "__name__": True}},
                }
            ],
        ),
        24,
        4,
    )
    lay.row("Read routing")
    lay.add(
        state_timeline(
            "Read rotation",
            "Whether each replica serves reads (after the routing guards): in, or out (lag "
            "over the trip threshold, link down, full sync, other stream).",
            targets((f"replwatch_routing_in_rotation{{{sel}}}", "{{replica}}")),
            value_map((1, "in rotation", "green"), (0, "out", "red")),
        ),
        12,
    )
    lay.add(
        state_timeline(
            "Group routing state",
            "reads on master: no replica serves, reads go to the master. degraded: the master "
            "is down or not a master, reads never go to it.",
            targets(
                (f"replwatch_routing_reads_on_master{{{g}}}", "reads on master"),
                (f"replwatch_routing_degraded{{{g}}}", "degraded"),
            ),
            value_map((0, "no", "green"), (1, "yes", "red")),
        ),
        12,
    )
    lay.add(
        timeseries(
            "Rotation changes",
            "Moves of each replica into (in) and out of (out) read rotation per interval. "
            "Frequent moves mean the trip/recover thresholds are too close to the normal lag.",
            "short",
            targets(
                (
                    "sum by (replica, to) (increase(replwatch_routing_transitions_total"
                    f"{{{sel}}}[$__rate_interval]))",
                    "{{replica}} {{to}}",
                )
            ),
            minimum=0,
            custom={"drawStyle": "bars", "fillOpacity": 80},
        ),
        12,
    )
    lay.add(
        timeseries(
            "Replicas serving reads",
            "Number of the group's replicas in read rotation.",
            "short",
            targets((f"replwatch_routing_replicas_in_rotation{{{g}}}", "serving")),
            minimum=0,
            thresholds=steps(),
        ),
        12,
    )
    lay.row("Nodes")
    lay.add(
        state_timeline(
            "Nodes answering",
            "Whether each node (master and replicas) answered its last poll.",
            targets((f"max by (node) (replwatch_node_up{{{g}}})", "{{node}}")),
            UP_DOWN,
        ),
        12,
    )
    lay.add(
        timeseries(
            "Node poll round-trip",
            "Round-trip time of each node's last poll (connect included after a reconnect).",
            "s",
            targets((f"replwatch_node_poll_duration_seconds{{{g}}}", "{{node}}")),
            minimum=0,
        ),
        12,
    )
    lay.add(
        table(
            "Node errors now",
            "Nodes whose last poll failed, with the reason class (timeout, refused, auth, "
            "tls, dns, reset, protocol, loading, error). Empty while every node answers.",
            targets((f"replwatch_node_last_error_info{{{g}}}", "{{node}}")),
            overrides=[],
            transformations=[
                {
                    "id": "organize",
                    "options": {"excludeByName": {"Time": True, "Value": True, "__name__": True}},
                }
            ],
        ),
        24,
        5,
    )
    return dashboard(
        GROUP_UID,
        "replwatch / group drill-down",
        "One group's replicas: time lag four ways, byte lag against the backlog, link state "
        "and full resyncs, WAIT probe latency, read routing, nodes.",
        [
            query_var(
                "group",
                "Group",
                "label_values(replwatch_master_role_ok, group)",
                multi=False,
                include_all=False,
            ),
            query_var(
                "replica",
                "Replica",
                'label_values(replwatch_replica_link_up{group=~"$group"}, replica)',
                multi=True,
                include_all=True,
            ),
        ],
        lay,
    )


# ----------------------------------------------------------------------------- sync


def sync_state_expr(sel: str) -> str:
    """replwatch_sync_state (one 0/1 series per state) folded into one code per task:
    the index of the current state in SYNC_STATES."""
    parts = [
        f'replwatch_sync_state{{{sel},state="{name}"}} * {code}'
        for code, name in enumerate(SYNC_STATES)
    ]
    return "sum by (task) (" + " or ".join(parts) + ")"


def sync() -> Json:
    t = 'task=~"$task"'
    states = value_map(
        *((code, name, SYNC_STATE_COLORS[code]) for code, name in enumerate(SYNC_STATES))
    )
    lay = Layout()
    lay.row("State")
    lay.add(
        state_timeline(
            "Task state",
            "Each task's state from its checkpoint on the target: starting, full_sync, "
            "incremental (streaming: the normal state), stopped, failed; unknown while the "
            "target holds no checkpoint or cannot be read.",
            targets((sync_state_expr(t), "{{task}}")),
            states,
        ),
        16,
    )
    lay.add(
        stat(
            "State now",
            "The task's current state (same as the timeline, at the last scrape).",
            "none",
            targets((sync_state_expr(t), "{{task}}")),
            mappings=states,
            thresholds=steps(),
        ),
        8,
    )
    lay.row("Lag")
    lay.add(
        timeseries(
            "Lag (seconds)",
            "How long ago the source moved past the offset the task has applied to the target "
            "(the source's offset clock). While a full sync has not finished: at least the "
            "time since it began (a lower bound). The RedisSyncTaskLagHigh alert fires above "
            "30 s.",
            "s",
            targets(
                (f"replwatch_sync_lag_seconds{{{t}}}", "{{task}}"),
                (f"task:replwatch_sync_lag_seconds:max_5m{{{t}}}", "{{task}} worst of 5m"),
            ),
            thresholds=steps((SYNC_LAG_WARN, "yellow"), (SYNC_LAG_CRIT, "red")),
            minimum=0,
        ),
        12,
    )
    lay.add(
        timeseries(
            "Lag (bytes)",
            "Source replication offset minus the offset the task's checkpoint says is applied "
            "to the target (absent while the checkpoint is on another replication stream).",
            "bytes",
            targets((f"replwatch_sync_lag_bytes{{{t}}}", "{{task}}")),
            minimum=0,
        ),
        12,
    )
    lay.add(
        timeseries(
            "Offsets",
            "The source's replication offset and the offset applied to the target: two lines "
            "that move together while the task keeps up.",
            "bytes",
            targets(
                (f"replwatch_sync_source_offset_bytes{{{t}}}", "{{task}} source"),
                (f"replwatch_sync_applied_offset_bytes{{{t}}}", "{{task}} applied"),
            ),
        ),
        12,
    )
    lay.add(
        timeseries(
            "Checkpoint age",
            "Seconds since the syncer last wrote the task's checkpoint. It keeps growing when "
            "the task is stuck (RedisSyncTaskStalled fires above 120 s while running).",
            "s",
            targets((f"replwatch_sync_checkpoint_age_seconds{{{t}}}", "{{task}}")),
            thresholds=steps((30, "yellow"), (120, "red")),
            minimum=0,
        ),
        12,
    )
    lay.row("Full sync")
    lay.add(
        timeseries(
            "Full-sync progress",
            "Share of the running full sync loaded (bytes of the snapshot when its size is "
            "known, else keys). Present only while the task is in state full_sync.",
            "percentunit",
            targets((f"replwatch_sync_full_sync_progress_ratio{{{t}}}", "{{task}}")),
            minimum=0,
            maximum=1,
        ),
        8,
    )
    lay.add(
        timeseries(
            "Snapshot keys",
            "Keys of the current or last full sync's snapshot applied to the target, against "
            "the keys the snapshot holds (its RESIZEDB hints).",
            "short",
            targets(
                (f"replwatch_sync_keys_loaded{{{t}}}", "{{task}} loaded"),
                (f"replwatch_sync_snapshot_keys{{{t}}}", "{{task}} in snapshot"),
            ),
            minimum=0,
        ),
        8,
    )
    lay.add(
        timeseries(
            "Snapshot bytes",
            "Bytes of the current or last snapshot read so far, against its size (no size for "
            "a diskless snapshot: unknown in advance).",
            "bytes",
            targets(
                (f"replwatch_sync_snapshot_loaded_bytes{{{t}}}", "{{task}} read"),
                (f"replwatch_sync_snapshot_size_bytes{{{t}}}", "{{task}} size"),
            ),
            minimum=0,
        ),
        8,
    )
    lay.add(
        stat(
            "Full syncs in range",
            "Full syncs each task started in the dashboard's time range (from the checkpoint's "
            "counter). More than a couple an hour is a resync loop.",
            "short",
            targets(
                (
                    f"round(increase(replwatch_sync_full_resyncs_total{{{t}}}[$__range]))",
                    "{{task}}",
                )
            ),
            thresholds=steps((1, "yellow"), (3, "red")),
        ),
        8,
        5,
    )
    lay.add(
        stat(
            "Full syncs total",
            "Full syncs the task has done since its checkpoint was created (the first included).",
            "short",
            targets((f"replwatch_sync_full_resyncs_total{{{t}}}", "{{task}}")),
            thresholds=steps(),
            options=PLAIN_STAT,
        ),
        8,
        5,
    )
    lay.row("Stream")
    lay.add(
        timeseries(
            "Applied commands",
            "Commands of the source's replication stream applied to the target per second.",
            "ops",
            targets(
                (
                    f"rate(replwatch_sync_applied_commands_total{{{t}}}[$__rate_interval])",
                    "{{task}}",
                )
            ),
            minimum=0,
        ),
        12,
    )
    lay.add(
        timeseries(
            "Filtered writes by reason",
            "Writes per second the task's filters left out, by reason (key_not_allowed, "
            "key_prefix, key_regex, command, db, mixed_keys): snapshot keys and stream commands.",
            "ops",
            targets(
                (
                    "sum by (task, reason) "
                    f"(rate(replwatch_sync_filtered_total{{{t}}}[$__rate_interval]))",
                    "{{task}} {{reason}}",
                )
            ),
            minimum=0,
        ),
        12,
    )
    lay.row("Lease (ha tasks) and processes")
    lay.add(
        timeseries(
            "Lease remaining",
            "ha tasks: seconds until the holder's lease ends unless renewed; 0 means it lapsed "
            "and another daemon takes over. Empty for tasks without ha.",
            "s",
            targets((f"replwatch_sync_lease_remaining_seconds{{{t}}}", "{{task}}")),
            thresholds={
                "mode": "absolute",
                "steps": [{"color": "red", "value": None}, {"color": "green", "value": 0.001}],
            },
            minimum=0,
        ),
        8,
    )
    lay.add(
        timeseries(
            "Lease token",
            "ha tasks: the lease holder's fencing token. A step up is a takeover by another "
            "daemon.",
            "locale",
            targets((f"replwatch_sync_lease_token{{{t}}}", "{{task}}")),
            custom={"drawStyle": "line", "lineInterpolation": "stepAfter"},
        ),
        8,
    )
    lay.add(
        timeseries(
            "Process restarts",
            "Times per interval the supervisor under replwatch run started a task process "
            "again after it exited.",
            "short",
            targets(
                (
                    f"increase(replwatch_sync_process_restarts_total{{{t}}}[$__rate_interval])",
                    "{{task}}",
                )
            ),
            thresholds=steps((1, "red")),
            minimum=0,
            custom={"drawStyle": "bars", "fillOpacity": 80},
        ),
        8,
    )
    lay.add(
        state_timeline(
            "Process up",
            "Whether the task's syncer process runs under replwatch run (absent for tasks run "
            "elsewhere, e.g. replwatch sync run).",
            targets((f"replwatch_sync_process_up{{{t}}}", "{{task}}")),
            UP_DOWN,
        ),
        8,
    )
    lay.add(
        state_timeline(
            "Source and target reachable",
            "Whether the source answered INFO and the checkpoint could be read from the target "
            "at the last poll.",
            targets(
                (f"replwatch_sync_source_up{{{t}}}", "{{task}} source"),
                (f"replwatch_sync_target_up{{{t}}}", "{{task}} target"),
            ),
            UP_DOWN,
        ),
        8,
    )
    lay.add(
        table(
            "Task errors now",
            "What is wrong with each task right now: source_<class> / target_<class> while "
            "that side's poll fails, task_failed while the task has failed (its checkpoint "
            "or, when the target refused that write, the task's local report).",
            targets((f"replwatch_sync_last_error_info{{{t}}}", "{{task}}")),
            overrides=[],
            transformations=[
                {
                    "id": "organize",
                    "options": {"excludeByName": {"Time": True, "Value": True, "__name__": True}},
                }
            ],
        ),
        8,
    )
    return dashboard(
        SYNC_UID,
        "replwatch / sync tasks",
        "Sync tasks (replwatch's syncer): state, lag, full-sync progress, stream throughput, "
        "filters, ha leases and the task processes.",
        [
            query_var(
                "task",
                "Task",
                "label_values(replwatch_sync_state, task)",
                multi=True,
                include_all=True,
            )
        ],
        lay,
    )


# ----------------------------------------------------------------------------- output

DASHBOARDS: dict[str, Callable[[], Json]] = {
    "replwatch-fleet.json": fleet,
    "replwatch-group.json": group,
    "replwatch-sync.json": sync,
}


def render(build: Callable[[], Json]) -> str:
    return json.dumps(build(), indent=2) + "\n"


def main(argv: list[str]) -> int:
    check = "--check" in argv
    stale = []
    for name, build in DASHBOARDS.items():
        path = HERE / name
        text = render(build)
        if check:
            if not path.exists() or path.read_text() != text:
                stale.append(name)
        else:
            path.write_text(text)
    if stale:
        print(f"out of date (run python grafana/generate.py): {', '.join(stale)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
