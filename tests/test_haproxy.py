"""End to end with a real HAProxy running docs/haproxy.cfg: reads land on replicas, move off a
paused replica (and onto the master once no replica serves), and come back after recovery."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
from pathlib import Path

import pytest
import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from .support.daemons import start_routing_daemon
from .support.servers import ServerSet, free_port, wait_for, wait_synced

ROOT = Path(__file__).resolve().parent.parent


def server_states(sock_path: Path) -> dict[str, str]:
    """HAProxy's view: server name → UP / DOWN (from `show stat` on the stats socket)."""
    with socket.socket(socket.AF_UNIX) as s:
        s.connect(str(sock_path))
        s.sendall(b"show stat\n")
        data = b""
        while chunk := s.recv(65536):
            data += chunk
    states = {}
    for line in data.decode().splitlines():
        parts = line.split(",")
        if len(parts) > 17 and parts[0] == "redis_replicas" and parts[1] not in ("BACKEND",):
            states[parts[1]] = parts[17]
    return states


def landed_ports(listen_port: int, n: int = 8) -> set[int]:
    """Open n fresh connections through HAProxy; which server answered each."""
    ports = set()
    for _ in range(n):
        client = redis.Redis(port=listen_port, socket_timeout=1, socket_connect_timeout=1)
        ports.add(int(client.config_get("port")["port"]))
        client.close()
    return ports


@pytest.mark.timeout(120)
def test_reads_follow_replwatch_routing(debian_servers: ServerSet, tmp_path: Path) -> None:
    haproxy = shutil.which("haproxy")
    if haproxy is None:
        pytest.fail("haproxy (Debian package) is not installed; scripts/test installs it")
    master = debian_servers.start("master")
    a = debian_servers.start("a", replica_of=master)
    b = debian_servers.start("b", replica_of=master)
    wait_synced(a, master)
    wait_synced(b, master)
    daemon = start_routing_daemon(tmp_path, master, [a, b])
    listen = free_port()
    sock = tmp_path / "haproxy.sock"
    env = dict(
        os.environ,
        REPLWATCH_HOST="127.0.0.1",
        REPLWATCH_PORT=daemon.base.rsplit(":", 1)[1],
        GROUP="g",
        LISTEN=f"127.0.0.1:{listen}",
        MASTER=master.label,
        REPLICA1=a.label,
        REPLICA2=b.label,
        HAPROXY_STATS_SOCKET=str(sock),
    )
    cfg = ROOT / "docs" / "haproxy.cfg"
    check = subprocess.run(
        [haproxy, "-c", "-f", str(cfg)], env=env, capture_output=True, text=True, check=False
    )
    assert check.returncode == 0, check.stdout + check.stderr
    proxy = subprocess.Popen(
        [haproxy, "-f", str(cfg)], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    try:
        wait_for(
            lambda: all(server_states(sock).get(r.label, "").startswith("UP") for r in (a, b)),
            15,
            "both replicas UP in HAProxy",
        )
        assert landed_ports(listen) == {a.port, b.port}

        a.pause()
        wait_for(
            lambda: server_states(sock).get(a.label, "").startswith("DOWN"),
            15,
            "HAProxy marks the paused replica DOWN",
        )
        assert landed_ports(listen) == {b.port}

        b.pause()
        wait_for(
            lambda: server_states(sock).get(b.label, "").startswith("DOWN"),
            15,
            "HAProxy marks the second replica DOWN",
        )
        assert landed_ports(listen) == {master.port}
        # an application's pooled connection, put on the master meanwhile
        app = redis.Redis(
            port=listen, socket_timeout=1, socket_connect_timeout=1, retry=Retry(NoBackoff(), 0)
        )
        assert int(app.config_get("port")["port"]) == master.port

        a.resume()
        b.resume()
        wait_for(
            lambda: all(server_states(sock).get(r.label, "").startswith("UP") for r in (a, b)),
            20,
            "replicas back UP",
        )
        assert landed_ports(listen) == {a.port, b.port}

        # on-marked-up shutdown-backup-sessions: HAProxy closed it, the reconnect lands on a
        # replica (without it the application would read from the master for good)
        def app_port() -> int | None:
            try:
                return int(app.config_get("port")["port"])
            except redis.ConnectionError:
                return None  # the shut connection: the next command reconnects

        wait_for(lambda: app_port() in (a.port, b.port), 5, "the app's connection off the master")
        # HAProxy resets every check connection: logged once, briefly, never a traceback
        log = daemon.log_text()
        assert "Traceback" not in log, log[-2000:]
        assert log.count("closed its connection mid-request") <= 1, log[-2000:]
    finally:
        a.resume()
        b.resume()
        proxy.terminate()
        try:
            proxy.wait(timeout=10)
        finally:
            if proxy.poll() is None:
                proxy.kill()
        daemon.stop()
