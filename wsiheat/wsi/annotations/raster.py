"""wsi.annotations.raster (split from wsiheat.wsi.annotations.groundtruth)."""

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
