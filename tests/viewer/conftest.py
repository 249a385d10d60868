"""Fixtures of the viewer tests: a real heatmap of the real mosaic slides in ``data/``,
the real server on a free port, and headless Chromium (Debian's) driven by Selenium.

The browser is required: when Chromium or its driver is missing the browser
tests fail (they never skip), naming the command that installs them.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from _viewer import INSTALL_HINT, MOSAICS, SLIDE_NAMES, make_results, make_stain_results


@pytest.fixture(scope="session")
def results(tmp_path_factory) -> Path:
    """A results folder: real heatmaps of the 4 test mosaics of ``data/`` (a few seconds)."""
    d = tmp_path_factory.mktemp("viewer")
    make_results(d / "results", [MOSAICS / f"{n}.tif" for n in SLIDE_NAMES], d)
    return d / "results"


@pytest.fixture(scope="session")
def scores(results) -> dict[str, float]:
    """Slide scores of the results, by name."""
    return {p.stem: json.loads(p.read_text())["score"] for p in results.glob("*.json")}


@pytest.fixture(scope="session")
def server(results):
    """The real viewer server on a free loopback port, with ground truth from the manifest."""
    from wsiheat.viewer.catalog import build_catalog
    from wsiheat.viewer.server import ViewerServer, create_app

    catalog = build_catalog(results, manifest=MOSAICS / "manifest.csv")
    srv = ViewerServer(create_app(catalog), "127.0.0.1", 0).start()
    yield srv
    srv.shutdown()


@pytest.fixture(scope="session")
def stain_results(tmp_path_factory) -> Path:
    """A results folder: real heatmaps of the real H&E region, with and without a Macenko stain record."""
    d = tmp_path_factory.mktemp("viewer_stain")
    make_stain_results(d / "results", d)
    return d / "results"


@pytest.fixture(scope="session")
def stain_server(stain_results):
    """The real viewer server over :func:`stain_results`."""
    from wsiheat.viewer.catalog import build_catalog
    from wsiheat.viewer.server import ViewerServer, create_app

    srv = ViewerServer(create_app(build_catalog(stain_results)), "127.0.0.1", 0).start()
    yield srv
    srv.shutdown()


@pytest.fixture(scope="session")
def browser():
    """Headless Chromium driven by Selenium; fails (never skips) when it is not installed."""
    try:
        from selenium import webdriver
        from selenium.webdriver.chrome.service import Service
    except ImportError:
        pytest.fail(f"selenium is not installed; {INSTALL_HINT}")
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    driver_path = shutil.which("chromedriver")
    if not chromium or not driver_path:
        pytest.fail(f"headless Chromium is required (chromium: {chromium}, chromedriver: {driver_path}); "
                    f"{INSTALL_HINT}")
    opts = webdriver.ChromeOptions()
    opts.binary_location = chromium
    for a in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
              "--window-size=1280,900", "--force-device-scale-factor=1", "--hide-scrollbars"):
        opts.add_argument(a)
    drv = webdriver.Chrome(service=Service(driver_path), options=opts)
    drv.set_page_load_timeout(60)
    yield drv
    drv.quit()
