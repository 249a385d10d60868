"""`wsiheat view --export DIR`: a static copy that opens from file:// and from a plain static server."""

from __future__ import annotations

import functools
import http.server
import os
import subprocess
import sys
import threading

import numpy as np
import pytest
from _viewer import MOSAICS, REPO, SLIDE_NAMES, settle, shot, wait_for
from selenium.webdriver.common.by import By
from selenium.webdriver.common.keys import Keys

from wsiheat.errors import WsiheatError
from wsiheat.viewer.catalog import build_catalog
from wsiheat.viewer.static_copy import export_static


@pytest.fixture(scope="module")
def copy(results, tmp_path_factory):
    out = tmp_path_factory.mktemp("static") / "copy"
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]))
    r = subprocess.run([sys.executable, "-m", "wsiheat", "view", str(results), "--manifest",
                        str(MOSAICS / "manifest.csv"), "--export", str(out), "--export-downsample", "2"],
                       capture_output=True, text=True, env=env, timeout=300, check=False)
    assert r.returncode == 0, r.stderr
    assert "wrote a static copy of 4 slide(s)" in r.stdout
    return out


def test_static_copy_layout(copy):
    assert (copy / "index.html").is_file()
    assert (copy / "static" / "openseadragon" / "openseadragon.min.js").is_file()
    assert (copy / "static" / "openseadragon" / "LICENSE.txt").is_file()
    for n in SLIDE_NAMES:
        assert (copy / "slides" / f"{n}.html").is_file() and (copy / "slides" / n / "thumb.png").is_file()
        levels = sorted(int(p.name) for p in (copy / "slides" / n / "slide_files").iterdir())
        assert levels == list(range(11))  # 1920 px: levels 0..11, the finest (downsample 1) left out
        assert len(list((copy / "slides" / n / "slide_files" / "10").iterdir())) == 16  # 960 px: 4 x 4 tiles
        assert (copy / "slides" / n / "heatmap_files" / "0" / "0_0.png").is_file()
    page = (copy / "slides" / "test_tumor_001.html").read_text()
    assert '"live":false' in page and "http" not in page.split("<body", 1)[1]


def test_export_refuses_a_folder_with_files(results, tmp_path):
    (tmp_path / "x.txt").write_text("keep me")
    with pytest.raises(WsiheatError, match="not an empty folder"):
        export_static(build_catalog(results), tmp_path)


def test_static_copy_names_the_stain_but_has_no_stain_layer(stain_results, tmp_path):
    """The stain-normalised layer is the server's: a static copy names the normaliser, writes no ``stain_files``."""
    stats = export_static(build_catalog(stain_results), tmp_path / "copy", slide_downsample=8)
    assert sorted(stats["slides"]) == ["he_plain", "he_stain"]
    page = (tmp_path / "copy" / "slides" / "he_stain.html").read_text()
    assert "stain: macenko, fitted on 64 tissue windows" in page
    assert 'id="stain-normalised"' not in page and '"stain":null' in page
    assert not (tmp_path / "copy" / "slides" / "he_stain" / "stain_files").exists()


def _check_slide_page(browser, url: str) -> None:
    browser.get(url)
    wait_for(lambda: browser.execute_script(
        "return !!window.wsiheatViewer && window.wsiheatViewer.world.getItemCount() === 2"), 60, "both layers")
    settle(browser)
    assert browser.find_element(By.CSS_SELECTOR, "#osd .openseadragon-canvas canvas").size["width"] > 400
    assert not browser.find_element(By.ID, "threshold").is_enabled()
    slider = browser.find_element(By.ID, "opacity")
    slider.send_keys(Keys.HOME)
    settle(browser)
    off = shot(browser)
    slider.send_keys(Keys.END)
    settle(browser)
    assert (np.abs(shot(browser) - off).sum(axis=2) > 30).mean() > 0.02
    # zoomed in all the way, the viewer asks only for tiles that were written
    browser.execute_script("var v = window.wsiheatViewer.viewport; v.zoomTo(v.getMaxZoom(), null, true);")
    settle(browser)
    assert browser.execute_script("return window.wsiheatState.failedTiles") == 0


def test_static_copy_opens_from_file_url(browser, copy, scores):
    browser.get((copy / "index.html").as_uri())
    names = [e.text for e in browser.find_elements(By.CSS_SELECTOR, "#triage tbody td.name")]
    assert names == sorted(SLIDE_NAMES, key=lambda n: -scores[n])
    _check_slide_page(browser, (copy / "slides" / "test_tumor_002.html").as_uri())


def test_static_copy_from_a_static_web_server(browser, copy):
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(copy))
    handler.log_message = lambda *a: None
    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    t = threading.Thread(target=srv.serve_forever, daemon=True)
    t.start()
    try:
        _check_slide_page(browser, f"http://127.0.0.1:{srv.server_address[1]}/slides/test_tumor_001.html")
        browser.find_element(By.ID, "show-gt").click()
        assert len(browser.find_elements(By.CSS_SELECTOR, "#gt-overlay polygon")) == 3
    finally:
        srv.shutdown()
        srv.server_close()
