"""One server's connection for a compare (the Side): pipelined commands, raw RESP2 replies,
and every failure as one CompareIncomplete line naming the role and host:port, never the
password."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from typing import Any

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from replwatch.compare.display import reply_text
from replwatch.compare.model import CompareIncomplete
from replwatch.config import RedisEndpoint, TLSConfig

Command = tuple[bytes | str | int, ...]


class Side:
    """One server's connection to one db. Every failure is raised as CompareIncomplete
    naming the role and host:port, never the password."""

    def __init__(
        self,
        role: str,
        endpoint: RedisEndpoint,
        db: int,
        timeout: float,
        tls: TLSConfig | None,
    ) -> None:
        self.role = role
        self.endpoint = endpoint
        self.db = db
        self.timeout = timeout
        self.client = _open_client(endpoint, db, timeout, tls)
        self.version: tuple[int, ...] = ()

    @property
    def name(self) -> str:
        return f"{self.role} {self.endpoint.label}"

    def connect(self) -> None:
        """PING and read the server version: fails early on refused / auth / timeout."""
        self.execute([("PING",)])
        info = self.execute([("INFO", "server")])[0]
        for line in reply_text(info).splitlines():
            if line.startswith("redis_version:"):
                self.version = tuple(
                    int(p) for p in line.partition(":")[2].strip().split(".") if p.isdigit()
                )

    def execute(self, commands: Sequence[Command]) -> list[Any]:
        """Run `commands` in one pipeline. Replies that are WRONGTYPE errors are returned as
        exception objects (the key changed type meanwhile); any other error reply fails."""
        if not commands:
            return []
        try:
            pipe = self.client.pipeline(transaction=False)
            for command in commands:
                _queue(pipe, command)
            replies = pipe.execute(raise_on_error=False)
        except (redis.RedisError, OSError) as exc:
            raise self._failure(exc) from None
        for command, reply in zip(commands, replies, strict=True):
            if isinstance(reply, redis.ResponseError) and not is_wrongtype(reply):
                failure = self._failure(reply)
                raise CompareIncomplete(
                    f"{failure} (in {reply_text(command[0]).upper()})"
                ) from None
        return replies

    def _failure(self, exc: BaseException) -> CompareIncomplete:
        message = f"{self.name}: {failure_reason(exc, self.timeout)}"
        secret = self.endpoint.password
        if secret is not None and secret.get_secret_value():
            message = message.replace(secret.get_secret_value(), "***")
        return CompareIncomplete(message.replace("\n", " "))

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.client.close()


@contextlib.contextmanager
def connected(
    role: str, endpoint: RedisEndpoint, db: int, timeout: float, tls: TLSConfig | None
) -> Iterator[Side]:
    """A connected Side (PING + version read), closed on exit."""
    side = Side(role, endpoint, db, timeout, tls)
    try:
        side.connect()
        yield side
    finally:
        side.close()


def is_wrongtype(reply: Any) -> bool:
    """A WRONGTYPE error reply: the key changed type since its TYPE was read."""
    return isinstance(reply, redis.ResponseError) and str(reply).startswith("WRONGTYPE")


def failure_reason(exc: BaseException, timeout: float) -> str:
    """A failed command or connection → its one-line reason (without the server's name)."""
    if isinstance(exc, redis.AuthenticationError):
        return f"authentication failed: {_first_line(exc)}"
    if isinstance(exc, redis.TimeoutError):
        return f"timed out after {timeout:g}s"
    if isinstance(exc, redis.ConnectionError):
        text = _first_line(exc)
        if "refused" in text.lower():
            return "connection refused"
        return f"connection failed: {text}"
    if isinstance(exc, redis.ResponseError):
        text = _first_line(exc)
        upper = text.upper()
        if upper.startswith(("NOAUTH", "WRONGPASS", "INVALIDPASSWORD")) or (
            "AUTH" in upper and "PASSWORD" in upper
        ):
            return f"authentication failed: {text}"
        return f"server error: {text}"
    if isinstance(exc, OSError):
        return f"connection failed: {exc.strerror or exc}"
    return f"failed: {_first_line(exc)}"


def _first_line(exc: BaseException) -> str:
    lines = str(exc).strip().splitlines()
    return (lines[0] if lines else type(exc).__name__)[:200]


def _queue(pipe: redis.client.Pipeline, command: Command) -> None:
    pipe.execute_command(*command)  # type: ignore[no-untyped-call]


def _open_client(
    endpoint: RedisEndpoint, db: int, timeout: float, tls: TLSConfig | None
) -> redis.Redis:
    tls_kwargs: dict[str, Any] = {}
    if endpoint.tls and tls is not None:
        tls_kwargs = {
            "ssl_ca_certs": str(tls.ca_file) if tls.ca_file else None,
            "ssl_certfile": str(tls.cert_file) if tls.cert_file else None,
            "ssl_keyfile": str(tls.key_file) if tls.key_file else None,
            "ssl_cert_reqs": "none" if tls.insecure_skip_verify else "required",
            "ssl_check_hostname": not tls.insecure_skip_verify,
        }
    client = redis.Redis(
        host=endpoint.host,
        port=endpoint.port,
        db=db,
        username=endpoint.username,
        password=endpoint.password.get_secret_value() if endpoint.password else None,
        ssl=endpoint.tls,
        socket_timeout=timeout,
        socket_connect_timeout=timeout,
        retry=Retry(NoBackoff(), 0),
        client_name="replwatch-compare",
        decode_responses=False,
        protocol=2,  # redis-py 8 defaults to RESP3 (maps, doubles); RESP2 replies are flat
        **tls_kwargs,
    )
    # raw RESP2 replies: bytes, ints, flat lists (scores as the server wrote them)
    client.response_callbacks.clear()
    return client
