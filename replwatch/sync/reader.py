"""The source side of a sync task: a replica-protocol client on a blocking socket.

Handshake as a replica does it (PING, AUTH, REPLCONF listening-port / capa eof / capa
psync2, PSYNC; a session reads INFO server / replication / memory before REPLCONF for its
checks: read_facts), then either a full sync payload — disk (`$<len>`) or diskless
(`$EOF:<40-byte mark>` … mark), preceded by keepalive newlines while the source prepares it —
or `+CONTINUE` and straight into the command stream. The stream is RESP arrays; each
command's exact encoded length advances the replication offset. `REPLCONF GETACK` is
answered at once by the caller (it owns the applied offset) and ACKs go out about once a
second; `-LOADING` / `-NOMASTERLINK` replies to PSYNC mean "retry later". A PING answer that
is not RESP (an HTTP server) is WrongServer: the task stops instead of retrying.

A sync task runs in its own process, so plain blocking sockets with timeouts are the
simplest correct model here: no event loop to share with the monitor.
"""

from __future__ import annotations

import contextlib
import re
import select
import socket
import ssl
from collections.abc import Callable, Iterator
from dataclasses import dataclass

from replwatch.config import RedisEndpoint, TLSConfig
from replwatch.errors import (
    AuthFailure,
    ProtocolFailure,
    RedisError,
    TimeoutFailure,
)
from replwatch.observe.connection import (
    build_ssl_context,
    classify_reply_error,
    connect_error,
    encode_command,
)
from replwatch.observe.info import parse_info
from replwatch.observe.resp_limits import STREAM_LIMITS
from replwatch.sync.fatal import WrongServer
from replwatch.sync.preflight import ServerFacts, answers_resp, not_redis, source_problem
from replwatch.sync.resync_reason import SourceHistory
from replwatch.sync.stream_split import command_length, command_reader, take_commands

_OFFSET = re.compile(r"-?[0-9]{1,20}")  # a replication offset (int64)
EOF_MARK_LEN = 40
RECV_SIZE = 256 * 1024
# an incomplete command this big has its items walked (then at twice the size, and so on):
# an unterminated line or a size over STREAM_LIMITS in it is refused, at a cost linear in it
PENDING_WALK_FROM = 1 << 20
INFO_LIMIT = 1 << 20  # an INFO section is a few KiB; more is not an INFO reply


class SourceRetryLater(RedisError):
    """The source cannot serve a replica right now (-LOADING, -NOMASTERLINK): retry."""

    reason = "source_busy"


def open_socket(endpoint: RedisEndpoint, tls: TLSConfig | None, timeout: float) -> socket.socket:
    """A connected (TLS-wrapped for rediss://) blocking socket, or a RedisError naming the
    endpoint by its label (never its password)."""
    try:
        sock = socket.create_connection((endpoint.host, endpoint.port), timeout=timeout)
    except OSError as exc:
        raise connect_error(exc, endpoint, timeout) from None
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
    if endpoint.tls:
        cfg = tls or TLSConfig()
        try:
            sock = build_ssl_context(cfg).wrap_socket(
                sock, server_hostname=cfg.server_name or endpoint.host
            )
        except OSError as exc:
            sock.close()
            raise connect_error(exc, endpoint, timeout) from None
    return sock


