"""Ask a Redis Cluster for its shards: one DiscoveredGroup per master, with its replicas.

The startup nodes are asked in turn; the first that answers describes the cluster:
`CLUSTER SHARDS` (7.0+), or `CLUSTER NODES` when that subcommand is unknown (not on an auth
error). A shard's key is `s<lowest slot it owns>` (`n<master id>` for a master without
slots); its node ids let the fleet keep a shard's name through failovers and resharding.
A master flagged failed whose replica was promoted is replaced by the promoted one; a failed
master nobody replaced yet stays, with `master_down`. A failed master that owns no slots (its
replica took them over) is no shard of its own: `fold_failed_masters` shows it as a down node
of the shard it belonged to, known from the previous discovery, or leaves it out.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from typing import Any

import hiredis

from replwatch.config import RedisEndpoint, TLSConfig
from replwatch.decimal_text import is_decimal
from replwatch.errors import AuthFailure, DiscoveryError, RedisError
from replwatch.observe.connection import Connection, classify_reply_error
from replwatch.topology.model import Address, DiscoveredGroup


def _text(value: Any) -> str:
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)


def _pairs(flat: Any) -> dict[str, Any]:
    if isinstance(flat, dict):
        return {_text(k): v for k, v in flat.items()}
    if not isinstance(flat, list) or len(flat) % 2:
        raise ValueError("not a name/value list")
    return {_text(k): v for k, v in zip(flat[0::2], flat[1::2], strict=True)}


def _key(slots: Sequence[tuple[int, int]], master_id: str) -> str:
    return f"s{min(a for a, _ in slots)}" if slots else f"n{master_id[:12]}"


def _merge(ranges: list[tuple[int, int]]) -> tuple[tuple[int, int], ...]:
    out: list[tuple[int, int]] = []
    for start, end in sorted(ranges):
        if out and start <= out[-1][1] + 1:
            out[-1] = (out[-1][0], max(out[-1][1], end))
        else:
            out.append((start, end))
    return tuple(out)


def _sorted(groups: list[DiscoveredGroup]) -> list[DiscoveredGroup]:
    return sorted(groups, key=lambda g: (g.slots[0][0] if g.slots else 16384, g.key))


def parse_cluster_shards_groups(reply: Any, tls: bool = False) -> list[DiscoveredGroup]:
    """CLUSTER SHARDS → one group per shard that has a master."""
    if not isinstance(reply, list):
        raise ValueError("CLUSTER SHARDS returned no list")
    groups: list[DiscoveredGroup] = []
    for entry in reply:
        shard = _pairs(entry)
        flat = [int(_text(s)) for s in shard.get("slots") or []]
        slots = _merge(list(zip(flat[0::2], flat[1::2], strict=True)))
        masters: list[tuple[dict[str, Any], Address]] = []
        replicas: list[tuple[dict[str, Any], Address]] = []
        for node_entry in shard.get("nodes") or []:
            node = _pairs(node_entry)
            host = _text(node.get("ip") or node.get("endpoint") or b"")
            port = node.get("tls-port") if tls and node.get("tls-port") else node.get("port")
            if not host or host == "?" or port is None or int(_text(port)) <= 0:
                continue
            address = Address(host, int(_text(port)))
            role = _text(node.get("role", b""))
            (masters if role == "master" else replicas).append((node, address))
        if not masters:
            continue
        healthy = [m for m in masters if _text(m[0].get("health", b"")) != "fail"]
        master_node, master_address = (healthy or masters)[0]
        master_id = _text(master_node.get("id", b""))
        ids = {_text(n.get("id", b"")) for n, _ in masters + replicas}
        groups.append(
            DiscoveredGroup(
                key=_key(slots, master_id),
                master=master_address,
                replicas=tuple(a for _, a in masters + replicas if a != master_address),
                slots=slots,
                node_ids=frozenset(ids - {""}),
                master_id=master_id or None,
                master_down=not healthy,
            )
        )
    return _sorted(groups)


def parse_cluster_nodes_groups(text: str) -> list[DiscoveredGroup]:
    """CLUSTER NODES → one group per master (not in handshake, with an address)."""
    masters: dict[str, tuple[Address, list[tuple[int, int]], int, bool]] = {}
    replicas: dict[str, list[tuple[str, Address]]] = {}
    for line in text.splitlines():
        parts = line.split()
        if len(parts) < 8:
            continue
        node_id, address_field, flags_field, upstream = parts[0], parts[1], parts[2], parts[3]
        flags = set(flags_field.split(","))
        if flags & {"noaddr", "handshake"}:
            continue
        address_text = address_field.split("@", 1)[0].split(",", 1)[0]
        host, _, port = address_text.rpartition(":")
        if not host or not is_decimal(port) or int(port) <= 0:
            continue
        address = Address(host.strip("[]"), int(port))
        if "master" in flags:
            ranges = []
            for item in parts[8:]:
                if item.startswith("["):  # a slot being migrated or imported
                    continue
                start, _, end = item.partition("-")
                ranges.append((int(start), int(end or start)))
            epoch = int(parts[6]) if is_decimal(parts[6]) else 0
            masters[node_id] = (address, ranges, epoch, bool(flags & {"fail", "fail?"}))
        elif upstream != "-":
            replicas.setdefault(upstream, []).append((node_id, address))
    groups = []
    for node_id, (address, ranges, epoch, failed) in masters.items():
        followers = replicas.get(node_id, [])
        slots = _merge(ranges)
        groups.append(
            DiscoveredGroup(
                key=_key(slots, node_id),
                master=address,
                replicas=tuple(a for _, a in followers),
                slots=slots,
                node_ids=frozenset({node_id, *(i for i, _ in followers)}),
                master_id=node_id,
                epoch=epoch,
                master_down=failed,
            )
        )
    return _sorted(groups)


def fold_failed_masters(
    shards: Sequence[DiscoveredGroup], previous: Sequence[frozenset[str]]
) -> list[DiscoveredGroup]:
    """Failed masters without slots (kill -9 and a failover: the promoted replica owns the
    slots now) become down nodes of their shard: the shard that owns slots and shares nodes
    with the group (of the previous discovery, `previous` node id sets) the failed master
    was in. One of no known shard is left out: it is not a group, it serves nothing."""
    orphans = [s for s in shards if s.master_down and not s.slots]
    kept = [s for s in shards if not (s.master_down and not s.slots)]
    for orphan in orphans:
        was_with = next((ids for ids in previous if orphan.master_id in ids), frozenset())
        others = was_with - {orphan.master_id}
        home = next((i for i, s in enumerate(kept) if s.slots and s.node_ids & others), None)
        if home is None:
            continue
        shard = kept[home]
        extra = tuple(
            a
            for a in (orphan.master, *orphan.replicas)
            if a != shard.master and a not in shard.replicas
        )
        kept[home] = replace(
            shard, replicas=shard.replicas + extra, node_ids=shard.node_ids | orphan.node_ids
        )
    return kept


async def _describe(
    seed: RedisEndpoint, tls: TLSConfig | None, timeout: float
) -> list[DiscoveredGroup]:
    conn = await Connection.open(seed, timeout, tls)
    try:
        (reply,) = await conn.execute([("CLUSTER", "SHARDS")], timeout, raise_errors=False)
        if isinstance(reply, hiredis.ReplyError):
            err = classify_reply_error(str(reply))
            if isinstance(err, AuthFailure):
                raise err
            if "unknown" not in str(reply).lower() and "syntax" not in str(reply).lower():
                raise err
            (nodes,) = await conn.execute([("CLUSTER", "NODES")], timeout)
            return parse_cluster_nodes_groups(_text(nodes))
        return parse_cluster_shards_groups(reply, seed.tls)
    finally:
        conn.close()


async def resolve_cluster(
    seeds: Sequence[RedisEndpoint], tls: TLSConfig | None, timeout: float
) -> list[DiscoveredGroup]:
    """The cluster's shards, from the first seed that describes them."""
    problems: list[str] = []
    for seed in seeds:
        try:
            groups = await _describe(seed, tls, timeout)
        except TimeoutError:
            problems.append(f"{seed.label}: no answer within {timeout:g}s")
            continue
        except (RedisError, OSError, ValueError) as exc:
            problems.append(f"{seed.label}: {exc}")
            continue
        if groups:
            return groups
        problems.append(f"{seed.label}: no master in the cluster's description")
    raise DiscoveryError(f"no startup node described the cluster: {'; '.join(problems)}")
