"""Paging as an on-call engineer gets it, live: real redis-servers, `replwatch run`, a real
Prometheus scraping it and evaluating the shipped rules, a real Alertmanager with the shipped
routing and inhibition, and a webhook receiver per receiver (`pager`, `notify`).

Timing is the shipped timing divided by SCALE, everywhere at once: the alerts' `for:` (not
those whose expressions have a range window of their own: windows are not scaled), every
route's group_wait / group_interval / repeat_interval and Prometheus's resend delay (1m → 2s).
Expressions, thresholds, grouping and inhibition are the shipped ones.

Faults, one after another, each with exactly the notifications expected:
- a replica frozen (SIGSTOP): one page, RedisNodeUnreachable for that replica; its link-down
  and lag alerts are explained by it and muted; the page resolves once;
- the same replica killed a moment after that page resolved: paged again within the pager
  route's group_interval (1m shipped; a page waited 287 s behind an earlier one);
- another replica under CLIENT PAUSE WRITE (it answers, and applies nothing): one notice,
  RedisReplicaLagHigh for it; nothing pages; resolves once;
- a sync task's target stopped (a DR copy that stops updating): a notice that the task fails
  (RedisSyncTaskFailing), then a page (RedisSyncTaskCopyStale), which mutes the notice;
  both resolve once when the target is back;
- replwatch stopped: a page (ReplwatchDown); resolves once it is back.
At the end: every resolved notice went out exactly once, and only for alerts whose firing was
delivered; the notify receiver never got a critical, the pager never a warning.

One threshold is a duration and is scaled like `for:`: RedisSyncTaskCopyStale's checkpoint
age of 300 s (10 s here), else the stopped copy would page after 6 minutes; its expression
is otherwise the shipped one (alerts/tests/sync.yml checks the 300 s with promtool).
"""

from __future__ import annotations

import contextlib
import time
from pathlib import Path
from typing import Any

import pytest
import yaml

from .support.daemons import RunningDaemon
from .support.datasets import connect, write_burst
from .support.promstack import (
    PrometheusAPI,
    ServiceProcess,
    WebhookReceiver,
    alerts_with_windows,
    scaled,
    seconds_of,
    start_alertmanager,
    start_prometheus,
    write_prometheus_config,
    write_scaled_alertmanager_config,
    write_scaled_rules,
)
from .support.servers import LOCALHOST, RedisProcess, ServerSet, free_port, wait_for, wait_synced

ROOT = Path(__file__).resolve().parent.parent
RULES = ROOT / "alerts" / "replwatch.rules.yml"
AM_CONFIG = ROOT / "alerts" / "alertmanager.yml"
SCALE = 30
GROUP = "cache"
# the pager route's group_interval as shipped (tests/test_alertmanager_config.py checks it)
PAGER_GROUP_INTERVAL = seconds_of("1m") / SCALE
# what is not scaled between a fault and a page: the poll (300 ms), Prometheus's scrape and
# evaluation (1 s each here) and a delivery
PIPELINE = 4.0


def within_documented(fault_at: float, delivered: float | None, documented: str) -> None:
    """A page arrived within the time docs/alerts.md ("Alerting: Alertmanager routing, and the
    live check") states, scaled, plus PIPELINE."""
    assert delivered is not None
    allowed = seconds_of(documented) / SCALE + PIPELINE
    assert delivered - fault_at <= allowed, (delivered - fault_at, allowed, documented)


TASK = "dr"
COPY_STALE = "replwatch_sync_checkpoint_age_seconds > 300"  # a duration: scaled like for:

Key = tuple[str, str, str]  # (receiver, alertname, replica or task or "")


def _key(receiver: str, alert: dict[str, Any]) -> Key:
    labels = alert["labels"]
    return (receiver, labels["alertname"], labels.get("replica") or labels.get("task", ""))


class Pager:
    """What the receivers got, by (receiver, alertname, replica): firing and resolved
    deliveries with their arrival times."""

    def __init__(self, webhook: WebhookReceiver) -> None:
        self.webhook = webhook

    def deliveries(self, status: str) -> list[tuple[float, Key]]:
        out = []
        for receiver in ("pager", "notify"):
            for at, note in self.webhook.deliveries("/" + receiver):
                for alert in note.get("alerts", []):
                    if alert.get("status") == status:
                        out.append((at, _key(receiver, alert)))
        return out

    def severities(self) -> set[tuple[str, str]]:
        """(receiver, severity) of every alert delivered."""
        return {
            (receiver, alert["labels"].get("severity", ""))
            for receiver in ("pager", "notify")
            for _, note in self.webhook.deliveries("/" + receiver)
            for alert in note.get("alerts", [])
        }

    def firing_since(self, t: float) -> set[Key]:
        return {k for at, k in self.deliveries("firing") if at >= t}

    def first(self, key: Key, status: str, since: float) -> float | None:
        times = [at for at, k in self.deliveries(status) if k == key and at >= since]
        return min(times) if times else None


