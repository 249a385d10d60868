"""Stain normalisation at inference: heatmaps of real H&E, tile independence, shifts, failures."""

from __future__ import annotations

import json

import numpy as np
import pytest
from _helpers import cmu_region, hed_shift, run_wsiheat
from _tiff import write_pyramid_tiff

from wsiheat.errors import StainError


def colour_model():
    """A tiny real Keras model whose output follows the stain colour of the window centre."""
    import keras

    inp = keras.Input((1, 80, 80, 3), dtype="uint8")
    x = keras.layers.Reshape((80, 80, 3))(inp)
    x = keras.layers.Rescaling(1 / 255.0)(x)
    x = keras.layers.Cropping2D(15)(x)
    conv = keras.layers.Conv2D(1, 1, activation="sigmoid")
    x = conv(x)
    conv.set_weights([np.array([-6.0, 4.0, 3.0], np.float32).reshape(1, 1, 3, 1), np.array([-0.5], np.float32)])
    return keras.Model(inp, keras.layers.GlobalAveragePooling2D()(x))


@pytest.fixture(scope="module")
def slides(tmp_path_factory):
    from wsiheat.models.model import save_model
    from wsiheat.wsi.stain import get_normalizer

    d = tmp_path_factory.mktemp("stain")
    rgb = cmu_region()
    gray = np.repeat(rgb.mean(axis=2, keepdims=True).astype(np.uint8), 3, axis=2)
    out = {"dir": d}
    for key, img in (("slide", rgb), ("shifted", hed_shift(rgb, 1.4, 0.7)), ("gray", gray)):
        out[key] = d / f"{key}.tif"
        write_pyramid_tiff(out[key], img, 3, mpp=0.5)
    meta = {"window": 80, "center": 50, "stride": 50, "downsamples": [1.0], "towers": 1, "levels": [0]}
    out["plain"] = save_model(colour_model(), d / "plain.keras", meta)
    for name in ("macenko", "reinhard", "vahadane"):
        norm = get_normalizer(name).fit(rgb[::4, ::4], "reference")
        out[name] = save_model(colour_model(), d / f"{name}.keras", {**meta, "stain": norm.to_dict()})
    return out


def heat(model, slide, **kw):
    from wsiheat.inference.engine import HeatmapModel

    engine = HeatmapModel.load(model, backend="tensorflow", batch_size=32)
    return engine.predict_slide(slide, **kw)


@pytest.mark.parametrize("method", ["macenko", "reinhard"])
def test_heatmap_is_the_same_whatever_the_tile_size(slides, method):
    """One source fit per slide: reading in 256 px or 1024 px tiles gives the same map (no seams)."""
    a = heat(slides[method], slides["slide"], block=256)
    b = heat(slides[method], slides["slide"], block=1024, readers=1)
    assert a.summary["cells_evaluated"] > 100
    assert np.array_equal(a.probabilities, b.probabilities)
    rec = a.summary["stain"]
    assert rec["method"] == method and rec["fitted_on_windows"] == 64 and rec["unnormalised_windows"] == 0
    plain = heat(slides["plain"], slides["slide"])
    assert np.abs(plain.probabilities - a.probabilities)[a.tissue].mean() > 0.005  # it did normalise


@pytest.mark.parametrize("method", ["macenko", "reinhard", "vahadane"])
def test_normalisation_undoes_most_of_a_stain_shift(slides, method):
    plain = heat(slides["plain"], slides["slide"]).probabilities
    plain_shift = heat(slides["plain"], slides["shifted"]).probabilities
    norm = heat(slides[method], slides["slide"]).probabilities
    norm_shift = heat(slides[method], slides["shifted"]).probabilities
    tissue = heat(slides["plain"], slides["slide"]).tissue
    without = np.abs(plain - plain_shift)[tissue].mean()
    with_ = np.abs(norm - norm_shift)[tissue].mean()
    # the shift is non-linear in each normaliser's model of colour, so they undo part of it
    # (measured on this slide: 64 %, 68 %, 82 % of the change remain)
    assert without > 0.03
    assert with_ < 0.9 * without, (method, with_, without)


