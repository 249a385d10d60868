"""Evaluation reports: ``evaluate patches``, ``evaluate slides`` and ``evaluate froc``.

Each ``evaluate_*`` function reads its inputs (:mod:`.inputs`), computes with
the pure functions of :mod:`.metrics` and :mod:`.froc`, and writes a report
folder (JSON, PNG and CSV files, each written atomically).

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

Lesion level: see :mod:`wsiheat.evaluation.froc`.
"""

from __future__ import annotations

import csv
import json
import math
import os
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np

from wsiheat.errors import ModelError, WsiheatError
from wsiheat.evaluation.froc import (
    CAMELYON16_MPP,
    EVALUATION_MASK_LEVEL,
    bootstrap_froc_ci,
    check_mpp_level,
    froc_from_arrays,
    froc_tumor_mask,
    itc_threshold,
    margin_threshold,
)
from wsiheat.evaluation.inputs import (
    check_detections_inside,
    find_detection_files,
    find_ground_truth,
    match_names,
    read_detection_rows,
    read_patch_rows,
    read_reference_csv,
    read_result_jsons,
    read_slide_scores,
    short_list,
)
from wsiheat.evaluation.metrics import (
    binary_metrics,
    bootstrap_auc_ci,
    bootstrap_patch_ci,
    check_labels_scores,
    roc_auc,
    roc_curve,
    youden_threshold,
)
from wsiheat.fileio import atomic_path, ensure_out_dir, save_figure
from wsiheat.inference.gallery import plot_gallery
from wsiheat.inference.predict import predict_patches


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
    y, s = check_labels_scores(labels, scores, "patches")
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
    y, s = check_labels_scores(labels, scores, "patches")
    if k < 0:
        raise ValueError(f"k must be >= 0, got {k}")
    fp = np.flatnonzero((y == 0) & (s >= threshold))
    fn = np.flatnonzero((y == 1) & (s < threshold))
    return fp[np.argsort(-s[fp], kind="stable")][:k], fn[np.argsort(s[fn], kind="stable")][:k]


