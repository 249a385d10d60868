"""Sliding-window geometry shared by extraction and inference.

Geometry (all stages use exactly this):

* A **window spec** has T towers (magnifications). Tower ``k`` reads a
  ``W x W`` window (default 80 px) at downsample ``d_k`` (tower 0 the finest,
  default level 2); every tower of a sample is centred on the same level-0
  point.
* The **grid** lives at tower 0: cells of ``S x S`` tower-0 pixels (stride,
  default 50) tile the slide from its top-left corner; there are
  ``ceil(W0 / (S * d_0))`` columns and ``ceil(H0 / (S * d_0))`` rows (a side
  within 1e-6 cells of a whole number is an exact fit). Cell
  ``(row, col)`` is centred on level-0 point
  ``((col + 0.5) * S * d_0, (row + 0.5) * S * d_0)``.
* A window's **label** is tumor when any tumor pixel lies in its central
  ``C x C`` tower-0 pixels (default 50). With ``C == S`` (the default, and what
  ``heatmap`` uses) the labelled centres tile the slide exactly, so one
  heatmap cell is one window's centre.
* The top-left of tower ``k``'s window, in pixels of downsample ``d_k``, is
  ``floor(c / d_k - W / 2 + 0.5)`` for a level-0 centre ``c``: exact for tower
  0 on the default grid, within half a pixel of the centre for coarser towers.

Windows are read in blocks of cells (one region per block and tower, then
sliced), never one ``read_region`` per window and never a whole level.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np

from wsiheat import defaults
from wsiheat.errors import WsiheatError
from wsiheat.wsi.slide import Slide

if TYPE_CHECKING:  # pragma: no cover
    from tqdm import tqdm

    from wsiheat.patches.store import ShardWriter
    from wsiheat.wsi.annotations.groundtruth import GroundTruth
    from wsiheat.wsi.tissue import BandedTissueMask, TissueMask


@dataclass(frozen=True)
class WindowSpec:
    """Window geometry.

    Parameters
    ----------
    downsamples : tuple of float
        Downsample of each tower relative to level 0, tower 0 the finest.
    window : int
        Window side W in pixels (each tower).
    center : int
        Side C of the labelled centre, tower-0 pixels.
    stride : int
        Grid step S, tower-0 pixels.
    levels : tuple of int or None
        The pyramid level each tower was requested as (metadata only).
    """

    downsamples: tuple[float, ...]
    window: int = defaults.WINDOW
    center: int = defaults.CENTER
    stride: int = defaults.STRIDE
    levels: tuple = field(default=())

    def __post_init__(self):
        if len(self.downsamples) < 1:
            raise WsiheatError("need at least one magnification (tower)")
        for name in ("window", "center", "stride"):
            v = getattr(self, name)
            if not isinstance(v, (int, np.integer)) or v <= 0:
                raise WsiheatError(f"{name} must be a positive integer, got {v!r}")
        if self.center > self.window:
            raise WsiheatError(f"center ({self.center}) must not exceed window ({self.window})")
        if any(d <= 0 for d in self.downsamples):
            raise WsiheatError(f"downsamples must be positive, got {self.downsamples}")
        if list(self.downsamples) != sorted(self.downsamples):
            raise WsiheatError(f"towers must go from finest to coarsest, got downsamples {self.downsamples}")

    @property
    def towers(self) -> int:
        return len(self.downsamples)

    @property
    def cell0(self) -> float:
        """Grid step in level-0 pixels."""
        return self.stride * self.downsamples[0]


def resolve_towers(slide: Slide, levels: tuple[int, ...] | None = None,
                   downsamples: tuple[float, ...] | None = None,
                   mpps: tuple[float, ...] | None = None) -> tuple[tuple, tuple[float, ...]]:
    """Turn tower levels, downsamples or µm/px targets into (levels, downsamples).

    Exactly one of ``levels``, ``downsamples`` or ``mpps`` is used (the first
    given). A level must exist in the slide (:class:`WsiheatError` otherwise).
    """
    if levels is not None:
        return tuple(int(l) for l in levels), tuple(slide.downsample_for(level=int(l)) for l in levels)
    if downsamples is not None:
        return tuple(None for _ in downsamples), tuple(float(d) for d in downsamples)
    if mpps is not None:
        return tuple(None for _ in mpps), tuple(slide.downsample_for(mpp=float(m)) for m in mpps)
    raise ValueError("give levels, downsamples or mpps")


_GRID_EPS = 1e-6  # cells: slide sides within this of a whole number of cells fit exactly


@dataclass(frozen=True)
class Grid:
    """The tower-0 cell grid over a slide (see the module docstring)."""

    spec: WindowSpec
    n_cols: int
    n_rows: int

    @classmethod
    def for_slide(cls, dimensions: tuple[int, int], spec: WindowSpec) -> "Grid":
        W, H = dimensions
        # a cell size from µm/px ratios can miss an exact fit by a rounding error (224 * 1.33482... =
        # 298.99999999999994 on a 7176 px slide): such a sliver is not a partial cell
        n_cols, n_rows = (math.ceil(side / spec.cell0 - _GRID_EPS) for side in (W, H))
        return cls(spec, max(1, n_cols), max(1, n_rows))

    def centers(self, rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
        """Level-0 (x, y) centres of cells, float64 array (K, 2)."""
        c = self.spec.cell0
        return np.stack([(np.asarray(cols) + 0.5) * c, (np.asarray(rows) + 0.5) * c], axis=-1).astype(np.float64)

    def boxes(self, rows: np.ndarray, cols: np.ndarray, side: int) -> tuple[np.ndarray, ...]:
        """Level-0 boxes (x0, y0, x1, y1) of ``side`` tower-0 pixels centred on cells."""
        ctr = self.centers(rows, cols)
        half = side * self.spec.downsamples[0] / 2
        return ctr[:, 0] - half, ctr[:, 1] - half, ctr[:, 0] + half, ctr[:, 1] + half

    def all_cells(self) -> tuple[np.ndarray, np.ndarray]:
        """(rows, cols) of every cell, row-major."""
        r, c = np.divmod(np.arange(self.n_rows * self.n_cols), self.n_cols)
        return r, c


def window_origin(centers0: np.ndarray, downsample: float, window: int) -> np.ndarray:
    """Top-left (x, y) of windows in pixels of ``downsample``, int64 (K, 2)."""
    return np.floor(np.asarray(centers0, np.float64) / downsample - window / 2 + 0.5).astype(np.int64)


def read_windows(slide: Slide, spec: WindowSpec, centers0: np.ndarray, block: int | None = 1024,
                 out: np.ndarray | None = None) -> np.ndarray:
    """Read the windows of every tower around level-0 centres, in large regions.

    Centres are grouped into square blocks of about ``block`` x ``block``
    tower pixels; each block is read with one region per tower and sliced.

    Parameters
    ----------
    slide : Slide
    spec : WindowSpec
    centers0 : ndarray (K, 2)
        Level-0 (x, y) centres.
    block : int or None
        Block side in tower pixels (bounds memory: one block per tower). None
        reads all the centres with a single region per tower: for callers
        that pass a compact tile of neighbouring cells (heatmap inference).
    out : ndarray (K, T, W, W, 3) uint8, optional
        Output buffer.

    Returns
    -------
    ndarray, shape (K, T, W, W, 3), uint8
    """
    centers0 = np.asarray(centers0, np.float64).reshape(-1, 2)
    K, T, Wn = len(centers0), spec.towers, spec.window
    if out is None:
        out = np.empty((K, T, Wn, Wn, 3), np.uint8)
    if K == 0:
        return out
    for t, d in enumerate(spec.downsamples):
        tl = window_origin(centers0, d, Wn)
        step = max(Wn, block - Wn) if block is not None else None
        bkey = tl // step if step is not None else np.zeros_like(tl)
        order = np.lexsort((bkey[:, 0], bkey[:, 1]))
        keys = bkey[order]
        splits = np.flatnonzero(np.any(np.diff(keys, axis=0) != 0, axis=1)) + 1
        for idx in np.split(order, splits):
            o = tl[idx].min(axis=0)
            e = tl[idx].max(axis=0) + Wn
            region = slide.read_scaled((o[0] * d, o[1] * d), d, (int(e[0] - o[0]), int(e[1] - o[1])))
            rel = tl[idx] - o
            for k, (x, y) in zip(idx, rel):
                out[k, t] = region[y:y + Wn, x:x + Wn]
    return out


# --- window selection (extract) ------------------------------------------------------

@dataclass
class WindowPlan:
    """The windows chosen on one slide.

    Attributes
    ----------
    centers0 : ndarray (K, 2) float64
        Level-0 (x, y) centres, in reading order (grouped by block).
    labels : ndarray (K,) uint8
        1 = tumor.
    stats : dict
        ``scanned`` (grid cells), ``on_tissue`` (cells whose tissue fraction
        reaches the threshold), ``tumor`` (tumor cells, on tissue or not),
        ``tumor_off_tissue``, ``kept_tumor``, ``kept_normal``,
        ``normal_available``, ``has_ground_truth``, ``tumor_slide``.
    """

    centers0: np.ndarray
    labels: np.ndarray
    stats: dict


def tumor_labels(grid: Grid, ground_truth: GroundTruth | None, rows: np.ndarray, cols: np.ndarray,
                 block_cells: int = 32, coarse_cells: int = 8) -> np.ndarray:
    """Tumor label of cells: any tumor pixel in the central ``C x C`` tower-0 pixels.

    The ground truth is rendered at tower-0 resolution (``GroundTruth.tumor_mask``
    at downsample ``d_0``) over blocks of ``block_cells x block_cells`` cells,
    and each cell's central box is summed with an integral image. Blocks are
    only rendered where a coarse, dilated view of the ground truth (one pixel
    per ``coarse_cells`` cells) shows tumor, so a slide's full tower-0 mask is
    never built.

    The central box of a cell centred on level-0 ``c`` spans tower-0 pixels
    ``[floor(c / d_0 - C / 2 + 0.5), ... + C)`` (as :func:`window_origin`).

    Returns
    -------
    ndarray of bool, shape (K,)
    """
    spec = grid.spec
    rows, cols = np.asarray(rows, np.int64), np.asarray(cols, np.int64)
    out = np.zeros(len(rows), bool)
    if ground_truth is None or len(rows) == 0 or not ground_truth.has_tumor:
        return out
    d0, C = spec.downsamples[0], spec.center
    coarse = _coarse_tumor(grid, ground_truth, coarse_cells)
    cand = np.flatnonzero(coarse[rows // coarse_cells, cols // coarse_cells])
    if len(cand) == 0:
        return out
    keys = (rows[cand] // block_cells) * (grid.n_cols // block_cells + 1) + cols[cand] // block_cells
    order = np.argsort(keys, kind="stable")
    cand, keys = cand[order], keys[order]
    splits = np.flatnonzero(np.diff(keys)) + 1
    for idx in np.split(cand, splits):
        tl = window_origin(grid.centers(rows[idx], cols[idx]), d0, C)
        o = tl.min(axis=0)
        e = tl.max(axis=0) + C
        m = ground_truth.tumor_mask(o[0] * d0, o[1] * d0, int(e[0] - o[0]), int(e[1] - o[1]), d0)
        ii = np.zeros((m.shape[0] + 1, m.shape[1] + 1), np.int32)
        ii[1:, 1:] = np.cumsum(np.cumsum(m, axis=0, dtype=np.int32), axis=1)
        x0, y0 = tl[:, 0] - o[0], tl[:, 1] - o[1]
        x1, y1 = x0 + C, y0 + C
        out[idx] = (ii[y1, x1] - ii[y0, x1] - ii[y1, x0] + ii[y0, x0]) > 0
    return out


def _coarse_tumor(grid: Grid, ground_truth, coarse_cells: int) -> np.ndarray:
    """Where tumor may be: one pixel per ``coarse_cells`` x ``coarse_cells`` cells, dilated by one."""
    from scipy import ndimage

    cds = grid.spec.cell0 * coarse_cells
    ch, cw = math.ceil(grid.n_rows / coarse_cells), math.ceil(grid.n_cols / coarse_cells)
    coarse = ground_truth.tumor_mask(0, 0, cw, ch, cds)
    if not coarse.any():
        # tiny tumours may vanish at coarse scale for polygons: fall back to a finer probe
        coarse = ground_truth.tumor_mask(0, 0, cw * coarse_cells, ch * coarse_cells, grid.spec.cell0)
        coarse = coarse.reshape(ch, coarse_cells, cw, coarse_cells).any(axis=(1, 3))
    return ndimage.binary_dilation(coarse, iterations=1)


def tumor_grid(grid: Grid, ground_truth: GroundTruth | None, coarse_cells: int = 8) -> np.ndarray:
    """:func:`tumor_labels` of every cell as a bool ``(n_rows, n_cols)`` grid.

    Only the cells under the coarse, dilated tumor view are listed and
    labelled, so memory follows the tumor area, not the slide.
    """
    out = np.zeros((grid.n_rows, grid.n_cols), bool)
    if ground_truth is None or not ground_truth.has_tumor:
        return out
    coarse = _coarse_tumor(grid, ground_truth, coarse_cells)
    cr, cc = np.nonzero(coarse)
    if len(cr) == 0:
        return out
    k = np.arange(coarse_cells)
    rows = (cr[:, None, None] * coarse_cells + k[None, :, None]).repeat(coarse_cells, axis=2)
    cols = (cc[:, None, None] * coarse_cells + k[None, None, :]).repeat(coarse_cells, axis=1)
    ok = (rows < grid.n_rows) & (cols < grid.n_cols)
    rows, cols = rows[ok], cols[ok]
    out[rows, cols] = tumor_labels(grid, ground_truth, rows, cols, coarse_cells=coarse_cells)
    return out


def slide_seed(seed: int, name: str) -> np.random.Generator:
    """The random generator of one slide's draws: from the seed and the slide name (order-independent)."""
    import zlib
    return np.random.default_rng([int(seed) & 0xFFFFFFFF, zlib.crc32(name.encode("utf-8"))])


