"""The exporter's CPU work (rendering /metrics and /status.json) done on the daemon's event
loop instead of in the HTTP server's threads.

Why: a render is pure Python and holds the GIL. In a server thread it competes with the event
loop, and the loop loses far more than the render's CPU time: each socket send or receive the
loop makes releases the GIL, the render thread takes it, and the loop waits up to the switch
interval (5 ms) to get it back. The loop makes thousands of such calls a second (one or two
per node and poll, per heartbeat, per probe), so while a render ran it barely moved: with
1,000 targets a 0.3 s render stalled it for about as long, and black-holed nodes' 0.5 s poll
deadlines fired at 0.8 s (bench/fault_scale.py).

On the loop the render costs its own CPU time and nothing more, and it is cut into slices: a
metric family at a time, handing the loop back whenever a slice has taken SLICE_SECONDS, so
replies, timers and deadlines wait one slice at most. It also reads the loop's own state
(snapshot store, routing tables, statistics) from the thread that changes it.

With no loop attached (tests, tools that serve without a daemon), or called from the loop's
own thread, the work runs in the calling thread as before. If the loop does not finish the
work within `timeout` (a wedged loop), it is cancelled and done in the calling thread, so
/metrics still answers and the staleness alerts can fire."""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import CancelledError as FutureCancelled
from concurrent.futures import TimeoutError as FutureTimeout
from typing import Any, TypeVar

from prometheus_client.registry import Collector

from replwatch.exporter.exposition import Families

log = logging.getLogger("replwatch.http")
T = TypeVar("T")
Encoder = Callable[[Any], bytes]  # prometheus_client's generate_latest and its openmetrics twin
SLICE_SECONDS = 0.004
TIMEOUT_SECONDS = 10.0


def trailer(encoder: Encoder) -> bytes:
    """What the format puts after the last family (OpenMetrics: `# EOF`; text: nothing)."""
    return encoder(Families(()))


async def render_in_slices(
    registry: Collector, encoders: Sequence[Encoder], slice_seconds: float = SLICE_SECONDS
) -> list[bytes]:
    """The exposition of `registry` in each encoder's format, byte for byte what each encoder
    itself gives, from one collection, built a family at a time (each family encoded in
    every format) with the loop handed back between slices."""
    ends = [trailer(encoder) for encoder in encoders]
    parts: list[list[bytes]] = [[] for _ in encoders]
    clock = time.perf_counter
    slice_end = clock() + slice_seconds
    for family in registry.collect():
        one = Families((family,))
        for encoder, end, out in zip(encoders, ends, parts, strict=True):
            out.append(_strip(encoder(one), end))
        if clock() >= slice_end:
            await asyncio.sleep(0)
            slice_end = clock() + slice_seconds
    return [b"".join(out) + end for out, end in zip(parts, ends, strict=True)]


def _strip(body: bytes, end: bytes) -> bytes:
    return body[: len(body) - len(end)] if end else body


class LoopWork:
    """Runs work handed in by the server's threads on the attached event loop."""

    def __init__(
        self, slice_seconds: float = SLICE_SECONDS, timeout: float = TIMEOUT_SECONDS
    ) -> None:
        self.slice_seconds = slice_seconds
        self.timeout = timeout
        self._loop: asyncio.AbstractEventLoop | None = None
        self._loop_thread: int | None = None

    def attach(self, loop: asyncio.AbstractEventLoop | None) -> None:
        """Called on the loop's thread (the daemon's serve()); None detaches."""
        self._loop = loop
        self._loop_thread = threading.get_ident() if loop is not None else None

    def render(self, registry: Collector, encoders: Sequence[Encoder]) -> list[bytes]:
        """The exposition of `registry` in each encoder's format (see render_in_slices)."""
        return self._run(
            lambda: render_in_slices(registry, encoders, self.slice_seconds),
            lambda: [encoder(registry) for encoder in encoders],
            "/metrics",
        )

    def call(self, fn: Callable[[], T], what: str) -> T:
        """fn() on the loop, in one piece (keep it short: the loop waits for it)."""

        async def run() -> T:
            return fn()

        return self._run(run, fn, what)

    def _run(
        self,
        on_loop: Callable[[], Any],
        here: Callable[[], T],
        what: str,
    ) -> T:
        loop = self._loop
        if loop is None or loop.is_closed() or threading.get_ident() == self._loop_thread:
            return here()
        abandoned = threading.Event()

        async def guarded() -> Any:
            # a cancel from another thread reaches the task only after its first step:
            # work given up on before the loop got to it must not start at all
            if abandoned.is_set():
                raise asyncio.CancelledError
            return await on_loop()

        try:
            future = asyncio.run_coroutine_threadsafe(guarded(), loop)
        except RuntimeError:  # the loop closed in between
            return here()
        try:
            result: T = future.result(self.timeout)
            return result
        except FutureCancelled:  # the loop is shutting down (asyncio.run cancels its tasks)
            return here()
        except FutureTimeout:
            abandoned.set()
            future.cancel()
            log.warning(
                "event loop did not render %s within %gs; rendering it in the server thread",
                what,
                self.timeout,
            )
            return here()
