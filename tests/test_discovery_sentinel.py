"""A Sentinel group watched by `replwatch run`, against real Sentinels doing a real failover:
the group keeps its name, the promoted replica is reported as the master within about one
poll interval of the Sentinels naming it, the old master comes back as a replica, and no
series of a node's old role survive (redis_exporter's issue #618 is the failure avoided).
Sentinels and data nodes have passwords; none appear in the metrics or the log."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from replwatch.topology.sentinel import fields_of

from .support.daemons import RunningDaemon, fetch, series, value
from .support.sentinels import SentinelProcess, require_sentinel
from .support.servers import RedisProcess, ServerSet, free_port, wait_for

NAME = "orders-master"
NODE_PASSWORD = "node-pw-Q7x"
SENTINEL_PASSWORD = "sentinel-pw-K2m"


def master_label(text: str) -> str | None:
    """The node replwatch polls as the group's master (replwatch_group_info's master)."""
    for line, _ in series(text, "replwatch_group_info", group="orders"):
        return line.split('master="', 1)[1].split('"', 1)[0]
    return None


class SentinelGroup:
    def __init__(self, servers: ServerSet, workdir: Path) -> None:
        self.master = servers.start("master")
        self.replicas = [
            servers.start("replica-1", replica_of=self.master),
            servers.start("replica-2", replica_of=self.master),
        ]
        for proc in (*self.replicas, self.master):
            with proc.client() as client:
                client.config_set("masterauth", NODE_PASSWORD)
                client.config_set("requirepass", NODE_PASSWORD)
        self.sentinels = [
            SentinelProcess(
                workdir,
                i,
                NAME,
                self.master,
                auth_pass=NODE_PASSWORD,
                requirepass=SENTINEL_PASSWORD,
            )
            for i in range(3)
        ]

    def nodes(self) -> list[RedisProcess]:
        return [self.master, *self.replicas]

    def client(self, proc: RedisProcess) -> redis.Redis:
        return redis.Redis(host=proc.host, port=proc.port, password=NODE_PASSWORD, socket_timeout=3)

    def named_master(self) -> tuple[str, int] | None:
        return self.sentinels[0].master_address(NAME)

    def wait_ready(self) -> None:
        """Every Sentinel knows both replicas as healthy ones (a failover can pick one)."""

        def known() -> bool:
            for sentinel in self.sentinels:
                with sentinel.client() as client:
                    replicas = client.execute_command("SENTINEL", "replicas", NAME)
                healthy = 0
                for entry in replicas:
                    fields = fields_of(entry)  # redis-py may have parsed it into a dict
                    if fields.get("flags") == "slave" and fields.get("master-link-status") == "ok":
                        healthy += 1
                if healthy < 2:
                    return False
            return True

        wait_for(known, 40, "the Sentinels to know both replicas")

    def close(self) -> None:
        for sentinel in self.sentinels:
            sentinel.stop()


@pytest.fixture
def group(debian_servers: ServerSet, tmp_path: Path) -> Iterator[SentinelGroup]:
    require_sentinel()
    built = SentinelGroup(debian_servers, tmp_path)
    try:
        yield built
    finally:
        built.close()


@pytest.mark.timeout(150)
def test_sentinel_failover_is_followed_and_old_roles_leave(
    group: SentinelGroup, tmp_path: Path
) -> None:
    port = free_port()
    cfg = tmp_path / "config.yaml"
    addresses = ", ".join(['"127.0.0.1:1"'] + [f'"{s.address}"' for s in group.sentinels])
    cfg.write_text(
        f"""
exporter: {{listen: "127.0.0.1:{port}"}}
poll: {{interval: 500ms, timeout: 400ms}}
heartbeat: {{interval: 250ms}}
groups:
  - name: orders
    sentinel:
      addresses: [{addresses}]
      master_name: {NAME}
      auth: {{password: "{SENTINEL_PASSWORD}"}}
      timeout: 300ms
    auth: {{password: "{NODE_PASSWORD}"}}
"""
    )
    daemon = RunningDaemon(cfg, port)
    base = daemon.base
    metrics, log_path, proc = daemon.metrics, daemon.log_path, daemon.proc

    old, promoted_label = group.master.label, None
    try:
        wait_for(lambda: fetch(base + "/-/ready")[0] == 200, 20, "daemon ready")

        def all_linked() -> bool:
            text = metrics()
            return master_label(text) == old and all(
                value(text, "replwatch_replica_link_up", group="orders", replica=r.label) == 1
                for r in group.replicas
            )

        try:
            wait_for(all_linked, 20, "master and both replicas watched through the Sentinels")
        except AssertionError:
            lines = [ln for ln in metrics().splitlines() if 'group="orders"' in ln]
            raise AssertionError("\n".join(lines[:60])) from None
        text = metrics()
        assert value(text, "replwatch_discovery_success", group="orders", source="sentinel") == 1
        assert value(text, "replwatch_group_info", group="orders", source="sentinel") == 1
        group.wait_ready()

        with group.sentinels[0].client() as client:
            assert client.execute_command("SENTINEL", "FAILOVER", NAME)
        wait_for(
            lambda: group.named_master() not in (None, (group.master.host, group.master.port)),
            30,
            "the Sentinels to name the promoted replica",
        )
        named_at = time.monotonic()
        named = group.named_master()
        assert named is not None
        promoted_label = f"{named[0]}:{named[1]}"
        wait_for(lambda: master_label(metrics()) == promoted_label, 10, "replwatch following")
        followed_after = time.monotonic() - named_at
        # discovery runs every poll interval, the next poll cycle reports it: ~1-2 intervals
        assert followed_after < 2.5, f"followed {followed_after:.2f}s after the Sentinels"

        def settled() -> bool:
            text = metrics()
            others = [n.label for n in group.nodes() if n.label != promoted_label]
            return value(text, "replwatch_master_role_ok", group="orders") == 1 and all(
                value(text, "replwatch_replica_link_up", group="orders", replica=label) == 1
                for label in others
            )

        # the old master is reconfigured by the Sentinels and resyncs as a replica
        wait_for(settled, 60, "old master and other replica linked to the promoted one")
        text = metrics()
        # nothing of the promoted node's replica role survives
        for line in text.splitlines():
            if line.startswith(("replwatch_replica_", "replwatch_routing_")) and (
                f'replica="{promoted_label}"' in line
            ):
                raise AssertionError(f"a replica series of the new master survived: {line}")
        assert value(text, "replwatch_group_master_changes_total", group="orders") == 1
        assert (
            value(
                text,
                "replwatch_discovery_topology_changes_total",
                group="orders",
                source="sentinel",
            )
            >= 1
        )  # type: ignore[operator]
        assert value(text, "replwatch_replica_link_up", group="orders", replica=old) == 1
        for secret in (NODE_PASSWORD, SENTINEL_PASSWORD):
            assert secret not in text
            assert secret not in log_path.read_text()
        assert proc.poll() is None
    finally:
        daemon.stop()
