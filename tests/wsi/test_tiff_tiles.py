"""Direct tile reads (wsi/tiff_tiles.py) against OpenSlide, on real SVS files and written tiled TIFFs."""

from __future__ import annotations

import shutil
import threading

import numpy as np
import pytest
import tifffile
from _helpers import CMU_SVS, cmu_region

from wsiheat.errors import SlideError
from wsiheat.patches.sampling import WindowSpec, read_windows
from wsiheat.wsi.slide import Slide
from wsiheat.wsi.tiff_tiles import READER_ENV, TiffTiles


def random_reads(slide: Slide, rng: np.random.Generator, n: int) -> list[tuple]:
    """(location0, level, size): anywhere, partly or wholly outside the slide, on and between level pixels."""
    out = []
    for k in range(n):
        lv = int(rng.integers(0, slide.level_count))
        (W, H), ds = slide.level_dimensions[lv], slide.level_downsamples[lv]
        x, y = int(rng.integers(-300, int(W * ds) + 100)), int(rng.integers(-300, int(H * ds) + 100))
        if k % 2:  # on a whole level pixel (the direct path on every level with an integer downsample)
            x, y = int(round(round(x / ds) * ds)), int(round(round(y / ds) * ds))
        out.append(((x, y), lv, (int(rng.integers(1, 600)), int(rng.integers(1, 600)))))
    return out


def assert_same_as_openslide(path, rng, n=120, levels=None):
    with Slide(path) as direct, Slide(path, reader="openslide") as ref:
        assert direct.reader == "direct" and ref.reader == "openslide"
        assert sorted(direct._tiles.levels) == (levels if levels is not None else list(range(direct.level_count)))
        for loc, lv, size in random_reads(direct, rng, n):
            a, b = direct.read_region(loc, lv, size), ref.read_region(loc, lv, size)
            assert a.shape == b.shape == (size[1], size[0], 3) and a.dtype == np.uint8
            assert np.array_equal(a, b), (loc, lv, size)
        assert direct._tiles.refused == {}


def test_embedded_jpeg_svs_same_pixels_as_openslide(rng):
    assert_same_as_openslide(CMU_SVS, rng)
    with Slide(CMU_SVS) as s:  # and the same as openslide-python straight
        assert np.array_equal(s.read_region((700, 900), 0, (333, 257)), cmu_region(700, 900, 333, 257))


def test_jpeg2000_svs_same_pixels_as_openslide(real_slides, rng):
    """TCGA: JPEG 2000 tiles; level 1's downsample is 2.0005, so only its whole-pixel origin reads
    directly and every other level-1 read (OpenSlide interpolates there) stays with OpenSlide."""
    assert_same_as_openslide(real_slides["tcga"], rng, levels=[0, 1])
    with Slide(real_slides["tcga"]) as s:
        # the heatmap's two towers (downsamples 1 and 2): level 0 directly, level 1 through OpenSlide
        spec = WindowSpec(downsamples=(1.0, 2.0), window=80, center=50, stride=50)
        centers = np.stack(np.meshgrid(np.arange(1200, 3200, 50), np.arange(900, 2400, 50)), -1).reshape(-1, 2) + 25
        with Slide(real_slides["tcga"], reader="openslide") as ref:
            assert np.array_equal(read_windows(s, spec, centers, None), read_windows(ref, spec, centers, None))
            assert np.array_equal(read_windows(s, spec, centers), read_windows(ref, spec, centers))


@pytest.mark.parametrize("compression", ["jpeg", "zlib"])
def test_generic_tiff_same_pixels_on_every_level(pyramid_slide, compression, rng):
    """A 3-level generic TIFF whose size is no multiple of the tile: partial edge tiles on every level."""
    img = cmu_region(0, 0, 1000, 1300)
    path = pyramid_slide(img, 3, compression=compression, tile=128)
    assert_same_as_openslide(path, rng, n=150)


def test_environment_turns_direct_reads_off(monkeypatch, pyramid_slide):
    path = pyramid_slide(cmu_region(0, 0, 300, 300), 2)
    monkeypatch.setenv(READER_ENV, "openslide")
    with Slide(path) as s:
        assert s.reader == "openslide" and s._tiles is None
    monkeypatch.delenv(READER_ENV)
    with Slide(path) as s:
        assert s.reader == "direct"
    with pytest.raises(SlideError, match="unknown slide reader 'fast'"):
        Slide(path, reader="fast")


