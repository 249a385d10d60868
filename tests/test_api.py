"""The public Python API: ``import wsiheat``, the README example, the engine, the extension points."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest

import wsiheat

REPO = Path(__file__).resolve().parents[1]
DATA = REPO / "data" / "mosaics"


def test_import_is_cheap_and_has_no_side_effects():
    code = ("import os, sys; env = dict(os.environ); import wsiheat; "
            "assert dict(os.environ) == env, 'environment changed'; "
            "heavy = [m for m in ('tensorflow', 'keras', 'openslide', 'h5py', 'matplotlib') if m in sys.modules]; "
            "assert not heavy, heavy; print(len(wsiheat.__all__))")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO)
    assert r.returncode == 0, r.stderr
    assert int(r.stdout) == len(wsiheat.__all__) > 20


def test_every_public_name_resolves():
    for name in wsiheat.__all__:
        assert getattr(wsiheat, name) is not None, name
    assert issubclass(wsiheat.SlideError, wsiheat.WsiheatError)
    assert issubclass(wsiheat.ModelError, wsiheat.WsiheatError)
    with pytest.raises(AttributeError):
        wsiheat.no_such_thing  # noqa: B018


def test_library_errors_name_values_not_flags(tmp_path):
    with pytest.raises(wsiheat.SlideError, match="no_such.tif"):
        wsiheat.Slide(tmp_path / "no_such.tif")
    with pytest.raises(wsiheat.WsiheatError, match="unknown option.*epoch_count"):
        wsiheat.train(tmp_path / "p.h5", tmp_path / "m.keras", epoch_count=3)


def readme_example() -> str:
    text = (REPO / "README.md").read_text()
    m = re.search(r"<!-- api-example -->\s*```python\n(.*?)```", text, re.S)
    assert m, "README.md has no python block after <!-- api-example -->"
    return m.group(1)


def test_readme_python_example_runs(tmp_path):
    """The README's Python example, run as written from a folder holding the repository's data/."""
    (tmp_path / "data").symlink_to(REPO / "data")
    script = tmp_path / "example.py"
    script.write_text(readme_example())
    r = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, cwd=tmp_path,
                       env={**os.environ, "PYTHONPATH": str(REPO)}, timeout=900)
    assert r.returncode == 0, r.stderr[-3000:]
    assert (tmp_path / "patches.h5").exists() and (tmp_path / "model.keras").exists()
    name = "test_tumor_001"
    for suffix in (".h5", ".png", "_overlay.png", "_heatmap.tif", "_lesions.csv", "_lesions.png", ".json"):
        assert (tmp_path / "results" / f"{name}{suffix}").is_file(), suffix
    summary = json.loads((tmp_path / "results" / f"{name}.json").read_text())
    assert 0.0 <= summary["score"] <= 1.0
    report = json.loads((tmp_path / "eval" / "froc_report.json").read_text())
    assert 0.0 <= report["froc_score"] <= 1.0
    assert "slide score" in r.stdout and "FROC" in r.stdout


# --- the engine: load once, run many slides ------------------------------------------------------

@pytest.fixture(scope="module")
def tiny_model_path(tmp_path_factory) -> Path:
    from wsiheat.models.model import build_model, save_model

    model = build_model(2, 80, weights="none", backbone="tiny")
    path = tmp_path_factory.mktemp("engine") / "tiny.keras"
    meta = {"window": 80, "center": 50, "stride": 50, "levels": [0, 1], "downsamples": [1.0, 2.0], "towers": 2}
    return save_model(model, path, meta)


def test_heatmap_model_predicts_windows_like_keras(tiny_model_path):
    hm = wsiheat.HeatmapModel.load(tiny_model_path, backend="tensorflow", batch_size=16)
    x = np.random.default_rng(0).integers(0, 256, (37, 2, 80, 80, 3), dtype=np.uint8)  # not a multiple of 16
    got = hm.predict_windows(x)
    want = hm.model.predict(x, verbose=0).reshape(-1)
    np.testing.assert_allclose(got, want, atol=1e-5)
    with pytest.raises(wsiheat.ModelError, match="do not fit the model"):
        hm.predict_windows(x[:, :1])


def test_predict_slide_then_save_equals_heatmap_slide(tiny_model_path, tmp_path):
    from wsiheat.inference.heatmap import heatmap_slide

    slide = DATA / "test" / "test_tumor_001.tif"
    engine = wsiheat.HeatmapModel.load(tiny_model_path, backend="tensorflow")
    hm = engine.predict_slide(slide)
    assert hm.probabilities.shape == hm.tissue.shape and hm.tissue.any()
    assert hm.score == pytest.approx(hm.summary["score"]) and hm.lesions.shape[1] == 3
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    a = hm.save(tmp_path / "a")
    b = heatmap_slide(slide, engine.model, engine.metadata, tmp_path / "b", model_path=str(tiny_model_path))
    drop = {"seconds", "inference_seconds", "patches_per_second", "precision_reason"}
    assert {k: v for k, v in a.items() if k not in drop} == {k: v for k, v in b.items() if k not in drop}
    for suffix in (".h5", "_lesions.csv"):
        pa, pb = tmp_path / "a" / f"test_tumor_001{suffix}", tmp_path / "b" / f"test_tumor_001{suffix}"
        if suffix == ".h5":
            with h5py.File(pa) as fa, h5py.File(pb) as fb:
                assert np.array_equal(fa["probabilities"][...], fb["probabilities"][...])
                assert dict(fa.attrs).keys() == dict(fb.attrs).keys()
        else:
            assert pa.read_bytes() == pb.read_bytes()
    # a heatmap read back from NAME.h5 has the map but cannot be saved again
    back = wsiheat.read_heatmap(tmp_path / "a" / "test_tumor_001.h5")
    np.testing.assert_array_equal(back.probabilities, hm.probabilities)
    with pytest.raises(wsiheat.WsiheatError, match="only a computed heatmap"):
        back.save(tmp_path / "c")


# --- extension points: each a function plus a registration ---------------------------------------

def test_registered_backbone_is_built_and_trained(tmp_path):
    from wsiheat.models import backbones

    def small_cnn(window, variant, name):
        import keras

        inp = keras.Input((window, window, 3))
        x = keras.layers.Conv2D(4, 3, strides=4, name="mixed0")(inp)
        return keras.Model(inp, keras.layers.GlobalAveragePooling2D()(x), name=name)

    backbones.register("small_cnn", small_cnn, min_window=16)
    try:
        assert "small_cnn" in backbones.names()
        model = wsiheat.build_model(2, 32, weights="none", backbone="small_cnn")
        assert {layer.name for layer in backbones.backbones(model)} == {"tower0", "tower1"}
        assert sum(w.size for w in model.get_weights()) < 1000  # really the small network
        with pytest.raises(wsiheat.WsiheatError, match="at least 16 px"):
            wsiheat.build_model(2, 8, weights="none", backbone="small_cnn")
        with pytest.raises(wsiheat.WsiheatError, match="imagenet"):
            wsiheat.build_model(2, 32, weights="imagenet", backbone="small_cnn")
    finally:
        backbones.unregister("small_cnn")
    with pytest.raises(wsiheat.WsiheatError, match="small_cnn.*choose one of"):
        wsiheat.build_model(2, 32, weights="none", backbone="small_cnn")


def test_registered_ground_truth_format_labels_windows(tmp_path):
    """A polygon CSV format: sniffer + reader; extract then labels the windows under it tumor."""
    from wsiheat.wsi import annotations

    def sniff(head: bytes, path: Path) -> bool:
        return head.startswith(b"polygon_id,x,y")

    def read(path: Path, slide_dimensions):
        rows = np.loadtxt(path, delimiter=",", skiprows=1, ndmin=2)
        return [rows[rows[:, 0] == i, 1:] for i in np.unique(rows[:, 0])], []

    gt_csv = tmp_path / "tumor.csv"
    gt_csv.write_text("polygon_id,x,y\n0,600,600\n0,1400,600\n0,1400,1400\n0,600,1400\n")
    annotations.register_format("polygon-csv", sniff, read)
    try:
        assert annotations.sniff_format(gt_csv) == "polygon-csv"
        gt = wsiheat.load_ground_truth(gt_csv)
        mask = gt.tumor_mask(0, 0, 64, 64, 32.0)
        assert mask[25, 25] and not mask[5, 5] and mask.sum() == pytest.approx(25 * 25, rel=0.1)
        info = wsiheat.extract(DATA / "train" / "train_normal_001.tif", gt_csv, tmp_path / "p.h5", levels=(0, 1))
        with wsiheat.open_patches(tmp_path / "p.h5") as pf:
            tumor = pf.centers[pf.labels == 1]
        assert info and len(tumor) > 0
        assert ((tumor >= 600 - 25) & (tumor <= 1400 + 25)).all()
    finally:
        annotations.unregister_format("polygon-csv")
    with pytest.raises(wsiheat.GroundTruthError, match="tumor.csv: unknown ground-truth format"):
        wsiheat.load_ground_truth(gt_csv)


def test_registered_slide_score_reaches_json_and_evaluation(tiny_model_path, tmp_path):
    from wsiheat.postprocess import scores

    def p95(prob, tissue, lesion_map, cell_size, mpp):
        p = prob[tissue]
        return float(np.percentile(p, 95)) if p.size else 0.0

    scores.register("p95", p95)
    try:
        engine = wsiheat.HeatmapModel.load(tiny_model_path)
        out = tmp_path / "hm"
        out.mkdir()
        for name in ("test_tumor_001", "test_tumor_002", "test_tumor_003", "test_normal_001"):
            hm = engine.predict_slide(DATA / "test" / f"{name}.tif")
            assert hm.summary["p95"] == pytest.approx(np.percentile(hm.probabilities[hm.tissue], 95))
            hm.save(out)
        rep = wsiheat.evaluate_slides(out, tmp_path / "eval", reference=DATA / "test" / "labels.csv", score="p95")
        assert rep["n"] == 4 and rep["score_field"] == "p95"
    finally:
        scores.unregister("p95")
    with pytest.raises(wsiheat.WsiheatError, match="'p95': choose one of"):
        wsiheat.evaluate_slides(out, tmp_path / "eval2", reference=DATA / "test" / "labels.csv", score="p95")


def test_registered_stain_normalizer_is_trained_with_and_applied_at_inference(tmp_path):
    """A new normaliser (per-channel RGB means of stained pixels) through train, the model and heatmap."""
    from wsiheat.wsi.stain import _REGISTRY

    @wsiheat.register_stain_normalizer
    class ChannelMeans(wsiheat.StainNormalizer):
        name = "channel-means"

        def stats(self, pixels):
            return {"mean": pixels.reshape(-1, 3).mean(axis=0).tolist()}

        def map_pixels(self, pixels, source):
            shift = np.asarray(self.target["mean"]) - np.asarray(source["mean"])
            return np.clip(np.rint(pixels + shift), 0, 255).astype(np.uint8)

    try:
        for name in ("train_tumor_001", "train_tumor_002"):
            wsiheat.extract(DATA / "train" / f"{name}.tif", DATA / "train" / f"{name}_mask.tif", tmp_path / f"{name}.h5",
                            levels=(1,), stride=100)
        s = wsiheat.train(tmp_path / "train_tumor_001.h5", tmp_path / "m.keras", val=tmp_path / "train_tumor_002.h5",
                          backbone="tiny", weights="none", epochs=1, steps_per_epoch=1, batch_size=8,
                          stain_normalize="channel-means")
        assert s["stain"]["method"] == "channel-means"
        hm = wsiheat.HeatmapModel.load(tmp_path / "m.keras", backend="tensorflow").predict_slide(
            DATA / "test" / "test_tumor_001.tif")
        assert hm.summary["stain"]["method"] == "channel-means" and len(hm.summary["stain"]["source"]["mean"]) == 3
    finally:
        _REGISTRY.pop("channel-means", None)
    with pytest.raises(wsiheat.StainError, match="'channel-means': choose one of"):
        wsiheat.get_stain_normalizer("channel-means")
