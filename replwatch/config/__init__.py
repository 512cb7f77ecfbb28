"""Typed, validated configuration.

Every problem is reported as ``path: reason`` (``groups[1].replicas[0]: port must be 1-65535``);
secrets are SecretStr and never appear in reprs, errors or logs.

This module is the package's public surface: the names the rest of replwatch uses. Inside
the package each module imports the others directly (never this one), downward only:

    schema      wording (pydantic's messages in a config file's words), base (strict model
                base, every model check in one pass), units (durations, sizes)
                endpoints (Redis URLs and the node address rule, credentials, TLS settings,
                host:port forms)
                monitor (exporter, poll, heartbeat, lag, routing, probe, publish),
                groups (which Redis are watched), sync_endpoints (a sync task's source and
                target forms), sync (the task, its filters), admin, sharding (the shard:
                value and its publish check)
                root (Config: the whole file and its cross-section checks)
    reading     problems (ValidationError -> `path: reason` lines), interpolation (${ENV}),
                yaml_file (the guarded YAML reader), web (the exporter's web config file),
                advice (secrets written as plain text)
    loading     secrets (password/token files, auth applied, iter_secrets), file_checks
                (TLS files load), loading (file -> Config, a task from the admin API, a shard)

Config objects are data: their properties and lookups (label, redacted_url, routing_of,
SyncConfig.task) only read what they hold; what builds something from them (tls_over,
with_credentials, node_at, group_sentinels, source_sentinels) is a function of the module
that owns the type.
"""

from replwatch.config.endpoints import (
    RedisEndpoint,
    TLSConfig,
    parse_host_port,
    parse_redis_url,
    tls_over,
    with_credentials,
)
from replwatch.config.groups import GroupConfig, group_sentinels
from replwatch.config.loading import (
    apply_shard,
    config_from_data,
    load_config,
    read_config,
    sync_task_from_data,
)
from replwatch.config.monitor import (
    HeartbeatConfig,
    LagConfig,
    PollConfig,
    ProbeConfig,
    PublishConfig,
    RoutingConfig,
)
from replwatch.config.root import Config
from replwatch.config.secrets import iter_secrets
from replwatch.config.sync import SyncTask
from replwatch.config.sync_endpoints import (
    ClusterSource,
    ClusterTarget,
    SentinelSource,
    SyncSource,
    node_at,
    source_sentinels,
)
from replwatch.config.units import parse_duration, parse_size
from replwatch.errors import ConfigError  # what load_config and config_from_data raise

__all__ = [
    "ClusterSource",
    "ClusterTarget",
    "Config",
    "ConfigError",
    "GroupConfig",
    "HeartbeatConfig",
    "LagConfig",
    "PollConfig",
    "ProbeConfig",
    "PublishConfig",
    "RedisEndpoint",
    "RoutingConfig",
    "SentinelSource",
    "SyncSource",
    "SyncTask",
    "TLSConfig",
    "apply_shard",
    "config_from_data",
    "group_sentinels",
    "iter_secrets",
    "load_config",
    "node_at",
    "parse_duration",
    "parse_host_port",
    "parse_redis_url",
    "parse_size",
    "read_config",
    "source_sentinels",
    "sync_task_from_data",
    "tls_over",
    "with_credentials",
]
