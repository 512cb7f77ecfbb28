"""The built-in status page: `GET /` (HTML), `/status.css`, `/status.js` and `/status.json`.
The page is self-contained (no CDN, fonts or scripts from elsewhere: it works on an air-gapped
host) and polls /status.json with the same credentials the browser used for the page, so it
sits behind the same web config (TLS, basic auth) as /metrics."""

from __future__ import annotations

import gzip
import json
import threading
import time
from collections.abc import Callable
from pathlib import Path

from replwatch.exporter.status_doc import StatusSources, status_document

STATIC_DIR = Path(__file__).parent / "static"
ASSETS = {
    "/": ("status.html", "text/html; charset=utf-8"),
    "/status.css": ("status.css", "text/css; charset=utf-8"),
    "/status.js": ("status.js", "text/javascript; charset=utf-8"),
}
CACHE_SECONDS = 0.5
Runner = Callable[[Callable[[], bytes], str], bytes]  # (work, what it is) -> its result
# only this origin's own files; no inline script or style, no framing
CONTENT_SECURITY_POLICY = (
    "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; "
    "img-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)


class StatusPage:
    """The page's files (read once) and its data (built per request)."""

    def __init__(
        self,
        sources: StatusSources,
        clock: Callable[[], float] = time.time,
        static_dir: Path = STATIC_DIR,
    ) -> None:
        self.sources = sources
        self._clock = clock
        self._lock = threading.Lock()
        self._cached: tuple[float, bytes, bytes] | None = None
        self._assets = {
            path: ((static_dir / name).read_bytes(), content_type)
            for path, (name, content_type) in ASSETS.items()
        }

    def asset(self, path: str) -> tuple[bytes, str] | None:
        return self._assets.get(path)

    def document(self, gzipped: bool = False, run: Runner | None = None) -> bytes:
        """The JSON (gzip-compressed when asked), built at most every CACHE_SECONDS: several
        open pages cost one build (~100 ms for 1,000 replicas, bench/status_page.py).
        `run`: where the build runs (the server passes LoopWork.call: on the event loop,
        which owns the data read); the compression stays in the calling thread."""
        now = self._clock()

        def build() -> bytes:
            doc = status_document(self.sources, now)
            return (json.dumps(doc, separators=(",", ":")) + "\n").encode()

        with self._lock:
            if self._cached is None or now - self._cached[0] >= CACHE_SECONDS:
                raw = build() if run is None else run(build, "/status.json")
                self._cached = (now, raw, gzip.compress(raw, compresslevel=1))
            return self._cached[2] if gzipped else self._cached[1]