def test_plain_image_is_not_read_directly(tmp_path):
    from PIL import Image

    Image.fromarray(cmu_region(0, 0, 200, 100)).save(tmp_path / "img.png")
    with Slide(tmp_path / "img.png") as s:
        assert s.reader == "pillow" and s._tiles is None


def test_level_whose_pixels_differ_from_openslide_is_refused(pyramid_slide):
    """The first read of a level compares one tile with OpenSlide's: here the reference is another slide of
    the same size, as if the decoder disagreed; the level then goes back to OpenSlide for good."""
    a = pyramid_slide(cmu_region(0, 0, 600, 500), 2, name="a.tif")
    b = pyramid_slide(cmu_region(600, 500, 600, 500), 2, name="b.tif")
    with Slide(a, reader="openslide") as sa, Slide(b, reader="openslide") as sb:
        tiles = TiffTiles.open(a, "generic-tiff", sa.level_dimensions, sa.level_downsamples, sb._read_openslide)
        assert sorted(tiles.levels) == [0, 1]
        assert tiles.read((10, 20), 0, (64, 64)) is None
        assert "differ from OpenSlide" in tiles.refused[0] and 0 not in tiles.levels
        assert tiles.read((10, 20), 0, (64, 64)) is None  # stays refused
        tiles.close()
        same = TiffTiles.open(a, "generic-tiff", sa.level_dimensions, sa.level_downsamples, sa._read_openslide)
        assert np.array_equal(same.read((10, 20), 0, (64, 64)), sa.read_region((10, 20), 0, (64, 64)))
        assert same.refused == {}
        same.close()
        # other vendors (their levels are not plain TIFF pages) are never read directly
        assert TiffTiles.open(a, "hamamatsu", sa.level_dimensions, sa.level_downsamples, sa._read_openslide) is None


def test_threads_share_one_bounded_cache(pyramid_slide, rng):
    """Four threads reading at once through a cache far smaller than the slide: OpenSlide's pixels every
    time, and the cache never holds more than its bound."""
    path = pyramid_slide(cmu_region(0, 0, 1500, 1500), 2, compression="jpeg", tile=128)
    with Slide(path, reader="openslide") as ref:
        reads = [r for r in random_reads(ref, rng, 200) if r[1] == 0]
        want = [ref.read_region(*r) for r in reads]
    with Slide(path) as s:
        s._tiles.cache.max_bytes = 20 * 128 * 128 * 3  # 20 tiles of the 144 on level 0
        bad, peak = [], [0]

        def work(i):
            for k in range(i, len(reads), 4):
                if not np.array_equal(s.read_region(*reads[k]), want[k]):
                    bad.append(k)
                peak[0] = max(peak[0], s._tiles.cache.nbytes)

        threads = [threading.Thread(target=work, args=(i,)) for i in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert bad == [] and 0 < peak[0] <= s._tiles.cache.max_bytes


def test_damaged_tile_is_a_one_line_slide_error(pyramid_slide, tmp_path):
    path = pyramid_slide(cmu_region(0, 0, 1024, 1024), 1, compression="jpeg", tile=256)
    bad = tmp_path / "damaged.tif"
    shutil.copy(path, bad)
    with tifffile.TiffFile(bad) as tf:
        page = tf.pages[0]
        order = np.argsort(page.databytecounts)
        victim = int(order[0])  # not the largest tile: the level's check passes, this tile's read fails
        offset, count = page.dataoffsets[victim], page.databytecounts[victim]
        across = -(-page.imagewidth // page.tilewidth)
    with open(bad, "r+b") as f:
        f.seek(offset + 2)  # keep the SOI marker, garble the rest
        f.write(b"\x13" * (count - 2))
    with Slide(bad) as s:
        assert s.reader == "direct"
        tx, ty = victim % across, victim // across
        with pytest.raises(SlideError) as err:
            s.read_region((tx * 256 + 5, ty * 256 + 5), 0, (100, 100))
        msg = str(err.value)
        assert str(bad) in msg and "read failed" in msg and "\n" not in msg
        assert s._tiles.refused == {}  # the level passed its check: the direct read raised
