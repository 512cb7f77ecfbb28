"""RenderGate (replwatch/exporter/server.py): how /metrics renders are shared between
concurrent scrapes. The renderer here stands in for prometheus_client's exposition (a
function that takes a while and returns bytes); tests/test_fault_scale.py shows the effect
on a real daemon (50 scrapers, polling unharmed).

Asserted with 20 threads scraping back to back: every answer comes from a render that
started after the scrape arrived (never an older exposition), renders never overlap, many
scrapes share one render, and renders take at most about half of the wall time (each is
followed by a pause as long as itself). A render that fails fails every scrape that shares
it, and the next render works again."""

from __future__ import annotations

import threading
import time

import pytest
from prometheus_client import CollectorRegistry

from replwatch.exporter.server import RenderGate

RENDER_SECONDS = 0.02
THREADS = 20
RUN_FOR = 1.0


class Renderer:
    """Renders take RENDER_SECONDS; each returns its own number; start and end are kept."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.spans: list[tuple[float, float]] = []
        self.running = 0
        self.most_at_once = 0
        self.fail_next = False

    def __call__(self, registry: CollectorRegistry) -> bytes:
        with self.lock:
            self.running += 1
            self.most_at_once = max(self.most_at_once, self.running)
            number = len(self.spans)
            self.spans.append((time.monotonic(), 0.0))
            fail, self.fail_next = self.fail_next, False
        time.sleep(RENDER_SECONDS)  # the work of a render (outside the GIL here)
        with self.lock:
            self.running -= 1
            self.spans[number] = (self.spans[number][0], time.monotonic())
        if fail:
            raise RuntimeError(f"render {number} failed")
        return str(number).encode()


def test_concurrent_scrapes_share_fresh_renders_and_leave_half_the_time() -> None:
    renderer = Renderer()
    gate = RenderGate(renderer)
    registry = CollectorRegistry()
    answers: list[tuple[float, int]] = []  # (arrival, render number)
    lock = threading.Lock()
    stop = threading.Event()

    def scrape_loop() -> None:
        while not stop.is_set():
            arrived = time.monotonic()
            number = int(gate.render(registry))
            with lock:
                answers.append((arrived, number))

    threads = [threading.Thread(target=scrape_loop) for _ in range(THREADS)]
    started = time.monotonic()
    for t in threads:
        t.start()
    stop.wait(RUN_FOR)
    stop.set()
    for t in threads:
        t.join(timeout=5)
    elapsed = time.monotonic() - started

    spans = renderer.spans
    assert renderer.most_at_once == 1
    for arrived, number in answers:
        assert spans[number][0] >= arrived  # rendered after the scrape arrived
    assert len(answers) >= 3 * len(spans), (len(answers), len(spans))  # shared
    busy = sum(end - start for start, end in spans)
    assert busy / elapsed <= 0.6, (busy, elapsed)  # a pause as long as each render
    assert len(spans) >= RUN_FOR / (2 * RENDER_SECONDS) * 0.5  # but renders keep coming


def test_a_failed_render_fails_its_scrapes_and_the_next_one_works() -> None:
    renderer = Renderer()
    gate = RenderGate(renderer, pause=0.0)
    registry = CollectorRegistry()
    renderer.fail_next = True
    with pytest.raises(RuntimeError, match="render 0 failed"):
        gate.render(registry)
    assert gate.render(registry) == b"1"
