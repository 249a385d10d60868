"""The CAMELYON16 lesion-level FROC, as the challenge's ``Evaluation_FROC.py`` computes it.

A re-implementation of the challenge's ``Evaluation_FROC.py`` (Babak Ehteshami
Bejnordi, 2016), with the same constants and quirks. With ``mpp`` the level-0
pixel size (0.243 µm in CAMELYON16, option ``--mpp``) and the evaluation level
``L = 5`` (downsample ``2**5 = 32``):

1. **Evaluation mask** (``computeEvaluationMask``) -- :func:`evaluation_mask`.
   The tumor mask at level 5: ``ceil(H/32) x ceil(W/32)`` pixels, taken from
   :meth:`GroundTruth.level_mask(5) <wsiheat.wsi.annotations.groundtruth.GroundTruth.level_mask>`:
   a mask TIFF's stored level 5 (at its own downsample 32, whatever OpenSlide's
   rounded ``level_downsamples`` say), or for XML/JSON polygons the level 5 of
   the mask ASAP's AnnotationToMask would write. The official code reads
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

Lesion scores are float32 and false-positive scores float64, as in the
official code (its ``TP_probs`` array is float32): a lesion and a false
positive that tie in a CSV (``0.300000``) are two thresholds; see
:func:`froc_curve`. Deviations, all deliberate: a slide
is a tumor slide when its ground truth marks tumor (the official code looks
at the file name prefix ``Tumor``). Bad input that the official script would
silently accept or crash on is refused with a one-line error: a detection
outside the slide, NaN or probabilities outside [0, 1], an empty detection
file (unless ``allow_empty``, or the slide's heatmap JSON records
``"lesions": 0``: wsiheat found no candidate above its threshold), slide names without ground truth or without
detections.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from typing import Any, Iterable, Sequence

import numpy as np

from wsiheat.errors import WsiheatError
from wsiheat.evaluation.inputs import check_inside, match_names
from wsiheat.evaluation.metrics import check_bootstrap, percentile_interval

#: Level-0 pixel size of CAMELYON16 slides (µm/px) used by Evaluation_FROC.py.
CAMELYON16_MPP = 0.243
#: Pyramid level of the evaluation mask in Evaluation_FROC.py.
EVALUATION_MASK_LEVEL = 5
#: Most cells of an evaluation mask (bool mask plus int32 labels: about 5 bytes a cell).
MAX_MASK_CELLS = 1 << 30
#: FP-per-slide operating points averaged into the FROC score.
FROC_EVAL_FPS = (0.25, 0.5, 1.0, 2.0, 4.0, 8.0)
#: Tumor margin (µm) of computeEvaluationMask (halved in the official formula).
MARGIN_UM = 75.0
#: ITC size threshold (µm) of computeITCList: 200 µm plus 75 µm of growth.
ITC_UM = 275.0


# =====================================================================================
# Lesion level: CAMELYON16 FROC
# =====================================================================================

def margin_threshold(mpp: float = CAMELYON16_MPP, level: int = EVALUATION_MASK_LEVEL) -> float:
    """``75 / (mpp * 2**level * 2)``: the distance threshold (level pixels) of computeEvaluationMask."""
    return MARGIN_UM / (mpp * 2 ** level * 2)


def itc_threshold(mpp: float = CAMELYON16_MPP, level: int = EVALUATION_MASK_LEVEL) -> float:
    """``275 / (mpp * 2**level)``: the major-axis threshold (level pixels) of computeITCList."""
    return ITC_UM / (mpp * 2 ** level)


def check_mpp_level(mpp: float, level: int) -> None:
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
    check_mpp_level(mpp, level)
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

    check_mpp_level(mpp, level)
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
    tp_probs: np.ndarray  # float32, one per label 1..max_label (ITC and missed lesions: 0)
    num_tumors: int  # max_label - number of ITC labels
    itc: list[int] = field(default_factory=list)
    hit_labels: np.ndarray | None = None  # label under each detection (0 = FP; None on normal slides)


def match_detections(probs: np.ndarray, xs: np.ndarray, ys: np.ndarray, labels: np.ndarray | None,
                     itc: Iterable[int] = (), level: int = EVALUATION_MASK_LEVEL, name: str = "",
                     origin: tuple[int, int] = (0, 0), shape: tuple[int, int] | None = None,
                     outside_is_fp: bool = False) -> SlideMatch:
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
        return SlideMatch(name, probs.copy(), np.zeros(0, np.float32), 0, [], None)
    labels = np.asarray(labels)
    max_label = int(labels.max()) if labels.size else 0
    d = 2 ** level
    full = tuple(shape) if shape is not None else labels.shape
    r, c = ys // d, xs // d
    outside = (r < 0) | (c < 0) | (r >= full[0]) | (c >= full[1])
    if outside.any() and not outside_is_fp:
        i = int(np.flatnonzero(outside)[0])
        raise WsiheatError(f"{name}: detection at ({xs[i]}, {ys[i]}) lies outside the evaluation mask "
                           f"({full[1] * d}x{full[0] * d} level-0 pixels)")
    r, c = r - origin[0], c - origin[1]
    in_crop = (r >= 0) & (c >= 0) & (r < labels.shape[0]) & (c < labels.shape[1])
    hit = np.zeros(probs.size, np.int64)
    hit[in_crop] = labels[r[in_crop], c[in_crop]]
    fp = probs[hit == 0]
    # lesion scores are float32, as in the official code (TP_probs = np.zeros(..., float32))
    tp = np.zeros(max_label, np.float32)
    on_lesion = (hit > 0) & ~np.isin(hit, itc)
    np.maximum.at(tp, hit[on_lesion] - 1, probs[on_lesion].astype(np.float32))
    return SlideMatch(name, fp, tp, max_label - len(itc), itc, hit)


def froc_curve(matches: Sequence[SlideMatch]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """computeFROC: pooled FPs per slide and sensitivity at every threshold.

    Lesion (TP) scores are float32 and FP scores float64, as in the official
    code: a lesion counts at threshold ``t`` when ``tp >= float32(t)`` (NumPy
    compares its float32 array with a Python-float threshold in float32), a
    false positive when ``fp >= t``. So a lesion and a false positive that tie
    in a CSV (``0.300000``) are two thresholds, ``float32(0.3)`` and ``0.3``.

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
    fps = np.sort(np.concatenate([m.fp_probs for m in matches]).astype(np.float64))
    tps = np.sort(np.concatenate([m.tp_probs for m in matches]).astype(np.float32))
    all_probs = np.unique(np.concatenate([fps, tps.astype(np.float64)]))
    thresholds = all_probs[1:]
    n_fp = fps.size - np.searchsorted(fps, thresholds, side="left")  # count >= t
    n_tp = tps.size - np.searchsorted(tps, thresholds.astype(np.float32), side="left")
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
    check_bootstrap(n_boot, confidence)
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
    lo, hi = percentile_interval(scores, confidence)
    return {"low": lo, "high": hi, "confidence": confidence, "n_boot": n_boot, "n_used": len(scores), "seed": seed}


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
                     level: int = EVALUATION_MASK_LEVEL, eval_fps: Sequence[float] = FROC_EVAL_FPS,
                     unbounded: Iterable[str] = ()) -> FrocResult:
    """The whole FROC from detections and level-``level`` tumor masks.

    Parameters
    ----------
    detections : dict
        slide -> (probs, xs, ys), level-0 integer coordinates.
    tumor_masks : dict
        slide -> boolean tumor mask at ``level`` (covering the slide), or None
        for a slide without tumor. Same keys as ``detections``.
    unbounded : iterable of str
        Slides whose mask covers only the ground truth's extent (slide size
        unknown): a detection beyond it is a false positive, not an error.
    """
    unbounded = set(unbounded)
    check_mpp_level(mpp, level)
    match_names(detections.keys(), tumor_masks.keys(), "detections", "ground truth")
    matches, lesions = [], []
    for name in sorted(detections):
        probs, xs, ys = detections[name]
        tumor = tumor_masks[name]
        if tumor is None or not np.asarray(tumor).any():
            if tumor is not None:
                check_inside(name, xs, ys, np.asarray(tumor).shape, level)
            matches.append(match_detections(probs, xs, ys, None, name=name))
            continue
        tumor = np.asarray(tumor)
        labels, origin = evaluation_mask_cropped(tumor, mpp, level)
        itc = itc_labels(labels, mpp, level)
        m = match_detections(probs, xs, ys, labels, itc, level, name=name, origin=origin, shape=tumor.shape,
                             outside_is_fp=name in unbounded)
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
        From :func:`wsiheat.wsi.annotations.groundtruth.load_ground_truth`.
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
    cells = math.ceil(W / d) * math.ceil(H / d)
    if cells > MAX_MASK_CELLS:
        raise WsiheatError(f"{where}: the level-{level} evaluation mask of a {W}x{H} slide would hold "
                           f"{cells / 1e9:.1f} G cells (at most {MAX_MASK_CELLS / 1e9:.1f} G); use a coarser mask level")
    ew, eh = gt.extent
    if ew > math.ceil(W / d) * d or eh > math.ceil(H / d) * d:
        raise WsiheatError(f"{where}: ground truth covers {ew}x{eh} level-0 pixels, larger than the "
                           f"slide's {W}x{H}")
    return gt.level_mask(level, (W, H))
