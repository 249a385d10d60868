"""Helpers of the viewer tests (imported as ``_viewer``: a name no other test folder uses)."""

from __future__ import annotations

import io
import time
import urllib.error
import urllib.request
import warnings
from pathlib import Path

import numpy as np
from _helpers import cmu_region, hed_shift

REPO = Path(__file__).resolve().parents[2]
MOSAICS = REPO / "data" / "mosaics" / "test"
#: the stain-normalised and the plain result of :func:`make_stain_results`
STAIN_NAMES = ("he_stain", "he_plain")
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
    from wsiheat.inference.heatmap import heatmap_slide
    from wsiheat.models.model import load_model, save_model

    meta = {"window": 80, "center": 50, "stride": 50, "downsamples": [1.0], "towers": 1, "levels": [None]}
    path = save_model(dark_model(), model_dir / "dark.keras", meta)
    model, meta = load_model(path)
    out.mkdir(parents=True, exist_ok=True)
    summaries = {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for s in slides:
            r = heatmap_slide(s, model, meta, out, batch_size=64, lesion_threshold=0.4,
                                    model_path=str(path))
            summaries[r["name"]] = r
    return summaries


def he_region() -> np.ndarray:
    """A 1280 x 1024 px box of the real H&E slide, tissue and background (RGB uint8)."""
    return cmu_region(512, 1280, 1280, 1024)




def make_stain_results(out: Path, work: Path) -> Path:
    """Real heatmaps of a pyramid TIFF of the real H&E region, into ``out``, by :func:`dark_model`:

    * ``he_stain``: the model carries a Macenko stain record whose target is another lab's
      staining (the region with H x 0.5, E x 2), so the normalised slide differs clearly;
    * ``he_plain``: the same model without a stain record (same slide).

    Returns the slide's path.
    """
    from _tiff import write_pyramid_tiff

    from wsiheat.inference.heatmap import heatmap_slide
    from wsiheat.models.model import load_model, save_model
    from wsiheat.wsi.stain import get_normalizer

    rgb = he_region()
    slide = work / "he.tif"
    write_pyramid_tiff(slide, rgb, 3, mpp=0.5)
    target = get_normalizer("macenko").fit(hed_shift(rgb, 0.5, 2.0)[::2, ::2], "reference")
    meta = {"window": 80, "center": 50, "stride": 50, "downsamples": [1.0], "towers": 1, "levels": [None]}
    out.mkdir(parents=True, exist_ok=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for name, extra in (("he_stain", {"stain": target.to_dict()}), ("he_plain", {})):
            path = save_model(dark_model(), work / f"{name}.keras", {**meta, **extra})
            model, m = load_model(path)
            heatmap_slide(slide, model, m, out, name=name, batch_size=64, lesion_threshold=0.4, model_path=str(path))
    return slide


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




def open_slide(browser, server, name: str) -> dict:
    """Load a slide page and wait for both layers' tiles to be drawn; the page's data."""
    browser.get(server.url + f"slides/{name}.html")
    wait_for(lambda: browser.execute_script(
        "return !!window.wsiheatViewer && window.wsiheatViewer.world.getItemCount() === 2"), 60, "both layers")
    settle(browser)
    return browser.execute_script("return JSON.parse(document.getElementById('slide-data').textContent)")


def settle(browser) -> None:
    """Wait until OpenSeadragon has no animation or tile load pending, then two frames."""
    wait_for(lambda: browser.execute_script(
        "var v = window.wsiheatViewer; if (!v) return false;"
        "for (var i = 0; i < v.world.getItemCount(); i++) if (!v.world.getItemAt(i).getFullyLoaded()) return false;"
        "return !v.world.needsDraw() && v.viewport.getZoom(true) === v.viewport.getZoom(false) &&"
        " v.viewport.getCenter(true).distanceTo(v.viewport.getCenter(false)) < 1e-9;"), 60, "a settled viewer")
    browser.execute_async_script(
        "var done = arguments[0]; requestAnimationFrame(function () { requestAnimationFrame(function () { done(); }); });")


def shot(browser) -> np.ndarray:
    """The OpenSeadragon area of the page as RGB pixels."""
    from PIL import Image
    from selenium.webdriver.common.by import By

    png = browser.find_element(By.ID, "osd").screenshot_as_png
    return np.asarray(Image.open(io.BytesIO(png)).convert("RGB")).astype(np.int16)
