"""Network namespaces for tests that need a link of their own: a namespace joined to the host
by a veth pair on a private /30 (StarvedLink), rate-limited with `tc` when asked (everything
the host sends into the namespace through one `tbf` queue, or only what leaves one host port,
through an `htb` class), and a writer that leaves timestamped truth markers on the master
(MarkedWriter). Needs root and iproute2 (require_netns; the `starved_link` fixture in
tests/conftest.py makes one and always deletes it). Traffic stays on loopback and the test's
own veth pair."""

from __future__ import annotations

import contextlib
import ipaddress
import os
import random
import subprocess
import threading
import time

import pytest

from .servers import have_tool, in_ci

RATE = "1mbit"  # 125 KB/s
WRITE_BATCH = 15  # values of 1 KB per batch ...
WRITE_PERIOD = 0.05  # ... every 50 ms: ~300 KB/s


def run_cmd(*args: str) -> str:
    proc = subprocess.run(list(args), capture_output=True, text=True, timeout=15, check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(args)} failed ({proc.returncode}): {proc.stderr.strip()}")
    return proc.stdout


def used_networks() -> list[ipaddress.IPv4Network]:
    """Every IPv4 address or network that appears in the host's addresses and routes."""
    text = run_cmd("ip", "-4", "-o", "addr", "show")
    text += run_cmd("ip", "-4", "route", "show", "table", "all")
    found = []
    for token in text.split():
        with contextlib.suppress(ValueError):
            found.append(ipaddress.IPv4Network(token, strict=False))
    return found


class StarvedLink:
    """A network namespace joined to the host by a veth pair on a private /30."""

    def __init__(self) -> None:
        tag = f"{os.getpid() % 100000}{random.randint(0, 99):02d}"
        self.ns = f"rwtest-{tag}"
        self.host_if = f"rwh{tag}"[:15]
        self.ns_if = f"rwn{tag}"[:15]
        used = used_networks()
        for _ in range(200):
            net = ipaddress.IPv4Network(
                f"10.200.{random.randint(0, 255)}.{4 * random.randint(0, 63)}/30"
            )
            if not any(net.overlaps(u) for u in used):
                break
        else:
            raise RuntimeError("no unused /30 found in 10.200.0.0/16")
        hosts = list(net.hosts())
        self.network = net
        self.host_ip = str(hosts[0])  # .1
        self.ns_ip = str(hosts[1])  # .2
        self._ns_created = False
        self._link_created = False

    def create(self) -> None:
        run_cmd("ip", "netns", "add", self.ns)
        self._ns_created = True
        run_cmd("ip", "link", "add", self.host_if, "type", "veth", "peer", "name", self.ns_if)
        self._link_created = True
        run_cmd("ip", "link", "set", self.ns_if, "netns", self.ns)
        run_cmd("ip", "addr", "add", f"{self.host_ip}/30", "dev", self.host_if)
        run_cmd("ip", "link", "set", self.host_if, "up")
        inside = ("ip", "netns", "exec", self.ns, "ip")
        run_cmd(*inside, "addr", "add", f"{self.ns_ip}/30", "dev", self.ns_if)
        run_cmd(*inside, "link", "set", self.ns_if, "up")
        run_cmd(*inside, "link", "set", "lo", "up")

    def throttle(self, rate: str = RATE, latency: str = "400ms") -> None:
        """Rate-limit what the host sends into the namespace (the replication stream, and
        everything else sent to it): one tbf queue holding up to `latency` of it."""
        run_cmd(
            "tc", "qdisc", "add", "dev", self.host_if, "root", "tbf",
            "rate", rate, "burst", "32kbit", "latency", latency,
        )  # fmt: skip

    def throttle_port(self, source_port: int, rate: str = RATE, latency: str = "2s") -> None:
        """Rate-limit only what the host sends from `source_port` (the master's replication
        stream) into the namespace: an `htb` root sorts those packets into a class that drains
        through a `tbf` (`prio` is not in this kernel); everything else (a monitor's polls,
        their answers' ACKs) goes to an unthrottled class."""
        dev = self.host_if
        run_cmd("tc", "qdisc", "add", "dev", dev, "root", "handle", "1:", "htb", "default", "20")
        for classid in ("1:10", "1:20"):
            run_cmd(
                "tc", "class", "add", "dev", dev, "parent", "1:", "classid", classid,
                "htb", "rate", "1gbit",
            )  # fmt: skip
        run_cmd(
            "tc", "qdisc", "add", "dev", dev, "parent", "1:10", "handle", "10:", "tbf",
            "rate", rate, "burst", "32kbit", "latency", latency,
        )  # fmt: skip
        run_cmd(
            "tc", "filter", "add", "dev", dev, "protocol", "ip", "parent", "1:", "prio", "1",
            "u32", "match", "ip", "sport", str(source_port), "0xffff", "flowid", "1:10",
        )  # fmt: skip

    def destroy(self) -> None:
        """Delete the veth pair and the namespace; complain if either is left behind."""
        if self._link_created:
            with contextlib.suppress(RuntimeError):
                run_cmd("ip", "link", "del", self.host_if)  # deletes its peer too
        if self._ns_created:
            with contextlib.suppress(RuntimeError):
                run_cmd("ip", "netns", "del", self.ns)
        leftovers = []
        if self._ns_created and self.ns in run_cmd("ip", "netns", "list").split():
            leftovers.append(f"namespace {self.ns}")
        links = subprocess.run(
            ["ip", "link", "show", self.host_if], capture_output=True, check=False
        )
        if self._link_created and links.returncode == 0:
            leftovers.append(f"link {self.host_if}")
        if leftovers:
            raise AssertionError(f"teardown left behind: {', '.join(leftovers)}")


