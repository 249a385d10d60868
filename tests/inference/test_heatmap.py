"""Tests of `wsiheat heatmap` (wsiheat.inference.outputs): real slides written with tifffile,
read by OpenSlide; tiny deterministic Keras models saved with the model contract."""

from __future__ import annotations

import csv
import json
import warnings
from pathlib import Path

import cv2
import numpy as np
import openslide
import pytest
import tifffile
from _helpers import start_paused
from PIL import Image

from wsiheat.cli.main import main
from wsiheat.errors import WsiheatError
from wsiheat.inference.heatmap import heatmap_slide
from wsiheat.inference.outputs import (
    OUTPUT_SUFFIXES,
    colorize,
    lesion_views,
    outputs_exist,
    read_heatmap,
    write_pyramid_tiff,
)
from wsiheat.inference.predict import dihedral, make_predict_fn, spec_from_metadata, tiles_of_cells
from wsiheat.patches.sampling import WindowSpec, read_windows
from wsiheat.postprocess.lesions import SMOOTH_SIGMA, lesions_from_heatmap, slide_scores, smooth_heatmap
from wsiheat.wsi.slide import Slide

SIZE = 4096
TISSUE = (512, 512, 3584, 3584)          # x0, y0, x1, y1 level-0
TUMOR = (1600, 1200, 2400, 2000)         # strongly red region inside the tissue
PINK, RED = (200, 120, 180), (220, 30, 30)


