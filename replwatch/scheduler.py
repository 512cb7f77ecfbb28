"""APScheduler jobs: a poll job and a heartbeat job per group.

Jobs run with max_instances=1 and coalesce=True: a cycle that overruns its interval makes the
scheduler skip (and count) the missed runs instead of piling them up. The scheduler calls the
group monitors and puts snapshots in the store; it never touches Prometheus objects.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import threading
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Iterable
from typing import Any

from apscheduler.events import (
    EVENT_JOB_ERROR,
    EVENT_JOB_MAX_INSTANCES,
    EVENT_JOB_MISSED,
    JobEvent,
)
from apscheduler.schedulers.asyncio import AsyncIOScheduler

from replwatch.observe.connection import InFlight
from replwatch.observe.group_monitor import GroupMonitor, PollCycle
from replwatch.observe.heartbeat import HeartbeatWriter
from replwatch.observe.probe import ProbeResult, WaitProber
from replwatch.routing.engine import RoutingEngine
from replwatch.routing.publisher import RoutingPublisher
from replwatch.state import GroupSnapshot, ProbeStore, SnapshotStore
from replwatch.topology.fleet import Fleet

log = logging.getLogger("replwatch.scheduler")


class _Countdown:
    """Calls `then` once, when tick() has been called `count` times (a done-callback)."""

    __slots__ = ("left", "then")

    def __init__(self, count: int, then: Callable[[], None]) -> None:
        self.left = count
        self.then = then

    def tick(self, _future: object = None) -> None:
        self.left -= 1
        if self.left == 0:
            self.then()


class SchedulerStats:
    """Counters the exporter reads: cycles run, runs missed or skipped, job errors."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._counts: Counter[tuple[str, str, str]] = Counter()
        self._groups: set[str] | None = None  # the fleet's groups, once it has told us

    @staticmethod
    def _job_wide(group: str) -> bool:
        return group in ("all", "routing") or group.startswith("every-")

    def add(self, kind: str, group: str, what: str) -> None:
        with self._lock:
            # a run that was under way when its group went (a reload) is not counted: its
            # series would come back after the group's were dropped
            if self._groups is None or group in self._groups or self._job_wide(group):
                self._counts[(kind, group, what)] += 1

    def forget_groups_except(self, names: list[str]) -> None:
        """The fleet's groups are now `names`: drop the counts of groups that are gone (and
        any a late run of theirs would add); job-wide counts stay."""
        with self._lock:
            self._groups = set(names)
            self._counts = Counter(
                {
                    k: v
                    for k, v in self._counts.items()
                    if k[1] in self._groups or self._job_wide(k[1])
                }
            )

    def items(self) -> list[tuple[tuple[str, str, str], int]]:
        with self._lock:
            return sorted(self._counts.items())


