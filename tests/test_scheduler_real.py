"""The daemon's batched rounds against real servers: a poll cycle that carries the heartbeat
round in the master's pipeline, a black-holed group that delays only itself, and WAIT probes
sent together (script + WAIT in one round trip once the replica count is known)."""

from __future__ import annotations

import asyncio
import logging
import time

import pytest

from replwatch.config import Config, config_from_data
from replwatch.observe.group_monitor import GroupMonitor
from replwatch.observe.probe import ProbeResult, WaitProber
from replwatch.scheduler import MonitorScheduler, SchedulerStats
from replwatch.state import GroupSnapshot, ProbeStore, SnapshotStore

from .support.servers import (
    BlackHole,
    RedisProcess,
    ServerSet,
    online_replicas,
    wait_for,
    wait_synced,
)


class TimedStore(SnapshotStore):
    """A SnapshotStore that notes when each group's snapshot arrived."""

    def __init__(self) -> None:
        super().__init__()
        self.put_at: dict[str, float] = {}

    def put(self, snapshot: GroupSnapshot) -> None:
        self.put_at[snapshot.name] = time.monotonic()
        super().put(snapshot)


def make_config(groups: list[dict[str, object]], **sections: object) -> Config:
    return config_from_data({"groups": groups, **sections})


def make_scheduler(
    cfg: Config, store: SnapshotStore | None = None, probes: bool = False
) -> tuple[MonitorScheduler, SchedulerStats, ProbeStore]:
    monitors = [GroupMonitor(g, cfg.poll, cfg.heartbeat, cfg.lag, cfg.tls) for g in cfg.groups]
    stats = SchedulerStats()
    probe_store = ProbeStore()
    store = store if store is not None else SnapshotStore()
    store.expect([g.name for g in cfg.groups])
    probers = (
        [(WaitProber(g.name, g.master, cfg.probe, cfg.tls), cfg.probe.interval) for g in cfg.groups]
        if probes
        else []
    )
    sched = MonitorScheduler(
        monitors,
        store,
        cfg.poll.interval,
        cfg.heartbeat.interval if cfg.heartbeat.enabled else None,
        stats,
        probers=probers,
        probe_store=probe_store,
    )
    return sched, stats, probe_store


def count(stats: SchedulerStats, kind: str, group: str, what: str) -> int:
    return dict(stats.items()).get((kind, group, what), 0)


@pytest.mark.parametrize(
    ("poll", "heartbeat", "enabled", "rounds"),
    [
        ("1s", "250ms", True, 4),
        ("1s", "1s", True, 1),
        ("500ms", "100ms", True, 5),
        ("1s", "300ms", True, None),  # not a whole number of rounds: separate jobs
        ("1s", "250ms", False, None),  # no heartbeat writer at all
    ],
)
def test_heartbeat_rounds_per_poll(
    poll: str, heartbeat: str, enabled: bool, rounds: int | None
) -> None:
    cfg = make_config(
        [{"name": "g", "master": "redis://127.0.0.1:1"}],
        poll={"interval": poll, "timeout": "100ms"},
        heartbeat={"interval": heartbeat, "enabled": enabled},
    )
    sched, _, _ = make_scheduler(cfg)
    assert sched.heartbeat_rounds_per_poll() == rounds


def client_commands(master: RedisProcess, name: str) -> str:
    """The last command of the master's client connection named `name`."""
    for entry in master.client().client_list():
        if entry.get("name") == name:
            return str(entry.get("cmd"))
    raise AssertionError(f"no client named {name} on {master.name}")


@pytest.mark.timeout(60)
def test_poll_cycle_carries_the_heartbeat_round(debian_servers: ServerSet) -> None:
    master = debian_servers.start("master")
    replica = debian_servers.start("replica", replica_of=master)
    wait_synced(replica, master)
    cfg = make_config(
        [{"name": "g", "master": master.url, "replicas": [replica.url]}],
        poll={"interval": "1s", "timeout": "500ms"},
    )
    sched, stats, _ = make_scheduler(cfg)
    monitor = sched.monitors["g"]
    assert monitor.writer is not None and monitor.history is not None

    async def scenario() -> None:
        try:
            await sched.poll_all()  # connects the pollers
            await sched.heartbeat_all()  # the writer's own connection loads the script
            assert count(stats, "heartbeat", "g", "ok") == 1
            assert client_commands(master, "replwatch-heartbeat") == "eval"
            before = master.client().get("__replwatch:heartbeat")
            ok_before = monitor.writer.writes_ok  # type: ignore[union-attr]

            await sched.poll_all(with_heartbeat=True)
            # the write went in the poll connection's pipeline, after INFO and CLIENT LIST
            assert client_commands(master, "replwatch") == "evalsha"
            assert client_commands(master, "replwatch-heartbeat") == "eval"  # not used
            assert count(stats, "heartbeat", "g", "ok") == 2
            assert monitor.writer.writes_ok == ok_before + 1  # type: ignore[union-attr]
            after = master.client().get("__replwatch:heartbeat")
            assert after is not None and after != before
            snap = sched.store.get("g")
            assert snap is not None and snap.master_up and snap.heartbeat_ok

            # the script cache emptied: that round's heartbeat is skipped, not failed, and
            # the writer's next own write loads the script again
            master.client().script_flush()
            await sched.poll_all(with_heartbeat=True)
            assert count(stats, "heartbeat", "g", "skipped") == 1
            assert count(stats, "heartbeat", "g", "failed") == 0
            await sched.poll_all(with_heartbeat=True)  # nothing to carry: written on its own
            assert count(stats, "heartbeat", "g", "ok") == 3
            await sched.poll_all(with_heartbeat=True)  # carried again
            assert count(stats, "heartbeat", "g", "ok") == 4
            assert client_commands(master, "replwatch") == "evalsha"
        finally:
            sched.shutdown()

    asyncio.run(scenario())


