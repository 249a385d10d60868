"""Tissue mask: real slides, a synthetic slide with known blobs, edge cases, box fractions."""

from __future__ import annotations

import math

import numpy as np
import pytest
from _tiff import write_pyramid_tiff
from skimage.filters import threshold_otsu

from wsiheat.wsi.slide import Slide
from wsiheat.wsi.tissue import (
    BandedTissueMask,
    TissueMask,
    cell_fractions,
    overlay_mask,
    saturation_threshold,
    saturation_threshold_hist,
    tissue_mask,
    tissue_mask_from_rgb,
)


def saturation(rgb: np.ndarray) -> np.ndarray:
    """HSV saturation (0-255) computed by hand: (max - min) / max."""
    mx = rgb.max(axis=2).astype(np.float64)
    mn = rgb.min(axis=2).astype(np.float64)
    return np.where(mx > 0, (mx - mn) / np.maximum(mx, 1) * 255, 0)


# --- real slides -----------------------------------------------------------------

@pytest.mark.parametrize("key, lo, hi", [("tcga", 0.5, 0.75), ("cmu", 0.25, 0.5)])
def test_real_slide_mask_agrees_with_an_independent_criterion(real_slides, key, lo, hi):
    with Slide(real_slides[key]) as s:
        tm = tissue_mask(s, 32)
        assert tm.downsample == 32
        W, H = s.dimensions
        assert tm.mask.shape == (math.ceil(H / 32), math.ceil(W / 32))
        assert lo < tm.fraction < hi
        # independent criterion: mean hand-computed saturation of a 4x finer view per mask cell
        fine = s.read_downsampled(8)
    h, w = tm.mask.shape
    sat = np.zeros((h * 4, w * 4))
    sat[:fine.shape[0], :fine.shape[1]] = saturation(fine)
    cell_sat = sat.reshape(h, 4, w, 4).mean(axis=(1, 3))
    ref = cell_sat > 25
    agreement = (ref == tm.mask).mean()
    assert agreement > 0.93, agreement
    # nearly all of the mask is coloured, nearly all strongly coloured cells are in the mask
    assert (cell_sat[tm.mask] > 15).mean() > 0.95
    assert tm.mask[cell_sat > 60].mean() > 0.95  # thin strands and specks are dropped


# --- synthetic slide --------------------------------------------------------------

BLOBS = [  # (cx, cy, rx, ry) level-0 px, and an RGB colour
    ((1200, 1000, 700, 500), (220, 120, 170)),   # pale pink stroma
    ((2900, 1700, 600, 800), (120, 60, 150)),    # purple, dense
    ((800, 2400, 400, 350), (200, 90, 150)),
]
HOLE = (1100, 1000, 90, 90)          # white hole inside blob 0 (small: filled)
BLACK = (3300, 150, 3900, 600)       # near-black box (scanner border / label): not tissue
SPECK = (3600, 2700, 24, 24)         # a dust speck: removed
SIZE = (3072, 4096)                   # (H, W) level 0


def _in_ellipse(xx, yy, e):
    cx, cy, rx, ry = e
    return ((xx - cx) / rx) ** 2 + ((yy - cy) / ry) ** 2 <= 1


def synthetic_region(x, y, w, h, d):
    """Level pixels of the synthetic slide: blobs with texture on a slightly noisy white."""
    yy, xx = np.mgrid[y:y + h, x:x + w].astype(np.float64)
    xx, yy = (xx + 0.5) * d, (yy + 0.5) * d  # level-0 coordinates of pixel centres
    rng = np.random.default_rng(int(x * 7919 + y * 104729 + d))
    img = np.empty((h, w, 3), np.float64)
    img[:] = (244, 242, 245)
    img += rng.normal(0, 2, (h, w, 1))
    texture = 18 * np.sin(xx / 37.0) * np.cos(yy / 23.0)
    for e, colour in BLOBS:
        m = _in_ellipse(xx, yy, e)
        img[m] = np.asarray(colour, np.float64) + texture[m][:, None]
    img[_in_ellipse(xx, yy, HOLE)] = (243, 243, 243)
    bx0, by0, bx1, by1 = BLACK
    img[(xx >= bx0) & (xx < bx1) & (yy >= by0) & (yy < by1)] = (12, 10, 14)
    img[_in_ellipse(xx, yy, SPECK)] = (90, 40, 120)
    return np.clip(np.round(img), 0, 255).astype(np.uint8)


@pytest.fixture(scope="module")
def synthetic_slide(tmp_path_factory):
    path = tmp_path_factory.mktemp("tissue") / "blobs.tif"
    write_pyramid_tiff(path, synthetic_region, 4, shape=SIZE, tile=256)
    return path


