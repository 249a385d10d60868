"""Tissue-only inference stitched into heatmaps, slide scores and lesion points.

Geometry (see :mod:`wsiheat.sampling`): the model's metadata gives the window
``W``, the labelled centre ``C`` and the towers' downsamples ``d_k``. The
heatmap grid is the sampling grid with **stride = C**, so heatmap cell
``(row, col)`` is exactly the labelled centre of one window: it covers level-0
``[col * s, (col + 1) * s) x [row * s, (row + 1) * s)`` with cell size
``s = C * d_0`` and is centred on ``((col + 0.5) * s, (row + 0.5) * s)``.

Only cells on tissue are evaluated (the Otsu mask of :mod:`wsiheat.tissue`;
a cell is tissue when the tissue fraction of its centre box exceeds
``tissue_threshold``); the others are background: probability 0 and
``tissue == False`` in the raw file.

Pipeline: tissue cells are grouped in square tiles of about ``block`` x
``block`` tower-0 pixels; background threads read each tile with one region
per tower (:func:`read_tile_windows`) while the main thread runs a compiled
inference function on fixed-size batches (the last one padded), so reading
overlaps the model. Memory is bounded by a few tiles and one batch, whatever
the slide size.

Outputs per slide, in the output folder, ``NAME`` = the output name (the slide
name by default); every file is written atomically:

* ``NAME.png``: heatmap, perceptual colormap and colorbar legend;
* ``NAME_overlay.png``: heatmap blended over the slide thumbnail (tissue
  cells only; background shows the slide);
* ``NAME.h5``: raw float32 ``probabilities`` and bool ``tissue`` (rows, cols)
  plus the geometry as attributes (:func:`read_heatmap`);
* ``NAME_heatmap.tif``: tiled pyramidal RGB TIFF, one pixel per cell, aligned
  with the slide's top-left corner (readable by OpenSlide, QuPath, tifffile);
* ``NAME_lesions.csv``: ``prob,x,y`` rows (level-0 px, no header);
* ``NAME_lesions.png``: the 16 most probable lesion candidates, each a view
  of 6 cells around it with the scored cell outlined, captioned with rank,
  probability and level-0 position, to check before opening a viewer;
* ``NAME.json``: the slide summary (``score`` = maximum of the lesion map:
  the smoothed map, or a fitted lesion scorer's map, see :func:`lesion_map`;
  ``max_probability`` = maximum of the raw map, ...), written last.
"""

from __future__ import annotations

import collections
import csv
import json
import math
import os
import time
import warnings
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from . import __version__
from .errors import WsiheatError
from .fileio import atomic_path, check_writable_dir
from .gallery import plot_gallery
from .sampling import Grid, WindowSpec, window_origin
from .slide import DOWNSAMPLE_TOLERANCE, Slide

#: Output file suffixes, in the order they are written (the JSON last).
OUTPUT_SUFFIXES = (".h5", ".png", "_overlay.png", "_heatmap.tif", "_lesions.csv", "_lesions.png", ".json")
#: default Gaussian sigma, in cells, of the map that ranks lesions and gives the slide score
SMOOTH_SIGMA = 0.75
#: lesion candidates shown in ``NAME_lesions.png``, and the side of each view in cells
GALLERY_LESIONS, GALLERY_CONTEXT_CELLS, GALLERY_PIXELS = 16, 6, 160
HEATMAP_FORMAT = "wsiheat-heatmap"
COLORMAP = "inferno"


class HeatmapWarning(UserWarning):
    """A slide that could be processed but deserves attention (e.g. no tissue)."""


