"""WAIT probes: how long until the replicas acknowledge a write, and how many do.

Per probe: one script call on the master that checks the node is a master, counts its online
replicas and writes the probe key (with a short TTL) — so a probe can never write to a replica,
even one with replica-read-only off — then `WAIT <n> <timeout_ms>` on the same dedicated
connection (WAIT counts acknowledgements of this connection's last write).
"""

from __future__ import annotations

import hashlib
import time
from dataclasses import dataclass

import hiredis

from replwatch.config import ProbeConfig, RedisEndpoint, TLSConfig
from replwatch.errors import RedisError
from replwatch.observe.connection import Connection, classify_reply_error

PROBE_SCRIPT = """\
local info = redis.call('INFO', 'replication')
if string.match(info, 'role:(%a+)') ~= 'master' then
  return redis.error_reply('REPLWATCH not a master')
end
local online = 0
for _ in string.gmatch(info, 'state=online') do online = online + 1 end
redis.call('SET', KEYS[1], ARGV[2], 'PX', ARGV[1])
return online
"""
PROBE_SHA = hashlib.sha1(PROBE_SCRIPT.encode()).hexdigest()


@dataclass(frozen=True, slots=True)
class ProbeResult:
    group: str
    result: str  # ok, timeout, error
    wanted: int | None  # replicas asked for (resolved from "all")
    acked: int | None  # replicas that acknowledged
    seconds: float | None  # from sending the write to WAIT's answer
    reason: str | None = None  # for errors: not_master, timeout, refused, …
    message: str | None = None
    at: float = 0.0  # wall clock


class WaitProber:
    def __init__(
        self, group: str, endpoint: RedisEndpoint, probe: ProbeConfig, tls: TLSConfig | None
    ) -> None:
        self.group = group
        self.endpoint = endpoint
        self.config = probe
        self.tls = tls
        self._conn: Connection | None = None
        self._seq = 0

    async def _script(self, conn: Connection, deadline: float) -> object:
        ttl_ms = max(1000, int(self.config.ttl * 1000))
        self._seq += 1
        value = f"{time.time():.6f}:{self._seq}"
        args = (1, self.config.key, ttl_ms, value)
        remaining = max(0.001, deadline - time.monotonic())
        (reply,) = await conn.execute([("EVALSHA", PROBE_SHA, *args)], remaining, False)
        if isinstance(reply, hiredis.ReplyError) and str(reply).startswith("NOSCRIPT"):
            remaining = max(0.001, deadline - time.monotonic())
            (reply,) = await conn.execute([("EVAL", PROBE_SCRIPT, *args)], remaining, False)
        return reply

    async def probe(self) -> ProbeResult:
        cfg = self.config
        # connect + script + WAIT must all fit: WAIT gets cfg.timeout, the rest a margin
        started = time.monotonic()
        deadline = started + cfg.timeout + max(0.5, cfg.timeout)
        try:
            if self._conn is None or self._conn.closed:
                self._conn = await Connection.open(
                    self.endpoint, cfg.timeout, self.tls, client_name="replwatch-probe"
                )
            conn = self._conn
            sent = time.monotonic()
            reply = await self._script(conn, deadline)
            if isinstance(reply, hiredis.ReplyError):
                message = str(reply)
                if "REPLWATCH not a master" in message or message.startswith("READONLY"):
                    raise RedisError(
                        f"{self.endpoint.label} is a replica: probe not written", "not_master"
                    )
                raise classify_reply_error(message)
            online = int(reply)  # type: ignore[call-overload]
            wanted = online if cfg.replicas == "all" else int(cfg.replicas)
            timeout_ms = max(1, int(cfg.timeout * 1000))
            remaining = max(0.001, deadline - time.monotonic())
            (acked,) = await conn.execute([("WAIT", wanted, timeout_ms)], remaining)
            seconds = time.monotonic() - sent
            acked = int(acked)
            result = "ok" if acked >= wanted else "timeout"
            return ProbeResult(self.group, result, wanted, acked, seconds, at=time.time())
        except RedisError as exc:
            if self._conn is not None and exc.reason != "not_master":
                self._conn.close()
                self._conn = None
            return ProbeResult(
                self.group, "error", None, None, None, exc.reason, str(exc), at=time.time()
            )

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None
