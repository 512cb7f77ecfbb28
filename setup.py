"""The optional C accelerator of the syncer's per-item loops (replwatch/sync/_speedups.c:
the snapshot's plain strings, the stream's split). `optional=True`: without a compiler the
install goes on and the pure-Python paths (the same rules, tested against it) are used.
Everything else is in pyproject.toml."""

from setuptools import Extension, setup

setup(
    ext_modules=[
        Extension(
            "replwatch.sync._speedups",
            ["replwatch/sync/_speedups.c"],
            optional=True,
        )
    ]
)
