"""Credentials put where they are used: password_file and token_file read (at load and reload;
a problem names the file's config path, never its content), an `auth:` block's credentials
given to the endpoints that have none of their own, and every secret of a config listed
(iter_secrets, for tests that search outputs for leaks)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

from pydantic import SecretStr

from replwatch.config.endpoints import Auth, with_credentials
from replwatch.config.root import Config
from replwatch.config.sync import SyncTask
from replwatch.config.sync_endpoints import (
    ClusterSource,
    ClusterTarget,
    SentinelSource,
    source_sentinels,
)


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


def apply_auth(cfg: Config, problems: list[str]) -> Config:
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
            update["master"] = with_credentials(group.master, auth.username, auth.password)
            update["replicas"] = [
                with_credentials(r, auth.username, auth.password) for r in group.replicas
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
                "url": with_credentials(publish.url, publish_auth.username, publish_auth.password),
                "auth": publish_auth,
            }
        )
    tasks = [
        apply_task_auth(task, f"sync.tasks[{ti}]", problems)
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


def apply_task_auth(task: SyncTask, where: str, problems: list[str]) -> SyncTask:
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
            for ep in source_sentinels(task.source.sentinel):
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
