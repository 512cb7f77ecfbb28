"""Advice on a valid config: every secret written in the file as plain text (a password in a
URL or an auth block, admin.token), one `path: reason` line each, with where else it can
come from (password_file / token_file, or ${ENV}). Only the file as written counts: a value
that comes from ${ENV} is not plain text. The secret itself is never shown. Pure: it reads
the parsed YAML before interpolation.

`replwatch check-config` prints these as warnings (the config is still valid) and `replwatch
run` logs them once at start."""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from replwatch.config.endpoints import ENDPOINT_FIELDS

_ENV = "an environment variable (${NAME})"


def _alternative(path: str) -> str:
    """Where the secret at `path` can come from instead of the file's text."""
    if re.search(r"(^|\.)(auth|source_auth|target_auth)\.password$", path):
        return f"password_file: in the same block, or {_ENV}"
    side = re.match(r"^sync\.tasks\[\d+\]\.(source|target)", path)
    if side and ".sentinel." not in path:
        return f"{side.group(1)}_auth: {{password_file: …}}, or {_ENV}"
    block = re.match(r"^groups\[\d+\]\.(sentinel|cluster)\.", path)
    if block:
        return f"{block.group(1)}.auth: {{password_file: …}}, or {_ENV}"
    if path.startswith("groups["):
        return f"the group's auth: {{password_file: …}}, or {_ENV}"
    if path.startswith("publish."):
        return f"publish.auth: {{password_file: …}}, or {_ENV}"
    return _ENV


def plain_secrets(data: Any) -> list[str]:
    """One 'path: reason' line per secret written as plain text in `data` (the config file
    as parsed, before ${ENV} interpolation)."""
    found: list[str] = []
    _walk(data, "", "", found)
    return found


def _walk(node: Any, path: str, field: str, found: list[str]) -> None:
    if isinstance(node, Mapping):
        for key, value in node.items():
            name = str(key)
            where = f"{path}.{name}" if path else name
            if isinstance(value, str) and _is_plain(value):
                if name == "password":
                    found.append(
                        f"{where}: a password written in plain text; keep it out of the file "
                        f"with {_alternative(where)}"
                    )
                    continue
                if name == "token" and path == "admin":
                    found.append(
                        f"{where}: the admin token is written in plain text; keep it out of the "
                        f"file with admin.token_file, or {_ENV}"
                    )
                    continue
            _walk(value, where, name, found)
    elif isinstance(node, list):
        for i, item in enumerate(node):
            _walk(item, f"{path}[{i}]", field, found)
    elif isinstance(node, str) and field in ENDPOINT_FIELDS and _url_password_is_plain(node):
        found.append(
            f"{path}: the URL holds a password in plain text; keep it out of the file with "
            f"{_alternative(path)}"
        )


def _is_plain(value: str) -> bool:
    """A secret given as written: not empty, not (even partly) from ${ENV}."""
    return bool(value.strip()) and "${" not in value


def _url_password_is_plain(address: str) -> bool:
    """The address (a URL or host:port form) carries a password as plain text."""
    after_scheme = address.strip().partition("://")[2] or address.strip()
    credentials, at, _ = after_scheme.rpartition("@")
    password = credentials.partition(":")[2]
    return bool(at) and _is_plain(password)
