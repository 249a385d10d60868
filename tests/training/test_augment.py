"""Tests for training augmentation: geometry, RGB colour jitter and HED stain jitter."""

from __future__ import annotations

import numpy as np
import pytest
from _helpers import cmu_region

from wsiheat.errors import WsiheatError


def he_region(size: int = 96) -> np.ndarray:
    return cmu_region(1000, 1200, size, size)




def dihedral(img):
    out = []
    for k in range(4):
        r = np.rot90(img, k, axes=(0, 1))
        out += [r, r[:, ::-1]]
    return out


def test_augmentation_same_transform_for_every_tower():
    from wsiheat.training.augment import AugmentConfig, augment_batch

    rng = np.random.default_rng(0)
    b, t, w = 64, 3, 12
    x = rng.integers(0, 256, (b, t, w, w, 3), dtype=np.uint8)
    geo = np.asarray(augment_batch(x, AugmentConfig(brightness=0, saturation=0, hue=0, contrast=0, hed=0)))
    used = set()
    for i in range(b):
        cands = dihedral(x[i, 0])
        k = [j for j, c in enumerate(cands) if np.array_equal(c, geo[i, 0])]
        assert k, "tower 0 is not a rotation/flip of its input"
        for tower in range(1, t):
            assert np.array_equal(dihedral(x[i, tower])[k[0]], geo[i, tower])
        used.add(k[0])
    assert len(used) >= 6  # rotations and flips really vary across samples

    # a marked corner, with colour perturbation on: the mark ends in the same corner in all towers
    x = np.full((b, t, w, w, 3), 40, np.uint8)
    x[:, :, :3, :3] = 230
    x[:, 1] = np.clip(x[:, 1].astype(int) + 10, 0, 255).astype(np.uint8)
    aug = np.asarray(augment_batch(x, AugmentConfig())).astype(float)
    corners = {"tl": (slice(0, 3), slice(0, 3)), "tr": (slice(0, 3), slice(w - 3, w)),
               "bl": (slice(w - 3, w), slice(0, 3)), "br": (slice(w - 3, w), slice(w - 3, w))}
    seen = set()
    for i in range(b):
        where = [max(corners, key=lambda c: aug[i, tw][corners[c]].mean()) for tw in range(t)]
        assert len(set(where)) == 1
        seen.add(where[0])
    assert len(seen) == 4
    assert not np.array_equal(aug[:, 0].mean(axis=(1, 2, 3)), aug[:1, 0].mean())  # colour varies
    with pytest.raises(WsiheatError, match="hue"):
        AugmentConfig(hue=2.0)



def test_hed_jitter_identity_gives_the_image_back():
    from wsiheat.training.augment import hed_jitter

    img = he_region().astype(np.float32) / 255.0
    out = np.asarray(hed_jitter(img, np.ones(3, np.float32), np.zeros(3, np.float32)))
    assert np.abs(out - img).max() < 2e-3  # float error only


def test_hed_jitter_scales_haematoxylin_as_scikit_image_measures_it():
    from skimage.color import rgb2hed

    from wsiheat.training.augment import hed_jitter

    img = he_region()
    f = img.astype(np.float32) / 255.0
    out = np.asarray(hed_jitter(f, np.array([1.3, 1.0, 1.0], np.float32), np.zeros(3, np.float32)))
    before, after = rgb2hed(f), rgb2hed(out)
    # pixels with clear haematoxylin that nothing clipped (scikit-image clips negative concentrations)
    ok = (before[..., 0] > 0.02) & (before[..., 1] > 0) & (before[..., 2] > 0) & (out.min(axis=-1) > 0.01)
    assert ok.sum() > 500
    ratio = after[..., 0][ok] / before[..., 0][ok]
    assert np.median(ratio) == pytest.approx(1.3, abs=0.01)
    assert np.abs(after[..., 1][ok] - before[..., 1][ok]).max() < 0.002  # eosin untouched


def test_hed_augmentation_same_draw_for_every_tower_and_varies_across_samples():
    from wsiheat.training.augment import AugmentConfig, augment_batch

    img = he_region(32)
    b, t = 16, 2
    x = np.broadcast_to(img, (b, t, *img.shape)).copy()
    cfg = AugmentConfig(rotate=False, flip=False, brightness=0, saturation=0, hue=0, contrast=0, hed=0.35)
    out = np.asarray(augment_batch(x, cfg, seed=3)).astype(np.int16)
    assert np.array_equal(out[:, 0], out[:, 1])  # towers of a sample share the draw
    means = out[:, 0].reshape(b, -1, 3).mean(axis=1)
    assert np.ptp(means, axis=0).max() > 5  # samples differ
    assert np.abs(out[:, 0] - img).mean() > 1  # and it changed the images
    off = np.asarray(augment_batch(x, AugmentConfig(rotate=False, flip=False, brightness=0, saturation=0,
                                                    hue=0, contrast=0, hed=0), seed=3))
    assert np.array_equal(off, x)
    # HED jitter is on by default (docs/experiments/stain-robustness.md, round 2)
    assert AugmentConfig().hed == 0.35
    default_hed = np.asarray(augment_batch(x, AugmentConfig(rotate=False, flip=False, brightness=0, saturation=0,
                                                            hue=0, contrast=0), seed=3))
    assert not np.array_equal(default_hed, x)
    with pytest.raises(WsiheatError, match="hed=1.5"):
        AugmentConfig(hed=1.5)
