"""Tissue mask: Otsu thresholding on a low-resolution view of the slide.

The recipe follows the CAMELYON literature (Wang et al. 2016, Liu et al.
2017): work on a coarse level (default ~32x downsample), drop near-black
pixels (scanner borders, pen marks) and near-white background, threshold the
HSV saturation with Otsu's method, then clean up morphologically (opening,
removal of small objects and small holes).

The mask is returned with its downsample: mask pixel ``(i, j)`` covers level-0
``[j*d, (j+1)*d) x [i*d, (i+1)*d)``.

Memory does not grow with the slide: :class:`BandedTissueMask` computes the
same mask tile by tile (a first pass gathers the saturation histogram for the
threshold, then any band of rows is computed from tiles read with a margin
wide enough for the morphology to be exact), and :func:`cell_fractions`
gives the tissue fraction of the boxes of a cell grid band by band. The
whole-slide view is never read at once, and no slide-sized float array is
made.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from functools import cached_property
from typing import Iterator

import cv2
import numpy as np
from scipy import ndimage
from skimage import morphology
from skimage.filters import threshold_otsu

from wsiheat import defaults
from wsiheat.wsi.slide import Slide

#: Default downsample of the tissue mask relative to level 0.
DEFAULT_MASK_DOWNSAMPLE = defaults.TISSUE_MASK_DOWNSAMPLE


@dataclass(frozen=True)
class TissueMask:
    """A boolean tissue mask and its scale.

    Attributes
    ----------
    mask : ndarray of bool, shape (h, w)
    downsample : float
        Level-0 pixels per mask pixel.
    """

    mask: np.ndarray
    downsample: float

    @cached_property
    def _integral(self) -> np.ndarray:
        """Summed-area table of the mask, computed once: ``ii[r, c] = mask[:r, :c].sum()``."""
        h, w = self.mask.shape
        ii = np.zeros((h + 1, w + 1), np.int64 if h * w >= 2**31 else np.int32)
        np.cumsum(np.cumsum(self.mask, axis=0, dtype=ii.dtype), axis=1, out=ii[1:, 1:])
        return ii

    @property
    def shape(self) -> tuple[int, int]:
        """(rows, cols) of the mask."""
        return self.mask.shape

    def rows(self, r0: int, r1: int) -> np.ndarray:
        """Mask rows ``[r0, r1)`` (the interface :func:`cell_fractions` reads)."""
        return self.mask[r0:r1]

    @property
    def fraction(self) -> float:
        """Tissue fraction of the whole mask."""
        return float(self.mask.mean()) if self.mask.size else 0.0

    def fraction_in_boxes(self, x0: np.ndarray, y0: np.ndarray, x1: np.ndarray,
                          y1: np.ndarray) -> np.ndarray:
        """Tissue fraction inside level-0 boxes ``[x0, x1) x [y0, y1)`` (vectorised).

        Boxes are snapped to mask pixels: a mask pixel counts when its centre
        ``((j + 0.5) * d, (i + 0.5) * d)`` lies in the half-open box; a box that
        holds no pixel centre takes the first pixel at or after its top-left
        corner. Parts outside the mask count as background.

        Parameters
        ----------
        x0, y0, x1, y1 : array-like of float
            Level-0 box corners (same shape).

        Returns
        -------
        ndarray of float64, same shape, values in [0, 1]
        """
        d = self.downsample
        h, w = self.mask.shape
        ii = self._integral
        # first pixel index whose centre is >= the coordinate
        c0 = np.ceil(np.asarray(x0, float) / d - 0.5).astype(np.int64)
        r0 = np.ceil(np.asarray(y0, float) / d - 0.5).astype(np.int64)
        c1 = np.maximum(np.ceil(np.asarray(x1, float) / d - 0.5).astype(np.int64), c0 + 1)
        r1 = np.maximum(np.ceil(np.asarray(y1, float) / d - 0.5).astype(np.int64), r0 + 1)
        area = (c1 - c0) * (r1 - r0)
        c0, c1 = np.clip(c0, 0, w), np.clip(c1, 0, w)
        r0, r1 = np.clip(r0, 0, h), np.clip(r1, 0, h)
        inside = ii[r1, c1] - ii[r0, c1] - ii[r1, c0] + ii[r0, c0]
        return inside / area


def saturation_threshold(values: np.ndarray, smoothing: float = 3.0) -> float:
    """Background / tissue threshold on HSV saturation (0-255).

    Otsu's threshold over all pixels (background included), moved down to the
    valley of the histogram between the background mode and Otsu's value.
    Otsu alone sits too high when the tissue itself is bimodal (pale eosin
    stroma vs. dense haematoxylin): on the real CMU slide it puts half of the
    pink stroma in the background (threshold 46 vs. valley 28).

    Parameters
    ----------
    values : ndarray of uint8
        Saturation values (any shape).
    smoothing : float
        Gaussian sigma (grey levels) applied to the histogram before finding
        the valley.

    Returns
    -------
    float
        Pixels strictly above this are tissue candidates; 255 when all values
        are equal (nothing to separate).
    """
    values = np.asarray(values, np.uint8).ravel()
    return saturation_threshold_hist(np.bincount(values, minlength=256), smoothing)


def saturation_threshold_hist(hist: np.ndarray, smoothing: float = 3.0) -> float:
    """:func:`saturation_threshold` from the 256-bin histogram of the values (same result).

    Lets the threshold of a whole slide be gathered band by band.
    """
    hist = np.asarray(hist, np.int64)
    present = np.flatnonzero(hist)
    if len(present) <= 1:
        return 255.0
    lo, hi = int(present[0]), int(present[-1])
    # Otsu on the histogram exactly as threshold_otsu(values) builds it (bins min..max)
    otsu = int(threshold_otsu(hist=(hist[lo:hi + 1], np.arange(lo, hi + 1))))
    hist = ndimage.gaussian_filter1d(hist.astype(np.float64), smoothing)
    bg = int(np.argmax(hist[:otsu + 1]))
    # the first clear valley after the background mode: a pale-tissue mode may
    # sit between the background and Otsu's value, with its own valley above
    for i in range(bg + 1, otsu + 1):
        if hist[i] <= hist[i - 1] and hist[i] < hist[i + 1] and hist[i] <= 0.5 * hist[i:otsu + 2].max():
            return float(i)
    return float(bg + int(np.argmin(hist[bg:otsu + 1])))


def tissue_mask_from_rgb(rgb: np.ndarray, *, black_threshold: int = 40, white_threshold: int = 235,
                         min_saturation: int = 15, min_object_size: int = 64,
                         max_hole_size: int = 64, opening_radius: int = 1) -> np.ndarray:
    """Otsu tissue mask of an RGB image.

    Parameters
    ----------
    rgb : ndarray, shape (h, w, 3), uint8
        A low-resolution view of the slide.
    black_threshold : int
        Pixels whose brightest channel is below this are not tissue.
    white_threshold : int
        Pixels whose darkest channel is above this are background.
    min_saturation : int
        Floor for the Otsu saturation threshold (0-255), so an image with no
        tissue at all does not produce noise.
    min_object_size, max_hole_size : int
        Objects (holes) smaller than this many mask pixels are removed (filled).
    opening_radius : int
        Radius of the disk used for the morphological opening (0: none).

    Returns
    -------
    ndarray of bool, shape (h, w)
    """
    rgb = np.asarray(rgb)
    if rgb.ndim != 3 or rgb.shape[2] != 3:
        raise ValueError(f"expected an (h, w, 3) RGB image, got shape {rgb.shape}")
    rgb = rgb.astype(np.uint8, copy=False)
    sat, valid, hist = _saturation(rgb, black_threshold, white_threshold)
    thr = _threshold(hist, int(valid.sum()), min_saturation)
    if thr is None:
        return np.zeros(rgb.shape[:2], bool)
    return _clean(valid & (sat > thr), opening_radius, min_object_size, max_hole_size)


def _saturation(rgb: np.ndarray, black_threshold: int, white_threshold: int
                ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """HSV saturation, the valid (neither black nor white) pixels, and the
    256-bin histogram of the saturation of the non-black pixels."""
    sat = cv2.cvtColor(rgb, cv2.COLOR_RGB2HSV)[..., 1]
    nonblack = rgb.max(axis=2) >= black_threshold
    valid = nonblack & (rgb.min(axis=2) <= white_threshold)
    return sat, valid, np.bincount(sat[nonblack], minlength=256)


def _threshold(hist: np.ndarray, n_valid: int, min_saturation: int) -> float | None:
    """The saturation threshold from the histogram of the non-black pixels; None: no tissue at all."""
    if n_valid == 0:
        return None
    # Otsu over every non-black pixel: the background mode (low saturation)
    # must take part, or Otsu splits eosin from haematoxylin instead.
    present = np.flatnonzero(hist)
    if present[0] == present[-1]:  # one uniform colour: all tissue or all background
        return float(present[0]) - 0.5 if present[0] > min_saturation else 255.0
    return max(saturation_threshold_hist(hist), float(min_saturation))


def _clean(mask: np.ndarray, opening_radius: int, min_object_size: int, max_hole_size: int) -> np.ndarray:
    """The morphological clean-up of a thresholded mask (opening, small objects, small holes)."""
    if opening_radius > 0:
        mask = ndimage.binary_opening(mask, structure=morphology.disk(opening_radius))
    if min_object_size > 0:
        mask = morphology.remove_small_objects(mask, max_size=min_object_size - 1)
    if max_hole_size > 0:
        mask = morphology.remove_small_holes(mask, max_size=max_hole_size - 1)
    return mask.astype(bool)


def mask_downsample(dimensions: tuple[int, int], downsample: float = DEFAULT_MASK_DOWNSAMPLE) -> float:
    """The tissue-mask downsample actually used: ``downsample`` capped so that the
    mask has at least 64 pixels on its shorter side."""
    W, H = dimensions
    return float(max(1.0, min(downsample, min(W, H) / 64)))


class BandedTissueMask:
    """The tissue mask of a slide (:func:`tissue_mask_from_rgb` of the whole low-resolution view),
    computed tile by tile so that memory does not depend on the slide size.

    The threshold needs the saturation histogram of the whole view: it is
    gathered on construction, one ``tile`` x ``tile`` block at a time. Then
    :meth:`rows` computes any band of mask rows from blocks read with a
    margin of ``2 * opening_radius + min_object_size + max_hole_size + 2``
    pixels: the opening changes nothing farther than twice its radius from a
    cut, and an object (hole) smaller than the size limit cannot reach from a
    pixel to a cut farther than that limit, so the band equals the same rows
    of the whole-view mask.

    Peak memory: a few copies of one block with its margin (about 1.7 M mask
    pixels at the defaults), whatever the slide size.

    Attributes
    ----------
    downsample : float
        Level-0 pixels per mask pixel (see :func:`mask_downsample`).
    shape : (int, int)
        (rows, cols) of the mask.
    threshold : float or None
        The saturation threshold; None when the slide has no valid pixel (the mask is empty).
    """

    def __init__(self, slide: Slide, downsample: float = DEFAULT_MASK_DOWNSAMPLE, *, tile: int = 1024,
                 black_threshold: int = 40, white_threshold: int = 235, min_saturation: int = 15,
                 min_object_size: int = 64, max_hole_size: int = 64, opening_radius: int = 1):
        W, H = slide.dimensions
        self.slide = slide
        self.downsample = mask_downsample((W, H), downsample)
        self.shape = (max(1, math.ceil(H / self.downsample)), max(1, math.ceil(W / self.downsample)))
        self.tile = int(tile)
        self._bw = (black_threshold, white_threshold)
        self._clean_args = (opening_radius, min_object_size, max_hole_size)
        self.margin = (2 * max(0, opening_radius) + max(0, min_object_size) + max(0, max_hole_size) + 2)
        hist = np.zeros(256, np.int64)
        n_valid = 0
        h, w = self.shape
        for r0 in range(0, h, self.tile):
            for c0 in range(0, w, self.tile):
                rgb = self._read(r0, min(h, r0 + self.tile), c0, min(w, c0 + self.tile))
                _, valid, hh = _saturation(rgb, *self._bw)
                hist += hh
                n_valid += int(valid.sum())
        self.threshold = _threshold(hist, n_valid, min_saturation)

    def _read(self, r0: int, r1: int, c0: int, c1: int) -> np.ndarray:
        d = self.downsample
        return self.slide.read_scaled((c0 * d, r0 * d), d, (c1 - c0, r1 - r0))

    def rows(self, r0: int, r1: int) -> np.ndarray:
        """Mask rows ``[r0, r1)``, bool ``(r1 - r0, cols)``."""
        h, w = self.shape
        r0, r1 = max(0, int(r0)), min(h, int(r1))
        out = np.zeros((max(0, r1 - r0), w), bool)
        if self.threshold is None or r1 <= r0:
            return out
        m = self.margin
        R0, R1 = max(0, r0 - m), min(h, r1 + m)
        for c0 in range(0, w, self.tile):
            c1 = min(w, c0 + self.tile)
            C0, C1 = max(0, c0 - m), min(w, c1 + m)
            sat, valid, _ = _saturation(self._read(R0, R1, C0, C1), *self._bw)
            band = _clean(valid & (sat > self.threshold), *self._clean_args)
            out[:, c0:c1] = band[r0 - R0:r1 - R0, c0 - C0:c1 - C0]
        return out

    def bands(self, rows: int | None = None) -> Iterator[tuple[int, np.ndarray]]:
        """``(r0, mask rows [r0, r0 + k))`` over the whole mask, ``rows`` rows at a time (default ``tile``)."""
        step = int(rows or self.tile)
        for r0 in range(0, self.shape[0], step):
            yield r0, self.rows(r0, r0 + step)

    def to_mask(self) -> TissueMask:
        """The whole mask in memory (one bool per mask pixel)."""
        out = np.empty(self.shape, bool)
        for r0, band in self.bands():
            out[r0:r0 + len(band)] = band
        return TissueMask(out, self.downsample)


def cell_fractions(mask: TissueMask | BandedTissueMask, cell: float, grid_shape: tuple[int, int], side: float,
                   band_pixels: int = 1 << 21) -> Iterator[tuple[int, np.ndarray]]:
    """Tissue fraction of the boxes centred on the cells of a regular grid, band of cell rows by band.

    Cell ``(row, col)`` is centred on level-0 ``((col + 0.5) * cell, (row + 0.5) * cell)``; its
    box is ``side`` level-0 pixels wide. The fractions equal
    :meth:`TissueMask.fraction_in_boxes` of those boxes; only the mask rows under one
    band of cells (about ``band_pixels`` mask pixels) and their summed-area table are in memory.

    Parameters
    ----------
    mask : TissueMask or BandedTissueMask
        Anything with ``shape``, ``downsample`` and ``rows(r0, r1)``.
    cell : float
        Grid step, level-0 pixels.
    grid_shape : (int, int)
        (rows, cols) of the grid.
    side : float
        Box side, level-0 pixels.

    Yields
    ------
    (int, ndarray float64 (k, cols))
        First cell row of the band and the fractions of its cells.
    """
    n_rows, n_cols = int(grid_shape[0]), int(grid_shape[1])
    d = mask.downsample
    h, w = mask.shape
    half = side / 2

    def span(n0: int, n1: int, limit: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        # as fraction_in_boxes: first mask pixel whose centre is >= the box edge, clipped
        ctr = (np.arange(n0, n1, dtype=np.float64) + 0.5) * cell
        a = np.ceil((ctr - half) / d - 0.5).astype(np.int64)
        b = np.maximum(np.ceil((ctr + half) / d - 0.5).astype(np.int64), a + 1)
        return np.clip(a, 0, limit), np.clip(b, 0, limit), b - a

    c0, c1, col_len = span(0, n_cols, w)
    rows_per_band = max(1, int(band_pixels // max(1, w) * d / cell))
    for g0 in range(0, n_rows, rows_per_band):
        g1 = min(n_rows, g0 + rows_per_band)
        r0, r1, row_len = span(g0, g1, h)
        m0, m1 = int(r0.min()), int(r1.max())
        band = mask.rows(m0, m1)
        ii = np.zeros((m1 - m0 + 1, w + 1), np.int64 if band.size >= 2**31 else np.int32)
        np.cumsum(np.cumsum(band, axis=0, dtype=ii.dtype), axis=1, out=ii[1:, 1:])
        a, b = (r0 - m0)[:, None], (r1 - m0)[:, None]
        inside = ii[b, c1] - ii[a, c1] - ii[b, c0] + ii[a, c0]
        yield g0, inside / (row_len[:, None] * col_len[None, :])


def tissue_mask(slide: Slide, downsample: float = DEFAULT_MASK_DOWNSAMPLE, **kwargs) -> TissueMask:
    """Tissue mask of a slide computed on a low-resolution view.

    Parameters
    ----------
    slide : Slide
    downsample : float
        Mask resolution relative to level 0 (default 32). It is capped so that
        the mask has at least 64 pixels on its shorter side for small slides.
    **kwargs
        Passed to :func:`tissue_mask_from_rgb` (through :class:`BandedTissueMask`,
        which computes the same mask block by block: memory is the mask plus
        one block, never the whole RGB view).

    Returns
    -------
    TissueMask
    """
    return BandedTissueMask(slide, downsample, **kwargs).to_mask()


def overlay_mask(rgb: np.ndarray, mask: np.ndarray, color: tuple[int, int, int] = (0, 160, 255),
                 alpha: float = 0.4) -> np.ndarray:
    """Blend a boolean mask over an RGB image and outline it, for visual checks.

    The mask is resized (nearest neighbour) to the image size.
    """
    h, w = rgb.shape[:2]
    m = cv2.resize(mask.astype(np.uint8), (w, h), interpolation=cv2.INTER_NEAREST).astype(bool)
    out = rgb.astype(np.float32).copy()
    out[m] = (1 - alpha) * out[m] + alpha * np.asarray(color, np.float32)
    out = out.astype(np.uint8)
    contours, _ = cv2.findContours(m.astype(np.uint8), cv2.RETR_LIST, cv2.CHAIN_APPROX_SIMPLE)
    cv2.drawContours(out, contours, -1, color, max(1, min(h, w) // 400))
    return out


def write_tissue_pictures(slide_path: str | os.PathLike, output: str | os.PathLike,
                          mask_out: str | os.PathLike | None = None, *,
                          downsample: float = DEFAULT_MASK_DOWNSAMPLE, thumbnail_size: int = 2048) -> TissueMask:
    """Compute a slide's tissue mask and write it over a thumbnail (PNG), and the mask itself if asked.

    Parameters
    ----------
    slide_path : path-like
    output : path-like
        PNG of the thumbnail with the mask's outline and tint.
    mask_out : path-like, optional
        PNG of the mask (255 = tissue) at its own downsample.
    downsample : float
        Downsample of the mask relative to level 0.
    thumbnail_size : int
        Longer side of the thumbnail.

    Returns
    -------
    TissueMask
    """
    import cv2

    from wsiheat.errors import WsiheatError
    from wsiheat.fileio import atomic_path, check_writable_dir

    for out in (output, mask_out):
        if out is not None:
            check_writable_dir(out)
    with Slide(slide_path) as s:
        tm = tissue_mask(s, downsample)
        thumb, _ = s.thumbnail(max(thumbnail_size, 1))
    image = overlay_mask(thumb, tm.mask)
    with atomic_path(output, suffix=".png") as tmp:
        if not cv2.imwrite(str(tmp), cv2.cvtColor(image, cv2.COLOR_RGB2BGR)):
            raise WsiheatError(f"{output}: could not write the PNG")
    if mask_out is not None:
        with atomic_path(mask_out, suffix=".png") as tmp:
            if not cv2.imwrite(str(tmp), tm.mask.astype("uint8") * 255):
                raise WsiheatError(f"{mask_out}: could not write the PNG")
    return tm
