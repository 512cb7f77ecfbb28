"""The status page in a real browser: headless Chromium (Debian's chromium and
chromium-driver, driven by Selenium) opens `/` of a live daemon watching a real master and
replica under write load. The replica is paused (SIGSTOP): the page must show its lag rising
and its routing state flipping to "out" without a reload, then flipping back after it is
resumed. A screenshot is saved and inspected for the page's main elements (the red "out"
badge, the red border of the bad group, the lag chart's line) at the places the DOM says they
are. The same page on a narrow screen must not scroll sideways."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from .support import status as made_up
from .support.browser import seconds_of
from .support.daemons import RunningDaemon
from .support.servers import BackgroundWriter, RedisProcess, ServerSet, free_port, wait_for

RED = (0xD9, 0x30, 0x25)
GREEN = (0x1E, 0x8E, 0x3E)


def write_load(master: RedisProcess) -> BackgroundWriter:
    """A write of 200 bytes every 5 ms, in a thread."""
    return BackgroundWriter(master.client(), batch=1, value_size=200, period=0.005, keys=500)


def rgb_near(pixel: tuple[int, ...], color: tuple[int, int, int], tolerance: int = 40) -> bool:
    return all(abs(a - b) <= tolerance for a, b in zip(pixel[:3], color, strict=True))


def colour_share(
    image: Any, rect: dict[str, float], color: tuple[int, int, int], ratio: float
) -> float:
    """The share of pixels of `rect` (CSS px, scaled by the device pixel ratio) near `color`."""
    left, top = int(rect["x"] * ratio), int(rect["y"] * ratio)
    right, bottom = (
        int((rect["x"] + rect["width"]) * ratio),
        int((rect["y"] + rect["height"]) * ratio),
    )
    box = image.crop((left, top, max(left + 1, right), max(top + 1, bottom))).convert("RGB")
    raw = box.tobytes()
    pixels = [tuple(raw[i : i + 3]) for i in range(0, len(raw), 3)]
    return sum(1 for p in pixels if rgb_near(p, color)) / max(1, len(pixels))


def bluish_pixels(image: Any, rect: dict[str, float], ratio: float) -> int:
    """Pixels of `rect` tinted towards the chart's blue (a short line is mostly anti-aliased
    edge over the chart's grey, not the exact colour)."""
    left, top = int(rect["x"] * ratio), int(rect["y"] * ratio)
    right = int((rect["x"] + rect["width"]) * ratio) + 1
    bottom = int((rect["y"] + rect["height"]) * ratio) + 1
    raw = image.crop((left, top, right, bottom)).convert("RGB").tobytes()
    return sum(
        1 for i in range(0, len(raw), 3) if raw[i + 2] - raw[i] >= 40 and raw[i + 2] > raw[i + 1]
    )


