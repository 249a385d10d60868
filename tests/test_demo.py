"""`wsiheat demo --quick` runs the whole pipeline on the embedded data and writes every output."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import h5py
import pytest

REPO = Path(__file__).resolve().parents[1]
DATA = REPO / "data"


def test_demo_quick_produces_every_output(tmp_path):
    if not (DATA / "mosaics" / "train" / "manifest.csv").exists():
        pytest.fail(f"embedded demo data missing: {DATA}")
    out = tmp_path / "demo"
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]))
    r = subprocess.run([sys.executable, "-m", "wsiheat", "demo", str(DATA), "-o", str(out), "--quick"],
                       capture_output=True, text=True, env=env, timeout=900)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    assert "Traceback" not in r.stderr
    # the weights used are said clearly
    assert "weights: tiny" in r.stdout and "random initialisation" in r.stdout
    # HDF5 patches: both files follow the contract with two towers
    for name in ("patches.h5", "test_patches.h5"):
        with h5py.File(out / name) as f:
            assert f.attrs["format"] == "wsiheat-patches"
            assert f["images"].shape[1:] == (2, 80, 80, 3)
            assert set(f["labels"][()].tolist()) == {0, 1}
    assert (out / "model.keras").stat().st_size > 0
    assert (out / "model.history.csv").exists() and (out / "model.history.png").exists()
    test_slides = sorted(p.stem for p in (DATA / "mosaics" / "test").glob("*.tif") if not p.stem.endswith("_mask"))
    real = sorted(p.stem for p in (DATA / "slides").glob("*"))
    for folder, name in [("heatmaps", n) for n in test_slides] + [("heatmaps_real", n) for n in real]:
        for suffix in (".png", "_overlay.png", ".h5", "_heatmap.tif", "_lesions.csv", ".json"):
            assert (out / folder / f"{name}{suffix}").exists(), f"{name}{suffix}"
        meta = json.loads((out / folder / f"{name}.json").read_text())
        assert 0.0 <= meta["score"] <= 1.0 and meta["cells_evaluated"] > 0
    for f in ("patches/patch_report.json", "patches/patch_roc.png", "slides/slide_report.json",
              "slides/slide_roc.png", "froc/froc_report.json", "froc/froc.png"):
        assert (out / "reports" / f).exists(), f
    summary = json.loads((out / "demo_summary.json").read_text())
    assert 0.0 <= summary["patch_auc"] <= 1.0 and 0.0 <= summary["froc"] <= 1.0
    assert len(summary["overlays"]) == len(test_slides) + len(real)
    # the figures come with their bootstrap intervals, as in the reports, and the number of slides behind them
    froc_rep = json.loads((out / "reports" / "froc" / "froc_report.json").read_text())
    slide_rep = json.loads((out / "reports" / "slides" / "slide_report.json").read_text())
    assert summary["froc_ci"] == froc_rep["froc_ci"] and summary["slide_auc_ci"] == slide_rep["auc_ci"]
    assert summary["test_slides"] == len(test_slides)
    patch_rep = json.loads((out / "reports" / "patches" / "patch_report.json").read_text())
    assert summary["patch_ci"] == patch_rep["ci"] and patch_rep["ci"]["unit"] == "slide"
    c = summary["froc_ci"]
    assert f"lesion FROC {summary['froc']:.3f} [{c['low']:.3f}, {c['high']:.3f}] over {len(test_slides)} test" \
        in r.stdout
    # `evaluate tune` at the heatmap defaults reproduces the demo's slide AUC and FROC from the raw maps
    from wsiheat.wsi.slide import Slide
    with Slide(DATA / "mosaics" / "test" / f"{test_slides[0]}.tif") as s:
        mpp = s.mpp or 2.5
    masks = sorted(str(p) for p in (DATA / "mosaics" / "test").glob("*_mask.tif"))
    r2 = subprocess.run([sys.executable, "-m", "wsiheat", "evaluate", "tune", str(out / "heatmaps"), *masks,
                         "--mpp", repr(mpp), "--level", "2", "--smooth", "0.75", "--lesion-threshold", "0.5",
                         "--nms-radius", "4", "-o", str(out / "tune")], capture_output=True, text=True, env=env,
                        timeout=300)
    assert r2.returncode == 0, r2.stderr[-2000:]
    row = json.loads((out / "tune" / "tune_report.json").read_text())["rows"][0]
    assert row["froc"] == pytest.approx(summary["froc"], abs=1e-12)
    assert row["slide_auc"] == pytest.approx(summary["slide_auc"], abs=1e-12)
    csv_rows = [len((out / "heatmaps" / f"{n}_lesions.csv").read_text().splitlines()) for n in test_slides]
    assert row["candidates_per_slide"] == pytest.approx(sum(csv_rows) / len(csv_rows))
    # where to look is printed at the end
    assert "_overlay.png" in r.stdout and "Reports:" in r.stdout
    # no temporary files left anywhere
    assert not [p for p in out.rglob("*") if ".part" in p.name]
