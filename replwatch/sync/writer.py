"""The target side of a sync task: pipelined writes with replies checked in order.

Batches are sent without waiting and their replies read later (a few batches in flight), so
the target's round trip does not bound throughput. Every incremental batch is one
`MULTI … EXEC` that ends with the checkpoint write, so data and position move together.
A new connection's first PING answer must be RESP (WrongServer otherwise: not a Redis
server); facts() reads what the checks before a session need (replwatch/sync/guard.py).
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from itertools import islice
from typing import Any

import hiredis

from replwatch.config import RedisEndpoint, TLSConfig
from replwatch.errors import AuthFailure, ProtocolFailure, RedisError
from replwatch.observe.connection import classify_reply_error, encode_command
from replwatch.observe.info import parse_info
from replwatch.sync.checkpoint import CHECKPOINT_DB, CHECKPOINT_PREFIX
from replwatch.sync.fatal import WrongServer
from replwatch.sync.lease import Fence, LeaseLost
from replwatch.sync.preflight import ServerFacts, answers_resp, not_redis
from replwatch.sync.reader import BufferedSocket, open_socket


class TargetRejected(RedisError):
    """The target refused what the task must write (a fatal problem for the task: retrying
    would refuse it again)."""

    reason = "target_rejected"


@dataclass(slots=True)
class Batch:
    """Commands sent together; `expect` replies will come back for them."""

    expect: int
    on_done: Callable[[list[Any]], None] | None = None
    what: str = "batch"
    replies: list[Any] = field(default_factory=list)
    # the exact bytes the first replies are expected to be (a run of +OK / +QUEUED), then
    # `tail` replies to parse: checked by one comparison; on_done then gets only the tail
    # replies. Anything else (an error reply) falls back to parsing reply by reply.
    prefix: bytes | None = None
    tail: int = 0
    prefix_done: bool = False  # the prefix was matched and consumed; replies = tail so far


_NOTHING = object()
OK_REPLY = b"+OK\r\n"
QUEUED_REPLY = b"+QUEUED\r\n"
_MULTI = encode_command(("MULTI",))
_EXEC = encode_command(("EXEC",))
# CLIENT SETNAME of the task's connections to the target; a session's own connection adds
# `:<task>` (TargetLink.close_others_named finds the earlier ones by it)
CLIENT_NAME = "replwatch-sync"


def named_clients(listing: str, name: str) -> list[int]:
    """The ids of the clients called `name` in a CLIENT LIST reply (one client a line of
    `key=value` fields; a name holds no space)."""
    ids = []
    for line in listing.splitlines():
        fields = dict(field.partition("=")[::2] for field in line.split())
        if fields.get("name") == name and fields.get("id", "").isdigit():
            ids.append(int(fields["id"]))
    return ids


class TargetLink:
    """One connection to the target with a queue of batches in flight.

    With a `fence` (a task with `ha: true`, see sync/lease.py) every write is checked against
    the lease token under WATCH and sent as MULTI … EXEC, one batch at a time."""

    def __init__(
        self,
        endpoint: RedisEndpoint,
        tls: TLSConfig | None,
        timeout: float,
        max_in_flight: int,
        fence: Fence | None = None,
        client_name: str = CLIENT_NAME,
    ) -> None:
        self.endpoint = endpoint
        self.fence = fence
        self.client_name = client_name
        self._wire_db = 0  # the db the connection is in once everything sent has run
        self.conn = BufferedSocket(open_socket(endpoint, tls, timeout), endpoint.label)
        # gets() answers _NOTHING when no whole reply is buffered (False equals a 0 reply)
        self.reader = hiredis.Reader(notEnoughData=_NOTHING)
        self.in_flight: deque[Batch] = deque()
        self.max_in_flight = max_in_flight
        self.db = 0
        self.info: dict[str, str] = {}
        self._setup()

    # ------------------------------------------------------------------ simple calls

    def call(self, *args: Any) -> Any:
        """One command, waited for (nothing may be in flight)."""
        self.drain()
        self.conn.send(encode_command(args))
        reply = self._next_reply()
        if isinstance(reply, hiredis.ReplyError):
            raise classify_reply_error(str(reply))
        return reply

    def try_call(self, *args: Any) -> Any:
        """call(), with an error reply returned (a hiredis.ReplyError) instead of raised."""
        self.drain()
        self.conn.send(encode_command(args))
        return self._next_reply()

    def close_others_named(self) -> int | None:
        """Close every other connection on the target that carries this link's client name
        (those of earlier sessions of the same task): what they sent and the target has not
        executed yet is never executed. The number closed; None when the target refuses
        CLIENT ID, LIST or KILL (an ACL may)."""
        own = self.try_call("CLIENT", "ID")
        listing = self.try_call("CLIENT", "LIST", "TYPE", "normal")
        if not isinstance(own, int) or not isinstance(listing, bytes):
            return None
        closed = 0
        for client_id in named_clients(listing.decode("utf-8", "replace"), self.client_name):
            if client_id == own:
                continue
            reply = self.try_call("CLIENT", "KILL", "ID", client_id)
            if not isinstance(reply, int):
                return None
            closed += reply
        return closed

    def _setup(self) -> None:
        ep = self.endpoint
        # PING first, its answer read as a line: a server that is not Redis (an HTTP server)
        # answers with text hiredis would call a protocol error, and a one-line message
        # should say what it is
        self.conn.send(encode_command(("PING",)))
        pong = self.conn.read_line()
        if not answers_resp(pong):
            raise WrongServer(not_redis("target", ep.label, pong))
        if pong[:1] not in (b"+", b"-"):  # another RESP type: the rest of it to the reader
            self.reader.feed(pong + b"\r\n")
            self._next_reply()
        if ep.password is not None:
            secret = ep.password.get_secret_value()
            args = ("AUTH", ep.username, secret) if ep.username else ("AUTH", secret)
            self.conn.send(encode_command(args))
            reply = self._next_reply()
            if isinstance(reply, hiredis.ReplyError):
                raise AuthFailure(f"AUTH to {ep.label} failed: {str(reply)[:120]}")
        self.conn.send(encode_command(("CLIENT", "SETNAME", self.client_name)))
        self._next_reply()  # may be refused by ACL: not fatal
        self.call("PING")
        info = self.call("INFO", "server")
        self.info = parse_info(info.decode("utf-8", "replace") if isinstance(info, bytes) else "")

    def facts(self) -> ServerFacts:
        """What INFO server, replication and memory say about the target (a section it
        refuses counts as unknown), for the checks before a session asks its source."""
        texts = []
        for section in ("server", "replication", "memory"):
            reply = self.try_call("INFO", section)
            texts.append(reply.decode("utf-8", "replace") if isinstance(reply, bytes) else None)
        return ServerFacts.parse(*texts)

    def evicted_keys(self) -> int | None:
        """INFO stats evicted_keys (None: refused or absent): keys the target evicted since
        it started (or since CONFIG RESETSTAT)."""
        reply = self.try_call("INFO", "stats")
        if not isinstance(reply, bytes):
            return None
        value = parse_info(reply.decode("utf-8", "replace")).get("evicted_keys", "")
        return int(value) if value.isascii() and value.isdigit() else None

    def select(self, db: int) -> None:
        """Switch the connection's database (a new connection starts in db 0)."""
        if db != self.db:
            self.call("SELECT", db)
            self.db = db
        self._wire_db = db

    def write(self, *args: Any) -> Any:
        """One write command, waited for; fenced when the link has a fence."""
        if self.fence is None:
            return self.call(*args)
        got: list[Any] = []
        self._send_fenced(encode_command(args), Batch(1, got.extend))
        reply = got[0]
        if isinstance(reply, hiredis.ReplyError):
            raise classify_reply_error(str(reply))
        return reply

    def write_all(self, commands: list[tuple[Any, ...]]) -> None:
        """Several writes: one fenced transaction with a fence, else one by one."""
        if self.fence is None:
            for command in commands:
                self.call(*command)
            return
        got: list[Any] = []
        payload = b"".join(encode_command(c) for c in commands)
        self._send_fenced(payload, Batch(len(commands), got.extend))
        for reply in got:
            if isinstance(reply, hiredis.ReplyError):
                raise classify_reply_error(str(reply))

    # ------------------------------------------------------------------ fencing

    def _check_fence(self, fence: Fence, start_db: int) -> None:
        """WATCH the checkpoint and read its lease token; LeaseLost unless it is ours.
        The connection is left in `start_db`, watching."""
        commands: list[tuple[Any, ...]] = [("WATCH", fence.key), ("HGET", fence.key, "lease_token")]
        if start_db != CHECKPOINT_DB:
            commands = [("SELECT", CHECKPOINT_DB), *commands, ("SELECT", start_db)]
        self.conn.send(b"".join(encode_command(c) for c in commands))
        replies = [self._next_reply() for _ in commands]
        for reply in replies:
            if isinstance(reply, hiredis.ReplyError):
                raise classify_reply_error(str(reply))
        token = replies[2 if start_db != CHECKPOINT_DB else 1]
        if token != str(fence.token).encode():
            self.conn.send(encode_command(("UNWATCH",)))
            self._next_reply()
            shown = token.decode("utf-8", "replace") if isinstance(token, bytes) else "none"
            raise LeaseLost(
                f"lease of {fence.key} on {self.endpoint.label} lost: token {shown}, "
                f"ours {fence.token}"
            )

    def _send_fenced(self, payload: bytes, batch: Batch) -> None:
        """Check the token under WATCH, then the batch as MULTI … EXEC (wrapped unless it
        is one already), waited for. An EXEC aborted because the checkpoint changed after
        the WATCH (our renewal, or a takeover) is checked again and resent, or ends in
        LeaseLost: nothing of it ran."""
        fence = self.fence
        assert fence is not None
        self.drain()
        wrapped = not payload.startswith(_MULTI)
        body = _MULTI + payload + _EXEC if wrapped else payload
        expect = batch.expect + 2 if wrapped else batch.expect
        start_db = self._wire_db
        while True:
            self._check_fence(fence, start_db)
            self.conn.send(body)
            replies = [self._next_reply() for _ in range(expect)]
            if replies[-1] is not None:
                break
        self._wire_db = self.db
        if batch.on_done is None:
            return
        if not wrapped:
            batch.on_done(replies)
            return
        result = replies[-1]
        if isinstance(result, list):
            batch.on_done(result)
        else:  # EXECABORT: the first command refused when queued says why
            queued = [r for r in replies[1:-1] if isinstance(r, hiredis.ReplyError)]
            batch.on_done(queued[:1] or [result])

    # ------------------------------------------------------------------ pipelining

    def _next_reply(self) -> Any:
        while True:
            try:
                reply = self.reader.gets()
            except hiredis.ProtocolError as exc:
                raise ProtocolFailure(f"bad reply from {self.endpoint.label}: {exc}") from None
            if reply is not _NOTHING:
                return reply
            conn = self.conn
            if conn.available():
                self.reader.feed(bytes(conn.buf[conn.pos :]))
                conn.pos = len(conn.buf)
                continue
            conn.fill()

    def send(self, payload: bytes, batch: Batch) -> None:
        """Send a batch; when too many are in flight, first finish the oldest."""
        if self.fence is not None:
            self._send_fenced(payload, batch)
            return
        while len(self.in_flight) >= self.max_in_flight:
            self._finish_oldest()
        self.conn.send(payload)
        self.in_flight.append(batch)

    def _reply_now(self) -> Any:
        """The next reply if it is here already, else _NOTHING (never blocks)."""
        try:
            reply = self.reader.gets()
            if reply is _NOTHING and self.conn.available():
                conn = self.conn
                self.reader.feed(bytes(conn.buf[conn.pos :]))
                conn.pos = len(conn.buf)
                reply = self.reader.gets()
        except hiredis.ProtocolError as exc:
            raise ProtocolFailure(f"bad reply from {self.endpoint.label}: {exc}") from None
        return reply

    def _gather(self, batch: Batch, block: bool) -> bool:
        """The batch's missing replies, as many as are here (all of them, waiting, when
        `block`), parsed in one go; True when it has them all."""
        replies = batch.replies
        gets = self.reader.gets
        conn = self.conn
        while True:
            need = batch.expect - len(replies)
            if not need:
                return True
            try:
                replies += islice(iter(gets, _NOTHING), need)
            except hiredis.ProtocolError as exc:
                raise ProtocolFailure(f"bad reply from {self.endpoint.label}: {exc}") from None
            if len(replies) == batch.expect:
                return True
            if conn.available():
                self.reader.feed(bytes(conn.buf[conn.pos :]))
                conn.pos = len(conn.buf)
                continue
            if not block:
                return False
            conn.fill()

    def _fast(self, batch: Batch, block: bool) -> bool | None:
        """Finish `batch` from the raw reply bytes when they are what it expects: its
        `prefix` (the +OK / +QUEUED run) compared in one go while no reply bytes sit in
        the reader, then its `tail` replies (EXEC's array) parsed by the reader. True:
        finished; False: the bytes differ (an error somewhere) or the reader holds bytes:
        parse reply by reply; None: not all here yet (only when not `block`)."""
        conn = self.conn
        if not batch.prefix_done:
            prefix = batch.prefix
            assert prefix is not None
            if self.reader.has_data():
                return False
            need = len(prefix)
            while conn.available() < need:
                if not block:
                    return None
                conn.fill()
            if conn.buf[conn.pos : conn.pos + need] != prefix:
                return False
            conn.pos += need
            batch.prefix_done = True
        while len(batch.replies) < batch.tail:
            reply = self._next_reply() if block else self._reply_now()
            if reply is _NOTHING:
                return None
            batch.replies.append(reply)
        self.in_flight.popleft()
        if batch.on_done is not None:
            batch.on_done(batch.replies)
        return True

    def _finish_oldest(self) -> None:
        batch = self.in_flight[0]
        fast = batch.prefix is not None and (batch.prefix_done or not batch.replies)
        if fast and self._fast(batch, block=True):
            return
        self._gather(batch, block=True)
        self.in_flight.popleft()
        if batch.on_done is not None:
            batch.on_done(batch.replies)

    def poll_replies(self) -> None:
        """Finish the batches whose replies have all arrived, without blocking."""
        conn = self.conn
        if self.in_flight:
            conn.fill_ready()
        while self.in_flight:
            batch = self.in_flight[0]
            if batch.prefix is not None and (batch.prefix_done or not batch.replies):
                done = self._fast(batch, block=False)
                if done is None:
                    return
                if done:
                    continue
            if not self._gather(batch, block=False):
                return
            self.in_flight.popleft()
            if batch.on_done is not None:
                batch.on_done(batch.replies)

    def drain(self) -> None:
        while self.in_flight:
            self._finish_oldest()

    # ------------------------------------------------------------------ checkpoint

    def keys_outside(self, ignore_prefix: bytes) -> int:
        """How many keys the target holds besides the checkpoint keys (INFO keyspace, then
        a SCAN of small databases to leave out the checkpoint keys)."""
        keyspace = self.call("INFO", "keyspace")
        text = keyspace.decode("utf-8", "replace") if isinstance(keyspace, bytes) else ""
        total = 0
        for name, value in parse_info(text).items():
            if not name.startswith("db"):
                continue
            keys = int(value.split(",")[0].partition("=")[2] or 0)
            if keys > 100:
                total += keys  # plainly not just checkpoints
                continue
            db = int(name[2:])
            self.select(db)
            cursor = b"0"
            while True:
                cursor, found = self.call("SCAN", cursor, "COUNT", 1000)
                total += sum(1 for k in found if not k.startswith(ignore_prefix))
                if cursor == b"0":
                    break
        self.select(CHECKPOINT_DB)
        return total

    def flush_keeping_checkpoints(self) -> None:
        """FLUSHALL SYNC, then put back every sync checkpoint that was on the target (other
        tasks' too); one fenced transaction for an HA task (a stale holder can never
        flush). SYNC: a target that flushes lazily (lazyfree-lazy-user-flush, on by default
        in Valkey 8+) would still hold the old data's memory while the snapshot loads, or
        refuse the checkpoint write after an out-of-memory stop's flush."""
        self.select(CHECKPOINT_DB)
        saved: dict[bytes, list[bytes]] = {}
        cursor = b"0"
        while True:
            cursor, keys = self.call(
                "SCAN", cursor, "MATCH", CHECKPOINT_PREFIX + "*", "COUNT", 1000
            )
            for key in keys:
                saved[key] = self.call("HGETALL", key)
            if cursor == b"0":
                break
        self.write_all(
            [("FLUSHALL", "SYNC"), *(("HSET", key, *flat) for key, flat in saved.items() if flat)]
        )

    def close(self) -> None:
        self.conn.close()


def now_ms() -> int:
    return int(time.time() * 1000)
