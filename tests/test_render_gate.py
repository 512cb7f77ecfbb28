"""RenderGate (replwatch/exporter/server.py): how /metrics renders are shared between
concurrent scrapes, in any mix of formats. The renderer here stands in for a render round (a
function that takes a while and returns one exposition per format asked for);
tests/test_fault_scale.py and bench/fault_scale.py show the effect on a real daemon.

Asserted with 20 threads scraping back to back, in one format and then split between two:
every answer comes from a render round that started after the scrape arrived (never an older
exposition) and is in the scrape's own format, rounds never overlap, many scrapes share one
round, and rounds take at most about half of the wall time (each is followed by a pause as
long as itself), however the scrapers split between formats. A round that fails fails every
scrape that shares it, and the next round works again."""

from __future__ import annotations

import threading
import time
from typing import Any

import pytest
from prometheus_client import CollectorRegistry

from replwatch.exporter.server import RenderGate

RENDER_SECONDS = 0.02
THREADS = 20
RUN_FOR = 1.0


def text(_registry: Any) -> bytes:  # an "encoder": only its name matters to the stand-in
    return b""


def openmetrics(_registry: Any) -> bytes:
    return b""


class Renderer:
    """Rounds take RENDER_SECONDS; each returns `<round number>:<format>` per format asked
    for; every round's start, end and formats are kept."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.spans: list[tuple[float, float]] = []
        self.formats: list[list[str]] = []
        self.running = 0
        self.most_at_once = 0
        self.fail_next = False

    def __call__(self, registry: CollectorRegistry, encoders: list[Any]) -> list[bytes]:
        with self.lock:
            self.running += 1
            self.most_at_once = max(self.most_at_once, self.running)
            number = len(self.spans)
            self.spans.append((time.monotonic(), 0.0))
            self.formats.append([e.__name__ for e in encoders])
            fail, self.fail_next = self.fail_next, False
        time.sleep(RENDER_SECONDS)  # the work of a round (outside the GIL here)
        with self.lock:
            self.running -= 1
            self.spans[number] = (self.spans[number][0], time.monotonic())
        if fail:
            raise RuntimeError(f"render {number} failed")
        return [f"{number}:{e.__name__}".encode() for e in encoders]


def hammer(gate: RenderGate, encoders: list[Any]) -> tuple[list[tuple[float, int, str]], float]:
    """THREADS threads scraping back to back for RUN_FOR seconds, thread i in format
    encoders[i % len(encoders)]: every answer as (arrival, round number, format), and the
    elapsed time."""
    registry = CollectorRegistry()
    answers: list[tuple[float, int, str]] = []
    lock = threading.Lock()
    stop = threading.Event()

    def scrape_loop(encoder: Any) -> None:
        while not stop.is_set():
            arrived = time.monotonic()
            number, _, name = gate.render(registry, encoder.__name__, encoder).partition(b":")
            assert name.decode() == encoder.__name__  # its own format
            with lock:
                answers.append((arrived, int(number), name.decode()))

    threads = [
        threading.Thread(target=scrape_loop, args=(encoders[i % len(encoders)],))
        for i in range(THREADS)
    ]
    started = time.monotonic()
    for t in threads:
        t.start()
    stop.wait(RUN_FOR)
    stop.set()
    for t in threads:
        t.join(timeout=5)
    return answers, time.monotonic() - started


@pytest.mark.parametrize(
    "encoders", [[text], [openmetrics, text]], ids=["one format", "two formats"]
)
def test_concurrent_scrapes_share_fresh_renders_and_leave_half_the_time(
    encoders: list[Any],
) -> None:
    renderer = Renderer()
    gate = RenderGate(renderer)
    answers, elapsed = hammer(gate, encoders)
    spans = renderer.spans
    assert renderer.most_at_once == 1
    for arrived, number, name in answers:
        assert spans[number][0] >= arrived  # rendered after the scrape arrived
        assert name in renderer.formats[number]
    assert {name for _, _, name in answers} == {e.__name__ for e in encoders}
    assert len(answers) >= 3 * len(spans), (len(answers), len(spans))  # shared
    busy = sum(end - start for start, end in spans)
    # a pause as long as each round, whatever the mix of formats (a gate per format once
    # gave each format its own half)
    assert busy / elapsed <= 0.6, (busy, elapsed)
    assert len(spans) >= RUN_FOR / (2 * RENDER_SECONDS) * 0.5  # but renders keep coming
    if len(encoders) > 1:  # the formats share rounds
        assert sum(1 for names in renderer.formats if len(names) > 1) >= len(spans) // 2


def test_a_failed_render_fails_its_scrapes_and_the_next_one_works() -> None:
    renderer = Renderer()
    gate = RenderGate(renderer, pause=0.0)
    registry = CollectorRegistry()
    renderer.fail_next = True
    with pytest.raises(RuntimeError, match="render 0 failed"):
        gate.render(registry, "text", text)
    assert gate.render(registry, "text", text) == b"1:text"
    assert gate.render(registry, "openmetrics", openmetrics) == b"2:openmetrics"
