"""The viewer over plain HTTP: pages, tiles, the security rules and bad input.

The real server (threaded werkzeug + Flask) on a free loopback port, real
heatmaps of the real mosaic slides in ``data/`` (see conftest.py)."""

from __future__ import annotations

import io
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import urllib.request
from pathlib import Path

import numpy as np
import pytest
from _viewer import MOSAICS, REPO, SLIDE_NAMES, he_region, http_get
from PIL import Image

from wsiheat.errors import WsiheatError
from wsiheat.viewer.catalog import build_catalog
from wsiheat.viewer.server import ViewerServer, create_app, is_loopback

SHARED_SLIDES = REPO / ".." / "shared" / "data" / "slides"


def decode(body: bytes) -> np.ndarray:
    with Image.open(io.BytesIO(body)) as img:
        img.load()
        return np.asarray(img)


def test_index_lists_every_slide_by_score(server, scores):
    status, body, headers = http_get(server.url)
    assert status == 200 and headers["Content-Type"].startswith("text/html")
    keys = re.findall(r'<tr class="slide-row[^"]*" data-key="([^"]+)"', body.decode())
    assert keys == sorted(SLIDE_NAMES, key=lambda n: -scores[n])
    assert "4 slides" in body.decode()
    # labels from the manifest's ground truth: the normal slide has an empty XML
    assert http_get(server.url + "index.html")[1] == body


def test_slide_and_heatmap_tiles_are_images(server):
    status, page, _ = http_get(server.url + "slides/test_tumor_001.html")
    assert status == 200
    data = json.loads(re.search(rb'id="slide-data">(.*?)</script>', page, re.DOTALL).group(1))
    assert (data["width"], data["height"]) == (1920, 1920)
    assert data["slide"]["maxLevel"] == 11  # ceil(log2(1920))
    top = data["slide"]["maxLevel"]
    s, body, h = http_get(server.url + f"slides/test_tumor_001/slide_files/{top}/0_0.jpeg")
    assert s == 200 and h["Content-Type"] == "image/jpeg"
    assert decode(body).shape == (255, 255, 3)  # 254 + one overlap pixel on the inner edge
    hm = data["heatmap"]
    s, body, h = http_get(server.url + f"slides/test_tumor_001/heatmap_files/{hm['maxLevel']}/0_0.png?cmap=jet&thr=0")
    assert s == 200 and h["Content-Type"] == "image/png"
    rgba = decode(body)
    assert rgba.shape[2] == 4
    assert (rgba[..., 3] == 0).any() and (rgba[..., 3] == 255).any()  # background transparent, tissue opaque
    # the heatmap layer covers the slide: n_cols * cell level-0 px, from the origin
    assert hm["rect"]["x"] == 0 and hm["rect"]["width"] == pytest.approx(39 * 50 / 1920)
    # a threshold above every probability leaves nothing visible
    s, body, _ = http_get(server.url + f"slides/test_tumor_001/heatmap_files/{hm['maxLevel']}/0_0.png?thr=1")
    assert s == 200 and not decode(body)[..., 3].any()


