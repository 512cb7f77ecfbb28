"""The CLI as a user runs it, against real redis-server processes: check-config, status (table
and JSON, exit codes), --version, and the `run` daemon (readiness, the metric contract with
host:port node labels, promtool, a replica dying, SIGTERM). The master is password-protected
and its password must show up nowhere."""

from __future__ import annotations

import json
import re
import shutil
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
from prometheus_client.parser import text_string_to_metric_families

import replwatch

from .harness import RedisProcess, ServerSet, require_build, wait_for

SECRET = "s3cr3t-xyz"
GROUP = "cache"
CONTRACT = [
    "replwatch_replica_lag_seconds",
    "replwatch_replica_heartbeat_lag_seconds",
    "replwatch_replica_offset_lag_seconds",
    "replwatch_replica_ack_age_seconds",
    "replwatch_replica_lag_bytes",
    "replwatch_replica_link_up",
    "replwatch_replica_sync_in_progress",
    "replwatch_master_repl_offset_bytes",
    "replwatch_replica_repl_offset_bytes",
    "replwatch_backlog_size_bytes",
    "replwatch_replica_backlog_usage_ratio",
    "replwatch_node_up",
    "replwatch_poll_duration_seconds",
    "replwatch_build_info",
]
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

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


# ----------------------------------------------------------------------------- helpers


def cli(*args: str, timeout: float = 30) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "replwatch", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def http_get(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=2) as resp:
            return resp.status, resp.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


def parse_metrics(text: str) -> Samples:
    """Exposition text → {(sample name, labels): value} (parsed, not grepped)."""
    out: Samples = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, frozenset(s.labels.items()))] = s.value
    return out


def value(samples: Samples, name: str, **labels: str) -> float | None:
    want = set(labels.items())
    found = [v for (n, ls), v in samples.items() if n == name and want <= ls]
    assert len(found) <= 1, f"{name} {labels} matches {len(found)} series"
    return found[0] if found else None


def synced(replica: RedisProcess, master: RedisProcess) -> bool:
    with (
        redis.Redis(port=master.port, password=SECRET, socket_timeout=2) as m,
        redis.Redis(port=replica.port, socket_timeout=2) as r,
    ):
        minfo, rinfo = m.info("replication"), r.info("replication")
    return bool(
        rinfo.get("master_link_status") == "up"
        and rinfo.get("master_replid") == minfo.get("master_replid")
        and rinfo.get("slave_repl_offset") == minfo.get("master_repl_offset")
    )


@pytest.fixture
def pair(tmp_path: Path) -> Iterator[tuple[RedisProcess, RedisProcess]]:
    """A password-protected master and one replica (no password of its own), linked."""
    servers = ServerSet(require_build("redis-7.0"), tmp_path / "servers")
    try:
        master = servers.start("master")
        # the harness's start-up PING has no password: require it once the server is up
        with redis.Redis(port=master.port, socket_timeout=2) as client:
            client.config_set("requirepass", SECRET)
        replica = servers.start("replica", replica_of=master, extra=["--masterauth", SECRET])
        wait_for(lambda: synced(replica, master), 15, "replica linked and caught up")
        yield master, replica
    finally:
        servers.close()


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
        "groups[1].sentinel.addresses: Field required",
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
    assert result.returncode == 1
    assert result.stderr.strip() == f"replwatch: --group: no group named 'nope' in {cfg}"


# ----------------------------------------------------------------------------- daemon


class Daemon:
    """`python -m replwatch run` as a subprocess; stderr goes to a file we can read while it
    runs (it names the bound port: exporter.listen is 127.0.0.1:0, so no port race)."""

    def __init__(self, cfg: Path, workdir: Path) -> None:
        self.log_path = workdir / "daemon.stderr"
        self._log = self.log_path.open("wb")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "replwatch", "--log-level", "debug", "run", "-c", str(cfg)],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=self._log,
        )
        self.base = ""

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def wait_listening(self, timeout: float = 15) -> str:
        def bound() -> str | None:
            assert self.proc.poll() is None, f"daemon exited early:\n{self.log()}"
            m = re.search(r"listening on (http://127\.0\.0\.1:\d+)/metrics", self.log())
            return m.group(1) if m else None

        self.base = wait_for(bound, timeout, "the daemon's 'listening on' log line")
        return self.base

    def scrape(self) -> tuple[str, Samples]:
        status, text = http_get(self.base + "/metrics")
        assert status == 200, text
        return text, parse_metrics(text)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=10)
        self._log.close()