@pytest.mark.timeout(60)
def test_black_holed_group_delays_only_itself(
    read_only_pair: tuple[RedisProcess, RedisProcess],
) -> None:
    master, replica = read_only_pair
    hole = BlackHole()  # accepts, never answers
    hole_url = hole.url
    cfg = make_config(
        [
            {"name": "healthy", "master": master.url, "replicas": [replica.url]},
            {"name": "holed", "master": hole_url},
        ],
        poll={"interval": "2s", "timeout": "1500ms"},
    )
    store = TimedStore()
    sched, stats, _ = make_scheduler(cfg, store)

    async def scenario() -> None:
        try:
            await sched.poll_all()  # first cycle: connects (the hole's connect "succeeds")
            for _ in range(2):
                store.put_at.clear()
                started = time.monotonic()
                await sched.poll_all(with_heartbeat=True)
                took = time.monotonic() - started
                healthy_at = store.put_at["healthy"] - started
                holed_at = store.put_at["holed"] - started
                # the healthy group is stored as soon as its nodes answered; the holed one
                # waits out its own timeout
                assert healthy_at < 0.5, healthy_at
                assert holed_at >= 1.4, holed_at
                assert took >= 1.4
                holed = store.get("holed")
                assert holed is not None and not holed.master_up
                assert holed.nodes[0].error_reason == "timeout"
                healthy = store.get("healthy")
                assert healthy is not None and healthy.master_up
                assert healthy.replicas[0].link_up
            assert count(stats, "poll", "healthy", "completed") == 3
            assert count(stats, "poll", "holed", "completed") == 3
            # the cycles' own heartbeats: carried in the healthy master's pipeline; the holed
            # master, down since the first cycle, gets no write (and no connect) of its own
            assert count(stats, "heartbeat", "healthy", "ok") == 2
            assert count(stats, "heartbeat", "holed", "skipped") == 2
            assert count(stats, "heartbeat", "holed", "failed") == 0
            # the scheduled heartbeat round leaves the master the poll found down alone (no
            # connect attempt per round); the healthy group's write goes on
            skipped = count(stats, "heartbeat", "holed", "skipped")
            ok = count(stats, "heartbeat", "healthy", "ok")
            await sched.heartbeat_round()
            assert count(stats, "heartbeat", "holed", "skipped") == skipped + 1
            assert count(stats, "heartbeat", "healthy", "ok") == ok + 1
        finally:
            sched.shutdown()
            hole.close()

    asyncio.run(scenario())


def test_a_slow_write_keeps_only_its_own_group_out_of_the_next_round(
    debian_servers: ServerSet,
) -> None:
    """Heartbeat rounds overlap: while one round still waits for a master that is slow to
    answer (CLIENT PAUSE WRITE), the next round writes to every other master (whose earlier
    write was answered, though that round has not finished) and leaves only the slow one
    out, counted as its skipped_overrun. Both rounds then account for their own writes."""
    fast_master = debian_servers.start("fast")
    slow_master = debian_servers.start("slow")
    cfg = make_config(
        [{"name": "fast", "master": fast_master.url}, {"name": "slow", "master": slow_master.url}],
        poll={"interval": "1s", "timeout": "500ms"},
    )
    sched, stats, _ = make_scheduler(cfg)
    fast, slow = sched.monitors["fast"].writer, sched.monitors["slow"].writer
    assert fast is not None and slow is not None

    async def scenario() -> None:
        try:
            await sched.poll_all()  # the masters are seen up
            await sched.heartbeat_all()  # each writer connects and loads its script
            assert count(stats, "heartbeat", "fast", "ok") == 1
            assert count(stats, "heartbeat", "slow", "ok") == 1
            with slow_master.client() as client:
                client.execute_command("CLIENT", "PAUSE", 150, "WRITE")  # (timeout 250 ms)
            first = asyncio.ensure_future(sched.heartbeat_round())
            deadline = time.monotonic() + 5
            while (fast.busy or not slow.busy) and time.monotonic() < deadline:
                await asyncio.sleep(0.005)
            assert not fast.busy and slow.busy  # fast answered, slow paused
            assert not first.done()  # the first round still waits for the slow master
            await sched.heartbeat_round()  # the next round, while the first one waits
            assert count(stats, "heartbeat", "fast", "ok") == 2  # this round's fast write
            assert count(stats, "heartbeat", "slow", "skipped_overrun") == 1
            await first
            assert count(stats, "heartbeat", "fast", "ok") == 3  # the first round's too
            assert count(stats, "heartbeat", "slow", "ok") == 2, stats.items()  # after the pause
            assert count(stats, "heartbeat", "fast", "skipped_overrun") == 0
        finally:
            sched.shutdown()

    asyncio.run(scenario())


