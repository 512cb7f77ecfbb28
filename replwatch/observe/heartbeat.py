"""The heartbeat writer: stores the master's own TIME under a namespaced key.

The script reads TIME and writes it; with effects replication (the default since Redis 5,
the only mode since 7.0) the SET with the literal value is what replicates, so every follower
sees the master's clock. The writer refuses to write when the configured master reports that
it is a replica (after a failover) and says so instead.

The script already reads the master's INFO replication (to check its role) and returns it
with the value: every heartbeat is also a sample of the master (its offset, its followers'
ACKed offsets), handed to `on_master_info` — 4 samples a second at the default interval,
with no command of its own (lag/acks.py times the followers' ACKs with them). It also returns
the value the key held before the write (a value another writer left, or the previous
process before a restart: lag/heartbeat.py records it, see there why).
"""

from __future__ import annotations

import hashlib
import logging
import time
from collections.abc import Callable
from typing import Any

import hiredis

from replwatch.config import RedisEndpoint, TLSConfig
from replwatch.errors import RedisError
from replwatch.lag.heartbeat import HeartbeatHistory, parse_heartbeat
from replwatch.observe.connection import (
    Connection,
    InFlight,
    classify_reply_error,
    encode_command,
)

log = logging.getLogger("replwatch.heartbeat")

HEARTBEAT_SCRIPT = """\
local info = redis.call('INFO', 'replication')
if string.match(info, 'role:(%a+)') ~= 'master' then
  return redis.error_reply('REPLWATCH not a master')
end
local prev = redis.call('GET', KEYS[1])
local t = redis.call('TIME')
local v = t[1] .. string.format('%06d', tonumber(t[2]))
redis.call('SET', KEYS[1], v, 'PX', ARGV[1])
return {v, info, prev}
"""
HEARTBEAT_SHA = hashlib.sha1(HEARTBEAT_SCRIPT.encode()).hexdigest()


