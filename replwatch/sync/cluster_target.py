"""A Redis Cluster as the target of a sync task (docs/syncer.md "Redis Cluster as a target").

A transaction's keys must all be in one slot on a cluster, so the single-target scheme (every
batch `MULTI … HSET <checkpoint> offset … EXEC`) becomes one checkpoint per target slot:

- `__replwatch:sync:<task>:{<tag>}` (tag: a short text whose CRC16 lands in slot s, see
  slots.slot_tags) holds `offset` (and `gen`, the task's full_resyncs when written): the
  stream's commands for slot s are applied up to that offset. Every stream batch is per slot,
  `MULTI <that slot's commands> HSET <slot checkpoint> offset <end> gen <g> EXEC`, sent to the
  master owning the slot; at most one batch per slot is in flight (so a redirected batch can
  never be overtaken by a later one of its slot), many slots' batches are pipelined per node.
- the task record `__replwatch:sync:<task>` (in whatever slot it hashes to) holds the usual
  checkpoint fields with `offset` = the floor F: every command up to F is applied in every
  slot (written about twice a second, after the batches up to F were confirmed).
- resume: PSYNC from F; the slot checkpoints (SCAN on every master, `gen` equal to the
  record's full_resyncs) say which of the commands after F a slot has already: a unit of the
  stream ending at e in slot s is skipped when the slot's offset ≥ e.
- MOVED: the slot map is updated (and reloaded) and the batch resent to the new owner; ASK:
  resent to the importing node preceded by ASKING (which holds for the whole MULTI … EXEC:
  Redis keeps the flag while the client is in MULTI); TRYAGAIN / CLUSTERDOWN: resent after a
  short wait (for up to RETRY_FOR; the MOVED / ASK bounce count starts again). A redirected
  batch ran nowhere: its commands were refused while queued (EXEC then answers EXECABORT) or
  EXEC itself was refused (the transaction discarded).
- FLUSHALL / FLUSHDB / FUNCTION / SCRIPT: a barrier: everything before is confirmed, then the
  command runs on every master; the master holding the task record runs it as `MULTI
  FLUSHALL HSET <record> … offset <after it> EXEC` (last), so a crash in between replays it.
- the snapshot: keys are written to the node owning them, pipelined per node, no MULTI,
  with at most SNAPSHOT_IN_AIR_BYTES unanswered. A slot's commands follow its unanswered
  ones to their node (a map reloaded meanwhile does not send them ahead on another
  connection), and a command redirected holds its slot: it and every later command of the
  slot wait until nothing older of the slot is unanswered, then go out in the order they were
  sent (the chunks of one big key keep their order across a slot move).
"""

from __future__ import annotations

import heapq
import logging
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import hiredis

from replwatch.config import ClusterTarget, RedisEndpoint, TLSConfig, node_at
from replwatch.errors import ProtocolFailure, RedisError
from replwatch.keyslot import SLOTS
from replwatch.observe.connection import classify_reply_error, encode_command
from replwatch.sync.checkpoint import CHECKPOINT_PREFIX
from replwatch.sync.checkpoint_store import CheckpointStore
from replwatch.sync.lease import Fence
from replwatch.sync.slots import (
    Redirect,
    first_redirect,
    parse_cluster_slots,
    route,
    snapshot_slot,
)
from replwatch.sync.writer import (
    CLIENT_NAME,
    OK_REPLY,
    QUEUED_REPLY,
    Batch,
    TargetLink,
    TargetRejected,
)

log = logging.getLogger("replwatch.sync")

