"""The config's side of a fleet split across several replwatch instances (docs/sharding.md):
the `shard: "i/n"` value, and why a config cannot run split (several shards publishing one
routing table would overwrite each other's). Which groups and tasks a shard owns is
replwatch/topology/sharding.py's rule."""

from __future__ import annotations

from typing import Any

from pydantic_core import PydanticCustomError

from replwatch.config.monitor import PublishConfig
from replwatch.topology.sharding import ShardSpec, parse_shard

SHARD_PLACEHOLDER = "{shard}"


def shard_value(value: Any) -> ShardSpec | None:
    """The config's `shard:` ("i/n") → ShardSpec; None: not given."""
    if value is None or isinstance(value, ShardSpec):
        return value
    if not isinstance(value, str):
        raise PydanticCustomError("shard_value", 'must be a string i/n, e.g. "2/3"')
    try:
        return parse_shard(value)
    except ValueError as exc:
        raise PydanticCustomError("shard_value", "{problem}", {"problem": str(exc)}) from None


def shard_problem(publish: PublishConfig, spec: ShardSpec) -> str | None:
    """Why a config publishing as `publish` cannot run as shard `spec` ('path: reason'), or
    None. Several shards publishing one routing table would overwrite each other's: with
    n > 1 the publish key and channel must contain {shard}."""
    if spec.count > 1 and publish.url is not None:
        for field in ("key", "channel"):
            if SHARD_PLACEHOLDER not in getattr(publish, field):
                return (
                    f"publish.{field}: must contain {SHARD_PLACEHOLDER} when the fleet is "
                    f"split into shards (shard {spec}): each shard publishes the routing "
                    f"table of its own groups, e.g. replwatch:routing:{SHARD_PLACEHOLDER}"
                )
    return None
