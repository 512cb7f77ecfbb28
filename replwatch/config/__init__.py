"""Typed, validated configuration.

Every problem is reported as ``path: reason`` (``groups[1].replicas[0]: port must be 1-65535``);
secrets are SecretStr and never appear in reprs, errors or logs.
"""

from __future__ import annotations

import difflib
import math
import os
import re
import ssl
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Annotated, Any, Literal, get_args
from urllib.parse import unquote, urlsplit

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Discriminator,
    Field,
    SecretStr,
    Tag,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_core import PydanticCustomError

from replwatch.config_file import parse_yaml, read_config_text
from replwatch.errors import ConfigError
from replwatch.topology.sharding import WHOLE_FLEET, ShardSpec, owns, parse_shard
from replwatch.web_config import load_web_config

# --------------------------------------------------------------------------- scalars

_DURATION_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h)?\s*$")
_DURATION_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, None: 1.0}
_SIZE_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([kmgt]?i?b?)?\s*$", re.IGNORECASE)
_SIZE_UNITS = {"": 1, "b": 1, "k": 1024, "m": 1024**2, "g": 1024**3, "t": 1024**4}


def parse_duration(value: Any) -> float:
    """'250ms', '1s', '2m', '1h' or a number of seconds → seconds (float)."""
    if isinstance(value, bool):
        raise PydanticCustomError("duration", "duration must be like 250ms, 1s, 2m or seconds")
    if isinstance(value, int | float):
        if not math.isfinite(value):
            raise PydanticCustomError("duration", "duration must be a finite number of seconds")
        if value < 0:
            raise PydanticCustomError("duration", "duration must not be negative")
        return float(value)
    if isinstance(value, str):
        match = _DURATION_RE.match(value)
        if match:
            return float(match.group(1)) * _DURATION_UNITS[match.group(2)]
    raise PydanticCustomError(
        "duration", "invalid duration '{value}': use 250ms, 1s, 2m, 1h or seconds", {"value": value}
    )


def parse_size(value: Any) -> int:
    """'10MB', '512kb', '1gib' or a number of bytes → bytes (int). Units are powers of 1024,
    as in redis.conf."""
    if isinstance(value, bool):
        raise PydanticCustomError("size", "size must be like 10MB, 512kb or bytes")
    if isinstance(value, int | float):
        if not math.isfinite(value):
            raise PydanticCustomError("size", "size must be a finite number of bytes")
        if value < 0:
            raise PydanticCustomError("size", "size must not be negative")
        return int(value)
    if isinstance(value, str):
        match = _SIZE_RE.match(value)
        if match:
            unit = (match.group(2) or "").lower().replace("i", "").rstrip("b")
            return int(float(match.group(1)) * _SIZE_UNITS[unit])
    raise PydanticCustomError(
        "size", "invalid size '{value}': use 10MB, 512kb or a number of bytes", {"value": value}
    )


Duration = Annotated[float, BeforeValidator(parse_duration)]


def _above_zero(value: float) -> float:
    if value <= 0:
        raise PydanticCustomError("duration", "must be above 0")
    return value


PositiveDuration = Annotated[float, BeforeValidator(parse_duration), AfterValidator(_above_zero)]
Size = Annotated[int, BeforeValidator(parse_size)]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, hide_input_in_errors=True)


# --------------------------------------------------------------------------- endpoints


class TLSConfig(_Strict):
    """How rediss:// connections are made. Verification is on unless
    `insecure_skip_verify`; `ca_file` adds to (replaces) the system's CA bundle; a client
    certificate (cert_file, key_file) is sent when the server asks for one (tls-auth-clients);
    `server_name` is the name checked against the server's certificate (default: the host of
    the URL). Set at the top of the config and overridden field by field per group, per sync
    task and for publish (see tls_over)."""

    ca_file: Path | None = None
    cert_file: Path | None = None
    key_file: Path | None = None
    server_name: str | None = None
    insecure_skip_verify: bool = False

    @model_validator(mode="after")
    def _key_needs_cert(self) -> TLSConfig:
        if self.key_file is not None and self.cert_file is None:
            raise PydanticCustomError("tls", "key_file: given without cert_file")
        return self


def tls_over(base: TLSConfig, override: TLSConfig | None) -> TLSConfig:
    """The TLS settings in effect where `override` (a group's, a task's, publish's `tls:`)
    applies over the top-level `base`: each field the override sets wins, the others are
    the base's (a group can change server_name alone and keep the top-level CA)."""
    if override is None:
        return base
    fields = override.model_fields_set
    if not fields:
        return base
    merged = base.model_dump()
    merged.update({name: getattr(override, name) for name in fields})
    return TLSConfig.model_validate(merged)