Address = tuple[str, int]
RETRY_WAIT = 0.05  # TRYAGAIN / CLUSTERDOWN: resend after this long
RETRY_FOR = 120.0  # … for at most this long, then the session ends (and is retried)
# MOVED / ASK followed for one batch at most this often in a row: a slot map the nodes
# disagree on (a migration half undone) must not bounce a batch between them for ever. A
# TRYAGAIN / CLUSTERDOWN answer starts the count again (a node acts on the slot: a migration
# in progress, which RETRY_FOR bounds), so ASK → TRYAGAIN rounds of a slow move are waited out
MAX_REDIRECTS = 16
RECORD_EVERY = 0.5  # the task record (the floor) at most this often while busy
NODE_IN_FLIGHT = 100_000  # batches in flight per node (bounded by BUFFER_LIMIT instead)
# snapshot bytes sent and not yet answered: send() reads replies and, past this, waits for
# them (the replies were read only at the end, and every command's bytes were kept for a
# resend until then: 557 MB of RSS for a 130 MB dataset)
SNAPSHOT_IN_AIR_BYTES = 16 * 1024 * 1024
_ERROR = hiredis.ReplyError
_SPECIAL = frozenset((b"MULTI", b"EXEC", b"SELECT", b"PING", b"REPLCONF"))
_CHECKPOINT_PREFIX = CHECKPOINT_PREFIX.encode()
_ASKING = encode_command(("ASKING",))
_MULTI = encode_command(("MULTI",))
_EXEC = encode_command(("EXEC",))


def open_target(
    endpoint: RedisEndpoint,
    tls: TLSConfig | None,
    timeout: float,
    max_in_flight: int,
    fence: Fence | None = None,
    client_name: str = CLIENT_NAME,
    stopping: Callable[[], bool] | None = None,
) -> TargetLink:
    """The task's target: one node (TargetLink, fenced for an `ha` task, its connection
    named `client_name`) or a whole cluster (ClusterTargetLink, whose waits for redirected
    and retried batches end when `stopping()`; the config refuses `ha` with a cluster
    target)."""
    if isinstance(endpoint, ClusterTarget):
        return ClusterTargetLink(endpoint, tls, timeout, client_name, stopping)
    return TargetLink(endpoint, tls, timeout, max_in_flight, fence=fence, client_name=client_name)


class NodeLink(TargetLink):
    """A TargetLink whose batches are queued and written together (push)."""

    def __init__(
        self,
        endpoint: RedisEndpoint,
        tls: TLSConfig | None,
        timeout: float,
        client_name: str = CLIENT_NAME,
    ) -> None:
        self.out: list[bytes] = []
        super().__init__(endpoint, tls, timeout, NODE_IN_FLIGHT, client_name=client_name)

    def queue(self, payload: bytes, batch: Batch) -> None:
        self.out.append(payload)
        self.in_flight.append(batch)

    def push(self) -> None:
        if self.out:
            data = b"".join(self.out)
            self.out = []
            self.conn.send(data)

    # every wait for replies first writes what is queued (else it would wait forever)

    def call(self, *args: Any) -> Any:
        self.push()
        return super().call(*args)

    def _finish_oldest(self) -> None:
        self.push()
        super()._finish_oldest()

    def poll_replies(self) -> None:
        self.push()
        super().poll_replies()


@dataclass(eq=False)
class Job:
    """Commands for one slot (or one fixed node) with what to do once they are confirmed.
    `transaction`: sent as MULTI … EXEC (on_success gets EXEC's array), else on_success
    gets the body's replies."""

    slot: int
    body: bytes
    replies: int
    transaction: bool
    on_success: Callable[[list[Any]], None]
    what: str
    node: Address | None = None  # a fixed node (keyless commands to every master)
    raw_errors: bool = False  # error replies go to on_success (call()), not TargetRejected
    follow: bool = True  # False: redirect replies too go to on_success (snapshot parts)
    ask: Address | None = None
    first_try: float = field(default_factory=time.monotonic)
    redirects: int = 0  # MOVED / ASK followed in a row (since the last TRYAGAIN)


