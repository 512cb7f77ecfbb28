"""ReadRouter: lag-aware reads for applications, following the table replwatch publishes.

    router = ReadRouter.from_url("redis://table-redis:6379", group="cache",
                                 master=redis.Redis(host="m", socket_timeout=1.0),
                                 password=...)
    router.start()
    value = router.read("GET", "user:1")            # a replica in rotation, else the master
    routed = router.read_routed("GET", "user:1")    # .value, .served_by, .fallback
    session = router.session()                        # read-your-writes
    session.write("SET", "user:1", "x")
    session.read("GET", "user:1")                    # a replica that has the write, or the master

Rules:
- The table comes from the channel, and from the key at start, after every reconnect and
  whenever the channel is silent (table_follower.py); the follower survives any outage of
  the table Redis. If no table is fresher than `max_staleness` seconds, every read goes to
  the master.
- Reads go round-robin to the replicas in rotation; with none, to the master (or, while the
  group is degraded, to nowhere better: the master is still tried last).
- A replica error (connection refused, timeout) falls back to the master for that read, and
  that replica gets no reads for `replica_cooldown` seconds: a frozen replica costs one read
  one socket timeout, not every read until replwatch's table catches up. Replica clients
  made by `from_url` have a 1 s socket timeout and **no retries** (redis-py's default
  retries turn a 1 s timeout into ~15 s), so nothing waits longer than that.
- `fallback_on_miss=True`: a nil answer from a replica is read again from the master (the
  double read of the seeds' redisdual) — for keys that may not have replicated yet.
- Sessions: `session.write(...)` sends the write and `INFO replication` in one round trip
  and remembers the master's offset after it. A session read uses a replica whose published
  offset has reached it; when none has, it asks one replica in rotation for its offset in
  the same round trip as the read (the read runs after the offset is taken, so it sees at
  least that much) and uses the answer only when the offset has reached the write — else
  the master. A busy writer is therefore not pinned to the master until the next table.
- Without a published table: `ReadRouter.local_first(local_copy, read_write)` always reads
  the local copy first and falls back to the read-write Redis on a miss or an error — the
  seeds' double-read layout (per datacenter a read-write Redis plus a read-only copy of the
  other datacenter fed by a sync task; docs/syncer.md "Bidirectional sync (pairs)").
"""

from __future__ import annotations

import itertools
import sys
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from replwatch.routing.table_follower import GroupTable, TableFollower, parse_group_table

MASTER = "master"
# a session whose write's offset could not be learned reads only from the master
_UNKNOWN_OFFSET = sys.maxsize


