"""Pyramidal tiled TIFF writing (slides, masks and heatmaps that OpenSlide reads).

One page per level, level 0 first, each next level half the previous (sizes
rounded up) until both sides are at most ``min_side``; square tiles; JPEG
(YCbCr 4:2:0, RGB) or lossless deflate. OpenSlide opens the result as a
``generic-tiff`` with every level. :func:`write_pyramid` renders tile by tile
(bounded memory, for gigapixel mosaics); :func:`write_pyramid_array` writes
an image already in memory (heatmaps: one pixel per cell).
"""

from __future__ import annotations

import os
from typing import Callable, Iterator

import cv2
import numpy as np
import tifffile

from wsiheat.errors import WsiheatError

#: Tile side of the written TIFFs.
TILE = 256
#: Pyramid levels are added (each half the previous) until both sides are at most this.
MIN_LEVEL_SIDE = 256


def _encode_jpeg(tile: np.ndarray, quality: int) -> bytes:
    ok, buf = cv2.imencode(".jpg", cv2.cvtColor(tile, cv2.COLOR_RGB2BGR),
                           [cv2.IMWRITE_JPEG_QUALITY, int(quality)])
    if not ok:  # pragma: no cover - cv2 encodes any uint8 RGB tile
        raise RuntimeError("JPEG encoding failed")
    return buf.tobytes()


def _jpeg_placeholder(*args, **kwargs):  # pragma: no cover - never called
    raise RuntimeError("wsiheat writes JPEG tiles pre-encoded; this encoder is never called")


def ensure_tifffile_jpeg() -> None:
    """Let tifffile write pre-encoded JPEG tiles without the imagecodecs package.

    tifffile looks the JPEG encoder up even when it is handed already-encoded
    tiles (which it only copies); without imagecodecs that lookup fails. The
    tiles here are encoded with OpenCV, so a placeholder that is never called
    is registered for the lookup.
    """
    try:
        tifffile.TIFF.COMPRESSORS[7]
    except KeyError:
        codecs = getattr(tifffile.TIFF.COMPRESSORS, "_codecs", None)
        if not isinstance(codecs, dict):  # pragma: no cover - other tifffile versions
            raise WsiheatError("mosaic: JPEG tiles need the 'imagecodecs' package with this "
                               "tifffile version (pip install imagecodecs), or use deflate") from None
        codecs[7] = _jpeg_placeholder


