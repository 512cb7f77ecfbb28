"""The admin API under /api/v1/: routing, token check, JSON in and out. No I/O of its own: it
calls the daemon's task lifecycle (replwatch/tasks/lifecycle.py), which the HTTP server hands
it; the HTTP server (replwatch/exporter/server.py) only passes requests through.

    GET    /api/v1/tasks                   every task                     200 {"tasks": [...]}
    POST   /api/v1/tasks                   create one (JSON/YAML body)    201 {"task": {...}}
    GET    /api/v1/tasks/<name>            one task's status              200 {"task": {...}}
    DELETE /api/v1/tasks/<name>[?purge=1]  stop and forget it             200 {"removed": ...}
    POST   /api/v1/tasks/<name>/start      start ({"afresh": true} or ?afresh=1)
    POST   /api/v1/tasks/<name>/stop       stop (SIGTERM; returns when the process is gone)

Every call needs `Authorization: Bearer <admin.token>` (or `X-Replwatch-Token:
<admin.token>` when the web config's basic auth takes the Authorization header): 401 without
it or with another token
(compared in constant time), and nothing changes. Without admin.token / admin.token_file in
the config the API is disabled: every call answers 403 saying how to enable it. Errors are
`{"error": "<one line>"}`: 400 bad body or task definition (the field named), 404 unknown
task or endpoint, 405 wrong method, 409 a conflict (name taken, task of config.yaml).
"""

from __future__ import annotations

import hmac
import json
import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol
from urllib.parse import parse_qs, unquote

import yaml
from pydantic import SecretStr

from replwatch.errors import ReplwatchError

log = logging.getLogger("replwatch.admin")

PREFIX = "/api/v1/"
MAX_BODY = 1024 * 1024
DISABLED_MESSAGE = (
    "the admin API is disabled: set admin.token or admin.token_file in the config and "
    "restart replwatch run"
)
_TRUE = frozenset({"1", "true", "yes", "on"})
_FALSE = frozenset({"0", "false", "no", "off", ""})


class Lifecycle(Protocol):
    """What the API needs of the task lifecycle (replwatch.tasks.lifecycle.TaskLifecycle)."""

    def list_tasks(self) -> list[dict[str, Any]]: ...
    def task_status(self, name: str) -> dict[str, Any]: ...
    def create(self, body: Any) -> dict[str, Any]: ...
    def start(self, name: str, afresh: bool = False) -> dict[str, Any]: ...
    def stop(self, name: str) -> dict[str, Any]: ...
    def remove(self, name: str, purge: bool = False) -> dict[str, Any]: ...


@dataclass(frozen=True)
class Response:
    status: int
    body: Mapping[str, Any]
    headers: Mapping[str, str] = field(default_factory=dict)


class _Refused(Exception):
    def __init__(self, status: int, message: str, headers: Mapping[str, str] | None = None):
        super().__init__(message)
        self.status = status
        self.headers = dict(headers or {})


def token_matches(authorization: str | None, token: SecretStr | None) -> bool:
    """`Authorization: Bearer <token>` against the configured token, in constant time. False
    without a configured token, without the header or with another scheme."""
    if token is None or not authorization:
        return False
    scheme, _, given = authorization.strip().partition(" ")
    if scheme.lower() != "bearer":
        return False
    return hmac.compare_digest(given.strip().encode(), token.get_secret_value().encode())


def parse_flag(query: Mapping[str, list[str]], body: Any, name: str) -> bool:
    """A boolean option from ?name=1 or a JSON body {"name": true}."""
    if name in query:
        text = query[name][-1].strip().lower()
        if text in _TRUE:
            return True
        if text in _FALSE:
            return False
        raise _Refused(400, f"?{name}: must be 1 or 0 (true or false)")
    if isinstance(body, dict) and name in body:
        value = body[name]
        if not isinstance(value, bool):
            raise _Refused(400, f"{name}: must be true or false")
        return value
    return False


