"""Errors that stop a sync task (state failed, exit 1) instead of ending one session.

A session that ends on a network error is retried with backoff; these are problems that
retrying cannot fix until someone changes the config or the servers (a non-empty target, a
target that is a replica or out of memory, a server that is not Redis at all). The
supervisor of `replwatch run` starts a failed task again every 60 s, and the checks before
PSYNC (replwatch/sync/preflight.py) refuse those starts again before the source is asked
for anything, so a cause that did not change never costs the source a fork.
"""

from __future__ import annotations

from replwatch.errors import ProtocolFailure, ReplwatchError


class FatalTaskError(ReplwatchError):
    """A problem that retrying cannot fix: the task stops (state failed)."""


class WrongServer(ProtocolFailure, FatalTaskError):
    """The source or the target is not a Redis data server (something else answers PING, a
    Sentinel, a cluster node given as a plain target). Also a RedisError, so callers that
    only talk to a node (compare, the lease keeper) handle it like any connection failure."""
