"""The groups replwatch monitors, built from the config and from what discovery reports.

A configured group is one of three kinds (GroupConfig.source):
- static: the master and replicas it lists (plus, with `discover`, the replicas their INFO
  names) — one monitored group;
- sentinel: the master and replicas the Sentinels name now — one monitored group, under the
  configured name, retargeted when a failover moves the master;
- cluster: one monitored group per master shard, named `<group>:<key>` (key "s<lowest
  slot>", or "n<master id>" for a master without slots). A shard keeps its name while its
  nodes overlap the nodes it had (`name_shards`), so neither a failover (same nodes, roles
  swapped) nor a resharding (same nodes, other slots) renames it or drops its history.

Everything here is pure: the fleet (replwatch/topology/fleet.py) does the I/O.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from replwatch.config import GroupConfig, RedisEndpoint, TLSConfig, parse_host_port
from replwatch.decimal_text import is_decimal
from replwatch.topology.model import Address, DiscoveredGroup


class AddressMap:
    """Announced address → reachable address. An exact 'host:port' entry wins over a
    'host' entry (which keeps the port); addresses without an entry are reachable as
    announced."""

    __slots__ = ("_exact", "_hosts")

    def __init__(self, mapping: Mapping[str, str] | None = None) -> None:
        self._exact: dict[tuple[str, int], tuple[str, int]] = {}
        self._hosts: dict[str, str] = {}
        for announced, reachable in (mapping or {}).items():
            a_host, a_port = parse_host_port(announced)
            r_host, r_port = parse_host_port(reachable)
            if a_port is None or r_port is None:
                self._hosts[a_host] = r_host
            else:
                self._exact[(a_host, a_port)] = (r_host, r_port)

    def __bool__(self) -> bool:
        return bool(self._exact or self._hosts)

    def __eq__(self, other: object) -> bool:
        return (
            isinstance(other, AddressMap)
            and self._exact == other._exact
            and self._hosts == other._hosts
        )

    def __hash__(self) -> int:
        return hash((tuple(sorted(self._exact.items())), tuple(sorted(self._hosts.items()))))

    def map(self, host: str, port: int) -> tuple[str, int]:
        exact = self._exact.get((host, port))
        if exact is not None:
            return exact
        return self._hosts.get(host, host), port

    def label(self, label: str) -> str:
        """A 'host:port' label (IPv6 in brackets) mapped to the reachable one's label."""
        if not self:
            return label
        host, _, port = label.rpartition(":")
        if not is_decimal(port):
            return label
        mapped_host, mapped_port = self.map(host.strip("[]"), int(port))
        return Address(mapped_host, mapped_port).label


@dataclass(frozen=True, slots=True)
class MonitoredGroup:
    """One group the monitor polls: a name, a master, the replicas known up front, and the
    configured group it comes from (routing, probe and TLS settings, `discover`)."""

    name: str
    master: RedisEndpoint
    replicas: tuple[RedisEndpoint, ...]
    config: GroupConfig
    address_map: AddressMap = field(default_factory=AddressMap)
    slots: tuple[tuple[int, int], ...] = ()  # a cluster shard's slot ranges
    node_ids: frozenset[str] = frozenset()  # a cluster shard's node ids (names follow them)

    @property
    def parent(self) -> str:
        """The configured group's name (a cluster shard's cluster)."""
        return self.config.name

    @property
    def source(self) -> str:
        return self.config.source

    @property
    def discover(self) -> bool:
        return self.config.discover

    @property
    def tls(self) -> TLSConfig | None:
        return self.config.tls

    @classmethod
    def static(cls, group: GroupConfig, address_map: AddressMap | None = None) -> MonitoredGroup:
        if group.master is None:
            raise ValueError(f"group {group.name} has no master: it is discovered")
        return cls(
            group.name,
            group.master,
            tuple(group.replicas),
            group,
            address_map or AddressMap(group.address_map),
        )


def slot_ranges_text(slots: Sequence[tuple[int, int]], limit: int = 120) -> str:
    """'0-5460,10923' (a single slot alone), cut with '…' beyond `limit` characters."""
    text = ",".join(f"{a}-{b}" if a != b else str(a) for a, b in slots)
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _node(group: GroupConfig, tls: bool, address: Address, amap: AddressMap) -> RedisEndpoint:
    host, port = amap.map(address.host, address.port)
    auth = group.node_auth
    return RedisEndpoint(
        host=host,
        port=port,
        username=auth.username if auth else None,
        password=auth.password if auth else None,
        tls=tls,
    )


def discovered_group(
    group: GroupConfig, name: str, found: DiscoveredGroup, amap: AddressMap
) -> MonitoredGroup:
    """A Sentinel group or a cluster shard as discovery reports it, addresses mapped and
    the configured credentials applied."""
    tls = (
        group.sentinel.tls
        if group.sentinel is not None
        else bool(group.cluster and group.cluster.tls)
    )
    master = _node(group, tls, found.master, amap)
    replicas: list[RedisEndpoint] = []
    seen = {master.label}
    for address in found.replicas:
        node = _node(group, tls, address, amap)
        if node.label not in seen:
            seen.add(node.label)
            replicas.append(node)
    return MonitoredGroup(name, master, tuple(replicas), group, amap, found.slots, found.node_ids)


def name_shards(
    parent: str, shards: Sequence[DiscoveredGroup], previous: Mapping[str, frozenset[str]]
) -> list[tuple[str, DiscoveredGroup]]:
    """A group name per shard. `previous`: name → node ids of the shards named last time.
    A shard whose nodes overlap a previous shard's keeps that name (the previous shard with
    the largest overlap; each name goes to one shard); other shards are named
    `<parent>:<key>`, or `<parent>:n<master id>` when that name is taken."""
    named: list[tuple[str, DiscoveredGroup]] = []
    taken: set[str] = set()
    pending: list[DiscoveredGroup] = []
    # most shared nodes first; on a tie the shard that owns slots, then the one whose own
    # name it is (mid-failover a shard's two masters may be listed apart for a moment)
    candidates = sorted(
        (
            (
                -len(shard.node_ids & ids),
                not shard.slots,
                name != f"{parent}:{shard.key}",
                name,
                index,
            )
            for index, shard in enumerate(shards)
            for name, ids in previous.items()
            if shard.node_ids & ids
        ),
    )
    assigned: dict[int, str] = {}
    for *_, name, index in candidates:
        if index in assigned or name in taken:
            continue
        assigned[index] = name
        taken.add(name)
    for index, shard in enumerate(shards):
        if index in assigned:
            named.append((assigned[index], shard))
        else:
            pending.append(shard)
    for shard in pending:
        name = f"{parent}:{shard.key}"
        if name in taken and shard.master_id:
            name = f"{parent}:n{shard.master_id[:12]}"
        suffix = 2
        base = name
        while name in taken:
            name, suffix = f"{base}-{suffix}", suffix + 1
        taken.add(name)
        named.append((name, shard))
    return sorted(named, key=lambda item: (item[1].slots[:1] or ((16384, 0),), item[0]))