def test_heatmap_tile_pixels_are_the_cells(server, results):
    """A full-resolution heatmap tile shows each cell's colour at its own level-0 place."""
    from wsiheat.inference.outputs import read_heatmap
    from wsiheat.viewer.tiles import PX_PER_CELL, colormap_lut

    hm = read_heatmap(results / "test_tumor_002.h5")
    layer = server.app.extensions["wsiheat"]["layers"].heatmap(server.app.extensions["wsiheat"]["catalog"]
                                                               .get("test_tumor_002"))
    top = layer.level_count - 1
    s, body, _ = http_get(server.url + f"slides/test_tumor_002/heatmap_files/{top}/0_0.png")
    assert s == 200
    rgba = decode(body)
    lut = colormap_lut("inferno")
    r, c = np.argwhere(hm.tissue)[0]
    px = rgba[r * PX_PER_CELL + PX_PER_CELL // 2, c * PX_PER_CELL + PX_PER_CELL // 2]
    assert px[3] == 255
    assert tuple(px[:3]) == tuple(lut[round(float(hm.probabilities[r, c]) * 255)])
    r, c = np.argwhere(~hm.tissue)[0]
    assert rgba[r * PX_PER_CELL + 1, c * PX_PER_CELL + 1, 3] == 0


@pytest.mark.parametrize("path", [
    "slides/../../etc/passwd", "slides/%2e%2e%2f%2e%2e%2fetc%2fpasswd.html", "slides/nope.html",
    "slides/nope/slide_files/0/0_0.jpeg", "slides/test_tumor_001/../../../wsiheat/viewer/server.py",
    "slides//etc/passwd/slide_files/0/0_0.jpeg", "static/../server.py", "static/%2e%2e/server.py",
    "static/", "static", "slides/", "slides/test_tumor_001/", "static/openseadragon/",
    "slides/test_tumor_001/slide_files/12/0_0.jpeg",             # one level too deep
    "slides/test_tumor_001/slide_files/99999999999999999999999/0_0.jpeg",  # huge level
    "slides/test_tumor_001/slide_files/11/8_0.jpeg",             # column out of range (8 x 8 tiles)
    "slides/test_tumor_001/slide_files/11/0_8.jpeg",
    "slides/test_tumor_001/slide_files/-1/0_0.jpeg", "slides/test_tumor_001/slide_files/0/-1_0.jpeg",
    "slides/test_tumor_001/slide_files/x/0_0.jpeg", "slides/test_tumor_001/slide_files/0/0_0.png",
    "slides/test_tumor_001/heatmap_files/99/0_0.png", "slides/test_tumor_001/heatmap_files/0/1_0.png",
    "slides/test_tumor_001/heatmap_files/0/0_0.png?cmap=../../etc", "slides/test_tumor_001/heatmap_files/0/0_0.png?thr=2",
    "slides/test_tumor_001/heatmap_files/0/0_0.png?thr=nan", "slides/test_tumor_001/heatmap_files/0/0_0.png?thr=-0.1",
    "data/mosaics/test/test_tumor_001.tif", "etc/passwd", "%2Fetc%2Fpasswd",
])
def test_requests_outside_the_catalog_are_404(server, path):
    status, body, _ = http_get(server.url + path)
    assert status == 404, (path, status)
    assert b"Traceback" not in body and b"root:" not in body


def test_raw_traversal_requests_are_404(server):
    """Paths sent as they are (no client-side normalisation) never reach a file."""
    for raw in ("/slides/../../../../etc/passwd", "/static/../../../../etc/passwd", "/static/..%2f..%2fcli.py",
                "//etc/passwd", "/slides/test_tumor_001/../../../../etc/passwd"):
        with socket.create_connection(("127.0.0.1", server.port), timeout=10) as s:
            s.sendall(f"GET {raw} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n".encode())
            reply = b""
            while chunk := s.recv(65536):
                reply += chunk
        status = int(reply.split(b" ", 2)[1])
        assert status in (404, 308) and b"root:" not in reply, (raw, reply[:200])


def test_security_headers_and_static_assets(server):
    s, body, h = http_get(server.url + "static/openseadragon/openseadragon.min.js")
    assert s == 200 and h["Content-Type"].startswith("text/javascript") and b"OpenSeadragon" in body
    assert h["X-Content-Type-Options"] == "nosniff"
    assert "default-src 'none'" in h["Content-Security-Policy"]
    s, body, _ = http_get(server.url + "static/openseadragon/LICENSE.txt")
    assert s == 200 and b"Redistribution and use" in body
    # the page loads nothing from another host (works offline)
    for page in ("", "slides/test_tumor_001.html"):
        html = http_get(server.url + page)[1].decode()
        assert not re.search(r'(src|href)="(https?:)?//', html)


def test_loopback_default_and_host_check():
    from wsiheat.cli.view import view

    host = next(p for p in view.params if p.name == "host")
    assert host.default == "127.0.0.1"
    assert is_loopback("127.0.0.1") and is_loopback("::1") and is_loopback("localhost")
    assert not is_loopback("0.0.0.0") and not is_loopback("192.168.1.5") and not is_loopback("example.org")


def run_cli(*args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]))
    return subprocess.run([sys.executable, "-m", "wsiheat", *args], capture_output=True, text=True,
                          timeout=timeout, env=env, check=False)


def test_cli_serves_and_warns_for_other_hosts(results):
    """`view` prints its URL, serves the index; a non-loopback host prints a warning."""
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]))
    proc = subprocess.Popen([sys.executable, "-m", "wsiheat", "view", str(results), "--port", "0",
                             "--host", "0.0.0.0", "--no-browser"], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=env)
    try:
        line = proc.stdout.readline()
        url = re.search(r"(http://\S+)", line).group(1)
        port = int(url.rstrip("/").rsplit(":", 1)[1])
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=30) as r:
            assert r.status == 200 and b"test_tumor_002" in r.read()
    finally:
        proc.terminate()
        _, err = proc.communicate(timeout=30)
    assert "warning: listening on 0.0.0.0" in err


