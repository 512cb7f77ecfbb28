"""The CLI as a user runs it, against real redis-server processes: check-config, status (table
and JSON, exit codes), --version, and the `run` daemon (readiness, the metric contract with
host:port node labels, promtool, a replica dying, SIGTERM). The master is password-protected
and its password must show up nowhere."""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import time
from pathlib import Path

import pytest

import replwatch

from .support.daemons import (
    CONTRACT,
    RunningDaemon,
    Samples,
    cli,
    fetch,
    parse_metrics,
    sample_value,
)
from .support.servers import RedisProcess, ServerSet, free_port, wait_for, wait_synced

SECRET = "s3cr3t-xyz"
GROUP = "cache"
STATUS_COLUMNS = (
    "REPLICA",
    "LINK",
    "LAG BYTES",
    "LAG",
    "HEARTBEAT",
    "OFFSET CLOCK",
    "ACK AGE",
    "BACKLOG RISK",
)


@pytest.fixture
def pair(debian_servers: ServerSet) -> tuple[RedisProcess, RedisProcess]:
    """A password-protected master and one replica (no password of its own), linked."""
    master = debian_servers.start("master", ["--requirepass", SECRET])
    replica = debian_servers.start("replica", ["--masterauth", SECRET], replica_of=master)
    wait_synced(replica, master)
    return master, replica


def write_config(
    path: Path, master: RedisProcess, replicas: list[RedisProcess], listen: str = "127.0.0.1:0"
) -> Path:
    replica_urls = ", ".join(f'"redis://127.0.0.1:{r.port}"' for r in replicas)
    path.write_text(
        f"""
exporter: {{listen: "{listen}"}}
poll: {{interval: 200ms, timeout: 150ms}}
heartbeat: {{interval: 100ms}}
probe: {{enabled: false}}
groups:
  - name: {GROUP}
    master: "redis://:{SECRET}@127.0.0.1:{master.port}/0"
    replicas: [{replica_urls}]
"""
    )
    return path


# ----------------------------------------------------------------------------- CLI


def test_version() -> None:
    result = cli("--version")
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == f"replwatch {replwatch.__version__}"


def test_check_config_ok(tmp_path: Path) -> None:
    cfg = tmp_path / "ok.yaml"
    cfg.write_text(
        f'groups:\n  - name: a\n    master: "redis://:{SECRET}@127.0.0.1:6379"\n'
        '    replicas: ["127.0.0.1:6380", "127.0.0.1:6381"]\n'
    )
    result = cli("check-config", "-c", str(cfg))
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == f"{cfg}: OK (1 group(s), 3 node(s) configured)"
    assert SECRET not in result.stdout + result.stderr


def test_check_config_bad_lists_every_problem_on_its_own_line(tmp_path: Path) -> None:
    cfg = tmp_path / "bad.yaml"
    cfg.write_text(
        f"""
exporter: {{listen: "127.0.0.1:http"}}
poll: {{interval: 1s, timeout: 3s}}
heartbeat: {{interval: 10ms}}
groups:
  - name: "a b"
    master: "redis://:{SECRET}@127.0.0.1:70000"
    replicas: ["redis://127.0.0.1:6380", "redis://127.0.0.1:6380"]
  - name: c
    master: "http://:{SECRET}@127.0.0.1:1"
    sentinel: {{master_name: x}}
    bogus: 1
"""
    )
    result = cli("check-config", "-c", str(cfg))
    assert result.returncode == 2
    assert result.stdout == ""
    expected = [
        "exporter.listen: port must be 0-65535",
        "poll.timeout: must not exceed interval (a slow node would delay the next cycle)",
        "heartbeat.interval: must be at least 50ms",
        "groups[0].name: must be letters, digits, _ . : - only",
        "groups[0].master: port must be 1-65535",
        "groups[1].master: unsupported scheme 'http': use redis:// or rediss://",
        "groups[1].sentinel.addresses: required",
        "groups[1].bogus: unknown key",
    ]
    assert result.stderr.splitlines() == [f"{cfg}: {p}" for p in expected]
    assert "Traceback" not in result.stderr
    assert SECRET not in result.stderr


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("poll: {interval: 1s\n", "line 2, column 1: expected ',' or '}', but got '<stream end>'"),
        ("- just\n- a list\n", "<root>: must be a mapping of sections (exporter, groups, …)"),
        (None, "<file>: no such file"),
    ],
    ids=["yaml-syntax", "not-a-mapping", "missing-file"],
)
def test_check_config_unloadable(tmp_path: Path, text: str | None, problem: str) -> None:
    cfg = tmp_path / "c.yaml"
    if text is not None:
        cfg.write_text(text)
    result = cli("check-config", "-c", str(cfg))
    assert result.returncode == 2
    assert result.stderr.splitlines() == [f"{cfg}: {problem}"]


