"""wsiheat.wsi.pyramid: the one pyramidal-TIFF writer (mosaic slides and masks, heatmap TIFFs)."""

from __future__ import annotations

import numpy as np
import openslide
import pytest
import tifffile

from wsiheat.wsi.pyramid import down2, level_sizes, write_pyramid_array


def test_odd_sized_rgb_pyramid_levels_are_area_averages(tmp_path):
    rng = np.random.default_rng(4)
    img = rng.integers(0, 256, (301, 517, 3), dtype=np.uint8)
    path = tmp_path / "odd.tif"
    n = write_pyramid_array(path, img, mpp=2.0, description='{"x": 1}', tile=64, min_side=64)
    sizes = level_sizes(517, 301, 64)
    assert n == len(sizes) == 5 and sizes[1] == (259, 151)  # halves rounded up
    with openslide.OpenSlide(str(path)) as osr:
        assert osr.level_dimensions == tuple(sizes)
        assert osr.level_downsamples[1] == pytest.approx(2.0, rel=0.01)
        assert float(osr.properties["openslide.mpp-x"]) == pytest.approx(2.0, rel=1e-3)
        assert osr.properties["openslide.comment"] == '{"x": 1}'
        np.testing.assert_array_equal(np.asarray(osr.read_region((0, 0), 0, (517, 301)))[..., :3], img)
    # level 1 is the 2x2 mean of level 0 with its last row repeated (301 is odd), computed by hand
    padded = np.concatenate([img, img[-1:]], axis=0).astype(np.int64)
    padded = np.concatenate([padded, padded[:, -1:]], axis=1)
    by_hand = (padded[0::2, 0::2] + padded[1::2, 0::2] + padded[0::2, 1::2] + padded[1::2, 1::2] + 2) // 4
    with tifffile.TiffFile(path) as tf:
        assert not tf.is_bigtiff and all(p.is_tiled for p in tf.pages)
        np.testing.assert_array_equal(tf.pages[1].asarray(), by_hand.astype(np.uint8))
        np.testing.assert_array_equal(tf.pages[2].asarray(), down2(np.pad(by_hand.astype(np.uint8),
                                                                          [(0, 1), (0, 1), (0, 0)], mode="edge")))


def test_grey_pyramid_and_bad_input(tmp_path):
    mask = np.zeros((200, 300), np.uint8)
    mask[50:150, 100:250] = 255
    n = write_pyramid_array(tmp_path / "m.tif", mask, tile=64, min_side=100)
    with tifffile.TiffFile(tmp_path / "m.tif") as tf:
        assert n == len(tf.pages) == 3 and tf.pages[0].shape == (200, 300)
        np.testing.assert_array_equal(tf.pages[0].asarray(), mask)
        np.testing.assert_array_equal(tf.pages[2].asarray(), down2(down2(mask)))
        assert tf.pages[2].shape == (50, 75) and tf.pages[2].asarray()[25, 40] == 255
    with pytest.raises(ValueError, match="uint8"):
        write_pyramid_array(tmp_path / "f.tif", mask.astype(np.float32))
    with pytest.raises(ValueError, match="RGB pyramids only"):
        write_pyramid_array(tmp_path / "j.tif", mask, compression="jpeg")