# --------------------------------------------------------------------------- geometry
def spec_from_metadata(metadata: dict, slide: Slide | None = None,
                       downsamples: tuple[float, ...] | None = None) -> WindowSpec:
    """The inference window spec of a model: its towers, with stride = centre.

    Parameters
    ----------
    metadata : dict
        The model's wsiheat metadata (:func:`wsiheat.model.read_metadata`).
    slide : Slide, optional
        When given, the towers are checked against it: a tower finer than
        level 0 is an error (the slide lacks that magnification); a tower that
        is not a pyramid level is resampled from the nearest finer level.
    downsamples : tuple of float, optional
        Override the metadata's downsamples (relative to level 0).

    Notes
    -----
    When the metadata has ``mpps`` (µm/px of each tower, recorded when the
    training slides had µm/px) and the slide has µm/px, the towers are read
    at ``mpps / slide.mpp``, so a model trained at one scan resolution reads
    other scanners' slides at the same physical scale. Otherwise the
    metadata's ``downsamples`` are used as they are.
    """
    mpps = metadata.get("mpps")
    if downsamples is None and mpps and slide is not None and slide.mpp:
        # the model knows the physical resolution of its towers: match it on this slide
        downsamples = tuple(float(m) / slide.mpp for m in mpps)
    try:
        ds = tuple(float(d) for d in (downsamples if downsamples is not None else metadata["downsamples"]))
        window, center = int(metadata["window"]), int(metadata["center"])
        levels = tuple(metadata.get("levels") or ())
    except (KeyError, TypeError, ValueError) as exc:
        raise WsiheatError(f"model metadata: bad geometry ({exc})") from None
    towers = int(metadata.get("towers", len(ds)))
    if len(ds) != towers:
        raise WsiheatError(f"model metadata: {towers} towers but {len(ds)} downsamples {list(ds)}")
    spec = WindowSpec(downsamples=ds, window=window, center=center, stride=center,
                      levels=levels if downsamples is None else ())
    if slide is not None:
        for d in ds:
            if d < 1 - DOWNSAMPLE_TOLERANCE:
                raise WsiheatError(
                    f"{slide.path}: the model needs downsample {d:g} (finer than level 0); the slide "
                    f"has downsamples {', '.join(f'{x:g}' for x in slide.level_downsamples)}")
    return spec


def resampled_towers(slide: Slide, spec: WindowSpec) -> list[float]:
    """Tower downsamples that are not pyramid levels of ``slide`` (read by resampling)."""
    out = []
    for d in spec.downsamples:
        if not any(abs(d - l) <= DOWNSAMPLE_TOLERANCE * d for l in slide.level_downsamples):
            out.append(d)
    return out


def tissue_cells(slide: Slide, spec: WindowSpec, threshold: float = 0.0,
                 mask_downsample: float = 32.0) -> tuple[Grid, np.ndarray]:
    """The heatmap grid and its tissue cells.

    Parameters
    ----------
    threshold : float
        A cell is tissue when the tissue fraction of its centre box (``C x C``
        tower-0 pixels) is greater than this (0: any tissue).

    Returns
    -------
    grid : Grid
    tissue : ndarray of bool, shape (grid.n_rows, grid.n_cols)
    """
    from .tissue import tissue_mask

    grid = Grid.for_slide(slide.dimensions, spec)
    tm = tissue_mask(slide, downsample=min(mask_downsample, spec.cell0))
    rows, cols = grid.all_cells()
    frac = tm.fraction_in_boxes(*grid.boxes(rows, cols, spec.center))
    return grid, (frac > threshold).reshape(grid.n_rows, grid.n_cols)


def read_tile_windows(slide: Slide, spec: WindowSpec, centers0: np.ndarray,
                      out: np.ndarray | None = None) -> np.ndarray:
    """Read the windows of every tower for a compact group of cells, one region per tower.

    Same geometry as :func:`wsiheat.sampling.read_windows` (window origins by
    :func:`wsiheat.sampling.window_origin`), but the whole group is read with a
    single ``read_scaled`` per tower: callers pass a tile of neighbouring cells.

    Returns
    -------
    ndarray, shape (K, T, W, W, 3), uint8
    """
    centers0 = np.asarray(centers0, np.float64).reshape(-1, 2)
    K, W = len(centers0), spec.window
    if out is None:
        out = np.empty((K, spec.towers, W, W, 3), np.uint8)
    if K == 0:
        return out
    for t, d in enumerate(spec.downsamples):
        tl = window_origin(centers0, d, W)
        o = tl.min(axis=0)
        e = tl.max(axis=0) + W
        region = slide.read_scaled((o[0] * d, o[1] * d), d, (int(e[0] - o[0]), int(e[1] - o[1])))
        for k, (x, y) in enumerate(tl - o):
            out[k, t] = region[y:y + W, x:x + W]
    return out


