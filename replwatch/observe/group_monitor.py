"""One group's poll cycle: poll every node concurrently, feed the offset clock, compute.

Each node has its own timeout inside the cycle, so one slow or black-holed node bounds the
cycle at `poll.timeout` and never delays the other nodes or the other groups.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any

from replwatch.config import (
    GroupConfig,
    HeartbeatConfig,
    LagConfig,
    PollConfig,
    RedisEndpoint,
    TLSConfig,
    tls_over,
)
from replwatch.keyslot import key_in_slots
from replwatch.lag.acks import AckSeen, ack_reading
from replwatch.lag.compute import NodeSample, ReplicaMemory, compute_group
from replwatch.lag.followers import match_line
from replwatch.lag.heartbeat import HeartbeatHistory
from replwatch.lag.offset_clock import OffsetClock
from replwatch.lag.trend import Reading
from replwatch.observe.connection import InFlight
from replwatch.observe.heartbeat import HeartbeatWriter
from replwatch.observe.info import ReplicationInfo, parse_replication
from replwatch.observe.poller import NodePoller
from replwatch.state import GroupSnapshot
from replwatch.topology.groups import AddressMap, MonitoredGroup


def discovered_endpoints(
    template: RedisEndpoint,
    infos: list[ReplicationInfo],
    known: set[str],
    address_map: AddressMap | None = None,
) -> list[RedisEndpoint]:
    """Replicas named in the slave lines of the given INFOs that are not known yet, at the
    address `address_map` maps their announced one to; they take the credentials, db and TLS
    setting of `template` (the group's master)."""
    found: list[RedisEndpoint] = []
    amap = address_map or AddressMap()
    for info in infos:
        for line in info.replicas:
            if not line.ip or line.port <= 0:
                continue
            host, port = amap.map(line.ip, line.port)
            label = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"  # endpoint.label
            if label in known:
                continue  # every cycle for every known replica: no model copy for those
            endpoint = template.model_copy(update={"host": host, "port": port})
            known.add(endpoint.label)
            found.append(endpoint)
    return found


class PollCycle:
    """One group's poll cycle in flight: per node, either a sent pipeline or a task."""

    __slots__ = (
        "generation",
        "heartbeat_carried",
        "heartbeat_result",
        "labels",
        "pollers",
        "sent",
        "started",
        "tasks",
    )

    def __init__(
        self,
        labels: list[str],
        pollers: list[tuple[NodePoller, bool]],
        sent: list[InFlight | None],
        tasks: list[asyncio.Task[NodeSample] | None],
    ) -> None:
        self.labels = labels
        self.pollers = pollers
        self.sent = sent
        self.tasks = tasks
        self.started = time.monotonic()
        self.heartbeat_carried = False  # this round's heartbeat rides the master's pipeline
        self.heartbeat_result: bool | None = None  # its outcome, once finished
        self.generation = 0  # the monitor's generation it was begun in (see retarget)

    @property
    def timeout(self) -> float:
        """How long to wait for this cycle: the slowest node's own timeout (a node that
        connects first bounds connect + poll by it inside its task)."""
        return max(poller.timeout for poller, _ in self.pollers)

    def awaitables(self) -> list[asyncio.Future[Any]]:
        out: list[asyncio.Future[Any]] = []
        for inflight, task in zip(self.sent, self.tasks, strict=True):
            if inflight is not None:
                out.append(inflight.future)
            elif task is not None:
                out.append(task)
        return out


class GroupMonitor:
    """Owns the pollers, offset clock, heartbeat history and memory of one group."""

    def __init__(
        self,
        group: GroupConfig | MonitoredGroup,
        poll: PollConfig,
        heartbeat: HeartbeatConfig,
        lag: LagConfig,
        tls: TLSConfig,
        wall_clock: Callable[[], float] = time.time,
    ) -> None:
        if isinstance(group, GroupConfig):
            group = MonitoredGroup.static(group)
        self.group = group
        self.poll_config = poll
        self.heartbeat_config = heartbeat
        self.lag_config = lag
        self.tls = tls_over(tls, group.tls)
        self._wall = wall_clock
        self._cluster = group.source == "cluster"
        self._hb_key = self._heartbeat_key(group, None)
        self.master = NodePoller(group.master, poll.timeout, self.tls)
        self.configured = [r.label for r in group.replicas]
        self.replicas: dict[str, NodePoller] = {r.label: self._poller(r) for r in group.replicas}
        self.discovered: set[str] = set()
        self.clock = OffsetClock(lag.offset_clock_window, lag.offset_clock_max_points)
        self.history: HeartbeatHistory | None = None
        self.writer: HeartbeatWriter | None = None
        if heartbeat.enabled:
            self.history = HeartbeatHistory()
            self.writer = self._heartbeat_writer(group.master)
        self.memory: dict[str, ReplicaMemory] = {}
        # the followers' ACKs as the master's samples show them (lag/acks.py): the newest
        # sample of each line, and the readings since the last poll cycle
        self.acks: dict[str, AckSeen] = {}
        self.ack_readings: dict[str, list[Reading]] = {}
        self.cycle = 0
        self.master_is_master: bool | None = None
        self.last_snapshot: GroupSnapshot | None = None
        self.master_changes = 0  # failovers followed (the group's master moved)
        # bumped by retarget: a cycle begun before it polled nodes of the old topology
        self.generation = 0

    def _heartbeat_key(self, group: MonitoredGroup, current: str | None) -> str | None:
        """The heartbeat key; on a cluster shard one whose hash tag lands in a slot the
        shard owns (the configured key is in one shard only), kept while it still does."""
        if not self.heartbeat_config.enabled:
            return None
        if not self._cluster:
            return self.heartbeat_config.key
        return key_in_slots(self.heartbeat_config.key, group.slots, current)

    def _poller(self, endpoint: RedisEndpoint) -> NodePoller:
        """A replica's poller: it reads the heartbeat key (after READONLY on a cluster)."""
        return NodePoller(
            endpoint, self.poll_config.timeout, self.tls, self._hb_key, readonly=self._cluster
        )

    def _heartbeat_writer(self, master: RedisEndpoint) -> HeartbeatWriter:
        assert self.history is not None and self._hb_key is not None
        hb = self.heartbeat_config
        return HeartbeatWriter(
            master,
            self._hb_key,
            hb.ttl,
            min(self.poll_config.timeout, max(hb.interval, 0.05)),
            self.history,
            self.tls,
            on_master_info=self.master_sample,
        )

    @property
    def name(self) -> str:
        return self.group.name

    def retarget(self, group: MonitoredGroup) -> None:
        """Follow `group` (same name) without losing what is still true: pollers of nodes
        whose endpoint did not change keep their connections, and while the master stays
        the offset clock and the replicas' memory stay. When the master moved (a failover),
        the new master is polled as master, the offset clock starts again (a new stream
        position history), the heartbeat writes go to the new master (the heartbeat history
        stays: the old writes were replicated to the new master too), and nothing of a node's
        old role is kept: a replica that became master is no longer a replica, so no replica
        series of it survives. Call between poll cycles."""
        old = self.group
        self.group = group
        self.generation += 1
        master_moved = group.master != old.master
        key = self._heartbeat_key(group, self._hb_key)
        if key != self._hb_key:
            # the shard no longer owns the key's slot: every reader and the writer move on
            self._hb_key = key
            for poller in self.replicas.values():
                poller.close()
            self.replicas = {label: self._poller(p.endpoint) for label, p in self.replicas.items()}
            if self.writer is not None and not master_moved:
                self.writer.close()
                self.writer = self._heartbeat_writer(group.master)
        if master_moved:
            self.master.close()
            self.master = NodePoller(group.master, self.poll_config.timeout, self.tls)
            lag = self.lag_config
            self.clock = OffsetClock(lag.offset_clock_window, lag.offset_clock_max_points)
            self.master_is_master = None
            self.master_changes += 1
            self.acks, self.ack_readings = {}, {}
            if self.writer is not None:
                self.writer.close()
                self.writer = self._heartbeat_writer(group.master)
        wanted = {r.label: r for r in group.replicas}
        for label in list(self.replicas):
            poller = self.replicas[label]
            keep_discovered = label in self.discovered and label != group.master.label
            if (label in wanted and poller.endpoint == wanted[label]) or (
                keep_discovered and label not in wanted
            ):
                continue
            self.replicas.pop(label).close()
            self.discovered.discard(label)
            self.memory.pop(label, None)
            self.acks.pop(label, None)
        for label, endpoint in wanted.items():
            if label not in self.replicas:
                self.replicas[label] = self._poller(endpoint)
            self.discovered.discard(label)
        self.configured = list(wanted)
        self.memory.pop(group.master.label, None)

    def master_sample(self, text: bytes, at: float) -> None:
        """The master's INFO replication between poll cycles (it comes with every heartbeat
        write): its offset into the offset clock, its followers' ACKs timed (lag/acks.py)."""
        info = parse_replication(text.decode("utf-8", "replace"))
        if info.is_replica:
            return
        self.clock.observe(info.master_repl_offset, at, info.replid, info.replid2)
        self._observe_acks(info, at)

    def _observe_acks(self, info: ReplicationInfo, at: float) -> None:
        """Each polled follower's line in a master sample: a reading when its ACKed offset
        moved since the previous sample."""
        map_label = self.group.address_map.label
        for label in self.replicas:
            line = match_line(info.replicas, label, map_label)
            if line is None:
                self.acks.pop(label, None)
                continue
            previous = self.acks.get(label)
            if previous is not None and at <= previous.at:
                continue  # an older sample that completed late
            reading = ack_reading(previous, at, line.offset, self.clock)
            if reading is not None:
                self.ack_readings.setdefault(label, []).append(reading)
            self.acks[label] = AckSeen(at, line.offset)

    async def write_heartbeat(self) -> bool | None:
        """One heartbeat write; skipped (None) while the master is known to be a replica."""
        if self.writer is None or self.master_is_master is False:
            return None
        return await self.writer.write_once()

    def begin_cycle(self, with_heartbeat: bool = False) -> PollCycle:
        """Start one poll cycle: every node with an open connection gets its pipeline sent
        now; nodes that need a connect get a task of their own (PollCycle.awaitables).
        `with_heartbeat`: this round's heartbeat write rides at the end of the master's
        pipeline (PollCycle.heartbeat_carried says whether it could)."""
        self.cycle += 1
        labels = list(self.replicas)
        pollers = [(self.master, True)] + [(self.replicas[label], False) for label in labels]
        sent: list[InFlight | None] = []
        tasks: list[asyncio.Task[NodeSample] | None] = []
        carried = False
        for poller, as_master in pollers:
            inflight: InFlight | None = None
            if as_master and with_heartbeat and self.writer is not None:
                write = self.writer.piggyback_command()
                if write is not None and self.master_is_master is not False:
                    inflight = poller.begin(True, write, 1)
                    carried = inflight is not None
            if inflight is None:
                inflight = poller.begin(as_master)
            sent.append(inflight)
            tasks.append(
                None if inflight is not None else asyncio.ensure_future(poller.poll(as_master))
            )
        cycle = PollCycle(labels, pollers, sent, tasks)
        cycle.heartbeat_carried = carried
        cycle.generation = self.generation
        return cycle

    def finish_cycle(self, cycle: PollCycle) -> GroupSnapshot:
        """The snapshot of a begun cycle; a node still unanswered counts as timed out."""
        results: list[NodeSample] = []
        for (poller, as_master), inflight, task in zip(
            cycle.pollers, cycle.sent, cycle.tasks, strict=True
        ):
            if inflight is not None:
                carried = as_master and cycle.heartbeat_carried
                if carried:
                    self._record_carried_heartbeat(cycle, inflight)
                results.append(poller.finish(inflight, as_master, 1 if carried else 0))
            elif task is not None and task.done() and not task.cancelled():
                results.append(task.result())
            else:
                if task is not None:
                    task.cancel()
                results.append(
                    NodeSample(
                        label=poller.label,
                        info=None,
                        error_reason="timeout",
                        error_message=f"no answer within {poller.timeout:g}s",
                        started=cycle.started,
                        finished=time.monotonic(),
                    )
                )
        return self._complete(cycle.labels, results[0], results[1:])

    def _record_carried_heartbeat(self, cycle: PollCycle, inflight: InFlight) -> None:
        writer = self.writer
        if writer is None:
            return
        future = inflight.future
        if not future.done():
            cycle.heartbeat_result = writer.record_failure("timeout")
        elif future.cancelled() or future.exception() is not None:
            error = None if future.cancelled() else future.exception()
            cycle.heartbeat_result = writer.record_failure(getattr(error, "reason", "error"))
        else:
            cycle.heartbeat_result = writer.record_piggyback(
                future.result()[-1], inflight.sent, inflight.received
            )

    async def poll_cycle(self, with_heartbeat: bool = False) -> GroupSnapshot:
        """One whole cycle of this group on its own (status, tests), as the daemon's
        scheduler runs it: with `with_heartbeat`, this round's heartbeat write rides at the
        end of the master's pipeline, or — before the first write loaded the script, or when
        the master must be connected first — is written on its own alongside."""
        cycle = self.begin_cycle(with_heartbeat)
        waitables = cycle.awaitables()
        separate = None
        if with_heartbeat and self.writer is not None and not cycle.heartbeat_carried:
            separate = asyncio.ensure_future(self.write_heartbeat())
            waitables.append(separate)
        if waitables:
            await asyncio.wait(waitables, timeout=cycle.timeout)
        if separate is not None and not separate.done():
            await separate  # bounded by the writer's own timeout
        return self.finish_cycle(cycle)

    def _complete(
        self, labels: list[str], master_sample: NodeSample, replica_samples: list[NodeSample]
    ) -> GroupSnapshot:
        samples = dict(zip(labels, replica_samples, strict=True))
        minfo = master_sample.info
        if minfo is not None:
            self.master_is_master = not minfo.is_replica
            if not minfo.is_replica:
                self.clock.observe(
                    minfo.master_repl_offset, master_sample.at, minfo.replid, minfo.replid2
                )
                self._observe_acks(minfo, master_sample.at)
        ack_readings, self.ack_readings = self.ack_readings, {}
        now_mono = time.monotonic()
        writer = self.writer
        snapshot, self.memory = compute_group(
            name=self.group.name,
            master_label=self.group.master.label,
            replica_labels=labels,
            discovered=frozenset(self.discovered),
            master=master_sample,
            replicas=samples,
            clock=self.clock,
            heartbeat=self.history,
            memory=self.memory,
            now_mono=now_mono,
            now_wall=self._wall(),
            cycle=self.cycle,
            heartbeat_ok=writer.last_ok if writer else None,
            heartbeat_error=writer.last_error if writer else None,
            map_label=self.group.address_map.label,
            ack_readings=ack_readings,
        )
        if self.group.discover:
            self._update_discovery(master_sample, samples)
        self.last_snapshot = snapshot
        return snapshot

    def _update_discovery(self, master: NodeSample, samples: dict[str, NodeSample]) -> None:
        """Add replicas the master (and, for chains, each replica) lists; drop discovered
        ones that no node lists any more (their series leave /metrics with them)."""
        if master.info is None:
            return  # cannot tell who left while the master is unseen
        infos = [master.info] + [s.info for s in samples.values() if s.info is not None]
        amap = self.group.address_map
        listed = {amap.label(line.address) for info in infos for line in info.replicas}
        known = set(self.replicas) | {self.group.master.label}
        for endpoint in discovered_endpoints(self.group.master, infos, known, amap):
            self.replicas[endpoint.label] = self._poller(endpoint)
            self.discovered.add(endpoint.label)
        for label in list(self.discovered):
            if label not in listed:
                self.discovered.discard(label)
                self.replicas.pop(label).close()
                self.memory.pop(label, None)
                self.acks.pop(label, None)

    def close(self) -> None:
        self.master.close()
        for poller in self.replicas.values():
            poller.close()
        if self.writer is not None:
            self.writer.close()
