"""Fixtures of the viewer tests: a real heatmap of the real mosaic slides in ``data/``,
the real server on a free port, and headless Chromium (Debian's) driven by Selenium.

The browser is required: when Chromium or its driver is missing the browser
tests fail (they never skip), naming the command that installs them.
"""

from __future__ import annotations

import shutil
import time
import urllib.error
import urllib.request
import warnings
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[2]
MOSAICS = REPO / "data" / "mosaics" / "test"
SLIDE_NAMES = ("test_normal_001", "test_tumor_001", "test_tumor_002", "test_tumor_003")
INSTALL_HINT = ("install them: sudo apt-get update && sudo apt-get install -y chromium chromium-driver "
                "(and pip install selenium); .ci/run does this")


def dark_model(window: int = 80, center: int = 50, bias: float = 3.2):
    """A tiny deterministic model: how dark (nuclei-dense) the centre of the window is.

    ``p = mean(clip(bias - (R + G + B) / 150, 0, 1))`` over the ``center`` box:
    dense, purple tissue scores high, pale stroma low, white background 0.
    """
    import keras

    inp = keras.Input((1, window, window, 3), dtype="uint8")
    x = keras.layers.Reshape((window, window, 3))(inp)
    x = keras.layers.Rescaling(1.0)(x)
    m = (window - center) // 2
    x = keras.layers.Cropping2D(((m, window - center - m), (m, window - center - m)))(x)
    conv = keras.layers.Conv2D(1, 1)
    x = conv(x)
    conv.set_weights([np.full((1, 1, 3, 1), -1 / 150, np.float32), np.array([bias], np.float32)])
    x = keras.layers.ReLU(max_value=1.0)(x)
    return keras.Model(inp, keras.layers.GlobalAveragePooling2D()(x))


def make_results(out: Path, slides: list[Path], model_dir: Path) -> dict[str, dict]:
    """Run ``wsiheat heatmap`` (the library call) with :func:`dark_model` on ``slides`` into ``out``."""
    from wsiheat import infer
    from wsiheat.model import load_model, save_model

    meta = {"window": 80, "center": 50, "stride": 50, "downsamples": [1.0], "towers": 1, "levels": [None]}
    path = save_model(dark_model(), model_dir / "dark.keras", meta)
    model, meta = load_model(path)
    out.mkdir(parents=True, exist_ok=True)
    summaries = {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for s in slides:
            r = infer.heatmap_slide(s, model, meta, out, batch_size=64, lesion_threshold=0.4,
                                    model_path=str(path))
            summaries[r["name"]] = r
    return summaries


@pytest.fixture(scope="session")
def results(tmp_path_factory) -> Path:
    """A results folder: real heatmaps of the 4 test mosaics of ``data/`` (a few seconds)."""
    d = tmp_path_factory.mktemp("viewer")
    make_results(d / "results", [MOSAICS / f"{n}.tif" for n in SLIDE_NAMES], d)
    return d / "results"


@pytest.fixture(scope="session")
def scores(results) -> dict[str, float]:
    import json

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


def http_get(url: str, timeout: float = 30) -> tuple[int, bytes, dict]:
    """``(status, body, headers)`` of a GET, errors included."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as r:
            return r.status, r.read(), dict(r.headers)
    except urllib.error.HTTPError as e:
        return e.code, e.read(), dict(e.headers)


def wait_for(cond, timeout: float = 30.0, what: str = "condition"):
    """Poll ``cond()`` until truthy (returns it) or fail after ``timeout`` seconds."""
    end = time.monotonic() + timeout
    last = None
    while time.monotonic() < end:
        last = cond()
        if last:
            return last
        time.sleep(0.05)
    raise AssertionError(f"timed out after {timeout:g} s waiting for {what} (last value {last!r})")


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
