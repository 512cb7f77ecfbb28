"""The CLI's side of the admin API: where the daemon is, its token, one request.

Address and token, first found wins, each on its own: the `--url` / `--token` flags, then
the environment (REPLWATCH_URL, REPLWATCH_TOKEN), then a client config file (`--client-config
FILE`, default $XDG_CONFIG_HOME/replwatch/client.yaml, i.e. ~/.config/replwatch/client.yaml)
with the keys url, token and token_file. For a daemon behind its web config (TLS, basic
auth) the client config also takes ca_file (the CA of the daemon's certificate), username
and password_file (REPLWATCH_USERNAME / REPLWATCH_PASSWORD in the environment); with basic
auth the token travels in X-Replwatch-Token.

Every call of the admin API needs the token, reads (`sync status`, `sync list`) included: the
task records hold the tasks' definitions. A refusal says what to do: no token sent (401):
pass --token or set REPLWATCH_TOKEN; the daemon's admin API disabled (403): it has no
admin.token (`sync status -c FILE` polls the tasks without the daemon).

Errors are ClientError: one line, and the exit status the command should end with: 2 for
bad input (no or a malformed address, an unreadable client config, 400 a bad definition,
404 an unknown task), 1 when the daemon refused or failed.
"""

from __future__ import annotations

import base64
import json
import os
import ssl
import urllib.error
import urllib.request
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from replwatch.config.yaml_file import parse_yaml
from replwatch.errors import ConfigError, ReplwatchError

ENV_URL = "REPLWATCH_URL"
ENV_TOKEN = "REPLWATCH_TOKEN"
DEFAULT_TIMEOUT = 60.0  # a stop waits for the task's batch

EXIT_OK = 0
EXIT_FAILURE = 1  # the daemon refused or failed: unreachable, 401, 403, 409, 5xx
EXIT_USAGE = 2  # bad input: no or a malformed address, unreadable task file, 400, 404


class ClientError(ReplwatchError):
    """One line; `exit_code` for the command, `status` the daemon's HTTP answer if any."""

    def __init__(
        self, message: str, exit_code: int = EXIT_FAILURE, status: int | None = None
    ) -> None:
        super().__init__(message)
        self.exit_code = exit_code
        self.status = status


def default_client_config(env: Mapping[str, str]) -> Path:
    base = env.get("XDG_CONFIG_HOME") or str(Path(env.get("HOME", "~")) / ".config")
    return Path(base).expanduser() / "replwatch" / "client.yaml"


ENV_USERNAME = "REPLWATCH_USERNAME"
ENV_PASSWORD = "REPLWATCH_PASSWORD"
CLIENT_KEYS = ("url", "token", "token_file", "ca_file", "username", "password_file")


@dataclass(frozen=True)
class ClientSettings:
    url: str | None
    token: str | None
    ca_file: str | None = None
    username: str | None = None
    password: str | None = None
    url_from: str = "--url"  # where the address came from (errors name it)


def _read_client_config(path: Path, explicit: bool) -> dict[str, Any]:
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        if explicit:
            raise ClientError(f"--client-config: {path}: no such file", EXIT_USAGE) from None
        return {}
    except OSError as exc:
        raise ClientError(f"{path}: cannot read: {exc.strerror or exc}", EXIT_USAGE) from None
    try:
        # guarded like the daemon's config: no alias bombs, no deep nesting, no key twice
        data = parse_yaml(text, str(path))
    except ConfigError as exc:
        raise ClientError(str(exc), EXIT_USAGE) from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ClientError(f"{path}: must be a mapping ({', '.join(CLIENT_KEYS)})", EXIT_USAGE)
    unknown = sorted(set(data) - set(CLIENT_KEYS))
    if unknown:
        raise ClientError(f"{path}: {unknown[0]}: unknown key ({', '.join(CLIENT_KEYS)})", 2)
    for key in CLIENT_KEYS:
        if key in data and not isinstance(data[key], str):
            raise ClientError(f"{path}: {key}: must be a string", EXIT_USAGE)
    return data


def _read_token_file(path: Path, where: str) -> str:
    try:
        token = path.expanduser().read_text(encoding="utf-8").strip()
    except OSError as exc:
        raise ClientError(f"{where}: cannot read {path}: {exc.strerror or exc}", 2) from None
    if not token:
        raise ClientError(f"{where}: {path} is empty", EXIT_USAGE)
    return token


def resolve_settings(
    url: str | None,
    token: str | None,
    client_config: str | None,
    env: Mapping[str, str],
) -> ClientSettings:
    """Flags, then environment, then the client config file (read only when needed)."""
    url_from = "--url" if url else ENV_URL
    url = url or env.get(ENV_URL) or None
    token = token or env.get(ENV_TOKEN) or None
    username = env.get(ENV_USERNAME) or None
    password = env.get(ENV_PASSWORD) or None
    ca_file = None
    path = Path(client_config) if client_config else default_client_config(env)
    data = _read_client_config(path, explicit=client_config is not None)
    if not url:
        url_from = f"{path}: url"
    url = url or data.get("url") or None
    if token is None and data.get("token"):
        token = data["token"]
    elif token is None and data.get("token_file"):
        token = _read_token_file(Path(data["token_file"]), f"{path}: token_file")
    ca_file = data.get("ca_file") or None
    username = username or data.get("username") or None
    if password is None and data.get("password_file"):
        password = _read_token_file(Path(data["password_file"]), f"{path}: password_file")
    return ClientSettings(
        url.rstrip("/") if url else None, token, ca_file, username, password, url_from
    )


