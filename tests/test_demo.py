"""`replwatch demo` as a user runs it: the starved replica shows real lag while INFO's ACK age
stays at 0-1, and when the demo ends (its --duration, or Ctrl-C) every redis-server it started
is gone and its temporary directory removed."""

from __future__ import annotations

import os
import queue
import re
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from replwatch.demo import BURST_BYTES_PER_SECOND, BURST_SECONDS, RELAY_BYTES_PER_SECOND

from .support.daemons import Samples, fetch, parse_metrics, sample_value
from .support.servers import wait_for

# One burst of the demo's write load: at twice the relay's rate the starved replica falls
# half a second behind per second, so its lag passes 2 s about 4 s in and is ~6 s by the
# burst's end; the demo stops there (--duration), the cleanup is the same as after minutes.
DURATION = BURST_SECONDS
LAG_SHOWN = 2.0  # seconds of lag the starved replica must reach while ACK age stays <= 1


@dataclass
class Demo:
    proc: subprocess.Popen[str]
    tmpdir: Path
    stderr_path: Path
    lines: list[str] = field(default_factory=list)
    ports: list[int] = field(default_factory=list)  # from the banner
    server_pids: list[int] = field(default_factory=list)  # seen while it ran
    _queue: queue.Queue[str | None] = field(default_factory=queue.Queue)

    def start_reader(self) -> None:
        def read() -> None:
            assert self.proc.stdout is not None
            for line in self.proc.stdout:
                self._queue.put(line)
            self._queue.put(None)

        threading.Thread(target=read, name="demo-stdout", daemon=True).start()

    def read_until(self, pattern: str, timeout: float) -> re.Match[str]:
        """Read stdout lines until one matches `pattern` (already read lines count)."""
        for line in self.lines:
            if m := re.search(pattern, line):
                return m
        deadline = time.monotonic() + timeout
        while True:
            remaining = deadline - time.monotonic()
            try:
                line = self._queue.get(timeout=max(0.01, remaining))
            except queue.Empty:
                line = ""
            if line is None:
                raise AssertionError(
                    f"demo stdout ended before {pattern!r}:\n{self.output()}\n{self.stderr()}"
                )
            if line:
                self.lines.append(line)
                if m := re.search(pattern, line):
                    return m
            if time.monotonic() >= deadline:
                raise AssertionError(f"no {pattern!r} in demo output:\n{self.output()}")

    def output(self) -> str:
        return "".join(self.lines)

    def stderr(self) -> str:
        return self.stderr_path.read_text(errors="replace") if self.stderr_path.exists() else ""


@pytest.fixture
def demo_factory() -> Iterator[list[Demo]]:
    started: list[Demo] = []
    yield started
    for demo in started:
        # never leave servers behind, even when a test failed half-way
        pids = set(demo.server_pids) | set(servers_on(demo.ports))
        if demo.proc.poll() is None:
            pids |= set(children_of(demo.proc.pid))
            demo.proc.kill()
            demo.proc.wait(timeout=10)
        for pid in pids:
            line = cmdline(pid)
            if line is not None and ("redis" in line or "valkey" in line):
                os.kill(pid, signal.SIGKILL)


def start_demo(tmp_path: Path, started: list[Demo], *args: str) -> Demo:
    tmpdir = tmp_path / "tmp"
    tmpdir.mkdir()
    stderr_path = tmp_path / "demo.stderr"
    with stderr_path.open("w") as err:
        proc = subprocess.Popen(
            [sys.executable, "-m", "replwatch", "demo", *args],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=err,
            text=True,
            # tempfile.gettempdir() of the demo: the directory it makes is ours to check
            env=dict(os.environ, TMPDIR=str(tmpdir)),
        )
    demo = Demo(proc, tmpdir, stderr_path)
    started.append(demo)
    demo.start_reader()
    return demo


def children_of(pid: int) -> list[int]:
    """Pids whose parent is `pid` (from /proc/<pid>/stat)."""
    out = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        # "pid (comm) state ppid ...": comm may contain spaces, so split after the last ')'
        fields = stat.rsplit(")", 1)[1].split()
        if int(fields[1]) == pid:
            out.append(int(entry.name))
    return out


