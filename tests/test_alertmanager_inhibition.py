"""The shipped inhibition, in a real Alertmanager: alerts with the labels the shipped rules give
are posted to its API, and its own view says which are muted and by what. `amtool config
routes test` cannot show inhibition; test_paging_live shows it along real faults, this shows
every rule of the table, each way it must and must not mute:

- a replica's own causes mute that replica's alerts, never another replica's nor the group's;
- a group-wide critical mutes every warning of the group and every replica's alerts;
- a sync task's critical mutes that task's warnings only.
"""

from __future__ import annotations

import json
import urllib.request
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from .support.promstack import (
    ServiceProcess,
    WebhookReceiver,
    http_json,
    start_alertmanager,
    write_scaled_alertmanager_config,
)
from .support.servers import wait_for

ROOT = Path(__file__).resolve().parent.parent
AM_CONFIG = ROOT / "alerts" / "alertmanager.yml"


@pytest.fixture(scope="module")
def alertmanager(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServiceProcess]:
    workdir = tmp_path_factory.mktemp("am")
    webhook = WebhookReceiver()
    service = start_alertmanager(
        workdir, write_scaled_alertmanager_config(workdir / "am.yml", AM_CONFIG, webhook, 30)
    )
    try:
        yield service
    finally:
        service.stop()
        webhook.close()


def alert(name: str, severity: str, scope: str, **labels: str) -> dict[str, Any]:
    return {"alertname": name, "severity": severity, "scope": scope, **labels}


def post(am: ServiceProcess, *alerts: dict[str, str]) -> None:
    ends = (datetime.now(UTC) + timedelta(minutes=5)).isoformat()
    body = json.dumps([{"labels": labels, "endsAt": ends} for labels in alerts]).encode()
    request = urllib.request.Request(
        am.base + "/api/v2/alerts", data=body, headers={"Content-Type": "application/json"}
    )
    with urllib.request.urlopen(request, timeout=5) as resp:
        assert resp.status == 200


def states(am: ServiceProcess, test: str) -> dict[str, str]:
    """alertname/replica-or-task → active | suppressed, for this test's alerts."""
    out = {}
    for a in http_json(am.base + "/api/v2/alerts"):
        labels = a["labels"]
        if labels.get("test") == test:
            key = f"{labels['alertname']}/{labels.get('replica') or labels.get('task', '')}"
            out[key] = a["status"]["state"]
    return out


def settled(am: ServiceProcess, test: str, expected: dict[str, str]) -> dict[str, str]:
    """Alertmanager's view once it matches `expected` (inhibition is evaluated as alerts
    arrive; the view is polled until it agrees or the time is up)."""
    seen: dict[str, dict[str, str]] = {}

    def agrees() -> bool:
        seen["now"] = states(am, test)
        return seen["now"] == expected

    try:
        wait_for(agrees, 10, "Alertmanager's inhibition")
    except AssertionError:
        raise AssertionError(f"expected {expected}, got {seen.get('now')}") from None
    return seen["now"]


def test_a_replica_mutes_only_its_own_alerts(alertmanager: ServiceProcess) -> None:
    g = {"group": "cache", "test": "replica"}
    post(
        alertmanager,
        alert("RedisNodeUnreachable", "critical", "replica", replica="r1", **g),
        alert("RedisReplicaLinkDown", "critical", "replica", replica="r1", **g),
        alert("RedisReplicaLagCritical", "critical", "replica", replica="r1", **g),
        alert("RedisReplicaLagHigh", "warning", "replica", replica="r1", **g),
        # another replica: its own link down mutes its lag, nothing of r1 touches it
        alert("RedisReplicaLinkDown", "critical", "replica", replica="r2", **g),
        alert("RedisReplicaLagCritical", "critical", "replica", replica="r2", **g),
        alert("RedisReplicaBacklogAtRisk", "warning", "replica", replica="r2", **g),
        alert("RedisReplicaLagHigh", "warning", "replica", replica="r3", **g),
        # its critical lag mutes its lag warning
        alert("RedisReplicaLagCritical", "critical", "replica", replica="r4", **g),
        alert("RedisReplicaLagHigh", "warning", "replica", replica="r4", **g),
        # the group's own warning: no replica's alert explains it
        alert("RedisHeartbeatStale", "warning", "group", **g),
    )
    settled(
        alertmanager,
        "replica",
        {
            "RedisNodeUnreachable/r1": "active",
            "RedisReplicaLinkDown/r1": "suppressed",
            "RedisReplicaLagCritical/r1": "suppressed",
            "RedisReplicaLagHigh/r1": "suppressed",
            "RedisReplicaLinkDown/r2": "active",
            "RedisReplicaLagCritical/r2": "suppressed",
            "RedisReplicaBacklogAtRisk/r2": "suppressed",
            "RedisReplicaLagHigh/r3": "active",
            "RedisReplicaLagCritical/r4": "active",
            "RedisReplicaLagHigh/r4": "suppressed",
            "RedisHeartbeatStale/": "active",
        },
    )


def test_a_group_wide_cause_mutes_the_group(alertmanager: ServiceProcess) -> None:
    g = {"group": "orders", "test": "group"}
    other = {"group": "cache2", "test": "group"}
    post(
        alertmanager,
        alert("RedisGroupDegraded", "critical", "group", **g),
        alert("RedisReplicaLinkDown", "critical", "replica", replica="r1", **g),
        alert("RedisReplicaLagHigh", "warning", "replica", replica="r2", **g),
        alert("RedisReadsRoutedToMaster", "warning", "group", **g),
        alert("RedisGroupNoReplicaServing", "critical", "group", **g),
        # another group: untouched
        alert("RedisReplicaLagHigh", "warning", "replica", replica="x1", **other),
    )
    found = settled(
        alertmanager,
        "group",
        {
            "RedisGroupDegraded/": "active",
            "RedisGroupNoReplicaServing/": "active",
            "RedisReplicaLinkDown/r1": "suppressed",
            "RedisReplicaLagHigh/r2": "suppressed",
            "RedisReadsRoutedToMaster/": "suppressed",
            "RedisReplicaLagHigh/x1": "active",
        },
    )
    assert len(found) == 6


def test_a_sync_task_critical_mutes_only_its_warnings(alertmanager: ServiceProcess) -> None:
    t = {"test": "task"}
    post(
        alertmanager,
        alert("RedisSyncTaskCopyStale", "critical", "task", task="dr", **t),
        alert("RedisSyncTaskFailing", "warning", "task", task="dr", **t),
        alert("RedisSyncTaskFailing", "warning", "task", task="other", **t),
        # replwatch's own alerts carry no group, replica or task: nothing mutes them
        alert("ReplwatchConfigReloadFailed", "warning", "replwatch", **t),
    )
    settled(
        alertmanager,
        "task",
        {
            "RedisSyncTaskCopyStale/dr": "active",
            "RedisSyncTaskFailing/dr": "suppressed",
            "RedisSyncTaskFailing/other": "active",
            "ReplwatchConfigReloadFailed/": "active",
        },
    )