def test_status_page_shows_lag_rising_and_routing_flipping(
    debian_servers: ServerSet, browser: Any, tmp_path: Path
) -> None:
    servers = debian_servers
    from PIL import Image

    master = servers.start("master")
    replica = servers.start("replica", replica_of=master)
    wait_for(lambda: replica.info().get("master_link_status") == "up", 15, "replication up")
    port = free_port()
    cfg = tmp_path / "replwatch.yaml"
    cfg.write_text(
        f"""
exporter: {{listen: "127.0.0.1:{port}"}}
poll: {{interval: 250ms, timeout: 200ms}}
heartbeat: {{interval: 100ms}}
probe: {{interval: 500ms, timeout: 250ms}}
routing:
  trip: {{lag_seconds: 1s, for: 0s}}
  recover: {{lag_seconds: 0.5s, for: 0.5s}}
groups:
  - name: shop
    master: "127.0.0.1:{master.port}"
    replicas: ["127.0.0.1:{replica.port}"]
"""
    )
    load = write_load(master)
    try:
        with RunningDaemon(cfg, port) as daemon:
            wait_for(lambda: daemon.fetch("/-/ready")[0] == 200, 20, "daemon ready")
            browser.get(daemon.base + "/")
            row = f'tr[data-replica="{replica.label}"]'

            def text_of(selector: str) -> str:
                # the page redraws every update: read in one script, never hold an element
                return str(
                    browser.execute_script(
                        "const e = document.querySelector(arguments[0]);"
                        "return e ? e.innerText : '';",
                        selector,
                    )
                )

            def cell(field: str) -> str:
                return text_of(f'{row} [data-field="{field}"]')

            wait_for(lambda: "in rotation" in cell("routing"), 20, "the replica in rotation")
            assert seconds_of(cell("lag")) < 1.0, cell("lag")
            assert browser.title == "replwatch"
            loads_before = browser.execute_script("return document.body.dataset.updated")

            replica.pause()
            try:
                seen: list[float] = []

                def lag_rose_and_flipped() -> bool:
                    text = cell("lag")
                    if (text and text[0].isdigit()) or text.startswith("≥"):
                        seen.append(seconds_of(text))
                    return "out" in cell("routing") and bool(seen) and seen[-1] >= 2.0

                wait_for(lag_rose_and_flipped, 20, f"lag rising and routing out; saw {seen[-5:]}")
                # it rose on screen, update after update, without a reload
                assert len(set(seen)) >= 3, seen
                assert seen[-1] > seen[0], seen
                assert (
                    browser.execute_script("return document.body.dataset.updated") != loads_before
                )
                assert browser.execute_script("return performance.navigation.type") == 0
                severity = browser.execute_script(
                    "return document.querySelector('details[data-group=\"shop\"]').dataset.severity"
                )
                assert severity == "bad"
                assert "reads on master" in text_of('details[data-group="shop"] summary')
                assert "unreachable" in cell("routing") or "lag" in cell("routing")

                shot = tmp_path / "status.png"
                browser.save_screenshot(str(shot))
                ratio = float(browser.execute_script("return window.devicePixelRatio") or 1)
                rects = browser.execute_script(
                    """
                    const r = (sel) => { const e = document.querySelector(sel);
                      if (!e) return null; const b = e.getBoundingClientRect();
                      return {x: b.x, y: b.y, width: b.width, height: b.height}; };
                    return {
                      badge: r(arguments[0] + ' [data-field="routing"] .badge'),
                      group: r('details[data-group="shop"]'),
                      chart: r(arguments[0] + ' svg.chart'),
                      summary: r('#summary'),
                    };
                    """,
                    row,
                )
                chart_points = browser.execute_script(
                    "return [...document.querySelectorAll(arguments[0] + ' svg.chart polyline')]"
                    ".flatMap((l) => l.getAttribute('points').split(' '))",
                    row,
                )
            finally:
                replica.resume()
            image = Image.open(shot)
            assert image.size[0] >= 1000 and image.size[1] >= 600
            for name in ("badge", "group", "chart", "summary"):
                rect = rects[name]
                assert rect and rect["width"] > 0 and rect["height"] > 0, (name, rect)
                assert rect["y"] + rect["height"] <= image.size[1] / ratio, (name, rect)
            # the "out" badge is red; the group's left border is red; the chart draws a line
            assert colour_share(image, rects["badge"], RED, ratio) > 0.4
            border = dict(rects["group"], width=5)
            assert colour_share(image, border, RED, ratio) > 0.6
            # the chart spans the last 5 minutes in 3 s buckets: a few seconds of history is a
            # short line at its right end whose newest bucket holds the highest lag so far (the
            # top of the chart: SVG y grows downwards)
            assert bluish_pixels(image, rects["chart"], ratio) >= 1
            ys = [float(p.split(",")[1]) for p in chart_points]
            assert ys and ys[-1] == min(ys) and ys[-1] < 10, chart_points

            # resumed, it catches up: back in rotation, on screen
            wait_for(lambda: "in rotation" in cell("routing"), 30, "back in rotation")

            # a narrow screen: cards instead of a wide table, nothing scrolls sideways
            browser.set_window_size(390, 900)
            wait_for(
                lambda: browser.execute_script(
                    "return document.documentElement.scrollWidth <= window.innerWidth + 1"
                ),
                5,
                "no horizontal scrolling on a narrow screen",
            )
            head_display = browser.execute_script(
                "return getComputedStyle(document.querySelector('table.replicas thead')).display"
            )
            assert head_display == "none"
            label = browser.execute_script(
                "return getComputedStyle(document.querySelector(arguments[0]), '::before').content",
                f'{row} [data-field="lag"]',
            )
            assert label == '"lag"'  # each value has its label beside it
    finally:
        load.stop()


