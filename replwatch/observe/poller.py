"""Polls one node: INFO replication plus what its role needs, in one pipelined round trip."""

from __future__ import annotations

import time
from typing import Any

import hiredis

from replwatch.config import RedisEndpoint, TLSConfig
from replwatch.errors import RedisError, TimeoutFailure
from replwatch.lag.compute import NodeSample
from replwatch.lag.heartbeat import parse_heartbeat
from replwatch.observe.connection import (
    Connection,
    InFlight,
    classify_reply_error,
    encode_command,
)
from replwatch.observe.info import (
    parse_client_list,
    parse_output_buffer_limit,
    parse_replication,
)


def _text(reply: Any) -> str | None:
    if isinstance(reply, bytes):
        return reply.decode("utf-8", "replace")
    return None


def _encode(*commands: tuple[str, ...]) -> bytes:
    return b"".join(encode_command(c) for c in commands)


class NodePoller:
    """Keeps one connection to one node and reconnects on the next poll after a failure."""

    _MASTER = _encode(("INFO", "replication"), ("CLIENT", "LIST", "TYPE", "replica"))
    _MASTER_FIRST = _MASTER + _encode(("CONFIG", "GET", "client-output-buffer-limit"))

    def __init__(
        self,
        endpoint: RedisEndpoint,
        timeout: float,
        tls: TLSConfig | None = None,
        heartbeat_key: str | None = None,
        readonly: bool = False,
    ) -> None:
        """`readonly`: a cluster replica: READONLY once per connection, else the heartbeat
        GET is answered with MOVED to its master."""
        self.endpoint = endpoint
        self.timeout = timeout
        self.tls = tls
        self.heartbeat_key = heartbeat_key
        self.readonly = readonly
        self._conn: Connection | None = None
        self._buffer_limit: int | None = None
        self._buffer_limit_known = False
        replica_commands = [("INFO", "replication"), ("CLIENT", "LIST", "TYPE", "master")]
        if heartbeat_key is not None:
            replica_commands.append(("GET", heartbeat_key))
        self._replica_payload = (_encode(*replica_commands), len(replica_commands))

    @property
    def label(self) -> str:
        return self.endpoint.label

    async def _connection(self, deadline: float) -> Connection:
        if self._conn is None or self._conn.closed:
            self._conn = None
            remaining = max(0.001, deadline - time.monotonic())
            self._conn = await Connection.open(
                self.endpoint, remaining, self.tls, readonly=self.readonly
            )
            self._buffer_limit_known = False
        return self._conn

    def _payload(self, as_master: bool) -> tuple[bytes, int]:
        if as_master:
            return (self._MASTER, 2) if self._buffer_limit_known else (self._MASTER_FIRST, 3)
        return self._replica_payload

    def begin(self, as_master: bool, extra: bytes = b"", extra_count: int = 0) -> InFlight | None:
        """The fast path of a poll cycle over many nodes: send this node's pipeline now on
        its open connection; the caller awaits every node's future together (one deadline
        for the whole cycle, no task or timer per node) and then calls finish(). None when a
        connect is needed first: use poll() for this node. `extra` commands (another
        component's, e.g. a heartbeat write) ride at the end of the pipeline; their
        `extra_count` replies are left to the caller (finish() is told how many)."""
        conn = self._conn
        if conn is None or conn.closed:
            return None
        payload, count = self._payload(as_master)
        try:
            return conn.send_pipeline(payload + extra, count + extra_count)
        except RedisError:
            return None

    def finish(self, inflight: InFlight, as_master: bool, extra_count: int = 0) -> NodeSample:
        """The sample of a begin()'s pipeline; one that has no answer yet timed out (its
        connection is closed: the stream position is unknown)."""
        future = inflight.future
        try:
            if not future.done():
                future.cancel()
                raise TimeoutFailure(f"no reply within {self.timeout:g}s")
            error = future.exception()
            if error is not None:
                if isinstance(error, RedisError):
                    raise error
                raise RedisError(str(error), reason="error")
            replies = future.result()
            if extra_count:
                replies = replies[: len(replies) - extra_count]
            return self._sample(replies, as_master, inflight.sent, inflight.received)
        except RedisError as exc:
            return self._failed(exc, inflight.sent)

    async def poll(self, as_master: bool) -> NodeSample:
        """One poll, connecting first when needed. Never raises for Redis problems: the
        sample carries the error."""
        started = time.monotonic()
        deadline = started + self.timeout
        try:
            conn = await self._connection(deadline)
            payload, count = self._payload(as_master)
            remaining = max(0.001, deadline - time.monotonic())
            replies = await conn.execute_encoded(payload, count, remaining, raise_errors=False)
            return self._sample(replies, as_master, started, time.monotonic())
        except RedisError as exc:
            return self._failed(exc, started)

    def _sample(
        self, replies: list[Any], as_master: bool, started: float, finished: float
    ) -> NodeSample:
        first = replies[0]
        if isinstance(first, hiredis.ReplyError):
            raise classify_reply_error(str(first))
        text = _text(first)
        if text is None:
            raise RedisError("INFO returned no text", reason="protocol")
        info = parse_replication(text)
        clients = None
        client_text = _text(replies[1])
        if client_text is not None:
            clients = tuple(parse_client_list(client_text))
        heartbeat = None
        if as_master and len(replies) > 2:
            self._buffer_limit_known = True
            reply = replies[2]
            if isinstance(reply, list) and len(reply) == 2:
                self._buffer_limit = parse_output_buffer_limit(_text(reply[1]) or "")
        elif not as_master and len(replies) > 2 and not isinstance(replies[2], hiredis.ReplyError):
            heartbeat = parse_heartbeat(replies[2])
        return NodeSample(
            label=self.label,
            info=info,
            heartbeat=heartbeat,
            clients=clients,
            output_buffer_limit=self._buffer_limit if as_master else None,
            started=started,
            finished=finished,
        )

    def _failed(self, exc: RedisError, started: float) -> NodeSample:
        if self._conn is not None and exc.reason not in ("loading",):
            self._conn.close()
            self._conn = None
        return NodeSample(
            label=self.label,
            info=None,
            error_reason=exc.reason,
            error_message=str(exc),
            started=started,
            finished=time.monotonic(),
        )

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None