def replica_client_options(overrides: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """redis.Redis keyword arguments for a replica client: 1 s timeouts, no retries (a
    retry hides a stall: the router's own fallback is the retry), then `overrides`."""
    options: dict[str, Any] = {
        "socket_timeout": 1.0,
        "socket_connect_timeout": 1.0,
        "retry": Retry(NoBackoff(), 0),
    }
    options.update(overrides or {})
    return options


@dataclass(frozen=True, slots=True)
class RoutedRead:
    """A read's answer and where it came from: `served_by` is a replica label or
    "master"; `fallback` says why a read did not stay on a replica (None when it did, or
    when there was no replica to begin with)."""

    value: Any
    served_by: str
    fallback: str | None = None


@dataclass
class RouterStats:
    replica_reads: int = 0
    master_reads: int = 0
    fallbacks: dict[str, int] = field(default_factory=dict)

    def count(self, reason: str) -> None:
        self.fallbacks[reason] = self.fallbacks.get(reason, 0) + 1


class ReadRouter:
    def __init__(
        self,
        group: str,
        table_client: redis.Redis | None,
        master: redis.Redis,
        replica_factory: Callable[[str], redis.Redis],
        key: str = "replwatch:routing",
        channel: str = "replwatch:routing",
        max_staleness: float = 10.0,
        fallback_on_miss: bool = False,
        clock: Callable[[], float] = time.monotonic,
        fixed_read_from: tuple[str, ...] | None = None,
        replica_cooldown: float = 5.0,
        refresh_interval: float | None = None,
        wall_clock: Callable[[], float] = time.time,
    ) -> None:
        """`fixed_read_from`: read from these replicas (labels for `replica_factory`)
        always, with no table (then `table_client` may be None). `refresh_interval`: how
        long the channel may be silent before the key is read (default max_staleness / 3)."""
        if table_client is None and fixed_read_from is None:
            raise ValueError("a ReadRouter needs a table_client or fixed_read_from")
        self.group = group
        self.table_client = table_client
        self.master = master
        self._replica_factory = replica_factory
        self.key = key
        self.channel = channel
        self.max_staleness = max_staleness
        self.fallback_on_miss = fallback_on_miss
        self.replica_cooldown = replica_cooldown
        self._clock = clock
        self._wall = wall_clock
        self._lock = threading.Lock()
        self._table: GroupTable | None = None
        self._received_at: float | None = None
        self._replicas: dict[str, redis.Redis] = {}
        self._cooling: dict[str, float] = {}  # replica → no reads until (clock)
        self._learned: dict[str, tuple[str, int]] = {}  # replica → (replid, offset) it had
        self._rr = itertools.count()
        self.stats = RouterStats()
        self._fixed = (
            None
            if fixed_read_from is None
            else GroupTable(fixed_read_from, {}, reads_on_master=False, degraded=False)
        )
        self._follower = (
            None
            if table_client is None
            else TableFollower(
                table_client,
                key,
                channel,
                self.apply_document,
                refresh_interval if refresh_interval is not None else max_staleness / 3,
            )
        )

    @classmethod
    def local_first(
        cls, local: redis.Redis, read_write: redis.Redis, group: str = "local"
    ) -> ReadRouter:
        """The double read without a routing table: every read goes to `local` (the
        datacenter's read-only copy of the other side), and a nil answer or an error is
        read again from `read_write` (this side's own Redis); writes go to `read_write`."""
        return cls(
            group,
            None,
            read_write,
            lambda label: local,
            fallback_on_miss=True,
            fixed_read_from=("local",),
        )

    @classmethod
    def from_url(
        cls,
        table_url: str,
        group: str,
        master: redis.Redis,
        password: str | None = None,
        *,
        username: str | None = None,
        replica_options: Mapping[str, Any] | None = None,
        replica_factory: Callable[[str], redis.Redis] | None = None,
        table_options: Mapping[str, Any] | None = None,
        **kwargs: Any,
    ) -> ReadRouter:
        """Replica clients are made from their labels (host:port) with `username` and
        `password` and `replica_client_options(replica_options)` — any redis.Redis keyword
        (ssl=True, ssl_ca_certs=…, socket_timeout=…, retry=…) — unless `replica_factory`
        makes them. The table client gets the same 1 s timeouts and no retries, then
        `table_options`; `table_url` may carry credentials and rediss://."""

        def factory(label: str) -> redis.Redis:
            host, _, port = label.rpartition(":")
            return redis.Redis(
                host=host.strip("[]"),
                port=int(port),
                username=username,
                password=password,
                **replica_client_options(replica_options),
            )

        table = redis.Redis.from_url(table_url, **replica_client_options(table_options))
        return cls(group, table, master, replica_factory or factory, **kwargs)

    # ----------------------------------------------------------------- the table

    def apply_document(self, raw: bytes | str | None, live: bool = True) -> bool:
        """Take a published document; False when it has no table for this group. `live`:
        it just arrived on the channel; else it was read from the key and is as old as its
        `published_at` says."""
        table = parse_group_table(raw, self.group)
        if table is None:
            return False
        received = self._clock()
        if not live and table.published_at is not None:
            received -= max(0.0, self._wall() - table.published_at)
        with self._lock:
            current = self._table
            if (
                current is not None
                and current.published_at is not None
                and table.published_at is not None
            ):
                if table.published_at < current.published_at:
                    return False  # older than what we have (a key read racing the channel)
                if table.published_at == current.published_at and self._received_at is not None:
                    received = max(received, self._received_at)
            self._table = table
            self._received_at = received
        return True

    def refresh(self) -> bool:
        """Read the table from its key now."""
        return self._follower.refresh() if self._follower is not None else False

    @property
    def table_reconnects(self) -> int:
        """How often the connection to the table Redis was lost and made again."""
        return self._follower.reconnects if self._follower is not None else 0

    def start(self) -> None:
        """Load the table and follow the channel in a background thread (nothing to do
        with a fixed read_from)."""
        if self._follower is None:
            return
        self.refresh()
        self._follower.start()

    def stop(self) -> None:
        if self._follower is not None:
            self._follower.stop()

    def fresh_table(self) -> GroupTable | None:
        if self._fixed is not None:
            return self._fixed
        with self._lock:
            if self._table is None or self._received_at is None:
                return None
            if self._clock() - self._received_at > self.max_staleness:
                return None
            return self._table

    # ----------------------------------------------------------------- routing reads

    def _client(self, label: str) -> redis.Redis:
        client = self._replicas.get(label)
        if client is None:
            client = self._replicas[label] = self._replica_factory(label)
        return client

    def _serving(self, table: GroupTable) -> list[str]:
        """The replicas in rotation that are not cooling down after an error."""
        now = self._clock()
        return [r for r in table.read_from if self._cooling.get(r, 0.0) <= now]

    def _has_offset(self, table: GroupTable, replica: str, min_offset: int) -> bool:
        if (table.offsets.get(replica) or -1) >= min_offset:
            return True
        learned = self._learned.get(replica)
        return learned is not None and learned[1] >= min_offset

    def choose(self, min_offset: int | None = None) -> tuple[str, redis.Redis]:
        """The client a read should use now: ('master', client) or (replica label, client),
        going by the table alone (a session read may still ask a replica; see read)."""
        table = self.fresh_table()
        if table is None:
            return MASTER, self.master
        candidates = self._ready(table, self._serving(table), min_offset)
        if not candidates:
            return MASTER, self.master
        label = self._pick(candidates)
        return label, self._client(label)

    def _ready(self, table: GroupTable, serving: list[str], min_offset: int | None) -> list[str]:
        """The serving replicas known to have `min_offset` (all of them without one)."""
        if min_offset is None:
            return serving
        return [r for r in serving if self._has_offset(table, r, min_offset)]

    def _pick(self, labels: list[str]) -> str:
        return labels[next(self._rr) % len(labels)]

    def read(self, *args: Any, min_offset: int | None = None, replid: str | None = None) -> Any:
        """Run a read command (e.g. read('GET', key)); its answer."""
        return self.read_routed(*args, min_offset=min_offset, replid=replid).value

    def read_routed(
        self, *args: Any, min_offset: int | None = None, replid: str | None = None
    ) -> RoutedRead:
        """Run a read command; its answer, which node served it and why it fell back."""
        table = self.fresh_table()
        if table is None:
            return self._on_master(args, "stale_table")
        serving = self._serving(table)
        if not serving:
            return self._on_master(args, "cooling_down" if table.read_from else "routed_to_master")
        ready = self._ready(table, serving, min_offset)
        if ready:
            return self._on_replica(self._pick(ready), args)
        assert min_offset is not None  # without one every serving replica is ready
        return self._checked_read(self._pick(serving), args, min_offset, replid)

    def _on_master(self, args: tuple[Any, ...], reason: str | None) -> RoutedRead:
        if reason is not None:
            self.stats.count(reason)
        self.stats.master_reads += 1
        return RoutedRead(self.master.execute_command(*args), MASTER, reason)

    def _replica_failed(self, label: str, args: tuple[Any, ...]) -> RoutedRead:
        self._cooling[label] = self._clock() + self.replica_cooldown
        return self._on_master(args, "replica_error")

    def _on_replica(self, label: str, args: tuple[Any, ...]) -> RoutedRead:
        try:
            value = self._client(label).execute_command(*args)
        except (redis.RedisError, OSError):
            return self._replica_failed(label, args)
        return self._replica_answer(label, args, value)

    def _replica_answer(self, label: str, args: tuple[Any, ...], value: Any) -> RoutedRead:
        self.stats.replica_reads += 1
        if value is None and self.fallback_on_miss:
            return self._on_master(args, "miss")
        return RoutedRead(value, label)

    def _checked_read(
        self, label: str, args: tuple[Any, ...], min_offset: int, replid: str | None
    ) -> RoutedRead:
        """A session read when no published offset is enough: the replica's offset and the
        read in one round trip; the answer counts only if the offset has the write."""
        try:
            pipe = self._client(label).pipeline(transaction=False)
            pipe.info("replication")
            pipe.execute_command(*args)
            info, value = pipe.execute()
        except (redis.RedisError, OSError):
            return self._replica_failed(label, args)
        offset = _int(info.get("slave_repl_offset")) if isinstance(info, dict) else None
        stream = info.get("master_replid") if isinstance(info, dict) else None
        if offset is None or (replid is not None and stream != replid):
            return self._on_master(args, "read_your_writes")
        self._learned[label] = (str(stream), offset)
        if offset < min_offset:
            return self._on_master(args, "read_your_writes")
        return self._replica_answer(label, args, value)

    def write(self, *args: Any) -> Any:
        return self.master.execute_command(*args)

    def session(self) -> ReadSession:
        return ReadSession(self)


def _int(value: Any) -> int | None:
    try:
        return int(value)
    except (TypeError, ValueError):
        return None


class ReadSession:
    """Read-your-writes for one caller: after a write, reads need a replica whose applied
    offset has reached the master's offset right after that write."""

    def __init__(self, router: ReadRouter) -> None:
        self.router = router
        self.min_offset: int | None = None
        self.replid: str | None = None  # the master's replication stream of that offset

    def write(self, *args: Any) -> Any:
        """The write and the master's offset after it, in one round trip."""
        pipe = self.router.master.pipeline(transaction=False)
        pipe.execute_command(*args)
        pipe.info("replication")
        result, info = pipe.execute(raise_on_error=False)
        if isinstance(result, Exception):
            raise result
        offset = _int(info.get("master_repl_offset")) if isinstance(info, dict) else None
        stream = info.get("master_replid") if isinstance(info, dict) else None
        if offset is None or stream is None:
            self.min_offset, self.replid = _UNKNOWN_OFFSET, None
        elif str(stream) != self.replid or self.min_offset is None:
            self.min_offset, self.replid = offset, str(stream)  # first write, or a new stream
        else:
            self.min_offset = max(offset, self.min_offset)
        return result

    def read(self, *args: Any) -> Any:
        return self.read_routed(*args).value

    def read_routed(self, *args: Any) -> RoutedRead:
        return self.router.read_routed(*args, min_offset=self.min_offset, replid=self.replid)