def test_run_without_groups_is_a_config_error(tmp_path: Path) -> None:
    cfg = tmp_path / "empty.yaml"
    cfg.write_text("poll: {interval: 1s}\n")
    result = cli("run", "-c", str(cfg))
    assert result.returncode == 2
    assert result.stderr.splitlines() == [
        f"{cfg}: groups: at least one group (or one sync task, or admin.token) is needed to run"
    ]


def test_status_table_json_and_down_replica(
    pair: tuple[RedisProcess, RedisProcess], tmp_path: Path
) -> None:
    master, replica = pair
    cfg = write_config(tmp_path / "c.yaml", master, [replica])
    label = f"127.0.0.1:{replica.port}"

    table = cli("status", "-c", str(cfg))
    assert table.returncode == 0, table.stderr
    lines = table.stdout.splitlines()
    assert lines[0].startswith(f"group {GROUP}  master 127.0.0.1:{master.port} (up, offset ")
    header = next(ln for ln in lines if ln.strip().startswith("REPLICA"))
    assert header.split() == " ".join(STATUS_COLUMNS).split()
    row = next(ln for ln in lines if ln.strip().startswith(label))
    assert row.split()[1] == "up"

    as_json = cli("status", "-c", str(cfg), "--json")
    assert as_json.returncode == 0, as_json.stderr
    data = json.loads(as_json.stdout)
    group = data["groups"][0]
    assert group["name"] == GROUP and group["master"] == f"127.0.0.1:{master.port}"
    r = group["replicas"][0]
    assert r["label"] == label
    assert isinstance(r["lag_bytes"], int) and r["lag_bytes"] >= 0
    assert r["link_up"] is True and r["following_master"] is True
    assert [n["up"] for n in group["nodes"]] == [True, True]

    replica.stop()
    down = cli("status", "-c", str(cfg))
    assert down.returncode == 1
    assert f"  ! {label}: refused: " in down.stdout
    row = next(ln for ln in down.stdout.splitlines() if ln.strip().startswith(label))
    assert row.split()[1] == "unreachable"
    down_json = cli("status", "-c", str(cfg), "--json")
    assert down_json.returncode == 1
    node = json.loads(down_json.stdout)["groups"][0]["nodes"][1]
    assert (node["up"], node["error_reason"]) == (False, "refused")

    for out in (table, as_json, down, down_json):
        assert SECRET not in out.stdout + out.stderr
        assert "Traceback" not in out.stderr


def test_status_unknown_group(pair: tuple[RedisProcess, RedisProcess], tmp_path: Path) -> None:
    master, replica = pair
    cfg = write_config(tmp_path / "c.yaml", master, [replica])
    result = cli("status", "-c", str(cfg), "--group", "nope")
    assert result.returncode == 2  # a usage error, like every other (issue 21)
    assert result.stderr.strip() == f"--group: no group named 'nope' in {cfg}"


# ----------------------------------------------------------------------------- daemon


