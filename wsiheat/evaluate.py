"""Evaluation: patch-level metrics, slide-level ROC AUC and the CAMELYON16 lesion FROC.

Three levels, each a set of pure functions over numpy arrays plus one
``evaluate_*`` function that reads files, computes and writes a report folder
(JSON, PNG and CSV files, each written atomically).

Patch level
-----------
:func:`predict_patches` runs a saved model over a wsiheat HDF5 patches file in
chunks; :func:`patch_report` computes the ROC AUC, and, at the 0.5 threshold
and at the Youden threshold (the score maximising ``sensitivity + specificity
- 1``), accuracy, balanced accuracy, sensitivity, specificity, precision, F1
and the confusion matrix ``[[TN, FP], [FN, TP]]`` (rows: true class 0/1,
columns: predicted class 0/1). A window is predicted tumor when its score is
``>= threshold``. The AUC is the Mann-Whitney statistic computed from ranks
with ties averaged (a tied tumor/normal pair counts 1/2), which equals the
area under the trapezoidal ROC curve. scikit-learn is not used.

Slide level
-----------
Each slide's score (the heatmap JSON's ``score``, the maximum probability) is
compared with its reference label (a ``slide,label`` CSV, or ground-truth
files: a slide is tumor when its ground truth marks any tumor). Reported: ROC
AUC with a percentile bootstrap 95 % interval (slides resampled with
replacement, seeded; resamples holding a single class are skipped and
counted), the metrics at 0.5 and at the Youden threshold, and a per-slide
table sorted by score (rank 1 = highest score).

Lesion level: the CAMELYON16 FROC
---------------------------------
A re-implementation of the challenge's ``Evaluation_FROC.py`` (Babak Ehteshami
Bejnordi, 2016), with the same constants and quirks. With ``mpp`` the level-0
pixel size (0.243 µm in CAMELYON16, option ``--mpp``) and the evaluation level
``L = 5`` (downsample ``2**5 = 32``):

1. **Evaluation mask** (``computeEvaluationMask``) -- :func:`evaluation_mask`.
   The tumor mask at level 5: ``ceil(H/32) x ceil(W/32)`` pixels, taken from
   :meth:`GroundTruth.tumor_mask(0, 0, ceil(W/32), ceil(H/32), 32)
   <wsiheat.annotations.GroundTruth.tumor_mask>`. The official code reads
   level 5 of the mask TIFF with OpenSlide and computes
   ``distance_transform_edt(255 - mask)``, i.e. the Euclidean distance (in
   level-5 pixels) of every non-tumor pixel to the nearest tumor pixel; it
   keeps ``distance < 75 / (mpp * 2**L * 2)`` (= 4.8225 px for 0.243 µm:
   the "75 µm" margin is halved by the ``* 2``, so tumor is grown by a 37.5 µm
   radius). Then ``scipy.ndimage.binary_fill_holes`` and
   ``skimage.measure.label(connectivity=2)`` (8-connectivity). Each label is
   one lesion. (Internally the distance transform runs on the bounding box of
   the tumor plus a margin; that gives the same labels, same numbering.)
2. **Isolated tumor cells** (``computeITCList``) -- :func:`itc_labels`. A
   lesion whose ``regionprops`` major axis length (level-5 pixels) is below
   ``275 / (mpp * 2**L)`` (= 35.37 px: 200 µm plus 75 µm of growth -- note that
   this threshold is *not* halved, unlike the margin above, although the
   actual growth is 2 x 37.5 µm) is an ITC.
3. **Matching** (``compute_FP_TP_Probs``) -- :func:`match_detections`. A
   detection ``(prob, x, y)`` in level-0 integer pixels looks up
   ``label = mask[y // 32, x // 32]`` (Python-2 integer division in the
   official code; float coordinates here are truncated to integers first, as
   ``int()`` would). Label 0: a false positive (its probability joins the FP
   list). A non-ITC label: the lesion's probability becomes the maximum of
   the detections on it (so a second hit on the same lesion is neither a TP
   nor an FP). An ITC label: ignored entirely. The per-slide TP list has one
   entry per label *including ITC labels*, which stay 0, and missed lesions
   stay 0 too. On slides without tumor every detection is a false positive.
   The number of lesions counted is ``max_label - number of ITCs``.
4. **Curve** (``computeFROC``) -- :func:`froc_curve`. FP and TP
   probabilities are pooled over all slides. Thresholds are the sorted
   unique pooled values **with the lowest one skipped**
   (``all_probs[1:]``; since missed lesions and ITCs contribute zeros, the
   skipped value is usually 0). For each threshold ``t``: FPs per slide =
   ``#(FP >= t) / number of slides`` and sensitivity = ``#(TP >= t) /
   total lesions``; a final point (0, 0) is appended.
5. **Score** -- :func:`froc_score`. ``np.interp([0.25, 0.5, 1, 2, 4, 8],
   fps[::-1], sens[::-1])`` (linear interpolation, flat beyond the ends, the
   reversed arrays exactly as in the official code), and the final score is
   the mean of these six sensitivities.

Deviations, all deliberate: probabilities are kept in float64 (the official
code stores each lesion's maximum in a float32 array, which can split a value
that is not float32-representable into two thresholds; results are identical
when the probabilities are float32 values, as a model writes them). A slide
is a tumor slide when its ground truth marks tumor (the official code looks
at the file name prefix ``Tumor``). Bad input that the official script would
silently accept or crash on is refused with a one-line error: a detection
outside the slide, NaN or probabilities outside [0, 1], an empty detection
file (unless ``allow_empty``, or the slide's heatmap JSON records
``"lesions": 0``: wsiheat found no candidate above its threshold), slide names without ground truth or without
detections.
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np

from .errors import WsiheatError
from .fileio import atomic_path, ensure_out_dir
from .gallery import plot_gallery

#: Level-0 pixel size of CAMELYON16 slides (µm/px) used by Evaluation_FROC.py.
CAMELYON16_MPP = 0.243
#: Pyramid level of the evaluation mask in Evaluation_FROC.py.
EVALUATION_MASK_LEVEL = 5
#: FP-per-slide operating points averaged into the FROC score.
FROC_EVAL_FPS = (0.25, 0.5, 1.0, 2.0, 4.0, 8.0)
#: Tumor margin (µm) of computeEvaluationMask (halved in the official formula).
MARGIN_UM = 75.0
#: ITC size threshold (µm) of computeITCList: 200 µm plus 75 µm of growth.
ITC_UM = 275.0

GROUND_TRUTH_SUFFIXES = (".tif", ".tiff", ".png", ".xml", ".json", ".geojson")


# =====================================================================================
# ROC primitives
# =====================================================================================

def _check_labels_scores(labels: np.ndarray, scores: np.ndarray, what: str = "scores") -> tuple[np.ndarray, np.ndarray]:
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
    y, s = _check_labels_scores(labels, scores)
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
    y, s = _check_labels_scores(labels, scores)
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
    y, s = _check_labels_scores(labels, scores)
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


def _check_bootstrap(n_boot: int, confidence: float) -> None:
    if n_boot < 1:
        raise WsiheatError(f"bootstrap: number of resamples must be >= 1 (got {n_boot})")
    if not 0 < confidence < 1:
        raise WsiheatError(f"bootstrap: confidence must be in (0, 1) (got {confidence})")


def _percentile_interval(values: Sequence[float], confidence: float) -> tuple[float, float]:
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
    _check_bootstrap(n_boot, confidence)
    y, s = _check_labels_scores(labels, scores)
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
    lo, hi = _percentile_interval(aucs, confidence)
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
    _check_bootstrap(n_boot, confidence)
    y, s = _check_labels_scores(labels, scores, "patches")
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
    bounds = {k: dict(zip(("low", "high"), _percentile_interval(v, confidence)))
              for k, v in (("auc", aucs), ("balanced_accuracy", baccs))}
    return {**bounds,
            "unit": "patch" if members is None else "slide", "n_units": n_units, "confidence": confidence,
            "n_boot": n_boot, "n_used": len(aucs), "seed": seed, "threshold": threshold}


def patch_report(labels: np.ndarray, scores: np.ndarray, slide_ids: np.ndarray | None = None,
                 slide_names: Sequence[str] | None = None) -> dict[str, Any]:
    """Patch-level metrics, overall and per slide.

    Parameters
    ----------
    labels, scores : ndarray, shape (n,)
    slide_ids : ndarray of int, shape (n,), optional
        Index into ``slide_names`` for each patch.
    slide_names : sequence of str, optional

    Returns
    -------
    dict
        ``n, n_tumor, auc, youden_threshold, at_0.5, at_youden``, ``ci``
        (:func:`bootstrap_patch_ci` over slides when ``slide_ids`` is given;
        None with a single class) and ``per_slide`` (one entry per slide present: ``slide, n, n_tumor, auc``
        (NaN with a single class), ``at_0.5``).
    """
    y, s = _check_labels_scores(labels, scores, "patches")
    if y.size == 0:
        raise WsiheatError("patches: no patches to evaluate")
    yt = youden_threshold(y, s)
    rep: dict[str, Any] = {
        "n": int(y.size), "n_tumor": int(y.sum()),
        "auc": roc_auc(y, s),
        "youden_threshold": yt,
        "at_0.5": binary_metrics(y, s, 0.5),
        "at_youden": binary_metrics(y, s, yt) if not math.isnan(yt) else None,
        # 95 % intervals of the AUC and the balanced accuracy at 0.5, resampling slides when known
        "ci": bootstrap_patch_ci(y, s, slide_ids) if 0 < y.sum() < y.size else None,
    }
    if slide_ids is not None:
        slide_ids = np.asarray(slide_ids)
        per = []
        for sid in np.unique(slide_ids):
            m = slide_ids == sid
            name = slide_names[int(sid)] if slide_names is not None and 0 <= sid < len(slide_names) else str(sid)
            per.append({"slide": name, "n": int(m.sum()), "n_tumor": int(y[m].sum()),
                        "auc": roc_auc(y[m], s[m]), "at_0.5": binary_metrics(y[m], s[m], 0.5)})
        rep["per_slide"] = per
    return rep


def error_examples(labels: np.ndarray, scores: np.ndarray, k: int = 16,
                   threshold: float = 0.5) -> tuple[np.ndarray, np.ndarray]:
    """The most confident mistakes at a threshold.

    Parameters
    ----------
    labels, scores : ndarray, shape (n,)
    k : int
        At most this many of each kind.
    threshold : float
        A score at or above it is a tumor call.

    Returns
    -------
    false_positives, false_negatives : ndarray of int
        Row indices: normal rows called tumor, most probable first; tumor rows
        called normal, least probable first (ties by row order).
    """
    y, s = _check_labels_scores(labels, scores, "patches")
    if k < 0:
        raise ValueError(f"k must be >= 0, got {k}")
    fp = np.flatnonzero((y == 0) & (s >= threshold))
    fn = np.flatnonzero((y == 1) & (s < threshold))
    return fp[np.argsort(-s[fp], kind="stable")][:k], fn[np.argsort(s[fn], kind="stable")][:k]


def predict_patches(model: Any, patches_path: str | os.PathLike, batch_size: int = 64,
                    progress: bool = True, tta: bool = False) -> dict[str, np.ndarray]:
    """Run a model over a wsiheat HDF5 patches file, reading it in chunks.

    Parameters
    ----------
    model : keras.Model
        Takes uint8 ``(B, T, W, W, 3)`` exactly as the HDF5 ``images`` rows,
        returns ``(B, 1)`` tumor probabilities.
    patches_path : path-like
        HDF5 with ``images, labels, slide_ids, slides`` (and ``centers``).
    batch_size : int
        Windows per model call (and per HDF5 read).
    progress : bool
        Show a tqdm bar (on a terminal only).
    tta : bool
        Average over the 8 rotations/flips of each window (the same
        transform for every tower), as ``heatmap --tta`` does.

    Returns
    -------
    dict
        ``scores`` float64 (N,), ``labels`` uint8 (N,), ``slide_ids`` (N,),
        ``slides`` list of str, ``centers`` (N, 2) or None.
    """
    import h5py
    from tqdm import tqdm

    from .infer import dihedral

    path = Path(patches_path)
    if batch_size < 1:
        raise WsiheatError(f"batch size must be >= 1 (got {batch_size})")
    if not path.exists():
        raise WsiheatError(f"{path}: no such file")
    try:
        h5 = h5py.File(path, "r")
    except OSError:
        raise WsiheatError(f"{path}: not an HDF5 file") from None
    with h5:
        for key in ("images", "labels"):
            if key not in h5:
                raise WsiheatError(f"{path}: not a wsiheat patches file (no '{key}' dataset)")
        images = h5["images"]
        n = images.shape[0]
        if images.ndim != 5 or images.shape[-1] != 3:
            raise WsiheatError(f"{path}: 'images' has shape {images.shape}, expected (N, T, W, W, 3)")
        labels = np.asarray(h5["labels"][:]).astype(np.uint8).reshape(-1)
        if labels.shape[0] != n:
            raise WsiheatError(f"{path}: {labels.shape[0]} labels for {n} images")
        slide_ids = np.asarray(h5["slide_ids"][:]) if "slide_ids" in h5 else np.zeros(n, np.int32)
        slides = [v.decode("utf-8") if isinstance(v, bytes) else str(v) for v in h5["slides"][:]] \
            if "slides" in h5 else ["patches"]
        centers = np.asarray(h5["centers"][:]) if "centers" in h5 else None
        expected = tuple(images.shape[1:])
        mshape = getattr(model, "input_shape", None)
        if isinstance(mshape, tuple) and len(mshape) == 5:
            want = tuple(mshape[1:])
            if any(w is not None and w != e for w, e in zip(want, expected)):
                raise WsiheatError(f"{path}: windows of shape {expected} do not fit the model's input {want}")
        scores = np.empty(n, np.float64)
        bar = tqdm(total=n, desc="predict", unit="patch", disable=None if progress else True, smoothing=0.1)
        # read in multiples of the HDF5 chunk when possible
        for start in range(0, n, batch_size):
            stop = min(n, start + batch_size)
            x = images[start:stop]
            views = [dihedral(x, k, flip) for flip in (False, True) for k in range(4)] if tta else [x]
            out = sum(np.asarray(model.predict_on_batch(v), dtype=np.float64).reshape(stop - start, -1)[:, -1]
                      for v in views) / len(views)
            scores[start:stop] = out
            bar.update(stop - start)
        bar.close()
    if not np.isfinite(scores).all():
        raise WsiheatError(f"{path}: the model produced NaN or infinite scores")
    return {"scores": scores, "labels": labels, "slide_ids": slide_ids, "slides": slides, "centers": centers}


def evaluate_patches(model_path: str | os.PathLike, patches_path: str | os.PathLike, out_dir: str | os.PathLike,
                     batch_size: int = 64, progress: bool = True, tta: bool = False,
                     precision: str = "float32") -> dict[str, Any]:
    """``wsiheat evaluate patches``: predict, then write the patch report.

    ``precision``: the model's compute precision (:func:`wsiheat.model.load_model`).

    Writes ``patch_report.json``, ``patch_roc.png``, ``patch_per_slide.csv``,
    ``patch_predictions.csv`` (``index,slide,x,y,label,score``) and, when
    the model makes mistakes at 0.5, ``patch_errors.png`` (the 16 most
    confident false positives and false negatives, with slide and score)
    into ``out_dir``.

    Returns
    -------
    dict
        The report (as in :func:`patch_report`, plus file names).
    """
    from .model import load_model

    out = ensure_out_dir(out_dir)
    model, meta = load_model(model_path, precision=precision)
    pred = predict_patches(model, patches_path, batch_size=batch_size, progress=progress, tta=tta)
    rep = patch_report(pred["labels"], pred["scores"], pred["slide_ids"], pred["slides"])
    rep["tta"] = bool(tta)
    rep["model"] = str(model_path)
    rep["patches"] = str(patches_path)
    fpr, tpr, _ = roc_curve(pred["labels"], pred["scores"])
    files = {"report": "patch_report.json", "roc": "patch_roc.png", "per_slide": "patch_per_slide.csv",
             "predictions": "patch_predictions.csv"}
    rep["files"] = files
    if not math.isnan(rep["auc"]):
        plot_roc(out / files["roc"], fpr, tpr, f"Patch ROC (AUC {rep['auc']:.4f}, n={rep['n']})",
                 youden=rep["at_youden"])
    else:
        files.pop("roc")
    rows = [[p["slide"], p["n"], p["n_tumor"], _fmt(p["auc"]), _fmt(p["at_0.5"]["accuracy"]),
             _fmt(p["at_0.5"]["sensitivity"]), _fmt(p["at_0.5"]["specificity"])] for p in rep["per_slide"]]
    write_csv(out / files["per_slide"], ["slide", "n", "n_tumor", "auc", "accuracy", "sensitivity", "specificity"],
              rows)
    names = pred["slides"]
    centers = pred["centers"]
    prow = ([i, names[int(pred["slide_ids"][i])] if 0 <= pred["slide_ids"][i] < len(names) else pred["slide_ids"][i],
             int(centers[i, 0]) if centers is not None else "", int(centers[i, 1]) if centers is not None else "",
             int(pred["labels"][i]), repr(float(pred["scores"][i]))] for i in range(len(pred["scores"])))
    write_csv(out / files["predictions"], ["index", "slide", "x", "y", "label", "score"], prow)
    fp, fn = error_examples(pred["labels"], pred["scores"], k=16)
    if fp.size or fn.size:
        images = read_patch_rows(patches_path, np.concatenate([fp, fn]))

        def captions(rows):
            sids = pred["slide_ids"][rows]
            return [f"{names[int(d)] if 0 <= d < len(names) else d}\np = {pred['scores'][i]:.3f}"
                    for i, d in zip(rows, sids)]

        plot_gallery(out / "patch_errors.png", [
            (f"Most confident false positives (normal, p >= 0.5): {fp.size} of "
             f"{rep['at_0.5']['fp']}", images[:fp.size], captions(fp)),
            (f"Most confident false negatives (tumor, p < 0.5): {fn.size} of "
             f"{rep['at_0.5']['fn']}", images[fp.size:], captions(fn))])
        files["errors"] = "patch_errors.png"
        rep["errors_shown"] = {"false_positives": fp.tolist(), "false_negatives": fn.tolist()}
    write_json(out / files["report"], rep)
    return rep


def read_patch_rows(patches_path: str | os.PathLike, rows: np.ndarray) -> np.ndarray:
    """The ``images`` rows of an HDF5 patches file, in the order asked (uint8 (K, T, W, W, 3))."""
    import h5py

    rows = np.asarray(rows, np.int64)
    uniq, inverse = np.unique(rows, return_inverse=True)  # h5py reads increasing indices only
    try:
        with h5py.File(patches_path, "r") as h5:
            got = h5["images"][uniq] if uniq.size else np.zeros((0,) + h5["images"].shape[1:], np.uint8)
    except (OSError, KeyError) as exc:
        raise WsiheatError(f"{patches_path}: cannot read images ({exc})") from None
    return got[inverse]


# =====================================================================================
# Slide level
# =====================================================================================

_TUMOR_WORDS = {"1": 1, "tumor": 1, "tumour": 1, "positive": 1, "metastasis": 1, "metastases": 1,
                "0": 0, "normal": 0, "negative": 0}


def read_reference_csv(path: str | os.PathLike) -> dict[str, int]:
    """Read slide labels from a CSV ``slide,label[,...]`` (optional header).

    Labels may be 0/1 or words (``Tumor``/``Normal``, case-insensitive), so the
    CAMELYON16 ``reference.csv`` (``Test_001,Tumor,Macro,Box``) works as is.
    Slide names may carry an extension (``Test_001.tif``), which is dropped.
    """
    path = Path(path)
    rows = _read_csv_rows(path)
    labels: dict[str, int] = {}
    for lineno, row in rows:
        if len(row) < 2:
            raise WsiheatError(f"{path}:{lineno}: expected 'slide,label', got {','.join(row)!r}")
        name, lab = row[0].strip(), row[1].strip().lower()
        if lab not in _TUMOR_WORDS:
            if lineno == rows[0][0]:  # header
                continue
            raise WsiheatError(f"{path}:{lineno}: label {row[1]!r} is not 0/1 or tumor/normal")
        name = _slide_stem(name)
        if name in labels:
            raise WsiheatError(f"{path}:{lineno}: slide {name!r} listed twice")
        labels[name] = _TUMOR_WORDS[lab]
    if not labels:
        raise WsiheatError(f"{path}: no slide labels")
    return labels


#: Slide scores a heatmap JSON offers: the maximum probability (the design's), the top-k mean.
SLIDE_SCORES = ("score", "topk_mean")


def read_slide_scores(results: str | os.PathLike, score: str = "score") -> dict[str, float]:
    """Slide scores from a heatmap results folder or a ``slide,score`` CSV.

    In a folder, every ``*.json`` holding ``slide`` and ``score`` keys (the
    heatmap's per-slide JSON) is read; other JSON files are ignored.
    ``score`` names the JSON field used (:data:`SLIDE_SCORES`: ``score`` =
    maximum probability, ``topk_mean`` = mean of the k most probable cells).
    """
    if score not in SLIDE_SCORES:
        raise WsiheatError(f"slide score {score!r}: choose one of {', '.join(SLIDE_SCORES)}")
    results = Path(results)
    scores: dict[str, float] = {}
    if not results.exists():
        raise WsiheatError(f"{results}: no such file or folder")
    if results.is_dir():
        for meta in _read_result_jsons(results).values():
            if score not in meta:
                raise WsiheatError(f"{meta['_path']}: no {score!r} field (written by wsiheat heatmap)")
            scores[meta["slide"]] = _check_prob(meta[score], f"{meta['_path']}: {score}")
        if not scores:
            raise WsiheatError(f"{results}: no heatmap result JSON (with 'slide' and 'score') in this folder")
        return scores
    rows = _read_csv_rows(results)
    for lineno, row in rows:
        if len(row) < 2:
            raise WsiheatError(f"{results}:{lineno}: expected 'slide,score', got {','.join(row)!r}")
        try:
            val = float(row[1])
        except ValueError:
            if lineno == rows[0][0]:
                continue
            raise WsiheatError(f"{results}:{lineno}: score {row[1]!r} is not a number") from None
        name = _slide_stem(row[0].strip())
        if name in scores:
            raise WsiheatError(f"{results}:{lineno}: slide {name!r} listed twice")
        scores[name] = _check_prob(val, f"{results}:{lineno}: score")
    if not scores:
        raise WsiheatError(f"{results}: no slide scores")
    return scores


def slide_report(names: Sequence[str], labels: np.ndarray, scores: np.ndarray, n_boot: int = 1000,
                 seed: int = 0, confidence: float = 0.95) -> dict[str, Any]:
    """Slide-level ROC AUC with bootstrap interval and the per-slide table.

    Returns
    -------
    dict
        ``n, n_tumor, auc, auc_ci, youden_threshold, at_0.5, at_youden, slides``
        where ``slides`` is a list of ``{slide, score, label, rank}`` sorted by
        decreasing score (rank 1 = highest; ties broken by name).
    """
    y, s = _check_labels_scores(labels, scores, "slides")
    if len(names) != y.size:
        raise WsiheatError(f"slides: {len(names)} names for {y.size} scores")
    n1 = int(y.sum())
    if n1 == 0 or n1 == y.size:
        raise WsiheatError(f"slides: the reference has only {'tumor' if n1 else 'normal'} slides "
                           f"({y.size}); the slide AUC needs both classes")
    auc = roc_auc(y, s)
    yt = youden_threshold(y, s)
    order = sorted(range(y.size), key=lambda i: (-s[i], names[i]))
    table = [{"slide": names[i], "score": float(s[i]), "label": int(y[i]), "rank": r + 1}
             for r, i in enumerate(order)]
    return {"n": int(y.size), "n_tumor": n1, "auc": auc,
            "auc_ci": bootstrap_auc_ci(y, s, n_boot=n_boot, confidence=confidence, seed=seed),
            "youden_threshold": yt, "at_0.5": binary_metrics(y, s, 0.5), "at_youden": binary_metrics(y, s, yt),
            "slides": table}


def evaluate_slides(results: str | os.PathLike, out_dir: str | os.PathLike,
                    reference: str | os.PathLike | None = None,
                    ground_truth: Sequence[str | os.PathLike] | None = None,
                    n_boot: int = 1000, seed: int = 0, score: str = "score") -> dict[str, Any]:
    """``wsiheat evaluate slides``: slide-level AUC from heatmap results.

    Parameters
    ----------
    results : path-like
        Heatmap results folder (``NAME.json`` files) or a ``slide,score`` CSV.
    out_dir : path-like
        Report folder: ``slide_report.json``, ``slide_roc.png``, ``slide_table.csv``.
    reference : path-like, optional
        ``slide,label`` CSV.
    ground_truth : list of path-like, optional
        Ground-truth files or folders (``NAME.xml``, ``NAME.json``,
        ``NAME_Mask.tif``, ...); tumor when the ground truth marks any tumor.
        Exactly one of ``reference`` and ``ground_truth``.
    score : {"score", "topk_mean"}
        Which slide score of the heatmap JSON to rank by (default: the
        maximum probability).
    """
    if (reference is None) == (not ground_truth):
        raise WsiheatError("evaluate slides: give either a reference CSV or ground truth (exactly one)")
    results = Path(results)
    scores = read_slide_scores(results, score)
    if reference is not None:
        ref = read_reference_csv(reference)
        _match_names(scores.keys(), ref.keys(), str(results), str(reference))
    else:
        from .annotations import load_ground_truth
        gt_files = find_ground_truth(ground_truth)
        _match_names(scores.keys(), gt_files.keys(), str(results), "ground truth")
        dims = {n: m.get("dimensions") for n, m in _read_result_jsons(results).items()} if results.is_dir() else {}
        ref = {}
        for name, p in gt_files.items():
            d = dims.get(name)
            gt = load_ground_truth(p, tuple(int(v) for v in d) if d else None)
            ref[name] = int(gt.has_tumor)
    names = sorted(scores)
    rep = slide_report(names, np.array([ref[n] for n in names]), np.array([scores[n] for n in names]),
                       n_boot=n_boot, seed=seed)
    rep["score_field"] = score
    out = ensure_out_dir(out_dir)
    files = {"report": "slide_report.json", "roc": "slide_roc.png", "table": "slide_table.csv"}
    rep["files"] = files
    rep["results"] = str(results)
    rep["reference"] = str(reference) if reference is not None else [str(g) for g in ground_truth]
    fpr, tpr, _ = roc_curve(np.array([ref[n] for n in names]), np.array([scores[n] for n in names]))
    ci = rep["auc_ci"]
    plot_roc(out / files["roc"], fpr, tpr,
             f"Slide ROC (AUC {rep['auc']:.4f}, 95% CI {ci['low']:.3f}-{ci['high']:.3f}, n={rep['n']})",
             youden=rep["at_youden"])
    write_csv(out / files["table"], ["rank", "slide", "score", "label"],
              [[r["rank"], r["slide"], repr(r["score"]), r["label"]] for r in rep["slides"]])
    write_json(out / files["report"], rep)
    return rep


# =====================================================================================
# Lesion level: CAMELYON16 FROC
# =====================================================================================

def margin_threshold(mpp: float = CAMELYON16_MPP, level: int = EVALUATION_MASK_LEVEL) -> float:
    """``75 / (mpp * 2**level * 2)``: the distance threshold (level pixels) of computeEvaluationMask."""
    return MARGIN_UM / (mpp * 2 ** level * 2)


def itc_threshold(mpp: float = CAMELYON16_MPP, level: int = EVALUATION_MASK_LEVEL) -> float:
    """``275 / (mpp * 2**level)``: the major-axis threshold (level pixels) of computeITCList."""
    return ITC_UM / (mpp * 2 ** level)


def _check_mpp_level(mpp: float, level: int) -> None:
    if not (isinstance(mpp, (int, float)) and math.isfinite(mpp) and mpp > 0):
        raise WsiheatError(f"level-0 pixel size must be a positive number of µm (got {mpp!r})")
    if not (isinstance(level, (int, np.integer)) and 0 <= level <= 16):
        raise WsiheatError(f"evaluation level must be an integer in 0..16 (got {level!r})")


def evaluation_mask(tumor: np.ndarray, mpp: float = CAMELYON16_MPP, level: int = EVALUATION_MASK_LEVEL) -> np.ndarray:
    """computeEvaluationMask on a tumor mask already at the evaluation level.

    Parameters
    ----------
    tumor : ndarray of bool, shape (h, w)
        Tumor pixels at ``level`` (nonzero = tumor).
    mpp : float
        Level-0 pixel size in µm.
    level : int
        Evaluation level (downsample ``2**level``).

    Returns
    -------
    ndarray of int32, shape (h, w)
        Lesion labels 1..n (8-connectivity), 0 outside: tumor grown by
        ``distance < 75 / (mpp * 2**level * 2)`` level pixels, holes filled.
    """
    _check_mpp_level(mpp, level)
    tumor = np.asarray(tumor) != 0
    if tumor.ndim != 2:
        raise WsiheatError(f"evaluation mask: tumor mask must be 2-D (got shape {tumor.shape})")
    labels = np.zeros(tumor.shape, np.int32)
    crop, (r0, c0) = evaluation_mask_cropped(tumor, mpp, level)
    labels[r0:r0 + crop.shape[0], c0:c0 + crop.shape[1]] = crop
    return labels


def evaluation_mask_cropped(tumor: np.ndarray, mpp: float = CAMELYON16_MPP,
                            level: int = EVALUATION_MASK_LEVEL) -> tuple[np.ndarray, tuple[int, int]]:
    """:func:`evaluation_mask` restricted to the tumor's bounding box plus a margin.

    Crops to the tumor's bounding box plus a margin beyond the growth radius
    and a one-pixel background frame (clipped to the image): the distances
    below the threshold, the holes (background not connected to the frame) and
    the label numbering (raster order of each component's first pixel) are the
    same as on the whole image; outside the crop every label is 0.

    Returns
    -------
    labels : ndarray of int32
        The labels inside the crop (shape (0, 0) when there is no tumor).
    origin : (int, int)
        (row, column) of the crop's top-left in the full mask.
    """
    from scipy import ndimage
    from skimage import measure

    tumor = np.asarray(tumor) != 0
    rows = np.flatnonzero(tumor.any(axis=1))
    if rows.size == 0:
        return np.zeros((0, 0), np.int32), (0, 0)
    cols = np.flatnonzero(tumor.any(axis=0))
    thr = margin_threshold(mpp, level)
    m = int(math.ceil(thr)) + 2
    r0, r1 = max(0, rows[0] - m), min(tumor.shape[0], rows[-1] + m + 1)
    c0, c1 = max(0, cols[0] - m), min(tumor.shape[1], cols[-1] + m + 1)
    crop = tumor[r0:r1, c0:c1]
    distance = ndimage.distance_transform_edt(~crop)
    binary = distance < thr
    filled = ndimage.binary_fill_holes(binary)
    return measure.label(filled, connectivity=2).astype(np.int32), (int(r0), int(c0))


def itc_labels(labels: np.ndarray, mpp: float = CAMELYON16_MPP, level: int = EVALUATION_MASK_LEVEL) -> list[int]:
    """computeITCList: labels whose regionprops major axis is below ``275 / (mpp * 2**level)``.

    Parameters
    ----------
    labels : ndarray of int, shape (h, w)
        From :func:`evaluation_mask`.

    Returns
    -------
    list of int
        ITC labels, ascending.
    """
    from skimage import measure

    _check_mpp_level(mpp, level)
    thr = itc_threshold(mpp, level)
    rows = np.flatnonzero(np.asarray(labels).any(axis=1))
    if rows.size == 0:
        return []
    cols = np.flatnonzero(labels.any(axis=0))
    sub = labels[rows[0]:rows[-1] + 1, cols[0]:cols[-1] + 1]  # regionprops moments are translation invariant
    return [int(p.label) for p in measure.regionprops(sub) if p.axis_major_length < thr]


@dataclass
class SlideMatch:
    """Result of matching one slide's detections (compute_FP_TP_Probs)."""

    name: str
    fp_probs: np.ndarray  # probabilities of false-positive detections
    tp_probs: np.ndarray  # one per label 1..max_label (ITC and missed lesions: 0)
    num_tumors: int  # max_label - number of ITC labels
    itc: list[int] = field(default_factory=list)
    hit_labels: np.ndarray | None = None  # label under each detection (0 = FP; None on normal slides)


def match_detections(probs: np.ndarray, xs: np.ndarray, ys: np.ndarray, labels: np.ndarray | None,
                     itc: Iterable[int] = (), level: int = EVALUATION_MASK_LEVEL, name: str = "",
                     origin: tuple[int, int] = (0, 0), shape: tuple[int, int] | None = None) -> SlideMatch:
    """compute_FP_TP_Probs: split one slide's detections into FPs and per-lesion TP scores.

    Parameters
    ----------
    probs : ndarray, shape (n,)
        Detection probabilities.
    xs, ys : ndarray of int, shape (n,)
        Level-0 pixel coordinates.
    labels : ndarray of int or None
        Evaluation mask at ``level`` (None for a slide without tumor: every
        detection is a false positive).
    itc : iterable of int
        ITC labels (hits on them are ignored).
    level : int
        Lookup at ``labels[y // 2**level, x // 2**level]``.
    origin, shape : optional
        When ``labels`` is a crop (:func:`evaluation_mask_cropped`): its
        (row, column) in the full mask, and the full mask's (rows, columns);
        detections inside the full mask but outside the crop are on label 0.

    Returns
    -------
    SlideMatch
    """
    probs = np.asarray(probs, np.float64).reshape(-1)
    xs = np.asarray(xs, np.int64).reshape(-1)
    ys = np.asarray(ys, np.int64).reshape(-1)
    itc = sorted(int(i) for i in itc)
    if labels is None:
        return SlideMatch(name, probs.copy(), np.zeros(0, np.float64), 0, [], None)
    labels = np.asarray(labels)
    max_label = int(labels.max()) if labels.size else 0
    d = 2 ** level
    full = tuple(shape) if shape is not None else labels.shape
    r, c = ys // d, xs // d
    outside = (r < 0) | (c < 0) | (r >= full[0]) | (c >= full[1])
    if outside.any():
        i = int(np.flatnonzero(outside)[0])
        raise WsiheatError(f"{name}: detection at ({xs[i]}, {ys[i]}) lies outside the evaluation mask "
                           f"({full[1] * d}x{full[0] * d} level-0 pixels)")
    r, c = r - origin[0], c - origin[1]
    in_crop = (r >= 0) & (c >= 0) & (r < labels.shape[0]) & (c < labels.shape[1])
    hit = np.zeros(probs.size, np.int64)
    hit[in_crop] = labels[r[in_crop], c[in_crop]]
    fp = probs[hit == 0]
    tp = np.zeros(max_label, np.float64)
    on_lesion = (hit > 0) & ~np.isin(hit, itc)
    np.maximum.at(tp, hit[on_lesion] - 1, probs[on_lesion])
    return SlideMatch(name, fp, tp, max_label - len(itc), itc, hit)


def froc_curve(matches: Sequence[SlideMatch]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """computeFROC: pooled FPs per slide and sensitivity at every threshold.

    Returns
    -------
    fps_per_slide, sensitivity, thresholds : ndarray
        One point per threshold (the sorted unique pooled FP and TP
        probabilities except the lowest), ascending thresholds, plus the final
        point (0, 0) whose threshold is ``+inf``.
    """
    if not matches:
        raise WsiheatError("FROC: no slides")
    total = sum(m.num_tumors for m in matches)
    if total == 0:
        raise WsiheatError("FROC: the ground truth holds no lesion (apart from isolated tumor cells); "
                           "sensitivity is undefined")
    fps = np.sort(np.concatenate([m.fp_probs for m in matches]))
    tps = np.sort(np.concatenate([m.tp_probs for m in matches]))
    all_probs = np.unique(np.concatenate([fps, tps]))
    thresholds = all_probs[1:]
    n_fp = fps.size - np.searchsorted(fps, thresholds, side="left")  # count >= t
    n_tp = tps.size - np.searchsorted(tps, thresholds, side="left")
    fp_rate = np.append(n_fp, 0) / float(len(matches))
    sens = np.append(n_tp, 0) / float(total)
    return fp_rate, sens, np.append(thresholds, np.inf)


def froc_score(fps_per_slide: np.ndarray, sensitivity: np.ndarray,
               eval_fps: Sequence[float] = FROC_EVAL_FPS) -> tuple[float, np.ndarray]:
    """Mean sensitivity at the given FPs per slide: ``np.interp(eval, fps[::-1], sens[::-1])``.

    Returns
    -------
    score : float
    sensitivities : ndarray, shape (len(eval_fps),)
    """
    sens_at = np.interp(np.asarray(eval_fps, np.float64), np.asarray(fps_per_slide)[::-1],
                        np.asarray(sensitivity)[::-1])
    return float(np.mean(sens_at)), sens_at


def bootstrap_froc_ci(matches: Sequence[SlideMatch], n_boot: int = 1000, confidence: float = 0.95,
                      seed: int = 0, eval_fps: Sequence[float] = FROC_EVAL_FPS) -> dict[str, Any]:
    """Percentile bootstrap interval of the FROC score, resampling slides.

    Each resample draws ``len(matches)`` slides with replacement (a slide
    drawn twice counts twice: its lesions, its false positives and the
    slide count) and recomputes :func:`froc_curve` and :func:`froc_score`.
    Slides are the unit because detections and lesions of one slide are
    not independent. Slides made from the same patients (mosaics) are not
    independent either; the interval then is too narrow, if anything.

    Parameters
    ----------
    matches : sequence of SlideMatch
        One per slide (:attr:`FrocResult.matches`).
    n_boot, confidence, seed
        As for :func:`bootstrap_auc_ci`.
    eval_fps : sequence of float
        As for :func:`froc_score`.

    Returns
    -------
    dict
        ``low, high, confidence, n_boot, n_used, seed`` (resamples without
        a lesion are skipped); low/high NaN when no resample was usable.
    """
    _check_bootstrap(n_boot, confidence)
    if not matches:
        raise WsiheatError("FROC: no slides")
    rng = np.random.default_rng(seed)
    n = len(matches)
    tumors = np.array([m.num_tumors for m in matches])
    scores = []
    for _ in range(n_boot):
        idx = rng.integers(0, n, n)
        if tumors[idx].sum() == 0:
            continue
        fps, sens, _ = froc_curve([matches[i] for i in idx])
        scores.append(froc_score(fps, sens, eval_fps)[0])
    lo, hi = _percentile_interval(scores, confidence)
    return {"low": lo, "high": hi, "confidence": confidence, "n_boot": n_boot, "n_used": len(scores), "seed": seed}


def read_detections(path: str | os.PathLike, allow_empty: bool = False) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Read a CAMELYON16 detection CSV: rows ``prob,x,y`` (level-0 pixels), optional header.

    Coordinates are truncated to integers (as ``int()`` in the official
    reader, which only accepts integers). Empty lines are skipped.

    Raises
    ------
    WsiheatError
        Malformed rows, NaN or out-of-range probabilities, negative
        coordinates, or an empty file (unless ``allow_empty``).
    """
    path = Path(path)
    probs, xs, ys = [], [], []
    for k, (lineno, row) in enumerate(_read_csv_rows(path)):
        elems = [e.strip() for e in row]
        line = ",".join(row)
        if k == 0 and elems[:3] == ["prob", "x", "y"]:
            continue
        if len(elems) < 3:
            raise WsiheatError(f"{path}:{lineno}: expected 'prob,x,y', got {line!r}")
        try:
            p, x, y = float(elems[0]), float(elems[1]), float(elems[2])
        except ValueError:
            raise WsiheatError(f"{path}:{lineno}: expected numbers 'prob,x,y', got {line!r}") from None
        if not (p >= 0.0 and p <= 1.0):  # also catches NaN
            raise WsiheatError(f"{path}:{lineno}: probability {elems[0]} is not in [0, 1]")
        if not (math.isfinite(x) and math.isfinite(y)) or x < 0 or y < 0:
            raise WsiheatError(f"{path}:{lineno}: coordinates ({elems[1]}, {elems[2]}) are not level-0 pixels "
                               f"inside the slide")
        probs.append(p)
        xs.append(int(x))
        ys.append(int(y))
    if not probs and not allow_empty:
        raise WsiheatError(f"{path}: no detections (empty file; pass --allow-empty to count it as a slide "
                           f"without detections)")
    return np.asarray(probs, np.float64), np.asarray(xs, np.int64), np.asarray(ys, np.int64)


def find_detection_files(results: str | os.PathLike) -> dict[str, Path]:
    """Map slide name -> detection CSV in a results folder.

    ``NAME_lesions.csv`` (the heatmap output) when the folder has any;
    otherwise every ``NAME.csv`` (the CAMELYON16 submission layout).
    A single CSV file is also accepted (name = its stem without ``_lesions``).
    """
    results = Path(results)
    if not results.exists():
        raise WsiheatError(f"{results}: no such file or folder")
    if results.is_file():
        return {_strip(results.name, "_lesions.csv", ".csv"): results}
    lesion_files = sorted(results.glob("*_lesions.csv"))
    files = lesion_files or sorted(results.glob("*.csv"))
    out = {_strip(p.name, "_lesions.csv", ".csv"): p for p in files if p.is_file()}
    if not out:
        raise WsiheatError(f"{results}: no detection CSV (NAME_lesions.csv or NAME.csv) in this folder")
    return out


def find_ground_truth(paths: Sequence[str | os.PathLike]) -> dict[str, Path]:
    """Map slide name -> ground-truth file from files and folders.

    In a folder, files ending in .tif/.tiff/.png/.xml/.json/.geojson are taken;
    the name is the file stem without a ``_Mask``/``_mask`` suffix (CAMELYON16
    masks are ``Tumor_001_Mask.tif``). Two files for one slide are refused.
    """
    found: dict[str, Path] = {}
    for p in paths:
        p = Path(p)
        if not p.exists():
            raise WsiheatError(f"{p}: no such file or folder")
        cands = sorted(q for q in p.iterdir() if q.is_file() and not q.name.startswith(".")
                       and q.suffix.lower() in GROUND_TRUTH_SUFFIXES) if p.is_dir() else [p]
        for q in cands:
            name = re.sub(r"_mask$", "", q.name[: -len(q.suffix)] if q.suffix else q.name, flags=re.I)
            if name in found and found[name] != q:
                raise WsiheatError(f"{q}: second ground-truth file for slide {name!r} (also {found[name]})")
            found[name] = q
        if p.is_dir() and not cands:
            raise WsiheatError(f"{p}: no ground-truth file (.tif, .png, .xml, .json, .geojson) in this folder")
    return found


def lesion_table(name: str, labels: np.ndarray, match: SlideMatch, mpp: float, level: int,
                 origin: tuple[int, int] = (0, 0)) -> list[dict[str, Any]]:
    """One row per lesion: label, ITC flag, centroid (level-0), major axis (µm), best prob."""
    from skimage import measure

    d = 2 ** level
    itc = set(match.itc)
    rows = []
    for p in measure.regionprops(labels):
        cy, cx = p.centroid
        cy, cx = cy + origin[0], cx + origin[1]
        rows.append({"slide": name, "label": int(p.label), "itc": p.label in itc,
                     "x": int(round((cx + 0.5) * d)), "y": int(round((cy + 0.5) * d)),
                     "major_axis_um": float(p.axis_major_length * d * mpp),
                     "area_um2": float(p.area * (d * mpp) ** 2),
                     "prob": float(match.tp_probs[p.label - 1]) if p.label not in itc else None})
    return rows


@dataclass
class FrocResult:
    """Everything :func:`evaluate_froc` computes."""

    score: float
    sensitivities: np.ndarray
    eval_fps: tuple
    fps_per_slide: np.ndarray
    sensitivity: np.ndarray
    thresholds: np.ndarray
    matches: list[SlideMatch]
    lesions: list[dict[str, Any]]


def froc_from_arrays(detections: dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]],
                     tumor_masks: dict[str, np.ndarray | None], mpp: float = CAMELYON16_MPP,
                     level: int = EVALUATION_MASK_LEVEL, eval_fps: Sequence[float] = FROC_EVAL_FPS) -> FrocResult:
    """The whole FROC from detections and level-``level`` tumor masks.

    Parameters
    ----------
    detections : dict
        slide -> (probs, xs, ys), level-0 integer coordinates.
    tumor_masks : dict
        slide -> boolean tumor mask at ``level`` (covering the slide), or None
        for a slide without tumor. Same keys as ``detections``.
    """
    _check_mpp_level(mpp, level)
    _match_names(detections.keys(), tumor_masks.keys(), "detections", "ground truth")
    matches, lesions = [], []
    for name in sorted(detections):
        probs, xs, ys = detections[name]
        tumor = tumor_masks[name]
        if tumor is None or not np.asarray(tumor).any():
            if tumor is not None:
                _check_inside(name, xs, ys, np.asarray(tumor).shape, level)
            matches.append(match_detections(probs, xs, ys, None, name=name))
            continue
        tumor = np.asarray(tumor)
        labels, origin = evaluation_mask_cropped(tumor, mpp, level)
        itc = itc_labels(labels, mpp, level)
        m = match_detections(probs, xs, ys, labels, itc, level, name=name, origin=origin, shape=tumor.shape)
        matches.append(m)
        lesions.extend(lesion_table(name, labels, m, mpp, level, origin))
    fps, sens, thr = froc_curve(matches)
    score, sens_at = froc_score(fps, sens, eval_fps)
    return FrocResult(score, sens_at, tuple(eval_fps), fps, sens, thr, matches, lesions)


def froc_tumor_mask(gt: Any, slide_dimensions: tuple[int, int], level: int = EVALUATION_MASK_LEVEL,
                    where: str | os.PathLike = "ground truth") -> np.ndarray | None:
    """The level-``level`` tumor mask of one slide for :func:`froc_from_arrays`.

    Parameters
    ----------
    gt : GroundTruth
        From :func:`wsiheat.annotations.load_ground_truth`.
    slide_dimensions : (int, int)
        Level-0 width and height of the slide.
    level : int
        Mask level (downsample ``2**level``).
    where : path-like
        Named in errors.

    Returns
    -------
    ndarray of bool or None
        ``(ceil(H / 2**level), ceil(W / 2**level))``; None when ``gt`` marks
        no tumor.
    """
    if not gt.has_tumor:
        return None
    W, H = (int(v) for v in slide_dimensions)
    d = 2 ** level
    ew, eh = gt.extent
    if ew > math.ceil(W / d) * d or eh > math.ceil(H / d) * d:
        raise WsiheatError(f"{where}: ground truth covers {ew}x{eh} level-0 pixels, larger than the "
                           f"slide's {W}x{H}")
    return gt.tumor_mask(0, 0, math.ceil(W / d), math.ceil(H / d), d)


def evaluate_froc(results: str | os.PathLike, ground_truth: Sequence[str | os.PathLike],
                  out_dir: str | os.PathLike, reference: str | os.PathLike | None = None,
                  mpp: float = CAMELYON16_MPP, level: int = EVALUATION_MASK_LEVEL, allow_empty: bool = False,
                  progress: bool = True) -> dict[str, Any]:
    """``wsiheat evaluate froc``: the CAMELYON16 lesion-level FROC.

    Parameters
    ----------
    results : path-like
        Folder of detection CSVs (``NAME_lesions.csv``, else ``NAME.csv``) with
        the heatmap ``NAME.json`` beside them when available (its
        ``dimensions`` give the slide size), or one CSV.
    ground_truth : list of path-like
        Ground-truth files/folders (see :func:`find_ground_truth`).
    out_dir : path-like
        Report folder: ``froc_report.json``, ``froc.png``, ``froc_curve.csv``,
        ``froc_lesions.csv``.
    reference : path-like, optional
        ``slide,label`` CSV: slides labeled normal need no ground-truth file.
    mpp : float
        Level-0 pixel size in µm (CAMELYON16: 0.243).
    allow_empty : bool
        Count an empty detection file as a slide without detections.

    Every detection slide needs ground truth (or a normal label in
    ``reference``), and every ground-truth / reference slide needs detections.
    """
    from tqdm import tqdm

    from .annotations import load_ground_truth

    _check_mpp_level(mpp, level)
    results = Path(results)
    det_files = find_detection_files(results)
    gt_files = find_ground_truth(ground_truth) if ground_truth else {}
    ref = read_reference_csv(reference) if reference is not None else None
    gt_where = ", ".join(str(g) for g in ground_truth) if ground_truth else "ground truth"
    if ref is None:
        _match_names(det_files.keys(), gt_files.keys(), str(results), gt_where)
    else:
        _match_names(det_files.keys(), ref.keys(), str(results), str(reference))
        extra = sorted(set(gt_files) - set(ref))
        if extra:
            raise WsiheatError(f"{gt_where}: ground truth for {_names(extra)} which {reference} does not list")
        missing = sorted(n for n, lab in ref.items() if lab == 1 and n not in gt_files)
        if missing:
            raise WsiheatError(f"{gt_where}: no ground truth for tumor slide(s) {_names(missing)} "
                               f"(labeled tumor in {reference})")
    metas = _read_result_jsons(results) if results.is_dir() else {}
    detections, masks = {}, {}
    for name in tqdm(sorted(det_files), desc="FROC", unit="slide", disable=None if progress else True):
        # an empty CSV is a legitimate "no lesion" when wsiheat heatmap wrote it and says so
        no_lesions = metas.get(name, {}).get("lesions") == 0
        probs, xs, ys = read_detections(det_files[name], allow_empty=allow_empty or no_lesions)
        detections[name] = (probs, xs, ys)
        dims = metas.get(name, {}).get("dimensions")
        if dims is not None:
            try:
                W, H = int(dims[0]), int(dims[1])
            except (TypeError, ValueError, IndexError):
                raise WsiheatError(f"{metas[name]['_path']}: 'dimensions' is not [width, height]") from None
            if xs.size and (xs.max() >= W or ys.max() >= H):
                i = int(np.argmax((xs >= W) | (ys >= H)))
                raise WsiheatError(f"{det_files[name]}: detection at ({xs[i]}, {ys[i]}) is outside the "
                                   f"slide's {W}x{H} level-0 pixels")
        gt_path = gt_files.get(name)
        if gt_path is None:
            masks[name] = None
            continue
        gt = load_ground_truth(gt_path, (W, H) if dims is not None else None)
        if ref is not None and ref[name] == 0 and gt.has_tumor:
            raise WsiheatError(f"{gt_path}: marks tumor but {reference} labels {name} normal")
        if ref is not None and ref[name] == 1 and not gt.has_tumor:
            raise WsiheatError(f"{gt_path}: marks no tumor but {reference} labels {name} tumor")
        if dims is None and gt.has_tumor:
            ew, eh = gt.extent
            W = max(int(ew), int(xs.max()) + 1 if xs.size else 0)
            H = max(int(eh), int(ys.max()) + 1 if ys.size else 0)
        masks[name] = froc_tumor_mask(gt, (W, H), level, gt_path)
    res = froc_from_arrays(detections, masks, mpp, level)
    out = ensure_out_dir(out_dir)
    files = {"report": "froc_report.json", "plot": "froc.png", "curve": "froc_curve.csv",
             "lesions": "froc_lesions.csv"}
    per_slide = []
    for m in res.matches:
        n_hit = int((m.tp_probs > 0).sum()) if m.tp_probs.size else 0
        per_slide.append({"slide": m.name, "tumor": m.hit_labels is not None,
                          "detections": int(detections[m.name][0].size), "false_positives": int(m.fp_probs.size),
                          "lesions": m.num_tumors, "itc": len(m.itc), "lesions_hit": n_hit})
    rep = {
        "froc_score": res.score,
        "froc_ci": bootstrap_froc_ci(res.matches),
        "sensitivity_at": {str(f): float(s) for f, s in zip(res.eval_fps, res.sensitivities)},
        "n_slides": len(res.matches),
        "n_tumor_slides": sum(1 for m in res.matches if m.hit_labels is not None),
        "n_lesions": int(sum(m.num_tumors for m in res.matches)),
        "n_itc": int(sum(len(m.itc) for m in res.matches)),
        "mpp": mpp, "level": level,
        "margin_threshold_px": margin_threshold(mpp, level), "itc_threshold_px": itc_threshold(mpp, level),
        "results": str(results), "ground_truth": [str(g) for g in ground_truth] if ground_truth else [],
        "reference": str(reference) if reference is not None else None,
        "per_slide": per_slide, "files": files,
    }
    plot_froc(out / files["plot"], res.fps_per_slide, res.sensitivity, res.eval_fps, res.sensitivities, res.score)
    write_csv(out / files["curve"], ["threshold", "fps_per_slide", "sensitivity"],
              [[repr(float(t)), repr(float(f)), repr(float(s))]
               for t, f, s in zip(res.thresholds, res.fps_per_slide, res.sensitivity)])
    write_csv(out / files["lesions"], ["slide", "label", "itc", "x", "y", "major_axis_um", "area_um2", "prob"],
              [[r["slide"], r["label"], int(r["itc"]), r["x"], r["y"], f"{r['major_axis_um']:.1f}",
                f"{r['area_um2']:.0f}", "" if r["prob"] is None else repr(r["prob"])] for r in res.lesions])
    write_json(out / files["report"], rep)
    return rep


# =====================================================================================
# Post-processing choice (on validation slides)
# =====================================================================================

def postprocess_scores(probabilities: np.ndarray, tissue: np.ndarray, cell_size: float,
                       origin: tuple[float, float], smooth: float, lesion_threshold: float,
                       nms_radius_cells: float, scorer: Any = None
                       ) -> tuple[float, tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """Slide score and lesion detections of one raw map, as ``wsiheat heatmap`` makes them.

    Parameters
    ----------
    scorer : wsiheat.lesionmap.LesionScorer, optional
        Use its lesion map instead of the map smoothed with ``smooth``
        (``wsiheat heatmap --lesion-scorer``).

    Returns
    -------
    score : float
        Maximum of the lesion map (smoothed or scorer's) over tissue (0 without tissue).
    detections : (probs, xs, ys)
        Lesion points, level-0 integer coordinates (as in ``NAME_lesions.csv``).
    """
    from .infer import lesion_map, lesions_from_heatmap

    tissue = np.asarray(tissue, bool)
    sm = lesion_map(probabilities, tissue, smooth, scorer)
    les = lesions_from_heatmap(sm, tissue, cell_size, lesion_threshold, nms_radius_cells * cell_size, origin)
    score = float(sm[tissue].max()) if tissue.any() else 0.0
    # as written to NAME_lesions.csv (probabilities to 6 decimals) and read back by evaluate froc
    probs = np.array([float(f"{p:.6f}") for p in les[:, 0]], np.float64)
    xy = np.round(les[:, 1:]).astype(np.int64)
    return score, (probs, xy[:, 0], xy[:, 1])


def load_maps_and_masks(results: str | os.PathLike, ground_truth: Sequence[str | os.PathLike],
                        reference: str | os.PathLike | None = None, level: int = EVALUATION_MASK_LEVEL,
                        progress: bool = True) -> tuple[list[str], dict[str, Any], dict[str, np.ndarray | None]]:
    """The raw maps of a heatmap folder and each slide's level-``level`` tumor mask.

    Returns
    -------
    names : list of str
        Sorted slide names.
    maps : dict
        name -> :class:`wsiheat.infer.Heatmap`.
    masks : dict
        name -> tumor mask (:func:`froc_tumor_mask`), None for a normal slide.
    """
    from tqdm import tqdm

    from .annotations import load_ground_truth
    from .infer import read_heatmap

    results = Path(results)
    if not results.is_dir():
        raise WsiheatError(f"{results}: not a folder of heatmap outputs (NAME.h5)")
    files = {p.stem: p for p in sorted(results.glob("*.h5"))}
    if not files:
        raise WsiheatError(f"{results}: no raw heatmap NAME.h5 in this folder")
    gt_files = find_ground_truth(ground_truth) if ground_truth else {}
    ref = read_reference_csv(reference) if reference is not None else None
    gt_where = ", ".join(str(g) for g in ground_truth) if ground_truth else "ground truth"
    extra = sorted(set(gt_files) - set(files))
    if extra:
        raise WsiheatError(f"{gt_where}: ground truth for {_names(extra)} which {results} has no heatmap for")
    maps, masks = {}, {}
    for name in tqdm(sorted(files), desc="read heatmaps", unit="slide", disable=None if progress else True):
        hm = read_heatmap(files[name])
        try:
            W, H = (int(v) for v in hm.attrs["slide_dimensions"])
        except (KeyError, TypeError, ValueError):
            raise WsiheatError(f"{files[name]}: no slide_dimensions attribute (not written by wsiheat "
                               f"heatmap?)") from None
        if name in gt_files:
            gt = load_ground_truth(gt_files[name], (W, H))
            masks[name] = froc_tumor_mask(gt, (W, H), level, gt_files[name])
        elif ref is not None and ref.get(name) == 0:
            masks[name] = None
        else:
            raise WsiheatError(f"{gt_where}: no ground truth for slide {name!r} ({files[name]})"
                               + ("" if ref is None else f" and {reference} does not label it normal"))
        if ref is not None and name in ref and ref[name] != int(masks[name] is not None):
            raise WsiheatError(f"{reference}: labels {name} {'tumor' if ref[name] else 'normal'} but its ground "
                               f"truth says otherwise")
        maps[name] = hm
    return sorted(maps), maps, masks


def tumor_cells(heatmap: Any, mask: np.ndarray | None, level: int = EVALUATION_MASK_LEVEL) -> np.ndarray:
    """Cells of a heatmap whose centre lies in tumor.

    Parameters
    ----------
    heatmap : wsiheat.infer.Heatmap
    mask : ndarray of bool or None
        Level-``level`` tumor mask of the slide (None: no tumor).

    Returns
    -------
    ndarray of bool, the heatmap's shape
    """
    shape = np.asarray(heatmap.probabilities).shape
    if mask is None:
        return np.zeros(shape, bool)
    mask = np.asarray(mask, bool)
    rows, cols = np.mgrid[0:shape[0], 0:shape[1]]
    xy = heatmap.centers(rows.ravel(), cols.ravel()) / 2 ** level
    x, y = np.floor(xy[:, 0]).astype(np.int64), np.floor(xy[:, 1]).astype(np.int64)
    inside = (x >= 0) & (y >= 0) & (x < mask.shape[1]) & (y < mask.shape[0])
    out = np.zeros(len(x), bool)
    out[inside] = mask[y[inside], x[inside]]
    return out.reshape(shape)


def fit_scorer(results: str | os.PathLike, ground_truth: Sequence[str | os.PathLike],
               out_path: str | os.PathLike, reference: str | os.PathLike | None = None,
               mpp: float = CAMELYON16_MPP, level: int = EVALUATION_MASK_LEVEL, c: float = 1.0,
               smooth: float = 0.75, lesion_threshold: float = 0.5, nms_radius: float = 4.0,
               progress: bool = True) -> dict[str, Any]:
    """``wsiheat evaluate fit-scorer``: fit a lesion scorer on VALIDATION heatmaps.

    Fits :func:`wsiheat.lesionmap.fit_lesion_scorer` on every tissue cell of
    the raw maps ``NAME.h5`` in ``results`` (label: the cell's centre lies in
    the slide's tumor mask), writes it to ``out_path`` (JSON) and compares
    it with the smoothed map on the same slides (slide AUC and FROC, with
    ``lesion_threshold`` and ``nms_radius`` cells). Those figures are on the
    fitting slides: check the scorer on other slides (``evaluate tune
    --lesion-scorer`` or ``heatmap --lesion-scorer`` then ``evaluate``).

    Returns
    -------
    dict
        ``scorer`` (the file's content), ``n_slides``, ``n_tumor_slides``,
        ``fitting_slides``: {``smoothed``: {slide_auc, froc}, ``scorer``: {...}}.
    """
    from .lesionmap import fit_lesion_scorer, save_scorer

    _check_mpp_level(mpp, level)
    names, maps, masks = load_maps_and_masks(results, ground_truth, reference, level, progress)
    models = sorted({str(maps[n].attrs.get("model", "")) for n in names})
    fitted = {"results": str(results), "slides": len(names),
              "tumor_slides": sum(masks[n] is not None for n in names),
              "heatmap_models": models, "tta": sorted({bool(maps[n].attrs.get("tta", False)) for n in names}),
              "level": level}
    try:
        scorer = fit_lesion_scorer([(maps[n].probabilities, maps[n].tissue, tumor_cells(maps[n], masks[n], level))
                                    for n in names], c=c, fitted=fitted)
    except ValueError as exc:
        raise WsiheatError(f"{results}: cannot fit a lesion scorer ({exc})") from None
    labels = np.array([int(masks[n] is not None) for n in names])
    compare = {}
    for key, sc in (("smoothed", None), ("scorer", scorer)):
        scores, detections = [], {}
        for n in names:
            hm = maps[n]
            s, detections[n] = postprocess_scores(hm.probabilities, hm.tissue, hm.cell_size, hm.origin, smooth,
                                                  lesion_threshold, nms_radius, sc)
            scores.append(s)
        auc = roc_auc(labels, np.asarray(scores)) if 0 < labels.sum() < len(labels) else float("nan")
        fr = froc_from_arrays(detections, masks, mpp, level)
        compare[key] = {"slide_auc": auc, "froc": fr.score,
                        "sensitivity_at": {f"{f:g}": float(v) for f, v in zip(fr.eval_fps, fr.sensitivities)}}
    save_scorer(out_path, scorer)
    return {"scorer": scorer.to_dict(), "path": str(out_path), "n_slides": len(names),
            "n_tumor_slides": int(labels.sum()), "fitting_slides": compare,
            "settings": {"smooth": smooth, "lesion_threshold": lesion_threshold, "nms_radius": nms_radius}}


def tune_postprocessing(results: str | os.PathLike, ground_truth: Sequence[str | os.PathLike],
                        out_dir: str | os.PathLike, reference: str | os.PathLike | None = None,
                        mpp: float = CAMELYON16_MPP, level: int = EVALUATION_MASK_LEVEL,
                        smooth: Sequence[float] = (0.0, 0.5, 0.75, 1.0, 1.5),
                        lesion_threshold: Sequence[float] = (0.5, 0.3, 0.1),
                        nms_radius: Sequence[float] = (2.0, 4.0, 6.0), scorer: Any = None,
                        progress: bool = True) -> dict[str, Any]:
    """``wsiheat evaluate tune``: slide AUC and FROC of every post-processing setting.

    Re-runs only the heatmap post-processing (:func:`postprocess_scores`) from
    the raw maps ``NAME.h5`` of a heatmap folder, for every combination of
    ``smooth`` (sigma, cells), ``lesion_threshold`` and ``nms_radius`` (cells),
    and scores each with :func:`roc_auc` (slide score = maximum of the
    smoothed map) and :func:`froc_from_arrays`. No model runs. Use slides of
    validation patients: a setting chosen on the test slides flatters them.

    Parameters
    ----------
    results : path-like
        Heatmap output folder (``NAME.h5``).
    ground_truth : list of path-like
        Ground-truth files/folders (see :func:`find_ground_truth`).
    out_dir : path-like
        Report folder: ``tune_table.csv`` (one row per setting),
        ``tune_report.json`` (best settings, the grid) and ``tune.png``.
    reference : path-like, optional
        ``slide,label`` CSV: slides labeled normal need no ground-truth file.
    mpp, level : float, int
        As for :func:`evaluate_froc`.
    scorer : wsiheat.lesionmap.LesionScorer, optional
        Also score its lesion map with every threshold and radius (rows with
        ``map`` = ``"scorer"`` and ``smooth`` = NaN; the others have ``map``
        = ``"smoothed"``).

    Returns
    -------
    dict
        The report: ``rows`` (every setting, best FROC first), ``best_froc``,
        ``best_slide_auc``, slide counts and file names.
    """
    from tqdm import tqdm

    _check_mpp_level(mpp, level)
    grid = {"smooth": [float(v) for v in smooth], "lesion_threshold": [float(v) for v in lesion_threshold],
            "nms_radius": [float(v) for v in nms_radius]}
    for key, vals in grid.items():
        if not vals:
            raise WsiheatError(f"--{key.replace('_', '-')}: give at least one value")
        if min(vals) < 0 or (key == "lesion_threshold" and max(vals) > 1):
            raise WsiheatError(f"--{key.replace('_', '-')} {','.join(f'{v:g}' for v in vals)}: values must be "
                               f"{'in [0, 1]' if key == 'lesion_threshold' else '>= 0'}")
    names, maps, masks = load_maps_and_masks(results, ground_truth, reference, level, progress)
    labels = np.array([int(masks[n] is not None) for n in names])
    rows = []
    # (sigma, scorer): the smoothed map at each sigma, then the scorer's map (recorded with sigma NaN)
    maps_to_try = [(sig, None) for sig in grid["smooth"]] + ([(float("nan"), scorer)] if scorer is not None else [])
    combos = [(m, t, r) for m in maps_to_try for t in grid["lesion_threshold"] for r in grid["nms_radius"]]
    matches_of = []  # per row before sorting (for the best row's bootstrap interval)
    for (sig, sc_model), t, r in tqdm(combos, desc="tune", unit="setting", disable=None if progress else True):
        scores, detections = [], {}
        for n in names:
            hm = maps[n]
            sc, detections[n] = postprocess_scores(hm.probabilities, hm.tissue, hm.cell_size, hm.origin,
                                                   0.0 if sc_model is not None else sig, t, r, sc_model)
            scores.append(sc)
        auc = roc_auc(labels, np.asarray(scores)) if 0 < labels.sum() < len(labels) else float("nan")
        fr = froc_from_arrays(detections, masks, mpp, level)
        matches_of.append(fr.matches)
        rows.append({"smooth": sig, "lesion_threshold": t, "nms_radius": r, "slide_auc": auc, "froc": fr.score,
                     **{f"sensitivity_at_{f:g}": float(v) for f, v in zip(fr.eval_fps, fr.sensitivities)},
                     "candidates_per_slide": float(np.mean([len(d[0]) for d in detections.values()])),
                     "map": "smoothed" if sc_model is None else "scorer"})
    # best first: FROC, then slide AUC, then the least smoothing / the highest threshold (simplest)
    order = sorted(range(len(rows)), key=lambda i: (
        -rows[i]["froc"], -np.nan_to_num(rows[i]["slide_auc"], nan=-1.0),
        np.nan_to_num(rows[i]["smooth"], nan=-1.0), -rows[i]["lesion_threshold"], rows[i]["nms_radius"]))
    rows = [rows[i] for i in order]
    best_ci = bootstrap_froc_ci(matches_of[order[0]])
    best_auc = max(rows, key=lambda r: (np.nan_to_num(r["slide_auc"], nan=-1.0), r["froc"]))
    out = ensure_out_dir(out_dir)
    files_out = {"table": "tune_table.csv", "report": "tune_report.json", "plot": "tune.png"}
    cols = list(rows[0])
    write_csv(out / files_out["table"], cols, [[r[c] if isinstance(r[c], str) else repr(float(r[c])) for c in cols]
                                               for r in rows])
    plot_tuning(out / files_out["plot"], rows, grid)
    rep = {"n_slides": len(names), "n_tumor_slides": int(labels.sum()), "mpp": mpp, "level": level,
           "grid": grid, "best_froc": rows[0], "best_froc_ci": best_ci, "best_slide_auc": best_auc, "rows": rows,
           "results": str(results), "ground_truth": [str(g) for g in ground_truth] if ground_truth else [],
           "reference": str(reference) if reference is not None else None, "files": files_out}
    write_json(out / files_out["report"], rep)
    return rep


# =====================================================================================
# Plots and files
# =====================================================================================

def plot_roc(path: str | os.PathLike, fpr: np.ndarray, tpr: np.ndarray, title: str,
             youden: dict[str, Any] | None = None) -> None:
    """Write a ROC curve PNG atomically."""
    fig, ax = _figure()
    ax.plot(fpr, tpr, lw=2, color="C0", label="ROC")
    ax.plot([0, 1], [0, 1], ls="--", lw=1, color="0.6", label="chance")
    if youden is not None and not math.isnan(youden["sensitivity"]):
        ax.plot(1 - youden["specificity"], youden["sensitivity"], "o", color="C3",
                label=f"Youden threshold {youden['threshold']:.3g}")
    ax.set(xlim=(0, 1), ylim=(0, 1.01), xlabel="False positive rate (1 - specificity)",
           ylabel="True positive rate (sensitivity)", title=title)
    ax.legend(loc="lower right")
    _save(fig, path)


def plot_froc(path: str | os.PathLike, fps: np.ndarray, sens: np.ndarray, eval_fps: Sequence[float],
              sens_at: np.ndarray, score: float) -> None:
    """Write a FROC curve PNG atomically (x: average FPs per slide, log scale)."""
    fig, ax = _figure()
    order = np.argsort(fps, kind="mergesort")
    ax.plot(np.asarray(fps)[order], np.asarray(sens)[order], lw=2, color="C0", label="FROC")
    ax.plot(eval_fps, sens_at, "o", color="C3", label=f"score {score:.4f} (mean of these)")
    ax.set_xscale("symlog", linthresh=0.25)
    ax.set(xlim=(0, max(8.5, float(np.max(fps)) if len(fps) else 8.5)), ylim=(0, 1.01),
           xlabel="Average number of false positives per slide", ylabel="Sensitivity",
           title=f"CAMELYON16 FROC (score {score:.4f})")
    ax.set_xticks([0, 0.25, 0.5, 1, 2, 4, 8])
    ax.set_xticklabels(["0", "0.25", "0.5", "1", "2", "4", "8"])
    ax.grid(True, alpha=0.3)
    ax.legend(loc="best")
    _save(fig, path)


def plot_tuning(path: str | os.PathLike, rows: Sequence[dict[str, Any]], grid: dict[str, list[float]]) -> None:
    """FROC and slide AUC against the smoothing sigma, one line per threshold and radius."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4.8), dpi=100)
    sig = sorted(grid["smooth"])
    smoothed = [row for row in rows if row.get("map", "smoothed") == "smoothed"]
    scored = [row for row in rows if row.get("map") == "scorer"]
    for i, (t, r) in enumerate((t, r) for t in grid["lesion_threshold"] for r in grid["nms_radius"]):
        sel = {row["smooth"]: row for row in smoothed if row["lesion_threshold"] == t and row["nms_radius"] == r}
        style = dict(marker="o", color=f"C{i % 10}", label=f"threshold {t:g}, radius {r:g} cells")
        axes[0].plot(sig, [sel[s]["froc"] for s in sig], **style)
        for row in scored:  # the lesion scorer does not depend on sigma: a dashed line
            if row["lesion_threshold"] == t and row["nms_radius"] == r:
                axes[0].axhline(row["froc"], color=f"C{i % 10}", ls="--", lw=1,
                                label=f"lesion scorer, threshold {t:g}, radius {r:g}")
    auc = {row["smooth"]: row["slide_auc"] for row in smoothed}  # does not depend on threshold / radius
    axes[1].plot(sig, [auc[s] for s in sig], marker="o", color="k", label="smoothed map")
    if scored:
        axes[1].axhline(scored[0]["slide_auc"], color="k", ls="--", lw=1, label="lesion scorer")
        axes[1].legend(loc="lower right", fontsize=7)
    axes[0].set(xlabel="smoothing sigma (cells)", ylabel="FROC", title="Lesion FROC", ylim=(0, 1.01))
    axes[1].set(xlabel="smoothing sigma (cells)", ylabel="slide AUC", title="Slide AUC (max of the lesion map)",
                ylim=(0, 1.01))
    for ax in axes:
        ax.grid(True, alpha=0.3)
    axes[0].legend(loc="lower right", fontsize=7)
    _save(fig, path)


def write_json(path: str | os.PathLike, obj: Any) -> None:
    """Write JSON atomically; NaN/inf become null and numpy values plain numbers."""
    text = json.dumps(_jsonable(obj), indent=2, allow_nan=False)
    with atomic_path(path) as tmp:
        tmp.write_text(text + "\n", encoding="utf-8")


def write_csv(path: str | os.PathLike, header: Sequence[str], rows: Iterable[Sequence[Any]]) -> None:
    """Write a CSV with a header atomically."""
    with atomic_path(path) as tmp:
        with open(tmp, "w", newline="", encoding="utf-8") as fh:
            w = csv.writer(fh)
            w.writerow(header)
            w.writerows(rows)


def _figure():
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 5.5), dpi=100)
    return fig, ax


def _save(fig, path: str | os.PathLike) -> None:
    import matplotlib.pyplot as plt

    try:
        fig.tight_layout()
        with atomic_path(path) as tmp:
            fig.savefig(tmp, format="png")
    finally:
        plt.close(fig)


def _jsonable(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {str(k): _jsonable(v) for k, v in obj.items() if not str(k).startswith("_")}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return [_jsonable(v) for v in obj.tolist()]
    if isinstance(obj, (np.integer,)):
        return int(obj)
    if isinstance(obj, (float, np.floating)):
        return float(obj) if math.isfinite(obj) else None
    if isinstance(obj, (np.bool_,)):
        return bool(obj)
    if isinstance(obj, Path):
        return str(obj)
    return obj


def _fmt(v: float) -> str:
    return "" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.6g}"


def _read_csv_rows(path: Path) -> list[tuple[int, list[str]]]:
    try:
        text = path.read_text(encoding="utf-8-sig")
    except FileNotFoundError:
        raise WsiheatError(f"{path}: no such file") from None
    except (UnicodeDecodeError, IsADirectoryError):
        raise WsiheatError(f"{path}: not a text CSV file") from None
    rows = []
    for lineno, row in enumerate(csv.reader(io.StringIO(text)), 1):
        if row and any(c.strip() for c in row):
            rows.append((lineno, row))
    return rows


def _read_result_jsons(folder: Path) -> dict[str, dict[str, Any]]:
    """Heatmap per-slide JSONs (with 'slide' and 'score') in a folder, by slide name."""
    out: dict[str, dict[str, Any]] = {}
    for p in sorted(folder.glob("*.json")):
        try:
            data = json.loads(p.read_text(encoding="utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError, OSError):
            continue
        if not (isinstance(data, dict) and "slide" in data and "score" in data):
            continue
        data = dict(data)
        data["_path"] = p
        name = _slide_stem(str(data["slide"]))
        if name in out:
            raise WsiheatError(f"{p}: second result for slide {name!r} (also {out[name]['_path']})")
        data["slide"] = name
        out[name] = data
    return out


def _check_prob(value: Any, where: str) -> float:
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise WsiheatError(f"{where} {value!r} is not a number") from None
    if not (0.0 <= v <= 1.0):
        raise WsiheatError(f"{where} {value!r} is not a probability in [0, 1]")
    return v


def _check_inside(name: str, xs: np.ndarray, ys: np.ndarray, shape: tuple[int, ...], level: int) -> None:
    d = 2 ** level
    if xs.size and (xs.max() // d >= shape[1] or ys.max() // d >= shape[0]):
        i = int(np.argmax((xs // d >= shape[1]) | (ys // d >= shape[0])))
        raise WsiheatError(f"{name}: detection at ({xs[i]}, {ys[i]}) lies outside the slide "
                           f"({shape[1] * d}x{shape[0] * d} level-0 pixels)")


def _slide_stem(name: str) -> str:
    base = os.path.basename(name)
    for ext in (".tif", ".tiff", ".svs", ".ndpi", ".mrxs", ".scn", ".vms", ".vmu", ".bif", ".svslide"):
        if base.lower().endswith(ext):
            return base[: -len(ext)]
    return base


def _strip(name: str, *suffixes: str) -> str:
    for s in suffixes:
        if name.endswith(s):
            return name[: -len(s)]
    return name


def _names(names: Sequence[str], limit: int = 5) -> str:
    names = list(names)
    shown = ", ".join(names[:limit])
    return shown + (f" and {len(names) - limit} more" if len(names) > limit else "")


def _match_names(a: Iterable[str], b: Iterable[str], a_where: str, b_where: str) -> None:
    """Refuse slide names present in one source and not the other (both directions)."""
    a, b = set(a), set(b)
    only_a, only_b = sorted(a - b), sorted(b - a)
    if only_a:
        raise WsiheatError(f"{a_where}: slide(s) {_names(only_a)} have no match in {b_where}")
    if only_b:
        raise WsiheatError(f"{b_where}: slide(s) {_names(only_b)} have no match in {a_where}")
