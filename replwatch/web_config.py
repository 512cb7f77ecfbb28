"""The exporter's web config file: TLS and basic auth for the HTTP server, in the
prometheus/exporter-toolkit format (the file node_exporter and redis_exporter take with
--web.config.file), so one file can serve a fleet of exporters:

    tls_server_config:
      cert_file: server.crt          # relative paths: from this file's directory
      key_file: server.key
      client_auth_type: RequireAndVerifyClientCert   # or NoClientCert, VerifyClientCertIfGiven
      client_ca_file: ca.crt
      client_allowed_sans: [prometheus.example]
      min_version: TLS12             # TLS10 … TLS13
      max_version: TLS13
    http_server_config:
      headers: {Strict-Transport-Security: max-age=31536000}
    basic_auth_users:
      prometheus: $2y$10$…           # bcrypt hashes (htpasswd -nBC 10 "" | tr -d ':')

Parsing is pure (parse_web_config); reading the file, building the SSL context and checking
a password are the edges. WebConfigSource re-reads the file (and the certificates it names)
when they change, as exporter-toolkit does per request: a rotated certificate or a new user
takes effect without a restart; a broken edit is logged and the last good config stays.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import logging
import os
import ssl
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import bcrypt
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from replwatch.config_file import parse_yaml
from replwatch.errors import ConfigError

log = logging.getLogger("replwatch.http")

TLSVersionName = Literal["TLS10", "TLS11", "TLS12", "TLS13"]
_TLS_VERSIONS = {
    "TLS10": ssl.TLSVersion.TLSv1,
    "TLS11": ssl.TLSVersion.TLSv1_1,
    "TLS12": ssl.TLSVersion.TLSv1_2,
    "TLS13": ssl.TLSVersion.TLSv1_3,
}
# exporter-toolkit's client_auth_type values Python's ssl module can honour
_CLIENT_AUTH = {
    "NoClientCert": ssl.CERT_NONE,
    "VerifyClientCertIfGiven": ssl.CERT_OPTIONAL,
    "RequireAndVerifyClientCert": ssl.CERT_REQUIRED,
}
_UNSUPPORTED_CLIENT_AUTH = ("RequestClientCert", "RequireAnyClientCert")
# exporter-toolkit keys replwatch does not implement: refused by name rather than ignored
# (a security setting silently dropped is worse than a start-up error)
_UNSUPPORTED_TLS_KEYS = {
    "cipher_suites": "Python's ssl defaults are used; remove cipher_suites",
    "curve_preferences": "Python's ssl defaults are used; remove curve_preferences",
    "cert": "give the certificate as cert_file",
    "key": "give the key as key_file",
    "client_ca": "give the client CA as client_ca_file",
}
_ALLOWED_HEADERS = frozenset(
    {
        "strict-transport-security",
        "x-frame-options",
        "x-content-type-options",
        "x-xss-protection",
        "content-security-policy",
    }
)
RELOAD_CHECK_SECONDS = 1.0
AUTH_CACHE_SIZE = 256
REALM = "replwatch"


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, hide_input_in_errors=True)


class TLSServerConfig(_Strict):
    cert_file: Path
    key_file: Path
    client_auth_type: str = "NoClientCert"
    client_ca_file: Path | None = None
    client_allowed_sans: list[str] = Field(default_factory=list)
    min_version: TLSVersionName = "TLS12"
    max_version: TLSVersionName = "TLS13"
    prefer_server_cipher_suites: bool = True

    @field_validator("client_auth_type")
    @classmethod
    def _client_auth(cls, v: str) -> str:
        if v in _UNSUPPORTED_CLIENT_AUTH:
            raise ValueError(
                f"{v} is not supported (client certificates are always verified): use "
                "VerifyClientCertIfGiven or RequireAndVerifyClientCert"
            )
        if v not in _CLIENT_AUTH:
            raise ValueError(f"must be one of {', '.join(_CLIENT_AUTH)}")
        return v


class HTTPServerConfig(_Strict):
    http2: bool = True  # accepted for compatibility; replwatch serves HTTP/1.1
    headers: dict[str, str] = Field(default_factory=dict)

    @field_validator("headers")
    @classmethod
    def _headers(cls, v: dict[str, str]) -> dict[str, str]:
        for name in v:
            if name.lower() not in _ALLOWED_HEADERS:
                raise ValueError(
                    f"header {name!r} cannot be set (allowed: Strict-Transport-Security, "
                    "X-Frame-Options, X-Content-Type-Options, X-XSS-Protection, "
                    "Content-Security-Policy)"
                )
        return v


class WebConfig(_Strict):
    tls_server_config: TLSServerConfig | None = None
    http_server_config: HTTPServerConfig = HTTPServerConfig()
    basic_auth_users: dict[str, str] = Field(default_factory=dict)

    @field_validator("basic_auth_users")
    @classmethod
    def _bcrypt_hashes(cls, v: dict[str, str]) -> dict[str, str]:
        for user, hashed in v.items():
            if not isinstance(hashed, str) or not hashed.startswith(("$2a$", "$2b$", "$2y$")):
                # never echo the value: a plain password put here by mistake is a secret
                raise ValueError(f"user {user!r}: not a bcrypt hash ($2y$…)")
            if ":" in user:
                raise ValueError(f"user {user!r}: a user name cannot contain ':'")
        return v


def _format(exc: ValidationError) -> list[str]:
    lines = []
    for error in exc.errors():
        path = ".".join(str(p) for p in error["loc"]) or "<root>"
        message = error["msg"]
        if message.startswith("Value error, "):
            message = message[len("Value error, ") :]
        if error["type"] == "extra_forbidden":
            message = "unknown key"
        lines.append(f"{path}: {message}")
    return lines


def parse_web_config(data: Any, base_dir: Path) -> WebConfig:
    """Validate the parsed YAML; relative paths are made relative to `base_dir`. Raises
    ValueError whose args[0] is the list of 'field: reason' lines."""
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ValueError(["<root>: must be a mapping (tls_server_config, basic_auth_users, …)"])
    tls = data.get("tls_server_config")
    problems = []
    if isinstance(tls, dict):
        for key, why in _UNSUPPORTED_TLS_KEYS.items():
            if key in tls:
                problems.append(f"tls_server_config.{key}: not supported ({why})")
        if problems:
            raise ValueError(problems)
    try:
        config = WebConfig.model_validate(data)
    except ValidationError as exc:
        raise ValueError(_format(exc)) from None
    if config.tls_server_config is not None:
        tls_config = config.tls_server_config
        resolved = tls_config.model_copy(
            update={
                name: base_dir / path
                for name in ("cert_file", "key_file", "client_ca_file")
                if (path := getattr(tls_config, name)) is not None and not path.is_absolute()
            }
        )
        if _TLS_VERSIONS[resolved.min_version] > _TLS_VERSIONS[resolved.max_version]:
            raise ValueError(["tls_server_config.min_version: above max_version"])
        if resolved.client_auth_type != "NoClientCert" and resolved.client_ca_file is None:
            raise ValueError(
                [f"tls_server_config.client_ca_file: needed by {resolved.client_auth_type}"]
            )
        config = config.model_copy(update={"tls_server_config": resolved})
    return config


def build_server_context(tls: TLSServerConfig) -> ssl.SSLContext:
    """The server-side SSL context; raises ValueError naming the field whose file is bad."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = _TLS_VERSIONS[tls.min_version]
    context.maximum_version = _TLS_VERSIONS[tls.max_version]
    if tls.prefer_server_cipher_suites:
        context.options |= ssl.OP_CIPHER_SERVER_PREFERENCE
    try:
        context.load_cert_chain(str(tls.cert_file), str(tls.key_file))
    except FileNotFoundError as exc:
        raise ValueError(f"tls_server_config.cert_file: cannot read {exc.filename}") from None
    except (ssl.SSLError, OSError):
        raise ValueError(
            f"tls_server_config.cert_file: {tls.cert_file} and key_file {tls.key_file} are not "
            "a readable PEM certificate and its key"
        ) from None
    context.verify_mode = _CLIENT_AUTH[tls.client_auth_type]
    if tls.client_ca_file is not None:
        try:
            context.load_verify_locations(cafile=str(tls.client_ca_file))
        except (ssl.SSLError, OSError):
            raise ValueError(
                f"tls_server_config.client_ca_file: cannot load {tls.client_ca_file}"
            ) from None
    return context


