"""ReadRouter: lag-aware reads for applications, following the table replwatch publishes.

    router = ReadRouter.from_url("redis://table-redis:6379", group="cache",
                                 master=redis.Redis(host="m"), password=...)
    router.start()
    value = router.read("GET", "user:1")            # a replica in rotation, else the master
    session = router.session()                        # read-your-writes
    session.write("SET", "user:1", "x")
    session.read("GET", "user:1")                    # master until a replica has the write

Rules:
- The table comes from the key (at start and on every refresh) and the pub/sub channel. If no
  table arrived for `max_staleness` seconds, every read goes to the master.
- Reads go round-robin to the replicas in rotation; with none, to the master (or, while the
  group is degraded, to nowhere better: the master is still tried last).
- A replica error (connection refused, timeout) falls back to the master for that read.
- `fallback_on_miss=True`: a nil answer from a replica is read again from the master (the
  double read of the seeds' redisdual) — for keys that may not have replicated yet.
- Sessions: after `session.write(...)` the session's reads use only replicas whose applied
  offset (as published) has reached the master's offset after that write; else the master.
- Without a published table: `ReadRouter.local_first(local_copy, read_write)` always reads
  the local copy first and falls back to the read-write Redis on a miss or an error — the
  seeds' double-read layout (per datacenter a read-write Redis plus a read-only copy of the
  other datacenter fed by a sync task; README "Bidirectional sync (pairs)").
"""

from __future__ import annotations

import itertools
import json
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import redis


@dataclass(frozen=True)
class _Table:
    read_from: tuple[str, ...]
    offsets: Mapping[str, int | None]
    reads_on_master: bool
    degraded: bool


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
    ) -> None:
        """`fixed_read_from`: read from these replicas (labels for `replica_factory`)
        always, with no table (then `table_client` may be None)."""
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
        self._clock = clock
        self._lock = threading.Lock()
        self._table: _Table | None = None
        self._received_at: float | None = None
        self._replicas: dict[str, redis.Redis] = {}
        self._rr = itertools.count()
        self._pubsub: Any = None
        self._thread: Any = None
        self.stats = RouterStats()
        self._fixed = (
            None
            if fixed_read_from is None
            else _Table(fixed_read_from, {}, reads_on_master=False, degraded=False)
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
        **kwargs: Any,
    ) -> ReadRouter:
        """Replica clients are made from their labels (host:port) with `password`."""

        def factory(label: str) -> redis.Redis:
            host, _, port = label.rpartition(":")
            return redis.Redis(
                host=host.strip("[]"),
                port=int(port),
                password=password,
                socket_timeout=1.0,
                socket_connect_timeout=1.0,
            )

        return cls(group, redis.Redis.from_url(table_url), master, factory, **kwargs)

    # ----------------------------------------------------------------- the table

    def apply_document(self, raw: bytes | str | None) -> bool:
        """Take a published document; False when it has no table for this group."""
        if raw is None:
            return False
        try:
            doc = json.loads(raw)
            table = doc["groups"][self.group]
            parsed = _Table(
                read_from=tuple(r["replica"] for r in table["replicas"] if r["in_rotation"]),
                offsets={r["replica"]: r.get("applied_offset") for r in table["replicas"]},
                reads_on_master=bool(table["reads_on_master"]),
                degraded=bool(table["degraded"]),
            )
        except (ValueError, KeyError, TypeError):
            return False
        with self._lock:
            self._table = parsed
            self._received_at = self._clock()
        return True

    def refresh(self) -> bool:
        """Read the table from its key now."""
        if self.table_client is None:
            return False
        try:
            return self.apply_document(self.table_client.get(self.key))
        except redis.RedisError:
            return False

    def start(self) -> None:
        """Load the table and follow the channel in a background thread (nothing to do
        with a fixed read_from)."""
        if self.table_client is None:
            return
        self.refresh()
        self._pubsub = self.table_client.pubsub(ignore_subscribe_messages=True)
        self._pubsub.subscribe(**{self.channel: self._on_message})
        self._thread = self._pubsub.run_in_thread(sleep_time=0.05, daemon=True)

    def _on_message(self, message: Mapping[str, Any]) -> None:
        self.apply_document(message.get("data"))

    def stop(self) -> None:
        if self._thread is not None:
            self._thread.stop()
            self._thread.join(timeout=5)
            self._thread = None
        if self._pubsub is not None:
            self._pubsub.close()
            self._pubsub = None

    def fresh_table(self) -> _Table | None:
        if self._fixed is not None:
            return self._fixed
        with self._lock:
            if self._table is None or self._received_at is None:
                return None
            if self._clock() - self._received_at > self.max_staleness:
                return None
            return self._table

    # ----------------------------------------------------------------- routing reads

    def choose(self, min_offset: int | None = None) -> tuple[str, redis.Redis]:
        """The client a read should use now: ('master', client) or (replica label, client)."""
        table = self.fresh_table()
        if table is None:
            self.stats.count("stale_table")
            return "master", self.master
        candidates = [
            r
            for r in table.read_from
            if min_offset is None or (table.offsets.get(r) or -1) >= min_offset
        ]
        if not candidates:
            self.stats.count("read_your_writes" if table.read_from else "routed_to_master")
            return "master", self.master
        label = candidates[next(self._rr) % len(candidates)]
        client = self._replicas.get(label)
        if client is None:
            client = self._replicas[label] = self._replica_factory(label)
        return label, client

    def read(self, *args: Any, min_offset: int | None = None) -> Any:
        """Run a read command (e.g. read('GET', key))."""
        label, client = self.choose(min_offset)
        if label == "master":
            self.stats.master_reads += 1
            return self.master.execute_command(*args)
        try:
            value = client.execute_command(*args)
        except redis.RedisError:
            self.stats.count("replica_error")
            self.stats.master_reads += 1
            return self.master.execute_command(*args)
        self.stats.replica_reads += 1
        if value is None and self.fallback_on_miss:
            self.stats.count("miss")
            self.stats.master_reads += 1
            return self.master.execute_command(*args)
        return value

    def write(self, *args: Any) -> Any:
        return self.master.execute_command(*args)

    def session(self) -> ReadSession:
        return ReadSession(self)


class ReadSession:
    """Read-your-writes for one caller: after a write, reads need a replica whose applied
    offset has reached the master's offset right after that write."""

    def __init__(self, router: ReadRouter) -> None:
        self.router = router
        self.min_offset: int | None = None

    def write(self, *args: Any) -> Any:
        result = self.router.master.execute_command(*args)
        info = self.router.master.info("replication")
        self.min_offset = int(info["master_repl_offset"])
        return result

    def read(self, *args: Any) -> Any:
        return self.router.read(*args, min_offset=self.min_offset)