class RedisEndpoint(_Strict):
    """One Redis node, parsed from a redis:// or rediss:// URL."""

    host: str
    port: int = 6379
    db: int = 0
    username: str | None = None
    password: SecretStr | None = None
    tls: bool = False

    @field_validator("port")
    @classmethod
    def _port(cls, v: int) -> int:
        if not 1 <= v <= 65535:
            raise PydanticCustomError("url", "port must be 1-65535")
        return v

    @property
    def label(self) -> str:
        """The node label used in metrics: host:port as written (IPv6 in brackets)."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}"

    def redacted_url(self) -> str:
        scheme = "rediss" if self.tls else "redis"
        auth = ""
        if self.username or self.password:
            auth = f"{self.username or ''}{':***' if self.password else ''}@"
        return f"{scheme}://{auth}{self.label}/{self.db}"

    def with_credentials(self, username: str | None, password: SecretStr | None) -> RedisEndpoint:
        if self.password is not None or password is None:
            return self
        return self.model_copy(update={"username": self.username or username, "password": password})

    @classmethod
    def parse(cls, value: Any) -> RedisEndpoint:
        if isinstance(value, RedisEndpoint):
            return value
        if isinstance(value, Mapping):
            return cls.model_validate(value)
        if not isinstance(value, str):
            raise PydanticCustomError("url", "must be a redis:// or rediss:// URL")
        return parse_redis_url(value)


def parse_redis_url(url: str) -> RedisEndpoint:
    """redis://[[user]:password@]host[:port][/db] → RedisEndpoint. Errors never echo the
    password."""
    if "://" not in url:
        # host:port shorthand
        url = "redis://" + url
    try:
        parts = urlsplit(url)
    except ValueError:
        raise PydanticCustomError(
            "url", "malformed URL (an IPv6 address goes in brackets: redis://[::1]:6379)"
        ) from None
    if parts.scheme not in ("redis", "rediss"):
        raise PydanticCustomError(
            "url",
            "unsupported scheme '{scheme}': use redis:// or rediss://",
            {"scheme": parts.scheme},
        )
    if parts.query or parts.fragment or url.endswith(("?", "#")):
        # redis-py style ?db=…&password=… would be silently ignored; never echo it
        raise PydanticCustomError(
            "url",
            "'?…' and '#…' are not supported in the URL: give the database as /N, "
            "credentials as user:password@, TLS settings under tls: (percent-encode '?' "
            "or '#' in a password as %3F / %23)",
        )
    try:
        port = parts.port
    except ValueError:
        raise PydanticCustomError("url", "port must be 1-65535") from None
    if not parts.hostname:
        raise PydanticCustomError("url", "URL has no host")
    if any(c.isspace() for c in parts.hostname):
        raise PydanticCustomError("url", "the host must not contain spaces")
    if port is not None and not 1 <= port <= 65535:
        raise PydanticCustomError("url", "port must be 1-65535")
    if port == 0:
        raise PydanticCustomError("url", "port must be 1-65535")
    db = 0
    path = parts.path.strip("/")
    if path:
        if "@" in path:
            # an unescaped '/' in the password: the path holds the rest of it; never echo it
            raise PydanticCustomError(
                "url", "database must be a number (percent-encode '/' in a password as %2F)"
            )
        if not path.isdigit():
            raise PydanticCustomError("url", "database must be a number, got '{db}'", {"db": path})
        db = int(path)
    username = unquote(parts.username) if parts.username else None
    password = SecretStr(unquote(parts.password)) if parts.password else None
    return RedisEndpoint(
        host=parts.hostname,
        port=port or 6379,
        db=db,
        username=username,
        password=password,
        tls=parts.scheme == "rediss",
    )


Endpoint = Annotated[RedisEndpoint, BeforeValidator(RedisEndpoint.parse)]


def _listen_address(value: Any) -> str:
    if not isinstance(value, str) or ":" not in value:
        raise PydanticCustomError("listen", "must be host:port, e.g. 127.0.0.1:9750")
    host, _, port = value.rpartition(":")
    if not port.isdigit() or not 0 <= int(port) <= 65535:
        raise PydanticCustomError("listen", "port must be 0-65535")
    if any(c.isspace() or c in "/@" for c in host):
        raise PydanticCustomError(
            "listen", "'{host}' is not a host name or IP address", {"host": host}
        )
    return value


ListenAddress = Annotated[str, BeforeValidator(_listen_address)]

# --------------------------------------------------------------------------- sections


class ExporterConfig(_Strict):
    listen: ListenAddress = "127.0.0.1:9750"
    # TLS and basic auth for the HTTP server, in the exporter-toolkit web config format
    # (replwatch/web_config.py); re-read when it changes
    web_config: Path | None = None

    @property
    def host(self) -> str:
        return self.listen.rpartition(":")[0].strip("[]") or "0.0.0.0"

    @property
    def port(self) -> int:
        return int(self.listen.rpartition(":")[2])


DEFAULT_POLL_TIMEOUT = 0.5


class PollConfig(_Strict):
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


class HeartbeatConfig(_Strict):
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


class LagConfig(_Strict):
    offset_clock_window: Duration = 600.0
    offset_clock_max_points: int = Field(default=720, ge=8, le=100_000)


class Auth(_Strict):
    username: str | None = None
    password: SecretStr | None = None
    password_file: Path | None = None


class Threshold(_Strict):
    lag_seconds: Duration | None = None
    lag_bytes: Size | None = None
    for_: Duration = Field(default=0.0, alias="for")


class RoutingConfig(_Strict):
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


class ProbeConfig(_Strict):
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


def parse_host_port(value: str) -> tuple[str, int | None]:
    """'host:port' or 'host' (IPv6 in brackets when a port follows) → (host, port)."""
    text = value.strip()
    if text.startswith("["):
        host, _, rest = text[1:].partition("]")
        if rest and not rest.startswith(":"):
            raise ValueError
        port_text = rest[1:]
    elif text.count(":") == 1:
        host, _, port_text = text.partition(":")
    else:
        host, port_text = text, ""
    if not host or any(c.isspace() or c in "/@" for c in host):
        raise ValueError
    if not port_text:
        return host, None
    if not port_text.isdigit() or not 1 <= int(port_text) <= 65535:
        raise ValueError
    return host, int(port_text)


def _check_address_map(value: dict[str, str]) -> dict[str, str]:
    """Keys and values are both 'host:port' or both 'host'."""
    for announced, reachable in value.items():
        try:
            a = parse_host_port(announced)
        except ValueError:
            raise PydanticCustomError(
                "address_map",
                "'{key}' is not host:port or host",
                {"key": announced},
            ) from None
        try:
            r = parse_host_port(reachable)
        except ValueError:
            raise PydanticCustomError(
                "address_map",
                "'{key}': '{value}' is not host:port or host",
                {"key": announced, "value": reachable},
            ) from None
        if (a[1] is None) != (r[1] is None):
            raise PydanticCustomError(
                "address_map",
                "'{key}': map host:port to host:port, or host to host",
                {"key": announced},
            )
    return value


# announced address ('host:port' or 'host', as INFO, Sentinel or CLUSTER report it) → the
# address replwatch connects to (NAT, replica-announce-ip, containers)
AddressMapping = Annotated[dict[str, str], AfterValidator(_check_address_map)]


class GroupSentinel(_Strict):
    """A group whose master and replicas are whatever the Sentinels watching `master_name`
    say now (followed through failovers)."""

    # each "host:port" (or redis:// / rediss:// URL) of one Sentinel; all are asked, the
    # answer with the highest config epoch wins
    addresses: list[Endpoint] = Field(min_length=1)
    master_name: str = Field(min_length=1)
    auth: Auth | None = None  # the Sentinels' own credentials (sentinel.conf requirepass/ACL)
    timeout: PositiveDuration = 0.5  # one Sentinel query (connect + reply)
    tls: bool = False  # the data nodes speak TLS (rediss); Sentinels: by their URL scheme

    def nodes(self) -> list[RedisEndpoint]:
        """The Sentinels with this block's credentials (an address's own win)."""
        if self.auth is None:
            return list(self.addresses)
        return [a.with_credentials(self.auth.username, self.auth.password) for a in self.addresses]


class GroupCluster(_Strict):
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


class GroupConfig(_Strict):
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

    @model_validator(mode="after")
    def _one_source(self) -> GroupConfig:
        given = [k for k in ("master", "sentinel", "cluster") if getattr(self, k) is not None]
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
        if self.master is None and self.replicas:
            raise PydanticCustomError(
                "group",
                "replicas: the {source} names the replicas (discover: true adds chained ones)",
                {"source": "Sentinels" if self.sentinel is not None else "cluster"},
            )
        if self.cluster is not None and self.cluster.auth is not None and self.auth is not None:
            raise PydanticCustomError(
                "group", "auth: give the nodes' credentials once (auth or cluster.auth)"
            )
        return self

    @model_validator(mode="after")
    def _distinct(self) -> GroupConfig:
        if self.master is None:
            return self
        labels = [self.master.label] + [r.label for r in self.replicas]
        dup = {x for x in labels if labels.count(x) > 1}
        if dup:
            raise PydanticCustomError(
                "dup", "replicas: node {node} is listed twice", {"node": sorted(dup)[0]}
            )
        return self

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


class PublishConfig(_Strict):
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


class SentinelSettings(_Strict):
    """The Sentinels that watch a source master (a sync task's `source.sentinel`)."""

    # each "host:port" (or a redis:// / rediss:// URL) of one Sentinel, asked in turn
    addresses: list[Endpoint] = Field(min_length=1)
    master_name: str = Field(min_length=1)
    # credentials of the Sentinels themselves (requirepass / ACL user of sentinel.conf)
    username: str | None = None
    password: SecretStr | None = None
    # connect and reply timeout of one Sentinel query
    timeout: PositiveDuration = 1.0

    def nodes(self) -> list[RedisEndpoint]:
        """The Sentinels with this block's credentials (an address's own win)."""
        return [a.with_credentials(self.username, self.password) for a in self.addresses]


class SentinelSource(_Strict):
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

    def at(self, host: str, port: int) -> RedisEndpoint:
        """The master found at host:port, with this source's credentials."""
        return RedisEndpoint(
            host=host,
            port=port,
            db=self.db,
            username=self.username,
            password=self.password,
            tls=self.tls,
        )


class ClusterSettings(_Strict):
    """Where to start discovering a source Redis Cluster (a sync task's `source.cluster`)."""

    # "host:port" (or redis:// URLs) of some nodes of the cluster; the first that answers
    # CLUSTER SHARDS / CLUSTER NODES is used
    startup_nodes: list[Endpoint] = Field(min_length=1)


class ClusterSource(_Strict):
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

    def at(self, host: str, port: int) -> RedisEndpoint:
        """A node of the cluster at host:port, with this source's credentials."""
        return RedisEndpoint(
            host=host,
            port=port,
            username=self.username,
            password=self.password,
            tls=self.tls,
        )


def _source_kind(value: Any) -> str:
    """Which form a sync task's source takes: a Sentinel or Cluster block, else a URL."""
    if isinstance(value, SentinelSource) or (isinstance(value, Mapping) and "sentinel" in value):
        return "kind:sentinel"
    if isinstance(value, ClusterSource) or (isinstance(value, Mapping) and "cluster" in value):
        return "kind:cluster"
    return "kind:url"


class ClusterTargetNodes(_Strict):
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
                node = RedisEndpoint.parse(first[0])
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

    def node(self, host: str, port: int) -> RedisEndpoint:
        """A node of the cluster at host:port, with the cluster's credentials."""
        return RedisEndpoint(
            host=host, port=port, username=self.username, password=self.password, tls=self.tls
        )


def _target_kind(value: Any) -> str:
    """Which form a sync task's target takes: a Cluster block, else a URL / host mapping."""
    if isinstance(value, ClusterTarget) or (isinstance(value, Mapping) and "cluster" in value):
        return "kind:cluster"
    return "kind:url"


# a sync task's source: a URL (or host/port mapping), or a Sentinel or Cluster block
SyncSource = Annotated[
    Annotated[RedisEndpoint, BeforeValidator(RedisEndpoint.parse), Tag("kind:url")]
    | Annotated[SentinelSource, Tag("kind:sentinel")]
    | Annotated[ClusterSource, Tag("kind:cluster")],
    Discriminator(_source_kind),
]


# a sync task's target: a URL (or host/port mapping), or `{cluster: {startup_nodes: […]},
# username, password, tls}` (README "Redis Cluster as a target")
SyncTarget = Annotated[
    Annotated[RedisEndpoint, BeforeValidator(RedisEndpoint.parse), Tag("kind:url")]
    | Annotated[ClusterTarget, Tag("kind:cluster")],
    Discriminator(_target_kind),
]


def _require_unique(names: list[str], field: str, what: str) -> None:
    for name in names:
        if names.count(name) > 1:
            raise PydanticCustomError(
                "dup", "{f}: {w} name '{n}' is used twice", {"f": field, "w": what, "n": name}
            )


def _regex(value: str) -> str:
    """A key regex (matched with re.search against the key's bytes)."""
    try:
        re.compile(value.encode())
    except re.error as exc:
        raise PydanticCustomError("regex", "invalid regex: {error}", {"error": str(exc)}) from None
    return value


def _command_name(value: str) -> str:
    name = value.strip().upper()
    if not re.fullmatch(r"[A-Z0-9_|.-]+", name):
        raise PydanticCustomError("command", "must be a command name like SET or FLUSHALL")
    if name in _STREAM_CONTROL:
        raise PydanticCustomError(
            "command",
            "{name} is part of how the stream is applied and cannot be filtered",
            {"name": name},
        )
    return name


_STREAM_CONTROL = frozenset(("MULTI", "EXEC", "SELECT", "PING", "REPLCONF"))
RegexText = Annotated[str, AfterValidator(_regex)]
CommandName = Annotated[str, AfterValidator(_command_name)]
DbNumber = Annotated[int, Field(ge=0)]


class KeyFilterConfig(_Strict):
    """A key passes when it matches an allow rule (or there are none) and no deny rule."""

    allow_prefixes: list[str] = Field(default_factory=list)
    deny_prefixes: list[str] = Field(default_factory=list)
    allow_regex: list[RegexText] = Field(default_factory=list)
    deny_regex: list[RegexText] = Field(default_factory=list)


class CommandFilterConfig(_Strict):
    """Command names, case-insensitive: a command passes when it is in `allow` (or `allow`
    is empty) and not in `deny`."""

    allow: list[CommandName] = Field(default_factory=list)
    deny: list[CommandName] = Field(default_factory=list)


class DbFilterConfig(_Strict):
    allow: list[DbNumber] | None = None  # only these source dbs; None: all


class SyncFilters(_Strict):
    """What a sync task copies (replwatch/sync/filters.py applies it)."""

    keys: KeyFilterConfig = KeyFilterConfig()
    commands: CommandFilterConfig = CommandFilterConfig()
    dbs: DbFilterConfig = DbFilterConfig()


class SyncTask(_Strict):
    """One source → target copy (replwatch/sync). The checkpoint hash on the target
    (`__replwatch:sync:<name>`) is the task's position and public record."""

    name: str
    source: SyncSource
    target: SyncTarget
    # the reverse task of a bidirectional pair: the source's transactions that carry that
    # task's checkpoint write are its echoes and are dropped whole (README "Bidirectional
    # sync (pairs)")
    pair: str | None = None
    # the first full sync's snapshot: load it into the target, or skip it (read from the
    # source, nothing written; only the stream after it is applied) — the second task of a
    # pair brought up on a source that already holds a copy of the target's data
    snapshot: Literal["load", "skip"] = "load"
    # start with a full sync even when the checkpoint could be continued
    afresh: bool = False
    # a first full sync into a target that already holds keys: refuse (default), flush the
    # target first, or overwrite (keys of the source replace, other keys stay)
    existing_keys: Literal["refuse", "flush", "overwrite"] = "refuse"
    # a key of a module type in the snapshot: fail the task, or skip it (counted)
    on_module_key: Literal["fail", "skip"] = "fail"
    # commands per MULTI batch, and bytes: whichever is reached first closes a batch
    batch_size: int = Field(default=2000, ge=1, le=1_000_000)
    batch_bytes: Size = 4 * 1024 * 1024
    # full sync: keys whose serialized value is larger are written as several commands
    # instead of one RESTORE (memory and proto-max-bulk-len stay bounded)
    big_key_bytes: Size = 16 * 1024 * 1024
    # how the full sync writes keys: RESTORE when the target accepts the payload, else
    # plain commands (auto); or always plain commands
    write_mode: Literal["auto", "commands"] = "auto"
    reconnect_min: Duration = 1.0
    reconnect_max: Duration = 30.0
    # the stream: no byte from the source for this long ends the session (reconnect), like a
    # replica's repl-timeout; keep it above the source's repl-ping-replica-period (10s)
    source_timeout: Duration = 60.0
    # keys with a TTL live this much longer on the target than on the source: the target
    # never expires a key on its own clock before the source's DEL (or a PERSIST, a new
    # EXPIRE) reaches it through the stream, as long as the task is less than this behind.
    # 0: TTLs exactly as on the source (a key persisted near its expiry may then be lost)
    expire_grace: Duration = 300.0
    tls: TLSConfig | None = None  # over the top-level tls, for the source and the target
    # credentials of the source / the target when their URL (or block) has none; with
    # password_file (read at start and at reload, never through the admin API)
    source_auth: Auth | None = None
    target_auth: Auth | None = None
    # high availability: several daemons may run this task; one holds a lease in the
    # target (fencing token checked with every write), the others wait and take over when
    # it lapses. `lease`: how long a holder that stopped renewing keeps it
    ha: bool = False
    lease: Duration = 10.0
    # what is copied (keys, commands, source dbs) and where: source db -> target db
    # (unmapped dbs keep their number); see README "Filters and db mapping"
    filters: SyncFilters | None = None
    db_map: dict[DbNumber, DbNumber] = Field(default_factory=dict)

    @field_validator("name")
    @classmethod
    def _name(cls, v: str) -> str:
        if not re.fullmatch(r"[A-Za-z0-9_.-]+", v):
            raise PydanticCustomError("name", "must be letters, digits, _ . - only")
        return v

    @field_validator("batch_bytes", "big_key_bytes")
    @classmethod
    def _positive_size(cls, v: int) -> int:
        if v < 1024:
            raise PydanticCustomError("size", "must be at least 1kb")
        return v

    @model_validator(mode="after")
    def _distinct(self) -> SyncTask:
        if isinstance(self.source, RedisEndpoint) and (
            self.source.host,
            self.source.port,
            self.source.db,
        ) == (self.target.host, self.target.port, self.target.db):
            raise PydanticCustomError("same", "target: must not be the source itself")
        if self.source_timeout < 1.0:
            raise PydanticCustomError("source_timeout", "source_timeout: must be at least 1s")
        if self.lease < 1.0:
            raise PydanticCustomError("lease", "lease: must be at least 1s")
        if self.reconnect_min <= 0:
            raise PydanticCustomError(
                "reconnect", "reconnect_min: must be above 0 (0 would reconnect in a busy loop)"
            )
        if self.reconnect_max < self.reconnect_min:
            raise PydanticCustomError(
                "reconnect", "reconnect_max: must not be less than reconnect_min"
            )
        if isinstance(self.target, ClusterTarget):
            self._cluster_target_fits()
        self._db_map_one_to_one()
        if self.pair is not None and self.existing_keys == "flush":
            # the FLUSHALL would reach the reverse task's stream and wipe the other side too
            raise PydanticCustomError(
                "pair_flush",
                "existing_keys: flush cannot be used with pair (a pair task never flushes "
                "its target: the flush would be copied back and wipe the other side); use "
                "refuse or overwrite",
            )
        if self.pair is not None and self.pair == self.name:
            raise PydanticCustomError("pair_self", "pair: must name the reverse task, not itself")
        return self

    def _cluster_target_fits(self) -> None:
        """A cluster target has db 0 only, and a pair's loop guard needs the checkpoint inside
        every transaction, which a cluster cannot do across slots."""
        mapped = {t for t in self.db_map.values() if t != 0}
        if mapped:
            raise PydanticCustomError(
                "dbmap",
                "db_map: a cluster target has database 0 only; map to 0 (got {dbs})",
                {"dbs": ", ".join(str(d) for d in sorted(mapped))},
            )
        if self.pair is not None:
            raise PydanticCustomError(
                "dbmap", "pair: a bidirectional pair cannot have a cluster target"
            )
        if self.ha:
            raise PydanticCustomError(
                "dbmap",
                "ha: a task with a cluster target cannot be fenced (its batches span many "
                "slots, the lease sits in one); run it in one daemon",
            )

    def _db_map_one_to_one(self) -> None:
        """Two copied source dbs must not land in one target db (their keys would mix, and
        FLUSHDB/SWAPDB of one would hit the other); an unmapped db keeps its number."""
        allowed = self.filters.dbs.allow if self.filters is not None else None
        copied = set(allowed) if allowed is not None else None
        seen: dict[int, int] = {}
        sources = set(self.db_map) | {t for t in self.db_map.values() if t not in self.db_map}
        for source in sorted(sources):
            if copied is not None and source not in copied:
                continue
            target = self.db_map.get(source, source)
            if target in seen:
                raise PydanticCustomError(
                    "dbmap",
                    "db_map: source dbs {a} and {b} would both go to target db {t} (an "
                    "unmapped db keeps its number; map it elsewhere or leave it out with "
                    "filters.dbs.allow)",
                    {"a": seen[target], "b": source, "t": target},
                )
            seen[target] = source


class SyncConfig(_Strict):
    tasks: list[SyncTask] = Field(default_factory=list)
    # where `replwatch run` keeps the tasks created through the admin API and which tasks are
    # stopped (replwatch/sync/task_state.py); relative paths are relative to the config
    # file's directory; default: <config dir>/replwatch-state
    state_dir: Path | None = None

    @model_validator(mode="after")
    def _unique(self) -> SyncConfig:
        _require_unique([t.name for t in self.tasks], "tasks", "task")
        return self

    def task(self, name: str) -> SyncTask | None:
        return next((t for t in self.tasks if t.name == name), None)


def _shard(value: Any) -> ShardSpec | None:
    if value is None or isinstance(value, ShardSpec):
        return value
    if not isinstance(value, str):
        raise PydanticCustomError("shard_value", 'must be a string i/n, e.g. "2/3"')
    try:
        return parse_shard(value)
    except ValueError as exc:
        raise PydanticCustomError("shard_value", "{problem}", {"problem": str(exc)}) from None


SHARD_PLACEHOLDER = "{shard}"


class AdminConfig(_Strict):
    token: SecretStr | None = None
    token_file: Path | None = None

    @field_validator("token")
    @classmethod
    def _token(cls, v: SecretStr | None) -> SecretStr | None:
        if v is not None and not v.get_secret_value().strip():
            # an empty token would let in anyone who sends "Authorization: Bearer "
            raise PydanticCustomError(
                "token", "must not be empty (leave admin.token out to disable the admin API)"
            )
        return v


class Config(_Strict):
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
    shard: Annotated[ShardSpec | None, BeforeValidator(_shard)] = None

    @model_validator(mode="after")
    def _unique_groups(self) -> Config:
        _require_unique([g.name for g in self.groups], "groups", "group")
        if self.lag.offset_clock_window < 2 * self.poll.interval:
            raise PydanticCustomError(
                "lag_window",
                "lag.offset_clock_window: must be at least twice poll.interval (the offset "
                "clock needs two samples to tell a follower's age)",
            )
        problem = self.shard_problem(self.shard or WHOLE_FLEET)
        if problem is not None:
            raise PydanticCustomError("shard", problem)
        return self

    def shard_problem(self, spec: ShardSpec) -> str | None:
        """Why this config cannot run as shard `spec` ('path: reason'), or None. Several
        shards publishing one routing table would overwrite each other's: with n > 1 the
        publish key and channel must contain {shard}."""
        if spec.count > 1 and self.publish.url is not None:
            for field in ("key", "channel"):
                if SHARD_PLACEHOLDER not in getattr(self.publish, field):
                    return (
                        f"publish.{field}: must contain {SHARD_PLACEHOLDER} when the fleet is "
                        f"split into shards (shard {spec}): each shard publishes the routing "
                        f"table of its own groups, e.g. replwatch:routing:{SHARD_PLACEHOLDER}"
                    )
        return None

    def for_shard(self, spec: ShardSpec) -> Config:
        """This config as shard `spec` runs it: the groups and sync.tasks the shard owns,
        {shard} in publish.key / publish.channel replaced by "i-of-n", and `shard` set to
        `spec`. Call shard_problem(spec) first."""
        publish = self.publish.model_copy(
            update={
                "key": self.publish.key.replace(SHARD_PLACEHOLDER, spec.slug),
                "channel": self.publish.channel.replace(SHARD_PLACEHOLDER, spec.slug),
            }
        )
        sync = self.sync.model_copy(
            update={"tasks": [t for t in self.sync.tasks if owns(spec, t.name, "task")]}
        )
        return self.model_copy(
            update={
                "groups": [g for g in self.groups if owns(spec, g.name, "group")],
                "sync": sync,
                "publish": publish,
                "shard": spec,
            }
        )

    def nodes_of(self, group: GroupConfig) -> list[RedisEndpoint]:
        """The nodes the config lists (a Sentinel or cluster group's are discovered)."""
        return [] if group.master is None else [group.master, *group.replicas]

    def address_map_of(self, group: GroupConfig) -> dict[str, str]:
        return {**self.address_map, **group.address_map}

    def routing_of(self, group: GroupConfig) -> RoutingConfig:
        return group.routing or self.routing

    def probe_of(self, group: GroupConfig) -> ProbeConfig:
        return group.probe or self.probe


# --------------------------------------------------------------------------- loading

_ENV_RE = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")


def _interpolate(node: Any, path: str, env: Mapping[str, str], problems: list[str]) -> Any:
    if isinstance(node, str):

        def repl(m: re.Match[str]) -> str:
            name, default = m.group(1), m.group(2)
            if name in env:
                return env[name]
            if default is not None:
                return default
            problems.append(f"{path or '<root>'}: environment variable {name} is not set")
            return ""

        return _ENV_RE.sub(repl, node)
    if isinstance(node, dict):
        return {k: _interpolate(v, _join(path, str(k)), env, problems) for k, v in node.items()}
    if isinstance(node, list):
        return [_interpolate(v, f"{path}[{i}]", env, problems) for i, v in enumerate(node)]
    return node


def _join(path: str, key: str) -> str:
    return f"{path}.{key}" if path else key


def _loc_to_path(loc: tuple[int | str, ...]) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        elif str(part).startswith(("function-", "kind:")):
            continue  # validator steps and the tags of sync source forms: not config keys
        else:
            out = _join(out, str(part))
    return out or "<root>"


# error types of model-level checks whose message reads 'field: reason'
_FIELD_IN_MESSAGE = frozenset(
    (
        "poll",
        "dup",
        "routing",
        "probe",
        "dbmap",
        "group",
        "shard",
        "same",
        "source_timeout",
        "lease",
        "reconnect",
        "pair_flush",
        "pair_self",
        "heartbeat_ttl",
        "lag_window",
        "tls",
    )
)
# pydantic's wording that names Python types, in the words of a config file
_PLAIN_MESSAGES = {
    "model_type": "must be a mapping of settings (key: value)",
    "model_attributes_type": "must be a mapping of settings (key: value)",
    "path_type": "must be a file path (a string)",
}
_PLAIN_KEY_RE = re.compile(r"[A-Za-z0-9_.-]{1,64}")


def _format_errors(err: ValidationError, root: type[BaseModel] | None = None) -> list[str]:
    """One 'path: reason' line per error. `root`: the model validated (default Config), for
    the did-you-mean of unknown keys."""
    lines = []
    for e in err.errors(include_url=False, include_input=False):
        loc = tuple(e["loc"])
        path = _loc_to_path(loc)
        msg = e["msg"]
        # model-level checks carry 'field: reason' in their message
        if e["type"] in _FIELD_IN_MESSAGE and ": " in msg:
            field, _, msg = msg.partition(": ")
            path = _join(path if path != "<root>" else "", field)
        if msg.startswith("Value error, "):
            msg = msg[len("Value error, ") :]
        msg = _PLAIN_MESSAGES.get(e["type"], msg)
        if e["type"] == "extra_forbidden":
            key = str(loc[-1]) if loc else ""
            if not _PLAIN_KEY_RE.fullmatch(key):
                # e.g. `{password:hunter2}` (no space after ':') is one key holding a value
                path = _loc_to_path(loc[:-1])
                msg = (
                    "unknown key (not shown: it is not a plain name and may hold a value; "
                    "write key: value with a space after ':')"
                )
            else:
                msg = "unknown key" + _did_you_mean(key, _keys_at(root or Config, loc[:-1]))
        lines.append(f"{path}: {msg}")
    return lines


def _did_you_mean(key: str, known: set[str]) -> str:
    close = difflib.get_close_matches(key, sorted(known), n=1, cutoff=0.75)
    return f" (did you mean {close[0]}?)" if close else ""


def _models_in(annotation: Any) -> list[type[BaseModel]]:
    """The models a field's type holds (through list, dict, Optional, Annotated, unions)."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return [annotation]
    return [m for arg in get_args(annotation) for m in _models_in(arg)]


def _keys_at(root: type[BaseModel], loc: tuple[int | str, ...]) -> set[str]:
    """The keys allowed at `loc` (every form's, where a field takes several models)."""
    models = [root]
    for part in loc:
        if isinstance(part, int) or str(part).startswith(("function-", "kind:")):
            continue
        models = [
            found
            for model in models
            for name, field in model.model_fields.items()
            if part in (name, field.alias)
            for found in _models_in(field.annotation)
        ]
    return {field.alias or name for model in models for name, field in model.model_fields.items()}


_FIELD_PREFIX_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_.\[\]]*: ")


def sync_task_from_data(data: Any, where: str = "tasks") -> SyncTask:
    """Validate one task definition (an admin API body, a persisted task) with the SyncTask
    model. Raises ConfigError with `<where>.<field>: reason` lines. No ${ENV} interpolation:
    a task sent over the API must not read the daemon's environment."""
    if not isinstance(data, dict):
        raise ConfigError(where, [f"{where}: must be a mapping of task fields (name, source, …)"])
    try:
        task = SyncTask.model_validate(data)
    except ValidationError as exc:
        problems = []
        for line in _format_errors(exc, SyncTask):
            if line.startswith("<root>: "):
                rest = line[len("<root>: ") :]
                sep = "." if _FIELD_PREFIX_RE.match(rest) else ": "
                problems.append(f"{where}{sep}{rest}")
            else:
                problems.append(f"{where}.{line}")
        raise ConfigError(where, problems) from None
    file_fields = [
        f"{where}.{name}.password_file"
        for name in ("source_auth", "target_auth")
        if (auth := getattr(task, name)) is not None and auth.password_file is not None
    ]
    if file_fields:
        raise ConfigError(
            where,
            [
                f"{field}: not accepted here (the daemon would read a file of its own host); "
                "send the password, or define the task in the config file"
                for field in file_fields
            ],
        )
    return _apply_task_auth(task, where, [])


def _read_secret_file(path: Path, where: str, problems: list[str]) -> SecretStr | None:
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        problems.append(f"{where}: cannot read {path}: {exc.strerror or exc}")
        return None
    except UnicodeDecodeError:
        problems.append(f"{where}: {path} is not UTF-8 text")
        return None
    value = text.strip()
    if not value:
        problems.append(f"{where}: {path} is empty")
        return None
    return SecretStr(value)


def _resolve_auth(auth: Auth | None, where: str, problems: list[str]) -> Auth | None:
    """`auth` with its password_file read into password."""
    if auth is None or auth.password_file is None:
        return auth
    password = _read_secret_file(auth.password_file, f"{where}.password_file", problems)
    return auth.model_copy(update={"password": password, "password_file": None})


def _apply_auth(cfg: Config, problems: list[str]) -> Config:
    """Resolve group auth (password_file) into the endpoints that have no credentials; a
    Sentinel or cluster group keeps its resolved auth for the nodes it discovers."""
    groups = []
    for gi, group in enumerate(cfg.groups):
        update: dict[str, Any] = {}
        auth = _resolve_auth(group.auth, f"groups[{gi}].auth", problems)
        if auth is not group.auth:
            update["auth"] = auth
        if group.sentinel is not None and group.sentinel.auth is not None:
            sentinel_auth = _resolve_auth(
                group.sentinel.auth, f"groups[{gi}].sentinel.auth", problems
            )
            update["sentinel"] = group.sentinel.model_copy(update={"auth": sentinel_auth})
        if group.cluster is not None and group.cluster.auth is not None:
            cluster_auth = _resolve_auth(group.cluster.auth, f"groups[{gi}].cluster.auth", problems)
            update["cluster"] = group.cluster.model_copy(update={"auth": cluster_auth})
        if group.master is not None and auth is not None:
            update["master"] = group.master.with_credentials(auth.username, auth.password)
            update["replicas"] = [
                r.with_credentials(auth.username, auth.password) for r in group.replicas
            ]
        groups.append(group.model_copy(update=update) if update else group)
    admin = cfg.admin
    if admin.token_file is not None:
        token = _read_secret_file(admin.token_file, "admin.token_file", problems)
        admin = admin.model_copy(update={"token": token})
    publish = cfg.publish
    publish_auth = _resolve_auth(publish.auth, "publish.auth", problems)
    if publish.url is not None and publish_auth is not None:
        publish = publish.model_copy(
            update={
                "url": publish.url.with_credentials(publish_auth.username, publish_auth.password),
                "auth": publish_auth,
            }
        )
    tasks = [
        _apply_task_auth(task, f"sync.tasks[{ti}]", problems)
        for ti, task in enumerate(cfg.sync.tasks)
    ]
    return cfg.model_copy(
        update={
            "groups": groups,
            "admin": admin,
            "publish": publish,
            "sync": cfg.sync.model_copy(update={"tasks": tasks}),
        }
    )


def _with_auth(endpoint: Any, auth: Auth | None) -> Any:
    """A sync source/target (URL endpoint, Sentinel, Cluster) with `auth`'s credentials
    where it has no password of its own."""
    if auth is None or auth.password is None or endpoint.password is not None:
        return endpoint
    return endpoint.model_copy(
        update={"username": endpoint.username or auth.username, "password": auth.password}
    )


def _apply_task_auth(task: SyncTask, where: str, problems: list[str]) -> SyncTask:
    """A task's source_auth / target_auth (password_file read) put into its endpoints."""
    source_auth = _resolve_auth(task.source_auth, f"{where}.source_auth", problems)
    target_auth = _resolve_auth(task.target_auth, f"{where}.target_auth", problems)
    if source_auth is None and target_auth is None:
        return task
    return task.model_copy(
        update={
            "source": _with_auth(task.source, source_auth),
            "target": _with_auth(task.target, target_auth),
            "source_auth": source_auth,
            "target_auth": target_auth,
        }
    )


def _check_tls(tls: TLSConfig | None, where: str, problems: list[str]) -> None:
    """The files a `tls:` block names exist and load (an unreadable CA or a key that does
    not match its certificate is a config error now, not a failed handshake per poll)."""
    if tls is None:
        return
    for field in ("ca_file", "cert_file", "key_file"):
        path = getattr(tls, field)
        if path is None:
            continue
        try:
            with Path(path).open("rb"):
                pass
        except OSError as exc:
            problems.append(f"{where}.{field}: cannot read {path}: {exc.strerror or exc}")
            return
    context = ssl.create_default_context()
    if tls.ca_file is not None:
        try:
            context.load_verify_locations(cafile=str(tls.ca_file))
        except (ssl.SSLError, ValueError):
            problems.append(f"{where}.ca_file: {tls.ca_file} holds no PEM certificate")
            return
    if tls.cert_file is not None:
        try:
            context.load_cert_chain(str(tls.cert_file), str(tls.key_file) if tls.key_file else None)
        except (ssl.SSLError, ValueError):
            problems.append(
                f"{where}.cert_file: {tls.cert_file} is not a PEM certificate with its key "
                "(or key_file does not match it)"
            )


def _check_tls_files(cfg: Config, problems: list[str]) -> None:
    if cfg.exporter.web_config is not None:
        try:
            load_web_config(cfg.exporter.web_config)
        except ConfigError as exc:
            problems.append(f"exporter.web_config: {exc}")
    _check_tls(cfg.tls, "tls", problems)
    _check_tls(cfg.publish.tls, "publish.tls", problems)
    for gi, group in enumerate(cfg.groups):
        _check_tls(group.tls, f"groups[{gi}].tls", problems)
    for ti, task in enumerate(cfg.sync.tasks):
        _check_tls(task.tls, f"sync.tasks[{ti}].tls", problems)


def config_from_data(
    data: Any, source: str = "<config>", env: Mapping[str, str] | None = None
) -> Config:
    """Validate already-parsed YAML data. Raises ConfigError listing every problem."""
    problems: list[str] = []
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(source, ["<root>: must be a mapping of sections (exporter, groups, …)"])
    data = _interpolate(data, "", os.environ if env is None else env, problems)
    try:
        cfg = Config.model_validate(data)
    except ValidationError as exc:
        problems.extend(_format_errors(exc))
        raise ConfigError(source, problems) from None
    if problems:
        raise ConfigError(source, problems)
    cfg = _apply_auth(cfg, problems)
    _check_tls_files(cfg, problems)
    if problems:
        raise ConfigError(source, problems)
    return cfg


def load_config(path: str | Path, env: Mapping[str, str] | None = None) -> Config:
    source = str(path)
    data = parse_yaml(read_config_text(path), source)
    return config_from_data(data, source, env)


def apply_shard(cfg: Config, source: str, shard: str | None = None) -> Config:
    """The config as one shard runs it: `shard` ("i/n", from --shard) wins over the config's
    `shard`; neither means the whole fleet (1/1). ConfigError: a bad --shard value (source
    "--shard"), or a config that cannot be split (publish.key without {shard})."""
    spec = cfg.shard or WHOLE_FLEET
    if shard is not None:
        try:
            spec = parse_shard(shard)
        except ValueError as exc:
            raise ConfigError("--shard", [str(exc)]) from None
    problem = cfg.shard_problem(spec)
    if problem is not None:
        raise ConfigError(source, [problem])
    return cfg.for_shard(spec)


def iter_secrets(cfg: Config) -> Iterator[str]:
    """Every secret value in the config, each once (for tests that search outputs for
    leaks)."""
    seen: set[str] = set()
    for secret in _all_secrets(cfg):
        if secret not in seen:
            seen.add(secret)
            yield secret


def _all_secrets(cfg: Config) -> Iterator[str]:
    for group in cfg.groups:
        endpoints = list(cfg.nodes_of(group))
        auths = [group.auth]
        if group.sentinel is not None:
            endpoints += group.sentinel.addresses
            auths.append(group.sentinel.auth)
        if group.cluster is not None:
            endpoints += group.cluster.startup_nodes
            auths.append(group.cluster.auth)
        for ep in endpoints:
            if ep.password is not None:
                yield ep.password.get_secret_value()
        for auth in auths:
            if auth is not None and auth.password is not None:
                yield auth.password.get_secret_value()
    for task in cfg.sync.tasks:
        for side in (task.source, task.target):
            if side.password is not None:
                yield side.password.get_secret_value()
        if isinstance(task.source, SentinelSource):
            for ep in task.source.sentinel.nodes():
                if ep.password is not None:
                    yield ep.password.get_secret_value()
        if isinstance(task.source, ClusterSource):
            for ep in task.source.cluster.startup_nodes:
                if ep.password is not None:
                    yield ep.password.get_secret_value()
        if isinstance(task.target, ClusterTarget):
            for ep in task.target.cluster.startup_nodes:
                if ep.password is not None:
                    yield ep.password.get_secret_value()
    if cfg.admin.token is not None:
        yield cfg.admin.token.get_secret_value()


Role = Literal["master", "replica"]
