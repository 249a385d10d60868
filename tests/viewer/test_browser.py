"""The viewer in a real browser: headless Chromium (Debian's) driven by Selenium,
against the real server and real heatmaps of the real mosaic slides in ``data/``.

These tests fail, never skip, when Chromium is missing (see conftest.py)."""

from __future__ import annotations

import io
import math

import numpy as np
import pytest
from _viewer import SLIDE_NAMES, http_get, open_slide, settle, shot, wait_for
from PIL import Image
from selenium.webdriver.common.by import By
from selenium.webdriver.common.keys import Keys


def test_index_lists_every_slide_sorted_by_score(browser, server, scores):
    browser.get(server.url)
    rows = browser.find_elements(By.CSS_SELECTOR, "#triage tbody tr")
    names = [r.find_element(By.CSS_SELECTOR, "td.name").text for r in rows]
    assert names == sorted(SLIDE_NAMES, key=lambda n: -scores[n])
    shown = [float(r.find_element(By.CSS_SELECTOR, "td.score").text) for r in rows]
    assert shown == sorted(shown, reverse=True)
    assert "slide AUC" in browser.find_element(By.ID, "summary").text
    # every thumbnail decoded by the browser
    wait_for(lambda: browser.execute_script(
        "return Array.from(document.querySelectorAll('td.thumb img')).every(i => i.complete && i.naturalWidth > 0)"
    ), 30, "thumbnails")
    # click the score title: ascending; the name title: alphabetical
    browser.find_element(By.CSS_SELECTOR, "th[data-sort=score]").click()
    names_up = [r.find_element(By.CSS_SELECTOR, "td.name").text
                for r in browser.find_elements(By.CSS_SELECTOR, "#triage tbody tr")]
    assert names_up == names[::-1]
    browser.find_element(By.CSS_SELECTOR, "th[data-sort=name]").click()
    assert [r.find_element(By.CSS_SELECTOR, "td.name").text
            for r in browser.find_elements(By.CSS_SELECTOR, "#triage tbody tr")] == sorted(SLIDE_NAMES)
    # the link of the first row opens its slide page
    browser.find_element(By.CSS_SELECTOR, "th[data-sort=score]").click()
    browser.find_element(By.CSS_SELECTOR, "#triage tbody tr td.name a").click()
    wait_for(lambda: browser.current_url.endswith(f"slides/{names[0]}.html"), 30, "the slide page")


def test_slide_page_shows_canvas_and_loads_tiles(browser, server):
    data = open_slide(browser, server, "test_tumor_002")
    canvas = browser.find_element(By.CSS_SELECTOR, "#osd .openseadragon-canvas canvas")
    assert canvas.size["width"] > 400 and canvas.size["height"] > 300
    urls = browser.execute_script(
        "return performance.getEntriesByType('resource').map(e => e.name)"
        ".filter(u => u.includes('_files/'))")
    slide_urls = [u for u in urls if "/slide_files/" in u]
    heat_urls = [u for u in urls if "/heatmap_files/" in u]
    assert slide_urls and heat_urls
    assert all("cmap=inferno" in u and "thr=0.00" in u for u in heat_urls)
    # decoded by the browser itself, and HTTP 200 with a decodable body
    for u in slide_urls[:3] + heat_urls[:3]:
        w = browser.execute_async_script(
            "var done = arguments[1]; fetch(arguments[0]).then(r => r.ok ? r.blob() : Promise.reject(r.status))"
            ".then(b => createImageBitmap(b)).then(i => done(i.width * i.height), e => done(-1));", u)
        assert w > 0, u
        status, body, _ = http_get(u)
        assert status == 200 and Image.open(io.BytesIO(body)).size[0] > 0
    assert browser.execute_script("return window.wsiheatState.failedTiles") == 0
    # the canvas shows the slide, not a blank page
    px = shot(browser)
    assert px.std() > 10
    assert data["mpp"] == pytest.approx(2.5)
    assert browser.find_element(By.ID, "scalebar-text").text.endswith(("µm", "mm"))


def test_opacity_slider_changes_the_rendered_pixels(browser, server):
    open_slide(browser, server, "test_tumor_002")
    slider = browser.find_element(By.ID, "opacity")
    slider.send_keys(Keys.HOME)  # a real key press on the range input: opacity 0
    assert browser.find_element(By.ID, "opacity-value").text == "0.00"
    settle(browser)
    off = shot(browser)
    slider.send_keys(Keys.END)  # opacity 1
    assert browser.find_element(By.ID, "opacity-value").text == "1.00"
    settle(browser)
    full = shot(browser)
    diff = np.abs(full - off).sum(axis=2)
    assert (diff > 30).mean() > 0.02, f"only {(diff > 30).mean():.4f} of the pixels changed"
    # back to 0: the same pixels as before
    slider.send_keys(Keys.HOME)
    settle(browser)
    assert np.abs(shot(browser) - off).mean() < 1.0