class HeartbeatWriter:
    """Writes one heartbeat per call on its own connection to the master."""

    def __init__(
        self,
        endpoint: RedisEndpoint,
        key: str,
        ttl_seconds: float,
        timeout: float,
        history: HeartbeatHistory,
        tls: TLSConfig | None = None,
        on_master_info: Callable[[bytes, float], None] | None = None,
    ) -> None:
        """`on_master_info`: told of the master's INFO replication text that came with each
        write, and the monotonic time it was taken (the middle of the round trip)."""
        self.endpoint = endpoint
        self.key = key
        self.ttl_ms = max(1000, int(ttl_seconds * 1000))
        self.timeout = timeout
        self.history = history
        self.tls = tls
        self.on_master_info = on_master_info
        self._conn: Connection | None = None
        # the same command every time: encoded once
        self._evalsha = encode_command(("EVALSHA", HEARTBEAT_SHA, 1, key, self.ttl_ms))
        self.last_ok: bool | None = None
        self.last_error: str | None = None
        self.writes_ok = 0
        self.writes_failed = 0
        self._out: InFlight | None = None  # the newest begin()'s write, until finish()

    async def write_once(self) -> bool:
        started = time.monotonic()
        try:
            if self._conn is None or self._conn.closed:
                self._conn = await Connection.open(
                    self.endpoint, self.timeout, self.tls, client_name="replwatch-heartbeat"
                )
            sent = time.monotonic()
            remaining = max(0.001, started + self.timeout - sent)
            (reply,) = await self._conn.execute_encoded(self._evalsha, 1, remaining, False)
            if isinstance(reply, hiredis.ReplyError) and str(reply).startswith("NOSCRIPT"):
                sent = time.monotonic()
                remaining = max(0.001, started + self.timeout - sent)
                (reply,) = await self._conn.execute(
                    [("EVAL", HEARTBEAT_SCRIPT, 1, self.key, self.ttl_ms)], remaining, False
                )
            return self._handle_reply(reply, sent, time.monotonic())
        except (RedisError, ValueError, TypeError) as exc:
            return self._failed(getattr(exc, "reason", "protocol"))

    def begin(self) -> InFlight | None:
        """The fast path for a round of writes over many groups: send now on the open
        connection and let the caller await all futures together. None when a connect is
        needed first (use write_once)."""
        if self._conn is None or self._conn.closed:
            return None
        try:
            self._out = self._conn.send_pipeline(self._evalsha, 1)
        except RedisError:
            return None
        return self._out

    @property
    def busy(self) -> bool:
        """A begin()'s write is still unanswered (sent in an earlier round): the next round
        leaves this writer out instead of queueing a second write behind it. Answered but not
        yet finish()ed (its round still waits for other groups) is not busy: the next write
        is pipelined behind it, and each round accounts for its own."""
        return self._out is not None and not self._out.future.done()

    def finish(self, inflight: InFlight) -> bool | None:
        """Account for a begin()'s write. None: the script was not loaded yet (NOSCRIPT);
        call write_once, which loads it."""
        if self._out is inflight:
            self._out = None
        future = inflight.future
        if not future.done():
            future.cancel()  # abandoned: closing the connection must not leave an error unread
            return self._failed("timeout")
        if future.exception() is not None:
            return self._failed(getattr(future.exception(), "reason", "error"))
        reply = future.result()[0]
        if isinstance(reply, hiredis.ReplyError) and str(reply).startswith("NOSCRIPT"):
            return None
        try:
            return self._handle_reply(reply, inflight.sent, inflight.received)
        except (RedisError, ValueError, TypeError) as exc:
            return self._failed(getattr(exc, "reason", "protocol"))

    def piggyback_command(self) -> bytes | None:
        """The encoded write for another connection's pipeline to the same master (the poll
        cycle carries one heartbeat round this way instead of a round trip of its own). None
        until this writer has written once: the script may not be loaded yet."""
        return self._evalsha if self.writes_ok else None

    def record_piggyback(self, reply: Any, sent: float, received: float) -> bool | None:
        """Account for a piggybacked write's reply. None: not written (the script was
        flushed, NOSCRIPT); this writer's next write of its own loads it again."""
        if isinstance(reply, hiredis.ReplyError) and str(reply).startswith("NOSCRIPT"):
            self.writes_ok = 0  # no piggybacking until a write of our own loaded it
            return None
        try:
            return self._handle_reply(reply, sent, received)
        except (RedisError, ValueError, TypeError) as exc:
            return self.record_failure(getattr(exc, "reason", "protocol"))

    def record_failure(self, reason: str) -> bool:
        """A write that failed on another connection (a piggybacked one): counted, and this
        writer's own connection is left alone."""
        self._note_failure(reason)
        self.writes_failed += 1
        return False

    def _note_failure(self, reason: str) -> None:
        """last_ok/last_error, logged when writes start failing (or fail for a new reason)."""
        if reason != self.last_error:
            log.warning(
                "heartbeat write %s to %s failed: %s", self.key, self.endpoint.label, reason
            )
        self.last_ok, self.last_error = False, reason

    def _handle_reply(self, reply: Any, sent: float, received: float) -> bool:
        if isinstance(reply, hiredis.ReplyError):
            message = str(reply)
            if "REPLWATCH not a master" in message or message.startswith("READONLY"):
                raise RedisError("configured master is a replica: not writing", "not_master")
            raise classify_reply_error(message)
        info: Any = None
        previous: float | None = None
        if isinstance(reply, list) and len(reply) == 3:
            # the value, the master's INFO replication, and what the key held before
            reply, info, before = reply
            previous = parse_heartbeat(before)
        micros = int(reply)
        self.history.record(micros / 1_000_000, sent, received, previous)
        if isinstance(info, bytes) and self.on_master_info is not None:
            self.on_master_info(info, (sent + received) / 2)
        if self.last_ok is False:
            log.info("heartbeat writes to %s work again", self.endpoint.label)
        self.last_ok, self.last_error = True, None
        self.writes_ok += 1
        return True

    def _failed(self, reason: str) -> bool:
        if self._conn is not None and reason != "not_master":
            self._conn.close()
            self._conn = None
        self._note_failure(reason)
        self.writes_failed += 1
        return False

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None