def write_slide(path: Path, rgb: np.ndarray, n_levels: int = 3) -> Path:
    """Multi-page tiled pyramidal TIFF (OpenSlide's generic tiled TIFF), levels halving."""
    with tifffile.TiffWriter(path) as tw:
        lev = rgb
        for i in range(n_levels):
            tw.write(lev, tile=(256, 256), photometric="rgb", compression="zlib",
                     subfiletype=0 if i == 0 else 1, metadata=None)
            lev = cv2.resize(lev, (lev.shape[1] // 2, lev.shape[0] // 2), interpolation=cv2.INTER_AREA)
    return path


def red_model(towers: int, tower: int = 0, window: int = 80, center: int = 50, left_half: bool = False):
    """Tiny model: fraction of strongly red pixels in the centre of one tower."""
    import keras

    inp = keras.Input((towers, window, window, 3), dtype="uint8")
    x = keras.layers.Reshape((towers * window, window, 3))(inp)
    x = keras.layers.Rescaling(1.0)(x)
    top = tower * window + (window - center) // 2
    left = (window - center) // 2
    right = window - center - left + (center // 2 if left_half else 0)
    x = keras.layers.Cropping2D(((top, towers * window - top - center), (left, right)))(x)
    conv = keras.layers.Conv2D(1, 1)
    x = conv(x)
    conv.set_weights([np.array([1, -1, 0], np.float32).reshape(1, 1, 3, 1) / 50, np.array([-2.4], np.float32)])
    x = keras.layers.ReLU(max_value=1.0)(x)
    out = keras.layers.GlobalAveragePooling2D()(x)
    return keras.Model(inp, out)


def save_red_model(path: Path, downsamples, tower: int = 0) -> Path:
    from wsiheat.models.model import save_model

    meta = {"window": 80, "center": 50, "stride": 50, "downsamples": list(downsamples),
            "towers": len(downsamples), "levels": [None] * len(downsamples)}
    return save_model(red_model(len(downsamples), tower), path, meta)


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    d = tmp_path_factory.mktemp("heat")
    rgb = np.full((SIZE, SIZE, 3), 255, np.uint8)
    rgb[TISSUE[1]:TISSUE[3], TISSUE[0]:TISSUE[2]] = PINK
    rgb[TUMOR[1]:TUMOR[3], TUMOR[0]:TUMOR[2]] = RED
    slide = write_slide(d / "tumor_slide.tif", rgb)
    small = np.full((1024, 1024, 3), 255, np.uint8)
    small[200:800, 200:800] = PINK
    small[400:520, 300:460] = RED
    small_slide = write_slide(d / "small.tif", small, 2)
    blank = write_slide(d / "blank.tif", np.full((1024, 1024, 3), 255, np.uint8), 2)
    models = {
        "ds2": save_red_model(d / "m_ds2.keras", (2, 4), tower=0),
        "ds4": save_red_model(d / "m_ds4.keras", (4, 8), tower=1),   # ds 8 is not a level: resampled
        "ds1": save_red_model(d / "m_ds1.keras", (1, 2), tower=0),
    }
    return {"dir": d, "slide": slide, "small": small_slide, "blank": blank, "models": models}


def run_cli(args, capsys):
    with pytest.raises(SystemExit) as exc:
        main([str(a) for a in args])
    out = capsys.readouterr()
    return exc.value.code, out.out, out.err


def _inside(x, y, box, margin=0.0):
    return (box[0] - margin <= x) & (x < box[2] + margin) & (box[1] - margin <= y) & (y < box[3] + margin)


@pytest.mark.parametrize("key,cell0", [("ds2", 100.0), ("ds4", 200.0)])
def test_hot_cells_match_tumor_region(data, tmp_path, key, cell0):
    from wsiheat.models.model import load_model

    model, meta = load_model(data["models"][key])
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        summary = heatmap_slide(data["slide"], model, meta, tmp_path, batch_size=32, readers=2,
                                      block=512)
    if key == "ds4":
        assert any("resampled" in str(w.message) for w in caught)
    hm = read_heatmap(tmp_path / "tumor_slide.h5")
    assert hm.cell_size == cell0 and hm.origin == (0.0, 0.0)
    assert hm.probabilities.shape == (int(np.ceil(SIZE / cell0)),) * 2
    rows, cols = np.indices(hm.probabilities.shape)
    ctr = hm.centers(rows.ravel(), cols.ravel())
    x, y = ctr[:, 0].reshape(rows.shape), ctr[:, 1].reshape(rows.shape)
    p, t = hm.probabilities, hm.tissue
    hot = p > 0.5
    # hot cells coincide with the tumor region to within one cell
    assert hot.any()
    assert _inside(x[hot], y[hot], TUMOR, margin=cell0).all()
    assert hot[_inside(x, y, (TUMOR[0] + cell0, TUMOR[1] + cell0, TUMOR[2] - cell0, TUMOR[3] - cell0))].all()
    # cells whose centre is deep inside the tumor are exactly 1, tissue far from it exactly 0
    assert np.allclose(p[_inside(x, y, (TUMOR[0] + cell0, TUMOR[1] + cell0, TUMOR[2] - cell0,
                                        TUMOR[3] - cell0))], 1.0)
    far = t & ~_inside(x, y, TUMOR, margin=2 * cell0)
    assert far.any() and np.all(p[far] == 0)
    # background: not tissue, probability 0; tissue mask follows the tissue square
    assert not t[~_inside(x, y, TISSUE, margin=cell0)].any()
    assert t[_inside(x, y, (TISSUE[0] + cell0, TISSUE[1] + cell0, TISSUE[2] - cell0, TISSUE[3] - cell0))].all()
    assert np.all(p[~t] == 0)
    # cell_at inverts centers
    r2, c2 = hm.cell_at(x.ravel(), y.ravel())
    assert np.array_equal(r2, rows.ravel()) and np.array_equal(c2, cols.ravel())
    # lesion points fall inside the tumor region
    with open(tmp_path / "tumor_slide_lesions.csv") as f:
        les = np.array([[float(v) for v in row] for row in csv.reader(f)])
    assert len(les) >= 1 and les.shape[1] == 3
    assert _inside(les[:, 1], les[:, 2], TUMOR).all()
    sm = smooth_heatmap(p, t, summary["smooth"])
    assert summary["smooth"] == SMOOTH_SIGMA > 0
    assert np.all(np.diff(les[:, 0]) <= 0) and les[0, 0] == pytest.approx(sm.max(), abs=1e-6)
    # summary: the score is the maximum of the smoothed map, the raw maximum is kept beside it
    assert summary["score"] == pytest.approx(float(sm.max()), abs=1e-6) and summary["score"] > 0.8
    assert summary["max_probability"] == pytest.approx(float(p.max()), abs=1e-6) and summary["max_probability"] > 0.99
    assert summary["cells_evaluated"] == int(t.sum())


def test_outputs_exist_and_are_readable(data, tmp_path):
    from wsiheat.models.model import load_model

    model, meta = load_model(data["models"]["ds2"])
    summary = heatmap_slide(data["slide"], model, meta, tmp_path, name="heat", batch_size=16,
                                  model_path=str(data["models"]["ds2"]))
    names = sorted(p.name for p in tmp_path.iterdir())
    assert names == sorted(f"heat{s}" for s in OUTPUT_SUFFIXES)  # no stray temporary files
    hm = read_heatmap(tmp_path / "heat.h5")
    rows, cols = hm.probabilities.shape
    assert hm.attrs["slide"] == "tumor_slide" and list(hm.attrs["slide_dimensions"]) == [SIZE, SIZE]
    assert list(hm.attrs["downsamples"]) == [2.0, 4.0] and hm.attrs["center"] == 50
    # pyramidal TIFF: OpenSlide and tifffile, one pixel per cell, colour of the probability
    with openslide.OpenSlide(str(tmp_path / "heat_heatmap.tif")) as osr:
        assert osr.dimensions == (cols, rows)
        region = np.asarray(osr.read_region((0, 0), 0, (cols, rows)))[..., :3]
    expected = colorize(hm.probabilities, hm.tissue)
    assert np.array_equal(region, expected)
    with tifffile.TiffFile(tmp_path / "heat_heatmap.tif") as tf:
        assert tf.pages[0].shape == (rows, cols, 3) and tf.pages[0].is_tiled
        desc = json.loads(tf.pages[0].description)
        assert desc["cell_size"] == 100.0
    # PNGs
    png = Image.open(tmp_path / "heat.png")
    assert png.size[0] >= 600 or png.size[1] >= 600
    ov = np.asarray(Image.open(tmp_path / "heat_overlay.png"))
    thumb, ds = Slide(data["slide"]).thumbnail(2048)
    assert ov.shape == thumb.shape
    # background stays the slide (transparent heatmap); tumor is tinted
    assert np.array_equal(ov[5, 5], thumb[5, 5])
    ty, tx = int((TUMOR[1] + TUMOR[3]) / 2 / ds), int((TUMOR[0] + TUMOR[2]) / 2 / ds)
    assert not np.array_equal(ov[ty, tx], thumb[ty, tx])
    # JSON
    js = json.loads((tmp_path / "heat.json").read_text())
    for k in ("slide", "score", "dimensions", "mpp", "topk_mean", "tumor_area", "cells_evaluated", "seconds",
              "patches_per_second", "model", "wsiheat_version", "model_metadata"):
        assert k in js
    assert js == json.loads(json.dumps(summary, default=str))
    assert js["slide"] == "tumor_slide" and js["dimensions"] == [SIZE, SIZE] and js["mpp"] is None
    tumor_cells = int(((hm.probabilities >= 0.5) & hm.tissue).sum())
    assert js["tumor_area"] == pytest.approx(tumor_cells * 100.0 ** 2) and js["tumor_area_unit"] == "px^2"
    assert js["patches_per_second"] > 0 and js["model"].endswith("m_ds2.keras")


def test_smooth_heatmap_over_tissue_only():
    rng = np.random.default_rng(0)
    tissue = np.zeros((20, 30), bool)
    tissue[2:18, 3:25] = True
    const = np.where(tissue, 0.7, rng.random(tissue.shape))  # off-tissue values are ignored
    sm = smooth_heatmap(const, tissue, 1.0)
    np.testing.assert_allclose(sm[tissue], 0.7)  # renormalised at the tissue border too
    assert np.all(sm[~tissue] == 0)
    lone = np.zeros(tissue.shape)
    lone[10, 10] = 1.0  # one confident cell amid normal tissue is damped below 0.5
    block = np.zeros(tissue.shape)
    block[8:13, 15:20] = 1.0  # a 5 x 5 region keeps its centre near 1
    for sigma in (0.75, 1.0):
        assert smooth_heatmap(lone, tissue, sigma)[10, 10] < 0.5
        assert smooth_heatmap(block, tissue, sigma)[10, 17] > 0.95
    # the value is the Gaussian-weighted mean of the tissue neighbours (hand-computed, sigma 0.75)
    w = np.exp(-(np.arange(-2, 3)[:, None] ** 2 + np.arange(-2, 3)[None] ** 2) / (2 * 0.75 ** 2))
    got = smooth_heatmap(lone, tissue, 0.75)[10, 10]
    assert got == pytest.approx(w[2, 2] / w.sum(), rel=1e-3)
    np.testing.assert_array_equal(smooth_heatmap(lone, tissue, 0), lone * tissue)
    with pytest.raises(ValueError, match="sigma"):
        smooth_heatmap(lone, tissue, -1)


def test_lesion_views_show_the_slide_around_each_point(data, tmp_path):
    cell0 = 100.0
    lesions = np.array([[0.9, (TUMOR[0] + TUMOR[2]) / 2, (TUMOR[1] + TUMOR[3]) / 2],  # inside the tumor
                        [0.6, 30.0, 30.0]])  # near the corner: the view runs off the slide
    with Slide(data["slide"]) as s:
        v = lesion_views(s, lesions, cell0, context_cells=6, size=120)
        ref = s.read_scaled((lesions[0, 1] - 300, lesions[0, 2] - 300), 5.0, (120, 120))
    assert v.shape == (2, 1, 120, 120, 3) and v.dtype == np.uint8
    cyan = np.all(v[:, 0] == (0, 200, 255), axis=-1)
    # the scored cell (100 px = 20 view px, centred) is outlined, 2 px wide; nothing else is cyan
    outline = np.zeros((120, 120), bool)
    outline[50:70, 50:70] = True
    outline[52:68, 52:68] = False
    assert np.array_equal(cyan[0], outline) and np.array_equal(cyan[1], outline)
    np.testing.assert_array_equal(v[0, 0][~outline], ref[~outline])
    assert np.all(v[0, 0][5, 5] == RED)  # the tumor fills the view
    assert np.all(v[1, 0][0, 0] == 255)  # outside the slide: white background
    # the gallery file written by heatmap_slide; an empty one for a slide without candidates
    from wsiheat.models.model import load_model

    model, meta = load_model(data["models"]["ds2"])
    heatmap_slide(data["small"], model, meta, tmp_path, batch_size=16, smooth=0)
    heatmap_slide(data["blank"], model, meta, tmp_path, batch_size=16)
    for n in ("small", "blank"):
        assert Image.open(tmp_path / f"{n}_lesions.png").format == "PNG"
    assert Image.open(tmp_path / "small_lesions.png").size[1] > Image.open(tmp_path / "blank_lesions.png").size[1]
    # a one-cell tumor is a candidate on the raw map, damped below the threshold once smoothed
    assert json.loads((tmp_path / "small.json").read_text())["lesions"] >= 1
    heatmap_slide(data["small"], model, meta, tmp_path, name="small_sm", batch_size=16)
    sm = json.loads((tmp_path / "small_sm.json").read_text())
    assert sm["lesions"] == 0 and sm["score"] < 0.5 < sm["max_probability"]


def test_one_region_read_matches_block_reads(data):
    spec = WindowSpec(downsamples=(2.0, 8.0), window=80, center=50, stride=50)
    rng = np.random.default_rng(0)
    rows, cols = rng.integers(0, 41, 40), rng.integers(0, 41, 40)
    from wsiheat.patches.sampling import Grid

    ctr = Grid.for_slide((SIZE, SIZE), spec).centers(rows, cols)
    with Slide(data["slide"]) as s:
        a = read_windows(s, spec, ctr, block=None)
        b = read_windows(s, spec, ctr, block=200)  # many small regions
    assert np.array_equal(a[:, 0], b[:, 0])
    assert np.abs(a.astype(int) - b.astype(int)).max() <= 1  # resampled tower: same geometry


def test_tiles_of_cells_groups_neighbours():
    rows, cols = np.divmod(np.arange(100), 10)
    tiles = tiles_of_cells(rows, cols, 4)
    assert sorted(np.concatenate(tiles).tolist()) == list(range(100))
    assert len(tiles) == 9
    for idx in tiles:
        assert len(set(rows[idx] // 4)) == 1 and len(set(cols[idx] // 4)) == 1


def test_tta_averages_the_eight_dihedral_transforms():
    spec = WindowSpec(downsamples=(1.0, 2.0), window=80, center=50, stride=50)
    rng = np.random.default_rng(1)
    x = rng.integers(0, 256, (4, 2, 80, 80, 3), dtype=np.uint8)
    x[:, :, :, :40, 0] = 250  # asymmetric red
    x[:, :, :, :40, 1] = 10
    asym = red_model(2, 0, left_half=True)
    plain = make_predict_fn(asym, spec, 4, tta=False)(x)
    got = make_predict_fn(asym, spec, 4, tta=True)(x)
    want = np.mean([asym.predict_on_batch(dihedral(x, k, f))[:, 0]
                    for k in range(4) for f in (False, True)], axis=0)
    assert np.allclose(got, want, atol=1e-5)
    assert not np.allclose(got, plain, atol=1e-3)
    # the eight transforms are distinct
    flat = {dihedral(x, k, f).tobytes() for k in range(4) for f in (False, True)}
    assert len(flat) == 8
    sym = red_model(2, 0)  # centre crop: invariant to the transforms
    assert np.allclose(make_predict_fn(sym, spec, 4, tta=True)(x),
                       make_predict_fn(sym, spec, 4)(x), atol=1e-6)


def test_lesions_from_heatmap_nms():
    p = np.zeros((20, 30), np.float32)
    p[5, 5], p[5, 6], p[6, 5] = 0.9, 0.8, 0.85
    p[15, 25] = 0.7
    p[2, 28] = 0.95
    tissue = np.ones_like(p, bool)
    tissue[2, 28] = False
    les = lesions_from_heatmap(p, tissue, cell0=100, threshold=0.5, radius=250)
    assert les.tolist() == [[pytest.approx(0.9), 550, 550], [pytest.approx(0.7), 2550, 1550]]
    les0 = lesions_from_heatmap(p, tissue, cell0=100, threshold=0.5, radius=0)
    assert len(les0) == 4
    assert len(lesions_from_heatmap(p, None, 100, 0.5, 250)) == 3
    assert len(lesions_from_heatmap(p, tissue, 100, 0.99)) == 0
    with pytest.raises(ValueError):
        lesions_from_heatmap(p[0], None, 100)


def test_slide_scores_units():
    p = np.array([[0.2, 0.9], [0.6, 0.0]], np.float32)
    t = np.array([[True, True], [True, False]])
    s = slide_scores(p, t, cell0=10, mpp=None, topk=2, area_threshold=0.5)
    assert s["score"] == pytest.approx(0.9) and s["topk_mean"] == pytest.approx(0.75)
    assert s["tumor_area"] == 200 and s["tumor_area_unit"] == "px^2"
    s = slide_scores(p, t, cell0=10, mpp=0.5, topk=2)
    assert s["tumor_area"] == pytest.approx(50) and s["tumor_area_unit"] == "um^2"
    assert slide_scores(p, np.zeros_like(t), 10, None)["score"] == 0.0
    # with a smoothed map: its tissue maximum is the score; everything else stays raw
    sm = np.array([[0.3, 0.5], [0.4, 0.95]])  # the 0.95 lies off tissue
    s = slide_scores(p, t, cell0=10, mpp=None, topk=2, smoothed=sm)
    assert s["score"] == pytest.approx(0.5) and s["max_probability"] == pytest.approx(0.9)
    assert s["topk_mean"] == pytest.approx(0.75) and s["tumor_area"] == 200


def test_pyramid_tiff_levels(tmp_path):
    rgb = np.random.default_rng(2).integers(0, 256, (500, 600, 3), dtype=np.uint8)
    n = write_pyramid_tiff(tmp_path / "p.tif", rgb, cell0=100, mpp=0.25, tile=128, min_size=128)
    assert n == 4
    with openslide.OpenSlide(str(tmp_path / "p.tif")) as osr:
        assert osr.level_count == 4 and osr.dimensions == (600, 500)
        assert osr.level_dimensions[1] == (300, 250)
        assert float(osr.properties["openslide.mpp-x"]) == pytest.approx(25.0, rel=1e-3)
        assert np.array_equal(np.asarray(osr.read_region((0, 0), 0, (600, 500)))[..., :3], rgb)


def test_interrupted_run_leaves_no_outputs(data, tmp_path):
    from wsiheat.models.model import load_model

    model, meta = load_model(data["models"]["ds2"])
    spec = spec_from_metadata(meta)
    real = make_predict_fn(model, spec, 16)
    calls = []

    def flaky(batch):
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return real(batch)

    with pytest.raises(KeyboardInterrupt):
        heatmap_slide(data["slide"], model, meta, tmp_path, batch_size=16, predict=flaky)
    assert list(tmp_path.iterdir()) == []


def test_cli_batch_skip_overwrite(data, tmp_path, capsys):
    out = tmp_path / "new" / "res"  # created, parents too
    slides = [data["slide"], data["small"]]
    code, so, se = run_cli(["heatmap", *slides, "-m", data["models"]["ds1"], "--out-dir", out,
                            "--batch-size", "64", "--no-progress"], capsys)
    assert code == 0, se
    lines = [l for l in so.splitlines() if l.strip()]
    assert len(lines) == 3 and lines[0].startswith("tumor_slide: score 1.000") and lines[1].startswith("small:")
    assert lines[2].startswith("inference: ") and "windows/s" in lines[2] and "min per 100k tissue windows" in lines[2]
    for n in ("tumor_slide", "small"):
        assert outputs_exist(out, n)
    js = json.loads((out / "small.json").read_text())
    assert js["max_probability"] > 0.99 and 0.5 < js["score"] < js["max_probability"]  # a small tumor, smoothed
    assert js["geometry"]["cell_size"] == 50.0 and js["smooth"] == 0.75
    mtime = (out / "small.json").stat().st_mtime_ns
    code, so, se = run_cli(["heatmap", *slides, "-m", data["models"]["ds1"], "--out-dir", out], capsys)
    assert code == 0 and so.count("skipped") == 2
    assert (out / "small.json").stat().st_mtime_ns == mtime
    (out / "small_lesions.csv").unlink()  # incomplete outputs are redone
    code, so, se = run_cli(["heatmap", *slides, "-m", data["models"]["ds1"], "--out-dir", out], capsys)
    assert code == 0 and so.count("skipped") == 1 and "small: score" in so
    code, so, se = run_cli(["heatmap", data["small"], "-m", data["models"]["ds1"], "--out-dir", out,
                            "--overwrite", "--tta", "--smooth", "0"], capsys)
    assert code == 0 and "small: score" in so
    js = json.loads((out / "small.json").read_text())
    assert js["smooth"] == 0 and js["score"] == js["max_probability"] > 0.99
    assert (out / "small.json").stat().st_mtime_ns != mtime and json.loads((out / "small.json").read_text())["tta"]


def test_cli_single_output_name(data, tmp_path, capsys):
    code, so, se = run_cli(["heatmap", data["small"], "-m", data["models"]["ds2"], "-o", tmp_path / "heat.png",
                            "--nms-radius", "300", "--lesion-threshold", "0.3"], capsys)
    assert code == 0, se
    assert outputs_exist(tmp_path, "heat")
    js = json.loads((tmp_path / "heat.json").read_text())
    assert js["slide"] == "small" and js["nms_radius"] == 300 and js["lesion_threshold"] == 0.3
    code, so, se = run_cli(["heatmap", data["small"], data["slide"], "-m", data["models"]["ds2"],
                            "-o", tmp_path / "x.png"], capsys)
    assert code == 2 and "--out-dir" in se and "Traceback" not in se


def test_cli_bad_inputs(data, tmp_path, capsys):
    m = data["models"]["ds2"]
    junk = tmp_path / "junk.keras"
    junk.write_bytes(b"not a zip")
    code, so, se = run_cli(["heatmap", data["small"], "-m", junk, "--out-dir", tmp_path], capsys)
    assert code == 2 and "not a wsiheat model" in se and se.count("\n") == 1
    code, so, se = run_cli(["heatmap", data["small"], "-m", tmp_path / "missing.keras", "--out-dir", tmp_path],
                           capsys)
    assert code == 2 and "missing.keras" in se
    bad = tmp_path / "bad.svs"
    bad.write_bytes(b"\x00" * 1000)
    code, so, se = run_cli(["heatmap", bad, data["small"], "-m", m, "--out-dir", tmp_path], capsys)
    assert code == 2 and "bad.svs" in se and "Traceback" not in se
    assert outputs_exist(tmp_path, "small") and not list(tmp_path.glob("bad*.*json"))
    # no tissue: empty heatmap, score 0, a warning, exit 0
    code, so, se = run_cli(["heatmap", data["blank"], "-m", m, "--out-dir", tmp_path], capsys)
    assert code == 0 and "no tissue" in se
    js = json.loads((tmp_path / "blank.json").read_text())
    assert js["score"] == 0 and js["cells_evaluated"] == 0
    assert read_heatmap(tmp_path / "blank.h5").probabilities.max() == 0
    assert (tmp_path / "blank_lesions.csv").read_text() == ""
    # a model that needs a finer magnification than level 0
    code, so, se = run_cli(["heatmap", data["small"], "-m", m, "--out-dir", tmp_path, "--overwrite",
                            "--downsamples", "0.5,1"], capsys)
    assert code == 2 and "finer than level 0" in se
    # an output folder that cannot be created: a file stands in the way
    (tmp_path / "afile").write_text("x")
    code, so, se = run_cli(["heatmap", data["small"], "-m", m, "--out-dir", tmp_path / "afile"], capsys)
    assert code == 2 and "afile: output exists and is not a folder" in se and se.count("\n") == 1


def test_library_errors(data, tmp_path):
    from wsiheat.models.model import load_model

    model, meta = load_model(data["models"]["ds2"])
    with pytest.raises(WsiheatError, match="batch size"):
        heatmap_slide(data["small"], model, meta, tmp_path, batch_size=0)
    bad_meta = dict(meta, window=64)
    with pytest.raises(WsiheatError, match="inputs shaped"):
        heatmap_slide(data["small"], model, bad_meta, tmp_path)
    with pytest.raises(WsiheatError, match="µm/px"):
        heatmap_slide(data["small"], model, meta, tmp_path, nms_radius_um=50)


def test_cli_defaults_match_the_library():
    """The CLI and the library read the same defaults (wsiheat.defaults); they must not drift apart."""
    from wsiheat.cli.main import cli
    from wsiheat.inference.heatmap import compute_heatmap

    opts = {p.name: p.default for p in cli.commands["heatmap"].params}
    assert opts["smooth"] == SMOOTH_SIGMA
    sig = __import__("inspect").signature(compute_heatmap).parameters
    for name in ("batch_size", "readers", "block", "tissue_threshold", "lesion_threshold", "area_threshold",
                 "topk", "smooth"):
        assert opts[name] == sig[name].default, name


def test_bfloat16_heatmap_matches_float32(data, tmp_path, capsys):
    """--precision mixed_bfloat16: the same heatmap within bf16 rounding, and recorded as such."""
    maps = {}
    for prec in ("float32", "mixed_bfloat16"):
        out = tmp_path / prec
        code, _, se = run_cli(["heatmap", data["small"], "-m", data["models"]["ds2"], "--out-dir", out,
                               "--precision", prec], capsys)
        assert code == 0, se
        js = json.loads((out / "small.json").read_text())
        assert js["precision"] == prec
        hm = read_heatmap(out / "small.h5")
        assert hm.attrs["precision"] == prec
        maps[prec] = hm
    a, b = maps["float32"], maps["mixed_bfloat16"]
    assert np.array_equal(a.tissue, b.tissue) and a.probabilities.max() > 0.9
    np.testing.assert_allclose(b.probabilities, a.probabilities, atol=0.02)
    code, _, se = run_cli(["heatmap", data["small"], "-m", data["models"]["ds2"], "--precision", "int8"], capsys)
    assert code == 2 and "int8" in se


def test_with_precision_on_inception_v3():
    """A bf16 copy of the real two-tower InceptionV3: float32 weights and head, bf16 elsewhere, same outputs."""
    import keras

    from wsiheat.models.model import build_model, model_precision, with_precision

    keras.utils.set_random_seed(5)  # the backbone's random start too: the same network on every run
    model = build_model(2, 80, weights="none")
    rng = np.random.default_rng(5)
    for w in model.weights:  # random, non-trivial weights so the outputs spread over (0, 1)
        if "tumor" in w.path:
            w.assign(rng.normal(0, 3.0, w.shape).astype("float32"))
    bf = with_precision(model, "mixed_bfloat16")
    assert model_precision(model) == "float32" and model_precision(bf) == "mixed_bfloat16"
    assert bf.get_layer("tumor").dtype_policy.name == "float32"
    assert {str(w.dtype) for w in bf.weights} == {"float32"}
    assert all(np.array_equal(a, b) for a, b in zip(model.get_weights(), bf.get_weights()))
    # images from dark to bright, with texture: inputs the random backbone tells apart
    x = (np.linspace(0, 200, 8)[:, None, None, None, None]
         + rng.integers(0, 56, (8, 2, 80, 80, 3))).astype(np.uint8)
    p32, p16 = np.asarray(model(x)), np.asarray(bf(x))
    assert p16.dtype == np.float32 and p32.std() > 1e-3
    np.testing.assert_allclose(p16, p32, atol=0.02)
    assert keras.mixed_precision.global_policy().name == "float32"


def test_lesion_scorer_gives_the_lesion_points_and_score(data, tmp_path, capsys):
    from wsiheat.postprocess.lesions import postprocess_scores
    from wsiheat.postprocess.scorer import FEATURES, LesionScorer, save_scorer

    # a hand-set scorer: evidence grows with the share of confident cells in the 3 x 3 around
    coef = [0.0] * len(FEATURES)
    coef[FEATURES.index("share_3x3_0.5")] = 12.0
    scorer = LesionScorer(tuple(coef), -6.0, FEATURES, {"by": "hand"})
    path = save_scorer(tmp_path / "scorer.json", scorer)
    out = tmp_path / "out"
    code, so, se = run_cli(["heatmap", data["slide"], "-m", data["models"]["ds2"], "--out-dir", out,
                            "--lesion-scorer", path, "--lesion-threshold", "0.3"], capsys)
    assert code == 0, se
    js = json.loads((out / "tumor_slide.json").read_text())
    hm = read_heatmap(out / "tumor_slide.h5")
    m = scorer.apply(hm.probabilities, hm.tissue)
    assert js["lesion_map"] == "scorer" and js["smooth"] is None and js["lesion_scorer"]["coef"] == coef
    assert json.loads(hm.attrs["lesion_scorer"])["fitted"] == {"by": "hand"}
    assert js["score"] == pytest.approx(m[hm.tissue].max()) and js["score"] > 0.5
    assert js["score"] != pytest.approx(js["max_probability"])  # not the raw map
    rows = [tuple(map(float, r)) for r in csv.reader((out / "tumor_slide_lesions.csv").read_text().splitlines())]
    assert rows and rows[0][0] == pytest.approx(m.max(), abs=1e-6)
    r, c = hm.cell_at(np.array([rows[0][1]]), np.array([rows[0][2]]))
    assert m[r[0], c[0]] == pytest.approx(m.max())
    assert _inside(rows[0][1], rows[0][2], TUMOR)
    # `evaluate tune` re-scores the raw map the same way
    score, (p, x, y) = postprocess_scores(hm.probabilities, hm.tissue, hm.cell_size, hm.origin, 0.75, 0.3, 4.0,
                                          scorer)
    assert score == pytest.approx(js["score"])
    assert [(round(a, 6), int(b), int(d)) for a, b, d in zip(p, x, y)] == [
        (round(a, 6), int(b), int(d)) for a, b, d in rows]
    assert "refit" not in se  # the hand-set scorer records no model
    # a scorer fitted on another model's heatmaps: a warning (not an error)
    other = save_scorer(tmp_path / "other.json", LesionScorer(tuple(coef), -6.0, FEATURES,
                                                              {"heatmap_models": ["runs/other.keras"]}))
    code, so, se = run_cli(["heatmap", data["small"], "-m", data["models"]["ds2"], "--out-dir", tmp_path / "o3",
                            "--lesion-scorer", other], capsys)
    assert code == 0 and "fitted on heatmaps of other.keras, not m_ds2.keras" in se
    # a bad scorer file: one-line error naming it, nothing written
    bad = tmp_path / "bad.json"
    bad.write_text("{}")
    code, so, se = run_cli(["heatmap", data["small"], "-m", data["models"]["ds2"], "--out-dir", tmp_path / "o2",
                            "--lesion-scorer", bad], capsys)
    assert code == 2 and "bad.json: not a lesion scorer file" in se and se.count("\n") == 1
    assert not (tmp_path / "o2").exists()


# --- bounded memory (issue 21) ----------------------------------------------------------

def test_tissue_cells_equal_the_all_cells_computation(real_slides):
    """Band-wise tissue cells = every cell's centre-box fraction from the whole tissue mask."""
    from wsiheat.inference.predict import tissue_cells
    from wsiheat.patches.sampling import Grid
    from wsiheat.wsi.tissue import tissue_mask

    for key in ("cmu", "tcga"):
        with Slide(real_slides[key]) as s:
            for spec, thr in ((WindowSpec((1.0,), stride=50), 0.0), (WindowSpec((2.0, 4.0), stride=50), 0.5)):
                grid, tissue = tissue_cells(s, spec, thr)
                tm = tissue_mask(s, min(32.0, spec.cell0))
                g = Grid.for_slide(s.dimensions, spec)
                r, c = g.all_cells()
                want = (tm.fraction_in_boxes(*g.boxes(r, c, spec.center)) > thr).reshape(g.n_rows, g.n_cols)
                assert tissue.dtype == bool and 0.2 < want.mean() < 0.8
                np.testing.assert_array_equal(tissue, want)


def test_cli_max_cells_evaluates_only_the_first_tissue_cells(real_slides, tmp_path, capsys):
    model = save_red_model(tmp_path / "m.keras", (1.0, 2.0))
    code, out, err = run_cli(["heatmap", real_slides["cmu"], "-m", model, "--out-dir", tmp_path,
                              "--max-cells", "20", "--no-progress"], capsys)
    assert code == 0, err
    s = json.loads((tmp_path / "cmu-1-small-region.json").read_text())
    assert s["cells_evaluated"] == 20 and s["cells_total"] > 1000
    import h5py

    with h5py.File(tmp_path / "cmu-1-small-region.h5", "r") as f:
        tissue = f["tissue"][...]
    assert tissue.sum() == 20 and np.flatnonzero(tissue).max() < tissue.shape[1] * 10


# --- faults (issue 18) ---------------------------------------------------------------------------

REPO = Path(__file__).resolve().parents[2]


def _digests(out: Path, name: str) -> dict:
    import hashlib

    return {s: hashlib.sha256((out / f"{name}{s}").read_bytes()).hexdigest() for s in OUTPUT_SUFFIXES}


def test_manifest_overwrite_with_corrupt_model_keeps_outputs(data, tmp_path, capsys):
    """Case 1: `heatmap --manifest ... --overwrite` with a broken model leaves the earlier 7 files as they were."""
    m = tmp_path / "m.csv"
    m.write_text(f"slide\n{data['small']}\n")
    out = tmp_path / "res"
    code, so, se = run_cli(["heatmap", "--manifest", m, "-m", data["models"]["ds1"], "--out-dir", out], capsys)
    assert code == 0, se
    before = _digests(out, "small")
    good = Path(data["models"]["ds1"]).read_bytes()
    truncated = tmp_path / "truncated.keras"
    truncated.write_bytes(good[: len(good) // 2])
    middle = tmp_path / "middle.keras"  # readable metadata, damaged weights
    middle.write_bytes(good[: len(good) // 3] + bytes(4096) + good[len(good) // 3 + 4096:])
    for bad in (truncated, middle):
        code, so, se = run_cli(["heatmap", "--manifest", m, "-m", bad, "--out-dir", out, "--overwrite"], capsys)
        assert code == 2, (bad, so, se)
        assert _digests(out, "small") == before, bad
    assert sorted(p.name for p in out.iterdir()) == sorted(f"small{s}" for s in OUTPUT_SUFFIXES)


def test_killed_while_writing_outputs_is_redone_not_skipped(data, tmp_path, capsys):
    """Case 4: a run killed after renaming NAME.h5 but before NAME.json leaves a mixed set; the next run
    must see it is incomplete (the completion record's hashes) and redo it, not skip it."""
    from wsiheat.inference.outputs import outputs_complete

    out = tmp_path / "res"
    base = ["heatmap", data["small"], "--out-dir", out, "--batch-size", "64", "--no-progress"]
    code, so, se = run_cli([*base, "-m", data["models"]["ds1"]], capsys)
    assert code == 0, se
    first = _digests(out, "small")
    proc = start_paused([*base, "-m", data["models"]["ds2"], "--overwrite", "--smooth", "3"], tmp_path,
                        "heatmap-outputs", timeout=300)
    proc.kill()
    proc.communicate()
    mixed = _digests(out, "small")
    assert mixed[".h5"] != first[".h5"] and mixed[".json"] == first[".json"]  # the mixed set of the issue
    assert not outputs_complete(out, "small")
    code, so, se = run_cli([*base, "-m", data["models"]["ds1"]], capsys)  # the earlier parameters
    assert code == 0 and "skipped" not in so and "small: score" in so, (so, se)
    assert outputs_complete(out, "small") and _digests(out, "small")[".h5"] == first[".h5"]
    code, so, se = run_cli([*base, "-m", data["models"]["ds1"]], capsys)
    assert code == 0 and "skipped" in so
    code, so, se = run_cli([*base, "-m", data["models"]["ds1"], "--smooth", "0"], capsys)  # other parameters
    assert code == 0 and "skipped" not in so and json.loads((out / "small.json").read_text())["smooth"] == 0
    assert not [p for p in out.iterdir() if p.name.startswith(".")]
