"""Where a sync task's source is now: a fixed URL, the master a group of Sentinels names, or
the masters of a Redis Cluster's shards.

A session of a task asks `locate()` for its source at every (re)connect, so a task whose
source is given by Sentinels follows a failover: the promoted replica keeps the old stream's
history under its replid2 and accepts `PSYNC <old replid> <offset+1>`, so the task goes on
without a full sync whenever the new master has everything the task applied.

- Sentinels are asked in turn (`SENTINEL get-master-addr-by-name`), each bounded by the
  block's timeout; the first that names the master wins. The node named is then asked
  `ROLE`: right after a failover a Sentinel may still name the old master (now a replica),
  which would serve a replica's PSYNC too — the task would silently follow a replica. Such a
  session fails with reason `not_master` and is retried with the task's backoff.
- Cluster discovery (`cluster_shards`) asks the startup nodes in turn for the shards:
  CLUSTER SHARDS (7.0+), else CLUSTER NODES. Each master shard's identity is the lowest slot
  it owns (`s<slot>`): a failover inside the shard keeps its slots, so the identity (and
  the shard's checkpoint key) survives it. The master of one shard is found again the same
  way (`shard_master`).

Blocking sockets with timeouts, like the reader: a task runs in its own process (or thread).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import hiredis

from replwatch.config import (
    ClusterSource,
    RedisEndpoint,
    SentinelSource,
    SyncSource,
    SyncTask,
    TLSConfig,
    node_at,
    source_sentinels,
)
from replwatch.decimal_text import is_decimal
from replwatch.errors import AuthFailure, ProtocolFailure, RedisError, TimeoutFailure
from replwatch.observe.connection import READER_ERRORS, classify_reply_error, encode_command
from replwatch.observe.resp_limits import ReplyGuard
from replwatch.sync.reader import BufferedSocket, open_socket
from replwatch.topology.cluster import parse_cluster_nodes_groups, parse_cluster_shards_groups
from replwatch.topology.model import DiscoveredGroup

CLUSTER_SLOTS = 16384


class NotMasterError(RedisError):
    """The node a discovery named is not (or no longer) a master: retry later."""

    reason = "not_master"


class NodeClient:
    """A short request/response connection to one node (AUTH done when the endpoint has a
    password). Reply errors come back as RedisError (classified)."""

    def __init__(self, endpoint: RedisEndpoint, tls: TLSConfig | None, timeout: float) -> None:
        self.endpoint = endpoint
        self.timeout = timeout
        self.conn = BufferedSocket(open_socket(endpoint, tls, timeout), endpoint.label)
        self.reader = hiredis.Reader()
        self.guard = ReplyGuard()
        try:
            if endpoint.password is not None:
                secret = endpoint.password.get_secret_value()
                auth = (
                    ("AUTH", endpoint.username, secret) if endpoint.username else ("AUTH", secret)
                )
                try:
                    self.call(*auth)
                except RedisError as exc:
                    raise AuthFailure(f"AUTH to {endpoint.label} failed: {exc}") from None
        except BaseException:
            self.close()
            raise

    def call(self, *args: str | int) -> Any:
        """One command's reply, within the timeout as a whole (a peer that trickles bytes
        cannot hold it longer); declared sizes are checked before the reader sees them."""
        label = self.endpoint.label
        self.conn.send(encode_command(args))
        deadline = time.monotonic() + self.timeout
        while True:
            try:
                reply = self.reader.gets()
            except READER_ERRORS as exc:
                raise ProtocolFailure(f"bad reply from {label}: {exc}") from None
            if reply is not False:
                break
            problem = self.guard.pending_problem(self.reader.len())
            if problem is not None:
                raise ProtocolFailure(f"{label} {problem}")
            if self.conn.available():
                data = bytes(self.conn.buf[self.conn.pos :])
                self.conn.pos = len(self.conn.buf)
                problem = self.guard.check(data)
                if problem is not None:
                    raise ProtocolFailure(f"a reply from {label} {problem}")
                self.reader.feed(data)
                continue
            if time.monotonic() > deadline:
                raise TimeoutFailure(f"no whole reply from {label} within {self.timeout:g}s")
            self.conn.fill()
        if isinstance(reply, hiredis.ReplyError):
            raise classify_reply_error(str(reply))
        return reply

    def close(self) -> None:
        self.conn.close()

    def __enter__(self) -> NodeClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _text(value: Any) -> str:
    """A reply element as text (an array or map where text belongs: "?", never its repr,
    which a peer can nest deep enough to exhaust the recursion limit)."""
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    return str(value) if isinstance(value, int | float | str) else "?"


# --------------------------------------------------------------------------- Sentinel


def parse_master_addr(reply: Any) -> tuple[str, int] | None:
    """SENTINEL get-master-addr-by-name's reply → (host, port); None when the Sentinel does
    not know the master (a null reply)."""
    if reply is None:
        return None
    if not isinstance(reply, list) or len(reply) != 2:
        raise ProtocolFailure("SENTINEL get-master-addr-by-name returned no [host, port]")
    host, port = _text(reply[0]), _text(reply[1])
    usable = is_decimal(port) and len(port) <= 5 and 1 <= int(port) <= 65535
    if not host or not usable:
        raise ProtocolFailure(f"SENTINEL named no usable address ({host!r}, {port!r})")
    return host, int(port)


def sentinel_master_address(source: SentinelSource, tls: TLSConfig | None) -> tuple[str, int]:
    """Ask the Sentinels in turn where the master is; the first answer wins. Raises a
    RedisError listing each Sentinel's problem when none could say."""
    settings = source.sentinel
    problems: list[str] = []
    for node in source_sentinels(settings):
        try:
            with NodeClient(node, tls, settings.timeout) as client:
                reply = client.call("SENTINEL", "get-master-addr-by-name", settings.master_name)
            address = parse_master_addr(reply)
        except (RedisError, OSError) as exc:
            problems.append(f"{node.label}: {exc}")
            continue
        if address is None:
            problems.append(f"{node.label}: does not know master {settings.master_name}")
            continue
        return address
    raise RedisError(
        f"no Sentinel named master {settings.master_name}: {'; '.join(problems)}",
        reason="sentinel",
    )