def evaluate_patches(model_path: str | os.PathLike, patches_path: str | os.PathLike, out_dir: str | os.PathLike,
                     batch_size: int = 64, progress: bool = True, tta: bool = False,
                     precision: str = "auto", backend: str = "auto", allow_mismatch: bool = False) -> dict[str, Any]:
    """``wsiheat evaluate patches``: predict, then write the patch report.

    ``backend`` and ``precision``: see :meth:`wsiheat.inference.engine.HeatmapModel.load`
    (the report records the ones used, ``backend``, ``precision``, ``precision_reason``).
    The windows must be at the model's magnifications (levels / downsamples,
    or µm/px when both know theirs); ``allow_mismatch`` accepts others, and
    the report's ``magnification_mismatch`` says how they differ.

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
    from wsiheat.inference.engine import HeatmapModel
    from wsiheat.models.model import read_metadata
    from wsiheat.patches.store import open_patches, tower_mismatch

    meta = read_metadata(model_path)
    with open_patches(patches_path) as pf:
        diff = tower_mismatch({k: meta.get(k) for k in ("levels", "downsamples", "mpps")},
                              {"levels": pf.levels, "downsamples": pf.downsamples, "mpps": pf.tower_mpps()})
    mismatch = None
    if diff:
        mismatch = f"{patches_path}: windows at another magnification than {model_path} was trained at: {diff}"
        if not allow_mismatch:
            raise ModelError(f"{mismatch}; extract them at the model's levels (or allow the mismatch)")
    out = ensure_out_dir(out_dir)
    engine = HeatmapModel.load(model_path, backend=backend, precision=precision, batch_size=batch_size, tta=tta)
    pred = predict_patches(engine, patches_path, batch_size=batch_size, progress=progress, tta=tta)
    rep = patch_report(pred["labels"], pred["scores"], pred["slide_ids"], pred["slides"])
    rep["tta"] = bool(tta)
    rep["backend"], rep["precision"], rep["precision_reason"] = engine.backend, engine.precision, engine.reason
    rep["model"] = str(model_path)
    rep["patches"] = str(patches_path)
    rep["magnification_mismatch"] = mismatch
    rep["stain"] = pred.get("stain")  # the model's stain normalisation, fitted per slide of this file
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
    y, s = check_labels_scores(labels, scores, "slides")
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
    score : str
        Which slide score of the heatmap JSON to rank by (default ``score``:
        the maximum of the lesion map; see :func:`wsiheat.postprocess.scores.names`).
    """
    if (reference is None) == (not ground_truth):
        raise WsiheatError("evaluate slides: give either a reference CSV or ground truth (exactly one)")
    results = Path(results)
    scores = read_slide_scores(results, score)
    if reference is not None:
        ref = read_reference_csv(reference)
        match_names(scores.keys(), ref.keys(), str(results), str(reference))
    else:
        from wsiheat.wsi.annotations.groundtruth import load_ground_truth
        gt_files = find_ground_truth(ground_truth)
        match_names(scores.keys(), gt_files.keys(), str(results), "ground truth")
        dims = {n: m.get("dimensions") for n, m in read_result_jsons(results).items()} if results.is_dir() else {}
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

    from wsiheat.wsi.annotations.groundtruth import MaskGroundTruth, load_ground_truth

    check_mpp_level(mpp, level)
    results = Path(results)
    det_files = find_detection_files(results)
    gt_files = find_ground_truth(ground_truth) if ground_truth else {}
    ref = read_reference_csv(reference) if reference is not None else None
    gt_where = ", ".join(str(g) for g in ground_truth) if ground_truth else "ground truth"
    if ref is None:
        match_names(det_files.keys(), gt_files.keys(), str(results), gt_where)
    else:
        match_names(det_files.keys(), ref.keys(), str(results), str(reference))
        extra = sorted(set(gt_files) - set(ref))
        if extra:
            raise WsiheatError(f"{gt_where}: ground truth for {short_list(extra)} which {reference} does not list")
        missing = sorted(n for n, lab in ref.items() if lab == 1 and n not in gt_files)
        if missing:
            raise WsiheatError(f"{gt_where}: no ground truth for tumor slide(s) {short_list(missing)} "
                               f"(labeled tumor in {reference})")
    metas = read_result_jsons(results) if results.is_dir() else {}
    detections, masks, unbounded = {}, {}, set()
    for name in tqdm(sorted(det_files), desc="FROC", unit="slide", disable=None if progress else True):
        # an empty CSV is a legitimate "no lesion" when wsiheat heatmap wrote it and says so
        no_lesions = metas.get(name, {}).get("lesions") == 0
        probs, xs, ys, lines = read_detection_rows(det_files[name], allow_empty=allow_empty or no_lesions)
        detections[name] = (probs, xs, ys)
        dims = metas.get(name, {}).get("dimensions")
        if dims is not None:
            try:
                W, H = int(dims[0]), int(dims[1])
            except (TypeError, ValueError, IndexError):
                raise WsiheatError(f"{metas[name]['_path']}: 'dimensions' is not [width, height]") from None
            check_detections_inside(det_files[name], xs, ys, lines, (W, H))
        gt_path = gt_files.get(name)
        if gt_path is None:
            masks[name] = None
            continue
        gt = load_ground_truth(gt_path, (W, H) if dims is not None else None)
        if ref is not None and ref[name] == 0 and gt.has_tumor:
            raise WsiheatError(f"{gt_path}: marks tumor but {reference} labels {name} normal")
        if ref is not None and ref[name] == 1 and not gt.has_tumor:
            raise WsiheatError(f"{gt_path}: marks no tumor but {reference} labels {name} tumor")
        if dims is None:
            # the mask is sized from the ground truth, never from detections: a mask TIFF covers the
            # slide (a detection outside it is an error); polygons only cover their extent, and a
            # detection beyond it cannot hit a lesion (a false positive)
            W, H = (int(v) for v in gt.extent)
            if isinstance(gt, MaskGroundTruth):
                check_detections_inside(det_files[name], xs, ys, lines, (W, H), what="ground-truth mask")
            else:
                unbounded.add(name)
        masks[name] = froc_tumor_mask(gt, (W, H), level, gt_path)
    res = froc_from_arrays(detections, masks, mpp, level, unbounded=unbounded)
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
              [[_prob_text(t), repr(float(f)), repr(float(s))]
               for t, f, s in zip(res.thresholds, res.fps_per_slide, res.sensitivity)])
    write_csv(out / files["lesions"], ["slide", "label", "itc", "x", "y", "major_axis_um", "area_um2", "prob"],
              [[r["slide"], r["label"], int(r["itc"]), r["x"], r["y"], f"{r['major_axis_um']:.1f}",
                f"{r['area_um2']:.0f}", "" if r["prob"] is None else _prob_text(r["prob"])] for r in res.lesions])
    write_json(out / files["report"], rep)
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
    save_figure(fig, path, tight_layout=True)


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
    save_figure(fig, path, tight_layout=True)


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


def _prob_text(value: float) -> str:
    """Shortest text of a probability: a float32 lesion score prints as float32 (``0.500015``, not its
    float64 expansion), any other value as its float64 repr."""
    v = float(value)
    f32 = np.float32(v)
    return str(f32) if np.isfinite(v) and float(f32) == v else repr(v)