class _CancelledRun(logging.Filter):
    """Drops APScheduler's "Error running job" record for a run cancelled before it began:
    shutdown cancels the executor's pending futures, and a run that never started cannot
    end quietly in _run_job (a traceback in the log of a clean SIGTERM, rarely)."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not (record.exc_info and record.exc_info[0] is asyncio.CancelledError)


def quiet_cancelled_runs() -> None:
    """_CancelledRun on APScheduler's default executor's logger (once)."""
    executor_log = logging.getLogger("apscheduler.executors.default")
    if not any(isinstance(f, _CancelledRun) for f in executor_log.filters):
        executor_log.addFilter(_CancelledRun())


class MonitorScheduler:
    def __init__(
        self,
        monitors: Iterable[GroupMonitor],
        store: SnapshotStore,
        poll_interval: float,
        heartbeat_interval: float | None,
        stats: SchedulerStats,
        probers: Iterable[tuple[WaitProber, float]] = (),
        probe_store: ProbeStore | None = None,
        routing: RoutingEngine | None = None,
        publisher: RoutingPublisher | None = None,
        sync_poll: Callable[[], Awaitable[object]] | None = None,
        fleet: Fleet | None = None,
        on_snapshot: Callable[[GroupSnapshot], None] | None = None,
    ) -> None:
        """`fleet`: the daemon's set of groups, which discovery and reloads change while
        the scheduler runs; its monitors and probers are polled (`monitors` and `probers`
        are then ignored), and a discovery job runs every poll interval when it has
        Sentinel or cluster groups. `on_snapshot`: told of every snapshot recorded (the
        status page's lag history)."""
        self.on_snapshot = on_snapshot
        self.sync_poll = sync_poll
        self.routing = routing
        self.publisher = publisher
        self.fleet = fleet
        self.monitors: dict[str, GroupMonitor]
        self.probers: dict[str, tuple[WaitProber, float]]
        if fleet is not None:
            self.monitors = fleet.monitors
            self.probers = fleet.probers
        else:
            self.monitors = {m.name: m for m in monitors}
            self.probers = {p.group: (p, interval) for p, interval in probers}
        self.probe_store = probe_store
        self.store = store
        self.stats = stats
        self.poll_interval = poll_interval
        self.heartbeat_interval = heartbeat_interval
        self._scheduler = AsyncIOScheduler(
            job_defaults={"max_instances": 1, "coalesce": True, "misfire_grace_time": None}
        )
        self._stopping = False  # shutdown() began: cancelled job runs end quietly (_run_job)
        self._next_poll: float | None = None  # loop time the tick job's next poll cycle is due
        self._poll_task: asyncio.Task[None] | None = None
        self._heartbeat_rounds: set[asyncio.Task[None]] = set()  # may overlap (see tick)
        # per kind ("heartbeat", "probe"), per group: a write or probe that needed the slow
        # path (a connect) and runs on its own, outside the rounds (see _detach)
        self._detached: dict[str, dict[str, asyncio.Task[None]]] = {
            "heartbeat": {},
            "probe": {},
        }
        self._cancelled: list[asyncio.Task[None]] = []  # by shutdown(), for wait_closed()
        self._scheduler.add_listener(
            self._on_event, EVENT_JOB_MISSED | EVENT_JOB_MAX_INSTANCES | EVENT_JOB_ERROR
        )

    def _on_event(self, event: JobEvent) -> None:
        kind, _, group = event.job_id.partition(":")
        if event.code == EVENT_JOB_MISSED:
            self.stats.add(kind, group, "missed")
        elif event.code == EVENT_JOB_MAX_INSTANCES:
            self.stats.add(kind, group, "skipped_overrun")
        elif event.code == EVENT_JOB_ERROR:
            self.stats.add(kind, group, "error")
            log.error("job %s failed: %s", event.job_id, getattr(event, "exception", "?"))

    async def poll_group(self, name: str) -> None:
        """One cycle of one group on its own."""
        monitor = self.monitors[name]
        generation = monitor.generation
        snapshot = await monitor.poll_cycle()
        if self.monitors.get(name) is monitor and monitor.generation == generation:
            self._record(name, snapshot)

    def _record(self, name: str, snapshot: GroupSnapshot) -> None:
        self.store.put(snapshot)
        if self.on_snapshot is not None:
            self.on_snapshot(snapshot)
        if self.routing is not None:
            self.routing.update(snapshot)
        self.stats.add("poll", name, "completed")

    def _finish_group(self, name: str, monitor: GroupMonitor, cycle: PollCycle) -> None:
        if self.monitors.get(name) is not monitor or monitor.generation != cycle.generation:
            # the group went, was rebuilt or retargeted (discovery, reload) while this cycle
            # ran: it polled the old topology, its result is void
            for task in cycle.tasks:
                if task is not None:
                    task.cancel()
            return
        try:
            self._record(name, monitor.finish_cycle(cycle))
            if cycle.heartbeat_carried:
                result = cycle.heartbeat_result
                what = "skipped" if result is None else "ok" if result else "failed"
                self.stats.add("heartbeat", name, what)
        except Exception:  # one group's bug must not cost the others their cycle
            self.stats.add("poll", name, "error")
            log.exception("poll of group %s failed", name)

    async def heartbeat_group(self, name: str) -> None:
        monitor = self.monitors.get(name)
        if monitor is None:  # the group went (reload, discovery) before this ran
            return
        result = await monitor.write_heartbeat()
        if result is True:
            self.stats.add("heartbeat", name, "ok")
        elif result is False:
            self.stats.add("heartbeat", name, "failed")
        else:
            self.stats.add("heartbeat", name, "skipped")

    async def probe_group(self, name: str) -> None:
        entry = self.probers.get(name)
        if entry is None:
            return
        prober, _ = entry
        result = await prober.probe()
        if self.probe_store is not None:
            self.probe_store.record(result)
        self.stats.add("probe", name, "completed")

    async def poll_all_once(self) -> None:
        """One poll of every group, right away (start-up, so /-/ready comes quickly)."""
        await self.poll_all()

    async def poll_all(self, with_heartbeat: bool = False) -> None:
        """One poll cycle of every group; `with_heartbeat`: this is also a heartbeat round,
        whose writes ride at the end of the masters' poll pipelines (groups whose master
        needs a connect get an ordinary heartbeat write instead).

        Every node's pipeline is sent first (nodes that must connect get a task), then all
        are awaited under one deadline, the nodes' timeout; a group is finished (snapshot,
        store, routing) the moment its last node answers, so a slow or black-holed node
        delays only its own group, by at most poll.timeout. No task, gather or timer per
        node: over hundreds of nodes a second the per-node asyncio overhead is what
        costs."""
        if not self.monitors:
            return
        loop = asyncio.get_running_loop()
        all_done: asyncio.Future[None] = loop.create_future()
        open_groups: dict[str, tuple[GroupMonitor, PollCycle]] = {}
        timeout = 0.0

        def group_done(name: str) -> None:
            entry = open_groups.pop(name, None)
            if entry is None:
                return
            self._finish_group(name, *entry)
            if not open_groups and not all_done.done():
                all_done.set_result(None)

        uncarried: list[str] = []
        for name, monitor in self.monitors.items():
            cycle = monitor.begin_cycle(with_heartbeat)
            if with_heartbeat and monitor.writer is not None and not cycle.heartbeat_carried:
                uncarried.append(name)
            timeout = max(timeout, cycle.timeout)
            open_groups[name] = (monitor, cycle)
            awaitables = cycle.awaitables()
            countdown = _Countdown(len(awaitables), functools.partial(group_done, name))
            for waitable in awaitables:
                waitable.add_done_callback(countdown.tick)
        heartbeats = None
        if uncarried:
            heartbeats = asyncio.ensure_future(self.heartbeat_all(uncarried))
        if open_groups:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.shield(all_done), timeout)
        for name in list(open_groups):
            group_done(name)  # what has not answered by now timed out
        if heartbeats is not None:
            await heartbeats
        if self.publisher is not None:
            # once per cycle (not per group): announce at once when any group's routing changed
            await self.publisher.publish_if_changed()

    def _in_flight(self, kind: str, name: str) -> bool:
        task = self._detached[kind].get(name)
        return task is not None and not task.done()

    def _detach(
        self, kind: str, names: Iterable[str], run: Callable[[str], Awaitable[None]]
    ) -> None:
        """Run the slow path of these groups (a connect first, a script load) as one task
        per group that the round does not wait for: a black-holed master makes its connect
        wait out the whole timeout, and a round waiting for that would overrun its interval,
        so the scheduler would skip the next round of every group. The task counts its own
        outcome when it ends; while it runs, that group sits the rounds out (_in_flight)."""
        pending = self._detached[kind]
        for name in names:
            if self._in_flight(kind, name):
                continue
            task = asyncio.ensure_future(run(name))
            pending[name] = task
            task.add_done_callback(functools.partial(self._detached_done, kind, name))

    def _detached_done(self, kind: str, name: str, task: asyncio.Task[None]) -> None:
        if self._detached[kind].get(name) is task:
            del self._detached[kind][name]
        if not task.cancelled() and task.exception() is not None:
            self.stats.add(kind, name, "error")
            log.error("%s of group %s failed: %s", kind, name, task.exception())

    def _master_down(self, name: str) -> bool:
        """The group's newest poll could not reach its master: the heartbeat writes (the
        scheduled rounds' and the poll cycle's own) and the scheduled probe rounds leave it
        alone until a poll sees it again (a black-holed master would
        otherwise cost a connect attempt per round, ~6 a second, instead of one per cycle)."""
        snapshot = self.store.get(name)
        return snapshot is not None and not snapshot.master_up

    async def heartbeat_round(self) -> None:
        """The heartbeat job: one round; writes that need a connect run on their own."""
        await self.heartbeat_all(detach_slow=True)

    async def heartbeat_all(
        self, names: Iterable[str] | None = None, *, detach_slow: bool = False
    ) -> None:
        """One heartbeat per group (or per named group): every write is sent first, then all
        are awaited together under one timeout (no task per write: at 4 rounds a second
        over hundreds of masters the per-write overhead is what costs). Groups that need a
        connect or a script load take the ordinary path: awaited here, or with
        `detach_slow` (the scheduled rounds) run on their own (_detach). A group whose
        detached write is still running skips the round."""
        fast: list[tuple[str, HeartbeatWriter, InFlight]] = []
        slow: list[str] = []
        timeout = 0.0
        for name in self.monitors if names is None else names:
            monitor = self.monitors[name]
            writer = monitor.writer
            if writer is None or self._in_flight("heartbeat", name):
                continue
            if monitor.master_is_master is False or self._master_down(name):
                self.stats.add("heartbeat", name, "skipped")
                continue
            if writer.busy:  # its write from an earlier round is still out
                self.stats.add("heartbeat", name, "skipped_overrun")
                continue
            inflight = writer.begin()
            if inflight is None:
                slow.append(name)
                continue
            fast.append((name, writer, inflight))
            timeout = max(timeout, writer.timeout)
        if fast:
            await asyncio.wait([inflight.future for _, _, inflight in fast], timeout=timeout)
            for name, writer, inflight in fast:
                result = writer.finish(inflight)
                if result is None:
                    slow.append(name)
                else:
                    self.stats.add("heartbeat", name, "ok" if result else "failed")
        if slow and detach_slow:
            self._detach("heartbeat", slow, self.heartbeat_group)
        elif slow:
            await asyncio.gather(*(self.heartbeat_group(name) for name in slow))

    async def probe_all(self, names: list[str], *, detach_slow: bool = False) -> None:
        """One probe per named group, sent together and awaited under one timeout (as
        heartbeat rounds are); groups that need a connect, a script load or a second WAIT
        take the ordinary path: awaited here, or with `detach_slow` (the scheduled rounds)
        run on their own, as heartbeat_all does."""
        fast: list[tuple[str, WaitProber, InFlight]] = []
        slow: list[str] = []
        timeout = 0.0
        for name in names:
            entry = self.probers.get(name)
            if entry is None or self._in_flight("probe", name):
                continue
            prober, _ = entry
            if detach_slow and self._master_down(name):
                # no connect: the probe fails as the poll did (the probe metrics say so)
                if self.probe_store is not None:
                    self.probe_store.record(
                        ProbeResult(
                            name,
                            "error",
                            None,
                            None,
                            None,
                            reason="master_down",
                            message="the poll cannot reach the master",
                            at=time.time(),
                        )
                    )
                self.stats.add("probe", name, "skipped")
                continue
            inflight = prober.begin()
            if inflight is None:
                slow.append(name)
            else:
                fast.append((name, prober, inflight))
                timeout = max(timeout, prober.wait_timeout)
        if fast:
            await asyncio.wait([inflight.future for _, _, inflight in fast], timeout=timeout)
            for name, prober, inflight in fast:
                result = prober.finish(inflight)
                if result is None:
                    slow.append(name)
                    continue
                if self.probe_store is not None:
                    self.probe_store.record(result)
                self.stats.add("probe", name, "completed")
        if slow and detach_slow:
            self._detach("probe", slow, self.probe_group)
        elif slow:
            await asyncio.gather(*(self.probe_group(name) for name in slow))

    async def probe_every(self, interval: float) -> None:
        """The probe round of every group whose probe interval is `interval` (the groups
        are looked up at each round: discovery and reloads change them)."""
        await self.probe_all(
            [n for n, (_, i) in self.probers.items() if i == interval], detach_slow=True
        )

    async def discover(self) -> None:
        """The discovery job: the fleet asks its Sentinels and clusters, then reconciles."""
        if self.fleet is not None:
            await self.fleet.discover()
            self.stats.add("discovery", "all", "completed")

    def start(self) -> None:
        self._add_jobs()
        self._scheduler.start()

    def reconfigure(self, poll_interval: float, heartbeat_interval: float | None) -> None:
        """New intervals (a reload): every job is removed and added again."""
        self.poll_interval = poll_interval
        self.heartbeat_interval = heartbeat_interval
        self._scheduler.remove_all_jobs()
        self._next_poll = None
        self._add_jobs()

    def _probe_intervals(self) -> list[float]:
        if self.fleet is not None:
            return self.fleet.probe_intervals()
        return sorted({interval for _, interval in self.probers.values()})

    def _add_job(
        self, job: Callable[..., Awaitable[None]], seconds: float, job_id: str, *args: Any
    ) -> None:
        self._scheduler.add_job(
            self._run_job, "interval", seconds=seconds, args=[job, *args], id=job_id
        )

    async def _run_job(self, job: Callable[..., Awaitable[None]], *args: Any) -> None:
        """One run of a job, as APScheduler starts it. shutdown() makes APScheduler cancel
        the runs still going (a probe round waiting for its WAITs, most of the time): such a
        run ends quietly instead of as a failed job with a traceback in the log."""
        try:
            await job(*args)
        except asyncio.CancelledError:
            if not self._stopping:
                raise

    def _add_jobs(self) -> None:
        # one job per kind for all groups (not one per group): the scheduler's own overhead
        # then does not grow with the fleet; max_instances=1 + coalescing still skip (and
        # count) a run whose predecessor overran
        rounds = self.heartbeat_rounds_per_poll()
        if rounds is not None:
            assert self.heartbeat_interval is not None
            self._add_job(self.tick, self.heartbeat_interval, "tick:all")
        else:
            self._add_job(self.poll_all, self.poll_interval, "poll:all")
            if self.heartbeat_interval is not None and self._has_writers():
                self._add_job(self.heartbeat_round, self.heartbeat_interval, "heartbeat:all")
        for interval in self._probe_intervals():
            self._add_job(self.probe_every, interval, f"probe:every-{interval:g}s", interval)
        if self.fleet is not None and self.fleet.discovers:
            self._add_job(self.discover, self.poll_interval, "discovery:all")
        if self.sync_poll is not None:
            self._add_job(self.poll_sync_tasks, self.poll_interval, "sync:all")
        if self.publisher is not None:
            self._add_job(self.publish_routing, self.publisher.config.interval, "publish:routing")

    def _has_writers(self) -> bool:
        if self.fleet is not None:  # its groups may be discovered after the jobs are added
            return self.fleet.cfg.heartbeat.enabled and bool(self.fleet.cfg.groups)
        return any(m.writer is not None for m in self.monitors.values())

    def heartbeat_rounds_per_poll(self) -> int | None:
        """k when the poll interval is k heartbeat intervals (1s / 250ms: 4): then one job
        ticks at the heartbeat interval and every k-th tick is also the poll cycle, which
        carries that round's heartbeats in the masters' poll pipelines (one round trip per
        master and second fewer). None: separate poll and heartbeat jobs."""
        hb = self.heartbeat_interval
        if hb is None or not self._has_writers():
            return None
        rounds = round(self.poll_interval / hb)
        if rounds < 1 or abs(rounds * hb - self.poll_interval) > 1e-6:
            return None
        return rounds

    async def tick(self) -> None:
        """The combined job, every heartbeat interval: a heartbeat round, and when the poll
        cycle is due (by the clock: every poll interval, phase-locked to the first cycle)
        the poll cycle instead, carrying that round's heartbeats. Both run as tasks of their
        own and the job returns at once: a job still running at its next turn makes
        APScheduler skip that turn, and a cadence counted in turns would then stretch every
        group's poll interval. A poll cycle still running when its next turn comes is
        skipped and counted (skipped_overrun, group "all"). Heartbeat rounds may overlap: a
        group whose write from an earlier round is still out sits the new round out
        (skipped_overrun, that group), the other groups write on time."""
        now = asyncio.get_running_loop().time()
        due = self._next_poll
        assert self.heartbeat_interval is not None
        if due is None or now >= due - self.heartbeat_interval / 2:
            # the next cycle stays on the grid; past it by a whole interval: a new grid
            due = now if due is None else due
            self._next_poll = due + self.poll_interval
            if self._next_poll <= now:
                self._next_poll = now + self.poll_interval
            if self._poll_task is None or self._poll_task.done():
                self._poll_task = asyncio.ensure_future(self.poll_all(with_heartbeat=True))
                self._poll_task.add_done_callback(functools.partial(self._round_done, "poll"))
                return
            self.stats.add("poll", "all", "skipped_overrun")
        # a heartbeat round starts even while the previous one still waits for a late reply:
        # only the groups whose write is still out sit it out (heartbeat_all), not all of them
        task = asyncio.ensure_future(self.heartbeat_round())
        self._heartbeat_rounds.add(task)
        task.add_done_callback(self._heartbeat_rounds.discard)
        task.add_done_callback(functools.partial(self._round_done, "heartbeat"))

    def _round_done(self, kind: str, task: asyncio.Task[None]) -> None:
        if not task.cancelled() and task.exception() is not None:
            self.stats.add(kind, "all", "error")
            log.error("%s round failed: %s", kind, task.exception())

    async def poll_sync_tasks(self) -> None:
        """The sync tasks' checkpoints and their sources' offsets (replwatch/tasks/watch)."""
        if self.sync_poll is not None:
            await self.sync_poll()
            self.stats.add("sync", "all", "completed")

    async def publish_routing(self) -> None:
        if self.publisher is not None:
            ok = await self.publisher.publish()
            self.stats.add("publish", "routing", "ok" if ok else "failed")

    def shutdown(self) -> None:
        """Stop the jobs and cancel what runs; wait_closed() waits for the cancelled tasks."""
        self._stopping = True
        quiet_cancelled_runs()
        if self._scheduler.running:
            self._scheduler.shutdown(wait=False)
        running = [self._poll_task, *self._heartbeat_rounds]
        running += [task for pending in self._detached.values() for task in pending.values()]
        for task in running:
            if task is not None and not task.done():
                task.cancel()
                self._cancelled.append(task)
        for monitor in self.monitors.values():
            monitor.close()
        for prober, _ in self.probers.values():
            prober.close()
        if self.publisher is not None:
            self.publisher.close()

    async def wait_closed(self) -> None:
        """Until every task shutdown() cancelled has ended: a loop closed before that destroys
        them pending (a detached heartbeat write mid-EVALSHA, say)."""
        cancelled, self._cancelled = self._cancelled, []
        if cancelled:
            await asyncio.gather(*cancelled, return_exceptions=True)