def require_master(endpoint: RedisEndpoint, tls: TLSConfig | None, timeout: float) -> None:
    """ROLE on the node: NotMasterError unless it says master."""
    with NodeClient(endpoint, tls, timeout) as client:
        role = client.call("ROLE")
    if not isinstance(role, list) or not role or _text(role[0]) != "master":
        what = _text(role[0]) if isinstance(role, list) and role else "?"
        raise NotMasterError(f"{endpoint.label} is a {what}, not a master (failover under way?)")


# --------------------------------------------------------------------------- Cluster


@dataclass(frozen=True, slots=True)
class Shard:
    """One master shard of a cluster: its identity, its master and the slots it owns."""

    shard_id: str  # "s<lowest slot owned>": survives a failover inside the shard
    host: str
    port: int
    slots: tuple[tuple[int, int], ...]  # inclusive ranges

    @property
    def label(self) -> str:
        return f"{self.host}:{self.port}"


def shard_identity(slots: Sequence[tuple[int, int]]) -> str:
    return f"s{min(start for start, _ in slots)}"


def _master_shards(groups: Sequence[DiscoveredGroup]) -> list[Shard]:
    """The shards that own slots and whose master is not failed (what a sync reads)."""
    return [
        Shard(shard_identity(g.slots), g.master.host, g.master.port, g.slots)
        for g in groups
        if g.slots and not g.master_down
    ]