def test_port_in_use_names_it_and_suggests_port(results):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        with pytest.raises(WsiheatError, match=rf"port {port} on 127.0.0.1 is already in use.*--port"):
            ViewerServer(create_app(build_catalog(results)), "127.0.0.1", port)
        r = run_cli("view", str(results), "--port", str(port), "--no-browser")
    assert r.returncode == 2
    err = r.stderr.strip().splitlines()
    assert err[-1].startswith(f"wsiheat: error: port {port} on 127.0.0.1 is already in use") and "--port" in err[-1]
    assert "Traceback" not in r.stderr


def test_empty_results_folder(tmp_path):
    (tmp_path / "notes.json").write_text('{"something": 1}')
    with pytest.raises(WsiheatError, match="no heatmap results in this folder"):
        build_catalog(tmp_path)
    r = run_cli("view", str(tmp_path), "--no-browser")
    assert r.returncode == 2 and r.stderr.count("\n") == 1
    assert "no heatmap results in this folder" in r.stderr
    r = run_cli("view", str(tmp_path / "missing"), "--no-browser")
    assert r.returncode == 2 and "no such results folder" in r.stderr


def _copy_results(results: Path, dest: Path) -> Path:
    shutil.copytree(results, dest)
    return dest


def _edit_summary(results: Path, name: str, **changes) -> None:
    p = results / f"{name}.json"
    data = json.loads(p.read_text())
    data.update(changes)
    p.write_text(json.dumps(data))


def test_bad_slides_keep_their_row_and_the_rest_work(results, tmp_path):
    """Heatmap without its slide, a slide of another size, a slide of another name, a corrupt slide."""
    res = _copy_results(results, tmp_path / "results")
    slides = tmp_path / "slides"
    slides.mkdir()
    # corrupt: a truncated copy of the real slide
    (slides / "test_tumor_001.tif").write_bytes((MOSAICS / "test_tumor_001.tif").read_bytes()[:4000])
    # another size: a different real slide under this name
    shutil.copy(REPO / "data" / "slides" / "cmu-1-small-region.svs", slides / "test_tumor_003.svs")
    # without its slide: recorded path gone, not in --slides
    _edit_summary(res, "test_normal_001", slide_path=str(tmp_path / "moved" / "test_normal_001.tif"))
    # another name: the recorded path now holds another slide of the same size
    _edit_summary(res, "test_tumor_002", slide_path=str(MOSAICS / "test_tumor_003.tif"))
    catalog = build_catalog(res, slides=slides)
    problems = {e.name: e.problem for e in catalog.entries}
    bad = problems["test_tumor_001"]
    assert bad.startswith(str(slides / "test_tumor_001.tif")) and ("not a slide" in bad or "read failed" in bad)
    assert re.search(r"is 2220x2967 px but the heatmap was made on a 1920x1920 slide", problems["test_tumor_003"])
    assert "slide test_normal_001 not found in" in problems["test_normal_001"] and "--slides" in problems["test_normal_001"]
    assert "named test_tumor_003 but the heatmap was made on test_tumor_002" in problems["test_tumor_002"]
    assert all("\n" not in p for p in problems.values())

    # a corrupt slide among good ones: its row says why, the good ones work
    shutil.copy(MOSAICS / "test_tumor_002.tif", slides / "test_tumor_002.tif")
    catalog = build_catalog(res, slides=slides)
    with ViewerServer(create_app(catalog), "127.0.0.1", 0) as srv:
        index = http_get(srv.url)[1].decode()
        assert f"{slides / 'test_tumor_001.tif'}: " in index
        assert "the heatmap was made on a 1920x1920 slide" in index
        s, page, _ = http_get(srv.url + "slides/test_tumor_001.html")
        assert s == 200 and b'id="problem"' in page and b"openseadragon" not in page
        assert http_get(srv.url + "slides/test_tumor_001/slide_files/0/0_0.jpeg")[0] == 404
        assert http_get(srv.url + "slides/test_tumor_002.html")[0] == 200
        s, body, _ = http_get(srv.url + "slides/test_tumor_002/slide_files/11/0_0.jpeg")
        assert s == 200 and decode(body).shape[2] == 3


