"""Stain normalisation in training and `evaluate patches`: one fit per slide, stored in the model, errors."""

from __future__ import annotations

import json

import numpy as np
import pytest
from _helpers import cmu_region, hed_shift, run_wsiheat, write_patches
from PIL import Image

from wsiheat.errors import StainError


def he_windows(n: int, w: int = 32, seed: int = 0) -> np.ndarray:
    """``n`` real H&E windows (uint8 (n, 1, w, w, 3)) cut from the embedded SVS slide."""
    rgb = cmu_region(400, 600, 1280, 1280)
    rng = np.random.default_rng(seed)
    ys, xs = rng.integers(0, 1280 - w, n), rng.integers(0, 1280 - w, n)
    return np.stack([rgb[y:y + w, x:x + w] for y, x in zip(ys, xs)])[:, None]




@pytest.fixture(scope="module")
def patches(tmp_path_factory):
    """Four real-H&E slides (two of them restained), plus one slide of white glass only."""
    d = tmp_path_factory.mktemp("stainpatches")
    base = he_windows(24 * 4, seed=1)
    parts = [base[:24], hed_shift(base[24:48], 1.4, 0.7), base[48:72], hed_shift(base[72:], 0.7, 1.3),
             np.full((24, 1, 32, 32, 3), 245, np.uint8)]
    images = np.concatenate(parts)
    labels = np.tile(np.r_[np.zeros(12), np.ones(12)], 5)
    ids = np.repeat(np.arange(5), 24)
    path = write_patches(d / "p.h5", images, labels, ids, ["a", "b", "c", "d", "glass"])
    return {"dir": d, "path": path, "images": images, "ids": ids}


def test_patch_stain_fits_each_slide_once_and_leaves_glass_unnormalised(patches):
    from wsiheat.patches.stain import PatchStain, fit_target
    from wsiheat.wsi.stain import get_normalizer

    norm = fit_target(get_normalizer("macenko"), patches["path"], np.arange(48, 72))  # slide c as the target
    ps = PatchStain.fit(norm, patches["path"])
    assert sorted(ps.sources) == [0, 1, 2, 3] and list(ps.failed) == ["glass"]
    assert "no tissue" in ps.failed["glass"]
    out = ps.apply(patches["images"], patches["ids"])
    glass = patches["ids"] == 4
    assert np.array_equal(out[glass], patches["images"][glass])  # left as it was, counted
    assert ps.record()["unnormalised_slides"] == ["glass"] and ps.record()["fitted_slides"] == 4
    # the same rows give the same output whatever batch they come in: the map is per slide, not per batch
    parts = np.concatenate([ps.apply(patches["images"][i:i + 7], patches["ids"][i:i + 7]) for i in range(0, 120, 7)])
    assert np.array_equal(parts, out)
    # restained slides come back towards the others
    mean = [out[patches["ids"] == s].reshape(-1, 3).mean(axis=0) for s in range(4)]
    raw = [patches["images"][patches["ids"] == s].reshape(-1, 3).mean(axis=0) for s in range(4)]
    assert np.ptp(mean, axis=0).sum() < np.ptp(raw, axis=0).sum()


def test_training_dataset_serves_normalised_rows(patches):
    from wsiheat.patches.stain import PatchStain, fit_target
    from wsiheat.training.dataset import make_dataset, open_patch_file
    from wsiheat.wsi.stain import get_normalizer

    pf = open_patch_file(patches["path"])
    ps = PatchStain.fit(fit_target(get_normalizer("reinhard"), pf.path), pf.path)
    rows = np.arange(pf.n)
    want = ps.apply(patches["images"], patches["ids"])
    for budget in (None, 0):  # held in memory, and streamed from disk
        ds = make_dataset(pf, rows, 16, training=False, memory_budget=budget, stain=ps)
        got = np.concatenate([x.numpy() for x, _ in ds])
        assert np.array_equal(got, want)


def test_train_stores_the_normaliser_and_evaluate_applies_it(patches, tmp_path):
    from wsiheat.models.model import read_metadata

    model = tmp_path / "m.keras"
    r = run_wsiheat("train", patches["path"], "-o", model, "--backbone", "tiny", "--weights", "none", "--epochs", "1",
                    "--steps-per-epoch", "2", "--batch-size", "8", "--val-fraction", "0.2",
                    "--stain-normalize", "vahadane", timeout=300)
    assert r.returncode == 0, r.stderr
    assert "stain normalisation vahadane: 4 slide(s) fitted; 1 left unnormalised (no stained tissue): glass" in r.stdout
    st = read_metadata(model)["stain"]
    assert st["method"] == "vahadane" and len(st["target"]["stains"]) == 2 and st["unnormalised_slides"] == ["glass"]
    r = run_wsiheat("evaluate", "patches", "-m", model, "-p", patches["path"], "-o", tmp_path / "ev",
                    "--backend", "tensorflow", timeout=300)
    assert r.returncode == 0, r.stderr
    assert "stain normalisation vahadane (the model's): 4 slide(s) fitted, 1 left unnormalised" in r.stdout
    rep = json.loads((tmp_path / "ev" / "patch_report.json").read_text())
    assert rep["stain"]["method"] == "vahadane" and rep["stain"]["target"] == st["target"]

    # a later stage keeps the normaliser of the weights it starts from; another one is refused
    r = run_wsiheat("train", patches["path"], "-o", tmp_path / "m2.keras", "--backbone", "tiny", "--weights", model,
                    "--epochs", "1", "--steps-per-epoch", "1", "--batch-size", "8", "--stain-normalize", "macenko",
                    timeout=300)
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert r.stderr.strip().splitlines()[-1].endswith(
        "m.keras: trained with the vahadane stain normaliser, not macenko; keep vahadane or start from other weights")
    assert not (tmp_path / "m2.keras").exists()


def test_train_bad_stain_inputs_are_one_line_errors(patches, tmp_path):
    from wsiheat.wsi.stain import get_normalizer

    white = tmp_path / "white.png"
    Image.fromarray(np.full((64, 64, 3), 250, np.uint8)).save(white)
    target = tmp_path / "target.json"
    target.write_text(json.dumps(get_normalizer("reinhard").fit(he_windows(8)).to_dict()))
    common = [patches["path"], "-o", tmp_path / "m.keras", "--backbone", "tiny", "--weights", "none", "--epochs", "1",
              "--steps-per-epoch", "1", "--batch-size", "8"]
    cases = [(["--stain-normalize", "macenko", "--stain-reference", white], "white.png: no tissue to fit"),
             (["--stain-normalize", "macenko", "--stain-reference", target],
              "target.json: a reinhard target, but the normaliser is macenko"),
             (["--stain-reference", target], "choose a stain normaliser too")]
    for extra, msg in cases:
        r = run_wsiheat("train", *common, *extra, timeout=300)
        assert r.returncode == 2, r.stderr
        assert "Traceback" not in r.stderr
        lines = [line for line in r.stderr.splitlines() if line.startswith("wsiheat: error")]
        assert len(lines) == 1 and msg in lines[0], r.stderr
        assert not (tmp_path / "m.keras").exists()
    with pytest.raises(StainError, match="no tissue"):
        get_normalizer("macenko").fit(np.full((1, 32, 32, 3), 245, np.uint8))
