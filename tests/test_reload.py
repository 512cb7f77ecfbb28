"""Config reload of a running `replwatch run` (SIGHUP and POST /-/reload), against real
servers: groups added and removed without a restart, an unchanged group keeps its monitor
(its cycle count goes on, so its lag history is the same one), a changed group is followed
in place, a broken config changes nothing and is reported
(`replwatch_config_last_reload_successful` 0, one log line, no traceback), the admin token
guards /-/reload, and settings that need a restart are named, not half-applied."""

from __future__ import annotations

import os
import signal
import socket
from pathlib import Path

import pytest

from .support.daemons import RunningDaemon, fetch, value
from .support.servers import RedisProcess, ServerSet, free_port, wait_for, wait_synced

TOKEN = "reload-token-Zq81"


def listening(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(1)
        return s.connect_ex(("127.0.0.1", port)) == 0


def groups_up(text: str) -> set[str]:
    out = set()
    for line in text.splitlines():
        if line.startswith("replwatch_master_role_ok{"):
            out.add(line.split('group="', 1)[1].split('"', 1)[0])
    return out


@pytest.fixture
def fleet(debian_servers: ServerSet) -> dict[str, RedisProcess]:
    servers = debian_servers
    nodes = {
        "a_master": servers.start("a-master"),
        "b_master": servers.start("b-master"),
        "c_master": servers.start("c-master"),
    }
    nodes["a_replica"] = servers.start("a-replica", replica_of=nodes["a_master"])
    nodes["a_replica2"] = servers.start("a-replica2", replica_of=nodes["a_master"])
    wait_synced(nodes["a_replica"], nodes["a_master"])
    wait_synced(nodes["a_replica2"], nodes["a_master"])
    return nodes


def config_text(port: int, groups: str, listen_port: int | None = None) -> str:
    return f"""
exporter: {{listen: "127.0.0.1:{listen_port or port}"}}
poll: {{interval: 200ms, timeout: 150ms}}
heartbeat: {{interval: 100ms}}
admin: {{token: "{TOKEN}"}}
groups:
{groups}
"""


def group_a(n: dict[str, RedisProcess], with_second_replica: bool = False) -> str:
    replicas = [f'"127.0.0.1:{n["a_replica"].port}"']
    if with_second_replica:
        replicas.append(f'"127.0.0.1:{n["a_replica2"].port}"')
    return (
        f'  - {{name: a, master: "127.0.0.1:{n["a_master"].port}", '
        f"replicas: [{', '.join(replicas)}]}}\n"
    )


def group_of(name: str, master: RedisProcess) -> str:
    return f'  - {{name: {name}, master: "127.0.0.1:{master.port}"}}\n'


@pytest.mark.timeout(120)
def test_reload_adds_removes_keeps_and_survives_a_bad_config(
    fleet: dict[str, RedisProcess], tmp_path: Path
) -> None:
    n = fleet
    port = free_port()
    cfg = tmp_path / "config.yaml"
    cfg.write_text(config_text(port, group_a(n) + group_of("b", n["b_master"])))
    daemon = RunningDaemon(cfg, port)
    base = daemon.base
    metrics, log_path, proc = daemon.metrics, daemon.log_path, daemon.proc

    def cycles_of(group: str) -> float:
        return value(metrics(), "replwatch_group_poll_cycles_total", group=group) or 0.0

    try:
        daemon.wait_ready(20)
        assert groups_up(metrics()) == {"a", "b"}
        assert value(metrics(), "replwatch_config_last_reload_successful") == 1
        started_at = value(metrics(), "replwatch_config_last_reload_success_timestamp_seconds")
        assert started_at is not None
        wait_for(lambda: cycles_of("a") >= 5, 10, "group a polled a few times")
        before = cycles_of("a")

        # 1. SIGHUP: b removed, c added, a unchanged; exporter.listen changed (restart-only)
        other_port = free_port()
        cfg.write_text(
            config_text(port, group_a(n) + group_of("c", n["c_master"]), listen_port=other_port)
        )
        os.kill(proc.pid, signal.SIGHUP)
        wait_for(lambda: groups_up(metrics()) == {"a", "c"}, 10, "b gone and c there")
        text = metrics()
        assert 'group="b"' not in text  # no series of the removed group survive
        assert value(text, "replwatch_config_last_reload_successful") == 1
        reloaded_at = value(text, "replwatch_config_last_reload_success_timestamp_seconds")
        assert reloaded_at is not None and reloaded_at > started_at
        # a kept its monitor: its cycle count went on from where it was
        assert cycles_of("a") > before
        wait_for(lambda: value(metrics(), "replwatch_node_up", group="c") == 1, 10, "c polled")
        # the listen address needs a restart: still served here, named in the log
        assert not listening(other_port)
        wait_for(
            lambda: "exporter changed; that needs a restart" in log_path.read_text(),
            5,
            "the restart-only warning",
        )

        # 2. a broken config: POST /-/reload answers 500 with the reason, nothing changes
        good = cfg.read_text()
        cfg.write_text(good.replace(f'"127.0.0.1:{n["c_master"].port}"', '"127.0.0.1:99999"'))
        status, body = fetch(base + "/-/reload", "POST", TOKEN)
        assert status == 500
        assert "groups[1].master: port must be 1-65535" in body
        text = metrics()
        assert value(text, "replwatch_config_last_reload_successful") == 0
        assert value(text, "replwatch_config_reloads_failed_total") == 1
        assert groups_up(text) == {"a", "c"}
        last = log_path.read_text()
        assert "config reload failed, the running config stays" in last
        assert "Traceback" not in last

        # 3. the admin token guards /-/reload
        cfg.write_text(good)
        assert fetch(base + "/-/reload", "POST")[0] == 401
        assert fetch(base + "/-/reload", "POST", "wrong")[0] == 401
        assert value(metrics(), "replwatch_config_last_reload_successful") == 0
        assert fetch(base + "/-/reload")[0] == 405  # GET changes nothing

        # 4. a changed group is followed in place: a second replica of a
        before = cycles_of("a")
        cfg.write_text(
            config_text(
                port,
                group_a(n, with_second_replica=True) + group_of("c", n["c_master"]),
            )
        )
        status, body = fetch(base + "/-/reload", "PUT", TOKEN)
        assert status == 200, body
        assert value(metrics(), "replwatch_config_last_reload_successful") == 1
        label2 = f"127.0.0.1:{n['a_replica2'].port}"
        wait_for(
            lambda: value(metrics(), "replwatch_replica_link_up", group="a", replica=label2) == 1,
            10,
            "a's second replica watched",
        )
        assert cycles_of("a") > before  # the same monitor, retargeted
        assert proc.poll() is None
    finally:
        daemon.stop()
