"""LoopWork and render_in_slices (replwatch/exporter/loop_work.py): the exporter's renders run
on the daemon's event loop, a metric family at a time (each family encoded in every format
asked for), with the loop handed back between slices; without a loop, on the loop's own
thread, or when the loop is wedged or closed, the work runs in the calling thread instead.
And the HTTP server behind it: /metrics rendered on the loop is byte for byte
prometheus_client's exposition in each format, and scrapes in OpenMetrics (Prometheus: a new
encoder object each) and in text share render rounds.

The effect on a daemon at 1,000 targets is measured in bench/fault_scale.py."""

from __future__ import annotations

import asyncio
import logging
import threading
import time
import urllib.request
from collections.abc import Iterator

import pytest
from prometheus_client import CollectorRegistry
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.exposition import choose_encoder
from prometheus_client.metrics_core import Metric

from replwatch.exporter.exposition import fast_encoder_for
from replwatch.exporter.loop_work import LoopWork, render_in_slices
from replwatch.exporter.server import ExporterHTTPServer

PROMETHEUS_ACCEPT = (
    "application/openmetrics-text;version=1.0.0,application/openmetrics-text;version=0.0.1;"
    "q=0.75,text/plain;version=0.0.4;q=0.5,*/*;q=0.1"
)


class SlowFamilies:
    """A collector whose every family costs `spin` seconds of CPU to collect (as a big
    family does), noting in `events` when each was made."""

    def __init__(self, count: int, spin: float, events: list[str] | None = None) -> None:
        self.count = count
        self.spin = spin
        self.events = events if events is not None else []

    def collect(self) -> Iterator[Metric]:
        for i in range(self.count):
            end = time.perf_counter() + self.spin
            while time.perf_counter() < end:
                pass
            family = GaugeMetricFamily(f"family_{i}", f"Family {i}.", labels=["group"])
            family.add_metric([f"g{i}"], i)
            family.add_metric(['quote"d'], -i)
            self.events.append("family")
            yield family


def registry_of(collector: object) -> CollectorRegistry:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(collector)  # type: ignore[arg-type]
    return registry


@pytest.fixture
def loop_thread() -> Iterator[asyncio.AbstractEventLoop]:
    """An event loop running in a thread of its own, stopped and closed afterwards."""
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    try:
        yield loop
    finally:
        if not loop.is_closed():
            loop.call_soon_threadsafe(loop.stop)
            thread.join(10)
            loop.close()


def attached(loop: asyncio.AbstractEventLoop, **kwargs: float) -> LoopWork:
    work = LoopWork(**kwargs)
    asyncio.run_coroutine_threadsafe(_attach(work, loop), loop).result(10)
    return work


async def _attach(work: LoopWork, loop: asyncio.AbstractEventLoop) -> None:
    work.attach(loop)  # on the loop's thread, as the daemon does


def test_slices_give_each_encoders_bytes() -> None:
    """One collection, every format: text and OpenMetrics, prometheus_client's encoders and
    the fast ones, each byte for byte its encoder's own output (one `# EOF`, OpenMetrics
    only)."""
    registry = registry_of(SlowFamilies(12, 0.0))
    chosen = [choose_encoder(accept) for accept in ("", PROMETHEUS_ACCEPT)]
    encoders = [e for e, _ in chosen] + [fast_encoder_for(e, t, {}) for e, t in chosen]
    sliced = asyncio.run(render_in_slices(registry, encoders, slice_seconds=0.0))
    assert sliced == [encoder(registry) for encoder in encoders]
    assert [body.count(b"# EOF") for body in sliced] == [0, 1, 0, 1]


def test_the_loop_runs_between_slices() -> None:
    """Families costing 2 ms each, slices of 4 ms: the loop's other callbacks run at least
    every few families, never after the whole render."""
    events: list[str] = []
    registry = registry_of(SlowFamilies(40, 0.002, events))
    encoder, _ = choose_encoder("")

    async def main() -> bytes:
        loop = asyncio.get_running_loop()
        stop = False

        def tick() -> None:
            events.append("tick")
            if not stop:
                loop.call_soon(tick)

        loop.call_soon(tick)
        try:
            (body,) = await render_in_slices(registry, [encoder], slice_seconds=0.004)
            return body
        finally:
            stop = True

    body = asyncio.run(main())
    seen = list(events)
    assert body == encoder(registry)
    runs, current = [], 0
    for event in seen:
        if event == "family":
            current += 1
        else:
            runs.append(current)
            current = 0
    runs.append(current)
    assert seen.count("family") == 40
    assert max(runs) <= 3, runs  # 4 ms slices of 2 ms families: 2 or 3 families a slice


