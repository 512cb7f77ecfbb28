"""replwatch as a user runs it, and what it serves.

- cli(): one `replwatch …` command (check-config, status, probe, sync, …) to completion;
- RunningDaemon: `replwatch run` as a subprocess, on a fixed port or on the port it reports
  in its log (exporter.listen 127.0.0.1:0: no port race), its output in a log file (appended
  to: one file can hold several runs, log_text() is this run's), always stopped by pid
  (SIGTERM, SIGKILL after a grace period; task processes it leaves behind are killed too);
- start_routing_daemon(): the daemon the routing tests watch one group "g" with;
- fetch(): one HTTP request (bearer token, basic auth, TLS context, headers, a body);
- series() / value(): exposition lines of a metric, grepped; parse_metrics() /
  sample_value(): the same, parsed by prometheus_client (a label set must match one series);
- CONTRACT: the metric names scripts, dashboards and users rely on (DESIGN.md's contract);
- child_pids(): a process's children (the daemon's task processes).
"""

from __future__ import annotations

import base64
import contextlib
import os
import re
import signal
import ssl
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import Mapping, Sequence
from pathlib import Path
from types import TracebackType

from prometheus_client.parser import text_string_to_metric_families

from .servers import RedisProcess, free_port, wait_for

CONTRACT = (
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
)

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]

_LISTENING = re.compile(r"listening on (https?://[\d.:]+)/metrics")


def cli(
    *args: str,
    timeout: float = 60,
    env: Mapping[str, str] | None = None,
    input: str | None = None,
) -> subprocess.CompletedProcess[str]:
    """`python -m replwatch *args` to completion; `env` is the whole environment if given."""
    return subprocess.run(
        [sys.executable, "-m", "replwatch", *args],
        input=input,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
        env=None if env is None else dict(env),
    )


def fetch(
    url: str,
    method: str = "GET",
    token: str | None = None,
    *,
    context: ssl.SSLContext | None = None,
    basic: tuple[str, str] | None = None,
    headers: dict[str, str] | None = None,
    data: bytes | None = None,
    timeout: float = 10,
) -> tuple[int, str]:
    """(status, body) of one request; an HTTP error status is an answer, not an exception.
    The token goes in `Authorization: Bearer`, or in X-Replwatch-Token next to basic auth."""
    request = urllib.request.Request(url, data=data, method=method)
    if basic is not None:
        pair = base64.b64encode(f"{basic[0]}:{basic[1]}".encode()).decode()
        request.add_header("Authorization", f"Basic {pair}")
        if token is not None:
            request.add_header("X-Replwatch-Token", token)
    elif token is not None:
        request.add_header("Authorization", f"Bearer {token}")
    for name, header in (headers or {}).items():
        request.add_header(name, header)
    try:
        with urllib.request.urlopen(request, timeout=timeout, context=context) as resp:
            return resp.status, resp.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


def series(text: str, name: str, **labels: str) -> list[tuple[str, float]]:
    """The exposition lines of metric `name` carrying all `labels`, with their values."""
    out = []
    for line in text.splitlines():
        if line.startswith((name + "{", name + " ")) and all(
            f'{k}="{v}"' in line for k, v in labels.items()
        ):
            out.append((line, float(line.rsplit(" ", 1)[1])))
    return out


def value(text: str, name: str, **labels: str) -> float | None:
    """The value of the first series of `name` carrying all `labels`; None if there is none."""
    found = series(text, name, **labels)
    return found[0][1] if found else None


def parse_metrics(text: str) -> Samples:
    """Exposition text → {(sample name, labels): value} (parsed, not grepped)."""
    out: Samples = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, frozenset(s.labels.items()))] = s.value
    return out


def sample_value(samples: Samples, name: str, **labels: str) -> float | None:
    """The value of the one sample of `name` whose labels include `labels` (more than one
    is an error: the labels must single a series out)."""
    want = set(labels.items())
    found = [v for (n, ls), v in samples.items() if n == name and want <= ls]
    assert len(found) <= 1, f"{name} {labels} matches {len(found)} series"
    return found[0] if found else None


def child_pids(parent: int) -> list[int]:
    out = subprocess.run(
        ["pgrep", "-P", str(parent)], capture_output=True, text=True, check=False
    ).stdout
    return [int(p) for p in out.split()]


