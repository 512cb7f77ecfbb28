"""Headless Chromium for the status page's tests (Debian's chromium and chromium-driver,
driven by Selenium): the `browser` fixture (registered in tests/conftest.py), and reading the
page's durations back."""

from __future__ import annotations

import re
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from .servers import in_ci

CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"


def require_browser() -> None:
    missing = [p for p in (CHROMIUM, CHROMEDRIVER) if not shutil.which(p)]
    try:
        import PIL  # noqa: F401
        import selenium  # noqa: F401
    except ImportError:
        missing.append("selenium / pillow (pip install -e '.[test]')")
    if missing:
        message = f"browser test needs {', '.join(missing)} (scripts/test installs them)"
        if in_ci():
            pytest.fail(message)
        pytest.skip(message)


@pytest.fixture
def browser(tmp_path: Path) -> Iterator[Any]:
    """A headless Chromium (1280×1000) with its own profile in the test's tmp dir; quit at
    teardown (which stops chromedriver and the browser it started)."""
    require_browser()
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for arg in (
        "--headless=new",
        "--no-sandbox",  # root in a container
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--window-size=1280,1000",
        f"--user-data-dir={tmp_path / 'chromium-profile'}",
    ):
        options.add_argument(arg)
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    try:
        yield driver
    finally:
        driver.quit()


def seconds_of(text: str) -> float:
    """A duration as the page prints it ("1.23s", "≥4.0s", "2m") → seconds."""
    match = re.match(r"[≥]?([\d.]+)(s|m|h)", text.strip())
    assert match, f"not a duration: {text!r}"
    scale = {"s": 1, "m": 60, "h": 3600}[match.group(2)]
    return float(match.group(1)) * scale
