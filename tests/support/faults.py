"""A fleet with black-holed targets, and /metrics under load: the machinery of
tests/test_fault_scale.py (200 targets, asserted) and bench/fault_scale.py (1,000 targets,
measured). No pytest here, so the bench can use it.

- `Layout`: N targets (nodes) as N/2 groups of master + replica, 10 % of the nodes
  black-holed: a quarter of those as whole groups (master and replica), half as the replica
  of a group whose master is real; the real nodes are master + replica pairs of real
  redis-server processes, each pair serving up to GROUPS_PER_PAIR groups, each group in a
  database of its own (its own connections, heartbeat and probe keys).
- `BlackHoles`: loopback listeners that never answer: `hung` ones accept and stay silent
  (a hung process), `vanished` ones never accept and their full accept queue makes the
  kernel drop every SYN (a host that is gone: the connect itself times out).
- `scrape()` reads the parts of the daemon's /metrics the checks need; `Scrapers` hammers
  /metrics from threads; `sample()` scrapes once a poll interval; `phase_figures()` turns a
  phase's samples into figures and the list of what went wrong.
"""

from __future__ import annotations

import contextlib
import json
import math
import re
import selectors
import socket
import threading
import time
import urllib.request
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from .servers import LOCALHOST, ServerSet, wait_synced

GROUPS_PER_PAIR = 19  # groups served by one real master + replica pair (one db each)
DATABASES = 32  # --databases of the real servers (> GROUPS_PER_PAIR)


# --------------------------------------------------------------------------- black holes


