"""Serving the exporter's HTTP endpoints behind its web config (replwatch/config/web.py reads
and checks the file): basic auth against bcrypt hashes (cached, timing-safe for unknown
users), allowed client certificate SANs, extra headers, and WebConfigSource, which re-reads
the file (and the certificates it names) when they change, as exporter-toolkit does per
request: a rotated certificate or a new user takes effect without a restart; a broken edit
is logged and the last good config stays.
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
from typing import Any

import bcrypt

from replwatch.config.web import WebConfig, load_web_config
from replwatch.errors import ConfigError

log = logging.getLogger("replwatch.http")

RELOAD_CHECK_SECONDS = 1.0
AUTH_CACHE_SIZE = 256
REALM = "replwatch"


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