def require_netns(what: str, tools: tuple[str, ...] = ("ip", "tc")) -> None:
    """Root and the iproute2 `tools` a network-namespace test needs: without them the test
    fails in CI (where scripts/test installs them) and is skipped elsewhere."""
    reason = None
    if os.geteuid() != 0:
        reason = "needs root (ip netns, veth" + (", tc)" if "tc" in tools else ")")
    elif missing := [tool for tool in tools if not have_tool(tool)]:
        reason = f"needs {' and '.join(missing)} (Debian package iproute2)"
    if reason is not None:
        if in_ci():
            pytest.fail(f"{what}: {reason}", pytrace=False)
        pytest.skip(reason)


class MarkedWriter:
    """Writes WRITE_BATCH values of 1 KB plus the truth marker every WRITE_PERIOD seconds, in a
    thread, and remembers when each marker was written."""

    def __init__(
        self, client: object, batch: int = WRITE_BATCH, period: float = WRITE_PERIOD
    ) -> None:
        self.client = client
        self.batch = batch
        self.period = period
        self.marks: list[float] = []  # marker n was written at marks[n] (wall clock)
        self.error: BaseException | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="marked-writer", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        value = b"v" * 1000
        key = 0
        try:
            while not self._stop.is_set():
                tick = time.monotonic()
                pipe = self.client.pipeline(transaction=False)  # type: ignore[attr-defined]
                for _ in range(self.batch):
                    key += 1
                    pipe.set(f"load:{key % 5000}", value)
                n = len(self.marks)
                now = time.time()
                pipe.set("truth", f"{n} {now!r}")
                self.marks.append(now)
                pipe.execute()
                self._stop.wait(max(0.0, self.period - (time.monotonic() - tick)))
        except BaseException as exc:
            self.error = exc

    def truth(self, seen: bytes | str | None, now: float) -> tuple[float, float] | None:
        """(true lag, half-width of its interval) for a replica showing marker `seen`."""
        if seen is None:
            return None
        n = int(seen.split()[0])
        oldest = now - self.marks[n]
        newest = now - self.marks[n + 1] if n + 1 < len(self.marks) else oldest
        return (oldest + newest) / 2, (oldest - newest) / 2

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=10)
