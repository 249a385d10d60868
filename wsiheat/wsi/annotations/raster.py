"""Polygons to masks: the pixel-centre rule for training labels, ASAP's rule for the CAMELYON16 evaluation mask.

Nothing is rasterized at full level-0 size: only the requested region at the requested
downsample, or a pyramid level evaluated at its sample points within each polygon's box.
"""

from __future__ import annotations

import cv2
import numpy as np

_SUBPIXEL_BITS = 4  # cv2.fillPoly fixed-point precision


def rasterize_polygons(positive: list[np.ndarray], negative: list[np.ndarray], x0: float, y0: float,
                       width: int, height: int, downsample: float) -> np.ndarray:
    """Rasterize level-0 polygons into a region at a downsample.

    Parameters
    ----------
    positive, negative : list of ndarray, shape (n, 2)
        Tumor polygons and holes, vertices (x, y) in level-0 pixels.
    x0, y0 : float
        Level-0 top-left of the region.
    width, height : int
        Output size in pixels.
    downsample : float
        Level-0 pixels per output pixel.

    Returns
    -------
    ndarray of bool, shape (height, width)
        Output pixel ``(i, j)`` is tumor when its centre (level-0
        ``(x0 + (j + 0.5) * d, y0 + (i + 0.5) * d)``) lies inside a positive
        polygon and not inside a negative one; polygons smaller than a pixel
        still mark the pixels their outline touches.
    """
    out = np.zeros((height, width), np.uint8)
    if width <= 0 or height <= 0:
        return out.astype(bool)
    x1, y1 = x0 + width * downsample, y0 + height * downsample
    scale = float(1 << _SUBPIXEL_BITS)

    def draw(polys: list[np.ndarray], value: int) -> None:
        pts = []
        for p in polys:
            if p.shape[0] < 3:
                continue
            if p[:, 0].max() < x0 or p[:, 0].min() > x1 or p[:, 1].max() < y0 or p[:, 1].min() > y1:
                continue
            q = (p - (x0, y0)) / downsample - 0.5  # pixel-centre coordinates
            pts.append(np.round(q * scale).astype(np.int32))
        # one call per polygon: fillPoly fills a list of polygons with the
        # even-odd rule, which would cut the overlap of two tumor polygons out
        for q in pts:
            cv2.fillPoly(out, [q], value, lineType=cv2.LINE_8, shift=_SUBPIXEL_BITS)

    draw(positive, 1)
    draw(negative, 0)
    return out.astype(bool)


def _first_true(pred, lo: np.ndarray, hi: np.ndarray, guess: np.ndarray) -> np.ndarray:
    """Per element ``k``, the smallest ``j`` in ``[lo, hi)`` with ``pred(k, j)``, else ``hi``.

    ``pred`` must be monotonic in ``j`` (false, then true); ``guess`` is a start
    near the answer (``lo < hi`` everywhere).
    """
    j = np.clip(guess, lo, hi)
    k = np.arange(j.size)
    while True:
        holds = (j == hi) | pred(k, np.minimum(j, hi - 1))
        left = holds & (j > lo) & pred(k, np.maximum(j - 1, lo))
        right = ~holds
        if not (left.any() or right.any()):
            return j
        j = j - left + right