def test_synthetic_blobs_recovered(synthetic_slide):
    with Slide(synthetic_slide) as s:
        assert s.level_count == 4
        tm = tissue_mask(s, 32)
    d = tm.downsample
    h, w = tm.mask.shape
    yy, xx = (np.mgrid[0:h, 0:w] + 0.5) * d
    truth = np.zeros((h, w), bool)
    for e, _ in BLOBS:
        truth |= _in_ellipse(xx, yy, e)
    inter, union = (truth & tm.mask).sum(), (truth | tm.mask).sum()
    assert inter / union > 0.93, inter / union
    # the pale pink blob is found as well as the dense purple one
    for e, _ in BLOBS:
        inside = _in_ellipse(xx, yy, (e[0], e[1], e[2] * 0.8, e[3] * 0.8))
        assert tm.mask[inside].mean() > 0.98
    # the small hole is filled, the near-black box and the speck are dropped
    assert tm.mask[_in_ellipse(xx, yy, HOLE)].all()
    bx0, by0, bx1, by1 = BLACK
    assert not tm.mask[(xx >= bx0) & (xx < bx1) & (yy >= by0) & (yy < by1)].any()
    assert not tm.mask[_in_ellipse(xx, yy, (SPECK[0], SPECK[1], 100, 100))].any()


def test_white_slide_gives_empty_mask(tmp_path, rng):
    img = np.clip(rng.normal(243, 2.5, (1024, 1536, 3)), 0, 255).astype(np.uint8)
    path = tmp_path / "white.tif"
    write_pyramid_tiff(path, img, 2, tile=256)
    with Slide(path) as s:
        tm = tissue_mask(s, 16)
    assert not tm.mask.any()
    # uniform colours: pure white nothing; one uniform tissue colour all tissue
    assert not tissue_mask_from_rgb(np.full((64, 64, 3), 255, np.uint8)).any()
    assert tissue_mask_from_rgb(np.full((64, 64, 3), (200, 100, 160), np.uint8)).all()
    assert not tissue_mask_from_rgb(np.zeros((64, 64, 3), np.uint8)).any()


def test_near_black_dropped_even_when_saturated():
    rgb = np.full((128, 128, 3), 245, np.uint8)
    rgb[20:100, 20:60] = (200, 100, 160)     # tissue
    rgb[20:100, 70:110] = (35, 5, 30)        # dark but saturated: ink / border
    m = tissue_mask_from_rgb(rgb)
    assert m[25:95, 25:55].all()
    assert not m[:, 66:].any()


def test_threshold_sits_below_pale_stroma(rng):
    """Otsu alone splits pale eosin from haematoxylin; the valley threshold keeps both."""
    values = np.concatenate([
        np.clip(rng.normal(4, 2, 60000), 0, 255),     # background
        np.clip(rng.normal(38, 6, 20000), 0, 255),    # pale stroma
        np.clip(rng.normal(110, 12, 20000), 0, 255),  # dense nuclei
    ]).astype(np.uint8)
    otsu = threshold_otsu(values)
    thr = saturation_threshold(values)
    assert otsu > 38  # the problem
    assert 10 < thr < 25
    # with a clean two-mode histogram it stays between the modes
    two = np.concatenate([np.clip(rng.normal(4, 2, 5000), 0, 255),
                          np.clip(rng.normal(90, 10, 5000), 0, 255)]).astype(np.uint8)
    assert 10 < saturation_threshold(two) < 70


def test_small_slide_caps_downsample(tmp_path):
    img = np.full((300, 400, 3), 245, np.uint8)
    img[50:250, 50:350] = (190, 100, 170)
    write_pyramid_tiff(tmp_path / "small.tif", img, 1, tile=64)
    with Slide(tmp_path / "small.tif") as s:
        tm = tissue_mask(s, 32)
    assert tm.downsample == pytest.approx(300 / 64)
    assert min(tm.mask.shape) >= 64
    assert 0.45 < tm.fraction < 0.55


def test_bad_rgb_shape():
    with pytest.raises(ValueError, match="RGB"):
        tissue_mask_from_rgb(np.zeros((10, 10), np.uint8))


# --- fraction_in_boxes -------------------------------------------------------------

def brute_force_fraction(mask, d, x0, y0, x1, y1):
    h, w = mask.shape
    cols = [j for j in range(-50, w + 50) if x0 <= (j + 0.5) * d < x1]
    rows = [i for i in range(-50, h + 50) if y0 <= (i + 0.5) * d < y1]
    if not cols:
        cols = [math.ceil(x0 / d - 0.5)]
    if not rows:
        rows = [math.ceil(y0 / d - 0.5)]
    vals = [bool(mask[i, j]) if 0 <= i < h and 0 <= j < w else False for i in rows for j in cols]
    return float(np.mean(vals))


