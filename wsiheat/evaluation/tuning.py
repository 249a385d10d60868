"""Choosing the post-processing on validation slides: ``evaluate tune`` and ``evaluate fit-scorer``.

Both re-score the raw maps (``NAME.h5``) without running a model: :func:`tune_postprocessing`
grids smoothing, lesion threshold and suppression radius; :func:`fit_scorer` fits a
:class:`wsiheat.postprocess.scorer.LesionScorer` on every tissue cell.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from wsiheat import defaults
from wsiheat.errors import WsiheatError
from wsiheat.evaluation.froc import (
    CAMELYON16_MPP,
    EVALUATION_MASK_LEVEL,
    bootstrap_froc_ci,
    check_mpp_level,
    froc_from_arrays,
    froc_tumor_mask,
)
from wsiheat.evaluation.inputs import find_ground_truth, read_reference_csv, short_list
from wsiheat.evaluation.metrics import roc_auc
from wsiheat.evaluation.reports import write_csv, write_json
from wsiheat.fileio import ensure_out_dir, save_figure
from wsiheat.postprocess.lesions import postprocess_scores


def load_maps_and_masks(results: str | os.PathLike, ground_truth: Sequence[str | os.PathLike],
                        reference: str | os.PathLike | None = None, level: int = EVALUATION_MASK_LEVEL,
                        progress: bool = True) -> tuple[list[str], dict[str, Any], dict[str, np.ndarray | None]]:
    """The raw maps of a heatmap folder and each slide's level-``level`` tumor mask.

    Returns
    -------
    names : list of str
        Sorted slide names.
    maps : dict
        name -> :class:`wsiheat.inference.outputs.Heatmap`.
    masks : dict
        name -> tumor mask (:func:`froc_tumor_mask`), None for a normal slide.
    """
    from tqdm import tqdm

    from wsiheat.inference.outputs import read_heatmap
    from wsiheat.wsi.annotations.groundtruth import load_ground_truth

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
        raise WsiheatError(f"{gt_where}: ground truth for {short_list(extra)} which {results} has no heatmap for")
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
    heatmap : wsiheat.inference.outputs.Heatmap
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
               smooth: float = defaults.SMOOTH_SIGMA, lesion_threshold: float = defaults.LESION_THRESHOLD,
               nms_radius: float = defaults.NMS_RADIUS_CELLS,
               progress: bool = True) -> dict[str, Any]:
    """``wsiheat evaluate fit-scorer``: fit a lesion scorer on VALIDATION heatmaps.

    Fits :func:`wsiheat.postprocess.scorer.fit_lesion_scorer` on every tissue cell of
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
    from wsiheat.postprocess.scorer import fit_lesion_scorer, save_scorer

    check_mpp_level(mpp, level)
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
    scorer : wsiheat.postprocess.scorer.LesionScorer, optional
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

    check_mpp_level(mpp, level)
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
    save_figure(fig, path, tight_layout=True)
