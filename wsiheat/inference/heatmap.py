"""One slide's heatmap, computed in memory: tissue-only inference stitched into a map.

Geometry (see :mod:`wsiheat.patches.sampling`): the model's metadata gives the window
``W``, the labelled centre ``C`` and the towers' downsamples ``d_k``. The
heatmap grid is the sampling grid with **stride = C**, so heatmap cell
``(row, col)`` is exactly the labelled centre of one window: it covers level-0
``[col * s, (col + 1) * s) x [row * s, (row + 1) * s)`` with cell size
``s = C * d_0`` and is centred on ``((col + 0.5) * s, (row + 0.5) * s)``.

Only cells on tissue are evaluated (the Otsu mask of :mod:`wsiheat.wsi.tissue`;
a cell is tissue when the tissue fraction of its centre box exceeds
``tissue_threshold``); the others are background: probability 0 and
``tissue == False``.

Pipeline: tissue cells are grouped in square tiles of about ``block`` x
``block`` tower-0 pixels; background threads read each tile with one region
per tower (:func:`wsiheat.patches.sampling.read_windows`) while the main
thread runs a compiled inference function on fixed-size batches (the last one
padded), so reading overlaps the model. Memory is bounded by a few tiles and
one batch, whatever the slide size. Post-processing (smoothing, lesion points,
slide scores) is :mod:`wsiheat.postprocess`; the files are written by
:meth:`wsiheat.inference.outputs.Heatmap.save`.
"""

from __future__ import annotations

import json
import os
import time
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Callable

import numpy as np

from wsiheat import __version__, defaults
from wsiheat.errors import WsiheatError
from wsiheat.fileio import check_writable_dir
from wsiheat.inference.outputs import GALLERY_LESIONS, HEATMAP_FORMAT, Heatmap, lesion_views
from wsiheat.inference.predict import (
    check_model,
    make_predict_fn,
    predict_cells,
    resampled_towers,
    spec_from_metadata,
    tiles_of_cells,
    tissue_cells,
)
from wsiheat.inference.stain import fit_slide
from wsiheat.postprocess.lesions import postprocess, slide_scores
from wsiheat.postprocess.scores import registered_scores
from wsiheat.wsi.slide import Slide
from wsiheat.wsi.stain import normalizer_from_dict

if TYPE_CHECKING:  # pragma: no cover
    import keras

    from wsiheat.postprocess.scorer import LesionScorer


class HeatmapWarning(UserWarning):
    """A slide that could be processed but deserves attention (e.g. no tissue)."""