def parse_body(raw: bytes, content_type: str | None) -> Any:
    """The request body as data: JSON, or YAML (for a YAML content type, or when it is not
    JSON). None for an empty body."""
    if not raw.strip():
        return None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise _Refused(400, "body: must be UTF-8 JSON or YAML") from None
    if "yaml" not in (content_type or ""):
        try:
            return json.loads(text)
        except ValueError:
            pass
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError:
        raise _Refused(400, "body: not valid JSON or YAML") from None


class AdminAPI:
    """Handles one request under /api/v1/. `lifecycle` None: the daemon runs without a config
    file (no task processes), every task call answers 503."""

    def __init__(self, token: SecretStr | None, lifecycle: Lifecycle | None) -> None:
        self.token = token
        self.lifecycle = lifecycle

    def handle(
        self,
        method: str,
        target: str,
        authorization: str | None,
        body: bytes,
        content_type: str | None = None,
    ) -> Response:
        path, _, query_text = target.partition("?")
        try:
            if self.token is None:
                raise _Refused(403, DISABLED_MESSAGE)
            if not token_matches(authorization, self.token):
                raise _Refused(
                    401,
                    "missing or wrong admin token: send Authorization: Bearer <admin.token> "
                    "(or X-Replwatch-Token: <admin.token> behind basic auth)",
                    {"WWW-Authenticate": 'Bearer realm="replwatch"'},
                )
            query = parse_qs(query_text, keep_blank_values=True)
            status, data = self._route(method, path, query, body, content_type)
            return Response(status, data)
        except _Refused as exc:
            return Response(exc.status, {"error": str(exc)}, exc.headers)
        except ReplwatchError as exc:
            status = getattr(exc, "status", 500)
            if status >= 500:
                log.error("admin API %s %s: %s", method, path, exc)
            return Response(status, {"error": str(exc)})

    def _route(
        self,
        method: str,
        path: str,
        query: Mapping[str, list[str]],
        raw: bytes,
        content_type: str | None,
    ) -> tuple[int, Mapping[str, Any]]:
        parts = [unquote(p) for p in path[len(PREFIX) :].strip("/").split("/")]
        if not parts or parts[0] != "tasks" or len(parts) > 3:
            raise _Refused(404, f"no such endpoint: {path}")
        lifecycle = self.lifecycle
        if lifecycle is None:
            raise _Refused(503, "sync tasks need replwatch run -c <config file>")
        if len(parts) == 1:
            if method in ("GET", "HEAD"):
                return 200, {"tasks": lifecycle.list_tasks()}
            if method == "POST":
                return 201, {"task": lifecycle.create(parse_body(raw, content_type))}
            raise _Refused(405, f"{method} not allowed on /api/v1/tasks (GET, POST)")
        name = parts[1]
        if len(parts) == 2:
            if method in ("GET", "HEAD"):
                return 200, {"task": lifecycle.task_status(name)}
            if method == "DELETE":
                return 200, lifecycle.remove(name, purge=parse_flag(query, None, "purge"))
            raise _Refused(405, f"{method} not allowed on /api/v1/tasks/<name> (GET, DELETE)")
        action = parts[2]
        if action not in ("start", "stop"):
            raise _Refused(404, f"no such endpoint: {path} (use start or stop)")
        if method != "POST":
            raise _Refused(405, f"{method} not allowed on /api/v1/tasks/<name>/{action} (POST)")
        if action == "stop":
            return 200, {"task": lifecycle.stop(name)}
        body = parse_body(raw, content_type)
        if body is not None and not isinstance(body, dict):
            raise _Refused(400, 'body: must be a JSON object like {"afresh": true}')
        unknown = sorted(set(body or {}) - {"afresh"})
        if unknown:
            raise _Refused(400, f"{unknown[0]}: unknown key (start takes afresh)")
        return 200, {"task": lifecycle.start(name, afresh=parse_flag(query, body, "afresh"))}