@pytest.mark.timeout(90)
def test_run_daemon_metrics_failure_and_sigterm(
    pair: tuple[RedisProcess, RedisProcess], tmp_path: Path
) -> None:
    master, replica = pair
    cfg = write_config(tmp_path / "c.yaml", master, [replica])
    mlabel, rlabel = f"127.0.0.1:{master.port}", f"127.0.0.1:{replica.port}"
    # exporter.listen is 127.0.0.1:0: the daemon names the port it bound in its log
    daemon = RunningDaemon(
        cfg, None, global_args=("--log-level", "debug"), log=tmp_path / "daemon.stderr"
    )
    scraped: list[str] = []
    try:
        base = daemon.base
        ready_statuses: list[int] = []

        def ready() -> bool:
            status, _ = fetch(base + "/-/ready")
            ready_statuses.append(status)
            return status == 200

        wait_for(ready, 15, "/-/ready 200")
        assert set(ready_statuses) <= {200, 503}, ready_statuses
        assert fetch(base + "/-/healthy") == (200, "OK\n")

        # heartbeat lag needs one heartbeat write seen on the replica: poll for it
        def full_contract() -> tuple[str, Samples] | None:
            text = daemon.metrics()
            samples = parse_metrics(text)
            scraped.append(text)
            if (
                sample_value(samples, "replwatch_replica_heartbeat_lag_seconds", replica=rlabel)
                is None
            ):
                return None
            return text, samples

        text, samples = wait_for(full_contract, 15, "heartbeat lag of the replica exported")
        names = {name for name, _ in samples}
        for name in CONTRACT:
            assert name in names, f"{name} missing from /metrics"

        # node labels are host:port as configured; values are those of a healthy pair
        assert (
            sample_value(samples, "replwatch_node_up", group=GROUP, node=mlabel, role="master") == 1
        )
        assert (
            sample_value(samples, "replwatch_node_up", group=GROUP, node=rlabel, role="replica")
            == 1
        )
        assert sample_value(samples, "replwatch_replica_link_up", group=GROUP, replica=rlabel) == 1
        assert sample_value(samples, "replwatch_replica_sync_in_progress", replica=rlabel) == 0
        assert sample_value(samples, "replwatch_backlog_size_bytes", node=mlabel) == 1024 * 1024
        lag_bytes = sample_value(samples, "replwatch_replica_lag_bytes", replica=rlabel)
        assert lag_bytes is not None and lag_bytes >= 0
        master_offset = sample_value(samples, "replwatch_master_repl_offset_bytes", group=GROUP)
        replica_offset = sample_value(
            samples, "replwatch_replica_repl_offset_bytes", replica=rlabel
        )
        assert master_offset is not None and replica_offset is not None
        assert master_offset - replica_offset == lag_bytes or lag_bytes == 0
        lag = sample_value(samples, "replwatch_replica_lag_seconds", replica=rlabel)
        assert lag is not None and 0 <= lag < 2
        build = [ls for (n, ls), _ in samples.items() if n == "replwatch_build_info"]
        assert ("version", replwatch.__version__) in build[0]
        replica_series = {
            dict(ls).get("replica") for (n, ls), _ in samples.items() if "replica" in dict(ls)
        }
        assert replica_series == {rlabel}
        assert sample_value(samples, "replwatch_node_last_error_info", node=rlabel) is None

        promtool = shutil.which("promtool")
        assert promtool, "promtool (Debian package prometheus) is needed"
        check = subprocess.run(
            [promtool, "check", "metrics"],
            input=text,
            text=True,
            capture_output=True,
            check=False,
        )
        assert check.returncode == 0, check.stdout + check.stderr
        assert check.stdout.strip() == "" and check.stderr.strip() == "", (
            check.stdout + check.stderr
        )

        # the replica dies: a refused reason within a few poll cycles, lag growing
        replica.stop()

        def refused() -> Samples | None:
            text = daemon.metrics()
            samples = parse_metrics(text)
            scraped.append(text)
            # the first failed poll may see the old connection reset; then connects are refused
            reason = sample_value(
                samples,
                "replwatch_node_last_error_info",
                group=GROUP,
                node=rlabel,
                reason="refused",
            )
            return samples if reason == 1 else None

        samples = wait_for(refused, 5, "replwatch_node_last_error_info reason=refused")
        assert sample_value(samples, "replwatch_node_up", node=rlabel) == 0
        assert sample_value(samples, "replwatch_replica_link_up", replica=rlabel) == 0

        lags: list[float] = []

        def lag_grew_three_times() -> bool:
            text = daemon.metrics()
            samples = parse_metrics(text)
            scraped.append(text)
            current = sample_value(samples, "replwatch_replica_lag_seconds", replica=rlabel)
            assert current is not None and current > 0, "a dead replica's lag is never 0"
            if not lags or current != lags[-1]:
                lags.append(current)
            return len(lags) >= 3

        wait_for(lag_grew_three_times, 10, "three successive lag readings of the dead replica")
        assert lags == sorted(lags) and len(set(lags)) == len(lags), lags

        # SIGTERM: a clean exit, quickly
        daemon.proc.send_signal(signal.SIGTERM)
        started = time.monotonic()
        code = daemon.proc.wait(timeout=10)
        elapsed = time.monotonic() - started
        assert code == 0, daemon.log_text()
        assert elapsed < 5, f"SIGTERM took {elapsed:.1f}s"
    finally:
        daemon.stop()

    log = daemon.log_text()
    assert "Traceback" not in log, log
    assert SECRET not in log
    assert scraped
    for text in scraped:
        assert SECRET not in text


def test_sigterm_during_probe_rounds_stops_without_an_error(
    debian_servers: ServerSet, tmp_path: Path
) -> None:
    """A probe round that waits for a replica that never acknowledges (WAIT 1 on a master
    without one, 900 ms of every second) is in flight when SIGTERM comes: the daemon exits 0
    and logs no error (the round was once cancelled into a failed job with a traceback, and
    its abandoned reply futures into "Future exception was never retrieved")."""
    master = debian_servers.start("lonely")
    for attempt in range(3):
        port = free_port()
        cfg = tmp_path / f"run-{attempt}" / "config.yaml"
        cfg.parent.mkdir()
        cfg.write_text(
            f"exporter: {{listen: '127.0.0.1:{port}'}}\n"
            "probe: {interval: 1s, timeout: 900ms, replicas: 1}\n"
            f"groups:\n  - name: g\n    master: {master.url}\n"
        )
        daemon = RunningDaemon(cfg, port)
        try:
            wait_for(
                lambda d=daemon: 'replwatch_probe_total{group="g"' in d.fetch("/metrics")[1],
                20,
                "a first probe round",
            )
            time.sleep(0.2 * attempt)  # (a different moment of the next round each time)
            daemon.proc.send_signal(signal.SIGTERM)
            assert daemon.proc.wait(timeout=10) == 0
        finally:
            daemon.stop()
        log = daemon.log_text()
        for bad in ("Traceback", " ERROR ", "never retrieved"):
            assert bad not in log, log