def test_render_and_call_run_on_the_attached_loop(loop_thread: asyncio.AbstractEventLoop) -> None:
    work = attached(loop_thread)
    loop_ident = asyncio.run_coroutine_threadsafe(_ident(), loop_thread).result(10)
    registry = registry_of(SlowFamilies(5, 0.0))
    encoder, content_type = choose_encoder(PROMETHEUS_ACCEPT)
    fast = fast_encoder_for(encoder, content_type, {})
    assert work.render(registry, [fast]) == [encoder(registry)]
    assert work.call(threading.get_ident, "ident") == loop_ident != threading.get_ident()


async def _ident() -> int:
    return threading.get_ident()


def test_without_a_loop_the_caller_does_the_work() -> None:
    work = LoopWork()
    registry = registry_of(SlowFamilies(3, 0.0))
    encoder, _ = choose_encoder("")
    assert work.render(registry, [encoder]) == [encoder(registry)]
    assert work.call(threading.get_ident, "ident") == threading.get_ident()


def test_on_the_loops_own_thread_the_work_runs_inline() -> None:
    """A render asked for from the loop's thread must not wait for the loop (a deadlock)."""
    work = LoopWork(timeout=5.0)

    async def main() -> tuple[int, int]:
        work.attach(asyncio.get_running_loop())
        return work.call(threading.get_ident, "ident"), threading.get_ident()

    done, here = asyncio.run(main())
    assert done == here


def test_a_wedged_loop_costs_a_timeout_then_the_caller_renders(
    loop_thread: asyncio.AbstractEventLoop, caplog: pytest.LogCaptureFixture
) -> None:
    """The loop is stuck in a callback: after `timeout` the work is cancelled there and done
    in the calling thread (so /metrics still answers and the staleness alerts can fire); once
    the loop moves again, the cancelled work does not run a second time."""
    work = attached(loop_thread, timeout=0.3)
    release = threading.Event()
    loop_thread.call_soon_threadsafe(release.wait, 30)
    runs: list[int] = []

    def job() -> str:
        runs.append(threading.get_ident())
        return "done"

    try:
        with caplog.at_level(logging.WARNING, logger="replwatch.http"):
            assert work.call(job, "/status.json") == "done"
    finally:
        release.set()
    assert runs == [threading.get_ident()]
    assert "did not render /status.json within 0.3s" in caplog.text
    asyncio.run_coroutine_threadsafe(asyncio.sleep(0.01), loop_thread).result(10)
    assert runs == [threading.get_ident()]  # not run again on the loop


def test_a_closed_loop_leaves_the_work_to_the_caller(
    loop_thread: asyncio.AbstractEventLoop,
) -> None:
    work = attached(loop_thread)
    loop_thread.call_soon_threadsafe(loop_thread.stop)
    deadline = time.monotonic() + 10
    while loop_thread.is_running() and time.monotonic() < deadline:
        time.sleep(0.01)
    loop_thread.close()
    assert work.call(threading.get_ident, "ident") == threading.get_ident()


def test_server_renders_on_the_loop_in_every_format(
    loop_thread: asyncio.AbstractEventLoop,
) -> None:
    """/metrics through a server whose work is attached to a loop, scraped in OpenMetrics
    (as Prometheus asks: a new encoder object every time) and in text, from threads at
    once: every answer is prometheus_client's bytes for its format, and the collector ran
    fewer times than there were answers (scrapes of both formats share render rounds)."""
    events: list[str] = []
    registry = registry_of(SlowFamilies(6, 0.001, events))
    formats = [choose_encoder(accept) for accept in (PROMETHEUS_ACCEPT, "")]
    expected = {content_type: encoder(registry) for encoder, content_type in formats}
    events.clear()
    server = ExporterHTTPServer(("127.0.0.1", 0), registry, lambda: True)
    asyncio.run_coroutine_threadsafe(_attach(server.work, loop_thread), loop_thread).result(10)
    server.start()
    answers: list[tuple[str, bytes]] = []
    lock = threading.Lock()

    def scrape(accept: str) -> None:
        url = f"http://127.0.0.1:{server.bound_port}/metrics"
        for _ in range(10):
            request = urllib.request.Request(url, headers={"Accept": accept})
            with urllib.request.urlopen(request, timeout=10) as answer:
                got = (answer.headers["Content-Type"], answer.read())
            with lock:
                answers.append(got)

    try:
        threads = [
            threading.Thread(target=scrape, args=(accept,))
            for accept in (PROMETHEUS_ACCEPT, "") * 4
        ]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(30)
    finally:
        server.stop()
    assert len(answers) == 80
    for content_type, body in answers:
        assert body == expected[content_type], content_type
    collections = events.count("family") // 6
    assert collections < len(answers), collections