def test_fraction_in_boxes_matches_brute_force(rng):
    mask = rng.random((23, 31)) < 0.4
    for d in (32.0, 6.5):
        tm = TissueMask(mask, d)
        n = 300
        x0 = rng.uniform(-3 * d, 33 * d, n)
        y0 = rng.uniform(-3 * d, 25 * d, n)
        side = rng.choice([0.3, 1.0, 2.5, 5.0, 12.0], n) * d
        # some boxes exactly on pixel-centre boundaries
        x0[:40] = (np.round(x0[:40] / d) + 0.5) * d
        y0[:40] = (np.round(y0[:40] / d) + 0.5) * d
        got = tm.fraction_in_boxes(x0, y0, x0 + side, y0 + side)
        want = [brute_force_fraction(mask, d, a, b, a + s, b + s) for a, b, s in zip(x0, y0, side)]
        np.testing.assert_allclose(got, want, atol=1e-12)
    full = TissueMask(mask, 4.0).fraction_in_boxes(np.array([0.0]), np.array([0.0]),
                                                  np.array([31 * 4.0]), np.array([23 * 4.0]))
    assert full[0] == pytest.approx(mask.mean())


def test_overlay_mask():
    rgb = np.full((40, 60, 3), 200, np.uint8)
    mask = np.zeros((10, 15), bool)
    mask[2:8, 3:10] = True
    out = overlay_mask(rgb, mask)
    assert out.shape == rgb.shape and out.dtype == np.uint8
    assert (out[0:4, :] == 200).all()          # outside: unchanged
    assert (out[14:26, 18:34] != 200).any(axis=2).all()  # inside: tinted


# --- block by block: memory independent of the slide, same mask ----------------------

@pytest.mark.parametrize("downsample", [32, 8, 4])
def test_banded_mask_equals_whole_thumbnail_mask(real_slides, downsample):
    """Blocks of 64 mask pixels (cuts through objects and holes) give the whole-view mask exactly."""
    with Slide(real_slides["cmu"]) as s:
        whole = tissue_mask_from_rgb(s.read_downsampled(downsample))
        banded = BandedTissueMask(s, downsample, tile=64)
        assert banded.shape == whole.shape and banded.downsample == downsample
        assert banded.shape[0] > 3 * 64 or downsample == 32
        got = np.concatenate([band for _, band in banded.bands(100)])
    assert 0.25 < whole.mean() < 0.5
    np.testing.assert_array_equal(got, whole)


def test_tissue_mask_unchanged_on_tcga(real_slides):
    """The default path (blocks of 1024) on the two-level TCGA slide: the whole-view mask."""
    with Slide(real_slides["tcga"]) as s:
        whole = tissue_mask_from_rgb(s.read_downsampled(32))
        np.testing.assert_array_equal(tissue_mask(s, 32).mask, whole)
        np.testing.assert_array_equal(BandedTissueMask(s, 32).rows(40, 90), whole[40:90])


def test_threshold_from_histogram_equals_threshold_from_values(real_slides):
    import cv2

    with Slide(real_slides["tcga"]) as s:
        sat = cv2.cvtColor(s.read_downsampled(16), cv2.COLOR_RGB2HSV)[..., 1]
    for values in (sat, sat[sat > 3], sat[:40, :40]):
        assert saturation_threshold_hist(np.bincount(values.ravel(), minlength=256)) == saturation_threshold(values)


def test_cell_fractions_equal_fraction_in_boxes(real_slides):
    """Band by band (a few mask rows at a time) = the whole mask's summed-area table."""
    with Slide(real_slides["cmu"]) as s:
        banded = BandedTissueMask(s, 8)
        tm = banded.to_mask()
        W, H = s.dimensions
        for cell, side in ((50.0, 80.0), (37.5, 50.0), (200.0, 320.0)):
            n_rows, n_cols = math.ceil(H / cell), math.ceil(W / cell)
            r, c = np.divmod(np.arange(n_rows * n_cols), n_cols)
            cx, cy = (c + 0.5) * cell, (r + 0.5) * cell
            want = tm.fraction_in_boxes(cx - side / 2, cy - side / 2, cx + side / 2, cy + side / 2)
            for src in (tm, banded):
                parts = list(cell_fractions(src, cell, (n_rows, n_cols), side, band_pixels=5000))
                assert len(parts) > 3 and [p[0] for p in parts] == sorted(p[0] for p in parts)
                got = np.concatenate([f for _, f in parts])
                np.testing.assert_array_equal(got, want.reshape(n_rows, n_cols))
