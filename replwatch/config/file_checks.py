"""The files a valid config names are checked at load: every `tls:` block's CA, certificate
and key exist and load, and exporter.web_config is a good web config. An unreadable CA or a
key that does not match its certificate is then a config error, not a failed handshake per
poll."""

from __future__ import annotations

import ssl
from pathlib import Path

from replwatch.config.endpoints import TLSConfig
from replwatch.config.root import Config
from replwatch.config.web import load_web_config
from replwatch.errors import ConfigError


def _check_tls(tls: TLSConfig | None, where: str, problems: list[str]) -> None:
    """The files a `tls:` block names exist and load (an unreadable CA or a key that does
    not match its certificate is a config error now, not a failed handshake per poll)."""
    if tls is None:
        return
    for field in ("ca_file", "cert_file", "key_file"):
        path = getattr(tls, field)
        if path is None:
            continue
        try:
            with Path(path).open("rb"):
                pass
        except OSError as exc:
            problems.append(f"{where}.{field}: cannot read {path}: {exc.strerror or exc}")
            return
    context = ssl.create_default_context()
    if tls.ca_file is not None:
        try:
            context.load_verify_locations(cafile=str(tls.ca_file))
        except (ssl.SSLError, ValueError):
            problems.append(f"{where}.ca_file: {tls.ca_file} holds no PEM certificate")
            return
    if tls.cert_file is not None:
        try:
            context.load_cert_chain(str(tls.cert_file), str(tls.key_file) if tls.key_file else None)
        except (ssl.SSLError, ValueError):
            problems.append(
                f"{where}.cert_file: {tls.cert_file} is not a PEM certificate with its key "
                "(or key_file does not match it)"
            )


def check_files(cfg: Config, problems: list[str]) -> None:
    """Append a problem for each file of `cfg` that is missing or does not load."""
    if cfg.exporter.web_config is not None:
        try:
            load_web_config(cfg.exporter.web_config)
        except ConfigError as exc:
            problems.append(f"exporter.web_config: {exc}")
    _check_tls(cfg.tls, "tls", problems)
    _check_tls(cfg.publish.tls, "publish.tls", problems)
    for gi, group in enumerate(cfg.groups):
        _check_tls(group.tls, f"groups[{gi}].tls", problems)
    for ti, task in enumerate(cfg.sync.tasks):
        _check_tls(task.tls, f"sync.tasks[{ti}].tls", problems)