class BlackHoles:
    """Loopback listeners that never answer, served by one thread; close() closes all."""

    def __init__(self, hung: int, vanished: int) -> None:
        self._selector = selectors.DefaultSelector()
        self._sockets: list[socket.socket] = []
        self.hung: list[str] = []
        self.vanished: list[str] = []
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        try:
            for _ in range(hung):
                listener = self._listener(64)
                self._selector.register(listener, selectors.EVENT_READ, "listener")
                self.hung.append(self._label(listener))
            for _ in range(vanished):
                listener = self._listener(0)
                # backlog 0 holds one connection: ours fills it, later SYNs are dropped
                self._sockets.append(socket.create_connection(listener.getsockname(), 2))
                self.vanished.append(self._label(listener))
        except BaseException:
            self.close()
            raise
        self._thread = threading.Thread(target=self._run, name="black-holes", daemon=True)
        self._thread.start()

    @property
    def labels(self) -> list[str]:
        return self.hung + self.vanished

    def _listener(self, backlog: int) -> socket.socket:
        listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._sockets.append(listener)
        listener.bind((LOCALHOST, 0))
        listener.listen(backlog)
        listener.setblocking(False)
        return listener

    @staticmethod
    def _label(listener: socket.socket) -> str:
        return f"{LOCALHOST}:{listener.getsockname()[1]}"

    def _run(self) -> None:
        while not self._stop.is_set():
            for key, _ in self._selector.select(0.1):
                sock = key.fileobj
                assert isinstance(sock, socket.socket)
                with contextlib.suppress(OSError):
                    if key.data == "listener":
                        conn, _ = sock.accept()
                        conn.setblocking(False)
                        self._selector.register(conn, selectors.EVENT_READ, "conn")
                    elif not sock.recv(65536):  # read and dropped; at EOF the client left
                        self._selector.unregister(sock)
                        sock.close()

    def close(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        for key in list(self._selector.get_map().values()):
            if isinstance(key.fileobj, socket.socket):
                key.fileobj.close()
        self._selector.close()
        for sock in self._sockets:
            sock.close()

    def __enter__(self) -> BlackHoles:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


# --------------------------------------------------------------------------- the fleet


@dataclass(frozen=True)
class Layout:
    """How N targets split: groups of real nodes, half-dark groups, dark groups."""

    targets: int

    def __post_init__(self) -> None:
        if self.targets <= 0 or self.targets % 40:
            raise ValueError("targets: a positive multiple of 40")

    @property
    def black_holed(self) -> int:
        return self.targets // 10

    @property
    def dark(self) -> int:  # groups whose master and replica are black-holed
        return self.black_holed // 4

    @property
    def half(self) -> int:  # groups with a real master and a black-holed replica
        return self.black_holed // 2

    @property
    def healthy(self) -> int:  # groups of two real nodes
        return self.targets // 2 - self.half - self.dark

    @property
    def pairs(self) -> int:  # real master + replica pairs (two redis-server processes each)
        return math.ceil((self.healthy + self.half) / GROUPS_PER_PAIR)


@dataclass
class Fleet:
    groups: list[dict[str, Any]] = field(default_factory=list)  # as in the config file
    healthy: list[str] = field(default_factory=list)
    half: list[str] = field(default_factory=list)
    dark: list[str] = field(default_factory=list)
    holes: set[str] = field(default_factory=set)  # black-holed node labels
    real_nodes: set[tuple[str, str]] = field(default_factory=set)  # (group, node label)


def start_fleet(servers: ServerSet, layout: Layout, holes: BlackHoles) -> Fleet:
    """The layout's real master + replica pairs started (each with DATABASES databases) and
    synced, and the fleet built over them and the black holes."""
    extra = ["--databases", str(DATABASES)]
    pairs = []
    for i in range(layout.pairs):
        master = servers.start(f"m{i:03d}", extra=extra)
        pairs.append((master, servers.start(f"r{i:03d}", replica_of=master, extra=extra)))
    for master, replica in pairs:
        wait_synced(replica, master)
    return build_fleet(layout, [(m.label, r.label) for m, r in pairs], holes)


def build_fleet(layout: Layout, pairs: Sequence[tuple[str, str]], holes: BlackHoles) -> Fleet:
    """The groups: real ones spread over the (master label, replica label) pairs, one
    database each; then the half-dark and dark ones on the black holes."""
    assert len(pairs) >= layout.pairs and len(holes.labels) == layout.black_holed
    fleet = Fleet()
    dead = list(holes.labels)
    for i in range(layout.healthy + layout.half):
        master, replica = pairs[i % len(pairs)]
        db = i // len(pairs)
        if i < layout.healthy:
            name = f"ok-{i:03d}"
            fleet.healthy.append(name)
            fleet.real_nodes.add((name, replica))
        else:
            name, replica = f"half-{i - layout.healthy:03d}", dead.pop()
            fleet.half.append(name)
            fleet.holes.add(replica)
        fleet.real_nodes.add((name, master))
        fleet.groups.append(
            {
                "name": name,
                "master": f"redis://{master}/{db}",
                "replicas": [f"redis://{replica}/{db}"],
            }
        )
    for i in range(layout.dark):
        name, master, replica = f"dark-{i:03d}", dead.pop(), dead.pop()
        fleet.dark.append(name)
        fleet.holes.update((master, replica))
        fleet.groups.append(
            {"name": name, "master": f"redis://{master}", "replicas": [f"redis://{replica}"]}
        )
    assert not dead and len(fleet.holes) == layout.black_holed
    return fleet


def config_text(listen_port: int, fleet: Fleet, interval: float, timeout: float) -> str:
    """The daemon's config: these groups, poll interval and timeout; the rest default."""
    lines = [
        f'exporter: {{listen: "{LOCALHOST}:{listen_port}"}}',
        f"poll: {{interval: {round(interval * 1000)}ms, timeout: {round(timeout * 1000)}ms}}",
        "groups:",
    ]
    for g in fleet.groups:
        replicas = ", ".join(f'"{r}"' for r in g["replicas"])
        lines.append(f'  - {{name: {g["name"]}, master: "{g["master"]}", replicas: [{replicas}]}}')
    return "\n".join(lines) + "\n"


# --------------------------------------------------------------------------- /metrics

_LINE = re.compile(r"^(replwatch_[a-z_]+)\{([^}]*)\} (\S+)$")
_LABEL = re.compile(r'(\w+)="([^"]*)"')
_READ = (
    "replwatch_poll_duration_seconds{",
    "replwatch_node_up{",
    "replwatch_node_last_error_info{",
    "replwatch_group_poll_cycles_total{",
    "replwatch_scheduler_runs_total{",
    "replwatch_master_role_ok{",
    "replwatch_routing_in_rotation{",
)
OVERRUN = ("skipped_overrun", "missed", "error")
# what Prometheus 2 sends when it scrapes
PROMETHEUS_ACCEPT = (
    "application/openmetrics-text;version=1.0.0,application/openmetrics-text;version=0.0.1;"
    "q=0.75,text/plain;version=0.0.4;q=0.5,*/*;q=0.1"
)  # outcomes of runs that did not happen


@dataclass
class Scrape:
    """The parts of one /metrics answer the checks read."""

    at: float  # monotonic, when the request was sent
    seconds: float  # how long the answer took
    duration: dict[str, float] = field(default_factory=dict)  # group -> last cycle's seconds
    node_up: dict[tuple[str, str], float] = field(default_factory=dict)  # (group, node)
    errors: dict[tuple[str, str], str] = field(default_factory=dict)  # (group, node) -> reason
    cycles: dict[str, float] = field(default_factory=dict)  # group -> cycles completed
    runs: dict[tuple[str, str, str], float] = field(default_factory=dict)  # job, group, outcome
    role_ok: dict[str, float] = field(default_factory=dict)
    in_rotation: dict[tuple[str, str], float] = field(default_factory=dict)  # (group, replica)

    def overruns(self) -> dict[str, float]:
        return {"/".join(k): v for k, v in self.runs.items() if k[2] in OVERRUN and v}


def scrape(base: str) -> Scrape:
    started = time.monotonic()
    with urllib.request.urlopen(base + "/metrics", timeout=30) as resp:
        text = resp.read().decode()
    out = Scrape(at=started, seconds=time.monotonic() - started)
    for line in text.splitlines():
        if not line.startswith(_READ):
            continue
        match = _LINE.match(line)
        if match is None:
            continue
        name, labels_text, number = match.groups()
        labels = dict(_LABEL.findall(labels_text))
        value = float(number)
        if name == "replwatch_poll_duration_seconds":
            out.duration[labels["group"]] = value
        elif name == "replwatch_node_up":
            out.node_up[(labels["group"], labels["node"])] = value
        elif name == "replwatch_node_last_error_info":
            out.errors[(labels["group"], labels["node"])] = labels["reason"]
        elif name == "replwatch_group_poll_cycles_total":
            out.cycles[labels["group"]] = value
        elif name == "replwatch_scheduler_runs_total":
            out.runs[(labels["kind"], labels["group"], labels["outcome"])] = value
        elif name == "replwatch_master_role_ok":
            out.role_ok[labels["group"]] = value
        elif name == "replwatch_routing_in_rotation":
            out.in_rotation[(labels["group"], labels["replica"])] = value
    return out


class Scrapers:
    """`count` threads fetching `path` until stop(): /metrics back to back (every other
    thread asks as Prometheus does, for OpenMetrics; the rest take the text format), or
    /status.json once every `every` seconds (an open status page). An answer counts as good
    when it is a 200 that carries every group."""

    def __init__(
        self, base: str, count: int, groups: int, path: str = "/metrics", every: float = 0.0
    ) -> None:
        self.base = base
        self.groups = groups
        self.path = path
        self.every = every
        self.good = 0
        self.failures: list[str] = []
        self.seconds: list[float] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._threads = [
            threading.Thread(target=self._run, args=(i,), name=f"scraper-{i}", daemon=True)
            for i in range(count)
        ]
        for thread in self._threads:
            thread.start()

    def _carries_every_group(self, body: bytes) -> bool:
        if self.path == "/status.json":
            return len(json.loads(body)["groups"]) == self.groups
        return body.count(b"\nreplwatch_master_role_ok{") == self.groups

    def _run(self, index: int) -> None:
        headers = {"Accept": PROMETHEUS_ACCEPT} if index % 2 and self.path == "/metrics" else {}
        while not self._stop.is_set():
            started = time.monotonic()
            try:
                request = urllib.request.Request(self.base + self.path, headers=headers)
                with urllib.request.urlopen(request, timeout=30) as resp:
                    body = resp.read()
                    good = resp.status == 200 and self._carries_every_group(body)
            except OSError as exc:
                with self._lock:
                    self.failures.append(repr(exc))
                continue
            with self._lock:
                self.seconds.append(time.monotonic() - started)
                if good:
                    self.good += 1
                else:
                    self.failures.append(f"answer without every group ({len(body)} bytes)")
            if self.every:
                self._stop.wait(self.every)

    def stop(self) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout=35)


