"""The HTTP server: /metrics, /-/healthy, /-/ready, POST /-/reload, the status page, the
admin API under /api/v1/. Runs in its own threads; reads only the snapshot store (through the
registry's collectors), so a slow Redis never slows a scrape. The renders of /metrics and
/status.json are handed to the daemon's event loop (`work`, loop_work.py) once it attaches.
Admin requests (GET/POST/DELETE /api/v1/…) are passed to the AdminAPI
(replwatch/admin/api.py) whole: this module does no task work itself."""

from __future__ import annotations

import contextlib
import json
import logging
import ssl
import sys
import threading
import time
from collections.abc import Callable, Mapping
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

from prometheus_client import CollectorRegistry
from prometheus_client.exposition import choose_encoder

from replwatch.admin.api import MAX_BODY, PREFIX, AdminAPI, token_matches
from replwatch.decimal_text import is_decimal
from replwatch.exporter.exposition import FastEncoder, fast_encoder_for
from replwatch.exporter.loop_work import LoopWork
from replwatch.exporter.status_page import CONTENT_SECURITY_POLICY, StatusPage
from replwatch.routing.engine import RoutingEngine
from replwatch.web_config import REALM, WebConfigSource, WebSettings, token_header_value

log = logging.getLogger("replwatch.http")
HANDSHAKE_TIMEOUT = 10.0

Route = Callable[["_Handler"], tuple[int, str, bytes]]
Encoder = Callable[[CollectorRegistry], bytes]
RenderRound = Callable[[CollectorRegistry, list[Encoder]], list[bytes]]  # one result a format


class RenderGate:
    """Renders /metrics for any number of concurrent scrapes, in any mix of formats, without
    starving the event loop. A render is pure Python and runs on the loop itself
    (loop_work.py; ~0.1 s of CPU for 1,000 nodes with exposition.py's encoders), so every
    render is time the poll loop does not have. So:
    - one render round at a time, for every format asked for since the previous round
      started (the registry collected once, each family encoded per format), shared by every
      scrape that arrived before it started (each answer is still rendered after its request
      arrived: never an older one);
    - after a round, the next one waits as long as that round took (`pause` times it), so
      renders take at most half the loop's time however many clients hammer /metrics and
      however they split between formats (Prometheus asks for OpenMetrics, curl and many
      agents for text: with a gate per format each got its half).
    A Prometheus server scraping every few seconds never meets the pause."""

    def __init__(self, render: RenderRound, pause: float = 1.0) -> None:
        self._render = render
        self._pause = pause
        self._cond = threading.Condition()
        self._started = 0  # rounds begun
        self._done = 0  # rounds finished (their results in _results)
        self._wanted: dict[str, Encoder] = {}  # format (content type) -> encoder, next round
        self._results: dict[str, bytes | BaseException] = {}  # per format, the newest
        self._rendering = False
        self._not_before = 0.0  # monotonic time the next round may start

    def render(self, registry: CollectorRegistry, key: str, encoder: Encoder) -> bytes:
        """The exposition in `encoder`'s format (`key`: the format's name, its content type),
        from a round that started after this call."""
        with self._cond:
            self._wanted.setdefault(key, encoder)
            wanted = self._started + 1  # the first round that starts after we arrived
            while self._done < wanted:
                now = time.monotonic()
                if self._rendering or now < self._not_before:
                    self._cond.wait(None if self._rendering else self._not_before - now)
                    continue
                self._rendering = True
                self._started += 1
                formats, self._wanted = self._wanted, {}
                self._cond.release()
                started = time.monotonic()
                results: dict[str, bytes | BaseException]
                try:
                    results = dict(
                        zip(formats, self._render(registry, list(formats.values())), strict=True)
                    )
                except BaseException as exc:  # every scrape sharing this round gets it
                    results = dict.fromkeys(formats, exc)
                finally:
                    took = time.monotonic() - started
                    self._cond.acquire()
                # merged: a format this round did not render keeps its newest result, from
                # a round that still started after its waiters arrived
                self._results.update(results)
                self._done = self._started
                self._rendering = False
                self._not_before = time.monotonic() + self._pause * took
                self._cond.notify_all()
            result = self._results[key]
        if isinstance(result, BaseException):
            raise result
        return result