def compute_heatmap(slide_path: str | os.PathLike, model: keras.Model | None, metadata: dict, name: str | None = None, *,
                    batch_size: int = defaults.PREDICT_BATCH_SIZE, tta: bool = False,
                    readers: int = 2, block: int = 1024, tissue_threshold: float = 0.0,
                    lesion_threshold: float = defaults.LESION_THRESHOLD, nms_radius: float | None = None,
                    nms_radius_um: float | None = None, area_threshold: float = defaults.AREA_THRESHOLD,
                    topk: int = defaults.TOPK, smooth: float = defaults.SMOOTH_SIGMA,
                    lesion_scorer: LesionScorer | None = None,
                    downsamples: tuple[float, ...] | None = None, model_path: str | None = None,
                    predict: Callable[[np.ndarray], np.ndarray] | None = None,
                    max_cells: int | None = None, thumbnail_size: int = 2048,
                    progress: bool = False, backend: str = "tensorflow", precision: str | None = None,
                    precision_reason: str = "") -> Heatmap:
    """Compute the heatmap of one slide in memory: probabilities, tissue, lesions, score.

    Nothing is written; :meth:`Heatmap.save` writes the nine output files.

    Parameters
    ----------
    slide_path : path-like
        Any slide :class:`wsiheat.wsi.slide.Slide` opens.
    model : keras.Model
        Takes uint8 ``(B, T, W, W, 3)``, returns ``(B, 1)`` probabilities.
    metadata : dict
        The model's wsiheat metadata (geometry).
    name : str, optional
        Output name (default: the slide name).
    batch_size : int
        Windows per model call (fixed shape; the last batch is padded).
    tta : bool
        Average over the 8 rotations/flips.
    readers : int
        Background reader threads.
    block : int
        Tile side in tower-0 pixels read per region.
    tissue_threshold : float
        A cell is evaluated when its centre box's tissue fraction exceeds this.
    lesion_threshold, nms_radius, nms_radius_um : float
        Lesion points: minimum probability and suppression radius (level-0 px,
        or µm when the slide's µm/px is known; default 4 cells).
    area_threshold : float
        Probability at or above which a cell counts as tumor area.
    topk : int
        Cells averaged for ``topk_mean``.
    smooth : float
        Sigma in cells of :func:`smooth_heatmap`; the smoothed map gives the
        lesion points (located and ranked) and ``score``; 0 = the raw map.
    lesion_scorer : wsiheat.postprocess.scorer.LesionScorer, optional
        Its lesion map (:func:`lesion_map`) replaces the smoothed map for the
        lesion points and ``score``; ``smooth`` is then unused.
    downsamples : tuple of float, optional
        Override the model's tower downsamples (relative to level 0).
    model_path : str, optional
        Recorded in the outputs.
    predict : callable, optional
        A ready :func:`make_predict_fn` (reused across slides).
    max_cells : int, optional
        Evaluate only the first N tissue cells, row-major (benchmarks).
    thumbnail_size : int
        Longer side of the overlay image.
    progress : bool
        Show a tqdm bar (patches/s, ETA).
    backend : str
        The backend that made ``predict`` (recorded); other than
        ``"tensorflow"``, ``model`` is that backend's model and ``predict`` is needed.
    precision, precision_reason : str, optional
        The compute precision (default: the Keras model's) and why it was
        chosen (recorded).

    Returns
    -------
    Heatmap
        With ``lesions`` and ``summary`` (what ``NAME.json`` holds).
    """
    if batch_size < 1:
        raise WsiheatError(f"batch size must be >= 1, got {batch_size}")
    if readers < 1:
        raise WsiheatError(f"readers must be >= 1, got {readers}")
    if not 0 <= lesion_threshold <= 1:
        raise WsiheatError(f"lesion threshold must be in [0, 1], got {lesion_threshold}")
    t_start = time.perf_counter()
    if backend != "tensorflow" and predict is None:
        raise WsiheatError(f"backend {backend}: give its predict function")
    if precision is None:
        from wsiheat.models.model import model_precision

        precision = model_precision(model)
    with Slide(slide_path) as slide:
        name = name or slide.name
        spec = spec_from_metadata(metadata, slide, downsamples)
        if backend == "tensorflow":
            check_model(model, spec, model_path or "model")
        if predict is None:
            predict = make_predict_fn(model, spec, batch_size, tta)
        warns: list[str] = []
        resampled = resampled_towers(slide, spec)
        if resampled:
            warns.append(f"{slide.path}: downsample(s) {', '.join(f'{d:g}' for d in resampled)} are not "
                         f"pyramid levels; resampled from finer levels")
        grid, tissue = tissue_cells(slide, spec, tissue_threshold, progress=progress)
        rows, cols = np.nonzero(tissue)
        if max_cells is not None:
            rows, cols = rows[:max_cells], cols[:max_cells]
            tissue = np.zeros_like(tissue)
            tissue[rows, cols] = True
        if len(rows) == 0:
            warns.append(f"{slide.path}: no tissue found; empty heatmap, score 0")
        if lesion_scorer is not None and model_path:
            fitted_on = {Path(str(m)).name for m in lesion_scorer.fitted.get("heatmap_models", []) if m}
            if fitted_on and Path(str(model_path)).name not in fitted_on:
                warns.append(f"the lesion scorer was fitted on heatmaps of {', '.join(sorted(fitted_on))}, not "
                             f"{Path(str(model_path)).name}: refit it for this model (evaluate fit-scorer)")
        centers0 = grid.centers(rows, cols)
        stain = None
        normalizer = normalizer_from_dict(metadata.get("stain"), str(model_path or "model"))
        if normalizer is not None:  # one fit per slide, the same map for every tile: no seams
            stain = fit_slide(normalizer, slide, spec, centers0)
            if stain.why_not:
                warns.append(f"{slide.path}: stain normalisation not fitted ({stain.why_not}); windows left as they are")
        tile_cells = max(1, (block - spec.window) // spec.stride + 1)
        tiles = tiles_of_cells(rows, cols, tile_cells)
        bar = None
        if progress and len(rows):
            from tqdm import tqdm

            bar = tqdm(total=len(rows), unit="patch", desc=name, dynamic_ncols=True, leave=False)
        t_model = time.perf_counter()
        try:
            probs = predict_cells(slide, spec, centers0, tiles, predict, batch_size, readers,
                                  bar.update if bar else None, transform=stain)
        finally:
            if bar:
                bar.close()
        infer_seconds = time.perf_counter() - t_model
        if stain is not None and stain.unnormalised and not stain.why_not:
            warns.append(f"{slide.path}: stain normalisation failed on {stain.unnormalised} window(s); "
                         f"they were scored as they are")
        prob = np.zeros((grid.n_rows, grid.n_cols), np.float32)
        prob[rows, cols] = probs
        cell0 = spec.cell0
        mpp = slide.mpp
        if nms_radius_um is not None:
            if mpp is None:
                raise WsiheatError(f"{slide.path}: no µm/px in the slide metadata; give the suppression radius in "
                                   f"level-0 pixels instead of µm")
            nms_radius = nms_radius_um / mpp
        if smooth < 0:
            raise WsiheatError(f"smoothing sigma must be >= 0 cells, got {smooth}")
        lmap, lesions = postprocess(prob, tissue, cell0, smooth=smooth, lesion_threshold=lesion_threshold,
                                    nms_radius=nms_radius, scorer=lesion_scorer)
        scores = slide_scores(prob, tissue, cell0, mpp, topk, area_threshold, lmap)
        scores.update(registered_scores(prob, tissue, lmap, cell0, mpp))
        scores["smooth"] = None if lesion_scorer is not None else float(smooth)
        scores["lesion_map"] = "smoothed" if lesion_scorer is None else "scorer"
        views = lesion_views(slide, lesions[:GALLERY_LESIONS], cell0)
        thumb, thumb_ds = slide.thumbnail(thumbnail_size)
        dims = list(slide.dimensions)
        slide_name, slide_file = slide.name, str(slide.path)
    for w in warns:
        warnings.warn(w, HeatmapWarning, stacklevel=2)

    geometry = {
        "origin": [0.0, 0.0], "cell_size": float(cell0), "stride": spec.stride, "center": spec.center,
        "window": spec.window, "downsamples": [float(d) for d in spec.downsamples],
        "levels": [(-1 if l is None else int(l))
                   for l in (spec.levels if len(spec.levels) == spec.towers else [None] * spec.towers)],
        "grid_shape": [grid.n_rows, grid.n_cols],
    }
    raw_attrs = {
        "format": HEATMAP_FORMAT, "schema_version": 1, **geometry,
        "slide": slide_name, "slide_path": slide_file, "slide_dimensions": dims,
        "mpp": float("nan") if mpp is None else float(mpp), "model": str(model_path or ""),
        "tta": bool(tta), "tissue_threshold": float(tissue_threshold), "smooth": float(smooth),
        "lesion_scorer": "" if lesion_scorer is None else json.dumps(lesion_scorer.to_dict(), default=str),
        "precision": precision,
        "backend": backend,
        "stain": "" if stain is None else json.dumps(stain.record()),
        "wsiheat_version": __version__,
    }
    seconds = time.perf_counter() - t_start
    n = int(len(rows))
    summary = {
        "slide": slide_name,
        "name": name,
        "slide_path": slide_file,
        **scores,
        "dimensions": dims,
        "mpp": mpp,
        "cells_evaluated": n,
        "cells_total": int(grid.n_rows * grid.n_cols),
        "lesions": int(len(lesions)),
        "lesion_threshold": float(lesion_threshold),
        "lesion_scorer": None if lesion_scorer is None else lesion_scorer.to_dict(),
        "nms_radius": float(nms_radius if nms_radius is not None else 4 * cell0),
        "seconds": round(seconds, 3),
        "inference_seconds": round(infer_seconds, 3),
        "patches_per_second": round(n / infer_seconds, 2) if n and infer_seconds > 0 else 0.0,
        "batch_size": int(batch_size),
        "tta": bool(tta),
        "backend": backend,
        "precision": precision,
        "precision_reason": precision_reason,
        "geometry": geometry,
        "model": str(model_path) if model_path else None,
        "model_metadata": {k: metadata.get(k) for k in ("window", "center", "stride", "levels", "downsamples",
                                                        "towers", "class_names", "training_data",
                                                        "wsiheat_version") if k in metadata},
        "wsiheat_version": __version__,
        "stain": None if stain is None else stain.record(),
        "outputs": None,  # filled in by Heatmap.save
        "warnings": warns,
    }
    return Heatmap(prob, tissue, float(cell0), (0.0, 0.0), raw_attrs, lesions=lesions, summary=summary,
                   pictures={"thumbnail": (thumb, thumb_ds), "views": views})


def heatmap_slide(slide_path: str | os.PathLike, model: keras.Model | None, metadata: dict, out_dir: str | os.PathLike,
                  name: str | None = None, **options) -> dict:
    """Compute the heatmap of one slide and write its nine output files into ``out_dir``.

    ``compute_heatmap(slide_path, model, metadata, name, **options).save(out_dir)``,
    with the output folder checked first. Returns the slide summary (``NAME.json``).
    """
    out_dir = Path(out_dir)
    if not out_dir.is_dir():
        raise WsiheatError(f"{out_dir}: output folder does not exist")
    check_writable_dir(out_dir / "x")
    return compute_heatmap(slide_path, model, metadata, name, **options).save(out_dir)
