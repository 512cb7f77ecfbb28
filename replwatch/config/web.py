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

Parsing is pure (parse_web_config); reading the file and building the SSL context are the
edges (load_web_config, also run by config loading to check exporter.web_config). Serving
with it (basic auth, re-reading on change) is replwatch/web_config.py's job.
"""

from __future__ import annotations

import ssl
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, ValidationError, field_validator

from replwatch.config.base import StrictModel
from replwatch.config.wording import plain_reason
from replwatch.config.yaml_file import parse_yaml
from replwatch.errors import ConfigError

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


class TLSServerConfig(StrictModel):
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


class HTTPServerConfig(StrictModel):
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


class WebConfig(StrictModel):
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
        names = tuple(str(p) for p in error["loc"] if not isinstance(p, int))
        message = plain_reason(error, message, names)
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
