"""Compare lesion-scorer variants on VALIDATION heatmaps by cross-fitting (no test slide, no model run).

Usage:
    python tools/scorer_candidates.py HM_A:MOSAICS_A HM_B:MOSAICS_B [--mpp 0.669] [--level 3]
        [--candidates base,cc,wide,both,hgb]

HM_* are `wsiheat heatmap` output folders (raw maps NAME.h5) of two sets of validation mosaics, and
MOSAICS_* the `wsiheat mosaic` folders they were made from (NAME_mask.tif, labels.csv). For each
candidate it prints the FROC and slide AUC when fitted on A and checked on B, the reverse, their mean,
and a 6-fold out-of-fold figure over A and B together (slides in name order, fold = index mod 6).
Lesion points as `wsiheat heatmap` makes them: threshold 0.5, NMS radius 4 cells.

Candidates (all logistic regressions with balanced classes and C = 1, as `evaluate fit-scorer`,
except hgb):
    base  the 8 features of wsiheat.postprocess.scorer (what fit-scorer fits)
    cc    + log(1 + cells) of the 4-connected group of cells >= 0.5 and >= 0.9 the cell belongs to
    wide  + smoothing at sigma 2 and 3 cells, share of cells >= 0.5 and >= 0.9 in the 5 x 5 around
    both  cc and wide together
    hgb   the 8 features, scikit-learn HistGradientBoostingClassifier (defaults, balanced classes)

Used for docs/experiments/idc-test84-preregistration.md (section C).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

CANDIDATES = ("base", "cc", "wide", "both", "hgb")


def group_size(q: np.ndarray, tissue: np.ndarray, level: float) -> np.ndarray:
    """log(1 + size) of the 4-connected group of tissue cells >= level each cell belongs to (0 outside)."""
    from scipy.ndimage import label

    lab, n = label((q >= level) & tissue)
    if n == 0:
        return np.zeros(q.shape)
    sizes = np.bincount(lab.ravel())
    sizes[0] = 0
    return np.log1p(sizes[lab])


def features(prob: np.ndarray, tissue: np.ndarray, kind: str) -> np.ndarray:
    """Per-cell features (rows, cols, k) of one raw map for a candidate kind."""
    from scipy.ndimage import uniform_filter

    from wsiheat.postprocess.lesions import smooth_heatmap
    from wsiheat.postprocess.scorer import neighbourhood_features

    t = np.asarray(tissue, bool)
    q = np.where(t, np.nan_to_num(np.asarray(prob, np.float64)), 0.0)
    parts = [neighbourhood_features(prob, t)]
    if kind in ("cc", "both"):
        parts.append(np.stack([group_size(q, t, 0.5), group_size(q, t, 0.9)], -1))
    if kind in ("wide", "both"):
        parts.append(np.stack([smooth_heatmap(q, t, 2.0), smooth_heatmap(q, t, 3.0)]
                              + [uniform_filter((q >= p).astype(float), 5, mode="constant") for p in (0.5, 0.9)], -1))
    out = np.concatenate(parts, -1)
    out[~t] = 0.0
    return out


def load_set(spec: str, level: int, tag: str) -> list[tuple[str, object, object]]:
    """(name, Heatmap, level-`level` tumor mask or None) for every slide of HM:MOSAICS."""
    from wsiheat.evaluation.tuning import load_maps_and_masks

    hm, _, mosaics = spec.partition(":")
    if not mosaics:
        raise SystemExit(f"scorer_candidates.py: {spec}: give HEATMAPS:MOSAICS")
    names, maps, masks = load_maps_and_masks(hm, sorted(Path(mosaics).glob("*_mask.tif")),
                                             Path(mosaics) / "labels.csv", level, progress=False)
    return [(f"{tag}_{n}", maps[n], masks[n]) for n in names]


class CandidateMap:
    """A fitted candidate over one slide's precomputed features, in the shape of a lesion scorer (``apply``)."""

    def __init__(self, clf, feats: np.ndarray):
        self.clf, self.feats = clf, feats

    def apply(self, prob: np.ndarray, tissue: np.ndarray) -> np.ndarray:
        t = np.asarray(tissue, bool)
        out = np.zeros(t.shape)
        out[t] = self.clf.predict_proba(self.feats[t])[:, 1]
        return out


