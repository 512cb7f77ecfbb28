"""WAIT probes against real servers: ok, timeout (paused replica), a replica configured as
master (nothing written), `replwatch probe` exit codes, and the exported probe metrics."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from replwatch.config import config_from_data
from replwatch.observe.probe import WaitProber
from replwatch.state import ProbeStore

from .support.daemons import cli
from .support.servers import RedisProcess, ServerSet, online_replicas, wait_for, wait_synced


def prober(master_url: str, **probe: object) -> WaitProber:
    cfg = config_from_data(
        {"probe": {"timeout": "300ms", **probe}, "groups": [{"name": "g", "master": master_url}]}
    )
    return WaitProber("g", cfg.groups[0].master, cfg.probe, cfg.tls)


def run(p: WaitProber) -> object:
    async def once() -> object:
        try:
            return await p.probe()
        finally:
            p.close()

    return asyncio.run(once())


@pytest.mark.timeout(60)
def test_probe_ok_timeout_and_not_master(debian_servers: ServerSet) -> None:
    master = debian_servers.start("master")
    a = debian_servers.start("a", replica_of=master)
    b = debian_servers.start("b", replica_of=master)
    wait_synced(a, master)
    wait_synced(b, master)
    # the master counts a replica as online after its first ACK, a moment after the
    # replica's own INFO says the link is up
    wait_for(lambda: online_replicas(master) == 2, 10, "the master to list both replicas online")

    # healthy replicas answer WAIT in milliseconds; the timeout of these two "ok" probes is
    # long enough that a loaded machine does not turn them into timeouts (it did at 300 ms)
    ok = run(prober(master.url, timeout="2s", interval="2s"))
    assert ok.result == "ok" and ok.wanted == 2 and ok.acked == 2  # type: ignore[attr-defined]
    assert 0 < ok.seconds < 2  # type: ignore[attr-defined]
    assert master.client().get("__replwatch:probe") is not None
    assert 0 < master.client().pttl("__replwatch:probe") <= 10_000

    one = run(prober(master.url, replicas=1, timeout="2s", interval="2s"))
    assert one.result == "ok" and one.wanted == 1  # type: ignore[attr-defined]

    b.pause()
    try:
        slow = run(prober(master.url))
        assert slow.result == "timeout"  # type: ignore[attr-defined]
        assert slow.wanted == 2 and slow.acked == 1  # type: ignore[attr-defined]
        assert slow.seconds >= 0.3  # type: ignore[attr-defined]
    finally:
        b.resume()

    # a replica that accepts writes: the probe must still not write to it
    a.client().config_set("replica-read-only", "no")
    a.client().set("__replwatch:probe", "untouched")
    refused = run(prober(a.url))
    assert refused.result == "error" and refused.reason == "not_master"  # type: ignore[attr-defined]
    assert a.client().get("__replwatch:probe") == b"untouched"


@pytest.mark.timeout(60)
def test_probe_command_and_histogram(
    read_only_pair: tuple[RedisProcess, RedisProcess], tmp_path: Path
) -> None:
    master, rep = read_only_pair
    cfg = tmp_path / "c.yaml"
    # a 2 s probe timeout: the default 500 ms turned "ok" into "timeout" once on a loaded
    # machine (0/1 acknowledged in 502.9 ms); what is proven is the command's verdicts
    cfg.write_text(
        "probe: {timeout: 2s, interval: 2s}\n"
        f'groups:\n  - {{name: good, master: "{master.url}"}}\n'
        f'  - {{name: wrong, master: "{rep.url}"}}\n'
    )
    good = cli("probe", "-c", str(cfg), "--group", "good")
    assert good.returncode == 0, good.stderr
    assert "good: ok: 1/1 replicas acknowledged" in good.stdout
    both = cli("probe", "-c", str(cfg))
    assert both.returncode == 1
    assert "wrong: error (not_master)" in both.stdout

    store = ProbeStore()
    for _ in range(3):
        store.record(run(prober(master.url)))
    from prometheus_client import CollectorRegistry, generate_latest

    from replwatch.exporter.collector import SnapshotCollector
    from replwatch.state import SnapshotStore

    registry = CollectorRegistry(auto_describe=False)
    registry.register(SnapshotCollector(SnapshotStore(), None, store))
    text = generate_latest(registry).decode()
    assert 'replwatch_probe_wait_seconds_count{group="g"} 3.0' in text
    assert 'replwatch_probe_total{group="g",result="ok"} 3.0' in text
    assert 'replwatch_probe_acked_replicas{group="g"} 1.0' in text
    assert 'replwatch_probe_wait_seconds_bucket{group="g",le="+Inf"} 3.0' in text