def level_sizes(width: int, height: int, min_side: int = MIN_LEVEL_SIDE) -> list[tuple[int, int]]:
    """Pyramid level sizes: level 0, then halved (rounded up) until both sides <= min_side."""
    sizes = [(int(width), int(height))]
    while max(sizes[-1]) > min_side:
        w, h = sizes[-1]
        sizes.append(((w + 1) // 2, (h + 1) // 2))
    return sizes


def down2(a: np.ndarray) -> np.ndarray:
    """2x2 area average of an array with even height and width (uint8)."""
    h, w = a.shape[:2]
    s = a.reshape(h // 2, 2, w // 2, 2, *a.shape[2:]).astype(np.uint16).sum(axis=(1, 3))
    return ((s + 2) // 4).astype(np.uint8)


def write_pyramid(path: str | os.PathLike, render: Callable[[int, int, int, int, int], np.ndarray],
                  size: tuple[int, int], channels: int, *, compression: str = "jpeg",
                  quality: int = 90, mpp: float | None = None, description: str | None = None,
                  progress: Callable[[], None] | None = None, tile: int = TILE,
                  min_side: int = MIN_LEVEL_SIDE) -> int:
    """Write a pyramidal tiled TIFF that OpenSlide reads as a generic tiled TIFF.

    One page per level (level 0 first, each next level half the size, until
    both sides are at most ``min_side``), ``tile`` x ``tile`` tiles. Memory
    stays bounded: tiles are rendered one at a time. BigTIFF when level 0
    alone would pass 2 GiB uncompressed.

    Parameters
    ----------
    path : path
        Output file (written as is; wrap in :func:`wsiheat.fileio.atomic_path`).
    render : callable
        ``render(level, x, y, w, h) -> (h, w[, channels]) uint8``: the pixels
        of level ``level`` (level coordinates, may extend past the edge).
    size : (width, height)
        Level-0 size.
    channels : int
        3 (RGB) or 1 (grey).
    compression : {"jpeg", "deflate"}
        JPEG (YCbCr 4:2:0, RGB only) or lossless deflate.
    quality : int
        JPEG quality.
    mpp : float, optional
        Level-0 µm per pixel, written as TIFF resolution (OpenSlide reports
        it as ``openslide.mpp-x``/``-y``).
    description : str, optional
        ImageDescription of level 0 (OpenSlide's ``openslide.comment``).
    progress : callable, optional
        Called once per tile written.
    tile, min_side : int
        Tile side; last level's largest side.

    Returns
    -------
    int
        Number of levels written.
    """
    if compression not in ("jpeg", "deflate"):
        raise WsiheatError(f"compression must be 'jpeg' or 'deflate', got {compression!r}")
    if compression == "jpeg" and channels != 3:
        raise ValueError("JPEG compression is for RGB pyramids only")
    sizes = level_sizes(*size, min_side=min_side)
    if compression == "jpeg":
        ensure_tifffile_jpeg()
    bigtiff = size[0] * size[1] * channels > 2 ** 31
    with tifffile.TiffWriter(path, bigtiff=bigtiff) as tw:
        for level, (w, h) in enumerate(sizes):
            def tiles(level: int = level, w: int = w, h: int = h) -> Iterator[np.ndarray | bytes]:
                for y in range(0, h, tile):
                    for x in range(0, w, tile):
                        t = render(level, x, y, tile, tile)
                        if progress is not None:
                            progress()
                        yield _encode_jpeg(t, quality) if compression == "jpeg" else t
            shape = (h, w, 3) if channels == 3 else (h, w)
            kw: dict = {}
            if mpp:
                px_per_cm = 1e4 / (mpp * (2 ** level))
                kw.update(resolution=(px_per_cm, px_per_cm), resolutionunit="CENTIMETER")
            if compression == "jpeg":
                kw.update(compression="jpeg", photometric="ycbcr", subsampling=(2, 2))
            else:
                kw.update(compression="zlib", photometric="rgb" if channels == 3 else "minisblack")
            tw.write(tiles(), shape=shape, dtype=np.uint8, tile=(tile, tile),
                     description=description if level == 0 else None, metadata=None,
                     subfiletype=0 if level == 0 else 1, **kw)
    return len(sizes)


def write_pyramid_array(path: str | os.PathLike, image: np.ndarray, *, compression: str = "deflate",
                        quality: int = 90, mpp: float | None = None, description: str | None = None,
                        tile: int = TILE, min_side: int = MIN_LEVEL_SIDE) -> int:
    """Write an in-memory uint8 image as a pyramidal tiled TIFF (see :func:`write_pyramid`).

    Each level is the 2x2 area average of the previous one (its last row and
    column repeated when a side is odd).

    Parameters
    ----------
    image : ndarray uint8 (H, W, 3) or (H, W)

    Returns
    -------
    int
        Number of levels written.
    """
    image = np.ascontiguousarray(image)
    if image.dtype != np.uint8 or image.ndim not in (2, 3) or (image.ndim == 3 and image.shape[2] != 3):
        raise ValueError(f"expected a uint8 (H, W, 3) or (H, W) image, got {image.dtype} {image.shape}")
    h, w = image.shape[:2]
    levels = [image]
    for lw, lh in level_sizes(w, h, min_side)[1:]:
        prev = levels[-1]
        pad = [(0, prev.shape[0] % 2), (0, prev.shape[1] % 2)] + [(0, 0)] * (prev.ndim - 2)
        levels.append(down2(np.pad(prev, pad, mode="edge")))
        assert levels[-1].shape[:2] == (lh, lw)

    def render(level: int, x: int, y: int, tw: int, th: int) -> np.ndarray:
        lev = levels[level]
        out = np.zeros((th, tw) + lev.shape[2:], np.uint8)
        part = lev[y:y + th, x:x + tw]
        out[:part.shape[0], :part.shape[1]] = part
        return out

    return write_pyramid(path, render, (w, h), 3 if image.ndim == 3 else 1, compression=compression,
                         quality=quality, mpp=mpp, description=description, tile=tile, min_side=min_side)