def test_threshold_and_colormap_reload_the_heatmap(browser, server):
    open_slide(browser, server, "test_tumor_002")
    browser.find_element(By.ID, "opacity").send_keys(Keys.END)
    settle(browser)
    before = shot(browser)
    browser.find_element(By.ID, "threshold").send_keys(Keys.END)  # threshold 1: nothing above it
    wait_for(lambda: browser.execute_script(
        "return window.wsiheatState.heatmapReady && window.wsiheatState.threshold === 1"), 30, "the new heatmap")
    settle(browser)
    urls = browser.execute_script("return performance.getEntriesByType('resource').map(e => e.name)")
    assert any("thr=1.00" in u for u in urls)
    assert np.abs(shot(browser) - before).sum(axis=2).astype(bool).mean() > 0.02
    from selenium.webdriver.support.ui import Select

    Select(browser.find_element(By.ID, "colormap")).select_by_value("jet")
    wait_for(lambda: any("cmap=jet" in u for u in browser.execute_script(
        "return performance.getEntriesByType('resource').map(e => e.name)")), 30, "jet tiles")


def _center(browser) -> tuple[float, float]:
    return tuple(browser.execute_script(
        "var c = window.wsiheatViewer.viewport.getCenter(true); return [c.x, c.y];"))


def test_clicking_the_first_candidate_pans_to_it(browser, server):
    data = open_slide(browser, server, "test_tumor_002")
    assert data["lesions"], "the test heatmap should have lesion candidates"
    p, x, y = data["lesions"][0]
    W = data["width"]
    zoom0 = browser.execute_script("return window.wsiheatViewer.viewport.getZoom(true)")
    cx, cy = _center(browser)
    assert math.hypot(cx - x / W, cy - y / W) > 0.1  # the home view is centred elsewhere
    item = browser.find_element(By.ID, "candidate-1")
    assert f"p = {p:.3f}" in item.text
    item.click()
    settle(browser)
    cx, cy = _center(browser)
    assert math.hypot(cx - x / W, cy - y / W) < 1e-3
    assert browser.execute_script("return window.wsiheatViewer.viewport.getZoom(true)") > 2 * zoom0
    assert "current" in item.get_attribute("class")
    # the marker on the slide: back home, then click marker 1
    browser.execute_script("window.wsiheatViewer.viewport.goHome(true)")
    settle(browser)
    marker = browser.find_element(By.ID, "marker-1")
    assert marker.text == "1"
    marker.click()
    settle(browser)
    cx, cy = _center(browser)
    assert math.hypot(cx - x / W, cy - y / W) < 1e-3


def test_ground_truth_outline_appears_when_toggled(browser, server):
    open_slide(browser, server, "test_tumor_001")
    assert not browser.find_elements(By.ID, "gt-overlay")
    before = shot(browser)
    box = browser.find_element(By.ID, "show-gt")
    assert box.is_enabled()
    box.click()
    svg = wait_for(lambda: browser.find_elements(By.ID, "gt-overlay"), 10, "the outline overlay")[0]
    polys = svg.find_elements(By.TAG_NAME, "polygon")
    assert len(polys) == 3  # test_tumor_001.xml has 3 tumor polygons
    assert svg.is_displayed() and svg.size["width"] > 100
    settle(browser)
    after = shot(browser)
    changed = np.abs(after - before).sum(axis=2) > 60
    green = (after[..., 1] > 200) & (after[..., 0] < 80) & (after[..., 2] < 160)
    assert (changed & green).sum() > 200  # green outline pixels were drawn
    # the first polygon's box on screen matches its level-0 box: 160..560 x 320..560
    rect = browser.execute_script(
        "var r = document.querySelector('#gt-overlay polygon').getBoundingClientRect();"
        "var v = window.wsiheatViewer.viewport;"
        "var a = v.viewerElementToImageCoordinates(new OpenSeadragon.Point(r.left - v.viewer.element"
        ".getBoundingClientRect().left, r.top - v.viewer.element.getBoundingClientRect().top));"
        "var b = v.viewerElementToImageCoordinates(new OpenSeadragon.Point(r.right - v.viewer.element"
        ".getBoundingClientRect().left, r.bottom - v.viewer.element.getBoundingClientRect().top));"
        "return [a.x, a.y, b.x, b.y];")
    assert rect == pytest.approx([160, 320, 560, 560], abs=8)
    box.click()
    wait_for(lambda: not browser.find_elements(By.ID, "gt-overlay"), 10, "the overlay removed")