def test_grayscale_slide_is_a_one_line_error(slides, tmp_path):
    with pytest.raises(StainError, match="grayscale"):
        heat(slides["macenko"], slides["gray"])
    # a real slide whose overview is mostly gray padding still has its tissue's colour: accepted
    from wsiheat.wsi.stain.base import check_slide_colour

    rgb = cmu_region(1000, 1200, 400, 400)  # tissue
    padded = np.full((1200, 1200, 3), 90, np.uint8)
    padded[:400, :400] = rgb
    check_slide_colour(padded, "padded")
    with pytest.raises(StainError, match="padded: grayscale"):
        check_slide_colour(np.repeat(padded.mean(axis=2, keepdims=True).astype(np.uint8), 3, axis=2), "padded")
    r = run_wsiheat("heatmap", str(slides["gray"]), "-m", str(slides["macenko"]), "-o", str(tmp_path / "g.png"),
                    "--backend", "tensorflow")
    assert r.returncode != 0
    assert "Traceback" not in r.stderr
    err = [line for line in r.stderr.splitlines() if "grayscale" in line]
    assert len(err) == 1 and "gray.tif" in err[0], r.stderr
    assert not any(tmp_path.iterdir())  # nothing written


def test_cli_heatmap_says_it_normalised(slides, tmp_path):
    r = run_wsiheat("heatmap", slides["slide"], "-m", slides["reinhard"], "--out-dir", tmp_path, "--backend",
                    "tensorflow", timeout=300)
    assert r.returncode == 0, r.stderr
    assert "slide: stain-normalised (reinhard, the model's target; fitted on 64 tissue windows)" in r.stdout
    rec = json.loads((tmp_path / "slide.json").read_text())["stain"]
    assert rec["method"] == "reinhard" and rec["unnormalised_windows"] == 0 and rec["not_fitted"] is None


def test_heatmap_records_the_fit_and_a_failing_map_leaves_windows_counted(slides, tmp_path):
    from wsiheat.inference.stain import WindowStain
    from wsiheat.models.model import read_metadata
    from wsiheat.wsi.stain import normalizer_from_dict

    hm = heat(slides["macenko"], slides["slide"])
    hm.save(tmp_path)
    summary = json.loads((tmp_path / "slide.json").read_text())  # what the viewer and users read
    assert summary["stain"]["source"]["stains"] and summary["stain"]["target"]
    norm = normalizer_from_dict(read_metadata(slides["macenko"])["stain"])
    bad = WindowStain(norm, {**summary["stain"]["source"], "max_conc": [0.0, 0.0]})
    w = np.full((3, 1, 80, 80, 3), 128, np.uint8)
    assert np.array_equal(bad(w), w) and bad.unnormalised == 3
    good = WindowStain(norm, summary["stain"]["source"])
    assert not np.array_equal(good(w), w) and good.unnormalised == 0


def test_predict_windows_with_the_slides_source_matches_the_heatmap(slides):
    """The API's window prediction, given the slide's source, scores windows as the heatmap did."""
    from wsiheat.errors import ModelError
    from wsiheat.inference.engine import HeatmapModel
    from wsiheat.inference.predict import spec_from_metadata
    from wsiheat.patches.sampling import read_windows
    from wsiheat.wsi.slide import Slide

    engine = HeatmapModel.load(slides["macenko"], backend="tensorflow", batch_size=32)
    hm = engine.predict_slide(slides["slide"])
    rows, cols = np.nonzero(hm.tissue)
    rows, cols = rows[:40], cols[:40]
    with Slide(slides["slide"]) as s:
        spec = spec_from_metadata(engine.metadata, s)
        centers = (np.stack([cols, rows], 1) + 0.5) * hm.cell_size
        windows = read_windows(s, spec, centers, None)
    got = engine.predict_windows(windows, stain_source=hm.summary["stain"]["source"])
    np.testing.assert_allclose(got, hm.probabilities[rows, cols], atol=1e-5)
    assert np.abs(engine.predict_windows(windows) - got).max() > 1e-3  # raw windows score otherwise
    plain = HeatmapModel.load(slides["plain"], backend="tensorflow")
    with pytest.raises(ModelError, match="no stain normaliser"):
        plain.predict_windows(windows, stain_source=hm.summary["stain"]["source"])
