"""How replwatch reaches a server: a Redis node (RedisEndpoint, parsed from a redis:// or
rediss:// URL), its credentials (Auth), the TLS settings of rediss:// connections, and the
address forms a config names (host:port, listen addresses, address maps). Parsers are pure
and never echo a password."""

from __future__ import annotations

import re
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
from replwatch.config.wording import what_it_is


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


# The one rule for a node address, wherever a config names a Redis node: a redis:// or
# rediss:// URL, or the same without the scheme (host:port, meaning redis://), or a mapping
# of RedisEndpoint's fields (host, port, db, username, password, tls). The settings that take
# one (tests/test_config_errors.py checks the list against the schema):
ENDPOINT_FIELDS = frozenset(
    (
        "master",  # groups[].master
        "replicas",  # groups[].replicas[]
        "addresses",  # groups[].sentinel.addresses[], sync.tasks[].source.sentinel.addresses[]
        "startup_nodes",  # groups[].cluster.…, sync.tasks[].source/target.cluster.…
        "source",  # sync.tasks[].source (or a sentinel: / cluster: block)
        "target",  # sync.tasks[].target (or a cluster: block)
        "url",  # publish.url
    )
)
ADDRESS_FORMS = (
    "a redis:// or rediss:// URL or host:port, e.g. redis://127.0.0.1:6379 or 127.0.0.1:6379"
)


def parse_endpoint(value: Any) -> RedisEndpoint:
    """A node as a config gives it: a redis:// or rediss:// URL, the same without the scheme
    (host:port, meaning redis://), a host/port mapping, or an endpoint already parsed."""
    if isinstance(value, RedisEndpoint):
        return value
    if isinstance(value, Mapping):
        return RedisEndpoint.model_validate(value)
    if not isinstance(value, str) or not value.strip():
        got = what_it_is(value)
        if isinstance(value, int | float) and not isinstance(value, bool):
            got += " (a port alone? write host:port)"
        elif isinstance(value, list):
            got += " (one address here)"
        raise PydanticCustomError(
            "url",
            "must be a node address, {forms}; got {got}",
            {"forms": ADDRESS_FORMS, "got": got},
        )
    return parse_redis_url(value)


_SCHEME_WORDS = ("redis", "rediss", "valkey", "valkeys", "http", "https", "tcp", "unix")
# a scheme word followed by anything but '://': redis//h, redis:/h, redis:h:1, redis:///h
_SCHEME_SLIP_RE = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*)(:?[/\\]+|:[:/\\]*)(.*)$", re.S)
# what a suggestion may repeat: a plain host[:port][/db] (never a password)
_PLAIN_HOST_RE = re.compile(r"^[A-Za-z0-9._\-\[\]:]+(/\d*)?$")
_HEX_COLONS_RE = re.compile(r"^[0-9A-Fa-f:.]+$")


def _slip(text: str) -> str | None:
    """Why `text` (a node address as written, without surrounding spaces) is a slip rather
    than an address: a malformed scheme (with what it should be), a path, several nodes, an
    IPv6 address without brackets. None: nothing recognised (urlsplit goes on)."""
    if re.match(r"(?i)^rediss?://rediss?:", text):
        return "the scheme is written twice: write it once (redis://host:port)"
    match = _SCHEME_SLIP_RE.match(text)
    if match and match.group(2) != "://":
        word, sep, rest = match.groups()
        scheme = word.lower()
        slashes = sep.lstrip(":")
        # `redis:6379` and `redis:6379/0` are the host named redis (docker compose)
        host_port = sep == ":" and re.fullmatch(r"\d*(/\d*)?", rest) is not None
        slip = (sep.startswith(":") and scheme in _SCHEME_WORDS and not host_port) or (
            not sep.startswith(":") and len(slashes) >= 2
        )
        if slip and scheme not in ("redis", "rediss"):
            return f"unsupported scheme '{scheme}': use redis:// or rediss://"
        if slip:
            reason = f"not a {scheme}:// URL ('{word}{sep}' should be '{scheme}://')"
            return reason + _did_you_mean(scheme, rest)
    if text.startswith("//"):
        return "not a redis:// URL (no scheme before '//')" + _did_you_mean("redis", text[2:])
    if text.startswith("/"):
        return "a file path is not a node address (unix sockets are not supported): use " + (
            "redis://host:port or host:port"
        )
    host_part = text.rpartition("@")[2]
    if "," in host_part:
        return "one node per address: ',' joins several (list them one per item instead)"
    if (
        "://" not in text
        and "@" not in text
        and "[" not in text
        and text.count(":") >= 2
        and _HEX_COLONS_RE.match(text)
    ):
        return "an IPv6 address goes in brackets: [::1]:6379 or redis://[::1]:6379"
    return None


def _did_you_mean(scheme: str, rest: str) -> str:
    """': did you mean redis://host:port?' when what follows the scheme is a plain address
    (credentials, if any, shown as ***); '' when it is anything else."""
    _, at, host = rest.rpartition("@")
    if not host or not _PLAIN_HOST_RE.match(host):
        return ""
    return f": did you mean {scheme}://{'***@' if at else ''}{host}?"


def parse_redis_url(url: str) -> RedisEndpoint:
    """redis://[[user]:password@]host[:port][/db] → RedisEndpoint; without a scheme
    (host:port, [user:password@]host[:port][/db]) it means redis://. Spaces around it are
    ignored. Errors never echo the password."""
    url = url.strip()
    slip = _slip(url)
    if slip is not None:
        raise PydanticCustomError("url", "{slip}", {"slip": slip})
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
    if port is None and parts.hostname.isdigit():
        raise PydanticCustomError(
            "url",
            "'{host}' is a port alone: write host:port, e.g. 127.0.0.1:{host}",
            {"host": parts.hostname},
        )
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