def tiles_of_cells(rows: np.ndarray, cols: np.ndarray, tile_cells: int) -> list[np.ndarray]:
    """Group cells into square tiles of ``tile_cells`` x ``tile_cells`` cells.

    Returns index arrays into ``rows``/``cols``, tiles in row-major order
    (block rows top to bottom), cells row-major inside a tile.
    """
    rows, cols = np.asarray(rows), np.asarray(cols)
    if len(rows) == 0:
        return []
    tr, tc = rows // tile_cells, cols // tile_cells
    order = np.lexsort((cols, rows, tc, tr))
    key = (tr * (int(tc.max()) + 1) + tc)[order]
    splits = np.flatnonzero(np.diff(key)) + 1
    return np.split(order, splits)


# --------------------------------------------------------------------------- model
def check_model(model, spec: WindowSpec, path: str | os.PathLike = "model") -> None:
    """Check a Keras model takes ``(B, T, W, W, 3)`` and returns ``(B, 1)``."""
    try:
        ishape = tuple(model.inputs[0].shape)[1:]
        oshape = tuple(model.outputs[0].shape)[1:]
    except (AttributeError, IndexError, TypeError):
        return  # subclassed model without symbolic shapes: trust the metadata
    want = (spec.towers, spec.window, spec.window, 3)
    if len(ishape) != 4 or any(a is not None and a != b for a, b in zip(ishape, want)):
        raise WsiheatError(f"{path}: the model takes inputs shaped {ishape}, but its metadata says {want}")
    if oshape not in ((1,), (None,)):
        raise WsiheatError(f"{path}: the model returns {oshape} per window, expected (1,) tumor probability")


def _rot90(x, k: int):
    """Rotate a (B, T, H, W, C) tensor by k * 90 degrees in the (H, W) plane."""
    import tensorflow as tf

    for _ in range(k % 4):
        x = tf.reverse(tf.transpose(x, [0, 1, 3, 2, 4]), axis=[3])
    return x


def dihedral(x: np.ndarray, k: int, flip: bool) -> np.ndarray:
    """The numpy twin of the TTA transforms: optional horizontal flip, then k x 90° rotation.

    ``x`` is (B, T, H, W, C); every tower gets the same transform.
    """
    if flip:
        x = x[:, :, :, ::-1]
    for _ in range(k % 4):
        x = np.swapaxes(x, 2, 3)[:, :, :, ::-1]
    return x


def make_predict_fn(model, spec: WindowSpec, batch_size: int, tta: bool = False
                    ) -> Callable[[np.ndarray], np.ndarray]:
    """A compiled inference function on fixed-size uint8 batches.

    Returns
    -------
    callable
        ``f(batch uint8 (batch_size, T, W, W, 3)) -> float32 (batch_size,)``;
        with ``tta`` the mean over the 8 rotations/flips (same transform for
        every tower).
    """
    import tensorflow as tf

    try:
        in_dtype = tf.as_dtype(model.inputs[0].dtype)
    except (AttributeError, IndexError, TypeError):
        in_dtype = tf.uint8
    shape = (batch_size, spec.towers, spec.window, spec.window, 3)

    def run(x):
        y = model(x if in_dtype == tf.uint8 else tf.cast(x, in_dtype), training=False)
        return tf.reshape(tf.cast(y, tf.float32), [batch_size])

    @tf.function(input_signature=[tf.TensorSpec(shape, tf.uint8)])
    def fn(x):
        if not tta:
            return run(x)
        outs = []
        for flip in (False, True):
            xf = tf.reverse(x, axis=[3]) if flip else x
            for k in range(4):
                outs.append(run(_rot90(xf, k)))
        return tf.add_n(outs) / 8.0

    def predict(batch: np.ndarray) -> np.ndarray:
        return fn(batch).numpy()

    return predict


