"""Replacing a small file atomically (temp file, fsync, rename, fsync of the directory).

Both sides of a sync task write through it: the task process its local report
(replwatch/sync/task_report.py) and the daemon its task state file
(replwatch/tasks/task_state.py). It lives below both so the syncer engine needs nothing of
the daemon's packages.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable
from pathlib import Path


def write_atomic(
    path: Path, data: bytes, fsync: Callable[[int], None] = os.fsync, mode: int = 0o600
) -> None:
    """Replace `path` by `data`: temp file in the same directory, fsync, rename, fsync of the
    directory. On any failure the old file is left as it was and the temp file is removed."""
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    try:
        try:
            view = memoryview(data)
            while view:
                written = os.write(fd, view)
                view = view[written:]
            fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        fsync(dir_fd)
    finally:
        os.close(dir_fd)