def block_order(centers0: np.ndarray, spec: WindowSpec, block: int) -> np.ndarray:
    """Permutation grouping centres by the tower-0 read block of :func:`read_windows`."""
    tl = window_origin(centers0, spec.downsamples[0], spec.window)
    step = max(spec.window, block - spec.window)
    bkey = tl // step
    return np.lexsort((tl[:, 0], tl[:, 1], bkey[:, 0], bkey[:, 1]))


def rows_bar(total: int, name: str, progress: bool) -> tqdm:
    """A tqdm bar of grid rows scanned for tissue (shown on a terminal only; a no-op bar when ``progress`` is false)."""
    from tqdm import tqdm

    return tqdm(total=total, unit="row", desc=f"{name} tissue", disable=None if progress else True, leave=False,
                dynamic_ncols=True, mininterval=0.5)


def plan_windows(slide: Slide, spec: WindowSpec, ground_truth: GroundTruth | None = None, *,
                 tissue: TissueMask | BandedTissueMask | None = None,
                 tissue_threshold: float = defaults.TISSUE_THRESHOLD, normal_ratio: float = defaults.NORMAL_RATIO,
                 max_normal: int | None = defaults.MAX_NORMAL,
                 seed: int = 0, block: int = 2048, progress: bool = False) -> WindowPlan:
    """Choose the windows to extract from one slide.

    Rules
    -----
    * every grid cell is scanned; its tissue fraction is that of the tower-0
      window (``W x W`` tower-0 pixels) in the tissue mask;
    * a cell is *tumor* when any tumor pixel lies in its central ``C x C``
      tower-0 pixels (:func:`tumor_labels`);
    * normal windows are kept only when their tissue fraction reaches
      ``tissue_threshold``; tumor windows are kept whatever their tissue fraction;
    * tumor slide (ground truth with tumor): all tumor windows, and
      ``round(normal_ratio * n_tumor)`` normal windows drawn at random;
    * otherwise (no ground truth, or no tumor in it): at most ``max_normal``
      normal windows drawn at random (``None`` or 0: all);
    * draws use ``numpy.random.default_rng([seed, crc32(slide name)])``: the
      same seed gives the same windows.

    Parameters
    ----------
    slide : Slide
    spec : WindowSpec
    ground_truth : GroundTruth, optional
    tissue : TissueMask or BandedTissueMask, optional
        A :class:`wsiheat.wsi.tissue.BandedTissueMask` of the slide when omitted
        (memory independent of the slide size: the grid is scanned in bands of
        cell rows, per-cell state is two bool grids, and coordinates are made
        for the kept windows only).
    tissue_threshold : float
        In [0, 1].
    normal_ratio : float
        Normal windows per tumor window on tumor slides (>= 0).
    max_normal : int or None
        Cap on normal windows on slides without tumor.
    seed : int
    block : int
        Read block side in tower pixels (windows are ordered by block).
    progress : bool
        Show a tqdm bar of the grid rows scanned for tissue.

    Returns
    -------
    WindowPlan
    """
    if not 0.0 <= tissue_threshold <= 1.0:
        raise WsiheatError(f"tissue threshold must be in [0, 1], got {tissue_threshold:g}")
    if normal_ratio < 0:
        raise WsiheatError(f"normal ratio must be >= 0, got {normal_ratio:g}")
    if max_normal is not None and max_normal < 0:
        raise WsiheatError(f"max normal must be >= 0, got {max_normal}")
    from wsiheat.wsi.tissue import BandedTissueMask, cell_fractions

    if tissue is None:
        tissue = BandedTissueMask(slide)
    grid = Grid.for_slide(slide.dimensions, spec)
    # bool grids (one byte per cell), filled band by band: no per-cell float or box arrays
    on_tissue = np.zeros((grid.n_rows, grid.n_cols), bool)
    with rows_bar(grid.n_rows, slide.name, progress) as bar:
        for r0, frac in cell_fractions(tissue, spec.cell0, on_tissue.shape, spec.window * spec.downsamples[0]):
            on_tissue[r0:r0 + len(frac)] = frac >= tissue_threshold - 1e-9
            bar.update(len(frac))
    has_gt = ground_truth is not None
    tumor_slide = bool(has_gt and ground_truth.has_tumor)
    tumor = tumor_grid(grid, ground_truth) if tumor_slide else np.zeros_like(on_tissue)
    normal_idx = np.flatnonzero(on_tissue & ~tumor)  # flat row-major cell indices
    tumor_idx = np.flatnonzero(tumor)
    n_available = len(normal_idx)
    rng = slide_seed(seed, slide.name)
    if tumor_slide:
        n_normal = min(len(normal_idx), int(round(normal_ratio * len(tumor_idx))))
    else:
        n_normal = len(normal_idx) if not max_normal else min(len(normal_idx), int(max_normal))
    if n_normal < len(normal_idx):
        normal_idx = np.sort(rng.choice(normal_idx, size=n_normal, replace=False))
    keep = np.concatenate([tumor_idx, normal_idx])
    labels = np.concatenate([np.ones(len(tumor_idx), np.uint8), np.zeros(len(normal_idx), np.uint8)])
    centers = grid.centers(*np.divmod(keep, grid.n_cols))  # the kept windows only
    order = block_order(centers, spec, block)
    stats = {
        "scanned": int(grid.n_rows * grid.n_cols), "grid": [grid.n_rows, grid.n_cols],
        "on_tissue": int(on_tissue.sum()), "tumor": int(tumor.sum()),
        "tumor_off_tissue": int((tumor & ~on_tissue).sum()), "normal_available": int(n_available),
        "kept_tumor": int(len(tumor_idx)), "kept_normal": int(len(normal_idx)),
        "has_ground_truth": has_gt, "tumor_slide": tumor_slide,
    }
    return WindowPlan(centers[order], labels[order], stats)