class RunningDaemon:
    """`replwatch [global_args] run -c config [args]` as a subprocess.

    `port`: the exporter's port as configured; None when exporter.listen is 127.0.0.1:0, and
    then `base` is read from the daemon's "listening on" log line (waited for on first use).
    `context` (an SSL context trusting the daemon's certificate) and `basic` (user, password)
    for a daemon behind a web config. stdout and stderr go to `log` (default: daemon.log next
    to the config), appended to. Use it as a context manager, or stop() it in a finally block.
    """

    def __init__(
        self,
        config: Path,
        port: int | None = None,
        *args: str,
        env: dict[str, str] | None = None,
        context: ssl.SSLContext | None = None,
        basic: tuple[str, str] | None = None,
        global_args: Sequence[str] = (),
        log: Path | None = None,
    ) -> None:
        self.scheme = "https" if context is not None else "http"
        self._base = None if port is None else f"{self.scheme}://127.0.0.1:{port}"
        self.context = context
        self.basic = basic
        self.log_path = log if log is not None else config.parent / "daemon.log"
        self._log = self.log_path.open("ab")
        self._log_start = self._log.tell()
        self._children: set[int] = set()
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "replwatch", *global_args, "run", "-c", str(config), *args],
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            env=None if env is None else {**os.environ, **env},
        )

    @property
    def pid(self) -> int:
        return self.proc.pid

    @property
    def base(self) -> str:
        """http(s)://127.0.0.1:<port>, as configured or as the daemon's log says."""
        if self._base is None:

            def listening() -> str | None:
                assert self.proc.poll() is None, f"daemon exited early:\n{self.log_text()}"
                found = _LISTENING.search(self.log_text())
                return found.group(1) if found else None

            found = wait_for(listening, 15, "the daemon's 'listening on' log line")
            assert found is not None  # (wait_for returns a truthy value)
            self._base = found
        return self._base

    def fetch(
        self,
        path: str,
        method: str = "GET",
        token: str | None = None,
        *,
        headers: dict[str, str] | None = None,
        data: bytes | None = None,
        timeout: float = 10,
    ) -> tuple[int, str]:
        return fetch(
            self.base + path,
            method,
            token,
            context=self.context,
            basic=self.basic,
            headers=headers,
            data=data,
            timeout=timeout,
        )

    def wait_ready(self, timeout: float = 15) -> None:
        wait_for(lambda: self.fetch("/-/ready")[0] == 200, timeout, "daemon ready")

    def metrics(self) -> str:
        status, text = self.fetch("/metrics")
        assert status == 200, text
        return text

    def samples(self) -> Samples:
        return parse_metrics(self.metrics())

    def children(self) -> list[int]:
        """The daemon's child processes (its sync task processes)."""
        found = child_pids(self.proc.pid) if self.proc.poll() is None else []
        self._children.update(found)
        return found

    def log_text(self) -> str:
        """What this run wrote to the log."""
        with self.log_path.open("rb") as log:
            log.seek(self._log_start)
            return log.read().decode(errors="replace")

    def stop(self, grace: float = 10) -> None:
        """SIGTERM, SIGKILL after `grace` seconds (at once when grace is 0); then any task
        process seen still running is killed (the daemon stops them: a safety net)."""
        self.children()
        if self.proc.poll() is None:
            if grace > 0:
                self.proc.send_signal(signal.SIGTERM)
                with contextlib.suppress(subprocess.TimeoutExpired):
                    self.proc.wait(grace)
            if self.proc.poll() is None:
                self.proc.kill()
            self.proc.wait(10)
        for pid in self._children:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signal.SIGKILL)
        self._log.close()

    def __enter__(self) -> RunningDaemon:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


def start_routing_daemon(
    workdir: Path,
    master: RedisProcess,
    replicas: Sequence[RedisProcess],
    publish: RedisProcess | None = None,
) -> RunningDaemon:
    """A ready daemon watching group "g" (master and replicas) with the routing tests'
    thresholds: out after 1 s of lag for 500 ms, back under 0.3 s for 1 s; with `publish`,
    its routing table published to that server every 300 ms."""
    port = free_port()
    cfg = workdir / "c.yaml"
    reps = ", ".join(f'"{r.url}"' for r in replicas)
    text = (
        f'exporter: {{listen: "127.0.0.1:{port}"}}\n'
        "poll: {interval: 250ms, timeout: 200ms}\nheartbeat: {interval: 100ms}\n"
        "routing: {trip: {lag_seconds: 1, for: 500ms}, recover: {lag_seconds: 0.3, for: 1s}}\n"
    )
    if publish is not None:
        text += f'publish: {{url: "{publish.url}", interval: 300ms}}\n'
    text += f'groups: [{{name: g, master: "{master.url}", replicas: [{reps}]}}]\n'
    cfg.write_text(text)
    daemon = RunningDaemon(cfg, port)
    try:
        daemon.wait_ready()
    except BaseException:
        daemon.stop()
        raise
    return daemon
