"""Patch AUC and balanced accuracy of models on the held-out patients, unshifted and under stain shifts.

Usage:
  python tools/stain_table.py --models base=m_base.keras hed=m_hed.keras macenko=m_macenko.keras \\
      --sets orig=idc_test160.h5 20=test160_s0.2.h5 35=test160_s0.35.h5 50=test160_s0.5.h5 \\
      [--backend tensorflow] [--cache stain_cache] [--boot 1000]

The first set is the reference (the unshifted held-out patients, ``wsiheat import idc --split
test``; the others are the same patients from ``tools/stain_shift.py`` copies). Every model runs
exactly as ``wsiheat evaluate patches`` runs it (its own stain normalisation, if any, fitted per
patient). Prints one markdown table: AUC and balanced accuracy at 0.5 per set, and for each
shifted set the AUC drop against the first set with a 95 % interval from a paired bootstrap over
patients (the same resampled patients for both sets). Models named ``ROW``, ``ROW_s1``,
``ROW_s2``... (one recipe, other ``--seed`` values) get a second table: the mean, smallest and
largest unshifted AUC and AUC drop over their seeds. Scores are cached in ``--cache`` as
``MODEL__SET.npz``, so adding a model re-runs only its rows.
"""

from __future__ import annotations

import argparse
import re
import sys
import time
from pathlib import Path

import numpy as np


def pairs(items: list[str], what: str) -> list[tuple[str, Path]]:
    out = []
    for it in items:
        name, sep, path = it.partition("=")
        if not sep:
            raise SystemExit(f"stain_table: {what} {it!r}: write NAME=PATH")
        out.append((name, Path(path)))
    return out


def scores_of(model: Path, patches: Path, cache: Path, key: str, backend: str) -> dict:
    """Predictions of a model on a patches file (cached)."""
    f = cache / f"{key}.npz"
    if f.exists():
        z = np.load(f)
        return {k: z[k] for k in z.files}
    from wsiheat.inference.engine import HeatmapModel
    from wsiheat.inference.predict import predict_patches

    t = time.perf_counter()
    engine = HeatmapModel.load(model, backend=backend, precision="float32" if backend == "tensorflow" else "auto")
    p = predict_patches(engine, patches, batch_size=64, progress=False)
    out = {"scores": p["scores"], "labels": p["labels"], "slide_ids": p["slide_ids"],
           "unnormalised": np.array(len((p.get("stain") or {}).get("unnormalised_slides", [])))}
    np.savez(f, **out)
    print(f"  {key}: {time.perf_counter() - t:.0f} s", file=sys.stderr)
    return out


def balanced_accuracy(labels: np.ndarray, scores: np.ndarray) -> float:
    pred = scores >= 0.5
    return 0.5 * (float(pred[labels == 1].mean()) + float((~pred[labels == 0]).mean()))


def paired_drop_ci(ref: dict, other: dict, n_boot: int, seed: int = 0) -> tuple[float, float]:
    """95 % interval of AUC(ref) - AUC(other), resampling patients (the same ones in both)."""
    from wsiheat.evaluation.metrics import roc_auc

    ids = ref["slide_ids"]
    groups = [np.flatnonzero(ids == g) for g in np.unique(ids)]
    rng = np.random.default_rng(seed)
    drops = []
    for _ in range(n_boot):
        rows = np.concatenate([groups[i] for i in rng.integers(0, len(groups), len(groups))])
        lab = ref["labels"][rows]
        if lab.min() == lab.max():
            continue
        drops.append(roc_auc(lab, ref["scores"][rows]) - roc_auc(lab, other["scores"][rows]))
    lo, hi = np.percentile(drops, [2.5, 97.5])
    return float(lo), float(hi)


def main(argv: list[str] | None = None) -> int:
    from wsiheat.evaluation.metrics import roc_auc

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--models", nargs="+", required=True)
    ap.add_argument("--sets", nargs="+", required=True)
    ap.add_argument("--backend", default="tensorflow", choices=["tensorflow", "openvino", "auto"])
    ap.add_argument("--cache", type=Path, default=Path("stain_cache"))
    ap.add_argument("--boot", type=int, default=1000)
    a = ap.parse_args(argv)
    models, sets = pairs(a.models, "model"), pairs(a.sets, "set")
    a.cache.mkdir(parents=True, exist_ok=True)
    ref_name = sets[0][0]
    head = ["model"] + [f"AUC {s}" for s, _ in sets] + [f"bal. acc. {s}" for s, _ in sets] + \
        [f"AUC drop {s} (95 % CI)" for s, _ in sets[1:]]
    print("| " + " | ".join(head) + " |")
    print("|" + "---|" * len(head))
    per_model: dict[str, dict[str, float]] = {}
    for m, mpath in models:
        res = {s: scores_of(mpath, spath, a.cache, f"{m}__{s}", a.backend) for s, spath in sets}
        for s, _ in sets[1:]:
            if not np.array_equal(res[s]["labels"], res[ref_name]["labels"]):
                raise SystemExit(f"stain_table: set {s} holds other patches than {ref_name}")
        aucs = {s: roc_auc(r["labels"], r["scores"]) for s, r in res.items()}
        bals = {s: balanced_accuracy(r["labels"], r["scores"]) for s, r in res.items()}
        cells = [m] + [f"{aucs[s]:.4f}" for s, _ in sets] + [f"{bals[s]:.4f}" for s, _ in sets]
        for s, _ in sets[1:]:
            lo, hi = paired_drop_ci(res[ref_name], res[s], a.boot)
            cells.append(f"{aucs[ref_name] - aucs[s]:+.4f} ({lo:+.4f}, {hi:+.4f})")
        print("| " + " | ".join(cells) + " |", flush=True)
        per_model[m] = aucs
    print(f"\nAUC drop = AUC on {ref_name} - AUC on the shifted set (positive: worse under the shift); "
          f"intervals: paired bootstrap over patients, {a.boot} resamples.")
    print_seed_means(per_model, [s for s, _ in sets])
    return 0


def seed_groups(names: list[str]) -> dict[str, list[str]]:
    """Models of one row trained with other seeds: ``ROW``, ``ROW_s1``, ``ROW_s2``... -> ``{ROW: [...]}``."""
    groups: dict[str, list[str]] = {}
    for n in names:
        groups.setdefault(re.sub(r"_s\d+$", "", n), []).append(n)
    return groups


def print_seed_means(per_model: dict[str, dict[str, float]], sets: list[str]) -> None:
    """Per row with more than one seed: the mean (smallest-largest) unshifted AUC and AUC drop per set."""
    groups = {row: ms for row, ms in seed_groups(list(per_model)).items() if len(ms) > 1}
    if not groups:
        return
    ref = sets[0]
    head = ["row", "seeds", f"AUC {ref}: mean (min-max)"] + [f"AUC drop {s}: mean (min-max)" for s in sets[1:]]
    print("\n| " + " | ".join(head) + " |")
    print("|" + "---|" * len(head))
    for row, ms in groups.items():
        auc = np.array([per_model[m][ref] for m in ms])
        cells = [row, str(len(ms)), f"{auc.mean():.4f} ({auc.min():.4f}-{auc.max():.4f})"]
        for s in sets[1:]:
            d = np.array([per_model[m][ref] - per_model[m][s] for m in ms])
            cells.append(f"{d.mean():+.4f} ({d.min():+.4f} to {d.max():+.4f})")
        print("| " + " | ".join(cells) + " |", flush=True)
    print("Rows grouped by name: ROW, ROW_s1, ROW_s2... are the same recipe with other --seed values.")


if __name__ == "__main__":
    sys.exit(main())
