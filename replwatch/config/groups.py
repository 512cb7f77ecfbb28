"""Which Redis the monitor watches: a group is a master with its replicas, listed (static),
named by Sentinels (followed through failovers) or found in a Redis Cluster (a group per
master shard). A group may override the top-level routing, probe, tls and address_map."""

from __future__ import annotations

import re
from typing import Any

from pydantic import Field, ModelWrapValidatorHandler, field_validator, model_validator
from pydantic_core import PydanticCustomError

from replwatch.config.base import Check, StrictModel, run_checks
from replwatch.config.endpoints import (
    AddressMapping,
    Auth,
    Endpoint,
    RedisEndpoint,
    TLSConfig,
    with_credentials,
)
from replwatch.config.monitor import ProbeConfig, RoutingConfig
from replwatch.config.units import PositiveDuration


class GroupSentinel(StrictModel):
    """A group whose master and replicas are whatever the Sentinels watching `master_name`
    say now (followed through failovers)."""

    # each "host:port" (or redis:// / rediss:// URL) of one Sentinel; all are asked, the
    # answer with the highest config epoch wins
    addresses: list[Endpoint] = Field(min_length=1)
    master_name: str = Field(min_length=1)
    auth: Auth | None = None  # the Sentinels' own credentials (sentinel.conf requirepass/ACL)
    timeout: PositiveDuration = 0.5  # one Sentinel query (connect + reply)
    tls: bool = False  # the data nodes speak TLS (rediss); Sentinels: by their URL scheme


def group_sentinels(block: GroupSentinel) -> list[RedisEndpoint]:
    """A group's Sentinels with its `sentinel.auth` credentials (an address's own win)."""
    if block.auth is None:
        return list(block.addresses)
    return [with_credentials(a, block.auth.username, block.auth.password) for a in block.addresses]


class GroupCluster(StrictModel):
    """A Redis Cluster: every master shard becomes a group of its own, named
    `<group>:s<lowest slot>` (kept through failovers and resharding)."""

    # "host:port" (or redis:// / rediss:// URLs) of some nodes; the first that answers
    # CLUSTER SHARDS / CLUSTER NODES describes the cluster
    startup_nodes: list[Endpoint] = Field(min_length=1)
    auth: Auth | None = None  # credentials of the cluster's nodes (or the group's `auth`)
    timeout: PositiveDuration = 0.5

    @property
    def tls(self) -> bool:
        return self.startup_nodes[0].tls


class GroupConfig(StrictModel):
    name: str
    master: Endpoint | None = None
    replicas: list[Endpoint] = Field(default_factory=list)
    discover: bool = False
    auth: Auth | None = None
    tls: TLSConfig | None = None
    sentinel: GroupSentinel | None = None
    cluster: GroupCluster | None = None
    address_map: AddressMapping = Field(default_factory=dict)  # over the top-level one
    routing: RoutingConfig | None = None  # overrides the top-level routing for this group
    probe: ProbeConfig | None = None  # overrides the top-level probe for this group

    @field_validator("name")
    @classmethod
    def _name(cls, v: str) -> str:
        if not re.fullmatch(r"[A-Za-z0-9_.:-]+", v):
            raise PydanticCustomError("name", "must be letters, digits, _ . : - only")
        return v

    @model_validator(mode="wrap")
    @classmethod
    def _checks(cls, data: Any, handler: ModelWrapValidatorHandler[GroupConfig]) -> GroupConfig:
        return run_checks(cls, data, handler, _GROUP_CHECKS)

    @property
    def node_auth(self) -> Auth | None:
        """The credentials of the group's data nodes (a cluster's may sit in its block)."""
        if self.cluster is not None and self.cluster.auth is not None:
            return self.cluster.auth
        return self.auth

    @property
    def source(self) -> str:
        """Where the group's nodes come from: static (listed), sentinel or cluster."""
        return "sentinel" if self.sentinel else "cluster" if self.cluster else "static"


# The checks that span a group's fields, each reported on its own (see run_checks).


def _one_source(group: GroupConfig) -> None:
    given = [k for k in ("master", "sentinel", "cluster") if getattr(group, k) is not None]
    if not given:
        raise PydanticCustomError(
            "group", "master: required (or give sentinel: or cluster: instead)"
        )
    if len(given) > 1:
        raise PydanticCustomError(
            "group",
            "{second}: give one of master, sentinel, cluster (not {first} and {second})",
            {"first": given[0], "second": given[1]},
        )


def _replicas_need_master(group: GroupConfig) -> None:
    """Listed replicas belong to a listed master; Sentinels and clusters name their own."""
    if group.master is None and group.replicas and (group.sentinel or group.cluster):
        raise PydanticCustomError(
            "group",
            "replicas: the {source} names the replicas (discover: true adds chained ones)",
            {"source": "Sentinels" if group.sentinel is not None else "cluster"},
        )


def _auth_once(group: GroupConfig) -> None:
    if group.cluster is not None and group.cluster.auth is not None and group.auth is not None:
        raise PydanticCustomError(
            "group", "auth: give the nodes' credentials once (auth or cluster.auth)"
        )


def _distinct(group: GroupConfig) -> None:
    if group.master is None:
        return
    labels = [group.master.label] + [r.label for r in group.replicas]
    dup = {x for x in labels if labels.count(x) > 1}
    if dup:
        raise PydanticCustomError(
            "dup", "replicas: node {node} is listed twice", {"node": sorted(dup)[0]}
        )


_GROUP_CHECKS: tuple[Check[GroupConfig], ...] = (
    _one_source,
    _replicas_need_master,
    _auth_once,
    _distinct,
)