def predict_cells(slide: Slide, spec: WindowSpec, centers0: np.ndarray, tiles: list[np.ndarray],
                  predict: Callable[[np.ndarray], np.ndarray], batch_size: int, workers: int = 2,
                  progress: Callable[[int], None] | None = None) -> np.ndarray:
    """Probabilities of windows centred on ``centers0``, read tile by tile in background threads.

    Parameters
    ----------
    centers0 : ndarray (K, 2)
        Level-0 centres of all cells to evaluate.
    tiles : list of index arrays
        Groups of neighbouring cells (:func:`tiles_of_cells`), each read with
        one region per tower.
    predict : callable
        From :func:`make_predict_fn` with the same ``batch_size``.
    workers : int
        Reader threads (OpenSlide and OpenCV release the GIL); up to
        ``2 * workers`` tiles are read ahead.
    progress : callable, optional
        Called with the number of windows done after each batch.

    Returns
    -------
    ndarray (K,) float32
    """
    K = len(centers0)
    probs = np.zeros(K, np.float32)
    if K == 0:
        return probs
    batch = np.zeros((batch_size, spec.towers, spec.window, spec.window, 3), np.uint8)
    where = np.zeros(batch_size, np.int64)
    fill = 0
    workers = max(1, int(workers))
    ex = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="wsiheat-read")
    pending: collections.deque = collections.deque()
    tile_iter = iter(tiles)

    def submit_next() -> None:
        idx = next(tile_iter, None)
        if idx is not None:
            pending.append((idx, ex.submit(read_tile_windows, slide, spec, centers0[idx])))

    try:
        for _ in range(2 * workers):
            submit_next()
        while pending:
            idx, fut = pending.popleft()
            windows = fut.result()
            submit_next()
            pos = 0
            while pos < len(idx):
                n = min(batch_size - fill, len(idx) - pos)
                batch[fill:fill + n] = windows[pos:pos + n]
                where[fill:fill + n] = idx[pos:pos + n]
                fill += n
                pos += n
                if fill == batch_size:
                    probs[where] = predict(batch)
                    fill = 0
                    if progress:
                        progress(batch_size)
        if fill:
            batch[fill:] = 0  # pad the last batch: fixed shape, no retracing
            probs[where[:fill]] = predict(batch)[:fill]
            if progress:
                progress(fill)
    finally:
        ex.shutdown(wait=True, cancel_futures=True)
    return probs


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


def lesion_map(prob: np.ndarray, tissue: np.ndarray, smooth: float = SMOOTH_SIGMA, scorer=None) -> np.ndarray:
    """The map that locates and ranks lesion points and gives the slide score.

    Parameters
    ----------
    prob : ndarray (rows, cols)
        Raw probabilities.
    tissue : ndarray of bool (rows, cols)
    smooth : float
        Sigma (cells) of :func:`smooth_heatmap`, used without ``scorer``.
    scorer : wsiheat.lesionmap.LesionScorer, optional
        A fitted lesion scorer: its map replaces the smoothed one.

    Returns
    -------
    ndarray float64 (rows, cols), in [0, 1], 0 off tissue
    """
    if scorer is not None:
        return scorer.apply(prob, tissue)
    return smooth_heatmap(prob, tissue, smooth)


def lesion_views(slide: Slide, lesions: np.ndarray, cell0: float, context_cells: float = GALLERY_CONTEXT_CELLS,
                 size: int = GALLERY_PIXELS) -> np.ndarray:
    """Views of the slide around lesion points, the scored cell outlined.

    Parameters
    ----------
    slide : Slide
    lesions : ndarray (K, 3)
        Rows ``(prob, x, y)`` in level-0 pixels (:func:`lesions_from_heatmap`).
    cell0 : float
        Cell size in level-0 pixels.
    context_cells : float
        Side of each view in cells.
    size : int
        Side of each view in pixels.

    Returns
    -------
    ndarray uint8 (K, 1, size, size, 3)
        One tower per view, for :func:`wsiheat.gallery.plot_gallery`.
    """
    side0 = float(context_cells) * float(cell0)
    d = side0 / size
    half = 0.5 * float(cell0) / d  # half the cell, in view pixels
    lo, hi = int(round(size / 2 - half)), int(round(size / 2 + half))  # outline: [lo, hi)
    lo, hi = max(0, lo), min(size, max(hi, lo + 4))
    t = 2  # line width in view pixels
    out = np.empty((len(lesions), 1, size, size, 3), np.uint8)
    for i, (_, x, y) in enumerate(np.asarray(lesions, np.float64).reshape(-1, 3)):
        v = slide.read_scaled((x - side0 / 2, y - side0 / 2), d, (size, size))
        for r0, r1, c0, c1 in ((lo, lo + t, lo, hi), (hi - t, hi, lo, hi),
                               (lo, hi, lo, lo + t), (lo, hi, hi - t, hi)):
            v[r0:r1, c0:c1] = (0, 200, 255)  # cyan outline of the scored cell
        out[i, 0] = v
    return out


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
    sm = None if smoothed is None else np.asarray(smoothed, np.float64)[tissue]
    n_tumor = int((p >= area_threshold).sum())
    area = n_tumor * float(cell0) ** 2
    if mpp:
        area *= float(mpp) ** 2
    k = max(1, min(int(topk), len(p))) if len(p) else 0
    return {
        "score": raw_max if sm is None else (float(sm.max()) if sm.size else 0.0),
        "max_probability": raw_max,
        "topk": int(topk),
        "topk_mean": float(np.sort(p)[-k:].mean()) if k else 0.0,
        "tumor_area": float(area),
        "tumor_area_unit": "um^2" if mpp else "px^2",
        "tumor_area_threshold": float(area_threshold),
        "tumor_cells": n_tumor,
    }


