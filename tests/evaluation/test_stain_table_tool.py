"""tools/stain_table.py: per-model AUC table on real HDF5 patch files and real (tiny) Keras models,
and the mean over seeds of rows trained with several seeds."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import numpy as np
from _helpers import TINY_META, tiny_model, write_patches

TOOL = Path(__file__).resolve().parents[2] / "tools" / "stain_table.py"
def test_stain_table_prints_models_and_seed_means(tmp_path):
    rng = np.random.default_rng(0)
    x = np.clip(rng.integers(0, 256, (64, 1, 1, 1, 3)) + rng.integers(-20, 21, (64, 2, 32, 32, 3)), 0, 255)
    x = x.astype(np.uint8)
    labels = (x[:, 0, 16, 16, 0] > 128).astype(np.uint8)
    ids = np.arange(64) % 8  # 8 "patients"
    write_patches(tmp_path / "orig.h5", x, labels, ids, [f"p{i}" for i in range(8)], downsamples=TINY_META["downsamples"])
    shifted = np.clip(x.astype(int) * [1.0, 0.8, 1.1], 0, 255).astype(np.uint8)
    write_patches(tmp_path / "s.h5", shifted, labels, ids, [f"p{i}" for i in range(8)], downsamples=TINY_META["downsamples"])
    for name, seed in (("a", 1), ("a_s1", 2), ("b", 3)):
        tiny_model(tmp_path / f"{name}.keras", seed)
    r = subprocess.run([sys.executable, str(TOOL), "--models", *(f"{n}={tmp_path / n}.keras" for n in ("a", "a_s1", "b")),
                        "--sets", f"orig={tmp_path / 'orig.h5'}", f"s={tmp_path / 's.h5'}", "--cache",
                        str(tmp_path / "cache"), "--boot", "50"], capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr
    first_table = r.stdout.split("\n\n")[0].splitlines()[2:]
    rows = {ln.split("|")[1].strip(): [c.strip() for c in ln.split("|")[2:-1]] for ln in first_table}
    assert set(rows) == {"a", "a_s1", "b"}
    auc = {m: float(c[0]) for m, c in rows.items() if m in ("a", "a_s1", "b")}
    drop = {m: float(c[4].split()[0]) for m, c in rows.items()}
    assert all(abs(d - (auc[m] - float(rows[m][1]))) < 1e-3 for m, d in drop.items())
    # the seeds table: row "a" = mean of a and a_s1; "b" has one seed and no row there
    mean_lines = [ln for ln in r.stdout.splitlines() if ln.startswith("| a | 2 |")]
    assert len(mean_lines) == 1 and not any(ln.startswith("| b | ") for ln in r.stdout.split("\n\n", 1)[1].splitlines())
    m = re.match(r"\| a \| 2 \| ([\d.]+) \(([\d.]+)-([\d.]+)\) \| ([+-][\d.]+)", mean_lines[0])
    assert m, mean_lines[0]
    assert abs(float(m.group(1)) - (auc["a"] + auc["a_s1"]) / 2) < 1e-4
    assert float(m.group(2)) == min(auc["a"], auc["a_s1"]) and float(m.group(3)) == max(auc["a"], auc["a_s1"])
    assert abs(float(m.group(4)) - (drop["a"] + drop["a_s1"]) / 2) < 2e-4