def cmdline(pid: int) -> str | None:
    try:
        return (Path("/proc") / str(pid) / "cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:
        return None


def servers_on(ports: list[int]) -> dict[int, str]:
    """Running processes whose command line names one of the ports (redis-server rewrites its
    title to 'redis-server 127.0.0.1:<port>'; its original argv has '--port <port>')."""
    found = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        line = cmdline(int(entry.name))
        if line is None or ("redis" not in line and "valkey" not in line):
            continue
        for port in ports:
            if f":{port} " in line + " " or f"--port {port} " in line + " ":
                found[int(entry.name)] = line
    return found


def accepting(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(1)
        return s.connect_ex(("127.0.0.1", port)) == 0


def scrape(url: str) -> Samples:
    """The demo's /metrics, parsed; empty while it does not answer yet (or any more)."""
    try:
        status, text = fetch(url, timeout=2)
    except (urllib.error.URLError, OSError):
        return {}
    return parse_metrics(text) if status == 200 else {}


@dataclass
class Topology:
    metrics_url: str
    master: int
    fast: int
    starved: int

    @property
    def ports(self) -> list[int]:
        return [self.master, self.fast, self.starved]


def read_banner(demo: Demo) -> Topology:
    page = demo.read_until(r"^status page: (http://127\.0\.0\.1:\d+/)\s", 60).group(1)
    # the status page's address is the first thing the demo prints
    assert demo.output().startswith(f"status page: {page}"), demo.output()
    with urllib.request.urlopen(page, timeout=5) as resp:
        assert resp.status == 200 and b"<title>replwatch</title>" in resp.read()
    url = demo.read_until(r"metrics:\s+(http://127\.0\.0\.1:\d+/metrics)", 60).group(1)
    assert url == page + "metrics"
    master = demo.read_until(r"master\s+redis://127\.0\.0\.1:(\d+)", 5).group(1)
    fast = demo.read_until(r"replica\s+redis://127\.0\.0\.1:(\d+)\s+\(direct\)", 5).group(1)
    starved = demo.read_until(r"replica\s+redis://127\.0\.0\.1:(\d+)\s+\(starved", 5).group(1)
    topo = Topology(url, int(master), int(fast), int(starved))
    demo.ports = topo.ports
    return topo


def assert_running(demo: Demo, topo: Topology) -> list[int]:
    """While the demo runs: its servers are its children, its temp dir exists."""
    dirs = list(demo.tmpdir.glob("replwatch-demo-*"))
    assert len(dirs) == 1 and dirs[0].is_dir(), dirs
    for port in topo.ports:
        assert accepting(port), f"demo server on {port} is not accepting"
    servers = servers_on(topo.ports)
    children = set(children_of(demo.proc.pid))
    demo.server_pids = sorted(servers)
    assert len(servers) == 3, servers
    assert set(servers) <= children, (servers, children)
    return sorted(servers)


def assert_cleaned_up(demo: Demo, topo: Topology, server_pids: list[int]) -> None:
    for pid in server_pids:
        line = cmdline(pid)
        assert line is None or not any(str(p) in line for p in topo.ports), (
            f"server pid {pid} still running: {line}"
        )
    assert servers_on(topo.ports) == {}
    assert children_of(demo.proc.pid) == []
    for port in topo.ports:
        assert not accepting(port), f"something still listens on {port}"
    assert list(demo.tmpdir.glob("replwatch-demo-*")) == []
    assert "demo stopped; all processes ended and files removed" in demo.stderr()
    assert "Traceback" not in demo.stderr(), demo.stderr()


@pytest.mark.timeout(90)
def test_demo_starved_replica_and_clean_exit(tmp_path: Path, demo_factory: list[Demo]) -> None:
    demo = start_demo(tmp_path, demo_factory, "--duration", f"{DURATION:g}s")
    topo = read_banner(demo)
    banner_at = time.monotonic()
    server_pids = assert_running(demo, topo)
    starved, fast = f"127.0.0.1:{topo.starved}", f"127.0.0.1:{topo.fast}"

    seen: list[tuple[float | None, float | None]] = []

    def starved_lag_shows() -> bool:
        m = scrape(topo.metrics_url)
        lag = sample_value(m, "replwatch_replica_lag_seconds", replica=starved)
        ack = sample_value(m, "replwatch_replica_ack_age_seconds", replica=starved)
        seen.append((lag, ack))
        return lag is not None and ack is not None and lag > LAG_SHOWN and ack <= 1

    # the demo's numbers still leave room: the lag grows by at least half a second per second
    # of the burst, so it passes LAG_SHOWN within the first half of the run
    assert BURST_BYTES_PER_SECOND >= 2 * RELAY_BYTES_PER_SECOND and DURATION >= 2 * 2 * LAG_SHOWN
    try:
        wait_for(
            starved_lag_shows,
            DURATION,  # (the demo serves no longer)
            f"starved replica lag > {LAG_SHOWN:g} s while ACK age <= 1",
            interval=0.25,
        )
    except AssertionError as exc:
        raise AssertionError(f"{exc}; (lag, ack age) seen: {seen[-10:]}") from None
    m = scrape(topo.metrics_url)
    # the directly attached replica keeps up meanwhile
    fast_lag = sample_value(m, "replwatch_replica_lag_seconds", replica=fast)
    assert fast_lag is not None and fast_lag < 1, fast_lag

    code = demo.proc.wait(timeout=DURATION + 20)
    ended_after = time.monotonic() - banner_at
    assert code == 0, demo.stderr()
    assert ended_after < DURATION + 10, f"--duration {DURATION:g}s ended after {ended_after:.1f}s"
    assert_cleaned_up(demo, topo, server_pids)


@pytest.mark.timeout(60)
def test_demo_ctrl_c_stops_everything(tmp_path: Path, demo_factory: list[Demo]) -> None:
    demo = start_demo(tmp_path, demo_factory)
    topo = read_banner(demo)
    server_pids = assert_running(demo, topo)
    wait_for(
        lambda: (
            sample_value(
                scrape(topo.metrics_url),
                "replwatch_replica_link_up",
                replica=f"127.0.0.1:{topo.fast}",
            )
            is not None
        ),
        10,
        "demo metrics served",
    )
    demo.proc.send_signal(signal.SIGINT)
    code = demo.proc.wait(timeout=15)
    assert code == 0, demo.stderr()
    assert_cleaned_up(demo, topo, server_pids)