def sample(base: str, seconds: float, every: float) -> list[Scrape]:
    """One scrape every `every` seconds for `seconds` seconds."""
    samples: list[Scrape] = []
    start = time.monotonic()
    while time.monotonic() - start < seconds:
        tick = time.monotonic()
        samples.append(scrape(base))
        time.sleep(max(0.0, every - (time.monotonic() - tick)))
    return samples


def settled(s: Scrape, fleet: Fleet) -> bool:
    """Every real node up and read routing as it should be (black-holed replicas out, real
    ones in): the state the phases are measured from."""
    return all(s.node_up.get(k) == 1 for k in fleet.real_nodes) and all(
        serving == (0 if replica in fleet.holes else 1)
        for (_, replica), serving in s.in_rotation.items()
    )


def percentile(values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..100); NaN for no values."""
    data = sorted(values)
    if not data:
        return math.nan
    return data[min(len(data) - 1, max(0, math.ceil(q * len(data) / 100) - 1))]


def cpu_seconds(pid: int) -> float:
    """utime + stime of a process, from /proc/<pid>/stat."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / 100.0


def phase_figures(samples: Sequence[Scrape], fleet: Fleet, interval: float) -> dict[str, Any]:
    """What a phase's samples say: cycle durations, cycles completed and runs skipped
    between its first and last sample, and every disagreement with the truth (a real node
    reported down, a black-holed one not down by timeout, a half-dark group's master not
    up, a black-holed replica in read rotation or a real one out of it)."""
    first, last = samples[0], samples[-1]
    span = last.at - first.at
    # an answer's contents were taken somewhere between its request and its end: the first
    # answer's as late as first.at + first.seconds (a scrape queued behind 50 others took
    # 2.1 s once and left a 4.1 s span holding 2 s of cycles), the last's no earlier than
    # last.at; the cycles counted must cover that much time at least
    content_span = last.at - (first.at + first.seconds)
    healthy = [s.duration[g] for s in samples for g in fleet.healthy if g in s.duration]
    holed = [s.duration[g] for s in samples for g in fleet.half + fleet.dark if g in s.duration]
    cycles = [last.cycles.get(g, 0.0) - first.cycles.get(g, 0.0) for g in fleet.healthy]
    real_down: set[tuple[str, str]] = set()
    holes_wrong: dict[tuple[str, str], str] = {}
    masters_wrong: set[str] = set()
    routing_wrong: set[str] = set()
    holes_seen = 0
    for s in samples:
        real_down.update(k for k in fleet.real_nodes if s.node_up.get(k) != 1)
        for key, up in s.node_up.items():
            if key[1] in fleet.holes:
                holes_seen += 1
                if up != 0 or s.errors.get(key) != "timeout":
                    holes_wrong[key] = f"up={up} reason={s.errors.get(key)}"
        masters_wrong.update(g for g in fleet.half if s.role_ok.get(g) != 1)
        for (group, replica), serving in s.in_rotation.items():
            # a black-holed replica never serves; a real one, caught up, always does
            if serving != (0 if replica in fleet.holes else 1):
                routing_wrong.add(f"{group}/{replica} in_rotation={serving}")
    return {
        "samples": len(samples),
        "seconds": round(span, 2),
        "healthy_poll_seconds": {
            "p50": round(percentile(healthy, 50), 4),
            "p95": round(percentile(healthy, 95), 4),
            "max": round(max(healthy), 4),
        },
        "black_holed_groups_poll_seconds": {
            "p50": round(percentile(holed, 50), 4),
            "max": round(max(holed), 4),
        },
        "healthy_cycles_min": min(cycles),
        "cycles_expected_at_least": max(0, math.floor(content_span / interval) - 1),
        "overruns": {
            k: v - first.overruns().get(k, 0.0)
            for k, v in last.overruns().items()
            if v > first.overruns().get(k, 0.0)
        },
        "black_holed_nodes_seen": holes_seen // len(samples),
        "sample_scrape_seconds_max": round(max(s.seconds for s in samples), 3),
        "problems": {
            "real_nodes_reported_down": sorted("/".join(k) for k in real_down)[:10],
            "black_holed_not_down_by_timeout": sorted(
                f"{'/'.join(k)} {v}" for k, v in holes_wrong.items()
            )[:10],
            "half_dark_masters_not_up": sorted(masters_wrong)[:10],
            "routing_wrong": sorted(routing_wrong)[:10],
        },
    }