class BufferedSocket:
    """A socket with a read buffer: lines, exact reads, and 'what is there now'."""

    def __init__(self, sock: socket.socket, label: str) -> None:
        self.sock = sock
        self.label = label
        self.buf = bytearray()
        self.pos = 0  # start of unread data in buf

    def _compact(self) -> None:
        if self.pos > 1 << 20 or (self.pos and self.pos == len(self.buf)):
            del self.buf[: self.pos]
            self.pos = 0

    def available(self) -> int:
        return len(self.buf) - self.pos

    def fill(self) -> int:
        """Read what the socket has (blocking up to its timeout); the byte count read."""
        self._compact()
        try:
            data = self.sock.recv(RECV_SIZE)
        except TimeoutError:
            raise TimeoutFailure(f"no data from {self.label} within the timeout") from None
        except ssl.SSLWantReadError:
            return 0
        except OSError as exc:
            raise RedisError(
                f"connection to {self.label} failed: {exc.strerror or exc}", reason="reset"
            ) from None
        if not data:
            raise RedisError(f"{self.label} closed the connection", reason="reset")
        self.buf += data
        return len(data)

    def fill_ready(self) -> int:
        """fill() only when the socket has data now (never blocks); bytes read."""
        sock = self.sock
        pending = sock.pending() if isinstance(sock, ssl.SSLSocket) else 0
        if not pending and not select.select([sock], [], [], 0)[0]:
            return 0
        return self.fill()

    def read_line(self) -> bytes:
        """The next line without its CRLF."""
        while True:
            end = self.buf.find(b"\n", self.pos)
            if end >= 0:
                line = bytes(self.buf[self.pos : end])
                self.pos = end + 1
                return line[:-1] if line.endswith(b"\r") else line
            if self.available() > 64 * 1024:
                raise ProtocolFailure(f"{self.label} sent a line longer than 64 KiB")
            self.fill()

    def read_exact(self, n: int) -> bytes:
        while self.available() < n:
            self.fill()
        data = bytes(self.buf[self.pos : self.pos + n])
        self.pos += n
        return data

    def take(self, max_n: int) -> bytes:
        """Up to max_n buffered bytes (at least one: fills when empty)."""
        if not self.available():
            self.fill()
        n = min(max_n, self.available())
        data = bytes(self.buf[self.pos : self.pos + n])
        self.pos += n
        return data

    def send(self, data: bytes) -> None:
        try:
            self.sock.sendall(data)
        except TimeoutError:
            raise TimeoutFailure(f"sending to {self.label} timed out") from None
        except OSError as exc:
            raise RedisError(
                f"connection to {self.label} failed: {exc.strerror or exc}", reason="reset"
            ) from None

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.sock.close()


class RdbPayload:
    """The snapshot as an RDB source for rdb.parse_rdb: read()/read_some() never return a
    byte past the end of the snapshot (for a diskless payload: the end mark is held back
    until it is certain it is not the start of the mark), `loaded` counts bytes read."""

    def __init__(self, conn: BufferedSocket, length: int | None, eof_mark: bytes | None) -> None:
        self.conn = conn
        self.length = length  # disk payload: exact size
        self.eof_mark = eof_mark  # diskless payload: the 40-byte end mark
        self.loaded = 0
        self._ended = False  # diskless: the mark was found at the end of the buffer view

    @property
    def remaining(self) -> int | None:
        return None if self.length is None else self.length - self.loaded

    def _readable(self) -> int:
        """Bytes that may be handed out now without passing the snapshot's end."""
        conn = self.conn
        if self.length is not None:
            left = self.length - self.loaded
            if left <= 0:
                return 0
            if not conn.available():
                conn.fill()
            return min(left, conn.available())
        assert self.eof_mark is not None
        while True:
            if self._ended:
                return 0
            view_end = len(conn.buf)
            found = conn.buf.find(self.eof_mark, conn.pos, view_end)
            if found >= 0:
                # only the end of what was sent can be the mark: the RDB ends with its EOF
                # opcode and checksum, after which the source sends the mark and then the
                # command stream (after our first ACK)
                if found == conn.pos:
                    self._ended = True
                    return 0
                return found - conn.pos
            safe = conn.available() - (EOF_MARK_LEN - 1)
            if safe > 0:
                return safe
            conn.fill()

    def read_some(self, max_n: int, /) -> bytes:
        n = min(max_n, self._readable())
        if n <= 0:
            raise EOFError("end of the snapshot")
        data = bytes(self.conn.buf[self.conn.pos : self.conn.pos + n])
        self.conn.pos += n
        self.loaded += n
        return data

    def read(self, n: int, /) -> bytes:
        parts: list[bytes] = []
        wanted = n
        while wanted:
            chunk = self.read_some(wanted)
            parts.append(chunk)
            wanted -= len(chunk)
        return b"".join(parts) if len(parts) != 1 else parts[0]

    def finish(self) -> None:
        """After the parser saw the RDB's end: consume the diskless end mark (or check a
        disk payload was read whole)."""
        if self.length is not None:
            left = self.length - self.loaded
            if left:
                raise ProtocolFailure(f"{left} bytes of the snapshot left after its EOF opcode")
            return
        assert self.eof_mark is not None
        mark = self.conn.read_exact(EOF_MARK_LEN)
        if mark != self.eof_mark:
            raise ProtocolFailure("the diskless snapshot did not end with its end mark")


