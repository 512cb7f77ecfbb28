"""WAIT probes: how long until the replicas acknowledge a write, and how many do.

Per probe: one script call on the master that checks the node is a master, counts its online
replicas and writes the probe key (with a short TTL) — so a probe can never write to a replica,
even one with replica-read-only off — then `WAIT <n> <timeout_ms>` on the same dedicated
connection (WAIT counts acknowledgements of this connection's last write).
"""

from __future__ import annotations

import hashlib
import logging
import time
from dataclasses import dataclass

import hiredis

from replwatch.config import ProbeConfig, RedisEndpoint, TLSConfig
from replwatch.errors import ProtocolFailure, RedisError, TimeoutFailure
from replwatch.observe.connection import (
    Command,
    Connection,
    InFlight,
    classify_reply_error,
    encode_command,
)

log = logging.getLogger("replwatch.probe")

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
        self,
        group: str,
        endpoint: RedisEndpoint,
        probe: ProbeConfig,
        tls: TLSConfig | None,
        key: str | None = None,
    ) -> None:
        """`key`: the probe key when not `probe.key` (a cluster shard's, in its own slots)."""
        self.group = group
        self.endpoint = endpoint
        self.config = probe
        self.key = key if key is not None else probe.key
        self.tls = tls
        self._conn: Connection | None = None
        self._seq = 0
        self._online: int | None = None  # replicas online at the last probe
        self._wanted: dict[InFlight, int] = {}  # begin()'s probes: replicas waited for
        self._failing: str | None = None  # the reason of the current run of errors

    def _script_command(self) -> tuple[int, str, int, str]:
        ttl_ms = max(1000, int(self.config.ttl * 1000))
        self._seq += 1
        value = f"{time.time():.6f}:{self._seq}"
        return (1, self.key, ttl_ms, value)

    @property
    def wait_timeout(self) -> float:
        """How long a probe may take in all: WAIT's own timeout plus a margin for the
        round trip."""
        return self.config.timeout + max(0.5, self.config.timeout)

    def begin(self) -> InFlight | None:
        """The fast path of a probe round over many groups: script and WAIT sent now in one
        pipeline on the open connection, for the replicas known beforehand; the caller
        awaits every group's future together and calls finish(). None when the slow path
        is needed (a connect, or the first probe of "all" replicas): use probe()."""
        conn = self._conn
        cfg = self.config
        wanted = self._online if cfg.replicas == "all" else int(cfg.replicas)
        if conn is None or conn.closed or wanted is None:
            return None
        timeout_ms = max(1, int(cfg.timeout * 1000))
        payload = encode_command(("EVALSHA", PROBE_SHA, *self._script_command()))
        payload += encode_command(("WAIT", wanted, timeout_ms))
        try:
            inflight = conn.send_pipeline(payload, 2)
        except RedisError:
            return None
        self._wanted[inflight] = wanted
        return inflight

    def finish(self, inflight: InFlight) -> ProbeResult | None:
        """The result of a begin()'s probe; None when it must be redone by probe() (the
        script was not loaded, or more replicas are online than it waited for)."""
        wanted = self._wanted.pop(inflight)
        future = inflight.future
        try:
            if not future.done():
                future.cancel()
                raise TimeoutFailure(f"no answer within {self.wait_timeout:g}s")
            error = future.exception()
            if error is not None:
                raise error if isinstance(error, RedisError) else RedisError(str(error))
            reply, wait_reply = future.result()
            if isinstance(reply, hiredis.ReplyError) and str(reply).startswith("NOSCRIPT"):
                return None
            online = self._online_from(reply)
            if self.config.replicas == "all" and online > wanted:
                return None
            if isinstance(wait_reply, hiredis.ReplyError):
                raise classify_reply_error(str(wait_reply))
            acked = int(wait_reply)
            seconds = max(0.0, inflight.received - inflight.sent)
            result = "ok" if acked >= wanted else "timeout"
            return self._answered(
                ProbeResult(self.group, result, wanted, acked, seconds, at=time.time())
            )
        except (RedisError, ValueError, TypeError) as exc:
            return self._failed(exc)

    def _online_from(self, reply: object) -> int:
        """The script's answer: the replicas online on the master (or its refusal)."""
        if isinstance(reply, hiredis.ReplyError):
            message = str(reply)
            if "REPLWATCH not a master" in message or message.startswith("READONLY"):
                raise RedisError(
                    f"{self.endpoint.label} is a replica: probe not written", "not_master"
                )
            raise classify_reply_error(message)
        if not isinstance(reply, int):
            raise ProtocolFailure(f"probe script returned {type(reply).__name__}, not a count")
        self._online = reply
        return reply

    def _failed(self, exc: Exception) -> ProbeResult:
        reason = getattr(exc, "reason", "protocol")
        if self._conn is not None and reason != "not_master":
            self._conn.close()
            self._conn = None
        if reason != self._failing:  # logged when it starts failing, or fails otherwise
            log.warning("WAIT probe of group %s failed (%s): %s", self.group, reason, exc)
            self._failing = reason
        return ProbeResult(self.group, "error", None, None, None, reason, str(exc), at=time.time())

    async def probe(self) -> ProbeResult:
        """One probe. The script and WAIT go in one round trip when the number of replicas
        to wait for is known beforehand (a fixed `replicas`, or for "all" the replicas the
        previous probe found online); the first probe, and one that finds more replicas
        online than it waited for, waits again for all of them. When a replica left since
        the previous probe, this probe waits for one replica too many and reports a timeout
        (wanted > acked): a replica went away, which is what a probe is there to notice."""
        cfg = self.config
        # connect + script + WAIT must all fit: WAIT gets cfg.timeout, the rest a margin
        started = time.monotonic()
        deadline = started + self.wait_timeout
        timeout_ms = max(1, int(cfg.timeout * 1000))
        try:
            if self._conn is None or self._conn.closed:
                self._conn = await Connection.open(
                    self.endpoint, cfg.timeout, self.tls, client_name="replwatch-probe"
                )
            conn = self._conn
            args = self._script_command()
            wanted = self._online if cfg.replicas == "all" else int(cfg.replicas)
            commands: list[Command] = [("EVALSHA", PROBE_SHA, *args)]
            if wanted is not None:
                commands.append(("WAIT", wanted, timeout_ms))
            sent = time.monotonic()
            replies = await conn.execute(commands, max(0.001, deadline - sent), False)
            need_wait = wanted is None
            reply = replies[0]
            if isinstance(reply, hiredis.ReplyError) and str(reply).startswith("NOSCRIPT"):
                # a WAIT sent with it did not wait for this probe's write: wait again below
                sent = time.monotonic()
                remaining = max(0.001, deadline - sent)
                (reply,) = await conn.execute([("EVAL", PROBE_SCRIPT, *args)], remaining, False)
                need_wait = True
            online = self._online_from(reply)
            acked = 0
            if not need_wait:
                if isinstance(replies[1], hiredis.ReplyError):
                    raise classify_reply_error(str(replies[1]))
                acked = int(replies[1])
            if wanted is None or (cfg.replicas == "all" and online > wanted):
                # the first probe, or more replicas online now than this one waited for
                wanted, need_wait = online, True
            if need_wait:
                remaining = max(0.001, deadline - time.monotonic())
                (reply,) = await conn.execute([("WAIT", wanted, timeout_ms)], remaining)
                acked = int(reply)
            seconds = time.monotonic() - sent
            result = "ok" if acked >= wanted else "timeout"
            return self._answered(
                ProbeResult(self.group, result, wanted, acked, seconds, at=time.time())
            )
        except (RedisError, ValueError, TypeError) as exc:
            return self._failed(exc)

    def _answered(self, result: ProbeResult) -> ProbeResult:
        if self._failing is not None:
            log.info("WAIT probe of group %s works again", self.group)
            self._failing = None
        return result

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None
