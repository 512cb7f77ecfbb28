"""What a discovery source (Sentinel, Redis Cluster) reports about a group right now.

Plain values: the resolvers (replwatch/topology/sentinel.py, cluster.py) build them from
their replies, the fleet (replwatch/topology/fleet.py) turns them into monitored groups.
Addresses are as the source announces them; address mapping is applied by the fleet.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True, slots=True)
class Address:
    host: str
    port: int

    @property
    def label(self) -> str:
        """host:port as node labels spell it (IPv6 in brackets)."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}"


@dataclass(frozen=True, slots=True)
class DiscoveredGroup:
    """One group (a Sentinel-managed master, or one shard of a cluster) as its discovery
    source sees it now.

    `key`: the group's identity inside its source: "" for a Sentinel group (the configured
    group itself); for a cluster shard "s<lowest slot owned>", or "n<master node id>" for a
    master that owns no slots. `slots`: inclusive slot ranges (cluster only, sorted).
    `node_ids`: cluster node ids of the master and its replicas (the fleet keeps a shard's
    group name while these overlap, so a failover or a resharding does not rename it).
    `epoch`: Sentinel's config-epoch, or the cluster's config epoch of the master (0 if
    unknown): the higher one wins when sources disagree."""

    key: str
    master: Address
    replicas: tuple[Address, ...] = ()
    slots: tuple[tuple[int, int], ...] = ()
    node_ids: frozenset[str] = field(default_factory=frozenset)
    master_id: str | None = None
    epoch: int = 0
    master_down: bool = False  # the source flags the master as down (s_down/o_down/fail)