def test_missing_or_corrupt_h5_and_reference_labels(results, tmp_path):
    res = _copy_results(results, tmp_path / "results")
    (res / "test_tumor_003.h5").unlink()
    (res / "test_tumor_001.h5").write_bytes(b"not HDF5 at all")
    ref = tmp_path / "reference.csv"
    ref.write_text("slide,label\n" + "".join(f"{n},{'Normal' if 'normal' in n else 'Tumor'}\n" for n in SLIDE_NAMES))
    catalog = build_catalog(res, reference=ref)
    e = catalog.get("test_tumor_003")
    assert "heatmap file missing" in e.problem
    assert {x.name: x.label for x in catalog.entries} == {n: int("tumor" in n) for n in SLIDE_NAMES}
    assert 0.0 <= catalog.summary["auc"] <= 1.0 and catalog.summary["n_labelled"] == 4
    with ViewerServer(create_app(catalog), "127.0.0.1", 0) as srv:
        s, page, _ = http_get(srv.url + "slides/test_tumor_001.html")
        assert s == 200 and b"cannot read heatmap" in page and b'id="problem"' in page
        s, body, _ = http_get(srv.url + "slides/test_tumor_001/heatmap_files/0/0_0.png")
        assert s == 404 and b"Traceback" not in body
        assert http_get(srv.url + "slides/test_tumor_002.html")[0] == 200
    with pytest.raises(WsiheatError, match="either --slides or --manifest"):
        build_catalog(res, slides=tmp_path, manifest=MOSAICS / "manifest.csv")


