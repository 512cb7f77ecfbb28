"""`replwatch run`, `check-config`, `status` and `--version` as a user runs them, against real
servers: the exposition passes promtool, carries the contract names, drops to an error reason
when a replica dies, SIGTERM stops it, and the master's password shows up nowhere."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from .support.daemons import CONTRACT, RunningDaemon, cli, fetch, value
from .support.servers import RedisProcess, ServerSet, free_port, wait_for, wait_synced

SECRET = "s3cr3t-xyz-Pa55"


@pytest.fixture
def topology(debian_servers: ServerSet) -> tuple[RedisProcess, RedisProcess, ServerSet]:
    servers = debian_servers
    master = servers.start("master", ["--requirepass", SECRET, "--masterauth", SECRET])
    rep = servers.start(
        "replica", ["--requirepass", SECRET, "--masterauth", SECRET], replica_of=master
    )
    wait_synced(rep, master)
    return master, rep, servers


def write_config(
    tmp_path: Path, master: RedisProcess, replicas: list[RedisProcess], port: int
) -> Path:
    pw_file = tmp_path / "pw"
    pw_file.write_text(SECRET + "\n")
    cfg = tmp_path / "config.yaml"
    cfg.write_text(
        f"""
exporter: {{listen: "127.0.0.1:{port}"}}
poll: {{interval: 300ms, timeout: 250ms}}
heartbeat: {{interval: 100ms}}
groups:
  - name: cache
    master: "redis://:{SECRET}@127.0.0.1:{master.port}/0"
    replicas: [{", ".join(f'"redis://127.0.0.1:{r.port}"' for r in replicas)}]
    auth: {{password_file: "{pw_file}"}}
"""
    )
    return cfg


@pytest.mark.timeout(90)
def test_daemon_metrics_promtool_failure_and_sigterm(
    topology: tuple[RedisProcess, RedisProcess, ServerSet], tmp_path: Path
) -> None:
    master, rep, _ = topology
    port = free_port()
    cfg = write_config(tmp_path, master, [rep], port)
    assert cli("check-config", "-c", str(cfg)).returncode == 0
    daemon = RunningDaemon(cfg, port)
    base = daemon.base
    try:
        wait_for(lambda: fetch(base + "/-/healthy")[0] == 200, 15, "daemon healthy")
        wait_for(lambda: fetch(base + "/-/ready")[0] == 200, 15, "daemon ready")
        wait_for(
            lambda: (
                value(fetch(base + "/metrics")[1], "replwatch_replica_heartbeat_lag_seconds")
                is not None
            ),
            10,
            "heartbeat lag exported",
        )
        status, text = fetch(base + "/metrics")
        assert status == 200
        for name in CONTRACT:
            assert re.search(rf"^{name}[{{ ]", text, re.M), f"{name} missing"
        assert value(text, "replwatch_node_up", node=f"127.0.0.1:{rep.port}", role="replica") == 1
        assert value(text, "replwatch_replica_link_up", replica=f"127.0.0.1:{rep.port}") == 1

        assert (
            value(
                text,
                "replwatch_scheduler_runs_total",
                kind="poll",
                group="cache",
                outcome="completed",
            )
            or 0
        ) >= 1
        assert (
            value(
                text,
                "replwatch_scheduler_runs_total",
                kind="heartbeat",
                group="cache",
                outcome="ok",
            )
            or 0
        ) >= 1
        # the master's CLIENT LIST omem for this replica's link, and its share of the limit
        assert (
            value(text, "replwatch_replica_output_buffer_bytes", replica=f"127.0.0.1:{rep.port}")
            is not None
        )
        assert (
            value(
                text, "replwatch_replica_output_buffer_usage_ratio", replica=f"127.0.0.1:{rep.port}"
            )
            is not None
        )

        promtool = shutil.which("promtool")
        assert promtool, "promtool (Debian package prometheus) is needed"
        check = subprocess.run(
            [promtool, "check", "metrics"], input=text, text=True, capture_output=True, check=False
        )
        assert check.returncode == 0, check.stdout + check.stderr

        rep.stop()
        wait_for(
            lambda: (
                value(
                    fetch(base + "/metrics")[1],
                    "replwatch_node_last_error_info",
                    node=f"127.0.0.1:{rep.port}",
                    reason="refused",
                )
                == 1
            ),
            10,
            "refused reason exported",
        )
        first = value(fetch(base + "/metrics")[1], "replwatch_replica_lag_seconds")
        wait_for(
            lambda: (
                (value(fetch(base + "/metrics")[1], "replwatch_replica_lag_seconds") or 0)
                > (first or 0) + 0.5
            ),
            10,
            "lag of the dead replica growing",
        )
        assert SECRET not in fetch(base + "/metrics")[1]
    finally:
        daemon.proc.send_signal(signal.SIGTERM)
        try:
            code = daemon.proc.wait(timeout=10)
        finally:
            daemon.stop()
        output = daemon.log_text()
    assert code == 0, output
    assert SECRET not in output
    assert "Traceback" not in output


@pytest.mark.timeout(60)
def test_status_table_json_and_exit_codes(
    topology: tuple[RedisProcess, RedisProcess, ServerSet], tmp_path: Path
) -> None:
    master, rep, _ = topology
    cfg = write_config(tmp_path, master, [rep], free_port())
    table = cli("status", "-c", str(cfg))
    assert table.returncode == 0, table.stderr
    assert f"127.0.0.1:{rep.port}" in table.stdout
    for column in ("LINK", "LAG BYTES", "HEARTBEAT", "OFFSET CLOCK", "ACK AGE", "BACKLOG RISK"):
        assert column in table.stdout
    as_json = cli("status", "-c", str(cfg), "--json")
    data = json.loads(as_json.stdout)
    r = data["groups"][0]["replicas"][0]
    assert r["label"] == f"127.0.0.1:{rep.port}" and r["link_up"] is True
    assert isinstance(r["lag_bytes"], int)
    rep.stop()
    down = cli("status", "-c", str(cfg))
    assert down.returncode == 1
    assert "refused" in down.stdout
    for out in (table, as_json, down):
        assert SECRET not in out.stdout + out.stderr


def test_check_config_reports_every_problem(tmp_path: Path) -> None:
    cfg = tmp_path / "bad.yaml"
    cfg.write_text(
        """
