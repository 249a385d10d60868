"""Write a copy of an IDC folder tree in which every patient's staining is changed, as another lab's would be.

Usage: python tools/stain_shift.py SRC -o OUT --strength 0.5 [--seed 0] [--workers N]

Each patient (top-level folder of SRC) gets ONE random H&E change, the same for
all its patches: its haematoxylin and eosin concentrations (Ruifrok-Johnston
colour deconvolution with scikit-image's matrices, negative concentrations
kept, so strength 0 copies every pixel unchanged) are multiplied by
factors drawn independently and uniformly from ``[1 - strength, 1 + strength]``
(strength 0.2, 0.35, 0.5: "+-20, 35, 50 %"); DAB is left alone. The draw
depends only on ``--seed`` and the patient's name, so copies are reproducible
and two strengths use the same directions. ``OUT/stain_shift.json`` records
every patient's factors. The file names (and so the labels) are unchanged, so
``wsiheat import OUT --split test`` picks the same held-out patients as SRC.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import zlib
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np


def factors(patient: str, strength: float, seed: int) -> tuple[float, float]:
    """The (H, E) concentration factors of one patient."""
    rng = np.random.default_rng([seed, zlib.crc32(patient.encode())])
    u = rng.uniform(-1.0, 1.0, 2)
    return float(1.0 + strength * u[0]), float(1.0 + strength * u[1])


def shift_image(rgb: np.ndarray, h: float, e: float) -> np.ndarray:
    """uint8 RGB with H and E concentrations scaled by ``h`` and ``e``.

    The Ruifrok-Johnston deconvolution of scikit-image (``hed_from_rgb`` /
    ``rgb_from_hed``, the same optical density as ``rgb2hed``) but without
    ``rgb2hed``'s clipping of negative concentrations: the map is linear in
    optical density, so factors (1, 1) give back the input exactly and a
    strength-0 copy is the original, not a lossy round trip.
    """
    from skimage.color import hed_from_rgb, rgb_from_hed

    log_adjust = np.log(1e-6)
    od = np.log(np.maximum(rgb.astype(np.float64) / 255.0, 1e-6)) / log_adjust
    hed = od @ hed_from_rgb
    hed[..., 0] *= h
    hed[..., 1] *= e
    out = np.exp((hed @ rgb_from_hed) * log_adjust)
    return np.clip(np.rint(out * 255.0), 0, 255).astype(np.uint8)


def shift_patient(args: tuple[str, str, float, float]) -> int:
    src, dst, h, e = args
    from PIL import Image

    n = 0
    for path in sorted(Path(src).rglob("*.png")):
        out = Path(dst) / path.relative_to(src)
        out.parent.mkdir(parents=True, exist_ok=True)
        with Image.open(path) as im:
            rgb = np.asarray(im.convert("RGB"))
        Image.fromarray(shift_image(rgb, h, e)).save(out)
        n += 1
    return n


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("src", type=Path)
    ap.add_argument("-o", "--out", type=Path, required=True)
    ap.add_argument("--strength", type=float, required=True, help="0.2, 0.35 or 0.5 for +-20/35/50 %%")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    a = ap.parse_args(argv)
    if not a.src.is_dir():
        print(f"stain_shift: {a.src}: not a folder", file=sys.stderr)
        return 2
    if not 0 <= a.strength < 1:
        print(f"stain_shift: strength {a.strength}: need a value in [0, 1)", file=sys.stderr)
        return 2
    if a.out.exists():
        print(f"stain_shift: {a.out}: exists; choose a new folder", file=sys.stderr)
        return 2
    tmp = a.out.with_name(a.out.name + ".partial")
    patients = sorted(p.name for p in a.src.iterdir() if p.is_dir())
    record = {p: dict(zip(("h", "e"), factors(p, a.strength, a.seed))) for p in patients}
    jobs = [(str(a.src / p), str(tmp / p), record[p]["h"], record[p]["e"]) for p in patients]
    with ProcessPoolExecutor(max_workers=max(1, a.workers)) as ex:
        n = sum(ex.map(shift_patient, jobs, chunksize=4))
    (tmp / "stain_shift.json").write_text(json.dumps({"strength": a.strength, "seed": a.seed,
                                                       "patients": record}, indent=1))
    tmp.rename(a.out)  # the copy appears complete or not at all
    print(f"{a.out}: {n} patches of {len(patients)} patients, H and E factors in "
          f"[{1 - a.strength:.2f}, {1 + a.strength:.2f}]")
    return 0


if __name__ == "__main__":
    sys.exit(main())
