"""Typed, validated configuration.

Every problem is reported as ``path: reason`` (``groups[1].replicas[0]: port must be 1-65535``);
secrets are SecretStr and never appear in reprs, errors or logs.

This module is the package's public surface: the names the rest of replwatch uses. Inside
the package each module imports the others directly, layered bottom to top:

    base, units          the strict model base; durations and sizes
    endpoints            Redis URLs, credentials, TLS settings, host:port forms
    monitor, groups      the monitor's sections; which Redis it watches
    sync_endpoints, sync a sync task's source and target forms; the task and its filters
    admin, sharding      the admin API's token; the `shard:` value and its publish check
    root                 Config, the whole file, and its cross-section checks
    problems             ValidationError → `path: reason` lines, did-you-mean
    interpolation        ${ENV} in parsed data
    yaml_file, web       the guarded YAML reader; the exporter's web config file
    secrets, file_checks password/token files and auth applied; TLS files checked
    loading              file → Config; one sync task from the admin API; apply_shard

Config objects are data: their properties and *_of lookups only read what they hold; what
builds something from them (tls_over, with_credentials, node_at, the *_sentinels lists) is a
function of the module that owns the type.
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
    "source_sentinels",
    "sync_task_from_data",
    "tls_over",
    "with_credentials",
]