def parse_cluster_shards(reply: Any, tls: bool = False) -> list[Shard]:
    """CLUSTER SHARDS (7.0+) → the shards that own slots and have a master that is not
    failed, by identity (parsed by replwatch/topology/cluster.py); with `tls` the nodes'
    tls-port is their address."""
    try:
        return _master_shards(parse_cluster_shards_groups(reply, tls))
    except ValueError as exc:
        raise ProtocolFailure(f"CLUSTER SHARDS: {exc}") from None


def parse_cluster_nodes(text: str) -> list[Shard]:
    """CLUSTER NODES (any version) → the master shards that own slots and are not failed."""
    return _master_shards(parse_cluster_nodes_groups(text))


def cluster_shards(source: ClusterSource, tls: TLSConfig | None, timeout: float) -> list[Shard]:
    """The cluster's master shards, from the first startup node that answers."""
    problems: list[str] = []
    for seed in source.cluster.startup_nodes:
        node = node_at(source, seed.host, seed.port) if seed.password is None else seed
        try:
            with NodeClient(node, tls, timeout) as client:
                try:
                    shards = parse_cluster_shards(client.call("CLUSTER", "SHARDS"), source.tls)
                except RedisError as exc:
                    if exc.reason == "auth":
                        raise
                    # before 7.0 there is no CLUSTER SHARDS
                    shards = parse_cluster_nodes(_text(client.call("CLUSTER", "NODES")))
        except (RedisError, OSError, ValueError) as exc:
            problems.append(f"{seed.label}: {exc}")
            continue
        if shards:
            return shards
        problems.append(f"{seed.label}: no master owns slots")
    raise RedisError(
        f"no startup node described the cluster: {'; '.join(problems)}", reason="cluster"
    )


def shard_master(
    source: ClusterSource, shard_id: str, tls: TLSConfig | None, timeout: float
) -> RedisEndpoint:
    """The current master of the shard `shard_id` (found again at every reconnect)."""
    for shard in cluster_shards(source, tls, timeout):
        if shard.shard_id == shard_id:
            return node_at(source, shard.host, shard.port)
    raise NotMasterError(f"no master owns the slots of shard {shard_id} now (failover under way?)")


def shard_task_name(task: str, shard_id: str) -> str:
    """The name a cluster task's shard runs and reports under (its checkpoint key)."""
    return f"{task}@{shard_id}"


def shard_task(task: SyncTask, shard_id: str) -> SyncTask:
    """The task of one shard: a derived name (its own checkpoint), and overwrite semantics
    (a shard's full sync must not flush the other shards' keys from the shared target)."""
    return task.model_copy(
        update={"name": shard_task_name(task.name, shard_id), "existing_keys": "overwrite"}
    )


# --------------------------------------------------------------------------- one entry point

Locator = Callable[[], RedisEndpoint]


def source_locator(source: SyncSource, tls: TLSConfig | None, timeout: float) -> Locator:
    """How a task's session finds its source endpoint at each (re)connect."""
    if isinstance(source, RedisEndpoint):
        return lambda: source
    if isinstance(source, SentinelSource):

        def locate() -> RedisEndpoint:
            host, port = sentinel_master_address(source, tls)
            endpoint = node_at(source, host, port)
            require_master(endpoint, tls, timeout)
            return endpoint

        return locate
    raise ValueError(
        f"a cluster source has one reader per shard; {source.label} is run by ClusterTaskRunner"
    )


def shard_locator(
    source: ClusterSource, shard_id: str, tls: TLSConfig | None, timeout: float
) -> Locator:
    def locate() -> RedisEndpoint:
        endpoint = shard_master(source, shard_id, tls, timeout)
        require_master(endpoint, tls, timeout)
        return endpoint

    return locate


__all__ = [
    "CLUSTER_SLOTS",
    "Locator",
    "NodeClient",
    "NotMasterError",
    "Shard",
    "cluster_shards",
    "parse_cluster_nodes",
    "parse_cluster_shards",
    "parse_master_addr",
    "require_master",
    "sentinel_master_address",
    "shard_locator",
    "source_locator",
]
