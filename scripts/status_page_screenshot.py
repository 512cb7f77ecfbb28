"""Take docs/status-page.png: the status page of `replwatch demo` in headless Chromium.

Needs what the status page's browser test needs (Debian's chromium and chromium-driver,
selenium; `pip install -e '.[test]'`) and a server for the demo. Starts `replwatch demo` on a
free port, lets it run --settle seconds (so the page's lag chart shows the sawtooth), waits
until its starved replica is at least --min-lag seconds behind (the top of the demo's sawtooth
is 13–14 s), takes a screenshot of the page and stops the demo. It prints the starved
replica's lag and ACK age every second meanwhile:

    python scripts/status_page_screenshot.py [--output docs/status-page.png] [--server PATH]
"""

from __future__ import annotations

import argparse
import io
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
LAG = re.compile(r'^replwatch_replica_lag_seconds\{[^}]*replica="([^"]+)"[^}]*\} (\S+)$', re.M)
ACK = re.compile(r'^replwatch_replica_ack_age_seconds\{[^}]*replica="([^"]+)"[^}]*\} (\S+)$', re.M)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def scrape(base: str) -> str:
    try:
        with urllib.request.urlopen(base + "/metrics", timeout=2) as answer:
            return str(answer.read().decode())
    except OSError:
        return ""


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--output", type=Path, default=ROOT / "docs" / "status-page.png")
    parser.add_argument("--server", help="the demo's server binary (replwatch demo --server)")
    parser.add_argument("--settle", type=float, default=60.0)
    parser.add_argument("--min-lag", type=float, default=10.0)
    parser.add_argument("--width", type=int, default=1200)
    parser.add_argument("--height", type=int, default=800)
    args = parser.parse_args()

    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    port = free_port()
    base = f"http://127.0.0.1:{port}"
    command = [sys.executable, "-m", "replwatch", "demo", "--listen", f"127.0.0.1:{port}"]
    if args.server:
        command += ["--server", args.server]
    demo = subprocess.Popen(command, cwd=ROOT)
    try:
        start = time.monotonic()
        deadline = start + args.settle + 120
        while True:
            if demo.poll() is not None or time.monotonic() > deadline:
                print("the demo stopped, or its starved replica never fell behind", file=sys.stderr)
                return 1
            text = scrape(base)
            lags = {r: float(v) for r, v in LAG.findall(text)}
            acks = {r: float(v) for r, v in ACK.findall(text)}
            worst = max(lags, key=lambda r: lags[r], default=None)
            if worst is not None:
                since = time.monotonic() - start
                print(f"{since:5.1f}s: lag {lags[worst]:.2f}s, ACK age {acks.get(worst)}s")
                if since >= args.settle and lags[worst] >= args.min_lag:
                    break
            time.sleep(1)
        options = webdriver.ChromeOptions()
        options.binary_location = "/usr/bin/chromium"
        for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--hide-scrollbars"):
            options.add_argument(arg)
        options.add_argument(f"--window-size={args.width},{args.height}")
        driver = webdriver.Chrome(service=Service("/usr/bin/chromedriver"), options=options)
        try:
            driver.get(base + "/")
            time.sleep(2.5)  # the page's first data, then a refresh; before the lag's peak
            png = driver.get_screenshot_as_png()
            bottom = driver.execute_script(
                "return Math.max(...Array.from(document.body.querySelectorAll('*'))"
                ".map(e => e.getBoundingClientRect().bottom)) * window.devicePixelRatio"
            )
        finally:
            driver.quit()
        from PIL import Image  # the page's content, without the empty window below it

        image = Image.open(io.BytesIO(png))
        image.crop((0, 0, image.width, min(image.height, int(bottom) + 16))).save(args.output)
        print(f"wrote {args.output}")
        return 0
    finally:
        demo.send_signal(signal.SIGINT)
        demo.wait(timeout=30)


if __name__ == "__main__":
    raise SystemExit(main())
