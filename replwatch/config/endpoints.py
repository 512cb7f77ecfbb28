"""How replwatch reaches a server: a Redis node (RedisEndpoint, parsed from a redis:// or
rediss:// URL), its credentials (Auth), the TLS settings of rediss:// connections, and the
address forms a config names (host:port, listen addresses, address maps). Parsers are pure
and never echo a password."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any
from urllib.parse import unquote, urlsplit

from pydantic import (
    AfterValidator,
    BeforeValidator,
    SecretStr,
    field_validator,
    model_validator,
)
from pydantic_core import PydanticCustomError

from replwatch.config.base import StrictModel


class TLSConfig(StrictModel):
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


class Auth(StrictModel):
    """Credentials for nodes whose URL carries none; password_file is read at load (and
    reload) into password."""

    username: str | None = None
    password: SecretStr | None = None
    password_file: Path | None = None


class RedisEndpoint(StrictModel):
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


def with_credentials(
    endpoint: RedisEndpoint, username: str | None, password: SecretStr | None
) -> RedisEndpoint:
    """`endpoint` with these credentials when it has no password of its own (a URL's own
    credentials win); its username, if it has one, stays."""
    if endpoint.password is not None or password is None:
        return endpoint
    return endpoint.model_copy(
        update={"username": endpoint.username or username, "password": password}
    )


def parse_endpoint(value: Any) -> RedisEndpoint:
    """A node as a config gives it: a URL (or host:port), a host/port mapping, or an
    endpoint already parsed."""
    if isinstance(value, RedisEndpoint):
        return value
    if isinstance(value, Mapping):
        return RedisEndpoint.model_validate(value)
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


Endpoint = Annotated[RedisEndpoint, BeforeValidator(parse_endpoint)]


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


# where an HTTP server listens: host:port (port 0: any free port)
ListenAddress = Annotated[str, BeforeValidator(_listen_address)]


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
