"""Writers for small pyramidal TIFF slides and masks that OpenSlide reads.

OpenSlide's *generic-tiff* driver (openslide-bin 4.0) wants:

* **tiled** pages (a stripped TIFF is not a generic-tiff slide; openslide-python
  then falls back to Pillow and gives a one-level ``ImageSlide``);
* the pyramid levels as **successive top-level IFDs** (pages), each smaller
  than the one before. Levels written as SubIFDs of page 0 are ignored: such
  a file opens with ``level_count == 1`` (checked with openslide-bin 4.0.1).

The level-0 resolution is stored in the TIFF resolution tags (centimetre
unit), which OpenSlide reports as ``openslide.mpp-x`` / ``openslide.mpp-y``.
The default compression is zlib (lossless: pixel-exact comparisons with the
array written work); ``compression="jpeg"`` (through imagecodecs) is lossy.

Level ``k`` has size ``ceil(W / 2**k) x ceil(H / 2**k)`` (for ``factor=2``):
level 0 padded by edge replication and block-averaged (RGB) or subsampled
(masks: ``mask[::d, ::d]``, nearest neighbour, so values stay 0/1/255).
"""

from __future__ import annotations

import math
import os
from typing import Callable, Iterator

import numpy as np
import tifffile

#: ``fn(x, y, w, h, d) -> (h, w[, C]) array``: the pixels of a level with
#: downsample ``d`` in the level-pixel box ``[x, x+w) x [y, y+h)``.
RegionFn = Callable[[int, int, int, int, float], np.ndarray]


def _block_reduce(img: np.ndarray, f: int, how: str) -> np.ndarray:
    if how == "nearest":
        return img[::f, ::f]
    h, w = img.shape[:2]
    H, W = -(-h // f) * f, -(-w // f) * f
    pad = [(0, H - h), (0, W - w)] + [(0, 0)] * (img.ndim - 2)
    p = np.pad(img, pad, mode="edge").astype(np.float32)
    p = p.reshape(H // f, f, W // f, f, *img.shape[2:]).mean(axis=(1, 3))
    return np.clip(np.round(p), 0, 255).astype(img.dtype)


def _tiles(fn: RegionFn, W: int, H: int, d: float, tile: int, channels: int | None,
           dtype) -> Iterator[np.ndarray]:
    for ty in range(0, H, tile):
        for tx in range(0, W, tile):
            w, h = min(tile, W - tx), min(tile, H - ty)
            block = np.asarray(fn(tx, ty, w, h, d), dtype)
            shape = (tile, tile) + ((channels,) if channels else ())
            out = np.zeros(shape, dtype)
            out[:h, :w] = block.reshape((h, w) + ((channels,) if channels else ()))
            yield out


def write_pyramid_tiff(path: str | os.PathLike, level0: np.ndarray | RegionFn, n_levels: int = 3, *,
                       tile: int = 256, compression: str | None = "zlib", factor: int = 2,
                       mpp: float | None = None, shape: tuple[int, int] | None = None,
                       reduce: str = "mean") -> list[tuple[int, int]]:
    """Write a pyramidal tiled TIFF that OpenSlide opens with all its levels.

    Parameters
    ----------
    path : path-like
        Output ``.tif``.
    level0 : ndarray (H, W, 3) or (H, W) uint8, or callable
        The level-0 image, or a region function ``fn(x, y, w, h, d)`` returning
        the pixels of the level with downsample ``d`` (level pixels, ``(h, w, 3)``)
        so that big synthetic slides are written tile by tile in bounded memory
        (then ``shape=(H, W)`` is required).
    n_levels : int
        Number of pyramid levels (level k has downsample ``factor**k``).
    tile : int
        Tile side (a multiple of 16).
    compression : str or None
        tifffile compression ('zlib', None, ...).
    factor : int
        Downsample between successive levels.
    mpp : float, optional
        Level-0 µm per pixel, stored in the resolution tags.
    shape : (H, W), optional
        Level-0 size, required when ``level0`` is a callable.
    reduce : 'mean' or 'nearest'
        How levels are derived from an array ``level0``.

    Returns
    -------
    list of (width, height)
        The level dimensions written.
    """
    if callable(level0):
        if shape is None:
            raise ValueError("shape=(H, W) is required with a region function")
        H, W = shape
        probe = np.asarray(level0(0, 0, 1, 1, 1.0))
        channels = probe.shape[-1] if probe.ndim == 3 else None
        dtype = probe.dtype
    else:
        level0 = np.asarray(level0)
        H, W = level0.shape[:2]
        channels = level0.shape[2] if level0.ndim == 3 else None
        dtype = level0.dtype
    photometric = "rgb" if channels in (3, 4) else "minisblack"
    extra = {"extrasamples": [2]} if channels == 4 else {}  # unassociated alpha
    dims = []
    current = None if callable(level0) else level0
    with tifffile.TiffWriter(path, bigtiff=W * H * (channels or 1) > 2**31) as tw:
        for k in range(n_levels):
            d = factor ** k
            w, h = math.ceil(W / d), math.ceil(H / d)
            res = {}
            if mpp is not None:
                res = {"resolution": (1e4 / (mpp * d), 1e4 / (mpp * d)), "resolutionunit": "CENTIMETER"}
            kw = dict(tile=(tile, tile), photometric=photometric, compression=compression,
                      subfiletype=1 if k else 0, **res, **extra)
            if current is None:
                data = _tiles(level0, w, h, float(d), tile, channels, dtype)
                tw.write(data, shape=(h, w) + ((channels,) if channels else ()), dtype=dtype, **kw)
            else:
                if k:
                    current = _block_reduce(current, factor, reduce)
                assert current.shape[:2] == (h, w), (current.shape, (h, w))
                tw.write(current, **kw)
            dims.append((w, h))
    return dims


def write_mask_tiff(path: str | os.PathLike, mask: np.ndarray, n_levels: int = 3, *, tile: int = 256,
                    compression: str | None = "zlib", factor: int = 2) -> list[tuple[int, int]]:
    """Write a pyramidal single-channel mask TIFF (nearest-neighbour levels).

    Values are kept as given (0/1 or 0/255 both work as wsiheat ground truth).
    """
    mask = np.asarray(mask)
    if mask.dtype == bool:
        mask = mask.astype(np.uint8)
    return write_pyramid_tiff(path, mask, n_levels, tile=tile, compression=compression, factor=factor,
                              reduce="nearest")