@pytest.mark.skipif(not SHARED_SLIDES.exists(), reason="../shared/data/slides not present")
def test_real_svs_slides_serve_tiles(results, tmp_path):
    """The real SVS slides of ../shared under heatmaps: every level's first tile decodes."""
    from wsiheat.viewer.tiles import dz_level_dimensions
    from wsiheat.wsi.slide import Slide

    res = _copy_results(results, tmp_path / "results")
    for svs in sorted(SHARED_SLIDES.glob("*.svs")):
        with Slide(svs) as s:
            dims = list(s.dimensions)
        for n in ("test_tumor_001",):
            data = json.loads((res / f"{n}.json").read_text())
            data.update(slide=svs.stem, name=svs.stem, slide_path=str(svs), dimensions=dims)
            (res / f"{svs.stem}.json").write_text(json.dumps(data))
            shutil.copy(res / f"{n}.h5", res / f"{svs.stem}.h5")
    catalog = build_catalog(res)
    with ViewerServer(create_app(catalog), "127.0.0.1", 0) as srv:
        for svs in sorted(SHARED_SLIDES.glob("*.svs")):
            e = catalog.get(svs.stem)
            assert e.problem is None
            n = len(dz_level_dimensions(*e.dimensions))
            for level in (0, n // 2, n - 1):
                s, body, _ = http_get(srv.url + f"slides/{svs.stem}/slide_files/{level}/0_0.jpeg")
                assert s == 200 and decode(body).ndim == 3


def _page_data(url: str) -> tuple[str, dict | None]:
    status, page, _ = http_get(url)
    assert status == 200
    return page.decode(), json.loads(re.search(rb'id="slide-data">(.*?)</script>', page, re.DOTALL).group(1))


def _blocks(rgb: np.ndarray) -> np.ndarray:
    """Means of the 8 x 8 pixel blocks JPEG codes (what survives its quantisation and chroma subsampling)."""
    h, w = rgb.shape[0] // 8 * 8, rgb.shape[1] // 8 * 8
    return rgb[:h, :w].astype(np.float64).reshape(h // 8, 8, w // 8, 8, -1).mean(axis=(1, 3))


def _jpeg_diff(a: np.ndarray, b: np.ndarray) -> float:
    """Mean absolute difference (grey levels) of two images at JPEG's tolerance: over 8 x 8 block means.

    Per pixel, a JPEG (quality 80, 4:2:0) of real H&E is 6-8 grey levels off on average
    (nuclei edges, subsampled chroma); its 8 x 8 block means are about 1 off."""
    return float(np.abs(_blocks(a) - _blocks(b)).mean())


def test_stain_tiles_are_the_slide_as_the_model_saw_it(stain_server, stain_results):
    """``stain_files``: the raw tile mapped by the heatmap's own normaliser, target and slide source."""
    from wsiheat.viewer.tiles import tile_bounds
    from wsiheat.wsi.stain import normalizer_from_dict

    record = json.loads((stain_results / "he_stain.json").read_text())["stain"]
    assert record["method"] == "macenko" and record["source"] and record["fitted_on_windows"] == 64
    norm = normalizer_from_dict(record)
    page, data = _page_data(stain_server.url + "slides/he_stain.html")
    assert data["stain"] == {"method": "macenko", "url": "he_stain/stain_files/", "format": "jpeg"}
    assert 'id="stain-normalised"' in page and "stain: macenko, fitted on 64 tissue windows" in page
    top = data["slide"]["maxLevel"]
    rgb = he_region()  # the slide's level 0 (a lossless pyramid TIFF of it)
    base = stain_server.url + "slides/he_stain/"
    for level, col, row in ((top, 1, 1), (top, 4, 3), (top - 2, 0, 0)):
        # the normalised tile first: the raw one after it must not come from its cache entry
        s, body_n, h = http_get(base + f"stain_files/{level}/{col}_{row}.jpeg")
        assert s == 200 and h["Content-Type"] == "image/jpeg"
        s, body_r, _ = http_get(base + f"slide_files/{level}/{col}_{row}.jpeg")
        assert s == 200
        raw, normed = decode(body_r), decode(body_n)
        assert raw.shape == normed.shape
        assert _jpeg_diff(normed, norm.transform(raw, record["source"])) < 3, (level, col, row)
        assert _jpeg_diff(normed, raw) > 8, (level, col, row)  # clearly another colour
        assert http_get(base + f"stain_files/{level}/{col}_{row}.jpeg")[1] == body_n  # cached, the same
        if level == top:  # and against the slide's own pixels, with no JPEG before the map
            x0, y0, x1, y1 = tile_bounds((rgb.shape[1], rgb.shape[0]), col, row)
            assert _jpeg_diff(raw, rgb[y0:y1, x0:x1]) < 3
            assert _jpeg_diff(normed, norm.transform(rgb[y0:y1, x0:x1], record["source"])) < 3
    # the same slide under a model without a stain record: no stain tiles, no toggle
    page, data = _page_data(stain_server.url + "slides/he_plain.html")
    assert data["stain"] is None and 'id="stain-normalised"' not in page and "slide-stain" not in page
    assert http_get(stain_server.url + f"slides/he_plain/stain_files/{top}/1_1.jpeg")[0] == 404
    assert http_get(stain_server.url + f"slides/he_plain/slide_files/{top}/1_1.jpeg")[0] == 200


@pytest.mark.parametrize("path", [
    "stain_files/99/0_0.jpeg", "stain_files/12/0_0.jpeg", "stain_files/11/6_0.jpeg", "stain_files/11/0_5.jpeg",
    "stain_files/-1/0_0.jpeg", "stain_files/0/0_0.png", "stain_files/x/0_0.jpeg", "stain_files/0/0_0",
])
def test_bad_stain_tiles_are_404(stain_server, path):
    status, body, _ = http_get(stain_server.url + "slides/he_stain/" + path)
    assert status == 404, (path, status)
    assert b"Traceback" not in body
    assert http_get(stain_server.url + "slides/nope/stain_files/0/0_0.jpeg")[0] == 404
    assert http_get(stain_server.url + "slides/test_tumor_001/stain_files/0/0_0.jpeg")[0] == 404


def test_a_failing_stain_map_serves_the_raw_tile_and_no_source_no_toggle(stain_results, tmp_path):
    """Degenerate source statistics: the tile as it is (never a 500); a record without a source: no layer."""
    res = _copy_results(stain_results, tmp_path / "results")
    record = json.loads((res / "he_stain.json").read_text())["stain"]
    _edit_summary(res, "he_stain", stain={**record, "source": {**record["source"], "max_conc": [0.0, 0.0]}})
    _edit_summary(res, "he_plain", stain={**record, "source": None, "fitted_on_windows": 64,
                                          "not_fitted": "no tissue to fit a stain normaliser on"})
    catalog = build_catalog(res)
    with ViewerServer(create_app(catalog), "127.0.0.1", 0) as srv:
        page, data = _page_data(srv.url + "slides/he_stain.html")
        assert data["stain"]["method"] == "macenko" and 'id="stain-normalised"' in page
        top = data["slide"]["maxLevel"]
        for col, row in ((0, 0), (2, 1)):
            s, body_n, _ = http_get(srv.url + f"slides/he_stain/stain_files/{top}/{col}_{row}.jpeg")
            s_r, body_r, _ = http_get(srv.url + f"slides/he_stain/slide_files/{top}/{col}_{row}.jpeg")
            assert s == s_r == 200 and body_n == body_r
        layers = srv.app.extensions["wsiheat"]["layers"]
        assert layers.stain(catalog.get("he_stain")).unnormalised == 2
        page, data = _page_data(srv.url + "slides/he_plain.html")
        assert data["stain"] is None and 'id="stain-normalised"' not in page
        assert "stain: macenko, not fitted on this slide (no tissue to fit a stain normaliser on)" in page
        assert http_get(srv.url + f"slides/he_plain/stain_files/{top}/0_0.jpeg")[0] == 404