@pytest.mark.timeout(90)
def test_run_daemon_metrics_failure_and_sigterm(
    pair: tuple[RedisProcess, RedisProcess], tmp_path: Path
) -> None:
    master, replica = pair
    cfg = write_config(tmp_path / "c.yaml", master, [replica])
    mlabel, rlabel = f"127.0.0.1:{master.port}", f"127.0.0.1:{replica.port}"
    daemon = Daemon(cfg, tmp_path)
    scraped: list[str] = []
    try:
        base = daemon.wait_listening()
        ready_statuses: list[int] = []

        def ready() -> bool:
            status, _ = http_get(base + "/-/ready")
            ready_statuses.append(status)
            return status == 200

        wait_for(ready, 15, "/-/ready 200")
        assert set(ready_statuses) <= {200, 503}, ready_statuses
        assert http_get(base + "/-/healthy") == (200, "OK\n")

        # heartbeat lag needs one heartbeat write seen on the replica: poll for it
        def full_contract() -> tuple[str, Samples] | None:
            text, samples = daemon.scrape()
            scraped.append(text)
            if value(samples, "replwatch_replica_heartbeat_lag_seconds", replica=rlabel) is None:
                return None
            return text, samples

        text, samples = wait_for(full_contract, 15, "heartbeat lag of the replica exported")
        names = {name for name, _ in samples}
        for name in CONTRACT:
            assert name in names, f"{name} missing from /metrics"

        # node labels are host:port as configured; values are those of a healthy pair
        assert value(samples, "replwatch_node_up", group=GROUP, node=mlabel, role="master") == 1
        assert value(samples, "replwatch_node_up", group=GROUP, node=rlabel, role="replica") == 1
        assert value(samples, "replwatch_replica_link_up", group=GROUP, replica=rlabel) == 1
        assert value(samples, "replwatch_replica_sync_in_progress", replica=rlabel) == 0
        assert value(samples, "replwatch_backlog_size_bytes", node=mlabel) == 1024 * 1024
        lag_bytes = value(samples, "replwatch_replica_lag_bytes", replica=rlabel)
        assert lag_bytes is not None and lag_bytes >= 0
        master_offset = value(samples, "replwatch_master_repl_offset_bytes", group=GROUP)
        replica_offset = value(samples, "replwatch_replica_repl_offset_bytes", replica=rlabel)
        assert master_offset is not None and replica_offset is not None
        assert master_offset - replica_offset == lag_bytes or lag_bytes == 0
        lag = value(samples, "replwatch_replica_lag_seconds", replica=rlabel)
        assert lag is not None and 0 <= lag < 2
        build = [ls for (n, ls), _ in samples.items() if n == "replwatch_build_info"]
        assert ("version", replwatch.__version__) in build[0]
        replica_series = {
            dict(ls).get("replica") for (n, ls), _ in samples.items() if "replica" in dict(ls)
        }
        assert replica_series == {rlabel}
        assert value(samples, "replwatch_node_last_error_info", node=rlabel) is None

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
            text, samples = daemon.scrape()
            scraped.append(text)
            # the first failed poll may see the old connection reset; then connects are refused
            reason = value(
                samples,
                "replwatch_node_last_error_info",
                group=GROUP,
                node=rlabel,
                reason="refused",
            )
            return samples if reason == 1 else None

        samples = wait_for(refused, 5, "replwatch_node_last_error_info reason=refused")
        assert value(samples, "replwatch_node_up", node=rlabel) == 0
        assert value(samples, "replwatch_replica_link_up", replica=rlabel) == 0

        lags: list[float] = []

        def lag_grew_three_times() -> bool:
            text, samples = daemon.scrape()
            scraped.append(text)
            current = value(samples, "replwatch_replica_lag_seconds", replica=rlabel)
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
        assert code == 0, daemon.log()
        assert elapsed < 5, f"SIGTERM took {elapsed:.1f}s"
    finally:
        daemon.stop()

    log = daemon.log()
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
    from .daemons import RunningDaemon
    from .harness import free_port

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
