"""Sliding-window geometry shared by extraction and inference.

Geometry (all stages use exactly this):

* A **window spec** has T towers (magnifications). Tower ``k`` reads a
  ``W x W`` window (default 80 px) at downsample ``d_k`` (tower 0 the finest,
  default level 2); every tower of a sample is centred on the same level-0
  point.
* The **grid** lives at tower 0: cells of ``S x S`` tower-0 pixels (stride,
  default 50) tile the slide from its top-left corner; there are
  ``ceil(W0 / (S * d_0))`` columns and ``ceil(H0 / (S * d_0))`` rows. Cell
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

import numpy as np

from .errors import WsiheatError
from .slide import Slide


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
    window: int = 80
    center: int = 50
    stride: int = 50
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


@dataclass(frozen=True)
class Grid:
    """The tower-0 cell grid over a slide (see the module docstring)."""

    spec: WindowSpec
    n_cols: int
    n_rows: int

    @classmethod
    def for_slide(cls, dimensions: tuple[int, int], spec: WindowSpec) -> "Grid":
        W, H = dimensions
        return cls(spec, max(1, math.ceil(W / spec.cell0)), max(1, math.ceil(H / spec.cell0)))

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


def read_windows(slide: Slide, spec: WindowSpec, centers0: np.ndarray, block: int = 1024,
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
    block : int
        Block side in tower pixels (bounds memory: one block per tower).
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
        step = max(Wn, block - Wn)
        bkey = tl // step
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
