"""Prometheus and Alertmanager (Debian packages) for tests, and a webhook receiver.

- ServiceProcess: a server binary started on a free ephemeral port (retried when the bind
  races), ready when GET /-/ready answers 200, stopped by pid (SIGTERM, then SIGKILL);
- start_prometheus / start_alertmanager: each with its own storage directory in the test's tmp
  dir, listening on 127.0.0.1 only (Alertmanager without clustering);
- WebhookReceiver: a tiny HTTP server in a thread that records every JSON body POSTed to it,
  by path (Alertmanager's webhook_configs deliver there);
- PrometheusAPI: instant and range queries, /api/v1/alerts;
- scaled copies of the shipped rules and Alertmanager configuration: every `for:` and every
  routing duration divided by one factor, expressions and thresholds unchanged, receivers
  pointed to a webhook (so a live test runs the shipped timing, faster).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
import yaml

from .servers import LOCALHOST, free_port

PROMETHEUS = "/usr/bin/prometheus"
ALERTMANAGER = "/usr/bin/prometheus-alertmanager"


def require_binary(path: str, package: str) -> str:
    if shutil.which(path) is None:
        pytest.fail(f"{path} not installed (Debian package {package}; scripts/test installs it)")
    return path


def http_json(url: str, timeout: float = 5.0) -> Any:
    with urllib.request.urlopen(url, timeout=timeout) as resp:
        return json.loads(resp.read())


def _ready(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=1) as resp:
            return bool(resp.status == 200)
    except (urllib.error.URLError, OSError):
        return False


class ServiceProcess:
    """One server process listening on 127.0.0.1:<port>; stop() it in a finally block."""

    def __init__(self, name: str, workdir: Path, args_for_port: Callable[[int], list[str]]) -> None:
        self.name = name
        self.log = workdir / f"{name}.log"
        self._args_for_port = args_for_port
        self.proc: subprocess.Popen[bytes] | None = None
        self.port = 0

    @property
    def base(self) -> str:
        return f"http://{LOCALHOST}:{self.port}"

    def start(self, timeout: float = 30.0, attempts: int = 5) -> ServiceProcess:
        for _attempt in range(attempts):
            self.port = free_port()
            with self.log.open("ab") as out:
                self.proc = subprocess.Popen(
                    self._args_for_port(self.port),
                    stdin=subprocess.DEVNULL,
                    stdout=out,
                    stderr=subprocess.STDOUT,
                )
            deadline = time.monotonic() + timeout
            while self.proc.poll() is None and time.monotonic() < deadline:
                if _ready(self.base + "/-/ready"):
                    return self
                time.sleep(0.05)
            bind_race = "address already in use" in self.log_tail().lower()
            self.stop()
            if not bind_race:
                break
        raise AssertionError(f"{self.name} did not become ready:\n{self.log_tail()}")

    def log_tail(self, chars: int = 3000) -> str:
        try:
            return self.log.read_text(errors="replace")[-chars:]
        except FileNotFoundError:
            return ""

    def stop(self, grace: float = 5.0) -> None:
        proc, self.proc = self.proc, None
        if proc is None:
            return
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(proc.pid, signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=grace)
            if proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)


def start_prometheus(workdir: Path, config: Path, *extra: str) -> ServiceProcess:
    binary = require_binary(PROMETHEUS, "prometheus")
    storage = workdir / "prometheus-data"
    return ServiceProcess(
        "prometheus",
        workdir,
        lambda port: [
            binary,
            f"--config.file={config}",
            f"--storage.tsdb.path={storage}",
            f"--web.listen-address={LOCALHOST}:{port}",
            *extra,
        ],
    ).start()


_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}


def seconds_of(duration: str) -> float:
    """A Prometheus duration of one unit ("1m", "30s", "500ms", "0m") in seconds."""
    for unit in ("ms", "s", "m", "h"):
        if duration.endswith(unit) and duration[: -len(unit)].isdigit():
            return int(duration[: -len(unit)]) * _UNITS[unit]
    raise ValueError(f"unsupported duration {duration!r}")


def scaled(duration: str, divisor: float) -> str:
    return f"{max(0, round(seconds_of(duration) * 1000 / divisor))}ms"


def alerts_with_windows(rules: Path) -> set[str]:
    """The alerts whose expression, or a recording rule it reads, has a range window."""
    data = yaml.safe_load(rules.read_text())
    recorded = {
        r["record"]: str(r["expr"]) for g in data["groups"] for r in g["rules"] if "record" in r
    }
    out = set()
    for group in data["groups"]:
        for rule in group["rules"]:
            if "alert" not in rule:
                continue
            expr = str(rule["expr"])
            if "[" in expr or any("[" in e for name, e in recorded.items() if name in expr):
                out.add(str(rule["alert"]))
    return out


def write_scaled_rules(path: Path, rules: Path, divisor: float, keep: Iterable[str] = ()) -> Path:
    """The rules file with the alerts' `for:` divided by `divisor`, nothing else changed —
    except for alerts whose expression (or a recording rule it reads) has a range window of
    its own ([5m]): windows are not scaled, so a scaled `for:` would change what such an
    alert means (a slow spell long over would still fill the window); they keep theirs."""
    data = yaml.safe_load(rules.read_text())
    windowed = alerts_with_windows(rules) | set(keep)
    for group in data["groups"]:
        for rule in group["rules"]:
            if "alert" in rule and "for" in rule and rule["alert"] not in windowed:
                rule["for"] = scaled(str(rule["for"]), divisor)
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def write_scaled_alertmanager_config(
    path: Path, config: Path, webhook: WebhookReceiver, divisor: float
) -> Path:
    """The Alertmanager configuration with every route's group_wait, group_interval and
    repeat_interval divided by `divisor` (routes, matchers, grouping and inhibition as
    shipped) and every receiver a webhook to /<receiver name>."""
    data = yaml.safe_load(config.read_text())

    def scale(route: dict[str, Any]) -> None:
        for key in ("group_wait", "group_interval", "repeat_interval"):
            if key in route:
                route[key] = scaled(str(route[key]), divisor)
        for child in route.get("routes", []):
            scale(child)

    scale(data["route"])
    data["receivers"] = [
        {
            "name": r["name"],
            "webhook_configs": [{"url": webhook.url("/" + r["name"]), "send_resolved": True}],
        }
        for r in data["receivers"]
    ]
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def write_prometheus_config(
    path: Path, rules: Path, replwatch: str, alertmanager: str, interval: str = "1s"
) -> Path:
    """Scrape replwatch (job "replwatch") and evaluate `rules` every `interval`; alerts to
    `alertmanager`."""
    config = {
        "global": {
            "scrape_interval": interval,
            "scrape_timeout": interval,
            "evaluation_interval": interval,
        },
        "rule_files": [str(rules)],
        "alerting": {"alertmanagers": [{"static_configs": [{"targets": [alertmanager]}]}]},
        "scrape_configs": [{"job_name": "replwatch", "static_configs": [{"targets": [replwatch]}]}],
    }
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


def start_alertmanager(workdir: Path, config: Path) -> ServiceProcess:
    binary = require_binary(ALERTMANAGER, "prometheus-alertmanager")
    storage = workdir / "alertmanager-data"
    return ServiceProcess(
        "alertmanager",
        workdir,
        lambda port: [
            binary,
            f"--config.file={config}",
            f"--storage.path={storage}",
            f"--web.listen-address={LOCALHOST}:{port}",
            "--cluster.listen-address=",  # no gossip port: a single, private instance
        ],
    ).start()


class PrometheusAPI:
    def __init__(self, base: str) -> None:
        self.base = base

    def _get(self, path: str, **params: str) -> Any:
        body = http_json(f"{self.base}{path}?{urllib.parse.urlencode(params)}")
        assert body["status"] == "success", body
        return body["data"]

    def query(self, expr: str) -> list[dict[str, Any]]:
        data = self._get("/api/v1/query", query=expr)
        return list(data["result"]) if data["resultType"] in ("vector", "matrix") else [data]

    def query_range(self, expr: str, start: float, end: float, step: str = "1s") -> list[Any]:
        data = self._get(
            "/api/v1/query_range", query=expr, start=f"{start:.3f}", end=f"{end:.3f}", step=step
        )
        return list(data["result"])

    def alerts(self) -> list[dict[str, Any]]:
        return list(self._get("/api/v1/alerts")["alerts"])

    def target_health(self) -> list[str]:
        return [t["health"] for t in self._get("/api/v1/targets")["activeTargets"]]


class WebhookReceiver:
    """Records (path, JSON body) of every POST; close() stops the server thread."""

    def __init__(self) -> None:
        self.received: list[tuple[str, dict[str, Any]]] = []
        self.times: list[float] = []  # monotonic time each one arrived
        self._lock = threading.Lock()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length", "0"))
                body = json.loads(self.rfile.read(length) or b"{}")
                with receiver._lock:
                    receiver.received.append((self.path, body))
                    receiver.times.append(time.monotonic())
                self.send_response(200)
                self.end_headers()

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self._server = ThreadingHTTPServer((LOCALHOST, 0), Handler)
        self.port = int(self._server.server_address[1])
        self._thread = threading.Thread(
            target=self._server.serve_forever, name="webhook", daemon=True
        )
        self._thread.start()

    def url(self, path: str) -> str:
        return f"http://{LOCALHOST}:{self.port}{path}"

    def notifications(self, path: str) -> list[dict[str, Any]]:
        with self._lock:
            return [body for p, body in self.received if p == path]

    def deliveries(self, path: str) -> list[tuple[float, dict[str, Any]]]:
        """(monotonic arrival time, body) of every notification to `path`."""
        with self._lock:
            return [
                (t, body)
                for t, (p, body) in zip(self.times, self.received, strict=True)
                if p == path
            ]

    def alerts_at(self, path: str, status: str | None = None) -> list[dict[str, Any]]:
        """Every alert delivered to `path` (optionally only those with this status)."""
        return [
            alert
            for note in self.notifications(path)
            for alert in note.get("alerts", [])
            if status is None or alert.get("status") == status
        ]

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)
