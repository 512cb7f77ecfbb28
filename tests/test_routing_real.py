"""Routing against real servers through the daemon's HTTP API: a paused replica leaves
rotation (health 503, reads move to the master when it was the only one), comes back after it
recovers; a dead master makes the group degraded and is never offered for reads."""

from __future__ import annotations

import asyncio
import json
import threading
from pathlib import Path

import pytest

from replwatch.demo import ThrottledRelay

from .support.daemons import RunningDaemon, fetch, start_routing_daemon, value
from .support.servers import ServerSet, free_port, wait_for, wait_synced


@pytest.mark.timeout(90)
def test_paused_replica_leaves_and_rejoins_rotation(
    debian_servers: ServerSet, tmp_path: Path
) -> None:
    master = debian_servers.start("master")
    a = debian_servers.start("a", replica_of=master)
    b = debian_servers.start("b", replica_of=master)
    wait_synced(a, master)
    wait_synced(b, master)
    daemon = start_routing_daemon(tmp_path, master, [a, b])
    base = daemon.base
    health_a = f"{base}/health/replica/g/{a.label}"
    try:
        wait_for(lambda: fetch(health_a)[0] == 200, 10, "a in rotation")
        assert fetch(health_a + "?max_lag_seconds=0.000001")[0] in (200, 503)
        a.pause()
        wait_for(lambda: fetch(health_a)[0] == 503, 10, "a out of rotation")
        body = json.loads(fetch(health_a)[1])
        assert body["in_rotation"] is False and body["reason"]
        table = json.loads(fetch(f"{base}/routing/g")[1])
        assert table["read_from"] == [b.label] and table["reads_on_master"] is False
        b.pause()
        wait_for(
            lambda: json.loads(fetch(f"{base}/routing/g")[1])["reads_on_master"],
            10,
            "reads moved to the master",
        )
        text = fetch(base + "/metrics")[1]
        assert value(text, "replwatch_routing_reads_on_master", group="g") == 1
        assert value(text, "replwatch_routing_in_rotation", replica=a.label) == 0
        a.resume()
        b.resume()
        wait_for(lambda: fetch(health_a)[0] == 200, 15, "a back in rotation")
        text = fetch(base + "/metrics")[1]
        assert (
            value(text, "replwatch_routing_transitions_total", replica=a.label, to="out") or 0
        ) >= 1
        assert (
            value(text, "replwatch_routing_transitions_total", replica=a.label, to="in") or 0
        ) >= 1
        whole = json.loads(fetch(base + "/routing")[1])
        assert [g["group"] for g in whole["groups"]] == ["g"]
        assert fetch(f"{base}/routing/nope")[0] == 404
        assert fetch(f"{base}/health/replica/g/nope:1")[0] == 404
    finally:
        a.resume()
        b.resume()
        daemon.stop()


@pytest.mark.timeout(60)
def test_dead_master_degrades_group(debian_servers: ServerSet, tmp_path: Path) -> None:
    master = debian_servers.start("master")
    a = debian_servers.start("a", replica_of=master)
    wait_synced(a, master)
    daemon = start_routing_daemon(tmp_path, master, [a])
    base = daemon.base
    try:
        master.stop()
        wait_for(lambda: json.loads(fetch(f"{base}/routing/g")[1])["degraded"], 10, "degraded")
        table = json.loads(fetch(f"{base}/routing/g")[1])
        assert table["reads_on_master"] is False
        assert master.label not in table["read_from"]
        assert table["read_from"] == [a.label]  # answers: keeps serving, possibly stale
        text = fetch(base + "/metrics")[1]
        assert value(text, "replwatch_routing_degraded", group="g") == 1
    finally:
        daemon.stop()


