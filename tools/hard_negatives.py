"""Write a copy of a patches file with its hard negatives repeated, for a fine-tuning round.

A hard negative is a normal row (label 0) of a training slide that a model scored at or above a
threshold in ``wsiheat evaluate patches`` (its ``patch_predictions.csv``). Rows of the model's
validation slides (recorded in the model file) are never repeated, so that a later
``wsiheat train --val-fraction ... --seed ...`` validates on exactly the same slides and rows: the
by-slide split depends only on which slides there are and which have tumor rows.

Usage:
  wsiheat evaluate patches -m idc299.keras -p idc_train299.h5 -o eval_train299
  python tools/hard_negatives.py idc_train299.h5 eval_train299/patch_predictions.csv -m idc299.keras \
      -o idc_train299_hn.h5 --threshold 0.5 --copies 2
"""

from __future__ import annotations

import argparse
import csv
import os
import shutil
import sys
from pathlib import Path

import h5py
import numpy as np


def hard_negative_rows(labels: np.ndarray, scores: np.ndarray, is_val: np.ndarray, threshold: float) -> np.ndarray:
    """Sorted indices of normal, non-validation rows scored at or above `threshold`."""
    return np.flatnonzero((labels == 0) & ~is_val & (scores >= threshold))


def read_scores(predictions: Path, n_rows: int, labels: np.ndarray) -> np.ndarray:
    """Scores of ``patch_predictions.csv``, checked row by row against the patches file."""
    with open(predictions, newline="") as f:
        rows = list(csv.DictReader(f))
    if len(rows) != n_rows or any(int(r["index"]) != i for i, r in enumerate(rows)):
        raise ValueError(f"{predictions}: {len(rows)} predictions, not one per row of the patches file ({n_rows})")
    if any(int(r["label"]) != int(labels[i]) for i, r in enumerate(rows)):
        raise ValueError(f"{predictions}: labels differ from the patches file's (predictions of another file?)")
    return np.array([float(r["score"]) for r in rows])


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("patches", type=Path)
    ap.add_argument("predictions", type=Path, help="patch_predictions.csv of `wsiheat evaluate patches` on PATCHES")
    ap.add_argument("-m", "--model", type=Path, required=True, help="the model that scored them (its validation slides)")
    ap.add_argument("-o", "--output", type=Path, required=True)
    ap.add_argument("--threshold", type=float, default=0.5)
    ap.add_argument("--copies", type=int, default=2, help="extra copies of each hard negative")
    args = ap.parse_args(argv)
    from wsiheat.errors import WsiheatError
    from wsiheat.models.model import read_metadata
    from wsiheat.patches.store import append_rows, open_patches

    try:
        if args.copies < 1:
            raise ValueError(f"--copies {args.copies}: need at least 1")
        val = set((read_metadata(args.model).get("training_data") or {}).get("val_slides") or [])
        with open_patches(args.patches) as pf:
            slides, labels, slide_ids = pf.slides, pf.labels, pf.slide_ids
        scores = read_scores(args.predictions, len(labels), labels)
    except (OSError, KeyError, ValueError, WsiheatError) as e:
        print(f"hard_negatives.py: {e}", file=sys.stderr)
        return 2
    is_val = np.isin(slide_ids, [i for i, s in enumerate(slides) if s in val])
    hard = hard_negative_rows(labels, scores, is_val, args.threshold)
    normals = int(((labels == 0) & ~is_val).sum())
    print(f"{args.patches}: {len(labels)} rows, {int(is_val.sum())} on {len(val)} validation slides; "
          f"{len(hard)} of {normals} training normals scored >= {args.threshold}, each added {args.copies} more times")
    tmp = args.output.with_name(args.output.name + ".tmp")
    shutil.copyfile(args.patches, tmp)
    try:
        with h5py.File(tmp, "r+") as f:
            n0 = f["labels"].shape[0]
            if len(hard):
                append_rows(f, *(np.concatenate([f[name][hard]] * args.copies)
                                  for name in ("images", "labels", "centers", "slide_ids")))
        os.replace(tmp, args.output)
    finally:
        tmp.unlink(missing_ok=True)
    print(f"-> {args.output} ({n0 + len(hard) * args.copies} rows)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
