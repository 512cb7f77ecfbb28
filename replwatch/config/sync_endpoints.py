"""Where a sync task reads and writes: its source is a URL, the master some Sentinels name, or
a Redis Cluster; its target is a URL or a Redis Cluster. SyncSource and SyncTarget tell the
forms apart by their keys, so an error names the form's own fields; node_at gives the
node found at an address (a failover's new master, a cluster's node) the side's
credentials."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Annotated, Any

from pydantic import (
    BeforeValidator,
    Discriminator,
    Field,
    SecretStr,
    Tag,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_core import PydanticCustomError

from replwatch.config.base import StrictModel
from replwatch.config.endpoints import Endpoint, RedisEndpoint, parse_endpoint, with_credentials
from replwatch.config.units import PositiveDuration


class SentinelSettings(StrictModel):
    """The Sentinels that watch a source master (a sync task's `source.sentinel`)."""

    # each "host:port" (or a redis:// / rediss:// URL) of one Sentinel, asked in turn
    addresses: list[Endpoint] = Field(min_length=1)
    master_name: str = Field(min_length=1)
    # credentials of the Sentinels themselves (requirepass / ACL user of sentinel.conf)
    username: str | None = None
    password: SecretStr | None = None
    # connect and reply timeout of one Sentinel query
    timeout: PositiveDuration = 1.0


def source_sentinels(settings: SentinelSettings) -> list[RedisEndpoint]:
    """A source's Sentinels with the credentials of its `sentinel` block (an address's own
    win)."""
    return [with_credentials(a, settings.username, settings.password) for a in settings.addresses]


class SentinelSource(StrictModel):
    """A sync source that is whatever master the Sentinels name, asked again at every
    (re)connect: the task follows a failover. `username`/`password`/`tls` are the master's."""

    sentinel: SentinelSettings
    username: str | None = None
    password: SecretStr | None = None
    tls: bool = False
    db: int = 0  # as for a URL source: the database compare and status look at

    @property
    def label(self) -> str:
        """The source in checkpoints, logs and status: stable across failovers."""
        return f"sentinel:{self.sentinel.master_name}"

    def redacted_url(self) -> str:
        return f"{self.label} via {','.join(a.label for a in self.sentinel.addresses)}"


class ClusterSettings(StrictModel):
    """Where to start discovering a source Redis Cluster (a sync task's `source.cluster`)."""

    # "host:port" (or redis:// URLs) of some nodes of the cluster; the first that answers
    # CLUSTER SHARDS / CLUSTER NODES is used
    startup_nodes: list[Endpoint] = Field(min_length=1)


class ClusterSource(StrictModel):
    """A sync source that is a Redis Cluster: one reader per master shard, each with its own
    checkpoint (`__replwatch:sync:<task>@<shard>`), all writing into the one target."""

    cluster: ClusterSettings
    username: str | None = None
    password: SecretStr | None = None
    tls: bool = False
    db: int = 0  # a cluster has database 0 only

    @property
    def label(self) -> str:
        return f"cluster:{self.cluster.startup_nodes[0].label}"

    def redacted_url(self) -> str:
        return f"cluster via {','.join(a.label for a in self.cluster.startup_nodes)}"


def _source_kind(value: Any) -> str:
    """Which form a sync task's source takes: a Sentinel or Cluster block, else a URL."""
    if isinstance(value, SentinelSource) or (isinstance(value, Mapping) and "sentinel" in value):
        return "kind:sentinel"
    if isinstance(value, ClusterSource) or (isinstance(value, Mapping) and "cluster" in value):
        return "kind:cluster"
    return "kind:url"


class ClusterTargetNodes(StrictModel):
    """Where to start discovering a target Redis Cluster (a sync task's `target.cluster`)."""

    # "host:port" (or redis:// URLs) of some nodes of the cluster; the first that answers
    # CLUSTER SLOTS gives the slot map (replwatch/sync/cluster_target.py)
    startup_nodes: list[Endpoint] = Field(min_length=1)


class ClusterTarget(RedisEndpoint):
    """A sync target that is a Redis Cluster: every write goes to the master owning its key's
    slot. host/port are the first startup node (what labels, status and the monitor's first
    connection use); `username`/`password`/`tls` hold for every node of the cluster."""

    cluster: ClusterTargetNodes

    @model_validator(mode="before")
    @classmethod
    def _first_node(cls, data: Any) -> Any:
        if not isinstance(data, Mapping) or "host" in data or "port" in data:
            if isinstance(data, Mapping) and ("host" in data or "port" in data):
                raise PydanticCustomError(
                    "cluster", "give the cluster's nodes in cluster.startup_nodes, not host/port"
                )
            return data
        nodes = data.get("cluster")
        first = nodes.get("startup_nodes") if isinstance(nodes, Mapping) else None
        if isinstance(first, list) and first:
            try:
                node = parse_endpoint(first[0])
            except (PydanticCustomError, ValidationError):
                return {**data, "host": "-"}  # startup_nodes[0] reports its own error
            return {**data, "host": node.host, "port": node.port}
        return {**data, "host": "-"}

    @field_validator("db")
    @classmethod
    def _db_zero(cls, v: int) -> int:
        if v != 0:
            raise PydanticCustomError("cluster", "a Redis Cluster has database 0 only")
        return v

    @property
    def label(self) -> str:
        return f"cluster:{super().label}"

    def redacted_url(self) -> str:
        return f"cluster via {','.join(n.label for n in self.cluster.startup_nodes)}"


def _target_kind(value: Any) -> str:
    """Which form a sync task's target takes: a Cluster block, else a URL / host mapping."""
    if isinstance(value, ClusterTarget) or (isinstance(value, Mapping) and "cluster" in value):
        return "kind:cluster"
    return "kind:url"


def node_at(
    side: SentinelSource | ClusterSource | ClusterTarget, host: str, port: int
) -> RedisEndpoint:
    """The node found at host:port for a sync source or target that is discovered rather
    than listed (the master the Sentinels name, a node of a source or target cluster), with
    that side's credentials and TLS: in the source's db for a Sentinel master, db 0 in a
    cluster."""
    return RedisEndpoint(
        host=host,
        port=port,
        db=side.db if isinstance(side, SentinelSource) else 0,
        username=side.username,
        password=side.password,
        tls=side.tls,
    )


# a sync task's source: a URL (or host/port mapping), or a Sentinel or Cluster block
SyncSource = Annotated[
    Annotated[RedisEndpoint, BeforeValidator(parse_endpoint), Tag("kind:url")]
    | Annotated[SentinelSource, Tag("kind:sentinel")]
    | Annotated[ClusterSource, Tag("kind:cluster")],
    Discriminator(_source_kind),
]


# a sync task's target: a URL (or host/port mapping), or `{cluster: {startup_nodes: […]},
# username, password, tls}` (docs/syncer.md "Redis Cluster as a target")
SyncTarget = Annotated[
    Annotated[RedisEndpoint, BeforeValidator(parse_endpoint), Tag("kind:url")]
    | Annotated[ClusterTarget, Tag("kind:cluster")],
    Discriminator(_target_kind),
]