class Relays:
    """Bandwidth-limited TCP relays (the demo's) on an event loop in a thread."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.relays: list[ThrottledRelay] = []

    def add(self, upstream_port: int, rate: int) -> int:
        relay = ThrottledRelay(upstream_port, rate)
        asyncio.run_coroutine_threadsafe(relay.start(), self.loop).result(5)
        self.relays.append(relay)
        return relay.port

    def close(self) -> None:
        for relay in self.relays:
            asyncio.run_coroutine_threadsafe(relay.close(), self.loop).result(5)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(timeout=5)


@pytest.mark.timeout(90)
def test_floor_guard_holds_when_every_replica_lags(
    debian_servers: ServerSet, tmp_path: Path
) -> None:
    """Both replicas starved (reachable, but fed slower than the master writes): with
    min_in_rotation 1 the less lagged one keeps serving; reads do not all go to the master."""
    master = debian_servers.start("master")
    relays = Relays()
    stop = threading.Event()
    writer: threading.Thread | None = None
    daemon: RunningDaemon | None = None
    try:
        a = debian_servers.start(
            "a", ["--replicaof", "127.0.0.1", str(relays.add(master.port, 64_000))]
        )
        b = debian_servers.start(
            "b", ["--replicaof", "127.0.0.1", str(relays.add(master.port, 32_000))]
        )
        wait_synced(a, master)
        wait_synced(b, master)
        port = free_port()
        cfg = tmp_path / "guard.yaml"
        cfg.write_text(
            f'exporter: {{listen: "127.0.0.1:{port}"}}\n'
            "poll: {interval: 250ms, timeout: 200ms}\nheartbeat: {interval: 100ms}\n"
            "routing: {trip: {lag_seconds: 1, for: 250ms}, recover: {lag_seconds: 0.3, for: 1s},"
            " min_in_rotation: 1}\n"
            f'groups: [{{name: g, master: "{master.url}", replicas: ["{a.url}", "{b.url}"]}}]\n'
        )
        daemon = RunningDaemon(cfg, port)
        daemon.wait_ready()
        base = daemon.base

        def write() -> None:
            client = master.client()
            value = "v" * 1000
            n = 0
            while not stop.is_set():
                pipe = client.pipeline(transaction=False)
                for _ in range(20):
                    n += 1
                    pipe.set(f"load:{n % 2000}", value)
                pipe.execute()
                stop.wait(0.1)  # ~200 KB/s, over both relays' rates

        writer = threading.Thread(target=write, daemon=True)
        writer.start()

        def both_lag() -> bool:
            t = json.loads(fetch(f"{base}/routing/g")[1])
            return all((r["lag_seconds"] or 0) > 1.5 for r in t["replicas"])

        wait_for(both_lag, 20, "both replicas lag past the trip threshold")
        table = json.loads(fetch(f"{base}/routing/g")[1])
        assert table["reads_on_master"] is False
        assert table["read_from"] == [a.label]
        lags = {r["replica"]: r["lag_seconds"] for r in table["replicas"]}
        assert lags[a.label] < lags[b.label]
        entry = next(r for r in table["replicas"] if r["replica"] == a.label)
        assert "kept by guard" in entry["reason"]
    finally:
        stop.set()
        if writer is not None:
            writer.join(timeout=5)
        if daemon is not None:
            daemon.stop()
        relays.close()


@pytest.mark.timeout(90)
def test_lag_hovering_around_threshold_does_not_flap(
    debian_servers: ServerSet, tmp_path: Path
) -> None:
    """The replica stalls (paused until it is taken out) and recovers, again and again. Each
    time replwatch sees it healthy again (reason "recovering") but, since it never stays
    healthy for recover.for (3 s), keeps it out: one transition, not one per stall."""
    master = debian_servers.start("master")
    a = debian_servers.start("a", replica_of=master)
    b = debian_servers.start("b", replica_of=master)
    wait_synced(a, master)
    wait_synced(b, master)
    port = free_port()
    cfg = tmp_path / "hover.yaml"
    cfg.write_text(
        f'exporter: {{listen: "127.0.0.1:{port}"}}\n'
        "poll: {interval: 200ms, timeout: 150ms}\nheartbeat: {interval: 100ms}\n"
        "routing: {trip: {lag_seconds: 0.5, for: 200ms}, recover: {lag_seconds: 0.2, for: 3s}}\n"
        f'groups: [{{name: g, master: "{master.url}", replicas: ["{a.url}", "{b.url}"]}}]\n'
    )
    daemon = RunningDaemon(cfg, port)
    base = daemon.base
    health = f"{base}/health/replica/g/{a.label}"

    def transitions(to: str) -> float:
        text = fetch(base + "/metrics")[1]
        return value(text, "replwatch_routing_transitions_total", replica=a.label, to=to) or 0.0

    try:
        wait_for(lambda: fetch(health)[0] == 200, 15, "a in rotation")
        for _ in range(5):
            a.pause()
            wait_for(lambda: fetch(health)[0] == 503, 5, "a out while stalled")
            a.resume()
            # caught up again (the replica answers and its link is up) ...
            wait_for(
                lambda: a.client().info("replication")["master_link_status"] == "up",
                5,
                "a answering again",
            )
            # ... but for less than recover.for: it must stay out
            assert fetch(health)[0] == 503
        assert transitions("out") == 1 and transitions("in") == 0
        wait_for(lambda: fetch(health)[0] == 200, 10, "a back after a calm recover window")
        assert transitions("in") == 1
    finally:
        a.resume()
        daemon.stop()