_USE_URL = "use http://host:port or https://host:port (port 1-65535), e.g. http://127.0.0.1:9750"


def check_url(url: str, where: str) -> None:
    """The daemon's address must be http(s)://host[:port] without credentials in it;
    ClientError (usage, naming `where`) otherwise. A URL with a password is not shown."""
    try:
        parts = urlsplit(url)
    except ValueError:  # e.g. an unclosed [IPv6 address: not shown, it may hold a password
        raise ClientError(f"{where}: not a daemon address: {_USE_URL}", EXIT_USAGE) from None
    if "@" in parts.netloc:
        raise ClientError(
            f"{where}: put no user or password in the address: username and password_file "
            f"go in the client config (or {ENV_USERNAME} / {ENV_PASSWORD})",
            EXIT_USAGE,
        )
    try:
        port = parts.port
    except ValueError:
        port = 0
    if parts.scheme not in ("http", "https") or not parts.hostname or port == 0:
        raise ClientError(f"{where}: {url!r} is not a daemon address: {_USE_URL}", EXIT_USAGE)


def has_daemon_address(url: str | None, client_config: str | None, env: Mapping[str, str]) -> bool:
    """Whether a daemon address is given anywhere (flag, env, client config file)."""
    if url or env.get(ENV_URL):
        return True
    path = Path(client_config) if client_config else default_client_config(env)
    try:
        return bool(_read_client_config(path, explicit=client_config is not None).get("url"))
    except ClientError:
        return client_config is not None  # let the request path report the problem


class AdminClient:
    def __init__(self, settings: ClientSettings, timeout: float = DEFAULT_TIMEOUT) -> None:
        if not settings.url:
            raise ClientError(
                f"no daemon address: pass --url, set {ENV_URL} or put url: in "
                f"{default_client_config(os.environ)}",
                EXIT_USAGE,
            )
        check_url(settings.url, settings.url_from)
        self.url = settings.url
        self.token = settings.token
        self.timeout = timeout
        self.basic = settings
        self.context: ssl.SSLContext | None = None
        if settings.ca_file:
            try:
                self.context = ssl.create_default_context(cafile=settings.ca_file)
            except (OSError, ssl.SSLError):
                raise ClientError(
                    f"ca_file: cannot load a CA certificate from {settings.ca_file}", EXIT_USAGE
                ) from None

    def request(self, method: str, path: str, body: Any = None) -> Any:
        """The decoded JSON answer of a 2xx; ClientError (one line) otherwise."""
        data = None if body is None else json.dumps(body, default=str).encode()
        req = urllib.request.Request(self.url + path, data=data, method=method)
        if data is not None:
            req.add_header("Content-Type", "application/json")
        basic = self.basic
        if basic.username is not None and basic.password is not None:
            pair = f"{basic.username}:{basic.password}".encode()
            req.add_header("Authorization", "Basic " + base64.b64encode(pair).decode())
            if self.token:
                req.add_header("X-Replwatch-Token", self.token)
        elif self.token:
            req.add_header("Authorization", f"Bearer {self.token}")
        try:
            with urllib.request.urlopen(req, timeout=self.timeout, context=self.context) as resp:
                return json.loads(resp.read() or b"{}")
        except urllib.error.HTTPError as exc:
            challenge = exc.headers.get("WWW-Authenticate", "") if exc.headers else ""
            raise self._refused(exc.code, exc.read(), challenge) from None
        except (urllib.error.URLError, OSError) as exc:
            reason = getattr(exc, "reason", exc)
            raise ClientError(f"cannot reach the daemon at {self.url}: {reason}") from None
        except ValueError:
            raise ClientError(f"the daemon at {self.url} answered no JSON") from None

    def _refused(self, status: int, raw: bytes, challenge: str = "") -> ClientError:
        try:
            message = str(json.loads(raw).get("error") or "")
        except (ValueError, AttributeError):
            message = ""
        message = message or raw.decode("utf-8", "replace").strip()[:200] or f"HTTP {status}"
        if status == 401 and challenge.lower().startswith("basic"):
            # the web config's basic auth refused the request before the token was looked at
            basic = self.basic
            what = (
                "refused the basic-auth credentials"
                if basic.username is not None and basic.password is not None
                else "needs basic-auth credentials (its web config)"
            )
            return ClientError(
                f"the daemon at {self.url} {what} (401): username and password_file in the "
                f"client config, or {ENV_USERNAME} / {ENV_PASSWORD}",
                status=status,
            )
        if status == 401 and not self.token:
            return ClientError(
                f"the daemon at {self.url}: no token was sent, and its admin API needs one "
                f"for every call, reads included (401): pass --token or set {ENV_TOKEN} (or "
                "token_file: in the client config)",
                status=status,
            )
        if status == 401:
            return ClientError(
                f"the daemon at {self.url}: the token was refused (401): {message}", status=status
            )
        if status == 403:
            return ClientError(f"the daemon at {self.url}: {message} (403)", status=status)
        if status == 400:  # a bad task definition: the message names the field
            return ClientError(message, EXIT_USAGE, status)
        if status == 404:  # an unknown task
            return ClientError(f"{message} (404)", EXIT_USAGE, status)
        return ClientError(f"{message} ({status})", status=status)