def asap_polygon_samples(polygon: np.ndarray, step: int, rows: int, cols: int
                         ) -> tuple[np.ndarray, tuple[int, int]]:
    """ASAP's AnnotationToMask test of one polygon at the level-0 points ``(step*j, step*i)``.

    ASAP (``annotation/AnnotationToMask.cpp``, computationalpathologygroup/ASAP,
    unchanged in this respect since 2016-02) makes the CAMELYON16 mask TIFFs: level-0
    pixel ``(x, y)`` is inside when the point ``(x, y)`` -- the pixel's corner, not its
    centre -- lies strictly inside the bounding box of the vertices
    (``minX < x < maxX``, ``minY < y < maxY``) and has a nonzero winding number
    (``wn_PnPoly``). The winding test counts an edge crossing the scanline
    ``y`` (``y0 <= y < y1`` going down, ``y1 <= y < y0`` going up) only when
    ``isLeft``, a float32 cross product *truncated to int*, is at least 1 in
    absolute value, and ASAP's ``isLeft`` has the opposite sign of the textbook one
    (its y axis points down): points less than ``1 / |y1 - y0|`` pixels right of
    a crossing do not see it. Vertices are float32 (ASAP's ``Point``). Its
    pyramid levels are nearest-neighbour subsamples ``level[k][i, j] =
    level[k-1][2i, 2j]``, so level-``k`` pixel ``(i, j)`` is level-0 pixel
    ``(2**k * j, 2**k * i)``: testing those points alone gives the stored level
    exactly, in memory proportional to the polygon's bounding box at that level.

    Parameters
    ----------
    polygon : ndarray, shape (n, 2)
        Vertices (x, y) in level-0 pixels (closed implicitly).
    step : int
        Level-0 pixels between sample points (``2**level``).
    rows, cols : int
        Sample points exist for ``0 <= i < rows``, ``0 <= j < cols``.

    Returns
    -------
    inside : ndarray of bool, shape (h, w)
        The test at the sample points of the bounding box.
    origin : (int, int)
        ``(i, j)`` of ``inside[0, 0]``.
    """
    f32 = np.float32
    v = np.asarray(polygon, np.float64).astype(f32)
    v = np.concatenate([v, v[:1]])
    d = int(step)

    def first_above(t: np.ndarray, strict: bool) -> np.ndarray:
        # smallest integer k >= 0 with d*k > t (strict) or d*k >= t, for float32 t
        k = np.maximum(np.floor(t.astype(np.float64) / d).astype(np.int64) - 1, 0)
        for _ in range(3):
            ok = (k * d > t) if strict else (k * d >= t)
            k = np.where(ok, k, k + 1)
        return k

    lo_x, hi_x = v[:, 0].min(), v[:, 0].max()
    lo_y, hi_y = v[:, 1].min(), v[:, 1].max()
    j0, i0 = int(first_above(np.array([lo_x]), True)[0]), int(first_above(np.array([lo_y]), True)[0])
    j1 = min(int(first_above(np.array([hi_x]), False)[0]), cols)  # exclusive: d*j < maxX
    i1 = min(int(first_above(np.array([hi_y]), False)[0]), rows)
    if j1 <= j0 or i1 <= i0:
        return np.zeros((0, 0), bool), (i0, j0)
    a, b = v[:-1], v[1:]
    # scanline rows each edge crosses: min(y) <= d*i < max(y)
    ra = np.maximum(first_above(np.minimum(a[:, 1], b[:, 1]), False), i0)
    rb = np.minimum(first_above(np.maximum(a[:, 1], b[:, 1]), False), i1)
    n = np.maximum(rb - ra, 0)
    e = np.repeat(np.arange(len(a)), n)
    i = ra[e] + (np.arange(n.sum()) - np.repeat(np.cumsum(n) - n, n))
    ax, ay, bx, by = a[e, 0], a[e, 1], b[e, 0], b[e, 1]
    py = (i * d).astype(f32)
    up = ay <= py  # edge going down the image (ASAP's "upward crossing")
    sign = np.where(up, 1, -1)
    m1 = (bx - ax) * (ay - py)  # float32 throughout, as ASAP computes
    t4 = ay - by

    def counts(k: np.ndarray, j: np.ndarray) -> np.ndarray:
        is_left = m1[k] - (((j * d).astype(f32) - ax[k]) * t4[k])
        return np.where(up[k], is_left >= 1, is_left <= -1)  # int truncation of isLeft

    with np.errstate(divide="ignore", invalid="ignore"):
        x_cross = ax.astype(np.float64) + (m1.astype(np.float64) - sign) / t4.astype(np.float64)
    guess = np.ceil(np.nan_to_num(x_cross / d, nan=j0, posinf=j1, neginf=j0)).astype(np.int64)
    jt = _first_true(counts, np.full(e.size, j0), np.full(e.size, j1), np.clip(guess, j0, j1))
    wn = np.zeros((i1 - i0, j1 - j0 + 1), np.int32)
    np.add.at(wn, (i - i0, jt - j0), sign)  # a crossing counts for every point right of it
    return np.cumsum(wn, axis=1)[:, :-1] != 0, (i0, j0)


def asap_level_mask(positive: list[np.ndarray], negative: list[np.ndarray], level: int,
                    dimensions: tuple[int, int]) -> np.ndarray:
    """Level ``level`` of the mask TIFF ASAP's AnnotationToMask writes, as OpenSlide reads it.

    Tumor polygons are drawn first, then holes cut out (ASAP's conversion order
    ``_0, _1, _2`` with ``_2`` mapped to 0), each tested as in
    :func:`asap_polygon_samples`. The stored level has ``floor(W / 2**level) x
    floor(H / 2**level)`` pixels (ASAP's writer rounds down); the result has
    ``ceil`` sizes, the extra last row/column being background as OpenSlide reads
    past a level's edge.

    Parameters
    ----------
    positive, negative : list of ndarray, shape (n, 2)
        Tumor polygons and holes, level-0 pixels.
    level : int
        Pyramid level (downsample ``2**level``).
    dimensions : (int, int)
        Level-0 (width, height) of the slide.

    Returns
    -------
    ndarray of bool, shape (ceil(H / 2**level), ceil(W / 2**level))
    """
    d = 2 ** int(level)
    W, H = (int(v) for v in dimensions)
    out = np.zeros((-(-H // d), -(-W // d)), bool)
    for polys, value in ((positive, True), (negative, False)):
        for p in polys:
            if len(p) < 3:
                continue
            inside, (i0, j0) = asap_polygon_samples(p, d, H // d, W // d)
            region = out[i0:i0 + inside.shape[0], j0:j0 + inside.shape[1]]
            region[inside] = value
    return out
