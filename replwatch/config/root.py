"""Config, the root of the schema: one field per section of the file, the checks that span
sections (unique group names, an offset clock window that holds two polls, a publish block
that can be split into the configured shard), and the settings in effect for one group (its
own routing, probe and address_map over the top-level ones)."""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import (
    BeforeValidator,
    Field,
    ModelWrapValidatorHandler,
    ValidatorFunctionWrapHandler,
    field_validator,
    model_validator,
)
from pydantic_core import PydanticCustomError

from replwatch.config.admin import AdminConfig
from replwatch.config.base import Check, StrictModel, run_checks, unique_names
from replwatch.config.endpoints import AddressMapping, RedisEndpoint, TLSConfig
from replwatch.config.groups import GroupConfig
from replwatch.config.monitor import (
    ExporterConfig,
    HeartbeatConfig,
    LagConfig,
    PollConfig,
    ProbeConfig,
    PublishConfig,
    RoutingConfig,
)
from replwatch.config.sharding import shard_problem, shard_value
from replwatch.config.sync import SyncConfig
from replwatch.topology.sharding import WHOLE_FLEET, ShardSpec


class Config(StrictModel):
    exporter: ExporterConfig = ExporterConfig()
    poll: PollConfig = PollConfig()
    heartbeat: HeartbeatConfig = HeartbeatConfig()
    lag: LagConfig = LagConfig()
    tls: TLSConfig = TLSConfig()
    groups: list[GroupConfig] = Field(default_factory=list)
    address_map: AddressMapping = Field(default_factory=dict)  # see GroupConfig.address_map
    routing: RoutingConfig = RoutingConfig()
    probe: ProbeConfig = ProbeConfig()
    publish: PublishConfig = PublishConfig()
    sync: SyncConfig = SyncConfig()
    admin: AdminConfig = AdminConfig()
    # this instance's part of a fleet split across several replwatch instances: "i/n"
    # (docs/sharding.md); `replwatch --shard i/n` overrides it
    shard: Annotated[ShardSpec | None, BeforeValidator(shard_value)] = None

    @field_validator("groups", mode="wrap")
    @classmethod
    def _unique_groups(cls, value: Any, handler: ValidatorFunctionWrapHandler) -> Any:
        return unique_names(value, handler, "group")

    @model_validator(mode="wrap")
    @classmethod
    def _checks(cls, data: Any, handler: ModelWrapValidatorHandler[Config]) -> Config:
        return run_checks(cls, data, handler, _ROOT_CHECKS)

    def nodes_of(self, group: GroupConfig) -> list[RedisEndpoint]:
        """The nodes the config lists (a Sentinel or cluster group's are discovered)."""
        return [] if group.master is None else [group.master, *group.replicas]

    def address_map_of(self, group: GroupConfig) -> dict[str, str]:
        return {**self.address_map, **group.address_map}

    def routing_of(self, group: GroupConfig) -> RoutingConfig:
        return group.routing or self.routing

    def probe_of(self, group: GroupConfig) -> ProbeConfig:
        return group.probe or self.probe


# The checks that span sections, each reported on its own (see run_checks).


def _offset_clock_window(cfg: Config) -> None:
    if cfg.lag.offset_clock_window < 2 * cfg.poll.interval:
        raise PydanticCustomError(
            "lag_window",
            "lag.offset_clock_window: must be at least twice poll.interval (the offset "
            "clock needs two samples to tell a follower's age)",
        )


def _splittable(cfg: Config) -> None:
    problem = shard_problem(cfg.publish, cfg.shard or WHOLE_FLEET)
    if problem is not None:
        raise PydanticCustomError("shard", problem)


_ROOT_CHECKS: tuple[Check[Config], ...] = (_offset_clock_window, _splittable)
