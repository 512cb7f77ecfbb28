"""`replwatch run` as a subprocess for end-to-end tests: started on a config file, its
/metrics and other endpoints fetched, its log read, and always stopped by pid (SIGTERM, then
SIGKILL) when the `with` block ends, also on failure."""

from __future__ import annotations

import base64
import os
import ssl
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path
from types import TracebackType


def fetch(
    url: str,
    method: str = "GET",
    token: str | None = None,
    *,
    context: ssl.SSLContext | None = None,
    basic: tuple[str, str] | None = None,
    headers: dict[str, str] | None = None,
) -> tuple[int, str]:
    request = urllib.request.Request(url, method=method)
    if basic is not None:
        pair = base64.b64encode(f"{basic[0]}:{basic[1]}".encode()).decode()
        request.add_header("Authorization", f"Basic {pair}")
        if token is not None:
            request.add_header("X-Replwatch-Token", token)
    elif token is not None:
        request.add_header("Authorization", f"Bearer {token}")
    for name, value in (headers or {}).items():
        request.add_header(name, value)
    try:
        with urllib.request.urlopen(request, timeout=10, context=context) as resp:
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
    found = series(text, name, **labels)
    return found[0][1] if found else None


class RunningDaemon:
    """`replwatch run -c config`; with `context` (an SSL context trusting the daemon's
    certificate) and `basic` (user, password) for a daemon behind a web config."""

    def __init__(
        self,
        config: Path,
        port: int,
        *args: str,
        env: dict[str, str] | None = None,
        context: ssl.SSLContext | None = None,
        basic: tuple[str, str] | None = None,
        global_args: tuple[str, ...] = (),
    ) -> None:
        self.base = f"{'https' if context is not None else 'http'}://127.0.0.1:{port}"
        self.context = context
        self.basic = basic
        self.log_path = config.parent / "daemon.log"
        self._log = self.log_path.open("w+")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "replwatch", *global_args, "run", "-c", str(config), *args],
            stdout=self._log,
            stderr=subprocess.STDOUT,
            env=None if env is None else {**os.environ, **env},
        )

    @property
    def pid(self) -> int:
        return self.proc.pid

    def fetch(self, path: str, method: str = "GET", token: str | None = None) -> tuple[int, str]:
        return fetch(self.base + path, method, token, context=self.context, basic=self.basic)

    def metrics(self) -> str:
        status, text = self.fetch("/metrics")
        assert status == 200, text
        return text

    def log_text(self) -> str:
        return self.log_path.read_text()

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
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
