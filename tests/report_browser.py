"""A real headless Chromium (Debian's chromium + chromium-driver) driven by
Selenium, for the report tests. Selenium is given the driver's path, so its
manager never tries to download a browser. Absent browser: a skip with the
reason locally, a failure in CI (CI=true), where .ci/run installs it."""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from pathlib import Path
from typing import Iterator

import pytest

CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"


def need_browser() -> None:
    missing = [p for p in (CHROMIUM, CHROMEDRIVER) if not Path(p).exists()]
    if not missing:
        return
    reason = (f"{', '.join(missing)} not installed (apt-get install chromium "
              f"chromium-driver; .ci/run does)")
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(f"the HTML report test needs a browser in CI: {reason}")
    pytest.skip(reason)


@contextlib.contextmanager
def headless_chromium() -> Iterator[object]:
    need_browser()
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    profile = tempfile.mkdtemp(prefix="wdfhil-chromium-")
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run",
                 "--disable-dev-shm-usage", f"--user-data-dir={profile}",
                 "--window-size=1200,1600"):
        options.add_argument(flag)
    driver = None
    try:
        driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
        yield driver
    finally:
        if driver is not None:
            driver.quit()
        shutil.rmtree(profile, ignore_errors=True)


def rendered_boxes(driver, css: str) -> list[dict[str, float]]:
    """getBoundingClientRect of every element matching ``css``."""
    return driver.execute_script(
        "return Array.from(document.querySelectorAll(arguments[0])).map(e => {"
        "const r = e.getBoundingClientRect(); return {w: r.width, h: r.height}; });", css)


def check_report_page(driver, path: Path) -> dict[str, int]:
    """Open ``path`` and check what every report must show; the element counts."""
    driver.get(path.resolve().as_uri())
    counts = {}
    for css in ("svg.timeline", "svg.poolmap", "section.scenario", "li.finding",
                "svg.timeline .ev-step", "svg.timeline .ev-dma", "svg.timeline .ev-interrupt",
                "svg.timeline .ev-request", "svg.timeline .ev-finding", "svg.timeline .ev-fault",
                "svg.poolmap .alloc", "svg.poolmap .redzone", "svg.poolmap .transfer.offending",
                "svg.poolmap .zoom-transfer.offending", "svg.poolmap .cpu-object",
                "svg.poolmap .cpu-redzone", "svg.poolmap .cpu-access.offending"):
        boxes = rendered_boxes(driver, css)
        assert all(b["w"] > 0 and b["h"] > 0 for b in boxes), f"{css} drew nothing: {boxes}"
        counts[css] = len(boxes)
    # Nothing it shows comes from elsewhere: no request left the page.
    requests = driver.execute_script(
        "return performance.getEntriesByType('resource').map(e => e.name)")
    assert requests == [], requests
    return counts
