"""Slide reader: real SVS files, tifffile pyramids read through OpenSlide, plain images."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import tifffile
from _tiff import _block_reduce, write_pyramid_tiff
from PIL import Image

from wsiheat.errors import WsiheatError
from wsiheat.wsi.slide import Slide, area_resample, composite_on


def smooth(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """A smooth RGB test pattern evaluated at (possibly fractional) level-0 coordinates."""
    r = 128 + 60 * np.sin(2 * np.pi * x / 97.0) * np.cos(2 * np.pi * y / 131.0)
    g = 40 + 0.15 * x + 0.1 * y
    b = 200 - 50 * np.cos(2 * np.pi * (x + y) / 173.0)
    return np.stack([r, g, b], axis=-1)


def smooth_image(h: int, w: int) -> np.ndarray:
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float64)
    return np.clip(np.round(smooth(xx, yy)), 0, 255).astype(np.uint8)


@pytest.fixture(scope="module")
def pyramid(tmp_path_factory) -> tuple[Path, np.ndarray, list[np.ndarray]]:
    """A 3-level (downsamples 1, 2, 4) tiled TIFF at 0.25 µm/px with a smooth pattern."""
    path = tmp_path_factory.mktemp("slide") / "smooth.tif"
    img = smooth_image(700, 900)
    write_pyramid_tiff(path, img, 3, tile=128, mpp=0.25)
    levels = [img]
    for _ in range(2):
        levels.append(_block_reduce(levels[-1], 2, "mean"))
    return path, img, levels


# --- the fixture writer itself ------------------------------------------------------

def test_fixture_writer_gives_openslide_all_levels(pyramid):
    path, img, levels = pyramid
    with Slide(path) as s:
        assert s.is_openslide
        assert s.properties.get("openslide.vendor") == "generic-tiff"
        assert s.level_count == 3
        assert s.level_dimensions == ((900, 700), (450, 350), (225, 175))
        assert s.level_downsamples == pytest.approx((1.0, 2.0, 4.0))
        assert s.mpp == pytest.approx(0.25)
        for k, lv in enumerate(levels):
            w, h = s.level_dimensions[k]
            np.testing.assert_array_equal(s.read_region((0, 0), k, (w, h)), lv)


def test_subifd_pyramid_is_not_seen_by_openslide(tmp_path):
    # documents why the fixture writes levels as successive pages
    img = smooth_image(512, 512)
    with tifffile.TiffWriter(tmp_path / "sub.tif") as tw:
        tw.write(img, tile=(256, 256), photometric="rgb", subifds=1)
        tw.write(img[::2, ::2], tile=(256, 256), photometric="rgb", subfiletype=1)
    with Slide(tmp_path / "sub.tif") as s:
        assert s.level_count == 1


def test_region_function_writer_for_big_slides(tmp_path):
    def fn(x, y, w, h, d):
        yy, xx = np.mgrid[y:y + h, x:x + w]
        return np.clip(np.round(smooth(xx * d, yy * d)), 0, 255).astype(np.uint8)

    dims = write_pyramid_tiff(tmp_path / "fn.tif", fn, 3, shape=(600, 1000), tile=256)
    assert dims == [(1000, 600), (500, 300), (250, 150)]
    with Slide(tmp_path / "fn.tif") as s:
        assert s.level_dimensions == tuple(dims)
        np.testing.assert_array_equal(s.read_region((0, 0), 0, (1000, 600)), smooth_image(600, 1000))
        np.testing.assert_array_equal(s.read_region((40, 80), 2, (30, 20)), fn(10, 20, 30, 20, 4.0))


# --- real slides -------------------------------------------------------------------

def test_real_tcga_svs(real_slides):
    with Slide(real_slides["tcga"]) as s:
        assert s.is_openslide
        assert s.level_count == 2
        assert s.level_dimensions == ((4443, 3567), (2221, 1783))
        assert s.level_downsamples[1] == pytest.approx(2.0, rel=1e-3)
        assert s.mpp is None
        assert s.name == "tcga-cr-7395-01a-01-ts1"
        reg = s.read_region((1000, 1000), 1, (64, 48))
        assert reg.shape == (48, 64, 3) and reg.dtype == np.uint8
        # level 1 region equals a block-mean of the same level-0 area (the scanner's own pyramid)
        l0 = s.read_region((1000, 1000), 0, (128, 96)).astype(np.float32)
        l0 = l0.reshape(48, 2, 64, 2, 3).mean(axis=(1, 3))
        assert np.abs(l0 - reg).mean() < 8
        # outside the slide: white
        out = s.read_region((4443 + 10, 0), 0, (16, 16))
        assert (out == 255).all()
        assert s.level_for(2.0) == 1 and s.level_for(1.9) == 0 and s.level_for(16) == 1
        with pytest.raises(WsiheatError, match="tcga-cr-7395.*µm/px"):
            s.level_for(mpp=1.0)


def test_real_cmu_svs(real_slides):
    with Slide(real_slides["cmu"]) as s:
        assert s.level_count == 1
        assert s.dimensions == (2220, 2967)
        assert s.mpp == pytest.approx(0.499, abs=1e-3)
        assert s.level_for(mpp=1.0) == 0
        ds = s.downsample_for(mpp=1.0)
        assert ds == pytest.approx(1.0 / s.mpp)
        region = s.read_scaled((500, 600), ds, (100, 100))
        assert region.shape == (100, 100, 3)
        ref = s.read_region((500, 600), 0, (math.ceil(100 * ds), math.ceil(100 * ds)))
        # a resample of the level-0 area: same mean colour
        assert np.abs(region.reshape(-1, 3).mean(0) - ref.reshape(-1, 3).mean(0)).max() < 3
        with pytest.raises(WsiheatError, match="cmu-1-small-region.*no level 1"):
            s.read_region((0, 0), 1, (10, 10))
        with pytest.raises(WsiheatError, match="cmu-1-small-region.*as fine as 0.1"):
            s.level_for(mpp=0.1)
        thumb, tds = s.thumbnail(256)
        assert max(thumb.shape[:2]) <= 256 and tds == pytest.approx(2967 / 256)


# --- level choice and resampling -----------------------------------------------------

def test_level_for_downsample_and_mpp(pyramid):
    path, _, _ = pyramid
    with Slide(path) as s:
        expect = {1.0: 0, 1.05: 0, 1.5: 0, 1.9: 0, 2.0: 1, 1.9995: 1, 3.0: 1, 3.9: 1, 4.0: 2, 7.0: 2, 100.0: 2}
        for ds, lv in expect.items():
            assert s.level_for(ds) == lv, ds
        assert s.level_for(mpp=0.25) == 0
        assert s.level_for(mpp=0.5) == 1
        assert s.level_for(mpp=0.75) == 1
        assert s.level_for(mpp=1.0) == 2
        assert s.level_for(mpp=0.24) == 0  # slightly finer than level 0: upsampled a little
        assert s.downsample_for(level=2) == pytest.approx(4.0)
        assert s.downsample_for(mpp=0.5) == pytest.approx(2.0)
        for bad in (dict(mpp=0.1), dict(downsample=0.5), dict(downsample=-1.0), dict(mpp=0.0)):
            with pytest.raises(WsiheatError, match="smooth.tif"):
                s.level_for(**bad)
        with pytest.raises(WsiheatError, match=r"smooth.tif: has no level 3 \(levels 0-2"):
            s.downsample_for(level=3)


def test_read_scaled_at_a_level_equals_direct_read(pyramid):
    path, _, _ = pyramid
    with Slide(path) as s:
        for lv, ds in enumerate((1.0, 2.0, 4.0)):
            a = s.read_scaled((96, 40), ds, (70, 50))
            b = s.read_region((96, 40), lv, (70, 50))
            np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("x0, y0, w, h, ds", [
    (60, 90, 120, 80, 3.0),      # integer geometry at level 1 (OpenCV area resize)
    (61, 91.5, 121, 77, 3.0),    # fractional offset and scale: exact area resample
    (10, 20, 100, 90, 5.3),      # from level 2, scale 1.325
])
def test_read_scaled_between_levels_is_a_proper_resample(pyramid, x0, y0, w, h, ds):
    path, _, levels = pyramid
    with Slide(path) as s:
        out = s.read_scaled((x0, y0), ds, (w, h))
        assert out.shape == (h, w, 3)
        # output pixel (i, j) is the area mean of level-0 [x0+3j, x0+3j+3): for a smooth
        # pattern, the pattern at the centre of that area
        jj = x0 + (np.arange(w) + 0.5) * ds - 0.5
        ii = y0 + (np.arange(h) + 0.5) * ds - 0.5
        ref = smooth(jj[None, :], ii[:, None])
        err = np.abs(out.astype(np.float64) - ref)
        assert err.mean() < 1.5 and err.max() < 5.0, (err.mean(), err.max())
        # seamless: two halves read separately equal one read
        left = s.read_scaled((x0, y0), ds, (w // 2, h))
        right = s.read_scaled((x0 + (w // 2) * ds, y0), ds, (w - w // 2, h))
        assert np.abs(np.hstack([left, right]).astype(int) - out).max() <= 1
        # beyond the last level: a 2x area mean of level 2
        out8 = s.read_scaled((0, 0), 8.0, (100, 80))
        ref8 = levels[2][:160, :200].astype(np.float64).reshape(80, 2, 100, 2, 3).mean(axis=(1, 3))
        assert np.abs(out8 - ref8).max() <= 1.0


def test_area_resample_matches_opencv_on_integer_geometry(rng):
    import cv2

    src = rng.integers(0, 256, (90, 120, 3), dtype=np.uint8)
    for f, (w, h) in ((2.0, (60, 45)), (1.5, (80, 60)), (3.0, (40, 30))):
        a = area_resample(src, (0.0, 0.0), f, (w, h))
        b = cv2.resize(src, (w, h), interpolation=cv2.INTER_AREA)
        assert np.abs(a.astype(int) - b).max() <= 1, f
    # a shift by a whole source pixel is a crop
    a = area_resample(src, (1.0, 2.0), 1.0, (50, 40))
    np.testing.assert_array_equal(a, src[2:42, 1:51])


def test_read_downsampled_is_chunk_independent(pyramid):
    path, _, levels = pyramid
    with Slide(path) as s:
        full = s.read_downsampled(4.0)
        np.testing.assert_array_equal(full, levels[2])
        a = s.read_downsampled(6.0)
        b = s.read_downsampled(6.0, chunk=64)  # many small chunks
        assert a.shape == (math.ceil(700 / 6), math.ceil(900 / 6), 3)
        assert np.abs(a.astype(int) - b.astype(int)).max() <= 1


@pytest.mark.parametrize("scale", [2, 4])
def test_marked_pixel_maps_across_levels(tmp_path, scale):
    """A dark block at level 0 is found at (x / d, y / d) on each level."""
    img = np.full((640, 768, 3), 255, np.uint8)
    x, y, side = 304, 176, 16  # multiples of 16 so every level sees whole pixels
    img[y:y + side, x:x + side] = 0
    path = tmp_path / f"mark{scale}.tif"
    write_pyramid_tiff(path, img, 3, factor=scale, tile=64)
    with Slide(path) as s:
        assert s.level_downsamples == pytest.approx((1.0, scale, scale ** 2), rel=2e-3)
        for lv in range(s.level_count):
            d = s.level_downsamples[lv]
            w, h = s.level_dimensions[lv]
            full = s.read_region((0, 0), lv, (w, h))
            dark = np.argwhere(full.max(axis=2) < 128)
            r0, c0 = dark.min(0)
            r1, c1 = dark.max(0) + 1
            assert (c0, r0) == (round(x / d), round(y / d))
            assert (c1 - c0, r1 - r0) == (max(1, round(side / d)),) * 2
            # a region read with a level-0 offset finds it relative to that offset
            off = (x - 5 * int(d), y - 3 * int(d))
            reg = s.read_region(off, lv, (16, 16))
            rr, cc = np.argwhere(reg.max(axis=2) < 128).min(0)
            assert (cc, rr) == (5, 3)


def test_odd_sized_pyramid_levels_match(tmp_path):
    img = smooth_image(501, 703)
    path = tmp_path / "odd.tif"
    write_pyramid_tiff(path, img, 3, tile=64)
    with Slide(path) as s:
        assert s.level_dimensions == ((703, 501), (352, 251), (176, 126))
        assert s.level_downsamples[2] != 4.0
        assert s.level_for(4.0) == 2 and s.level_matches(2, 4.0)
        np.testing.assert_array_equal(s.read_scaled((0, 0), 4.0, (50, 40)), s.read_region((0, 0), 2, (50, 40)))


# --- plain images ---------------------------------------------------------------------

def test_plain_images_are_one_level_slides(tmp_path):
    img = smooth_image(120, 150)
    Image.fromarray(img).save(tmp_path / "a.png")
    Image.fromarray(img).save(tmp_path / "a.jpg", quality=95)
    tifffile.imwrite(tmp_path / "a.tif", img)  # stripped, not a pyramid
    Image.fromarray(img[..., 1]).save(tmp_path / "grey.png")
    for name in ("a.png", "a.jpg", "a.tif", "grey.png"):
        with Slide(tmp_path / name) as s:
            assert s.level_count == 1 and s.dimensions == (150, 120) and s.mpp is None, name
            assert s.level_for(8.0) == 0
            reg = s.read_region((10, 20), 0, (40, 30))
            assert reg.shape == (30, 40, 3) and reg.dtype == np.uint8
            ref = img[20:50, 10:50]
            if name == "grey.png":
                ref = np.repeat(ref[..., 1:2], 3, axis=2)
            tol = 6 if name.endswith(".jpg") else 0
            assert np.abs(reg.astype(int) - ref).max() <= tol, name
            # outside the image: white
            assert (s.read_region((140, 110), 0, (20, 20))[10:, 10:] == 255).all()
            small = s.read_scaled((0, 0), 3.0, (50, 40))
            assert small.shape == (40, 50, 3)


def test_transparent_pixels_composited_on_white(tmp_path):
    rgba = np.zeros((40, 60, 4), np.uint8)
    rgba[..., :3] = (200, 30, 60)
    rgba[:, :20, 3] = 255   # opaque
    rgba[:, 20:40, 3] = 0   # fully transparent: white whatever the colour
    rgba[:, 40:, 3] = 128   # half
    Image.fromarray(rgba, "RGBA").save(tmp_path / "alpha.png")
    with Slide(tmp_path / "alpha.png") as s:
        out = s.read_region((0, 0), 0, (60, 40))
    assert (out[:, :20] == (200, 30, 60)).all()
    assert (out[:, 20:40] == 255).all()
    expect = np.round((np.array([200, 30, 60]) * 128 + 255 * 127) / 255)
    assert np.abs(out[:, 40:].astype(int) - expect).max() <= 1
    # the same through OpenSlide on a tiled RGBA TIFF
    write_pyramid_tiff(tmp_path / "alpha.tif", rgba, 1, tile=16)
    with Slide(tmp_path / "alpha.tif") as s:
        out2 = s.read_region((0, 0), 0, (60, 40))
    assert (out2[:, 20:40] == 255).all() and (out2[:, :20] == (200, 30, 60)).all()
    # black background on request (used for masks)
    assert (composite_on(rgba, 0)[:, 20:40] == 0).all()


def test_name_strips_ome_tiff(tmp_path):
    img = smooth_image(32, 32)
    Image.fromarray(img).save(tmp_path / "x.ome.tiff", format="TIFF")
    assert Slide(tmp_path / "x.ome.tiff").name == "x"


# --- errors ----------------------------------------------------------------------------

def _one_line(exc: pytest.ExceptionInfo, path: Path) -> str:
    msg = str(exc.value)
    assert "\n" not in msg
    assert str(path) in msg or path.name in msg
    return msg


def test_bad_inputs(tmp_path):
    cases = {}
    cases["missing"] = tmp_path / "missing.svs"
    cases["folder"] = tmp_path / "folder.svs"
    cases["folder"].mkdir()
    cases["text"] = tmp_path / "notes.tif"
    cases["text"].write_text("this is not an image\n" * 10)
    cases["empty"] = tmp_path / "empty.png"
    cases["empty"].write_bytes(b"")
    cases["truncated"] = tmp_path / "trunc.png"
    Image.fromarray(smooth_image(64, 64)).save(cases["truncated"])
    cases["truncated"].write_bytes(cases["truncated"].read_bytes()[:60])
    for what, path in cases.items():
        with pytest.raises(WsiheatError) as exc:
            s = Slide(path)
            s.read_region((0, 0), 0, (64, 64))
        msg = _one_line(exc, path)
        if what == "missing":
            assert "no such file" in msg
        if what == "folder":
            assert "folder" in msg


def test_level_errors_name_the_file(pyramid):
    path, _, _ = pyramid
    with Slide(path) as s:
        for lv in (3, -1):
            with pytest.raises(WsiheatError) as exc:
                s.read_region((0, 0), lv, (4, 4))
            assert "no level" in _one_line(exc, path)
