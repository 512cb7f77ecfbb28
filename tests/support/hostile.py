"""A hostile RESP server for tests: a thread accepting on 127.0.0.1:<ephemeral> that plays a
script on each connection — send bytes, read the client's commands, stall, flood, close, or
proxy to a real server — and counts the connections it accepted.

The script can be replaced while the server runs (`server.script = ...`); each connection
plays the script current when it was accepted, so switching to `[Proxy(real)]` turns the
server into a well-behaved one for the client's next connection. A script that ends closes
the connection; `Stall()` keeps it open (reading and dropping what the client sends) until
the client closes it or the server stops. close() stops every thread it started.
"""

from __future__ import annotations

import contextlib
import select
import socket
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass

import hiredis

from .servers import LOCALHOST, wait_for

_POLL = 0.05  # how often blocked threads look at the stop flag


@dataclass(frozen=True)
class Send:
    """Send these bytes."""

    data: bytes


@dataclass(frozen=True)
class Recv:
    """Read until the client has sent `commands` more commands (RESP arrays)."""

    commands: int = 1


@dataclass(frozen=True)
class Stall:
    """Send nothing for `seconds` (None: until the client closes or the server stops); what
    the client sends meanwhile is read and dropped."""

    seconds: float | None = None


@dataclass(frozen=True)
class Flood:
    """Send `data` again and again, `total` bytes in all (or until the client goes away)."""

    data: bytes
    total: int


@dataclass(frozen=True)
class Trickle:
    """Send `data` a byte every `every` seconds (what the client sends is read and dropped):
    a connection that is never silent and never finishes anything."""

    data: bytes
    every: float


@dataclass(frozen=True)
class Proxy:
    """From here on, relay bytes both ways to a real server until either side closes."""

    host: str
    port: int


Step = Send | Recv | Stall | Flood | Trickle | Proxy
Script = Sequence[Step]


class ClientGone(Exception):
    """The client closed its side (or the server is stopping)."""


class HostileServer:
    def __init__(self, script: Script) -> None:
        self.script: Script = script
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._listener = socket.create_server((LOCALHOST, 0))
        self._listener.settimeout(_POLL)
        self.host = LOCALHOST
        self.port: int = self._listener.getsockname()[1]
        self.connections = 0  # accepted so far
        self.commands: list[list[list[bytes]]] = []  # per connection, the commands read
        self.bytes_sent = 0
        self._threads: list[threading.Thread] = []
        self._sockets: list[socket.socket] = []
        self._accepter = threading.Thread(target=self._accept, name="hostile-accept", daemon=True)
        self._accepter.start()

    # -- identity

    @property
    def url(self) -> str:
        return f"redis://{self.host}:{self.port}"

    @property
    def label(self) -> str:
        return f"{self.host}:{self.port}"

    def wait_connections(self, count: int, timeout: float = 10.0) -> None:
        wait_for(lambda: self.connections >= count, timeout, f"{count} connections to {self}")

    def __repr__(self) -> str:
        return f"<HostileServer {self.label}, {self.connections} connections>"

    # -- serving

    def _accept(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self._listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return  # closed
            conn.settimeout(_POLL)
            with self._lock:
                self.connections += 1
                self.commands.append([])
                log = self.commands[-1]
                self._sockets.append(conn)
                script = self.script
            thread = threading.Thread(
                target=self._serve, args=(conn, script, log), name="hostile-conn", daemon=True
            )
            with self._lock:
                self._threads.append(thread)
            thread.start()

    def _serve(self, conn: socket.socket, script: Script, log: list[list[bytes]]) -> None:
        reader = hiredis.Reader()
        try:
            for step in script:
                if isinstance(step, Send):
                    self._send(conn, step.data)
                elif isinstance(step, Recv):
                    self._recv(conn, reader, log, step.commands)
                elif isinstance(step, Stall):
                    self._stall(conn, step.seconds)
                elif isinstance(step, Flood):
                    sent = 0
                    while sent < step.total:
                        self._send(conn, step.data)
                        sent += len(step.data)
                elif isinstance(step, Trickle):
                    for i in range(len(step.data)):
                        self._send(conn, step.data[i : i + 1])
                        self._stall(conn, step.every)
                elif isinstance(step, Proxy):
                    self._proxy(conn, step)
        except (ClientGone, OSError):
            pass
        finally:
            with contextlib.suppress(OSError):
                conn.close()

    def _send(self, conn: socket.socket, data: bytes) -> None:
        view = memoryview(data)
        while view:
            if self._stop.is_set():
                raise ClientGone
            try:
                n = conn.send(view)
            except TimeoutError:
                continue  # the client is not reading: wait (or stop)
            view = view[n:]
            with self._lock:
                self.bytes_sent += n

    def _read(self, conn: socket.socket) -> bytes | None:
        """What the client sent (None: nothing within _POLL); ClientGone when it closed."""
        if self._stop.is_set():
            raise ClientGone
        try:
            data = conn.recv(65536)
        except TimeoutError:
            return None
        if not data:
            raise ClientGone
        return data

    def _recv(
        self, conn: socket.socket, reader: hiredis.Reader, log: list[list[bytes]], count: int
    ) -> None:
        got = 0
        while got < count:
            command = reader.gets()
            if command is not False:
                log.append(command if isinstance(command, list) else [command])
                got += 1
                continue
            data = self._read(conn)
            if data is not None:
                reader.feed(data)

    def _stall(self, conn: socket.socket, seconds: float | None) -> None:
        deadline = None if seconds is None else time.monotonic() + seconds
        while deadline is None or time.monotonic() < deadline:
            self._read(conn)

    def _proxy(self, conn: socket.socket, step: Proxy) -> None:
        upstream = socket.create_connection((step.host, step.port), timeout=5)
        upstream.settimeout(_POLL)
        with self._lock:
            self._sockets.append(upstream)
        try:
            peers = {conn: upstream, upstream: conn}
            while not self._stop.is_set():
                ready, _, _ = select.select(list(peers), [], [], _POLL)
                for sock in ready:
                    data = sock.recv(65536)
                    if not data:
                        raise ClientGone
                    self._send(peers[sock], data)
        finally:
            with contextlib.suppress(OSError):
                upstream.close()

    # -- stopping

    def close(self) -> None:
        self._stop.set()
        with contextlib.suppress(OSError):
            self._listener.close()
        self._accepter.join(5)
        with self._lock:
            threads, sockets = list(self._threads), list(self._sockets)
        for thread in threads:
            thread.join(5)
        for sock in sockets:
            with contextlib.suppress(OSError):
                sock.close()
        alive = [t for t in [self._accepter, *threads] if t.is_alive()]
        assert not alive, f"hostile server threads did not stop: {alive}"

    def __enter__(self) -> HostileServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
