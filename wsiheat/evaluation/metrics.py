"""Metrics over arrays: ROC AUC (from ranks), ROC curve, Youden threshold, binary metrics, bootstrap intervals.

Pure functions of labels and scores; scikit-learn is not used. The AUC is the
Mann-Whitney statistic computed from ranks with ties averaged (a tied
tumor/normal pair counts 1/2), which equals the area under the trapezoidal
ROC curve. The intervals are percentile bootstraps, seeded, resampling the
units given (slides or patients, not windows, which are not independent).
"""

from __future__ import annotations

import math
from typing import Any, Sequence

import numpy as np

from wsiheat.errors import WsiheatError

# =====================================================================================
# ROC primitives
# =====================================================================================

def check_labels_scores(labels: np.ndarray, scores: np.ndarray, what: str = "scores") -> tuple[np.ndarray, np.ndarray]:
    labels = np.asarray(labels)
    scores = np.asarray(scores, dtype=np.float64)
    if labels.ndim != 1 or scores.ndim != 1 or labels.shape != scores.shape:
        raise WsiheatError(f"{what}: labels and scores must be 1-D arrays of the same length "
                           f"(got {labels.shape} and {scores.shape})")
    if labels.size and not np.isin(labels, (0, 1)).all():
        bad = labels[~np.isin(labels, (0, 1))][0]
        raise WsiheatError(f"{what}: labels must be 0 or 1 (found {bad!r})")
    if not np.isfinite(scores).all():
        raise WsiheatError(f"{what}: {int((~np.isfinite(scores)).sum())} score(s) are NaN or infinite")
    return labels.astype(bool), scores


def average_ranks(values: np.ndarray) -> np.ndarray:
    """Ranks 1..n of ``values`` in ascending order, ties sharing their average rank.

    Parameters
    ----------
    values : ndarray, shape (n,)

    Returns
    -------
    ndarray of float64, shape (n,)
    """
    values = np.asarray(values)
    n = values.size
    order = np.argsort(values, kind="mergesort")
    sorted_v = values[order]
    # start index of each tie group
    new_group = np.empty(n, bool)
    if n:
        new_group[0] = True
        new_group[1:] = sorted_v[1:] != sorted_v[:-1]
    starts = np.flatnonzero(new_group)
    ends = np.append(starts[1:], n)  # exclusive
    avg = (starts + 1 + ends) / 2.0  # mean of ranks starts+1 .. ends
    group_of = np.cumsum(new_group) - 1
    ranks = np.empty(n, np.float64)
    ranks[order] = avg[group_of]
    return ranks


def roc_auc(labels: np.ndarray, scores: np.ndarray) -> float:
    """ROC AUC via the Mann-Whitney rank formula, ties counted 1/2.

    ``AUC = (sum of positive ranks - n1 (n1 + 1) / 2) / (n1 n0)``.

    Parameters
    ----------
    labels : ndarray, shape (n,)
        0/1 (or bool) true classes.
    scores : ndarray, shape (n,)
        Scores, higher = more likely positive.

    Returns
    -------
    float
        The AUC, or NaN when only one class is present.
    """
    y, s = check_labels_scores(labels, scores)
    n1 = int(y.sum())
    n0 = y.size - n1
    if n1 == 0 or n0 == 0:
        return float("nan")
    ranks = average_ranks(s)
    return float((ranks[y].sum() - n1 * (n1 + 1) / 2.0) / (n1 * n0))