@dataclass(frozen=True, slots=True)
class FullResync:
    replid: str
    offset: int  # the stream continues at offset + 1


@dataclass(frozen=True, slots=True)
class Continue:
    replid: str | None  # a new replid when the source switched streams (after a failover)


def check_aligned(raw: bytearray, pos: int, label: str) -> None:
    """The commands taken end at `pos` in `raw` (the bytes fed to the reader), where the next
    one must start (or the bytes end). Spans are computed from the arguments' sizes
    (stream_split.command_length), so a reply that is not an array of bulk strings (a status
    line or an integer as an argument: each is 3 bytes shorter than its bulk string) shows
    here as a misaligned stream: checked after every command or stretch, before it is handed
    on (the span then ends inside the next command or past the bytes read), and again once
    the reader holds no complete command."""
    if pos != len(raw) and (pos > len(raw) or raw[pos] != 42):  # b"*"
        raise ProtocolFailure(
            f"replication stream from {label} is not a stream of commands "
            "(a reply's bytes do not match its arguments)"
        )


class SourceLink:
    """One replication connection to the source."""

    def __init__(
        self,
        endpoint: RedisEndpoint,
        tls: TLSConfig | None,
        timeout: float,
        listening_port: int = 0,
        client_name: str | None = None,
    ) -> None:
        self.endpoint = endpoint
        self.timeout = timeout
        self.conn = BufferedSocket(open_socket(endpoint, tls, timeout), endpoint.label)
        self.listening_port = listening_port
        self.client_name = client_name
        self.reader = command_reader()  # (gets() answers NO_COMMAND, stream_split.py)
        # False: the consumer splits `raw` itself (stream_split's compiled scanner) and the
        # command reader is fed nothing more
        self.feeds_reader = True
        # commands taken from the reader and not yet handed out by commands()
        self._held: list[list[bytes]] = []
        self._held_at = 0
        self.raw = bytearray()  # stream bytes fed to the reader, not yet consumed
        self.raw_pos = 0
        self._walked = 0  # raw[:_walked] holds whole items, checked (see feed_buffered)
        self._walk_at = PENDING_WALK_FROM
        # what the source's INFO said at the handshake (ServerFacts() / None: not read yet)
        self.facts = ServerFacts()
        self.history: SourceHistory | None = None
        self.server: dict[str, str] = {}  # INFO server, parsed ({}: refused or not read)

    def _call(self, *args: str | int) -> bytes:
        self.conn.send(encode_command(args))
        return self.conn.read_line()

    def info(self, section: str) -> str | None:
        """The text of one INFO section; None when the source refuses it (an ACL may)."""
        line = self._call("INFO", section)
        if line.startswith(b"-"):
            return None
        if not line.startswith(b"$"):
            raise ProtocolFailure(f"{self.endpoint.label} answered INFO with {line[:40]!r}")
        try:
            size = int(line[1:])
        except ValueError:
            size = -1
        if size < 0 or size > INFO_LIMIT:
            raise ProtocolFailure(f"{self.endpoint.label} answered INFO with {line[:40]!r}")
        return self.conn.read_exact(size + 2)[:-2].decode("utf-8", "replace")

    def handshake(self) -> None:
        """greet(), then announce(): what a replica sends before PSYNC."""
        self.greet()
        self.announce()

    def greet(self) -> None:
        """PING (its answer must be RESP: the source is a Redis server at all), then AUTH,
        then CLIENT SETNAME `client_name` when given: the source's CLIENT LIST TYPE replica
        then names this link, so the monitor tells a sync task from other followers of the
        master (lag/followers.py); a refusal (an ACL) is ignored. WrongServer for a node
        whose answer to PING is not RESP."""
        ep = self.endpoint
        # PING first, as replicas do; -NOAUTH here is expected before AUTH
        pong = self._call("PING")
        if not answers_resp(pong):
            raise WrongServer(not_redis("source", ep.label, pong))
        if ep.password is not None:
            secret = ep.password.get_secret_value()
            reply = self._call(
                *(("AUTH", ep.username, secret) if ep.username else ("AUTH", secret))
            )
            if reply.startswith(b"-"):
                raise AuthFailure(
                    f"AUTH to {ep.label} failed: {reply[1:120].decode('utf-8', 'replace')}"
                )
        if self.client_name:
            self._call("CLIENT", "SETNAME", self.client_name)  # +OK, or a refusal: ignored

    def read_facts(self) -> None:
        """The INFO sections the checks before PSYNC need, into `facts` and `history` (each
        section that is refused counts as unknown); WrongServer for a Sentinel."""
        server, replication = self.info("server"), self.info("replication")
        self.server = parse_info(server) if server else {}
        self.facts = ServerFacts.parse(server, replication, self.info("memory"))
        self.history = SourceHistory.parse(replication, server)
        problem = source_problem(self.endpoint.label, self.facts)
        if problem is not None:
            raise WrongServer(problem)

    def announce(self) -> None:
        """REPLCONF listening-port and capa eof / psync2; to a Valkey source (read_facts) also
        REPLCONF version, its own: Valkey 9 sends a replica that does not say its version an
        RDB 11 snapshot, which cannot hold hash fields with a TTL (the snapshot then fails,
        and the task would retry it for ever); with it, its own format (RDB 80+), which the
        parser reads. Refused (an older Valkey): the snapshot comes as before."""
        ep = self.endpoint
        version = self.server.get("valkey_version")
        if version:
            self._call("REPLCONF", "version", version)
        for args in (
            ("REPLCONF", "listening-port", str(self.listening_port)),
            ("REPLCONF", "capa", "eof", "capa", "psync2"),
        ):
            reply = self._call(*args)
            if reply.startswith(b"-"):
                err = classify_reply_error(reply[1:].decode("utf-8", "replace"))
                if isinstance(err, AuthFailure):
                    raise AuthFailure(f"{ep.label}: {err}")
                raise RedisError(
                    f"{ep.label} refused {args[0]} {args[1]}: {err}", reason=err.reason
                )

    def psync(self, replid: str | None, offset: int | None) -> FullResync | Continue:
        """PSYNC <replid> <offset+1> to continue after `offset`, or PSYNC ? -1."""
        if replid is None or offset is None:
            self.conn.send(encode_command(("PSYNC", "?", "-1")))
        else:
            self.conn.send(encode_command(("PSYNC", replid, offset + 1)))
        line = self.conn.read_line()
        while line == b"":  # keepalive newlines while the source gets ready
            line = self.conn.read_line()
        text = line.decode("utf-8", "replace")
        if text.startswith("+FULLRESYNC"):
            parts = text.split()
            if len(parts) != 3 or not _OFFSET.fullmatch(parts[2]):
                raise ProtocolFailure(f"malformed FULLRESYNC reply from {self.endpoint.label}")
            return FullResync(parts[1], int(parts[2]))
        if text.startswith("+CONTINUE"):
            parts = text.split()
            return Continue(parts[1] if len(parts) > 1 else None)
        if text.startswith("-"):
            upper = text[1:].upper()
            if upper.startswith(("LOADING", "NOMASTERLINK", "MASTERDOWN")):
                raise SourceRetryLater(f"{self.endpoint.label}: {text[1:200]}")
            raise classify_reply_error(text[1:])
        raise ProtocolFailure(f"unexpected PSYNC reply from {self.endpoint.label}: {text[:80]!r}")

    def payload(self, on_wait: Callable[[], None] | None = None) -> RdbPayload:
        """The full sync payload's header, then the payload as an RDB source. While the
        source prepares the snapshot it sends a newline about once a second; `on_wait` is
        called for each (the task shows it is alive meanwhile: a BGSAVE may take minutes)."""
        line = self.conn.read_line()
        while line == b"":
            if on_wait is not None:
                on_wait()
            line = self.conn.read_line()
        if line.startswith(b"-"):
            raise classify_reply_error(line[1:].decode("utf-8", "replace"))
        if not line.startswith(b"$"):
            raise ProtocolFailure(
                f"expected a snapshot from {self.endpoint.label}, got {line[:40]!r}"
            )
        if line.startswith(b"$EOF:"):
            mark = line[5:]
            if len(mark) != EOF_MARK_LEN:
                raise ProtocolFailure(f"bad diskless end mark from {self.endpoint.label}")
            return RdbPayload(self.conn, None, mark)
        try:
            length = int(line[1:])
        except ValueError:
            length = -1
        if length < 0:
            raise ProtocolFailure(f"bad snapshot length from {self.endpoint.label}")
        return RdbPayload(self.conn, length, None)

    def ack(self, offset: int) -> None:
        self.conn.send(encode_command(("REPLCONF", "ACK", offset)))

    def feed_buffered(self) -> None:
        """Move what the socket delivered into the command reader (and `raw`), dropping
        the bytes of `raw` already consumed (their runs must have been copied out).

        `raw` then starts with the command not yet complete, so the new bytes are checked
        against STREAM_LIMITS before the reader sees them (hiredis would allocate a huge
        command's slots at once, or wait for a huge value for ever), and a command that
        stays incomplete has its items walked as it grows (PENDING_WALK_FROM)."""
        raw = self.raw
        if self.raw_pos:
            del raw[: self.raw_pos]
            self._walked = max(0, self._walked - self.raw_pos)
            self._walk_at = PENDING_WALK_FROM
            self.raw_pos = 0
        conn = self.conn
        if conn.available():
            data = bytes(conn.buf[conn.pos :])
            conn.pos = len(conn.buf)
            pending = len(raw)
            raw += data
            problem = STREAM_LIMITS.oversized(raw, pending, 0)
            if problem is None and pending > STREAM_LIMITS.max_pending:
                problem = f"sent a command of more than {STREAM_LIMITS.max_pending} bytes"
            if problem is None and len(raw) >= self._walk_at:
                self._walk_at = 2 * len(raw)
                self._walked, problem = STREAM_LIMITS.walk(raw, self._walked, len(raw))
            if problem is not None:
                raise ProtocolFailure(f"replication stream from {self.endpoint.label} {problem}")
            if self.feeds_reader:
                self.reader.feed(data)

    def commands(self) -> Iterator[tuple[list[bytes], int, int]]:
        """The commands the reader holds, each with its span in `raw` (start, end), taken
        from the reader a read at a time (stream_split.take_commands) and handed out one by
        one (`raw_pos` moves past each before it is yielded, so a consumer may stop anywhere
        and call again: the rest stays held). A command's span comes from its exact RESP
        length (stream_split.command_length); a span that does not end where the next
        command begins is a reply that is not an array of bulk strings (check_aligned). The
        unfiltered one-target applier takes whole stretches instead (StreamApplier.consume)."""
        label = self.endpoint.label
        if self._held_at >= len(self._held):
            self._held, self._held_at = take_commands(self.reader, label), 0
        raw = self.raw
        while self._held_at < len(self._held):
            argv = self._held[self._held_at]
            self._held_at += 1
            start = self.raw_pos
            self.raw_pos = end = start + command_length(argv)
            if end > len(raw) or (end < len(raw) and raw[end] != 42):  # b"*"
                check_aligned(raw, end, label)  # raises: not an array of bulk strings
            yield argv, start, end
        check_aligned(raw, self.raw_pos, label)

    def receive(self) -> None:
        """Read what the socket has into the command parser (blocking up to the timeout)."""
        self.conn.fill()

    def settimeout(self, seconds: float | None) -> None:
        self.conn.sock.settimeout(seconds)

    def close(self) -> None:
        self.conn.close()