def test_keyboard_moves_between_candidates_and_slides(browser, server, scores):
    order = sorted(SLIDE_NAMES, key=lambda n: -scores[n])
    data = open_slide(browser, server, order[0])
    body = browser.find_element(By.TAG_NAME, "body")
    if data["lesions"]:
        body.send_keys("n")
        settle(browser)
        _, x, y = data["lesions"][0]
        cx, cy = _center(browser)
        assert math.hypot(cx - x / data["width"], cy - y / data["width"]) < 1e-3
    body.send_keys("]")
    wait_for(lambda: browser.current_url.endswith(f"slides/{order[1]}.html"), 30, "the next slide")
    browser.find_element(By.TAG_NAME, "body").send_keys("[")
    wait_for(lambda: browser.current_url.endswith(f"slides/{order[0]}.html"), 30, "the previous slide")


_LAYERS = ("var v = window.wsiheatViewer, st = window.wsiheatState, out = [];"
           "for (var i = 0; i < v.world.getItemCount(); i++) { var it = v.world.getItemAt(i);"
           " out.push({url: it.source.getTileUrl(0, 0, 0), opacity: it.getOpacity(), heatmap: it === st.heatmap}); }"
           "return out;")


def _tile_urls(browser, kind: str) -> list[str]:
    return browser.execute_script(
        "return performance.getEntriesByType('resource').map(e => e.name).filter(u => u.includes(arguments[0]))",
        f"/{kind}/")


def test_stain_toggle_swaps_the_slide_layer(browser, stain_server):
    """Only a slide the heatmap stain-normalised has the toggle; it shows ``stain_files`` tiles under the heatmap."""
    open_slide(browser, stain_server, "he_plain")
    assert not browser.find_elements(By.ID, "stain-normalised") and not browser.find_elements(By.ID, "slide-stain")
    open_slide(browser, stain_server, "he_stain")
    assert "macenko" in browser.find_element(By.ID, "slide-stain").text
    box = browser.find_element(By.ID, "stain-normalised")
    assert "as the model saw it" in box.find_element(By.XPATH, "..").text
    wait_for(lambda: box.is_enabled(), 30, "the toggle enabled")
    assert not box.is_selected() and not _tile_urls(browser, "stain_files")  # nothing fetched until asked
    raw = shot(browser)
    box.click()
    wait_for(lambda: browser.execute_script("return window.wsiheatViewer.world.getItemCount()") == 3, 30,
             "the stain layer")
    settle(browser)
    layers = browser.execute_script(_LAYERS)
    # raw slide, stain-normalised slide above it, the heatmap still on top
    assert ["/slide_files/" in layers[0]["url"], "/stain_files/" in layers[1]["url"], layers[2]["heatmap"]] == [
        True, True, True], layers
    assert layers[1]["opacity"] == 1 and layers[2]["opacity"] == 0.5
    urls = _tile_urls(browser, "stain_files")
    assert urls and all(u.endswith(".jpeg") for u in urls)
    assert browser.execute_script("return window.wsiheatState.failedTiles") == 0
    normed = shot(browser)
    assert np.abs(normed - raw).mean() > 3, "the stain-normalised slide looks like the raw slide"
    # off again: the raw slide as before, no new layer, the heatmap untouched
    box.click()
    settle(browser)
    layers = browser.execute_script(_LAYERS)
    assert len(layers) == 3 and layers[1]["opacity"] == 0 and layers[2]["opacity"] == 0.5
    assert np.abs(shot(browser) - raw).mean() < 1.0
    # the heatmap controls still act on the heatmap, above the stain layer
    box.click()
    browser.find_element(By.ID, "threshold").send_keys(Keys.END)
    wait_for(lambda: browser.execute_script(
        "return window.wsiheatState.heatmapReady && window.wsiheatState.threshold === 1"), 30, "the new heatmap")
    settle(browser)
    layers = browser.execute_script(_LAYERS)
    assert len(layers) == 3 and "/stain_files/" in layers[1]["url"] and layers[1]["opacity"] == 1
    assert layers[2]["heatmap"] and "thr=1.00" in layers[2]["url"]