def load_web_config(path: Path) -> tuple[WebConfig, ssl.SSLContext | None]:
    """Read, validate and (with TLS) build the context. ConfigError naming the file and
    the field."""
    source = str(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(source, [f"<file>: cannot read: {exc.strerror or exc}"]) from None
    except UnicodeDecodeError:
        raise ConfigError(source, ["<file>: not UTF-8 text"]) from None
    # the config file's guarded loader: no alias bomb, no deep nesting, no duplicate keys
    data = parse_yaml(text, source)
    try:
        config = parse_web_config(data, path.parent)
        context = (
            build_server_context(config.tls_server_config)
            if config.tls_server_config is not None
            else None
        )
    except ValueError as exc:
        detail = exc.args[0]
        raise ConfigError(source, detail if isinstance(detail, list) else [str(detail)]) from None
    return config, context


def peer_sans(cert: dict[str, Any] | None) -> list[str]:
    """The subjectAltName values of a verified peer certificate (getpeercert())."""
    if not cert:
        return []
    return [str(value) for _kind, value in cert.get("subjectAltName", ())]


@dataclass
class BasicAuthChecker:
    """Checks `Authorization: Basic …` against bcrypt hashes. A bcrypt check costs ~50 ms
    (cost 10), so good answers are cached by a SHA-256 of user, password and hash (a
    scrape every 15 s must not cost a core); a wrong password is never cached. An unknown
    user is checked against a dummy hash, so timing does not tell which users exist."""

    users: dict[str, str]
    _ok: OrderedDict[bytes, None] = field(default_factory=OrderedDict)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    _DUMMY = bcrypt.hashpw(b"replwatch-dummy", bcrypt.gensalt(rounds=4))

    def check(self, authorization: str | None) -> bool:
        credentials = parse_basic(authorization)
        if credentials is None:
            return False
        user, password = credentials
        hashed = self.users.get(user)
        stored = hashed.encode() if hashed is not None else self._DUMMY
        digest = hashlib.sha256(user.encode() + b"\0" + password + b"\0" + stored).digest()
        with self._lock:
            if digest in self._ok:
                self._ok.move_to_end(digest)
                return hashed is not None
        try:
            good = bcrypt.checkpw(password, stored)
        except ValueError:
            good = False
        if not good or hashed is None:
            return False
        with self._lock:
            self._ok[digest] = None
            while len(self._ok) > AUTH_CACHE_SIZE:
                self._ok.popitem(last=False)
        return True


def parse_basic(authorization: str | None) -> tuple[str, bytes] | None:
    """`Basic base64(user:password)` → (user, password bytes), else None."""
    if not authorization:
        return None
    scheme, _, encoded = authorization.strip().partition(" ")
    if scheme.lower() != "basic":
        return None
    try:
        raw = base64.b64decode(encoded.strip(), validate=True)
    except (binascii.Error, ValueError):
        return None
    user, sep, password = raw.partition(b":")
    if not sep:
        return None
    try:
        return user.decode("utf-8"), password
    except UnicodeDecodeError:
        return None


@dataclass(frozen=True)
class WebSettings:
    """One loaded web config: what a request is checked against."""

    config: WebConfig
    context: ssl.SSLContext | None
    auth: BasicAuthChecker | None

    @property
    def headers(self) -> dict[str, str]:
        return dict(self.config.http_server_config.headers)

    def allowed_peer(self, cert: dict[str, Any] | None) -> bool:
        tls = self.config.tls_server_config
        if tls is None or not tls.client_allowed_sans:
            return True
        allowed = set(tls.client_allowed_sans)
        return any(san in allowed for san in peer_sans(cert))

    def authorized(self, authorization: str | None) -> bool:
        return self.auth is None or self.auth.check(authorization)


def settings_from(config: WebConfig, context: ssl.SSLContext | None) -> WebSettings:
    users = config.basic_auth_users
    return WebSettings(config, context, BasicAuthChecker(dict(users)) if users else None)


class WebConfigSource:
    """The current web settings, re-read when the file or a file it names changes (checked
    at most once a second). TLS cannot be switched on or off without a restart (the
    listening socket's kind is fixed): such an edit is refused and logged."""

    def __init__(self, path: Path, clock: Any = time.monotonic) -> None:
        self.path = path
        self._clock = clock
        config, context = load_web_config(path)
        self._settings = settings_from(config, context)
        self._signature = self._stat()
        self._checked = clock()
        self._lock = threading.Lock()

    @property
    def tls(self) -> bool:
        return self._settings.context is not None

    def _files(self) -> list[Path]:
        files = [self.path]
        tls = self._settings.config.tls_server_config
        if tls is not None:
            files += [tls.cert_file, tls.key_file]
            if tls.client_ca_file is not None:
                files.append(tls.client_ca_file)
        return files

    def _stat(self) -> tuple[tuple[str, int, int], ...]:
        out = []
        for path in self._files():
            try:
                st = os.stat(path)
                out.append((str(path), st.st_mtime_ns, st.st_size))
            except OSError:
                out.append((str(path), -1, -1))
        return tuple(out)

    def current(self) -> WebSettings:
        now = self._clock()
        if now - self._checked < RELOAD_CHECK_SECONDS:
            return self._settings
        with self._lock:
            if now - self._checked < RELOAD_CHECK_SECONDS:
                return self._settings
            self._checked = now
            signature = self._stat()
            if signature == self._signature:
                return self._settings
            self._signature = signature
            try:
                config, context = load_web_config(self.path)
            except ConfigError as exc:
                log.error("web config not reloaded, the last good one stays: %s", exc)
                return self._settings
            if (context is None) != (self._settings.context is None):
                log.error(
                    "web config not reloaded: %s switches TLS %s, which needs a restart",
                    self.path,
                    "on" if context is not None else "off",
                )
                return self._settings
            self._settings = settings_from(config, context)
            self._signature = self._stat()
            log.info("web config reloaded from %s", self.path)
            return self._settings


def token_header_value(headers: Any) -> str | None:
    """The admin token from `X-Replwatch-Token` (for clients whose Authorization header
    carries basic auth), as an `Authorization: Bearer` value."""
    token = headers.get("X-Replwatch-Token")
    return f"Bearer {token.strip()}" if token else None