def firing_in_prometheus(api: PrometheusAPI, name: str, replica: str = "") -> bool:
    return any(
        a["labels"].get("alertname") == name
        and a["labels"].get("replica", "") == replica
        and a["state"] == "firing"
        for a in api.alerts()
    )


def replwatch_config(
    path: Path,
    port: int,
    master: RedisProcess,
    replicas: list[RedisProcess],
    source: RedisProcess,
    target: RedisProcess,
) -> Path:
    config = {
        "exporter": {"listen": f"{LOCALHOST}:{port}"},
        "poll": {"interval": "300ms", "timeout": "250ms"},
        "heartbeat": {"interval": "100ms"},
        "groups": [{"name": GROUP, "master": master.url, "replicas": [r.url for r in replicas]}],
        "sync": {"tasks": [{"name": TASK, "source": source.url, "target": target.url}]},
    }
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


@pytest.mark.timeout(240)
def test_each_fault_pages_or_notifies_exactly_once(
    debian_servers: ServerSet, tmp_path: Path
) -> None:
    master = debian_servers.start("master")
    r1 = debian_servers.start("r1", replica_of=master)
    r2 = debian_servers.start("r2", replica_of=master)
    for replica in (r1, r2):
        wait_synced(replica, master)
    source = debian_servers.start("source")
    target = debian_servers.start("target")
    webhook = WebhookReceiver()
    pager = Pager(webhook)
    services: list[ServiceProcess] = []
    port = free_port()
    config = replwatch_config(tmp_path / "replwatch.yaml", port, master, [r1, r2], source, target)
    # ReplwatchAbsent's absent() is true from Prometheus's start until its first scrape, which
    # is not scaled: 4 s of for: fired on it once while the other lane loaded the machine
    rules = write_scaled_rules(tmp_path / "rules.yml", RULES, SCALE, keep=["ReplwatchAbsent"])
    text = rules.read_text()
    assert text.count(COPY_STALE) == 1, f"{COPY_STALE!r} not in {RULES}"
    rules.write_text(text.replace(COPY_STALE, f"{COPY_STALE[:-3]}{300 // SCALE}"))
    daemons: list[RunningDaemon] = []
    try:
        alertmanager = start_alertmanager(
            tmp_path,
            write_scaled_alertmanager_config(tmp_path / "am.yml", AM_CONFIG, webhook, SCALE),
        )
        services.append(alertmanager)
        daemons.append(RunningDaemon(config, port, log=tmp_path / "replwatch.log"))
        # serving before Prometheus starts: else ReplwatchDown, whose 2m for: is 4 s here,
        # fires while a loaded machine starts the daemon
        daemons[-1].wait_ready()
        prometheus = start_prometheus(
            tmp_path,
            write_prometheus_config(
                tmp_path / "prometheus.yml",
                rules,
                f"{LOCALHOST}:{port}",
                f"{LOCALHOST}:{alertmanager.port}",
            ),
            f"--rules.alert.resend-delay={scaled('1m', SCALE)}",
        )
        services.append(prometheus)
        api = PrometheusAPI(prometheus.base)
        wait_for(lambda: api.target_health() == ["up"], 20, "Prometheus to scrape replwatch")
        wait_for(lambda: len(api.query("replwatch_replica_lag_seconds")) == 2, 20, "both replicas")
        wait_for(
            lambda: api.query(f'replwatch_sync_state{{task="{TASK}",state="incremental"}} == 1'),
            30,
            "the sync task incremental",
        )
        # healthy: a few evaluations, and nothing pending or firing, nothing delivered
        time.sleep(3.0)  # evaluations happening is the premise; nothing to poll for
        assert [a["labels"]["alertname"] for a in api.alerts()] == []
        assert webhook.received == []

        # their for: is the shipped one (minutes)
        slow_for = alerts_with_windows(RULES) | {"ReplwatchAbsent"}

        def quiet() -> None:
            """Until nothing is firing, nor pending with a scaled for: (one with its shipped
            for: of minutes cannot fire within this run): the previous fault is over."""
            deadline = time.monotonic() + 30
            while left := [
                (a["labels"]["alertname"], a["state"])
                for a in api.alerts()
                if a["state"] == "firing" or a["labels"]["alertname"] not in slow_for
            ]:
                assert time.monotonic() < deadline, f"still pending or firing: {left}"
                time.sleep(0.2)

        # --- a frozen replica: one page, for it; what it explains is muted
        start = time.monotonic()
        r1.pause()
        page = ("pager", "RedisNodeUnreachable", r1.label)
        paged = wait_for(lambda: pager.first(page, "firing", start), 30, "the replica paged")
        within_documented(start, paged, "70s")  # "a replica that stops answering … ~1 min 10 s"
        # its link-down alert fired with it and would page now if it were not muted (its lag
        # would need 5 s and `for:` more: the replica is thawed before that)
        time.sleep(PAGER_GROUP_INTERVAL)
        r1.resume()
        assert pager.firing_since(start) == {page}, pager.deliveries("firing")
        wait_for(lambda: pager.first(page, "resolved", start), 30, "its page resolved")
        resolved_at = time.monotonic()
        quiet()

        # --- killed right after: paged again within the pager's group_interval
        r1.kill()
        killed = time.monotonic()
        wait_for(
            lambda: firing_in_prometheus(api, "RedisNodeUnreachable", r1.label),
            30,
            "Prometheus fires again",
        )
        fired = time.monotonic()
        again = wait_for(lambda: pager.first(page, "firing", resolved_at), 30, "paged again")
        assert again is not None
        delivered = again
        assert delivered - fired <= PAGER_GROUP_INTERVAL + 1.5, delivered - fired
        assert pager.firing_since(killed) == {page}
        r1.restart(wipe=False)
        wait_synced(r1, master)
        wait_for(lambda: pager.first(page, "resolved", delivered), 30, "the second page resolved")
        quiet()

        # --- a replica under CLIENT PAUSE WRITE: it answers, applies nothing: one notice
        start = time.monotonic()
        notice = ("notify", "RedisReplicaLagHigh", r2.label)
        with connect(r2) as client:
            client.execute_command("CLIENT", "PAUSE", 60_000, "WRITE")
        try:

            def noticed() -> float | None:
                write_burst(master)
                return pager.first(notice, "firing", start)

            wait_for(noticed, 40, "the lagging replica noticed", interval=0.2)
            time.sleep(2 * PAGER_GROUP_INTERVAL)
        finally:
            with connect(r2) as client:
                client.execute_command("CLIENT", "UNPAUSE")
        assert pager.firing_since(start) == {notice}, pager.deliveries("firing")
        wait_synced(r2, master)
        wait_for(lambda: pager.first(notice, "resolved", start), 60, "the notice resolved")
        quiet()

        # --- a DR copy whose target goes away: the task fails (a notice), then the copy is
        # too old (a page, which mutes the notice from then on)
        start = time.monotonic()
        failing = ("notify", "RedisSyncTaskFailing", TASK)
        stale = ("pager", "RedisSyncTaskCopyStale", TASK)
        target.stop()

        def copy_paged() -> float | None:
            write_burst(source)
            return pager.first(stale, "firing", start)

        paged = wait_for(copy_paged, 60, "the stopped copy paged", interval=0.2)
        within_documented(start, paged, "370s")  # "a DR copy that stops updating … ~6 min 10 s"
        time.sleep(PAGER_GROUP_INTERVAL)
        assert pager.firing_since(start) == {failing, stale}, pager.deliveries("firing")
        target.restart()  # empty: the task copies the source again
        wait_for(lambda: pager.first(stale, "resolved", start), 60, "the copy's page resolved")
        wait_for(lambda: pager.first(failing, "resolved", start), 60, "the notice resolved")
        quiet()

        # --- replwatch stopped: a page; resolved when it is back
        start = time.monotonic()
        daemons[-1].stop()
        down = ("pager", "ReplwatchDown", "")
        paged = wait_for(lambda: pager.first(down, "firing", start), 30, "replwatch down paged")
        within_documented(start, paged, "130s")  # "replwatch down after ~2 min 10 s"
        daemons.append(RunningDaemon(config, port, log=tmp_path / "replwatch.log"))
        wait_for(lambda: pager.first(down, "resolved", start), 40, "replwatch down resolved")
        assert pager.firing_since(start) <= {down, ("pager", "ReplwatchAbsent", "")}

        # --- resolved notices: once each, and only where the firing was delivered
        time.sleep(3 * PAGER_GROUP_INTERVAL + seconds_of("1m") / SCALE)  # resends land
        firing = {k for _, k in pager.deliveries("firing")}
        resolved = [k for _, k in pager.deliveries("resolved")]
        assert set(resolved) <= firing, (resolved, firing)
        for key in firing:
            # the frozen-then-killed replica's page fired twice and resolved twice
            expected = 2 if key == page else 1
            assert resolved.count(key) == expected, (key, resolved)
        assert pager.severities() <= {("pager", "critical"), ("notify", "warning")}
    finally:
        r1.resume()
        for daemon in daemons:
            daemon.stop()
        for service in reversed(services):
            with contextlib.suppress(Exception):
                service.stop()
        webhook.close()