def test_status_page_with_hundreds_of_replicas_and_sync_tasks(browser: Any) -> None:
    """The page with 60 groups of 8 replicas and 3 sync tasks (the document built by the
    real status_document from generated snapshots, served by the real HTTP server): bad
    groups first and open, healthy ones collapsed, the filter narrows to one group, the
    sync tasks show state, lag and a full-sync progress bar."""
    from prometheus_client import CollectorRegistry

    from replwatch.exporter.server import ExporterHTTPServer
    from replwatch.exporter.status_doc import StatusSources
    from replwatch.exporter.status_page import StatusPage
    from replwatch.lag.history import LagHistory
    from replwatch.tasks.watch import SyncTaskView

    snapshots = []
    tables = {}
    history = LagHistory()
    for g in range(60):
        name = f"g{g:02d}"
        lagging = g % 20 == 7  # three groups with a replica out of rotation
        replicas = [
            made_up.replica(
                f"10.0.{g}.{r}:6379", lag_seconds=9.0 if lagging and r == 3 else 0.01 * r
            )
            for r in range(8)
        ]
        snap = made_up.snapshot(name, replicas)
        snapshots.append(snap)
        history.record(snap)
        tables[name] = made_up.table(
            name,
            {
                rv.label: (not (lagging and i == 3), "lag 9s > 2s" if lagging and i == 3 else "ok")
                for i, rv in enumerate(replicas)
            },
        )
    views = [
        SyncTaskView("copy-a", "a:1", "b:1", "incremental", None, True, True, lag_seconds=0.02),
        SyncTaskView(
            "copy-b",
            "c:1",
            "d:1",
            "full_sync",
            None,
            True,
            True,
            progress=0.42,
            keys_loaded=420,
            keys_total=1000,
        ),
        SyncTaskView(
            "copy-c",
            "e:1",
            "f:1",
            "unknown",
            None,
            False,
            True,
            source_error_message="connection refused",
        ),
    ]
    sources = StatusSources(
        snapshots=lambda: snapshots,
        routing=tables.get,
        probes=dict,
        sync=lambda: views,
        history=history.series,
        poll_interval=1.0,
        history_window=history.window,
        version="test",
    )
    server = ExporterHTTPServer(
        ("127.0.0.1", 0),
        CollectorRegistry(),
        lambda: True,
        status=StatusPage(sources, clock=lambda: made_up.NOW),
    )
    server.start()
    try:
        browser.get(f"http://127.0.0.1:{server.bound_port}/")
        wait_for(
            lambda: (
                browser.execute_script("return document.querySelectorAll('details.group').length")
                == 60
            ),
            15,
            "60 groups on the page",
        )
        state = browser.execute_script(
            """
            const groups = [...document.querySelectorAll('details.group')];
            return {
              order: groups.slice(0, 3).map((d) => d.dataset.group),
              open: groups.filter((d) => d.open).map((d) => d.dataset.group),
              rows: document.querySelectorAll('tr[data-replica]').length,
              summary: document.getElementById('summary').innerText,
              tasks: [...document.querySelectorAll('tr[data-task]')].map((t) => t.dataset.task),
              progress: document.querySelector('tr[data-task="copy-b"] [data-field="progress"]')
                .innerText,
              bar: document.querySelector('tr[data-task="copy-b"] .progress > span').style.width,
            };
            """
        )
        scale = browser.execute_script(
            """
            const peak = (g, r) => document.querySelector(
              `tr[data-replica="10.0.${g}.${r}:6379"] [data-field="chart_peak"]`).textContent;
            return {
              lagging: peak(7, 3), healthy: peak(7, 7), none: peak(8, 0),
              reasons: document.querySelector('details[data-group="g07"] [data-field="reasons"]')
                .innerText,
            };
            """
        )
        # the chart's scale is its peak; each group says why it is bad
        assert scale == {
            "lagging": "peak 9.00s",
            "healthy": "peak 0.07s",
            "none": "peak 0.00s",
            "reasons": "1 replica out of rotation",
        }
        assert state["summary"].startswith("60 groups (3 bad) · ")
        assert state["summary"].endswith(" · 3 sync tasks (1 bad)")
        assert state["order"] == ["g07", "g27", "g47"]  # the bad groups, first
        assert state["open"] == ["g07", "g27", "g47"]  # healthy ones collapsed
        assert state["rows"] == 480
        assert "477/480 replicas in rotation" in state["summary"]
        assert state["tasks"] == ["copy-c", "copy-b", "copy-a"]  # failing first
        assert "42%" in state["progress"] and "420/1000 keys" in state["progress"]
        assert state["bar"] == "42%"
        # the filter narrows to the one group holding a replica
        box = browser.find_element("id", "filter")
        box.send_keys("10.0.33.5")
        wait_for(
            lambda: (
                browser.execute_script(
                    "return [...document.querySelectorAll('details.group')]"
                    ".map((d) => d.dataset.group)"
                )
                == ["g33"]
            ),
            5,
            "the filter to leave g33 alone",
        )
    finally:
        server.stop()