class ClusterTargetLink(TargetLink):
    """The cluster as one target: the slot map, a NodeLink per master, jobs routed by slot
    with MOVED / ASK / TRYAGAIN followed. Also takes what the full sync sends to a plain
    TargetLink (call, send of snapshot batches, drain), routing each command by its key."""

    def __init__(
        self,
        target: ClusterTarget,
        tls: TLSConfig | None,
        timeout: float,
        client_name: str = CLIENT_NAME,
        stopping: Callable[[], bool] | None = None,
    ) -> None:
        # (no TargetLink.__init__: this link is many connections, opened per node)
        self.client_name = client_name
        self.stopping = stopping or (lambda: False)
        self._claimed = False  # close_others_named ran: every node opened later is claimed
        self.endpoint = target
        self.cluster = target
        self.tls = tls
        self.timeout = timeout
        self.max_in_flight = NODE_IN_FLIGHT
        self.in_flight = deque()
        self.db = 0
        self.fence = None  # ha is refused with a cluster target: write() is call()
        self._wire_db = 0
        self.links: dict[Address, NodeLink] = {}
        self.slot_owner: list[Address | None] = [None] * SLOTS
        self.masters: list[Address] = []
        self._finished: deque[tuple[Job, list[Any]]] = deque()
        self._retries: list[tuple[float, Job]] = []
        self.outstanding = 0  # jobs sent and not yet finished (retries included)
        self._map_stale = False
        self.redirects = {"MOVED": 0, "ASK": 0, "TRYAGAIN": 0, "CLUSTERDOWN": 0}
        # the snapshot (send): bytes unanswered; per slot, its commands unanswered, and for a
        # slot one of whose commands was redirected, the commands held (oldest first)
        self.snapshot_in_air = 0
        self._sent_seq = 0
        self._in_air: dict[int, int] = {}
        self._air_node: dict[int, Address] = {}  # where the slot's unanswered commands went
        self._held: dict[int, list[tuple[int, int, _Gather, Redirect | None]]] = {}
        self.refresh_slots()
        self.info = self.link(self.masters[0]).info

    # ------------------------------------------------------------------ nodes and slots

    def link(self, address: Address) -> NodeLink:
        node = self.links.get(address)
        if node is None:
            node = NodeLink(
                node_at(self.cluster, *address), self.tls, self.timeout, self.client_name
            )
            self.links[address] = node
            if self._claimed and node.close_others_named() is None:
                log.warning(
                    "target node %s refuses CLIENT LIST or CLIENT KILL: a batch of an earlier "
                    "session cut off from it could still arrive and be applied twice",
                    node.endpoint.label,
                )
        return node

    def close_others_named(self) -> int | None:
        """On every master, close the other connections carrying this link's client name
        (the task's earlier sessions: what they sent and a node has not executed yet then
        never is), and do the same on each node this link connects to later (a new master
        after a failover or a resharding). The number closed; None when a master refuses
        CLIENT ID, LIST or KILL."""
        nodes = [self.link(address) for address in self.masters]  # (opened unclaimed)
        self._claimed = True
        closed = 0
        refused = False
        for node in nodes:
            count = node.close_others_named()
            if count is None:
                refused = True
            else:
                closed += count
        return None if refused else closed

    def refresh_slots(self) -> None:
        """The slot map from CLUSTER SLOTS, asked of a known master, else the startup nodes."""
        candidates: list[Address] = [*self.masters]
        for start in self.cluster.cluster.startup_nodes:
            if (start.host, start.port) not in candidates:
                candidates.append((start.host, start.port))
        problems = []
        for address in candidates:
            try:
                node = self.link(address)
                reply = node.call("CLUSTER", "SLOTS")
                ranges = parse_cluster_slots(reply, address)
            except (RedisError, OSError, ValueError) as exc:
                problems.append(f"{address[0]}:{address[1]}: {exc}")
                self._forget(address)
                continue
            owner: list[Address | None] = [None] * SLOTS
            for r in ranges:
                for slot in range(r.start, r.end + 1):
                    owner[slot] = (r.host, r.port)
            self.slot_owner = owner
            self.masters = sorted({(r.host, r.port) for r in ranges})
            if not self.masters:
                raise RedisError(f"cluster {self.cluster.label} serves no slots")
            self._map_stale = False
            return
        raise RedisError(
            f"no node of cluster {self.cluster.label} answered CLUSTER SLOTS: "
            + "; ".join(problems)[:400],
            reason="unreachable",
        )

    def _forget(self, address: Address) -> None:
        node = self.links.pop(address, None)
        if node is not None:
            node.close()

    def owner(self, slot: int) -> Address:
        address = self.slot_owner[slot]
        if address is None:
            self.refresh_slots()
            address = self.slot_owner[slot]
            if address is None:
                raise RedisError(f"slot {slot} of cluster {self.cluster.label} is not served")
        return address

    # ------------------------------------------------------------------ jobs

    def submit(self, job: Job) -> None:
        """Queue a job on the node it goes to (written at the next push)."""
        address = job.ask or job.node or self.owner(job.slot)
        payload = [job.body]
        replies = job.replies
        prefix = b""
        if job.transaction:
            payload = [_MULTI, job.body, _EXEC]
            prefix = OK_REPLY + QUEUED_REPLY * replies
            replies += 2
        if job.ask is not None:
            payload.insert(0, _ASKING)
            prefix = OK_REPLY + prefix
            replies += 1
        batch = Batch(
            replies,
            lambda r: self._finished.append((job, r)),
            job.what,
            prefix=prefix if job.transaction else None,
            tail=1 if job.transaction else 0,
        )
        self.link(address).queue(b"".join(payload), batch)

    def start(self, job: Job) -> None:
        self.outstanding += 1
        self.submit(job)

    def push(self) -> None:
        for node in self.links.values():
            node.push()

    def _complete(self, job: Job, replies: list[Any]) -> None:
        if job.transaction:
            exec_reply = replies[-1]
            if isinstance(exec_reply, list):
                self.outstanding -= 1
                job.on_success(exec_reply)
                return
        else:
            if job.ask is not None:
                replies = replies[1:]  # ASKING's +OK
            if (
                not job.follow
                or not any(isinstance(r, _ERROR) for r in replies)
                or (job.raw_errors and first_redirect(replies, _ERROR) is None)
            ):
                self.outstanding -= 1
                job.on_success(replies)
                return
        redirect = first_redirect(replies, _ERROR)
        if redirect is None:
            first = next((r for r in replies if isinstance(r, _ERROR)), replies[-1])
            raise TargetRejected(
                f"target {self.cluster.label} refused a {job.what} batch: {str(first)[:200]}"
            )
        self._redirected(job, redirect)

    def _redirected(self, job: Job, redirect: Redirect) -> None:
        self.redirects[redirect.kind] += 1
        if redirect.kind in ("MOVED", "ASK"):
            job.redirects += 1
            if job.redirects > MAX_REDIRECTS:
                raise RedisError(
                    f"cluster {self.cluster.label} redirected a {job.what} batch for slot "
                    f"{job.slot} {MAX_REDIRECTS} times ({redirect.kind} to "
                    f"{redirect.host}:{redirect.port} last): its nodes disagree on the slot's "
                    "owner",
                    reason="cluster",
                )
        if redirect.kind == "MOVED":
            self.slot_owner[redirect.slot] = (redirect.host, redirect.port)
            self._map_stale = True
            job.ask = None
            self.submit(job)
        elif redirect.kind == "ASK":
            job.ask = (redirect.host, redirect.port)
            self.submit(job)
        else:  # TRYAGAIN (a slot being migrated) / CLUSTERDOWN
            if time.monotonic() - job.first_try > RETRY_FOR:
                raise RedisError(
                    f"cluster {self.cluster.label} answered {redirect.kind} for slot "
                    f"{job.slot} for {RETRY_FOR:g}s",
                    reason="cluster",
                )
            job.ask = None
            job.redirects = 0
            self._retries.append((time.monotonic() + RETRY_WAIT, job))
            if redirect.kind == "CLUSTERDOWN":
                self._map_stale = True

    def _check_stop(self) -> None:
        if self._retries and self.stopping():
            raise RedisError(
                f"stopped while cluster {self.cluster.label} asked to retry", reason="stopped"
            )

    def _process(self) -> None:
        """Finished jobs handled (successes, redirects), due retries resent, writes pushed."""
        self._check_stop()
        while self._finished:
            job, replies = self._finished.popleft()
            self._complete(job, replies)
        if self._map_stale:
            self.refresh_slots()
        if self._retries:
            now = time.monotonic()
            due = [job for at, job in self._retries if at <= now]
            if due:
                self._retries = [(at, job) for at, job in self._retries if at > now]
                for job in due:
                    self.submit(job)
        self.push()

    def poll_replies(self) -> None:
        """Handle what has arrived, without blocking."""
        self._process()
        for node in list(self.links.values()):
            if node.in_flight:
                node.poll_replies()
        self._process()

    def wait_some(self) -> None:
        """Block until at least one batch in flight is answered (or a retry is due)."""
        self._process()
        for node in self.links.values():
            if node.in_flight:
                node._finish_oldest()
                break
        else:
            if self._retries:
                time.sleep(max(0.0, min(at for at, _ in self._retries) - time.monotonic()))
        self._process()

    def drain(self) -> None:
        """Until every job is confirmed (redirects and retries followed)."""
        self._process()
        while self.outstanding or self._finished:
            busy = False
            for node in list(self.links.values()):
                if node.in_flight:
                    node.drain()
                    busy = True
            if not busy and not self._finished and self._retries:
                time.sleep(max(0.0, min(at for at, _ in self._retries) - time.monotonic()))
            self._process()

    # ------------------------------------------------------------------ TargetLink's API

    def call(self, *args: Any) -> Any:
        """One command, waited for: to the owner of its key's slot; SCAN over every master
        (a cursor that names the master); FLUSHALL/FLUSHDB/FUNCTION/SCRIPT to every master;
        other keyless commands to the first master."""
        self.drain()
        argv = [a if isinstance(a, bytes) else str(a).encode() for a in args]
        name = argv[0].upper()
        if name == b"SELECT":
            self.select(int(argv[1]))
            return b"OK"
        if name == b"SCAN":
            return self._scan(argv)
        r = route(argv)
        data = encode_command(args)
        if r.kind == "slot":
            return self._run(Job(r.slot, data, 1, False, lambda _: None, "call", raw_errors=True))
        nodes = self.masters if r.kind == "every_master" else self.masters[:1]
        replies = [
            self._run(Job(-1, data, 1, False, lambda _: None, "call", node=n, raw_errors=True))
            for n in nodes
        ]
        return replies[0]

    def _run(self, job: Job) -> Any:
        result: list[Any] = []
        job.on_success = result.extend
        self.start(job)
        self.drain()
        reply = result[0]
        if isinstance(reply, _ERROR):
            raise classify_reply_error(str(reply))
        return reply

    def _scan(self, argv: list[bytes]) -> list[Any]:
        """SCAN over the masters in turn; the cursor is node cursor × masters + index."""
        count = len(self.masters)
        cursor = int(argv[1])
        index, node_cursor = cursor % count, cursor // count
        reply = self.link(self.masters[index]).call("SCAN", node_cursor, *argv[2:])
        next_cursor = int(reply[0])
        if next_cursor == 0:
            index += 1
            composite = 0 if index == count else index
        else:
            composite = next_cursor * count + index
        return [str(composite).encode(), reply[1]]

    def select(self, db: int) -> None:
        if db != 0:
            raise TargetRejected(
                f"target {self.cluster.label} is a Redis Cluster (database 0 only): the task "
                f"writes to db {db}; map it to 0 with db_map or leave it out with "
                f"filters.dbs.allow"
            )
        self.db = 0

    def keys_outside(self, ignore_prefix: bytes) -> int:
        self.drain()
        return sum(self.link(m).keys_outside(ignore_prefix) for m in self.masters)

    def send(self, payload: bytes, batch: Batch) -> None:
        """A snapshot batch (plain commands, one key each, no MULTI): each command to the
        owner of its key's slot, pipelined per node; `batch.on_done` gets every reply in the
        payload's order once all are in."""
        gather = _Gather(batch, self, len(payload))
        self.snapshot_in_air += len(payload)
        by_node: dict[Address, list[tuple[int, bytes]]] = {}
        broadcast: list[tuple[int, bytes]] = []
        held: set[int] = set()
        for argv, data in split_payload(payload):
            index = len(gather.replies)
            gather.replies.append(None)
            slot = snapshot_slot(argv)
            if slot is None:
                if argv[0].upper() == b"SELECT":
                    self.select(int(argv[1]))
                    gather.replies[index] = b"OK"
                    continue
                r = route(argv)
                if r.kind == "every_master":
                    broadcast.append((index, data))
                    continue
                slot = r.slot if r.kind == "slot" else 0
            gather.slots[index] = slot
            gather.data[index] = data
            self._sent_seq += 1
            gather.seqs[index] = self._sent_seq
            if slot in self._held:  # behind a redirected command of its slot
                self.hold(slot, gather, index, None)
                held.add(slot)
                continue
            if self._in_air.get(slot):  # behind the slot's unanswered commands, on their
                address = self._air_node[slot]  # connection (the map may have moved on)
            else:
                address = self._air_node[slot] = self.owner(slot)
            by_node.setdefault(address, []).append((index, data))
            self._in_air[slot] = self._in_air.get(slot, 0) + 1
        for address, commands in by_node.items():
            gather.waiting += 1
            self.start(
                Job(
                    -1,
                    b"".join(d for _, d in commands),
                    len(commands),
                    False,
                    gather.part([i for i, _ in commands]),
                    "snapshot",
                    node=address,
                    raw_errors=True,
                    follow=False,
                )
            )
        for index, data in broadcast:
            for address in self.masters:
                gather.waiting += 1
                self.start(Job(-1, data, 1, False, gather.part([index]), "snapshot", node=address))
        for slot in held:
            self.release(slot)
        if not gather.waiting:
            gather.finish()
        self.poll_replies()
        while self.snapshot_in_air > SNAPSHOT_IN_AIR_BYTES:
            if not self.outstanding and not self._finished:  # (a bug: it would spin for ever)
                raise ProtocolFailure("snapshot batches unanswered with nothing in flight")
            self.wait_some()

    def hold(self, slot: int, gather: _Gather, index: int, redirect: Redirect | None) -> None:
        """A snapshot command waits for its slot's older ones (it was redirected, or an older
        one of its slot was); its gather waits for it. A command bounced by MOVED / ASK more
        than MAX_REDIRECTS times in a row ends the session (as a stream batch does)."""
        if redirect is not None:
            if redirect.kind in ("MOVED", "ASK"):
                bounces = gather.bounces.get(index, 0) + 1
                gather.bounces[index] = bounces
                if bounces > MAX_REDIRECTS:
                    raise RedisError(
                        f"cluster {self.cluster.label} redirected a snapshot write for slot "
                        f"{slot} {MAX_REDIRECTS} times ({redirect.kind} to "
                        f"{redirect.host}:{redirect.port} last): its nodes disagree on the "
                        "slot's owner",
                        reason="cluster",
                    )
            else:
                gather.bounces[index] = 0
        gather.waiting += 1
        entry = (gather.seqs[index], index, gather, redirect)
        heapq.heappush(self._held.setdefault(slot, []), entry)

    def answered(self, slot: int) -> None:
        """A snapshot command of `slot` was answered (or redirected and held)."""
        self._in_air[slot] -= 1

    def release(self, slot: int) -> None:
        """Once nothing of the slot is unanswered, its held commands go out in the order they
        were sent: a run to the slot's owner (a MOVED updates the map first), or one alone
        where it must go differently (ASK: to the importing node; TRYAGAIN / CLUSTERDOWN:
        after a wait), the rest held until it is answered. A redirected one holds the slot
        again; a slot with nothing held is pipelined as usual again."""
        queue = self._held.get(slot)
        if queue is None or self._in_air.get(slot, 0):
            return
        run: list[tuple[int, _Gather]] = []
        while queue:
            _seq, index, gather, redirect = queue[0]
            if redirect is not None and redirect.kind != "MOVED":
                if run:  # the older ones first; this one once they are answered
                    self._send_run(slot, run)
                else:
                    heapq.heappop(queue)
                    self._send_alone(slot, gather, index, redirect)
                return  # (the slot stays held, maybe with nothing queued, until answered)
            heapq.heappop(queue)
            if redirect is not None:
                self.redirects["MOVED"] += 1
                self.slot_owner[redirect.slot] = (redirect.host, redirect.port)
                self._map_stale = True
            run.append((index, gather))
        del self._held[slot]
        self._send_run(slot, run)

    def _send_alone(self, slot: int, gather: _Gather, index: int, redirect: Redirect) -> None:
        job = Job(slot, gather.data[index], 1, False, gather.one(index), "snapshot")
        job.raw_errors = True
        self._in_air[slot] = self._in_air.get(slot, 0) + 1
        self.outstanding += 1
        self.redirects[redirect.kind] += 1
        if redirect.kind == "ASK":
            job.ask = (redirect.host, redirect.port)
            job.redirects = gather.bounces.get(index, 0)
            self.submit(job)
        else:  # TRYAGAIN / CLUSTERDOWN
            if redirect.kind == "CLUSTERDOWN":
                self._map_stale = True
            self._retries.append((time.monotonic() + RETRY_WAIT, job))

    def _send_run(self, slot: int, run: list[tuple[int, _Gather]]) -> None:
        """Held commands of one slot, in order, as one job to its owner: each reply goes to
        its command's gather (a redirected one is held again)."""
        if not run:
            return
        parts = [gather.part([index]) for index, gather in run]  # (each held: counted)

        def done(replies: list[Any]) -> None:
            for part, reply in zip(parts, replies, strict=True):
                part([reply])

        self._in_air[slot] = self._in_air.get(slot, 0) + len(run)
        address = self._air_node[slot] = self.owner(slot)
        body = b"".join(gather.data[index] for index, gather in run)
        self.start(
            Job(
                -1,
                body,
                len(run),
                False,
                done,
                "snapshot",
                node=address,
                raw_errors=True,
                follow=False,
            )
        )

    def close(self) -> None:
        for node in self.links.values():
            node.close()
        self.links = {}

    # ------------------------------------------------------------------ slot checkpoints

    def slot_checkpoints(self, store: CheckpointStore) -> dict[int, tuple[int, int]]:
        """The task's slot checkpoints on every master: slot → (offset, gen)."""
        self.drain()
        found: list[tuple[bytes, Any, Any]] = []
        for master in self.masters:
            node = self.link(master)
            cursor = b"0"
            while True:
                cursor, keys = node.call(
                    "SCAN", cursor, "MATCH", store.slot_pattern(), "COUNT", 1000
                )
                for key in keys:
                    offset, gen = node.call("HMGET", key, "offset", "gen")
                    found.append((key, offset, gen))
                if cursor == b"0":
                    break
        return store.slot_entries(found)


