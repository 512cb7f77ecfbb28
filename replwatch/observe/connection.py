"""A lean asyncio Redis connection for the poll hot path.

One TCP (or TLS) connection per node, commands pipelined in one write, replies parsed by
hiredis. redis-py is used elsewhere; here a poll of 1,000 nodes a second has to cost little
CPU, so the per-command overhead is kept to a Future and a hiredis parse.

Every failure is turned into a RedisError subclass whose `reason` is a short class
(timeout, refused, auth, tls, dns, reset, protocol, loading, error); messages never carry
the password.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import ssl
import time
from collections import deque
from collections.abc import Sequence
from typing import Any

import hiredis

from replwatch.config import RedisEndpoint, TLSConfig
from replwatch.errors import (
    AuthFailure,
    ProtocolFailure,
    RedisError,
    RefusedFailure,
    TimeoutFailure,
)
from replwatch.observe.resp_limits import ReplyGuard

Command = Sequence[bytes | str | int | float]

# What a hiredis reader raises on bytes it cannot turn into a reply: a protocol error, or
# (hiredis-py) TypeError for a RESP3 map whose key is an array or a map (unhashable).
READER_ERRORS = (hiredis.ProtocolError, TypeError)


def encode_command(args: Command) -> bytes:
    parts = [b"*%d\r\n" % len(args)]
    for arg in args:
        if isinstance(arg, bytes):
            data = arg
        elif isinstance(arg, str):
            data = arg.encode()
        else:
            data = str(arg).encode()
        parts.append(b"$%d\r\n%s\r\n" % (len(data), data))
    return b"".join(parts)


def connect_error(exc: OSError, endpoint: RedisEndpoint, timeout: float) -> RedisError:
    """A failed connect (or TLS handshake) as a RedisError whose reason is its class and
    whose message names the endpoint by its label (never a password)."""
    if isinstance(exc, TimeoutError):
        return TimeoutFailure(f"connect to {endpoint.label} timed out after {timeout:g}s")
    if isinstance(exc, ConnectionRefusedError):
        return RefusedFailure(f"connection to {endpoint.label} refused")
    if isinstance(exc, socket.gaierror):
        return RedisError(f"cannot resolve {endpoint.host}: {exc.strerror}", reason="dns")
    if isinstance(exc, ssl.SSLError):
        return RedisError(f"TLS handshake with {endpoint.label} failed: {exc.reason}", reason="tls")
    return RedisError(
        f"cannot connect to {endpoint.label}: {exc.strerror or exc}", reason="unreachable"
    )


def build_ssl_context(tls: TLSConfig) -> ssl.SSLContext:
    ctx = ssl.create_default_context(cafile=str(tls.ca_file) if tls.ca_file else None)
    if tls.cert_file:
        ctx.load_cert_chain(str(tls.cert_file), str(tls.key_file) if tls.key_file else None)
    if tls.insecure_skip_verify:
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    return ctx


class InFlight:
    """One pipeline in flight: `count` replies collected into one future, and the monotonic
    time its last reply was read (`received`; 0.0 until then). Callers that send many
    pipelines at once await the futures together and read `received` instead of stamping
    each one with a callback of their own."""

    __slots__ = ("count", "future", "received", "replies", "sent")

    def __init__(self, count: int, future: asyncio.Future[list[Any]], sent: float) -> None:
        self.count = count
        self.future = future
        self.replies: list[Any] = []
        self.sent = sent
        self.received = 0.0


class _RespProtocol(asyncio.Protocol):
    def __init__(self, label: str = "server") -> None:
        self.label = label
        self.reader = hiredis.Reader()
        self.guard = ReplyGuard()  # sizes a reply declares, checked before hiredis sees them
        self.waiters: deque[InFlight] = deque()
        self.transport: asyncio.Transport | None = None
        self.lost: BaseException | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport

    def _protocol_error(self, message: str) -> None:
        self._fail(ProtocolFailure(message))
        if self.transport is not None:
            self.transport.close()

    def data_received(self, data: bytes) -> None:
        if self.lost is not None:
            return  # (bytes already in flight when the connection was given up)
        problem = self.guard.check(data)
        if problem is not None:
            self._protocol_error(f"a reply from {self.label} {problem}")
            return
        self.reader.feed(data)
        waiters = self.waiters
        now = 0.0
        while True:
            try:
                reply = self.reader.gets()
            except READER_ERRORS as exc:
                self._protocol_error(f"bad reply from {self.label}: {exc}")
                return
            if reply is False:
                problem = self.guard.pending_problem(self.reader.len())
                if problem is not None:
                    self._protocol_error(f"{self.label} {problem}")
                return
            if not waiters:
                # an unsolicited reply means we lost track of the stream
                self._protocol_error(f"unexpected reply from {self.label} (not asked for)")
                return
            pending = waiters[0]
            pending.replies.append(reply)
            if len(pending.replies) == pending.count:
                waiters.popleft()
                if not now:
                    now = time.monotonic()
                pending.received = now
                if not pending.future.done():
                    pending.future.set_result(pending.replies)

    def connection_lost(self, exc: Exception | None) -> None:
        self._fail(RedisError(f"{self.label} closed the connection", reason="reset"))

    def _fail(self, exc: BaseException) -> None:
        self.lost = exc
        while self.waiters:
            pending = self.waiters.popleft()
            if not pending.future.done():
                pending.future.set_exception(exc)
                # whoever awaits it still gets the error; a waiter given up on (its round
                # cancelled at shutdown) must not log "exception was never retrieved"
                pending.future.exception()


def classify_reply_error(message: str) -> RedisError:
    upper = message.upper()
    if upper.startswith(("NOAUTH", "WRONGPASS", "NOPERM", "INVALIDPASSWORD")) or (
        "AUTH" in upper and "PASSWORD" in upper
    ):
        return AuthFailure(message.split("\n")[0][:200])
    if upper.startswith("LOADING"):
        return RedisError("server is loading its dataset", reason="loading")
    if upper.startswith("BUSY"):
        return RedisError("server is busy running a script", reason="busy")
    if upper.startswith(("MOVED", "ASK ")):
        # a cluster node answering for a key whose slot another node serves
        return RedisError(f"{message.split(chr(10))[0][:200]} (key in another shard)", "moved")
    if upper.startswith("CLUSTERDOWN"):
        return RedisError(message.split("\n")[0][:200], reason="cluster_down")
    return RedisError(message.split("\n")[0][:200], reason="error")


class Connection:
    """A pipelined connection to one node. Not safe for concurrent use by two tasks."""

    def __init__(self, transport: asyncio.Transport, protocol: _RespProtocol) -> None:
        self._transport = transport
        self._protocol = protocol

    @property
    def closed(self) -> bool:
        return self._protocol.lost is not None or self._transport.is_closing()

    def local_address(self) -> str | None:
        sock = self._transport.get_extra_info("sockname")
        if isinstance(sock, tuple) and len(sock) >= 2:
            host = sock[0]
            return f"[{host}]:{sock[1]}" if ":" in host else f"{host}:{sock[1]}"
        return None

    @classmethod
    async def open(
        cls,
        endpoint: RedisEndpoint,
        timeout: float,
        tls: TLSConfig | None = None,
        client_name: str = "replwatch",
        readonly: bool = False,
    ) -> Connection:
        loop = asyncio.get_running_loop()
        ssl_ctx: ssl.SSLContext | None = None
        if endpoint.tls:
            ssl_ctx = build_ssl_context(tls or TLSConfig())
        server_hostname = None
        if ssl_ctx is not None:
            server_hostname = (tls.server_name if tls else None) or endpoint.host
        try:
            transport, protocol = await asyncio.wait_for(
                loop.create_connection(
                    lambda: _RespProtocol(endpoint.label),
                    endpoint.host,
                    endpoint.port,
                    ssl=ssl_ctx,
                    server_hostname=server_hostname,
                ),
                timeout,
            )
        except OSError as exc:  # TimeoutError and SSLError are OSErrors too
            raise connect_error(exc, endpoint, timeout) from None
        sock = transport.get_extra_info("socket")
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        conn = cls(transport, protocol)
        setup: list[Command] = []
        if endpoint.password is not None:
            secret = endpoint.password.get_secret_value()
            setup.append(
                ("AUTH", endpoint.username, secret) if endpoint.username else ("AUTH", secret)
            )
        setup.append(("CLIENT", "SETNAME", client_name))
        if endpoint.db:
            setup.append(("SELECT", endpoint.db))
        if readonly:
            setup.append(("READONLY",))  # a cluster replica: reads of its own slots answered
        try:
            replies = await conn.execute(setup, timeout, raise_errors=False)
            for command, reply in zip(setup, replies, strict=True):
                if isinstance(reply, hiredis.ReplyError):
                    if command[0] in ("CLIENT", "READONLY"):
                        # may be renamed or denied by ACL: not fatal (without READONLY a
                        # replica answers reads with MOVED, reported where they are read)
                        continue
                    err = classify_reply_error(str(reply))
                    if command[0] == "AUTH" and not isinstance(err, AuthFailure):
                        err = AuthFailure(f"AUTH failed: {str(reply)[:120]}")
                    raise err
        except BaseException:
            conn.close()
            raise
        return conn

    async def execute(
        self, commands: Sequence[Command], timeout: float, raise_errors: bool = True
    ) -> list[Any]:
        """Send all commands in one write, await all replies. On timeout the connection is
        closed (its stream position is unknown) and TimeoutFailure raised."""
        payload = b"".join(encode_command(c) for c in commands)
        return await self.execute_encoded(payload, len(commands), timeout, raise_errors)

    def send_pipeline(self, payload: bytes, count: int) -> InFlight:
        """Write an encoded pipeline now; its future gets the `count` replies. No timeout: a
        caller that gives up on it must close() the connection (its stream position is
        unknown)."""
        if self.closed:
            raise RedisError("connection is closed", reason="reset")
        future: asyncio.Future[list[Any]] = asyncio.get_running_loop().create_future()
        inflight = InFlight(count, future, time.monotonic())
        self._protocol.waiters.append(inflight)
        self._transport.write(payload)
        return inflight

    def send_encoded(self, payload: bytes, count: int) -> asyncio.Future[list[Any]]:
        """send_pipeline() for a caller that needs only the future."""
        return self.send_pipeline(payload, count).future

    async def execute_encoded(
        self, payload: bytes, count: int, timeout: float, raise_errors: bool = True
    ) -> list[Any]:
        """As execute(), for a pipeline already encoded (the poll hot path keeps its
        pipelines encoded once)."""
        future = self.send_encoded(payload, count)
        loop = asyncio.get_running_loop()

        def expire() -> None:
            if not future.done():
                future.set_exception(TimeoutFailure(f"no reply within {timeout:g}s"))

        timer = loop.call_later(timeout, expire)
        try:
            replies = await future
        except RedisError:
            self.close()
            raise
        finally:
            timer.cancel()
        if raise_errors:
            for reply in replies:
                if isinstance(reply, hiredis.ReplyError):
                    raise classify_reply_error(str(reply))
        return replies

    def close(self) -> None:
        if not self._transport.is_closing():
            self._transport.close()
        self._protocol._fail(RedisError("connection closed", reason="reset"))