def roc_curve(labels: np.ndarray, scores: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """ROC curve at every distinct score (predict positive when ``score >= threshold``).

    Returns
    -------
    fpr, tpr, thresholds : ndarray
        Starting at (0, 0) with threshold ``+inf`` and ending at (1, 1) with the
        lowest score; thresholds decreasing. When a class is absent its rate is
        NaN.
    """
    y, s = check_labels_scores(labels, scores)
    order = np.argsort(-s, kind="mergesort")
    s_sorted, y_sorted = s[order], y[order]
    last_of_group = np.flatnonzero(np.append(s_sorted[1:] != s_sorted[:-1], True)) if s.size else np.array([], int)
    tp = np.cumsum(y_sorted)[last_of_group]
    fp = np.cumsum(~y_sorted)[last_of_group]
    n1, n0 = int(y.sum()), int((~y).sum())
    with np.errstate(invalid="ignore", divide="ignore"):
        tpr = np.concatenate([[0.0], tp / n1]) if n1 else np.full(tp.size + 1, np.nan)
        fpr = np.concatenate([[0.0], fp / n0]) if n0 else np.full(fp.size + 1, np.nan)
    thresholds = np.concatenate([[np.inf], s_sorted[last_of_group]])
    return fpr, tpr, thresholds


def youden_threshold(labels: np.ndarray, scores: np.ndarray) -> float:
    """The score threshold maximising Youden's J = sensitivity + specificity - 1.

    Ties go to the highest such threshold. NaN when a class is absent.
    """
    fpr, tpr, thr = roc_curve(labels, scores)
    if thr.size <= 1 or np.isnan(fpr).any() or np.isnan(tpr).any():
        return float("nan")
    j = tpr[1:] - fpr[1:]
    return float(thr[1:][int(np.argmax(j))])


def binary_metrics(labels: np.ndarray, scores: np.ndarray, threshold: float) -> dict[str, Any]:
    """Confusion matrix and derived metrics when predicting ``score >= threshold``.

    Returns
    -------
    dict
        ``threshold, tp, fp, tn, fn, accuracy, balanced_accuracy, sensitivity,
        specificity, precision, f1, confusion_matrix`` (``[[TN, FP], [FN, TP]]``).
        Rates whose denominator is 0 are NaN.
    """
    y, s = check_labels_scores(labels, scores)
    pred = s >= threshold
    tp = int((pred & y).sum())
    fp = int((pred & ~y).sum())
    tn = int((~pred & ~y).sum())
    fn = int((~pred & y).sum())

    def ratio(a: float, b: float) -> float:
        return a / b if b else float("nan")

    sens = ratio(tp, tp + fn)
    spec = ratio(tn, tn + fp)
    bal = (sens + spec) / 2 if not (math.isnan(sens) or math.isnan(spec)) else float("nan")
    return {
        "threshold": float(threshold),
        "tp": tp, "fp": fp, "tn": tn, "fn": fn,
        "accuracy": ratio(tp + tn, y.size),
        "balanced_accuracy": bal,
        "sensitivity": sens,
        "specificity": spec,
        "precision": ratio(tp, tp + fp),
        "f1": ratio(2 * tp, 2 * tp + fp + fn),
        "confusion_matrix": [[tn, fp], [fn, tp]],
    }


def check_bootstrap(n_boot: int, confidence: float) -> None:
    if n_boot < 1:
        raise WsiheatError(f"bootstrap: number of resamples must be >= 1 (got {n_boot})")
    if not 0 < confidence < 1:
        raise WsiheatError(f"bootstrap: confidence must be in (0, 1) (got {confidence})")


def percentile_interval(values: Sequence[float], confidence: float) -> tuple[float, float]:
    """(low, high) percentiles of bootstrap values at a two-sided level; NaN, NaN without values."""
    if len(values) == 0:
        return float("nan"), float("nan")
    alpha = (1 - confidence) / 2
    lo, hi = np.quantile(np.asarray(values, np.float64), [alpha, 1 - alpha])
    return float(lo), float(hi)


def bootstrap_auc_ci(labels: np.ndarray, scores: np.ndarray, n_boot: int = 1000, confidence: float = 0.95,
                     seed: int = 0) -> dict[str, Any]:
    """Percentile bootstrap interval of the ROC AUC.

    Parameters
    ----------
    labels, scores : ndarray, shape (n,)
    n_boot : int
        Number of resamples (with replacement, size n).
    confidence : float
        Two-sided level, e.g. 0.95 for the 2.5 and 97.5 percentiles.
    seed : int
        Seed of ``numpy.random.default_rng``.

    Returns
    -------
    dict
        ``low, high, confidence, n_boot, n_used`` (resamples with a single
        class are skipped); low/high NaN when no resample was usable.
    """
    check_bootstrap(n_boot, confidence)
    y, s = check_labels_scores(labels, scores)
    rng = np.random.default_rng(seed)
    aucs = []
    n = y.size
    for _ in range(n_boot):
        idx = rng.integers(0, n, n)
        yy = y[idx]
        n1 = int(yy.sum())
        if n1 == 0 or n1 == n:
            continue
        ranks = average_ranks(s[idx])
        aucs.append((ranks[yy].sum() - n1 * (n1 + 1) / 2.0) / (n1 * (n - n1)))
    lo, hi = percentile_interval(aucs, confidence)
    return {"low": lo, "high": hi, "confidence": confidence, "n_boot": n_boot, "n_used": len(aucs), "seed": seed}


# =====================================================================================
# Patch level
# =====================================================================================

def bootstrap_patch_ci(labels: np.ndarray, scores: np.ndarray, groups: np.ndarray | None = None,
                       n_boot: int = 1000, confidence: float = 0.95, seed: int = 0,
                       threshold: float = 0.5) -> dict[str, Any]:
    """Percentile bootstrap intervals of the patch AUC and balanced accuracy, resampling groups.

    Patches of one slide (one patient) are not independent, so each
    resample draws whole groups with replacement (all their patches), as
    many groups as there are; without ``groups`` it draws single patches.

    Parameters
    ----------
    labels, scores : ndarray, shape (n,)
    groups : ndarray, shape (n,), optional
        Group (slide) of each patch.
    n_boot, confidence, seed
        As for :func:`bootstrap_auc_ci`.
    threshold : float
        Decision threshold of the balanced accuracy.

    Returns
    -------
    dict
        ``auc`` and ``balanced_accuracy``, each ``{low, high}``; ``unit``
        (``"slide"`` or ``"patch"``), ``n_units``, ``confidence``,
        ``n_boot``, ``n_used`` (resamples with a single class are
        skipped), ``seed``, ``threshold``. NaN bounds when no resample was
        usable.
    """
    check_bootstrap(n_boot, confidence)
    y, s = check_labels_scores(labels, scores, "patches")
    if y.size == 0:
        raise WsiheatError("patches: no patches to resample")
    members = None  # per group, its patch indices (None: every patch is its own group)
    if groups is not None:
        groups = np.asarray(groups).reshape(-1)
        if groups.size != y.size:
            raise WsiheatError(f"bootstrap: {groups.size} groups for {y.size} patches")
        _, inverse = np.unique(groups, return_inverse=True)
        order = np.argsort(inverse, kind="stable")
        members = np.split(order, np.flatnonzero(np.diff(inverse[order])) + 1)
    n_units = y.size if members is None else len(members)
    rng = np.random.default_rng(seed)
    aucs, baccs = [], []
    for _ in range(n_boot):
        pick = rng.integers(0, n_units, n_units)
        idx = pick if members is None else np.concatenate([members[g] for g in pick])
        yy, ss = y[idx], s[idx]
        n1 = int(yy.sum())
        if n1 == 0 or n1 == yy.size:
            continue
        aucs.append(roc_auc(yy, ss))
        pred = ss >= threshold
        baccs.append(0.5 * (pred[yy].mean() + (~pred[~yy]).mean()))
    bounds = {k: dict(zip(("low", "high"), percentile_interval(v, confidence)))
              for k, v in (("auc", aucs), ("balanced_accuracy", baccs))}
    return {**bounds,
            "unit": "patch" if members is None else "slide", "n_units": n_units, "confidence": confidence,
            "n_boot": n_boot, "n_used": len(aucs), "seed": seed, "threshold": threshold}
