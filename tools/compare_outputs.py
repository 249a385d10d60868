"""Do two versions of wsiheat give the same outputs? Heatmaps and evaluation reports, side by side.

Runs the CLI of a baseline revision (checked out into a temporary git worktree)
and of the working tree on the embedded data in ``data/`` with one model, then
compares every output file:

* ``NAME.h5`` heatmaps: probability and tissue arrays bit for bit, attributes;
* JSON files (heatmap summaries, reports): every value, except timings, paths
  and the version string (fields and output files the current version adds are
  listed as new, not as differences);
* CSV files (lesion points, tables, predictions): byte for byte;
* PNG and TIFF pictures: decoded pixels (metadata may differ).

The model is made once by the baseline's ``wsiheat demo --quick`` (a tiny
backbone, a few training steps), so both versions run exactly the same network,
both with TensorFlow in float32 (the current version is told so: its default
backend may be OpenVINO).

    python tools/compare_outputs.py [--baseline REV] [--work DIR] [--keep] [--reuse]

Prints one line per file and a summary; exits 1 when anything differs.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT / "data"
#: fields that differ between any two runs: timings, paths, the version
VOLATILE = {"seconds", "inference_seconds", "patches_per_second", "slide_path", "model", "results",
            "reference", "wsiheat_version", "output", "reports", "overlays", "files_dir"}


def run(code_dir: Path, args: list[str], cwd: Path) -> None:
    env = {**os.environ, "PYTHONPATH": str(code_dir), "TF_CPP_MIN_LOG_LEVEL": "3"}
    r = subprocess.run([sys.executable, "-m", "wsiheat", *map(str, args)], cwd=cwd, env=env,
                       capture_output=True, text=True)
    if r.returncode != 0:
        raise SystemExit(f"{code_dir.name}: wsiheat {' '.join(map(str, args))} failed:\n{r.stderr[-2000:]}")


def pipeline(code_dir: Path, out: Path, model: Path, test_patches: Path, infer: list[str]) -> None:
    """The commands compared: heatmaps of the test mosaics and the real slide, and every evaluation.

    ``infer``: extra options of the commands that run the model (the current version's
    ``--backend tensorflow --precision float32``, the baseline's only path).
    """
    mosaics = sorted((DATA / "mosaics" / "test").glob("test_*[0-9].tif"))
    masks = sorted((DATA / "mosaics" / "test").glob("*_mask.tif"))
    run(code_dir, ["heatmap", *mosaics, "-m", model, "--out-dir", out / "hm", *infer], out)
    run(code_dir, ["heatmap", DATA / "slides" / "cmu-1-small-region.svs", "-m", model, "--out-dir", out / "hm_real",
                   *infer], out)
    run(code_dir, ["evaluate", "patches", "-m", model, "-p", test_patches, "-o", out / "patches", *infer], out)
    run(code_dir, ["evaluate", "slides", out / "hm", "-r", DATA / "mosaics" / "test" / "labels.csv", "-o", out / "slides"], out)
    run(code_dir, ["evaluate", "froc", out / "hm", *masks, "--mpp", "2.5", "--level", "2", "--allow-empty",
                   "-o", out / "froc"], out)


def strip(value):
    if isinstance(value, dict):
        return {k: strip(v) for k, v in value.items() if k not in VOLATILE}
    if isinstance(value, list):
        return [strip(v) for v in value]
    return value


def compare(a: Path, b: Path) -> str:
    """'' when equal, else what differs."""
    suffix = "".join(a.suffixes[-1:]).lower()
    if suffix == ".json":
        ja, jb = strip(json.loads(a.read_text())), strip(json.loads(b.read_text()))
        if isinstance(ja, dict) and isinstance(jb, dict):
            # files and fields the current version adds are listed as "new", not as differences
            if isinstance(ja.get("outputs"), dict) and isinstance(jb.get("outputs"), dict):
                jb["outputs"] = {k: v for k, v in jb["outputs"].items() if k in ja["outputs"]}
            new = sorted(set(jb) - set(ja))
            jb = {k: v for k, v in jb.items() if k in ja}
            if ja == jb:
                return f"equal (new fields: {', '.join(new)})" if new else ""
        if ja == jb:
            return ""
        keys = sorted(k for k in set(ja) | set(jb) if ja.get(k) != jb.get(k)) if isinstance(ja, dict) else ["(list)"]
        return f"JSON values differ: {', '.join(keys[:8])}"
    if suffix == ".csv":
        return "" if a.read_bytes() == b.read_bytes() else "CSV bytes differ"
    if suffix == ".h5":
        import h5py

        with h5py.File(a, "r") as fa, h5py.File(b, "r") as fb:
            for name in sorted(set(fa) | set(fb)):
                if name not in fa or name not in fb or not np.array_equal(fa[name][...], fb[name][...]):
                    return f"dataset {name} differs"
            aa = {k: v for k, v in fa.attrs.items() if k not in VOLATILE}
            ab = {k: v for k, v in fb.attrs.items() if k not in VOLATILE}
            bad = [k for k in aa if k not in ab or not np.array_equal(aa[k], ab[k])]
            new = sorted(set(ab) - set(aa))
            if bad:
                return f"attributes differ: {', '.join(sorted(bad))}"
            return f"equal (new attributes: {', '.join(new)})" if new else ""
    if suffix in (".png", ".tif", ".tiff"):
        if suffix == ".png":
            from PIL import Image

            pa, pb = np.asarray(Image.open(a)), np.asarray(Image.open(b))
        else:
            import tifffile

            pa, pb = tifffile.imread(a), tifffile.imread(b)
        if pa.shape != pb.shape:
            return f"image size {pa.shape} vs {pb.shape}"
        n = int(np.any(pa != pb, axis=-1).sum()) if pa.ndim == 3 else int((pa != pb).sum())
        return f"{n} pixels differ" if n else ""
    return "" if a.read_bytes() == b.read_bytes() else "bytes differ"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--baseline", default="2016521", help="git revision to compare with (default: before the "
                                                         "stage-package layout)")
    ap.add_argument("--work", type=Path, default=None, help="work folder (default: a temporary one)")
    ap.add_argument("--keep", action="store_true", help="keep the work folder")
    ap.add_argument("--reuse", action="store_true", help="compare the outputs already in --work (no runs)")
    a = ap.parse_args()
    work = a.work or Path(tempfile.mkdtemp(prefix="wsiheat-compare-"))
    work.mkdir(parents=True, exist_ok=True)
    base_code = work / "baseline-code"
    if not base_code.exists():
        subprocess.run(["git", "-C", str(ROOT), "worktree", "add", "-q", "--detach", str(base_code), a.baseline],
                       check=True)
    try:
        demo = work / "demo"
        if not (demo / "model.keras").exists():
            run(base_code, ["demo", DATA, "-o", demo, "--quick"], work)
        sides = {"baseline": base_code, "current": ROOT}
        for side, code in sides.items():
            out = work / side
            if a.reuse and out.is_dir():
                continue
            shutil.rmtree(out, ignore_errors=True)
            out.mkdir()
            infer = ["--backend", "tensorflow", "--precision", "float32"] if side == "current" else []
            pipeline(code, out, demo / "model.keras", demo / "test_patches.h5", infer)
        files = sorted(p.relative_to(work / "baseline") for p in (work / "baseline").rglob("*") if p.is_file())
        others = {p.relative_to(work / "current") for p in (work / "current").rglob("*") if p.is_file()}
        differing = 0
        for rel in files:
            if rel not in others:
                print(f"{str(rel):<45} missing in the current outputs")
                differing += 1
                continue
            what = compare(work / "baseline" / rel, work / "current" / rel)
            differing += bool(what) and not what.startswith("equal")
            print(f"{str(rel):<45} {what or 'equal'}")
        for rel in sorted(others - set(files)):
            print(f"{str(rel):<45} new in the current outputs")
        print(f"\n{len(files)} files compared (baseline {a.baseline} vs the working tree): "
              f"{len(files) - differing} equal, {differing} differ")
        return 1 if differing else 0
    finally:
        subprocess.run(["git", "-C", str(ROOT), "worktree", "remove", "--force", str(base_code)],
                       capture_output=True)
        if not a.keep and a.work is None:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
