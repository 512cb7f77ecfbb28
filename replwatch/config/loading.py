"""From a file (or parsed data) to a Config: read and parse the YAML, interpolate ${ENV},
validate, read password and token files, check the TLS files; or one sync task from the
admin API. Every problem found is one `path: reason` line of a single ConfigError; a valid
file may come with advice (read_config: secrets written as plain text). Also the config as
one shard of a split fleet runs it (apply_shard)."""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from replwatch.config.advice import plain_secrets
from replwatch.config.file_checks import check_files
from replwatch.config.interpolation import interpolate
from replwatch.config.problems import format_errors, problems_under
from replwatch.config.root import Config
from replwatch.config.secrets import apply_auth, apply_task_auth
from replwatch.config.sharding import SHARD_PLACEHOLDER, shard_problem
from replwatch.config.sync import SyncTask
from replwatch.config.yaml_file import parse_yaml, read_config_text
from replwatch.errors import ConfigError
from replwatch.topology.sharding import WHOLE_FLEET, ShardSpec, owns, parse_shard


def sync_task_from_data(data: Any, where: str = "tasks") -> SyncTask:
    """Validate one task definition (an admin API body, a persisted task) with the SyncTask
    model. Raises ConfigError with `<where>.<field>: reason` lines. No ${ENV} interpolation:
    a task sent over the API must not read the daemon's environment."""
    if not isinstance(data, dict):
        raise ConfigError(where, [f"{where}: must be a mapping of task fields (name, source, …)"])
    try:
        task = SyncTask.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(where, problems_under(where, format_errors(exc, SyncTask))) from None
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
    return apply_task_auth(task, where, [])


def config_from_data(
    data: Any, source: str = "<config>", env: Mapping[str, str] | None = None
) -> Config:
    """Validate already-parsed YAML data. Raises ConfigError listing every problem."""
    problems: list[str] = []
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(source, ["<root>: must be a mapping of sections (exporter, groups, …)"])
    data = interpolate(data, "", os.environ if env is None else env, problems)
    try:
        cfg = Config.model_validate(data)
    except ValidationError as exc:
        # a value left empty by an unset ${VAR} is that variable's problem, reported already
        unset = {problem.partition(": ")[0] for problem in problems}
        problems.extend(
            line for line in format_errors(exc, Config) if line.partition(": ")[0] not in unset
        )
        raise ConfigError(source, problems) from None
    if problems:
        raise ConfigError(source, problems)
    cfg = apply_auth(cfg, problems)
    check_files(cfg, problems)
    if problems:
        raise ConfigError(source, problems)
    return cfg


def load_config(path: str | Path, env: Mapping[str, str] | None = None) -> Config:
    return read_config(path, env)[0]


def read_config(path: str | Path, env: Mapping[str, str] | None = None) -> tuple[Config, list[str]]:
    """The config in the file at `path`, and the advice on it ('path: reason' lines: the
    secrets written there as plain text; advice.py). ConfigError: every problem."""
    source = str(path)
    data = parse_yaml(read_config_text(path), source)
    return config_from_data(data, source, env), plain_secrets(data)


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
    problem = shard_problem(cfg.publish, spec)
    if problem is not None:
        raise ConfigError(source, [problem])
    return _for_shard(cfg, spec)


def _for_shard(cfg: Config, spec: ShardSpec) -> Config:
    """`cfg` as shard `spec` runs it: the groups and sync.tasks the shard owns, {shard} in
    publish.key / publish.channel replaced by "i-of-n", and `shard` set to `spec`. Call
    shard_problem first."""
    publish = cfg.publish.model_copy(
        update={
            "key": cfg.publish.key.replace(SHARD_PLACEHOLDER, spec.slug),
            "channel": cfg.publish.channel.replace(SHARD_PLACEHOLDER, spec.slug),
        }
    )
    sync = cfg.sync.model_copy(
        update={"tasks": [t for t in cfg.sync.tasks if owns(spec, t.name, "task")]}
    )
    return cfg.model_copy(
        update={
            "groups": [g for g in cfg.groups if owns(spec, g.name, "group")],
            "sync": sync,
            "publish": publish,
            "shard": spec,
        }
    )