def colorize(prob: np.ndarray, tissue: np.ndarray | None = None, cmap: str = COLORMAP) -> np.ndarray:
    """RGB uint8 image of a probability map (background cells = probability 0)."""
    from matplotlib import colormaps

    p = np.nan_to_num(np.clip(np.asarray(prob, np.float64), 0, 1))
    if tissue is not None:
        p = np.where(tissue, p, 0.0)
    return (colormaps[cmap](p)[..., :3] * 255 + 0.5).astype(np.uint8)


# --------------------------------------------------------------------------- writers
def write_raw(path: Path, prob: np.ndarray, tissue: np.ndarray, attrs: dict) -> None:
    """Write the raw heatmap HDF5 (see :func:`read_heatmap`)."""
    import h5py

    with atomic_path(path) as tmp:
        with h5py.File(tmp, "w") as f:
            f.create_dataset("probabilities", data=prob.astype(np.float32), compression="gzip")
            f.create_dataset("tissue", data=tissue.astype(bool), compression="gzip")
            for k, v in attrs.items():
                f.attrs[k] = v


@dataclass(frozen=True)
class Heatmap:
    """A raw heatmap read back from ``NAME.h5``.

    Cell ``(row, col)`` covers level-0 ``[ox + col*s, ox + (col+1)*s) x
    [oy + row*s, oy + (row+1)*s)``, ``(ox, oy) = origin``, ``s = cell_size``.
    """

    probabilities: np.ndarray
    tissue: np.ndarray
    cell_size: float
    origin: tuple[float, float]
    attrs: dict

    def centers(self, rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
        """Level-0 (x, y) centres of cells, (K, 2)."""
        s, (ox, oy) = self.cell_size, self.origin
        return np.stack([ox + (np.asarray(cols) + 0.5) * s, oy + (np.asarray(rows) + 0.5) * s], axis=-1)

    def cell_at(self, x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(rows, cols) of the cells holding level-0 points."""
        s, (ox, oy) = self.cell_size, self.origin
        return (np.floor((np.asarray(y) - oy) / s).astype(np.int64),
                np.floor((np.asarray(x) - ox) / s).astype(np.int64))


def read_heatmap(path: str | os.PathLike) -> Heatmap:
    """Read a raw heatmap file written by :func:`heatmap_slide`."""
    import h5py

    path = Path(path)
    try:
        with h5py.File(path, "r") as f:
            if f.attrs.get("format") != HEATMAP_FORMAT:
                raise WsiheatError(f"{path}: not a wsiheat heatmap file")
            attrs = {k: (v.item() if isinstance(v, np.generic) else v) for k, v in f.attrs.items()}
            return Heatmap(f["probabilities"][...], f["tissue"][...].astype(bool),
                           float(attrs["cell_size"]), tuple(float(v) for v in attrs["origin"]), attrs)
    except (OSError, KeyError) as exc:
        raise WsiheatError(f"{path}: cannot read heatmap ({exc})") from None


def write_heatmap_png(path: Path, prob: np.ndarray, tissue: np.ndarray, title: str = "",
                      min_pixels: int = 600, max_pixels: int = 4000) -> None:
    """Heatmap figure: one or more pixels per cell, colormap and colorbar legend."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib.figure import Figure

    rows, cols = prob.shape
    scale = max(1.0, min_pixels / max(rows, cols))
    scale = min(scale, max_pixels / max(rows, cols)) if max(rows, cols) * scale > max_pixels else scale
    dpi = 100
    w_in, h_in = cols * scale / dpi, rows * scale / dpi
    fig = Figure(figsize=(w_in + 1.6, h_in + 0.8), dpi=dpi)
    ax = fig.add_axes((0.2 / (w_in + 1.6), 0.3 / (h_in + 0.8), w_in / (w_in + 1.6), h_in / (h_in + 0.8)))
    from matplotlib import colormaps

    # background (not evaluated) in light grey, so it differs from tissue at probability 0
    img = np.ma.masked_array(np.nan_to_num(prob), mask=~np.asarray(tissue, bool))
    cmap = colormaps[COLORMAP].with_extremes(bad=(0.85, 0.85, 0.85))
    im = ax.imshow(img, cmap=cmap, vmin=0, vmax=1, interpolation="nearest")
    ax.set_axis_off()
    if title:
        ax.set_title(f"{title}   (grey: no tissue, not evaluated)", fontsize=8)
    cax = fig.add_axes(((w_in + 0.35) / (w_in + 1.6), 0.3 / (h_in + 0.8), 0.15 / (w_in + 1.6),
                        h_in / (h_in + 0.8)))
    cb = fig.colorbar(im, cax=cax)
    cb.set_label("tumor probability", fontsize=8)
    cb.ax.tick_params(labelsize=7)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=dpi)


def overlay_image(thumb: np.ndarray, thumb_ds: float, prob: np.ndarray, tissue: np.ndarray,
                  cell0: float, alpha: float = 0.8) -> np.ndarray:
    """Blend the colour-mapped heatmap over a thumbnail; background cells stay transparent.

    A tissue cell's opacity is ``alpha * sqrt(probability)``: tissue at
    probability 0 shows the slide unchanged, likely tumor is strongly tinted.
    """
    h, w = thumb.shape[:2]
    rr = np.minimum(((np.arange(h) + 0.5) * thumb_ds / cell0).astype(np.int64), prob.shape[0] - 1)
    cc = np.minimum(((np.arange(w) + 0.5) * thumb_ds / cell0).astype(np.int64), prob.shape[1] - 1)
    p = np.nan_to_num(prob)[np.ix_(rr, cc)]
    t = tissue[np.ix_(rr, cc)]
    rgb = colorize(p).astype(np.float32)
    a = np.where(t, alpha * np.sqrt(np.clip(p, 0, 1)), 0.0)[..., None]
    return (thumb.astype(np.float32) * (1 - a) + rgb * a + 0.5).astype(np.uint8)


def write_png(path: Path, rgb: np.ndarray) -> None:
    from PIL import Image

    with atomic_path(path) as tmp:
        Image.fromarray(rgb).save(tmp, format="PNG")


def write_pyramid_tiff(path: Path, rgb: np.ndarray, cell0: float, mpp: float | None = None,
                       description: dict | None = None, tile: int = 256,
                       min_size: int = 128) -> int:
    """Write an RGB image as a tiled pyramidal TIFF (one page per level, halving).

    Level 0 has one pixel per heatmap cell, i.e. ``cell0`` level-0 pixels of
    the slide, anchored at the slide's top-left corner. The resolution tags
    hold the pixel size in cm when the slide's µm/px is known; the
    description (JSON) records ``cell_size`` in level-0 pixels. Lossless
    (deflate); levels are added until both sides are at most ``min_size``
    (:func:`wsiheat.pyramid.write_pyramid_array`).

    Returns
    -------
    int
        Number of pyramid levels written.
    """
    from .pyramid import write_pyramid_array

    desc = json.dumps({"wsiheat": "heatmap", "cell_size": float(cell0), "mpp": mpp, **(description or {})})
    with atomic_path(path) as tmp:
        return write_pyramid_array(tmp, rgb, compression="deflate", mpp=cell0 * mpp if mpp else None,
                                   description=desc, tile=tile, min_side=min_size)


def write_lesions_csv(path: Path, lesions: np.ndarray) -> None:
    """``prob,x,y`` rows (level-0 pixels), no header: the CAMELYON16 submission format."""
    with atomic_path(path) as tmp:
        with open(tmp, "w", newline="") as f:
            w = csv.writer(f)
            for p, x, y in lesions:
                w.writerow([f"{p:.6f}", int(round(x)), int(round(y))])


# --------------------------------------------------------------------------- the slide
def output_paths(out_dir: str | os.PathLike, name: str) -> dict[str, Path]:
    """The output files of one slide, keyed by suffix (:data:`OUTPUT_SUFFIXES`)."""
    out_dir = Path(out_dir)
    return {s: out_dir / f"{name}{s}" for s in OUTPUT_SUFFIXES}


def outputs_exist(out_dir: str | os.PathLike, name: str) -> bool:
    """True when every output of ``name`` exists (a complete earlier run)."""
    return all(p.exists() for p in output_paths(out_dir, name).values())


def heatmap_slide(slide_path: str | os.PathLike, model, metadata: dict, out_dir: str | os.PathLike,
                  name: str | None = None, *, batch_size: int = 64, tta: bool = False,
                  readers: int = 2, block: int = 1024, tissue_threshold: float = 0.0,
                  lesion_threshold: float = 0.5, nms_radius: float | None = None,
                  nms_radius_um: float | None = None, area_threshold: float = 0.5, topk: int = 10,
                  smooth: float = SMOOTH_SIGMA, lesion_scorer=None,
                  downsamples: tuple[float, ...] | None = None, model_path: str | None = None,
                  predict: Callable[[np.ndarray], np.ndarray] | None = None,
                  max_cells: int | None = None, thumbnail_size: int = 2048,
                  progress: bool = False) -> dict:
    """Compute and write the heatmap outputs of one slide.

    Parameters
    ----------
    slide_path : path-like
        Any slide :class:`wsiheat.slide.Slide` opens.
    model : keras.Model
        Takes uint8 ``(B, T, W, W, 3)``, returns ``(B, 1)`` probabilities.
    metadata : dict
        The model's wsiheat metadata (geometry).
    out_dir : path-like
        Output folder (must exist).
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
    lesion_scorer : wsiheat.lesionmap.LesionScorer, optional
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

    Returns
    -------
    dict
        The slide summary, also written as ``NAME.json``.
    """
    if batch_size < 1:
        raise WsiheatError(f"batch size must be >= 1, got {batch_size}")
    if readers < 1:
        raise WsiheatError(f"readers must be >= 1, got {readers}")
    if not 0 <= lesion_threshold <= 1:
        raise WsiheatError(f"lesion threshold must be in [0, 1], got {lesion_threshold}")
    out_dir = Path(out_dir)
    if not out_dir.is_dir():
        raise WsiheatError(f"{out_dir}: output folder does not exist")
    check_writable_dir(out_dir / "x")
    t_start = time.perf_counter()
    from .model import model_precision

    precision = model_precision(model)
    with Slide(slide_path) as slide:
        name = name or slide.name
        spec = spec_from_metadata(metadata, slide, downsamples)
        check_model(model, spec, model_path or "model")
        if predict is None:
            predict = make_predict_fn(model, spec, batch_size, tta)
        warns: list[str] = []
        resampled = resampled_towers(slide, spec)
        if resampled:
            warns.append(f"{slide.path}: downsample(s) {', '.join(f'{d:g}' for d in resampled)} are not "
                         f"pyramid levels; resampled from finer levels")
        grid, tissue = tissue_cells(slide, spec, tissue_threshold)
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
        tile_cells = max(1, (block - spec.window) // spec.stride + 1)
        tiles = tiles_of_cells(rows, cols, tile_cells)
        bar = None
        if progress and len(rows):
            from tqdm import tqdm

            bar = tqdm(total=len(rows), unit="patch", desc=name, dynamic_ncols=True, leave=False)
        t_model = time.perf_counter()
        try:
            probs = predict_cells(slide, spec, centers0, tiles, predict, batch_size, readers,
                                  bar.update if bar else None)
        finally:
            if bar:
                bar.close()
        infer_seconds = time.perf_counter() - t_model
        prob = np.zeros((grid.n_rows, grid.n_cols), np.float32)
        prob[rows, cols] = probs
        cell0 = spec.cell0
        mpp = slide.mpp
        if nms_radius_um is not None:
            if mpp is None:
                raise WsiheatError(f"{slide.path}: no µm/px in the slide metadata; give --nms-radius in "
                                   f"level-0 pixels instead of µm")
            nms_radius = nms_radius_um / mpp
        if smooth < 0:
            raise WsiheatError(f"smoothing sigma must be >= 0 cells, got {smooth}")
        lmap = lesion_map(prob, tissue, smooth, lesion_scorer)
        lesions = lesions_from_heatmap(lmap, tissue, cell0, lesion_threshold, nms_radius)
        scores = slide_scores(prob, tissue, cell0, mpp, topk, area_threshold, lmap)
        scores["smooth"] = None if lesion_scorer is not None else float(smooth)
        scores["lesion_map"] = "smoothed" if lesion_scorer is None else "scorer"
        views = lesion_views(slide, lesions[:GALLERY_LESIONS], cell0)
        thumb, thumb_ds = slide.thumbnail(thumbnail_size)
        dims = list(slide.dimensions)
        slide_name, slide_file = slide.name, str(slide.path)
    for w in warns:
        warnings.warn(w, HeatmapWarning, stacklevel=2)

    paths = output_paths(out_dir, name)
    geometry = {
        "origin": [0.0, 0.0], "cell_size": float(cell0), "stride": spec.stride, "center": spec.center,
        "window": spec.window, "downsamples": [float(d) for d in spec.downsamples],
        "levels": [(-1 if l is None else int(l))
                   for l in (spec.levels if len(spec.levels) == spec.towers else [None] * spec.towers)],
        "grid_shape": [grid.n_rows, grid.n_cols],
    }
    write_raw(paths[".h5"], prob, tissue, {
        "format": HEATMAP_FORMAT, "schema_version": 1, **geometry,
        "slide": slide_name, "slide_path": slide_file, "slide_dimensions": dims,
        "mpp": float("nan") if mpp is None else float(mpp), "model": str(model_path or ""),
        "tta": bool(tta), "tissue_threshold": float(tissue_threshold), "smooth": float(smooth),
        "lesion_scorer": "" if lesion_scorer is None else json.dumps(lesion_scorer.to_dict(), default=str),
        "precision": precision,
        "wsiheat_version": __version__,
    })
    write_heatmap_png(paths[".png"], prob, tissue, title=f"{slide_name}  score {scores['score']:.3f}")
    write_png(paths["_overlay.png"], overlay_image(thumb, thumb_ds, prob, tissue, cell0))
    write_pyramid_tiff(paths["_heatmap.tif"], colorize(prob, tissue), cell0, mpp,
                       {"slide": slide_name, "slide_dimensions": dims, "origin": [0, 0]})
    write_lesions_csv(paths["_lesions.csv"], lesions)
    plot_gallery(paths["_lesions.png"], [(
        f"{slide_name}: {len(views)} most probable of {len(lesions)} lesion candidate(s), "
        f"p >= {lesion_threshold:g} (views of {GALLERY_CONTEXT_CELLS} cells, scored cell outlined)",
        views, [f"#{i + 1}  p = {p:.3f}\nx {x:.0f}, y {y:.0f}" for i, (p, x, y) in enumerate(lesions[:len(views)])])],
        empty_text=f"{slide_name}: no lesion candidate at p >= {lesion_threshold:g}")
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
        "precision": precision,
        "geometry": geometry,
        "model": str(model_path) if model_path else None,
        "model_metadata": {k: metadata.get(k) for k in ("window", "center", "stride", "levels", "downsamples",
                                                        "towers", "class_names", "training_data",
                                                        "wsiheat_version") if k in metadata},
        "wsiheat_version": __version__,
        "outputs": {k: p.name for k, p in paths.items()},
        "warnings": warns,
    }
    with atomic_path(paths[".json"]) as tmp:
        tmp.write_text(json.dumps(summary, indent=2, default=str) + "\n")
    return summary