poll: {interval: 1s, timeout: 3s}
groups:
  - name: a
    master: "redis://:hunter2@127.0.0.1:6379"
    replicas: ["redis://127.0.0.1:6380", "redis://127.0.0.1:70000"]
  - name: b
    master: "http://127.0.0.1:1"
    bogus: 1
"""
    )
    result = cli("check-config", "-c", str(cfg))
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert f"{cfg}: poll.timeout: must not exceed interval" in result.stderr
    assert f"{cfg}: groups[0].replicas[1]: port must be 1-65535" in lines
    assert any("groups[1].master: unsupported scheme 'http'" in ln for ln in lines)
    assert f"{cfg}: groups[1].bogus: unknown key" in lines
    assert "Traceback" not in result.stderr and "hunter2" not in result.stderr
    missing = cli("check-config", "-c", str(tmp_path / "nope.yaml"))
    assert missing.returncode == 2 and "no such file" in missing.stderr


def test_version() -> None:
    result = cli("--version")
    assert result.returncode == 0 and result.stdout.startswith("replwatch ")


def test_run_on_busy_port_is_one_line_error(tmp_path: Path) -> None:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen(1)
        busy = s.getsockname()[1]
        cfg = tmp_path / "c.yaml"
        cfg.write_text(
            f'exporter: {{listen: "127.0.0.1:{busy}"}}\n'
            'groups: [{name: a, master: "redis://127.0.0.1:1"}]\n'
        )
        result = cli("run", "-c", str(cfg))
    assert result.returncode == 1
    assert result.stderr.strip().count("\n") == 0, result.stderr
    assert "exporter.listen" in result.stderr and "Traceback" not in result.stderr


def test_demo_shows_starved_lag_and_cleans_up(tmp_path: Path) -> None:
    env = dict(os.environ, TMPDIR=str(tmp_path))
    proc = subprocess.Popen(
        [sys.executable, "-m", "replwatch", "demo", "--duration", "40s"],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=env,
    )
    lines: list[str] = []
    try:
        assert proc.stdout is not None
        url = None
        starved = None
        deadline = time.monotonic() + 20
        while (url is None or starved is None) and time.monotonic() < deadline:
            line = proc.stdout.readline()
            lines.append(line)
            if m := re.search(r"(http://127\.0\.0\.1:\d+)/metrics", line):
                url = m.group(1)
            if "starved" in line and (m := re.search(r"127\.0\.0\.1:(\d+)", line)):
                starved = f"127.0.0.1:{m.group(1)}"
        assert url and starved, "".join(lines)

        def starved_lag_visible() -> bool:
            text = fetch(url + "/metrics")[1]
            lag = value(text, "replwatch_replica_lag_seconds", replica=starved)
            ack = value(text, "replwatch_replica_ack_age_seconds", replica=starved)
            return lag is not None and ack is not None and lag > 2 and ack <= 1

        wait_for(starved_lag_visible, 25, "starved replica lag > 2s while ACK age <= 1")
        proc.send_signal(signal.SIGINT)
        code = proc.wait(timeout=15)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert code == 0
    assert not list(tmp_path.glob("replwatch-demo-*")), "demo left files behind"
    ports = re.findall(r"redis://127\.0\.0\.1:(\d+)", "".join(lines))
    assert len(ports) == 3
    for port in ports:
        import socket

        with socket.socket() as s:
            assert s.connect_ex(("127.0.0.1", int(port))) != 0, f"server on {port} still up"
