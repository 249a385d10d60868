"""From a raw heatmap to lesion points and slide scores: smoothing, the lesion map, non-maximum suppression.

:func:`postprocess` is the sequence ``wsiheat heatmap`` runs (lesion map, then lesion points);
:func:`map_score` is the slide score (the lesion map's maximum over tissue);
:func:`slide_scores` adds the top-k mean and tumor area; :func:`postprocess_scores` replays
the sequence on stored maps for ``evaluate tune`` and ``fit-scorer``.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

import numpy as np

from wsiheat import defaults

if TYPE_CHECKING:  # pragma: no cover
    from wsiheat.postprocess.scorer import LesionScorer

#: default Gaussian sigma, in cells, of the map that ranks lesions and gives the slide score
SMOOTH_SIGMA = defaults.SMOOTH_SIGMA


# --------------------------------------------------------------------------- pure helpers
def lesions_from_heatmap(prob: np.ndarray, tissue: np.ndarray | None, cell0: float,
                         threshold: float = 0.5, radius: float | None = None,
                         origin: tuple[float, float] = (0.0, 0.0)) -> np.ndarray:
    """Lesion candidates by greedy non-maximum suppression on a probability map.

    Cells are visited from the most probable down; a cell at or above
    ``threshold`` that is not within ``radius`` of an accepted cell becomes a
    lesion point at its centre.

    Parameters
    ----------
    prob : ndarray (rows, cols)
        Probabilities.
    tissue : ndarray of bool (rows, cols) or None
        Cells to consider (None: all).
    cell0 : float
        Cell size in level-0 pixels.
    threshold : float
        Minimum probability of a lesion point.
    radius : float, optional
        Suppression radius in level-0 pixels (default ``4 * cell0``).
    origin : (float, float)
        Level-0 (x, y) of the top-left corner of cell (0, 0).

    Returns
    -------
    ndarray (K, 3) float64
        Rows ``(prob, x, y)``, level-0 centres, by decreasing probability.
    """
    prob = np.asarray(prob, np.float64)
    if prob.ndim != 2:
        raise ValueError(f"prob must be 2-D, got shape {prob.shape}")
    if cell0 <= 0:
        raise ValueError(f"cell0 must be positive, got {cell0}")
    if radius is None:
        radius = 4 * cell0
    if radius < 0:
        raise ValueError(f"radius must be >= 0, got {radius}")
    ok = np.isfinite(prob) & (prob >= threshold)
    if tissue is not None:
        ok &= np.asarray(tissue, bool)
    cand = np.flatnonzero(ok)
    if len(cand) == 0:
        return np.zeros((0, 3))
    flat = prob.ravel()
    cand = cand[np.argsort(-flat[cand], kind="stable")]
    rows, cols = prob.shape
    rc = radius / cell0
    reach = int(math.floor(rc))
    dy, dx = np.mgrid[-reach:reach + 1, -reach:reach + 1]
    disk = (dy ** 2 + dx ** 2) <= rc ** 2 + 1e-9
    dy, dx = dy[disk], dx[disk]
    suppressed = np.zeros(prob.shape, bool)
    out = []
    for i in cand:
        r, c = divmod(int(i), cols)
        if suppressed[r, c]:
            continue
        out.append((flat[i], origin[0] + (c + 0.5) * cell0, origin[1] + (r + 0.5) * cell0))
        yy, xx = r + dy, c + dx
        keep = (yy >= 0) & (yy < rows) & (xx >= 0) & (xx < cols)
        suppressed[yy[keep], xx[keep]] = True
    return np.asarray(out, np.float64).reshape(-1, 3)


def smooth_heatmap(prob: np.ndarray, tissue: np.ndarray, sigma: float = SMOOTH_SIGMA) -> np.ndarray:
    """Gaussian smoothing of a probability map over tissue cells only.

    Each tissue cell becomes the Gaussian-weighted mean of the probabilities
    of the tissue cells around it (weights renormalised over tissue, so a
    cell at the tissue border is not pulled towards the background); other
    cells are 0. A lone confident cell is damped, a region of several
    confident cells keeps its value: the smoothed map ranks lesions and gives
    the slide score, the raw map stays in ``NAME.h5``.

    Parameters
    ----------
    prob : ndarray (rows, cols)
        Probabilities (NaN counts as 0).
    tissue : ndarray of bool (rows, cols)
    sigma : float
        Standard deviation in cells; 0 returns the map unchanged (0 off tissue).

    Returns
    -------
    ndarray float64 (rows, cols)
    """
    from scipy.ndimage import gaussian_filter

    if sigma < 0:
        raise ValueError(f"sigma must be >= 0, got {sigma}")
    tissue = np.asarray(tissue, bool)
    p = np.where(tissue, np.nan_to_num(np.asarray(prob, np.float64)), 0.0)
    if sigma == 0 or not tissue.any():
        return p
    num = gaussian_filter(p, sigma, mode="constant", truncate=3.0)
    den = gaussian_filter(tissue.astype(np.float64), sigma, mode="constant", truncate=3.0)
    return np.where(tissue, num / np.maximum(den, 1e-12), 0.0).clip(0.0, 1.0)


def lesion_map(prob: np.ndarray, tissue: np.ndarray, smooth: float = SMOOTH_SIGMA,
               scorer: LesionScorer | None = None) -> np.ndarray:
    """The map that locates and ranks lesion points and gives the slide score.

    Parameters
    ----------
    prob : ndarray (rows, cols)
        Raw probabilities.
    tissue : ndarray of bool (rows, cols)
    smooth : float
        Sigma (cells) of :func:`smooth_heatmap`, used without ``scorer``.
    scorer : wsiheat.postprocess.scorer.LesionScorer, optional
        A fitted lesion scorer: its map replaces the smoothed one.

    Returns
    -------
    ndarray float64 (rows, cols), in [0, 1], 0 off tissue
    """
    if scorer is not None:
        return scorer.apply(prob, tissue)
    return smooth_heatmap(prob, tissue, smooth)


def postprocess(prob: np.ndarray, tissue: np.ndarray, cell_size: float, *, smooth: float = SMOOTH_SIGMA,
                lesion_threshold: float = defaults.LESION_THRESHOLD, nms_radius: float | None = None,
                scorer: LesionScorer | None = None, origin: tuple[float, float] = (0.0, 0.0)
                ) -> tuple[np.ndarray, np.ndarray]:
    """The post-processing of a raw map, as ``wsiheat heatmap`` runs it: the lesion map, then its lesion points.

    Parameters
    ----------
    prob, tissue : ndarray (rows, cols)
        Raw probabilities and the tissue cells.
    cell_size : float
        Cell side in level-0 pixels.
    smooth : float
        Gaussian sigma in cells of :func:`smooth_heatmap` (unused with ``scorer``).
    lesion_threshold : float
        Minimum probability of a lesion point.
    nms_radius : float, optional
        Suppression radius in level-0 pixels (default 4 cells).
    scorer : wsiheat.postprocess.scorer.LesionScorer, optional
        Its lesion map replaces the smoothed map.
    origin : (float, float)
        Level-0 position of the grid's top-left corner.

    Returns
    -------
    lesion_map : ndarray (rows, cols)
        Whose maximum over tissue is the slide score (:func:`map_score`).
    lesions : ndarray (K, 3)
        ``(prob, x, y)`` rows in level-0 pixels, most probable first.
    """
    lmap = lesion_map(prob, tissue, smooth, scorer)
    return lmap, lesions_from_heatmap(lmap, tissue, cell_size, lesion_threshold, nms_radius, origin)


def map_score(lmap: np.ndarray, tissue: np.ndarray) -> float:
    """The slide score: the maximum of the lesion map over tissue (0 without tissue)."""
    tissue = np.asarray(tissue, bool)
    return float(np.asarray(lmap, np.float64)[tissue].max()) if tissue.any() else 0.0


def slide_scores(prob: np.ndarray, tissue: np.ndarray, cell0: float, mpp: float | None,
                 topk: int = 10, area_threshold: float = 0.5, smoothed: np.ndarray | None = None) -> dict:
    """Slide-level figures: max, top-k mean, tumor area above a threshold.

    Parameters
    ----------
    smoothed : ndarray (rows, cols), optional
        The lesion map (:func:`lesion_map`: smoothed or scorer's) whose maximum is the score;
        without it the score is the raw maximum. The other figures always
        come from the raw ``prob``.

    Returns
    -------
    dict
        ``score`` (max of ``smoothed`` or of ``prob`` over tissue, 0 without
        tissue), ``max_probability`` (raw max), ``topk_mean``, ``tumor_area``
        (µm² when ``mpp`` is known, else level-0 px²), ``tumor_area_unit``,
        ``tumor_cells``.
    """
    tissue = np.asarray(tissue, bool)
    p = np.asarray(prob, np.float64)[tissue]
    p = p[np.isfinite(p)]
    raw_max = float(p.max()) if len(p) else 0.0
    n_tumor = int((p >= area_threshold).sum())
    area = n_tumor * float(cell0) ** 2
    if mpp:
        area *= float(mpp) ** 2
    k = max(1, min(int(topk), len(p))) if len(p) else 0
    return {
        "score": raw_max if smoothed is None else map_score(smoothed, tissue),
        "max_probability": raw_max,
        "topk": int(topk),
        "topk_mean": float(np.sort(p)[-k:].mean()) if k else 0.0,
        "tumor_area": float(area),
        "tumor_area_unit": "um^2" if mpp else "px^2",
        "tumor_area_threshold": float(area_threshold),
        "tumor_cells": n_tumor,
    }


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
    scorer : wsiheat.postprocess.scorer.LesionScorer, optional
        Use its lesion map instead of the map smoothed with ``smooth``
        (``wsiheat heatmap --lesion-scorer``).

    Returns
    -------
    score : float
        Maximum of the lesion map (smoothed or scorer's) over tissue (0 without tissue).
    detections : (probs, xs, ys)
        Lesion points, level-0 integer coordinates (as in ``NAME_lesions.csv``).
    """
    tissue = np.asarray(tissue, bool)
    sm, les = postprocess(probabilities, tissue, cell_size, smooth=smooth, lesion_threshold=lesion_threshold,
                          nms_radius=nms_radius_cells * cell_size, scorer=scorer, origin=origin)
    score = map_score(sm, tissue)
    # as written to NAME_lesions.csv (probabilities to 6 decimals) and read back by evaluate froc
    probs = np.array([float(f"{p:.6f}") for p in les[:, 0]], np.float64)
    xy = np.round(les[:, 1:]).astype(np.int64)
    return score, (probs, xy[:, 0], xy[:, 1])