class Runner:
    def __init__(self, mpp: float, level: int):
        self.mpp, self.level, self.cache = mpp, level, {}

    def feats(self, name, hm, kind):
        key = (name, "base" if kind == "hgb" else kind)
        if key not in self.cache:
            self.cache[key] = features(hm.probabilities, hm.tissue, key[1])
        return self.cache[key]

    def fit(self, slides, kind):
        from sklearn.ensemble import HistGradientBoostingClassifier
        from sklearn.linear_model import LogisticRegression

        from wsiheat.evaluation.tuning import tumor_cells

        x = np.concatenate([self.feats(n, hm, kind)[np.asarray(hm.tissue, bool)] for n, hm, _ in slides])
        y = np.concatenate([tumor_cells(hm, m, self.level)[np.asarray(hm.tissue, bool)] for _, hm, m in slides])
        if kind == "hgb":
            return HistGradientBoostingClassifier(class_weight="balanced", random_state=0).fit(x, y)
        return LogisticRegression(C=1.0, class_weight="balanced", max_iter=5000).fit(x, y)

    def detect(self, slides, clf, kind):
        """Slide scores and lesion points as `wsiheat heatmap` makes them, the candidate's map in place of
        the lesion scorer's (wsiheat.postprocess.lesions.postprocess_scores: threshold 0.5, NMS 4 cells)."""
        from wsiheat.postprocess.lesions import postprocess_scores

        dets, masks, scores, labels = {}, {}, [], []
        for n, hm, m in slides:
            cand = CandidateMap(clf, self.feats(n, hm, kind))
            slide_score, dets[n] = postprocess_scores(hm.probabilities, hm.tissue, hm.cell_size, hm.origin, 0.0,
                                                   0.5, 4.0, cand)
            masks[n] = m
            scores.append(slide_score)
            labels.append(int(m is not None))
        return dets, masks, scores, labels

    def score(self, dets, masks, scores, labels):
        from wsiheat.evaluation.froc import froc_from_arrays
        from wsiheat.evaluation.metrics import roc_auc

        return froc_from_arrays(dets, masks, self.mpp, self.level).score, roc_auc(np.array(labels), np.array(scores))


def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("set_a")
    ap.add_argument("set_b")
    ap.add_argument("--mpp", type=float, default=4 / 5.98, help="level-0 µm/px of the mosaics")
    ap.add_argument("--level", type=int, default=3)
    ap.add_argument("--candidates", default=",".join(CANDIDATES))
    a = ap.parse_args(argv)
    kinds = [k for k in a.candidates.split(",") if k]
    bad = sorted(set(kinds) - set(CANDIDATES))
    if bad:
        print(f"scorer_candidates.py: --candidates: unknown {bad} (choose from {list(CANDIDATES)})", file=sys.stderr)
        return 2
    sets = {"A": load_set(a.set_a, a.level, "A"), "B": load_set(a.set_b, a.level, "B")}
    run = Runner(a.mpp, a.level)
    both = sets["A"] + sets["B"]
    print("| candidate | fit A -> B (FROC, slide AUC) | fit B -> A | mean FROC | 6-fold out of fold |")
    print("|---|---|---|---|---|")
    for kind in kinds:
        t0 = time.time()
        cross = {}
        for src, dst in (("A", "B"), ("B", "A")):
            cross[src] = run.score(*run.detect(sets[dst], run.fit(sets[src], kind), kind))
        dets, masks, scores, labels = {}, {}, [], []
        for k in range(6):
            train = [s for i, s in enumerate(both) if i % 6 != k]
            d, m, s, lab = run.detect([s for i, s in enumerate(both) if i % 6 == k], run.fit(train, kind), kind)
            dets.update(d), masks.update(m), scores.extend(s), labels.extend(lab)
        oof = run.score(dets, masks, scores, labels)
        mean = (cross["A"][0] + cross["B"][0]) / 2
        print(f"| {kind} | {cross['A'][0]:.3f}, {cross['A'][1]:.3f} | {cross['B'][0]:.3f}, {cross['B'][1]:.3f} "
              f"| {mean:.3f} | {oof[0]:.3f}, {oof[1]:.3f} |  ({time.time() - t0:.0f} s)", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
