"""The monitor's settings: how it serves (exporter), polls (poll), writes heartbeats
(heartbeat), keeps the offset clock (lag), routes reads (routing), runs WAIT probes (probe)
and publishes the routing table (publish). Each section checks its own values; what spans
sections is checked by Config."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BeforeValidator, Field, field_validator, model_validator
from pydantic_core import PydanticCustomError

from replwatch.config.base import StrictModel
from replwatch.config.endpoints import Auth, Endpoint, ListenAddress, TLSConfig
from replwatch.config.units import Duration, Size


class ExporterConfig(StrictModel):
    listen: ListenAddress = "127.0.0.1:9750"
    # TLS and basic auth for the HTTP server, in the exporter-toolkit web config format
    # (replwatch/config/web.py); re-read when it changes
    web_config: Path | None = None

    @property
    def host(self) -> str:
        return self.listen.rpartition(":")[0].strip("[]") or "0.0.0.0"

    @property
    def port(self) -> int:
        return int(self.listen.rpartition(":")[2])


DEFAULT_POLL_TIMEOUT = 0.5


class PollConfig(StrictModel):
    interval: Duration = 1.0
    # when not given: the smaller of DEFAULT_POLL_TIMEOUT and the interval (set by _check,
    # as Prometheus's scrape_timeout follows a short scrape_interval)
    timeout: Duration = DEFAULT_POLL_TIMEOUT

    @model_validator(mode="after")
    def _check(self) -> PollConfig:
        if self.interval < 0.1:
            raise PydanticCustomError("poll", "interval: must be at least 100ms")
        if "timeout" not in self.model_fields_set:
            # (frozen model: the one place its own validator fills in a derived default)
            object.__setattr__(self, "timeout", min(DEFAULT_POLL_TIMEOUT, self.interval))
        if self.timeout <= 0:
            raise PydanticCustomError("poll", "timeout: must be above 0")
        if self.timeout > self.interval:
            raise PydanticCustomError(
                "poll", "timeout: must not exceed interval (a slow node would delay the next cycle)"
            )
        return self


class HeartbeatConfig(StrictModel):
    enabled: bool = True
    interval: Duration = 0.25
    key: str = "__replwatch:heartbeat"
    ttl: Duration = 3600.0

    @field_validator("interval")
    @classmethod
    def _interval(cls, v: float) -> float:
        if v < 0.05:
            raise PydanticCustomError("heartbeat", "must be at least 50ms")
        return v

    @field_validator("key")
    @classmethod
    def _key(cls, v: str) -> str:
        if not v or any(c.isspace() for c in v):
            raise PydanticCustomError("heartbeat", "must be a non-empty key without spaces")
        return v

    @model_validator(mode="after")
    def _ttl(self) -> HeartbeatConfig:
        if self.ttl < self.interval:
            # the key would expire between writes and the replicas would have none to read
            raise PydanticCustomError(
                "heartbeat_ttl",
                "ttl: must not be shorter than interval (the key would expire between writes)",
            )
        return self


class LagConfig(StrictModel):
    offset_clock_window: Duration = 600.0
    offset_clock_max_points: int = Field(default=720, ge=8, le=100_000)


class Threshold(StrictModel):
    lag_seconds: Duration | None = None
    lag_bytes: Size | None = None
    for_: Duration = Field(default=0.0, alias="for")


class RoutingConfig(StrictModel):
    """Per replica: out of read rotation when lag stays above `trip` for `trip.for`, back in
    after it stays below `recover` for `recover.for`. Guards keep at least
    `min_in_rotation` replicas serving (least lagged first) and take at most
    `max_out_ratio` of the replicas out for lag."""

    trip: Threshold = Threshold.model_validate({"lag_seconds": 2, "lag_bytes": "10MB", "for": 1})
    recover: Threshold = Threshold.model_validate({"lag_seconds": 0.5, "for": 5})
    min_in_rotation: int = Field(default=0, ge=0)
    max_out_ratio: float = Field(default=1.0, ge=0.0, le=1.0)

    @model_validator(mode="after")
    def _hysteresis(self) -> RoutingConfig:
        t, r = self.trip, self.recover
        if t.lag_seconds is None and t.lag_bytes is None:
            raise PydanticCustomError("routing", "trip: needs lag_seconds and/or lag_bytes")
        if (
            t.lag_seconds is not None
            and r.lag_seconds is not None
            and r.lag_seconds > t.lag_seconds
        ):
            raise PydanticCustomError(
                "routing", "recover.lag_seconds: must not exceed trip.lag_seconds (hysteresis)"
            )
        if t.lag_bytes is not None and r.lag_bytes is not None and r.lag_bytes > t.lag_bytes:
            raise PydanticCustomError(
                "routing", "recover.lag_bytes: must not exceed trip.lag_bytes (hysteresis)"
            )
        return self


def _probe_replicas(value: Any) -> Any:
    if isinstance(value, str) and value.strip().isdigit():  # e.g. from ${ENV} interpolation
        return int(value)
    if value == "all" or (isinstance(value, int) and not isinstance(value, bool) and value >= 0):
        return value
    raise PydanticCustomError("replicas", "must be a count >= 0 or 'all'")


class ProbeConfig(StrictModel):
    """WAIT probes: write a probe key on the master, then WAIT <replicas> <timeout>."""

    enabled: bool = True
    interval: Duration = 1.0
    timeout: Duration = 0.5
    replicas: Annotated[int | Literal["all"], BeforeValidator(_probe_replicas)] = "all"
    key: str = "__replwatch:probe"
    ttl: Duration = 10.0

    @model_validator(mode="after")
    def _check(self) -> ProbeConfig:
        if self.interval < 0.1:
            raise PydanticCustomError("probe", "interval: must be at least 100ms")
        if not 0 < self.timeout <= self.interval:
            raise PydanticCustomError("probe", "timeout: must be above 0 and not exceed interval")
        if isinstance(self.replicas, int) and self.replicas < 0:
            raise PydanticCustomError("probe", "replicas: must be a count >= 0 or 'all'")
        if not self.key or any(c.isspace() for c in self.key):
            raise PydanticCustomError("probe", "key: must be a non-empty key without spaces")
        return self


class PublishConfig(StrictModel):
    """Where the routing table is published for applications (ReadRouter): a key holding the
    whole table as JSON, and a pub/sub channel announcing it, on change and every interval."""

    url: Endpoint | None = None
    auth: Auth | None = None  # credentials when the URL has none (password_file works)
    tls: TLSConfig | None = None  # over the top-level tls
    key: str = "replwatch:routing"
    channel: str = "replwatch:routing"
    interval: Duration = 2.0

    @field_validator("interval")
    @classmethod
    def _interval(cls, v: float) -> float:
        if v < 0.1:
            raise PydanticCustomError("publish", "must be at least 100ms")
        return v
