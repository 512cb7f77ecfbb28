"""Sizes as people read them, for the sync engine's messages and `sync status`."""

from __future__ import annotations


def format_bytes(value: int) -> str:
    """1536 → '1.5 KiB', 20971520 → '20.0 MiB' (binary units, one decimal)."""
    for unit, size in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if value >= size:
            return f"{value / size:.1f} {unit}"
    return f"{value} B"
