"""High availability for sync tasks: a lease with a fencing token, kept in the target.

Two daemons may be configured with the same task (`ha: true`); exactly one runs it. The lease
lives in the task's checkpoint hash on the target (fields `lease_holder`, `lease_token`,
`lease_until`; no other key), so it sits where the data goes and needs no third system:

- acquire (ACQUIRE_SCRIPT): free, expired, or already ours → ours, with the token one higher
  than any before; else the holder and how long its lease still runs. Times are the target's
  own clock (TIME inside the script), so the daemons' clocks do not matter.
- renew (RENEW_SCRIPT, every lease/3 from a thread of its own): only while the hash still names
  us with our token; else the lease is lost.
- fencing (TargetLink with a Fence): every write batch is `SELECT 0`, `WATCH <checkpoint>`,
  `HGET <checkpoint> lease_token` — checked against our token before anything else is sent —
  then `MULTI … EXEC`. A takeover writes a new token into the checkpoint: before our WATCH,
  the check sees it; after it, EXEC aborts. So a holder that lost its lease (paused, cut off,
  or slow) can never write again, whatever its clock says.
- release (RELEASE_SCRIPT) on a clean stop: the lease ends now, another daemon takes over at
  once instead of after the lease time.
"""

from __future__ import annotations

import logging
import os
import secrets
import socket
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

from replwatch.errors import RedisError

log = logging.getLogger("replwatch.sync.lease")


class LeaseLost(RedisError):
    """Another holder took the task's lease: stop writing, go back to standby."""

    reason = "lease_lost"


_NOW_MS = (
    "local t = redis.call('TIME') "
    "local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000) "
)

# KEYS[1] checkpoint; ARGV holder, lease ms → {1, token, lease end} or {0, holder, ms left}
ACQUIRE_SCRIPT = (
    _NOW_MS
    + "local v = redis.call('HMGET', KEYS[1], 'lease_holder', 'lease_token', 'lease_until') "
    "local token = tonumber(v[2]) or 0 "
    "local left = (tonumber(v[3]) or 0) - now "
    "if v[1] and v[1] ~= ARGV[1] and left > 0 then return {0, v[1], left} end "
    "token = token + 1 "
    "redis.call('HSET', KEYS[1], 'lease_holder', ARGV[1], 'lease_token', "
    "string.format('%d', token), 'lease_until', string.format('%d', now + tonumber(ARGV[2]))) "
    "return {1, token, now + tonumber(ARGV[2])}"
)

# KEYS[1] checkpoint; ARGV holder, token, lease ms → the new lease end (ms), or 0: lost
RENEW_SCRIPT = (
    "local v = redis.call('HMGET', KEYS[1], 'lease_holder', 'lease_token') "
    "if v[1] ~= ARGV[1] or v[2] ~= ARGV[2] then return 0 end "
    + _NOW_MS
    + "redis.call('HSET', KEYS[1], 'lease_until', string.format('%d', now + tonumber(ARGV[3]))) "
    "return now + tonumber(ARGV[3])"
)

# KEYS[1] checkpoint; ARGV holder, token → 1 released, 0 not ours
RELEASE_SCRIPT = (
    "local v = redis.call('HMGET', KEYS[1], 'lease_holder', 'lease_token') "
    "if v[1] ~= ARGV[1] or v[2] ~= ARGV[2] then return 0 end "
    "redis.call('HSET', KEYS[1], 'lease_until', 0) "
    "return 1"
)


def new_holder_id() -> str:
    """host:pid:random — unique per process, so a restarted process is a new holder."""
    return f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(3)}"


@dataclass
class Fence:
    """What a fenced TargetLink checks before every batch: the checkpoint key (in
    CHECKPOINT_DB) must still hold `token`."""

    key: str
    token: int
    holder: str
    # the lease end the renewer last set (target clock, ms): written back with the stream's
    # checkpoint so a FLUSHALL from the source cannot shorten the lease
    until_ms: int = 0


@dataclass(frozen=True)
class AcquireResult:
    acquired: bool
    token: int = 0
    holder: str | None = None  # the other holder when not acquired
    remaining: float = 0.0  # seconds its lease still runs
    until_ms: int = 0  # when acquired: the lease's end (target clock, ms)


def parse_acquire(reply: object) -> AcquireResult:
    """ACQUIRE_SCRIPT's reply, typed."""
    if not isinstance(reply, list) or len(reply) != 3:
        raise RedisError(f"unexpected reply to the lease script: {reply!r}"[:200])
    ok, second, left = reply
    if ok == 1:
        return AcquireResult(True, token=int(second), until_ms=int(left))
    holder = second.decode("utf-8", "replace") if isinstance(second, bytes) else str(second)
    return AcquireResult(False, holder=holder, remaining=max(0.0, int(left) / 1000))


class RenewLink(Protocol):
    """The connection a LeaseKeeper renews on (a TargetLink in db 0: passed in, so this
    module does not import the writer, which imports Fence from here)."""

    def call(self, *args: Any) -> Any: ...

    def close(self) -> None: ...


@dataclass
class LeaseKeeper:
    """Renews a held lease every `lease / 3` on a connection of its own (made by `connect`,
    again after a failure), until stopped or lost (then `lost` is set: the runner stops
    writing and goes back to standby)."""

    connect: Callable[[], RenewLink]
    fence: Fence
    lease: float
    timeout: float
    lost: threading.Event = field(default_factory=threading.Event)
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def start(self) -> None:
        self._thread = threading.Thread(target=self._loop, name="lease-keeper", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=self.timeout + 1)

    def _loop(self) -> None:
        link: RenewLink | None = None
        every = self.lease / 3
        while not self._stop.wait(every):
            try:
                if link is None:
                    link = self.connect()
                reply = link.call(
                    "EVAL",
                    RENEW_SCRIPT,
                    1,
                    self.fence.key,
                    self.fence.holder,
                    self.fence.token,
                    int(self.lease * 1000),
                )
            except (RedisError, OSError) as exc:
                log.warning("lease of %s: renewal failed: %s", self.fence.key, exc)
                if link is not None:
                    link.close()
                    link = None
                continue
            if not reply:
                log.warning("lease of %s: lost (another holder has it)", self.fence.key)
                self.lost.set()
                break
            self.fence.until_ms = int(reply)
        if link is not None:
            link.close()