def test_status_page_says_why_names_other_followers_and_colours_each_replica(
    debian_servers: ServerSet, browser: Any, tmp_path: Path
) -> None:
    """Issue 18: a group a replwatch sync task reads from lists the task under the group by
    its task name, and the WAIT count says whose acknowledgements it holds; singular and
    plural right. One replica paused: the group's badges name why it is bad, the healthy
    replica's lag is not red (each replica by its own state), the paused one's is."""
    servers = debian_servers
    master = servers.start("master")
    healthy = servers.start("healthy", replica_of=master)
    paused = servers.start("paused", replica_of=master)
    target = servers.start("target")
    for replica in (healthy, paused):
        wait_for(lambda r=replica: r.info().get("master_link_status") == "up", 15, "linked")
    port = free_port()
    cfg = tmp_path / "replwatch.yaml"
    cfg.write_text(
        f"""
exporter: {{listen: "127.0.0.1:{port}"}}
poll: {{interval: 250ms, timeout: 200ms}}
heartbeat: {{interval: 100ms}}
probe: {{interval: 300ms, timeout: 200ms}}
groups:
  - name: shop
    master: "127.0.0.1:{master.port}"
    replicas: ["{healthy.label}", "{paused.label}"]
sync:
  tasks: [{{name: a_to_b, source: "{master.url}", target: "{target.url}"}}]
"""
    )
    group = 'details[data-group="shop"]'

    def text_of(selector: str) -> str:
        return str(
            browser.execute_script(
                "const e = document.querySelector(arguments[0]); return e ? e.innerText : '';",
                selector,
            )
        )

    def lag_colour(replica: RedisProcess) -> tuple[int, ...]:
        css = browser.execute_script(
            "const e = document.querySelector(arguments[0]);"
            "return e ? getComputedStyle(e).color : '';",
            f'tr[data-replica="{replica.label}"] .lag-big',
        )
        return tuple(int(v) for v in re.findall(r"\d+", str(css))[:3])

    load = write_load(master)
    try:
        with RunningDaemon(cfg, port) as daemon:
            wait_for(lambda: daemon.fetch("/-/ready")[0] == 200, 20, "daemon ready")
            browser.get(daemon.base + "/")
            wanted = "WAIT ok 3/3 (2 listed replicas + 1 other follower: sync task a_to_b)"
            probe = f'{group} [data-field="probe"]'
            try:
                wait_for(
                    lambda: wanted in text_of(probe), 30, "the WAIT count with the task's share"
                )
            except AssertionError as exc:
                raise AssertionError(f"{exc}; the page says {text_of(probe)!r}") from None
            others = text_of(f'{group} [data-field="others"]')
            assert "sync task a_to_b (127.0.0.1:0, online" in others, others
            assert text_of("#summary") == (
                "1 group (0 bad) · 2/2 replicas in rotation · 1 sync task (0 bad)"
            )
            assert text_of(f'{group} [data-field="reasons"]') == "ok"

            paused.pause()
            try:
                wait_for(
                    lambda: (
                        "1 replica unreachable" in text_of(f'{group} [data-field="reasons"]')
                        and "WAIT timeout 2/3" in text_of(f'{group} [data-field="reasons"]')
                    ),
                    20,
                    "the badges to name the paused replica and the WAIT timeout",
                )
                assert (
                    browser.execute_script(
                        f"return document.querySelector('{group}').dataset.severity"
                    )
                    == "bad"
                )
                badges = browser.execute_script(
                    "return [...document.querySelectorAll(arguments[0] + ' .reasons .badge')]"
                    ".map((b) => [b.innerText, b.dataset.severity])",
                    group,
                )
                assert ["1 replica unreachable", "bad"] in badges, badges
                assert ["WAIT timeout 2/3", "warn"] in badges, badges
                # the acknowledgements WAIT got: the healthy replica's and the task's
                assert "(1 listed replica + 1 other follower: sync task a_to_b)" in text_of(
                    f'{group} [data-field="probe"]'
                )
                assert rgb_near(lag_colour(paused), RED)
                assert not rgb_near(lag_colour(healthy), RED), lag_colour(healthy)
                assert text_of("#summary").startswith("1 group (1 bad) · 1/2 replicas in rotation")
                # its chart's peak follows with the next history point the page fetches
                peak_field = f'tr[data-replica="{paused.label}"] [data-field="chart_peak"]'
                peaks: list[str] = []

                def peak_rose() -> bool:
                    peak = text_of(peak_field)
                    peaks.append(peak)
                    return peak.startswith("peak ") and seconds_of(peak[5:]) > 0

                try:
                    wait_for(peak_rose, 10, "the paused replica's chart peak above 0")
                except AssertionError as exc:
                    raise AssertionError(f"{exc}; peaks seen {peaks[-5:]}") from None
            finally:
                paused.resume()
    finally:
        load.stop()