class _Handler(BaseHTTPRequestHandler):
    server: ExporterHTTPServer
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: Any) -> None:
        log.debug("%s " + format, self.address_string(), *args)

    def parse_request(self) -> bool:
        """The request line and headers, then the web config's basic auth (every path, as
        exporter-toolkit has it): a request without good credentials gets 401 here."""
        if not super().parse_request():
            return False
        settings = self.server.web_settings()
        self.web = settings
        if settings is not None and not settings.authorized(self.headers.get("Authorization")):
            self._discard_body()
            self._send(
                401,
                "text/plain; charset=utf-8",
                b"Unauthorized\n",
                {"WWW-Authenticate": f'Basic realm="{REALM}"'},
            )
            return False
        return True

    def _send(
        self,
        status: int,
        content_type: str,
        body: bytes,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        self.send_response(status)
        settings = getattr(self, "web", None)
        if settings is not None:
            for name, value in settings.headers.items():
                self.send_header(name, value)
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def do_GET(self) -> None:
        path = self.path.split("?", 1)[0]
        if path.startswith(PREFIX):
            self._admin()
        elif path == "/metrics":
            encoder, content_type = choose_encoder(self.headers.get("Accept", ""))
            try:
                body = self.server.render(encoder, content_type)
            except Exception:  # a collector bug must not kill the server thread
                log.exception("rendering /metrics failed")
                self._send(500, "text/plain; charset=utf-8", b"error rendering metrics\n")
                return
            self._send(200, content_type, body)
        elif path == "/-/healthy":
            self._send(200, "text/plain; charset=utf-8", b"OK\n")
        elif path == "/-/ready":
            if self.server.is_ready():
                self._send(200, "text/plain; charset=utf-8", b"ready\n")
            else:
                self._send(503, "text/plain; charset=utf-8", b"not ready: first poll pending\n")
        elif path == "/-/reload":
            self._send(
                405, "text/plain; charset=utf-8", b"use POST /-/reload\n", {"Allow": "POST, PUT"}
            )
        elif path == "/routing" or path.startswith("/routing/"):
            self._routing(path)
        elif path.startswith("/health/replica/"):
            self._replica_health(path)
        elif path == "/status.json" and self.server.status is not None:
            gzipped = "gzip" in self.headers.get("Accept-Encoding", "")
            try:
                body = self.server.status.document(gzipped, self.server.work.call)
            except Exception:  # a rendering bug must not kill the server thread
                log.exception("rendering /status.json failed")
                self._send(500, "text/plain; charset=utf-8", b"error rendering status\n")
                return
            headers = {"Cache-Control": "no-store", "Vary": "Accept-Encoding"}
            if gzipped:
                headers["Content-Encoding"] = "gzip"
            self._send(200, "application/json", body, headers)
        elif self.server.status is not None and (asset := self.server.status.asset(path)):
            body, content_type = asset
            self._send(
                200,
                content_type,
                body,
                {"Content-Security-Policy": CONTENT_SECURITY_POLICY, "Cache-Control": "no-cache"},
            )
        elif path == "/":
            body = (
                b"<html><head><title>replwatch</title></head><body><h1>replwatch</h1>"
                b'<p><a href="/metrics">Metrics</a></p></body></html>\n'
            )
            self._send(200, "text/html; charset=utf-8", body)
        else:
            self._send(404, "text/plain; charset=utf-8", b"not found\n")

    do_HEAD = do_GET

    def do_POST(self) -> None:
        path = self.path.split("?", 1)[0]
        if path.startswith(PREFIX):
            self._admin()
        elif path == "/-/reload" and self.command in ("POST", "PUT"):
            self._discard_body()
            self._reload()
        else:
            self._discard_body()
            self._send(405, "text/plain; charset=utf-8", b"method not allowed\n")

    do_DELETE = do_POST
    do_PUT = do_POST

    def _reload(self) -> None:
        """POST /-/reload (as Prometheus has it): read the config file again and apply it.
        When an admin token is configured, it is needed here too (401 without it)."""
        reload = self.server.reload
        text = "text/plain; charset=utf-8"
        if reload is None:
            self._send(404, text, b"reload is not available (the config is not from a file)\n")
            return
        admin = self.server.admin
        token = admin.token if admin is not None else None
        if token is not None and not token_matches(self._admin_authorization(), token):
            self._send(
                401,
                text,
                b"missing or wrong admin token: send Authorization: Bearer <admin.token> "
                b"(or X-Replwatch-Token: <admin.token> behind basic auth)\n",
                {"WWW-Authenticate": "Bearer"},
            )
            return
        try:
            ok, message = reload()
        except Exception:  # a reload bug must not kill the server thread
            log.exception("reload failed")
            self._send(500, text, b"reload failed (see the daemon's log)\n")
            return
        self._send(200 if ok else 500, text, (message + "\n").encode())

    def _admin_authorization(self) -> str | None:
        """The admin token as `Authorization: Bearer …`: from `X-Replwatch-Token` when
        given (a client behind basic auth sends its credentials in Authorization), else
        the Authorization header itself."""
        return token_header_value(self.headers) or self.headers.get("Authorization")

    def _discard_body(self) -> None:
        length = self.headers.get("Content-Length")
        if length and is_decimal(length) and int(length) <= MAX_BODY:
            self.rfile.read(int(length))
        elif length:
            self.close_connection = True

    def _admin(self) -> None:
        length_header = self.headers.get("Content-Length") or "0"
        if not is_decimal(length_header):
            self.close_connection = True
            self._json(400, {"error": "Content-Length: must be a number of bytes"})
            return
        length = int(length_header)
        if length > MAX_BODY:
            self.close_connection = True  # the body stays unread
            self._json(413, {"error": f"body: larger than {MAX_BODY} bytes"})
            return
        body = self.rfile.read(length) if length else b""
        admin = self.server.admin
        if admin is None:
            self._json(404, {"error": "the admin API is not available in this process"})
            return
        try:
            response = admin.handle(
                self.command,
                self.path,
                self._admin_authorization(),
                body,
                self.headers.get("Content-Type"),
            )
        except Exception:  # a lifecycle bug must not kill the server thread
            log.exception("admin API %s %s failed", self.command, self.path)
            self._json(500, {"error": "internal error (see the daemon's log)"})
            return
        self._json(response.status, dict(response.body), response.headers)

    def _json(self, status: int, data: object, headers: Mapping[str, str] | None = None) -> None:
        body = (json.dumps(data, indent=2, sort_keys=True) + "\n").encode()
        self._send(status, "application/json", body, headers)

    def _routing(self, path: str) -> None:
        routing = self.server.routing
        if routing is None:
            self._json(404, {"error": "routing is not enabled"})
            return
        if path == "/routing":
            self._json(200, {"groups": [t.to_dict() for t in routing.tables()]})
            return
        group = unquote(path[len("/routing/") :])
        table = routing.table(group)
        if table is None:
            self._json(404, {"error": f"no group {group!r}"})
        else:
            self._json(200, table.to_dict())

    def _replica_health(self, path: str) -> None:
        """200 while the replica is in rotation (and, with ?max_lag_seconds=, its lag is at
        most that), else 503 — the contract HAProxy/Envoy/Kubernetes checks expect."""
        routing = self.server.routing
        parts = path[len("/health/replica/") :].split("/")
        if routing is None or len(parts) != 2:
            self._send(404, "text/plain; charset=utf-8", b"use /health/replica/<group>/<replica>\n")
            return
        group, replica = unquote(parts[0]), unquote(parts[1])
        table = routing.table(group)
        entry = table.entry(replica) if table is not None else None
        if entry is None:
            self._send(404, "text/plain; charset=utf-8", b"unknown group or replica\n")
            return
        query = parse_qs(urlsplit(self.path).query)
        ok, why = entry.in_rotation, entry.reason
        if ok and "max_lag_seconds" in query:
            try:
                limit = float(query["max_lag_seconds"][0])
            except ValueError:
                self._send(400, "text/plain; charset=utf-8", b"max_lag_seconds must be a number\n")
                return
            if entry.lag_seconds is None or entry.lag_seconds > limit:
                ok, why = False, f"lag {entry.lag_seconds} > max_lag_seconds {limit:g}"
        status = 200 if ok else 503
        self._json(
            status,
            {
                "group": group,
                "replica": replica,
                "in_rotation": ok,
                "reason": why,
                "lag_seconds": entry.lag_seconds,
                "lag_bytes": entry.lag_bytes,
            },
        )


class ExporterHTTPServer(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(
        self,
        address: tuple[str, int],
        registry: CollectorRegistry,
        is_ready: Callable[[], bool],
        routing: RoutingEngine | None = None,
        admin: AdminAPI | None = None,
        web: WebConfigSource | None = None,
        status: StatusPage | None = None,
    ) -> None:
        self.status = status
        self.routing = routing
        self.admin = admin
        self.web = web
        self.registry = registry
        # POST /-/reload: () -> (ok, message); set by the daemon when it can reload
        self.reload: Callable[[], tuple[bool, str]] | None = None
        self.is_ready = is_ready
        # the renders run on the daemon's event loop once it attaches (loop_work.py)
        self.work = LoopWork()
        self._gate = RenderGate(self._render_on_loop)  # one for every format
        self._encoders: dict[str, FastEncoder] = {}  # per content type (exposition.py)
        self._encoders_lock = threading.Lock()
        super().__init__(address, _Handler)
        self._thread: threading.Thread | None = None
        self.clients_gone = 0  # connections a client reset or closed mid-request

    def handle_error(self, request: Any, client_address: Any) -> None:
        """A client that resets or closes its connection mid-request (HAProxy's health
        checks do, every check) is logged once at info, then at debug: no traceback. Any
        other error in a request is a bug and keeps its traceback."""
        exc = sys.exc_info()[1]
        if not isinstance(exc, ConnectionError | TimeoutError):
            log.exception("request from %s failed", client_address[0] if client_address else "?")
            return
        self.clients_gone += 1
        level = logging.INFO if self.clients_gone == 1 else logging.DEBUG
        log.log(
            level,
            "client %s closed its connection mid-request (%s); load balancer health checks"
            " do this, and further ones are logged at debug",
            client_address[0] if client_address else "?",
            type(exc).__name__,
        )

    def web_settings(self) -> WebSettings | None:
        return self.web.current() if self.web is not None else None

    def finish_request(self, request: Any, client_address: Any) -> None:
        """In the connection's own thread: the TLS handshake (when the web config has
        tls_server_config), bounded by HANDSHAKE_TIMEOUT so a silent client holds only its
        own thread, then the request. A failed handshake is logged at debug and dropped."""
        settings = self.web_settings()
        if settings is None or settings.context is None:
            super().finish_request(request, client_address)
            return
        request.settimeout(HANDSHAKE_TIMEOUT)
        try:
            conn = settings.context.wrap_socket(
                request, server_side=True, do_handshake_on_connect=False
            )
        except OSError:
            return
        try:
            conn.do_handshake()
            if not settings.allowed_peer(conn.getpeercert()):
                log.info("TLS client %s: no SAN in client_allowed_sans", client_address)
                return
            conn.settimeout(None)
            super().finish_request(conn, client_address)
        except (OSError, ssl.SSLError) as exc:
            log.debug("TLS connection from %s failed: %s", client_address, exc)
        finally:
            with contextlib.suppress(OSError):
                conn.close()

    @property
    def scheme(self) -> str:
        return "https" if self.web is not None and self.web.tls else "http"

    def render(self, encoder: Encoder, content_type: str) -> bytes:
        """The exposition in `encoder`'s format, through the RenderGate (the fast encoder
        for the content type when there is one: exposition.py; kept per content type, as
        choose_encoder makes a new encoder object per OpenMetrics request)."""
        with self._encoders_lock:
            fast = fast_encoder_for(encoder, content_type, self._encoders)
        return self._gate.render(self.registry, content_type, fast)

    def _render_on_loop(self, registry: CollectorRegistry, encoders: list[Encoder]) -> list[bytes]:
        return self.work.render(registry, encoders)

    @property
    def bound_port(self) -> int:
        return int(self.server_address[1])

    def start(self) -> None:
        self._thread = threading.Thread(
            target=self.serve_forever, name="replwatch-http", daemon=True
        )
        self._thread.start()

    def stop(self) -> None:
        self.shutdown()
        self.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)
