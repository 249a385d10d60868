"""tools/stain_shift.py: a restained copy of real IDC patient folders that `wsiheat import` reads."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
from _helpers import shared_path
from PIL import Image

TOOL = Path(__file__).resolve().parents[2] / "tools" / "stain_shift.py"


def test_stain_shift_copies_real_patients_with_one_change_each(tmp_path):
    src = tmp_path / "idc"
    for patient in sorted(p.name for p in shared_path("idc").iterdir() if p.is_dir())[:2]:
        shutil.copytree(shared_path("idc", patient), src / patient)
    run = [sys.executable, str(TOOL), str(src), "--strength", "0.5", "--workers", "1", "-o"]
    r = subprocess.run([*run, str(tmp_path / "s50")], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    rec = json.loads((tmp_path / "s50" / "stain_shift.json").read_text())
    assert rec["strength"] == 0.5 and sorted(rec["patients"]) == sorted(p.name for p in src.iterdir())
    originals = sorted(p.relative_to(src) for p in src.rglob("*.png"))
    assert sorted(p.relative_to(tmp_path / "s50") for p in (tmp_path / "s50").rglob("*.png")) == originals
    for patient, f in rec["patients"].items():
        assert 0.5 <= f["h"] <= 1.5 and 0.5 <= f["e"] <= 1.5
        # the patient's haematoxylin went up or down by its factor, the same for all its patches
        from skimage.color import rgb2hed

        ratios = []
        for rel in [p for p in originals if p.parts[0] == patient][:20]:
            a = np.asarray(Image.open(src / rel).convert("RGB"))
            b = np.asarray(Image.open(tmp_path / "s50" / rel).convert("RGB"))
            ha, hb = rgb2hed(a)[..., 0], rgb2hed(b)[..., 0]
            ok = (ha > 0.03) & (b.min(axis=-1) > 5) & (b.max(axis=-1) < 250)
            if ok.sum() > 50:
                ratios.append(np.median(hb[ok] / ha[ok]))
        assert ratios and abs(np.median(ratios) - f["h"]) < 0.1
    # strength 0 is the identity: no deconvolution round-trip loss (rgb2hed would clip)
    r0 = subprocess.run([*run[:4], "0", *run[5:], str(tmp_path / "s0")], capture_output=True, text=True,
                        timeout=300)
    assert r0.returncode == 0, r0.stderr
    for rel in originals:
        a = np.asarray(Image.open(src / rel).convert("RGB"))
        assert np.array_equal(a, np.asarray(Image.open(tmp_path / "s0" / rel).convert("RGB"))), rel
    # reproducible, and an existing output is refused
    r2 = subprocess.run([*run, str(tmp_path / "again")], capture_output=True, text=True, timeout=300)
    assert json.loads((tmp_path / "again" / "stain_shift.json").read_text()) == rec
    r3 = subprocess.run([*run, str(tmp_path / "s50")], capture_output=True, text=True, timeout=60)
    assert r2.returncode == 0 and r3.returncode == 2 and "exists" in r3.stderr
