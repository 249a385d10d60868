"""Tile geometry and caching: the deep-zoom pyramid matches OpenSlide's DeepZoomGenerator
(and so OpenSeadragon's), coarse in-memory levels match its tiles, the LRU cache is bounded."""

from __future__ import annotations

import io

import numpy as np
import pytest
from _viewer import MOSAICS, REPO, he_region
from PIL import Image

from wsiheat.cache import TileCache
from wsiheat.viewer.tiles import HeatmapLayer, SlideLayer, StainMap, TileNotFound, dz_level_dimensions, tile_bounds

SLIDES = [MOSAICS / "test_tumor_001.tif", REPO / "data" / "slides" / "cmu-1-small-region.svs"]


@pytest.mark.parametrize("path", SLIDES, ids=lambda p: p.name)
def test_pyramid_matches_deepzoomgenerator_and_tiles_match_its_tiles(path):
    layer = SlideLayer(path)
    try:
        dz = layer.dz
        assert dz_level_dimensions(layer.width, layer.height) == [tuple(d) for d in dz.level_dimensions]
        for level in range(layer.level_count):
            cols, rows = dz.level_tiles[level]
            for c, r in {(0, 0), (cols - 1, rows - 1), (cols // 2, rows // 2)}:
                x0, y0, x1, y1 = tile_bounds(dz.level_dimensions[level], c, r)
                got = np.asarray(Image.open(io.BytesIO(layer.tile(level, c, r))), np.int16)
                assert got.shape[:2] == (y1 - y0, x1 - x0)
                ref = np.asarray(dz.get_tile(level, (c, r)).convert("RGB"), np.int16)
                h, w = min(ref.shape[0], got.shape[0]), min(ref.shape[1], got.shape[1])
                assert abs(ref.shape[0] - got.shape[0]) <= 1 and abs(ref.shape[1] - got.shape[1]) <= 1
                # JPEG and a box filter instead of Lanczos: close, not equal (the few-pixel
                # levels differ more: DeepZoomGenerator's thumbnail keeps the aspect ratio)
                if min(dz.level_dimensions[level]) >= 64:
                    assert np.abs(ref[:h, :w] - got[:h, :w]).mean() < 12, (level, c, r)
        with pytest.raises(TileNotFound):
            layer.tile(layer.level_count, 0, 0)
        with pytest.raises(TileNotFound):
            layer.tile(0, 1, 0)
    finally:
        layer.close()


def test_heatmap_layer_geometry():
    p = np.array([[0.0, 0.5], [1.0, 0.25]])
    t = np.array([[True, True], [True, False]])
    layer = HeatmapLayer(p, t, cell_size=100.0, origin=(0.0, 0.0))
    assert (layer.width, layer.height) == (16, 16) and layer.px_per_cell == 8
    rgba = layer.rgba(layer.level_count - 1, (0, 0, 16, 16), "inferno", 0.0)
    assert rgba.shape == (16, 16, 4)
    assert rgba[12, 12, 3] == 0 and rgba[2, 2, 3] == 255 and rgba[12, 2, 3] == 255
    assert rgba[..., 3][:8, :8].all()
    above = layer.rgba(layer.level_count - 1, (0, 0, 16, 16), "inferno", 0.5)[..., 3] > 0
    assert above[:8, 8:].all() and above[8:, :8].all() and not above[:8, :8].any()
    assert layer.viewport_rect(400) == {"x": 0.0, "y": 0.0, "width": 0.5}
    for bad in ({"cmap": "nope"}, {"threshold": 1.5}):
        with pytest.raises(TileNotFound):
            layer.tile(layer.level_count - 1, 0, 0, **bad)


def test_tile_cache_is_lru_and_bounded():
    cache = TileCache(max_bytes=30)
    for k in "abc":
        cache.put(k, b"x" * 10)
    assert cache.get("a") == b"x" * 10  # a is now the most recent
    cache.put("d", b"y" * 10)           # evicts b, the least recently used
    assert cache.get("b") is None and cache.get("c") and cache.get("d") and cache.get("a")
    assert cache.nbytes == 30 and len(cache) == 3
    cache.put("big", b"z" * 31)         # larger than the cache: not kept
    assert cache.get("big") is None and cache.nbytes == 30
    cache.put("e", np.zeros(5, np.uint16))  # arrays count their nbytes: 10, evicts c
    assert cache.nbytes == 30 and cache.get("c") is None and cache.get("e") is not None


def test_stain_map_is_the_heatmaps_normaliser_with_the_slides_source():
    from wsiheat.wsi.stain import get_normalizer

    rgb = he_region()
    norm = get_normalizer("macenko").fit(rgb[::4, ::4])
    tile = rgb[:256, 256:512]
    record = {**norm.to_dict(), "source": norm.source(rgb[512:, :512]), "fitted_on_windows": 64}
    stain = StainMap.from_summary({"stain": record})
    assert stain.method == "macenko"
    assert np.array_equal(stain(tile), norm.transform(tile, record["source"]))
    assert not np.array_equal(stain(tile), tile) and stain.unnormalised == 0
    # nothing to show: no record, not fitted on the slide, not a record, an unknown normaliser
    for summary in ({}, {"stain": None}, {"stain": {**record, "source": None}}, {"stain": "macenko"},
                    {"stain": {**record, "method": "no-such-normaliser"}}, {"stain": {"source": record["source"]}},
                    {"stain": {**record, "source": {"stains": record["source"]["stains"]}}}):  # damaged: refused once
        assert StainMap.from_summary(summary) is None, summary
    # degenerate source statistics: the tile as it is, counted
    bad = StainMap.from_summary({"stain": {**record, "source": {**record["source"], "max_conc": [0.0, 0.0]}}})
    assert np.array_equal(bad(tile), tile) and bad.unnormalised == 1


@pytest.mark.parametrize("path", SLIDES, ids=lambda p: p.name)
def test_slide_tiles_read_directly_are_openslides(path, monkeypatch):
    """The viewer reads TIFF tiles directly (wsi/tiff_tiles.py) where it can: every tile image, before
    JPEG encoding, is the one OpenSlide's reads give."""
    direct = SlideLayer(path)
    monkeypatch.setenv("WSIHEAT_SLIDE_READER", "openslide")
    ref = SlideLayer(path)
    try:
        assert direct._slide is not None and direct._slide.reader == "direct" and ref._slide is None
        for level in range(direct.level_count):
            cols, rows = direct.dz.level_tiles[level]
            for c, r in {(0, 0), (cols - 1, rows - 1), (cols // 2, rows // 2)}:
                assert np.array_equal(np.asarray(direct.image(level, c, r)), np.asarray(ref.image(level, c, r))), \
                    (level, c, r)
    finally:
        direct.close()
        ref.close()