def extract_slide(slide: Slide, ground_truth: GroundTruth | None, spec: WindowSpec, writer: ShardWriter, *,
                  slide_info: dict | None = None, batch: int = 1024, block: int = 2048, progress: bool = True,
                  plan: WindowPlan | None = None, **plan_kwargs) -> dict:
    """Plan, read and write one slide's windows into a :class:`wsiheat.patches.store.ShardWriter`.

    Windows are read with :func:`read_windows` in batches of about ``batch``
    windows grouped by read block (memory: one batch plus one block per
    tower), with a tqdm bar showing windows per second.

    Parameters
    ----------
    slide : Slide
    ground_truth : GroundTruth or None
    spec : WindowSpec
    writer : ShardWriter
    slide_info : dict, optional
        Extra per-slide details stored with the slide.
    batch, block : int
        Windows per write batch; read block side in tower pixels.
    progress : bool
        Show the tqdm bar.
    plan : WindowPlan, optional
        A precomputed plan (else :func:`plan_windows` with ``plan_kwargs``).

    Returns
    -------
    dict
        The plan's stats plus ``slide_id``, ``kept`` and ``seconds``.
    """
    import time

    from tqdm import tqdm

    t0 = time.perf_counter()
    if plan is None:
        plan = plan_windows(slide, spec, ground_truth, block=block, **plan_kwargs)
    stats = dict(plan.stats)
    info = dict(slide_info or {})
    info.update(path=str(slide.path), dimensions=list(slide.dimensions), mpp=slide.mpp,
                level_count=slide.level_count, level_downsamples=list(slide.level_downsamples),
                levels=[None if l is None else int(l) for l in spec.levels] if spec.levels else None,
                downsamples=list(spec.downsamples),
                ground_truth=str(ground_truth.path) if ground_truth is not None else None, **stats)
    sid = writer.add_slide(slide.name, info)
    K = len(plan.labels)
    # cut batches at block boundaries where possible (plan is in block order)
    tl = window_origin(plan.centers0, spec.downsamples[0], spec.window)
    bkey = tl // max(spec.window, block - spec.window)
    bounds = np.concatenate([[0], np.flatnonzero(np.any(np.diff(bkey, axis=0) != 0, axis=1)) + 1, [K]]) \
        if K else np.array([0, 0])
    cuts = [0]
    for a, b in zip(bounds[:-1], bounds[1:]):
        # whole blocks per batch when they fit; a block larger than a batch is cut in strips
        if b - cuts[-1] > batch and a > cuts[-1]:
            cuts.append(int(a))
        while b - cuts[-1] > batch:
            cuts.append(cuts[-1] + batch)
    if cuts[-1] != K:
        cuts.append(K)
    buf = np.empty((max(1, int(np.max(np.diff(cuts), initial=1))), spec.towers, spec.window, spec.window, 3), np.uint8)
    with tqdm(total=K, unit="win", desc=slide.name, disable=None if progress else True, leave=False,
              dynamic_ncols=True, mininterval=0.5) as bar:
        for a, b in zip(cuts[:-1], cuts[1:]):
            if b <= a:
                continue
            imgs = read_windows(slide, spec, plan.centers0[a:b], block=block, out=buf[:b - a])
            writer.append(imgs, plan.labels[a:b], plan.centers0[a:b], sid)
            bar.update(b - a)
    stats.update(slide_id=sid, kept=K, seconds=time.perf_counter() - t0)
    info.update(kept=K)
    writer.set_slide_info(sid, info)
    return stats