class _Gather:
    """The replies of one snapshot batch, put back in order from its per-node parts; a
    command redirected (MOVED / ASK / TRYAGAIN) is held by the link (ClusterTargetLink.hold)
    and resent in its slot's order."""

    def __init__(self, batch: Batch, link: ClusterTargetLink, size: int) -> None:
        self.batch = batch
        self.link = link
        self.size = size  # the batch's bytes, in link.snapshot_in_air until finished
        self.replies: list[Any] = []
        self.slots: dict[int, int] = {}  # index → slot, for commands routed by key
        self.data: dict[int, bytes] = {}  # index → its bytes (resent when redirected)
        self.seqs: dict[int, int] = {}  # index → its place in the order sent
        self.bounces: dict[int, int] = {}  # index → MOVED / ASK followed in a row
        self.waiting = 0

    def part(self, indexes: list[int]) -> Callable[[list[Any]], None]:
        def done(replies: list[Any]) -> None:
            link = self.link
            touched: set[int] = set()
            for index, reply in zip(indexes, replies, strict=True):
                slot = self.slots.get(index)
                if slot is not None:
                    link.answered(slot)
                    touched.add(slot)
                    if isinstance(reply, _ERROR):
                        redirect = first_redirect([reply], _ERROR)
                        if redirect is not None:
                            link.hold(slot, self, index, redirect)
                            continue
                self.replies[index] = reply
            self.waiting -= 1
            for slot in touched:
                link.release(slot)
            if not self.waiting:
                self.finish()

        return done

    def one(self, index: int) -> Callable[[list[Any]], None]:
        """A held command sent alone (ASK, TRYAGAIN, CLUSTERDOWN): the job machinery follows
        its further redirects; its slot's next commands go once it is answered."""

        def done(replies: list[Any]) -> None:
            slot = self.slots[index]
            self.replies[index] = replies[0]
            self.link.answered(slot)
            self.waiting -= 1
            self.link.release(slot)
            if not self.waiting:
                self.finish()

        return done

    def finish(self) -> None:
        self.link.snapshot_in_air -= self.size
        if self.batch.on_done is not None:
            self.batch.on_done(self.replies)


def split_payload(payload: bytes) -> list[tuple[list[bytes], bytes]]:
    """The commands of an encoded batch: (argv, its bytes) each."""
    reader = hiredis.Reader()
    reader.feed(payload)
    out = []
    pos = 0
    while True:
        argv = reader.gets()
        if argv is False:
            break
        n = len(argv)
        sizes = list(map(len, argv))
        end = pos + 3 + len(str(n)) + 3 * n + sum(sizes) + len(repr(sizes))
        out.append((argv, payload[pos:end]))
        pos = end
    if pos != len(payload):
        raise ProtocolFailure("a snapshot batch did not split into whole commands")
    return out
