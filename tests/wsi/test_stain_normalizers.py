"""The stain normalisers (Reinhard, Macenko, Vahadane) on real H&E: fit, map, targets, errors."""

from __future__ import annotations

import json

import numpy as np
import pytest
from _helpers import cmu_region, hed_shift
from PIL import Image

from wsiheat.errors import NoStainedTissueError, StainError

METHODS = ["reinhard", "macenko", "vahadane"]


@pytest.fixture(scope="module")
def he() -> np.ndarray:
    return cmu_region(600, 800, 768, 768)




def test_registry_and_records():
    from wsiheat.wsi.stain import StainNormalizer, get_normalizer, normalizer_from_dict, normalizer_names, register_normalizer

    assert normalizer_names() == ["macenko", "reinhard", "vahadane"]
    with pytest.raises(StainError, match="'bogus'"):
        get_normalizer("bogus")
    with pytest.raises(StainError, match="not a stain normaliser record"):
        normalizer_from_dict({"method": "macenko"}, "m.keras")
    assert normalizer_from_dict(None) is None

    @register_normalizer
    class Identity(StainNormalizer):
        name = "identity-test"

        def stats(self, pixels):
            return {}

        def map_pixels(self, pixels, source):
            return pixels

    try:
        n = normalizer_from_dict({"method": "identity-test", "target": {}})
        assert isinstance(n, Identity)
    finally:
        from wsiheat.wsi.stain import _REGISTRY

        _REGISTRY.pop("identity-test")


@pytest.mark.parametrize("method", METHODS)
def test_fit_on_itself_is_close_to_identity_and_records_round_trip(he, method):
    from wsiheat.wsi.stain import get_normalizer, normalizer_from_dict

    norm = get_normalizer(method).fit(he)
    out = norm.transform(he, norm.source(he))
    assert out.shape == he.shape and out.dtype == np.uint8
    # Reinhard is exact up to rounding; Macenko/Vahadane drop what two stains do not explain
    assert np.abs(out.astype(int) - he).mean() < (1.0 if method == "reinhard" else 6.0)
    again = normalizer_from_dict(json.loads(json.dumps(norm.to_dict())))
    assert np.array_equal(again.transform(he, norm.source(he)), out)


@pytest.mark.parametrize("method", METHODS)
def test_normalisation_brings_a_stain_shift_back_towards_the_original(he, method):
    from wsiheat.wsi.stain import get_normalizer

    shifted = hed_shift(he, 1.5, 0.6)
    norm = get_normalizer(method).fit(he)
    a = norm.transform(he, norm.source(he)).astype(int)
    b = norm.transform(shifted, norm.source(shifted)).astype(int)
    before = np.abs(shifted.astype(int) - he).mean()
    assert np.abs(a - b).mean() < 0.95 * before


@pytest.mark.parametrize("method", ["macenko", "vahadane"])
def test_stain_vectors_look_like_haematoxylin_and_eosin(he, method):
    from wsiheat.wsi.stain import get_normalizer

    stains = np.asarray(get_normalizer(method).fit(he).target["stains"])
    assert stains.shape == (2, 3)
    assert np.allclose(np.linalg.norm(stains, axis=1), 1.0)
    h, e = stains
    assert h[0] > e[0] and e[1] > e[0]  # H absorbs red more than E; E absorbs green most


def test_white_and_grayscale_images_are_refused_with_one_line(he, tmp_path):
    from wsiheat.wsi.stain import load_target

    white = tmp_path / "white.png"
    Image.fromarray(np.full((64, 64, 3), 250, np.uint8)).save(white)
    with pytest.raises(NoStainedTissueError, match="white.png: no tissue"):
        load_target(white, "macenko")
    gray = tmp_path / "gray.png"
    Image.fromarray(np.repeat(he.mean(axis=2, keepdims=True), 3, axis=2).astype(np.uint8)).save(gray)
    with pytest.raises(StainError, match="gray.png: grayscale"):
        load_target(gray, "reinhard")
    mono = tmp_path / "mono.png"
    Image.fromarray(he[..., 0]).save(mono)
    with pytest.raises(StainError, match="mono.png: a L image"):
        load_target(mono, "reinhard")
    text = tmp_path / "notes.png"
    text.write_text("not an image")
    with pytest.raises(StainError, match="notes.png: not an image"):
        load_target(text, "reinhard")
    with pytest.raises(StainError, match="no such reference"):
        load_target(tmp_path / "missing.png", "reinhard")


def test_reference_image_and_json_targets(he, tmp_path):
    from wsiheat.wsi.stain import get_normalizer, load_target

    ref = tmp_path / "ref.png"
    Image.fromarray(he).save(ref)
    norm = load_target(ref, "macenko")
    assert norm.target == get_normalizer("macenko").fit(he).target
    saved = tmp_path / "target.json"
    saved.write_text(json.dumps({"stain": norm.to_dict()}))  # a model's metadata layout works too
    assert load_target(saved, "macenko").target == norm.target
    with pytest.raises(StainError, match="target.json: a macenko target, but the normaliser is reinhard"):
        load_target(saved, "reinhard")
    bad = tmp_path / "bad.json"
    bad.write_text("{")
    with pytest.raises(StainError, match="bad.json: not a JSON stain target"):
        load_target(bad, "macenko")
