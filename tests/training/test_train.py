"""Tests for import, the training input pipeline, the model builder and `wsiheat train`.

Real HDF5 files written with h5py following the patches contract, real (tiny)
Keras models trained on CPU, and one real InceptionV3 step.
"""

from __future__ import annotations

import json
from pathlib import Path

import h5py
import numpy as np
import pytest
from _helpers import shared_path, write_patches

from wsiheat.errors import WsiheatError

SHARED = Path(__file__).resolve().parents[2] / ".." / "shared" / "data"


# --------------------------------------------------------------------------------------
# fixtures
# --------------------------------------------------------------------------------------

def make_data(n_slides=6, per_slide=16, towers=2, window=16, seed=0, tumor_slides=(1, 3, 4)):
    """Images whose pixels encode the row index (tower 0, channels 0/1); tumor rows are red."""
    rng = np.random.default_rng(seed)
    n = n_slides * per_slide
    images = rng.integers(0, 120, (n, towers, window, window, 3), dtype=np.uint8)
    slide_ids = np.repeat(np.arange(n_slides), per_slide)
    labels = np.zeros(n, np.uint8)
    for s in tumor_slides:
        rows = np.flatnonzero(slide_ids == s)
        labels[rows[: per_slide // 2]] = 1
    images[labels == 1, :, :, :, 0] += 120  # learnable signal
    images[:, 0, 0, 0, 0] = np.arange(n) % 256
    images[:, 0, 0, 0, 1] = np.arange(n) // 256
    return images, labels, slide_ids, [f"slide{i}" for i in range(n_slides)]


@pytest.fixture
def patches(tmp_path):
    return write_patches(tmp_path / "p.h5", *make_data())


def row_ids(batch_images):
    x = np.asarray(batch_images)
    return x[:, 0, 0, 0, 0].astype(np.int64) + 256 * x[:, 0, 0, 0, 1].astype(np.int64)


def run_cli(args, capsys):
    from wsiheat.cli.main import main

    with pytest.raises(SystemExit) as exc:
        main(args)
    out = capsys.readouterr()
    return exc.value.code, out.out, out.err


def tiny_cfg(**kw):
    from wsiheat.training.train import TrainConfig

    base = dict(epochs=2, batch_size=8, steps_per_epoch=3, weights="none", backbone="tiny",
                val_fraction=0.34, patience=10)
    base.update(kw)
    return TrainConfig(**base)


# --------------------------------------------------------------------------------------
# split and pipeline
# --------------------------------------------------------------------------------------

def test_split_by_slide_leaks_nothing_and_is_deterministic():
    from wsiheat.training.dataset import split_by_slide

    rng = np.random.default_rng(1)
    slide_ids = rng.integers(0, 40, 2000)
    labels = (rng.random(2000) < 0.3).astype(np.uint8)
    labels[np.isin(slide_ids, np.arange(20))] = 0  # half the slides are tumor-free
    names = [f"s{i}" for i in range(40)]
    tr, va, vs = split_by_slide(slide_ids, labels, names, 0.15, seed=3)
    assert len(tr) + len(va) == 2000 and not set(tr) & set(va)
    assert not set(slide_ids[tr]) & set(slide_ids[va])  # no slide on both sides
    assert sorted(vs) == sorted(names[s] for s in set(slide_ids[va]))
    assert 4 <= len(vs) <= 8 and set(labels[va]) == {0, 1}
    tr2, va2, _ = split_by_slide(slide_ids, labels, names, 0.15, seed=3)
    assert np.array_equal(va, va2)
    _, va3, _ = split_by_slide(slide_ids, labels, names, 0.15, seed=4)
    assert not np.array_equal(va, va3)
    with pytest.raises(WsiheatError, match="at least 2"):
        split_by_slide(np.zeros(10, int), np.zeros(10, np.uint8), ["a"], 0.15, 0)


@pytest.mark.parametrize("budget", [0, None])  # 0: streamed from disk; None: in memory
def test_pipeline_reads_only_its_rows(patches, budget):
    from wsiheat.training.dataset import make_dataset, open_patch_file, split_by_slide

    pf = open_patch_file(patches)
    tr, va, _ = split_by_slide(pf.slide_ids, pf.labels, pf.slides, 0.34, seed=0)
    ds = make_dataset(pf, tr, 8, training=True, augment=None, memory_budget=budget,
                      shuffle_buffer=16, block_rows=8)
    seen = np.concatenate([row_ids(x) for x, _ in ds.take(3 * len(tr) // 8)])
    assert set(seen) <= set(tr) and len(set(seen)) > 0.8 * len(tr)
    assert len(seen) != len(set(seen))  # repeats: an infinite, shuffled stream
    first = row_ids(next(iter(ds))[0])
    assert not np.array_equal(first, np.sort(first))  # shuffled
    with h5py.File(patches) as f:
        labels = f["labels"][:]
    for x, y in ds.take(3):
        assert np.array_equal(labels[row_ids(x)], np.asarray(y)[:, 0])
    val = make_dataset(pf, va, 5, training=False, memory_budget=budget)
    got = np.concatenate([row_ids(x) for x, _ in val])
    assert np.array_equal(got, va)  # one pass, file order, nothing else


def test_balanced_sampling(patches):
    from wsiheat.training.dataset import make_dataset, open_patch_file

    pf = open_patch_file(patches)
    rows = np.arange(pf.n)
    assert pf.labels.mean() < 0.3
    ds = make_dataset(pf, rows, 32, training=True, augment=None, balance="sampling")
    y = np.concatenate([np.asarray(b[1])[:, 0] for b in ds.take(20)])
    assert 0.4 < y.mean() < 0.6


# --------------------------------------------------------------------------------------
# model
# --------------------------------------------------------------------------------------

def test_build_model_tiny_and_trainable_from(tmp_path):
    from wsiheat.models.backbones import backbones
    from wsiheat.models.model import build_model, load_model, save_model, set_trainable_from

    m = build_model(3, 16, weights="none", backbone="tiny")
    assert m.input.dtype == "uint8" and tuple(m.input.shape) == (None, 3, 16, 16, 3)
    assert [n.name for n in backbones(m)] == ["tower0", "tower1", "tower2"]
    x = np.random.default_rng(0).integers(0, 256, (4, 3, 16, 16, 3), dtype=np.uint8)
    p = np.asarray(m(x))
    assert p.shape == (4, 1) and ((p > 0) & (p < 1)).all()
    n_all = len(m.trainable_weights)
    n1 = set_trainable_from(m, "mixed1")
    assert n1 < n_all and not backbones(m)[0].get_layer("conv0").trainable
    assert backbones(m)[0].get_layer("conv1").trainable
    assert set_trainable_from(m, "all") == n_all
    with pytest.raises(WsiheatError, match="mixed7"):
        set_trainable_from(m, "mixed7")
    shared = build_model(3, 16, weights="none", backbone="tiny", shared_backbone=True)
    assert len(backbones(shared)) == 1 and len(shared.weights) < len(m.weights)

    # --weights PATH: a previous wsiheat model (same towers) or a tower mismatch
    meta = {"window": 16, "center": 10, "stride": 10, "downsamples": [1, 4, 16], "towers": 3}
    save_model(m, tmp_path / "m3.keras", meta)
    again = build_model(3, 16, weights=str(tmp_path / "m3.keras"), backbone="tiny")
    assert np.allclose(np.asarray(again(x)), p, atol=1e-6)
    loaded, meta2 = load_model(tmp_path / "m3.keras")
    assert meta2["towers"] == 3 and np.allclose(np.asarray(loaded(x)), p, atol=1e-6)
    with pytest.raises(WsiheatError, match="3 tower"):
        build_model(2, 16, weights=str(tmp_path / "m3.keras"), backbone="tiny")
    # a Keras weights file
    m.save_weights(tmp_path / "w.weights.h5")
    again = build_model(3, 16, weights=str(tmp_path / "w.weights.h5"), backbone="tiny")
    assert np.allclose(np.asarray(again(x)), p, atol=1e-6)
    with pytest.raises(WsiheatError, match="no such weights"):
        build_model(3, 16, weights=str(tmp_path / "missing.h5"), backbone="tiny")


def test_imagenet_unavailable_is_an_error_not_random_init(tmp_path, monkeypatch):
    from wsiheat.models.model import build_model

    monkeypatch.setenv("WSIHEAT_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("KERAS_HOME", str(tmp_path / "keras"))
    with pytest.raises(WsiheatError, match="wsiheat weights"):
        build_model(1, 80, weights="imagenet")


def test_real_inception_v3_two_towers_one_step():
    import keras

    from wsiheat.models.model import build_model, set_trainable_from
    from wsiheat.training.train import compile_model

    m = build_model(2, 80, weights="none", shared_backbone=True)  # one backbone: faster tracing
    assert m.output.shape[-1] == 1
    before = len(m.trainable_weights)
    assert set_trainable_from(m, "mixed9") < before
    compile_model(m, 1e-3, mixed=False)
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, (2, 2, 80, 80, 3), dtype=np.uint8)
    y = np.array([[0], [1]], np.float32)
    frozen = m.get_layer("backbone").get_layer("stem_conv").get_weights()[0].copy()
    top = m.get_layer("tumor").get_weights()[0].copy()
    hist = m.fit(x, y, batch_size=2, epochs=1, verbose=0)
    assert np.isfinite(hist.history["loss"][0])
    assert np.array_equal(frozen, m.get_layer("backbone").get_layer("stem_conv").get_weights()[0])
    assert not np.array_equal(top, m.get_layer("tumor").get_weights()[0])
    keras.backend.clear_session()


# --------------------------------------------------------------------------------------
# training
# --------------------------------------------------------------------------------------

def test_train_end_to_end_resume_and_metadata(patches, tmp_path):
    import keras

    from wsiheat.models.model import load_model, read_metadata
    from wsiheat.training.dataset import open_patch_file
    from wsiheat.training.train import train

    out = tmp_path / "m.keras"

    class Interrupt(keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            if epoch == 1:
                raise KeyboardInterrupt

    cfg = tiny_cfg(epochs=3, lr_decay=0.5)
    with pytest.raises(KeyboardInterrupt):
        train(patches, out, cfg, progress=False, callbacks=[Interrupt()])
    assert not out.exists()
    state = json.loads((tmp_path / "m.ckpt" / "state.json").read_text())
    assert state["epoch"] == 2 and (tmp_path / "m.ckpt" / "last.keras").exists()
    rows_before = (tmp_path / "m.history.csv").read_text().splitlines()
    assert len(rows_before) == 3

    s = train(patches, out, cfg, progress=False, resume=True)
    assert s["epochs"] == 3 and out.exists() and not (tmp_path / "m.ckpt").exists()
    rows = (tmp_path / "m.history.csv").read_text().splitlines()
    assert rows[:3] == rows_before and len(rows) == 4  # continued, not restarted
    lrs = [float(r.split(",")[2]) for r in rows[1:]]
    assert np.allclose(lrs, [1e-3, 5e-4, 2.5e-4])
    assert (tmp_path / "m.history.png").read_bytes()[:4] == b"\x89PNG"

    meta = read_metadata(out)
    pf = open_patch_file(patches)
    assert meta["towers"] == 2 and meta["window"] == 16 and meta["center"] == 10
    assert meta["downsamples"] == [1.0, 4.0] and meta["levels"] == [0, 2]
    assert meta["training_data"]["fingerprint"] == pf.fingerprint()
    assert meta["weights"] == "none" and meta["epochs"] == 3
    assert set(meta["val_metrics"]) >= {"loss", "auc", "accuracy", "sensitivity", "specificity"}
    val_slides = set(meta["training_data"]["val_slides"])
    assert val_slides and val_slides < set(pf.slides)
    model, meta2 = load_model(out)
    assert meta2 == meta
    x = np.random.default_rng(0).integers(0, 256, (3, 2, 16, 16, 3), dtype=np.uint8)
    p = np.asarray(model(x))
    assert p.shape == (3, 1) and np.isfinite(p).all()
    with pytest.raises(WsiheatError, match="no checkpoint"):
        train(patches, out, cfg, progress=False, resume=True)


@pytest.mark.parametrize("monitor", ["val_loss", "val_auc"])
def test_monitor_picks_the_best_epoch(patches, tmp_path, monitor):
    import csv

    import keras

    from wsiheat.training.train import train

    out = tmp_path / "m.keras"
    s = train(patches, out, tiny_cfg(epochs=5, lr=3e-2, monitor=monitor), progress=False)
    with open(tmp_path / "m.history.csv", newline="") as fh:
        values = [float(r[monitor]) for r in csv.DictReader(fh)]
    assert len(values) == 5
    best = int(np.argmax(values)) if monitor == "val_auc" else int(np.argmin(values))
    assert s["best_epoch"] == best

    # a resume must keep the checkpoint's monitor
    class Interrupt(keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            raise KeyboardInterrupt

    out2 = tmp_path / "r.keras"
    with pytest.raises(KeyboardInterrupt):
        train(patches, out2, tiny_cfg(monitor=monitor), progress=False, callbacks=[Interrupt()])
    other = "val_loss" if monitor == "val_auc" else "val_auc"
    with pytest.raises(WsiheatError, match=f"resume with monitor= ?{monitor}"):
        train(patches, out2, tiny_cfg(monitor=other), progress=False, resume=True)
    with pytest.raises(WsiheatError, match="monitor=accuracy"):
        tiny_cfg(monitor="accuracy").validate()


def test_weights_from_a_model_with_another_window(patches, tmp_path):
    """Progressive resizing: a model trained on 16 px windows starts a 24 px one (same weights)."""
    from wsiheat.models.model import build_model, load_model, read_metadata
    from wsiheat.training.train import train

    small = tmp_path / "small.keras"
    train(patches, small, tiny_cfg(epochs=1), progress=False)
    images, labels, slide_ids, slides = make_data(window=24, seed=5)
    big_data = write_patches(tmp_path / "big.h5", images, labels, slide_ids, slides)
    old, _ = load_model(small)
    fresh = build_model(2, 24, weights=str(small), backbone="tiny")
    for a, b in zip(fresh.get_weights(), old.get_weights()):
        np.testing.assert_array_equal(a, b)
    big = tmp_path / "big.keras"
    s = train(big_data, big, tiny_cfg(epochs=1, weights=str(small)), progress=False)
    assert s["epochs"] == 1 and read_metadata(big)["window"] == 24
    assert read_metadata(big)["weights"] == str(small)


def test_cli_train_with_val_file_and_sampling(tmp_path, capsys):
    images, labels, slide_ids, slides = make_data(seed=2)
    tr = write_patches(tmp_path / "tr.h5", images, labels, slide_ids, slides)
    va = write_patches(tmp_path / "va.h5", *make_data(n_slides=2, tumor_slides=(1,), seed=3))
    code, out, err = run_cli(["train", str(tr), "--val", str(va), "-o", str(tmp_path / "m.keras"),
                              "--weights", "none", "--backbone", "tiny", "--epochs", "1",
                              "--steps-per-epoch", "2", "--batch-size", "8", "--balance",
                              "sampling", "--trainable-from", "mixed1"], capsys)
    assert code == 0, err
    assert "1 epoch(s)" in out and "32 val rows" in out
    from wsiheat.models.model import read_metadata

    meta = read_metadata(tmp_path / "m.keras")
    assert meta["training_data"]["val_slides"] == ["slide0", "slide1"]
    assert meta["train_config"]["trainable_from"] == "mixed1"


def test_cli_bad_inputs(tmp_path, capsys):
    base = ["--weights", "none", "--backbone", "tiny", "--epochs", "1", "--steps-per-epoch", "1"]
    out = str(tmp_path / "m.keras")
    images, labels, slide_ids, slides = make_data(seed=1)
    cases = {}
    cases["contains no patches"] = write_patches(tmp_path / "empty.h5", images[:0], labels[:0],
                                                 slide_ids[:0], [])
    cases["only one class"] = write_patches(tmp_path / "one.h5", images, np.zeros_like(labels),
                                            slide_ids, slides)
    cases["not a wsiheat patches file"] = write_patches(tmp_path / "foreign.h5", images, labels, slide_ids,
                                          slides, fmt=None)
    cases["schema_version 0"] = write_patches(tmp_path / "old.h5", images, labels, slide_ids,
                                              slides, version=0)
    (tmp_path / "text.h5").write_text("hello")
    cases["not an HDF5 file"] = tmp_path / "text.h5"
    cases["no such file"] = tmp_path / "missing.h5"
    for expect, path in cases.items():
        code, _, err = run_cli(["train", str(path), "-o", out, *base], capsys)
        assert code == 2, (expect, err)
        assert expect in err and len(err.strip().splitlines()) == 1, err
        assert "Traceback" not in err
    good = write_patches(tmp_path / "good.h5", images, labels, slide_ids, slides)
    # a --weights model with another tower count
    from wsiheat.models.model import build_model, save_model

    m1 = build_model(1, 16, weights="none", backbone="tiny")
    save_model(m1, tmp_path / "one_tower.keras",
               {"window": 16, "center": 10, "stride": 10, "downsamples": [1.0], "towers": 1})
    code, _, err = run_cli(["train", str(good), "-o", out, *base[2:], "--backbone", "tiny",
                            "--weights", str(tmp_path / "one_tower.keras")], capsys)
    assert code == 2 and "1 tower(s) but the training data has 2" in err
    code, _, err = run_cli(["train", str(good), "-o", str(tmp_path / "m.h5"), *base], capsys)
    assert code == 2 and "must end in .keras" in err
    code, _, err = run_cli(["train", str(good), "-o", out, *base, "--trainable-from", "nope"],
                           capsys)
    assert code == 2 and "no such block" in err
    assert not (tmp_path / "m.keras").exists()


# --------------------------------------------------------------------------------------
# import
# --------------------------------------------------------------------------------------

def _png(path, rgb):
    import cv2

    path.parent.mkdir(parents=True, exist_ok=True)
    assert cv2.imwrite(str(path), cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))


def test_import_idc_tree_and_mislabeled_file(tmp_path, capsys):
    from wsiheat.training.dataset import open_patch_file

    root = tmp_path / "idc"
    rng = np.random.default_rng(0)
    expected = {}
    for patient in ("8863", "9001"):
        for c in (0, 1):
            for k in range(3):
                x, y = 50 * k + 1, 100 * c + 1
                img = rng.integers(0, 256, (50, 50, 3), dtype=np.uint8)
                img[:] = (200 * c, 50 + k, 90)
                _png(root / patient / str(c) / f"{patient}_idx5_x{x}_y{y}_class{c}.png", img)
                expected[(patient, x + 25, y + 25)] = c
    # a border patch smaller than 50 px
    _png(root / "9001" / "0" / "9001_idx5_x2001_y1_class0.png", np.zeros((35, 50, 3), np.uint8))
    expected[("9001", 2026, 26)] = 0
    out = tmp_path / "idc.h5"
    code, stdout, err = run_cli(["import", str(root), "-o", str(out)], capsys)
    assert code == 0, err
    assert "13 patches (6 tumor, 7 normal) from 2 slide(s), idc layout" in stdout
    pf = open_patch_file(out)
    assert (pf.n, pf.towers, pf.window) == (13, 1, 80) and pf.slides == ["8863", "9001"]
    assert pf.attrs["format"] == "wsiheat-patches" and pf.attrs["center"] == 80
    assert np.isclose(pf.downsamples[0], 50 / 80) and pf.levels == [None]
    with h5py.File(out) as f:
        centers, images = f["centers"][:], f["images"][:]
        info = [json.loads(s) for s in f["slide_info"][:]]
    got = {(pf.slides[s], int(cx), int(cy)): int(l)
           for s, (cx, cy), l in zip(pf.slide_ids, centers, pf.labels)}
    assert got == expected
    tumor = images[pf.labels == 1]
    assert (tumor[..., 0] == 200).all() and (tumor[..., 2] == 90).all()  # resized, RGB order
    border = images[np.flatnonzero(centers[:, 0] == 2026)[0], 0]
    assert (border[:50] == 0).all() and (border[-20:] == 255).all()  # padded white below
    assert info[0]["windows"] == {"normal": 3, "tumor": 3}

    bad = root / "9001" / "1" / "9001_idx5_x501_y501_class0.png"
    _png(bad, np.zeros((50, 50, 3), np.uint8))
    code, _, err = run_cli(["import", str(root), "-o", str(tmp_path / "x.h5")], capsys)
    assert code == 2 and bad.name in err and "disagree" in err
    assert not (tmp_path / "x.h5").exists()


def test_import_plain_layout(tmp_path):
    from wsiheat.patches.importing import import_patches
    from wsiheat.training.dataset import open_patch_file

    rng = np.random.default_rng(0)
    for cls in ("normal", "tumor"):
        for k in range(2):
            _png(tmp_path / "plain" / cls / f"p{k}.png",
                 rng.integers(0, 256, (96, 96, 3), dtype=np.uint8))
    s = import_patches(tmp_path / "plain", tmp_path / "p.h5", window=48, progress=False)
    assert s["layout"] == "plain" and s["patches"] == 4 and s["tumor"] == 2
    pf = open_patch_file(tmp_path / "p.h5")
    assert pf.window == 48 and np.isclose(pf.downsamples[0], 2.0)
    with pytest.raises(WsiheatError, match="no labeled patches"):
        (tmp_path / "none" / "0").mkdir(parents=True)
        import_patches(tmp_path / "none", tmp_path / "n.h5", progress=False)


def test_import_real_idc_sample(tmp_path):
    idc = shared_path("idc")
    from wsiheat.patches.importing import import_patches
    from wsiheat.training.dataset import open_patch_file

    sub = tmp_path / "idc"
    sub.mkdir()
    for patient in sorted(p for p in idc.iterdir() if p.is_dir())[:2]:
        (sub / patient.name).symlink_to(patient.resolve())
    s = import_patches(sub, tmp_path / "r.h5", progress=False)
    pf = open_patch_file(tmp_path / "r.h5")
    assert s["slides"] == 2 and pf.n == s["patches"] > 10 and set(pf.labels) == {0, 1}


def test_bfloat16_training_saves_a_float32_model(patches, tmp_path):
    import keras

    from wsiheat.models.model import load_model
    from wsiheat.training.train import TrainConfig, resolve_precision, train

    assert resolve_precision("auto", gpus=False) == "float32"
    assert resolve_precision("auto", gpus=True) == "mixed_float16"
    with pytest.raises(WsiheatError, match="precision=float8"):
        TrainConfig(precision="float8").validate()
    out = tmp_path / "bf.keras"
    s = train(patches, out, tiny_cfg(epochs=1, precision="mixed_bfloat16"), progress=False)
    assert np.isfinite(s["val_metrics"]["loss"])
    assert keras.mixed_precision.global_policy().name == "float32"  # reset after training
    model, meta = load_model(out)
    assert meta["precision"] == "mixed_bfloat16" and meta["mixed_precision"] is True
    assert {str(w.dtype) for w in model.weights} == {"float32"}
    assert {l.dtype_policy.name for l in model.layers if l.weights} == {"float32"}  # no bf16 at inference
    x = np.random.default_rng(1).integers(0, 256, (2, 2, 16, 16, 3), dtype=np.uint8)
    p = model(x)
    assert "float32" in str(p.dtype) and np.isfinite(np.asarray(p)).all()
