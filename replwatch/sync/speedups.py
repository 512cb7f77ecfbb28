"""The optional C accelerator's functions (replwatch/sync/_speedups.c), looked up by name: the
compiled twin of a pure-Python loop when setup.py built it and REPLWATCH_PURE_PYTHON is not
set, else None (the caller keeps its Python path)."""

from __future__ import annotations

import importlib
import os


def compiled(name: str) -> object | None:
    """`_speedups.<name>`, or None when the accelerator is off or was not built."""
    if os.environ.get("REPLWATCH_PURE_PYTHON"):
        return None
    try:
        module = importlib.import_module("replwatch.sync._speedups")
    except ImportError:
        return None
    return getattr(module, name, None)
