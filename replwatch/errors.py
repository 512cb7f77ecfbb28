"""The exception tree. Every user-facing error is a ReplwatchError with a one-line message."""

from __future__ import annotations


class ReplwatchError(Exception):
    """Base of every error replwatch raises on purpose."""


class ConfigError(ReplwatchError):
    """The configuration is invalid; `problems` holds one 'path: reason' line per problem."""

    def __init__(self, source: str, problems: list[str]) -> None:
        self.source = source
        self.problems = problems
        super().__init__(f"{source}: " + "; ".join(problems))


class RedisError(ReplwatchError):
    """Talking to a Redis node failed. `reason` is a short class used as a metric label."""

    reason = "error"

    def __init__(self, message: str, reason: str | None = None) -> None:
        super().__init__(message)
        if reason is not None:
            self.reason = reason


class TimeoutFailure(RedisError):
    reason = "timeout"


class RefusedFailure(RedisError):
    reason = "refused"


class AuthFailure(RedisError):
    reason = "auth"


class ProtocolFailure(RedisError):
    reason = "protocol"


class ServerBinaryNotFound(ReplwatchError):
    """No redis-server / valkey-server binary could be found (demo)."""


class DiscoveryError(RedisError):
    """No Sentinel or cluster node described the topology; the message names each address
    asked and its problem (never a password)."""

    reason = "discovery"
