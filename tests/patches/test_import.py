"""`wsiheat import` faults (issue 18): an existing output is never replaced silently, and IDC
file names must agree with their patient folder. Real PNG trees, the CLI in a subprocess."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
from _helpers import file_digest, run_wsiheat

from wsiheat.patches.store import open_patches

REPO = Path(__file__).resolve().parents[2]


run_cli = run_wsiheat
digest = file_digest


def one_line_error(res, *needles):
    assert res.returncode == 2, (res.returncode, res.stdout, res.stderr)
    lines = [line for line in res.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("wsiheat: error:"), res.stderr
    for n in needles:
        assert n in lines[0], lines[0]


def idc_tree(root: Path, patients=("10253", "10254"), per_class=3, stray: tuple[str, str] | None = None) -> Path:
    """PATIENT/CLASS/PATIENT_idx5_xX_yY_classC.png; ``stray=(folder, patient)`` adds a file of
    ``patient`` inside ``folder``."""
    rng = np.random.default_rng(0)
    for p in patients:
        for c in (0, 1):
            d = root / p / str(c)
            d.mkdir(parents=True, exist_ok=True)
            for i in range(per_class):
                img = rng.integers(0, 256, (50, 50, 3), dtype=np.uint8)
                cv2.imwrite(str(d / f"{p}_idx5_x{50 * i}_y{100 * c}_class{c}.png"), img)
    if stray is not None:
        folder, patient = stray
        cv2.imwrite(str(root / folder / "0" / f"{patient}_idx5_x900_y900_class0.png"),
                    np.full((50, 50, 3), 200, np.uint8))
    return root


def test_import_refuses_to_replace_an_existing_file(tmp_path):
    src = idc_tree(tmp_path / "idc")
    victim = tmp_path / "victim.svs"
    victim.write_bytes(b"II*\x00" + bytes(range(256)) * 40)  # stands for a slide
    before = digest(victim)
    one_line_error(run_cli("import", src, "-o", victim), "victim.svs", "exists")
    assert digest(victim) == before
    one_line_error(run_cli("import", src, "-o", victim, "--overwrite"), "victim.svs", "not a wsiheat patches file")
    assert digest(victim) == before
    out = tmp_path / "p.h5"
    assert run_cli("import", src, "-o", out).returncode == 0
    before = digest(out)
    one_line_error(run_cli("import", src, "-o", out, "--split", "train", "--split-fractions", "train=0.5,test=0.5"), "p.h5", "exists")
    assert digest(out) == before
    res = run_cli("import", src, "-o", out, "--overwrite", "--split", "train", "--split-fractions",
                  "train=0.5,test=0.5")
    assert res.returncode == 0, res.stderr
    with open_patches(out) as pf:
        assert len(pf.slides) == 1


def test_import_refuses_a_file_of_another_patient(tmp_path):
    src = idc_tree(tmp_path / "idc", stray=("10253", "10254"))
    out = tmp_path / "p.h5"
    res = run_cli("import", src, "-o", out)
    one_line_error(res, "10254_idx5_x900_y900_class0.png", "10253", "patient")
    assert not out.exists()


def test_open_waits_for_another_process_lock_then_names_it(tmp_path):
    """A patches file another process holds open for writing (its HDF5 lock): a short hold is waited
    out; a long one is a one-line PatchFileError naming the file, never a hang."""
    import subprocess
    import sys
    import time

    import pytest
    from _helpers import write_patches

    from wsiheat.errors import PatchFileError
    from wsiheat.patches import store

    images = np.zeros((4, 2, 8, 8, 3), np.uint8)
    path = write_patches(tmp_path / "p.h5", images, np.zeros(4), np.zeros(4), ["s"])
    holder = ("import h5py, sys, time\nf = h5py.File(sys.argv[1], 'a')\nprint('held', flush=True)\n"
              "time.sleep(float(sys.argv[2]))\nf.close()\n")

    def hold(seconds: float) -> subprocess.Popen:
        p = subprocess.Popen([sys.executable, "-c", holder, str(path), str(seconds)], stdout=subprocess.PIPE, text=True)
        assert p.stdout.readline().strip() == "held"  # the writer has the file (and its lock) now
        return p

    p = hold(1.0)
    t = time.monotonic()
    with store.open_patches(path) as pf:  # waits for the lock, then reads
        assert pf.n == 4
    assert time.monotonic() - t >= 0.5
    p.wait(timeout=60)
    p = hold(store.LOCK_RETRY_SECONDS + 30)
    try:
        with pytest.raises(PatchFileError, match=r"p\.h5: cannot open HDF5 file \(locked by another process"):
            store.open_patches(path)
    finally:
        p.kill()
        p.wait(timeout=60)