@pytest.mark.timeout(90)
def test_probe_rounds_batched_and_replica_count_changes(debian_servers: ServerSet) -> None:
    master = debian_servers.start("master")
    a = debian_servers.start("a", replica_of=master)
    b = debian_servers.start("b", replica_of=master)
    wait_synced(a, master)
    wait_synced(b, master)
    cfg = make_config(
        [{"name": "g", "master": master.url}],
        probe={"timeout": "1s", "interval": "1s"},  # room for a loaded CI box
    )
    sched, stats, _ = make_scheduler(cfg, probes=True)
    prober, _interval = sched.probers["g"]
    results: list[ProbeResult] = []
    original_record = sched.probe_store.record  # type: ignore[union-attr]

    def record(result: ProbeResult) -> None:
        results.append(result)
        original_record(result)

    sched.probe_store.record = record  # type: ignore[union-attr,method-assign]

    # online on the master only after a replica's first ACK
    wait_for(lambda: online_replicas(master) == 2, 10, "the master to list both replicas online")

    async def probe() -> ProbeResult:
        await sched.probe_all(["g"])
        return results[-1]

    async def scenario() -> None:
        try:
            first = await probe()  # connects; learns the count (two round trips)
            assert (first.result, first.wanted, first.acked) == ("ok", 2, 2)
            inflight = prober.begin()  # from now on one pipeline per probe
            assert inflight is not None
            await asyncio.wait_for(inflight.future, 2)
            assert prober.finish(inflight) is not None
            fast = await probe()
            assert (fast.result, fast.wanted, fast.acked) == ("ok", 2, 2)
            assert fast.seconds is not None and 0 < fast.seconds < 1.0

            b.pause()
            try:
                slow = await probe()
                assert (slow.result, slow.wanted, slow.acked) == ("timeout", 2, 1)
                assert slow.seconds is not None and slow.seconds >= 1.0
            finally:
                b.resume()
            wait_synced(b, master)

            # a replica leaves: the next probe still waits for the two seen before (a
            # replica went away: a timeout), the one after waits for the one left
            b.stop()
            wait_for(lambda: online_replicas(master) == 1, 10, "master sees one replica")
            gone = await probe()
            assert (gone.result, gone.wanted, gone.acked) == ("timeout", 2, 1)
            after = await probe()
            assert (after.result, after.wanted, after.acked) == ("ok", 1, 1)

            # a replica joins: the batched probe waited for one, finds two online and is
            # redone for both
            c = debian_servers.start("c", replica_of=master)
            wait_synced(c, master)
            wait_for(lambda: online_replicas(master) == 2, 10, "master sees two replicas online")
            joined = await probe()
            assert (joined.result, joined.wanted, joined.acked) == ("ok", 2, 2)
            assert count(stats, "probe", "g", "completed") == len(results)
        finally:
            sched.shutdown()

    asyncio.run(scenario())


@pytest.mark.timeout(30)
def test_wait_closed_ends_every_task_shutdown_cancelled() -> None:
    """A heartbeat write detached on a master that never answers is still pending when the
    daemon stops: shutdown() cancels it and wait_closed() returns once it has ended, so the
    loop closes with nothing pending (a CI log showed "Task was destroyed but it is pending"
    for such a write, its loop closed right after shutdown())."""
    hole = BlackHole()
    cfg = make_config(
        [{"name": "holed", "master": hole.url}], poll={"interval": "2s", "timeout": "1500ms"}
    )
    sched, _, _ = make_scheduler(cfg)
    loop = asyncio.new_event_loop()
    try:
        loop.run_until_complete(sched.heartbeat_round())  # the write needs a connect: detached
        pending = [t for t in asyncio.all_tasks(loop) if not t.done()]
        assert pending, "no detached heartbeat write"
        sched.shutdown()
        assert not all(t.done() for t in pending)  # cancelled, not yet ended
        loop.run_until_complete(sched.wait_closed())
        assert all(t.done() for t in pending)
    finally:
        loop.close()
        hole.close()


def test_a_run_cancelled_before_it_began_logs_no_traceback(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """APScheduler's executor logs a run whose future shutdown cancelled before it began as
    "Error running job" with a traceback; after shutdown() that record is dropped, other
    job errors stay."""
    sched, _, _ = make_scheduler(make_config([]))
    sched.shutdown()
    executor_log = logging.getLogger("apscheduler.executors.default")
    with caplog.at_level(logging.ERROR, logger="apscheduler.executors.default"):
        for error in (asyncio.CancelledError(), RuntimeError("a real failure")):
            try:
                raise error
            except BaseException:
                executor_log.exception('Job "tick:all" raised an exception')
    assert [r.exc_info[0] for r in caplog.records if r.exc_info] == [RuntimeError]
