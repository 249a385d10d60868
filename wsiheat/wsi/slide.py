"""Slide reader: one small API over OpenSlide and plain images.

Coordinate conventions (used everywhere in wsiheat):

* ``(x, y)`` is (column, row); arrays are indexed ``[y, x]`` with shape
  ``(height, width, 3)``.
* Locations are always given in **level-0 pixels**, as in OpenSlide; sizes are
  in pixels of the level (or downsample) being read.
* A level's *downsample* ``d`` maps a level pixel to ``d`` level-0 pixels:
  level pixel ``(i, j)`` covers level-0 ``[j*d, (j+1)*d) x [i*d, (i+1)*d)``.

Everything OpenSlide opens (SVS, generic tiled TIFF, NDPI, MRXS, Philips TIFF,
...) is opened with OpenSlide; the tiled TIFF levels of SVS and generic TIFF
slides are read tile by tile with tifffile where the pixels are OpenSlide's
exactly (:mod:`wsiheat.wsi.tiff_tiles`); plain images (PNG, JPEG, non-pyramidal TIFF)
are read with Pillow as one-level slides. Transparent pixels (outside the
scanned area, or outside the slide) are composited onto white.

Example
-------
>>> with Slide("slide.svs") as s:                               # doctest: +SKIP
...     s.level_dimensions, s.level_downsamples, s.mpp
...     rgb = s.read_region((1000, 2000), level=1, size=(512, 512))
...     lvl = s.level_for(mpp=1.0)          # ~10x, whatever the pyramid
...     tile = s.read_scaled((1000, 2000), downsample=3.0, size=(80, 80))
"""

from __future__ import annotations

import math
import os
from pathlib import Path

import cv2
import numpy as np
import openslide
from PIL import Image

from wsiheat.errors import SlideError

#: Relative tolerance when matching a requested downsample to a pyramid level.
DOWNSAMPLE_TOLERANCE = 1e-3

#: Targets finer than level 0 by more than this factor are refused (the slide
#: does not have that magnification); closer ones are upsampled slightly.
MAX_UPSAMPLE = 1.1


def composite_on(rgba: np.ndarray, background: int = 255) -> np.ndarray:
    """Composite an RGBA uint8 image onto a uniform background.

    Parameters
    ----------
    rgba : ndarray, shape (h, w, 4), uint8
        Straight (non-premultiplied) alpha, as openslide-python returns.
    background : int
        Grey level of the background (255 = white).

    Returns
    -------
    rgb : ndarray, shape (h, w, 3), uint8
    """
    rgba = np.ascontiguousarray(rgba)
    alpha = cv2.extractChannel(rgba, 3)
    if cv2.minMaxLoc(alpha)[0] == 255:  # opaque (nearly every region): drop alpha, ~10x faster than numpy
        return cv2.cvtColor(rgba, cv2.COLOR_RGBA2RGB)
    a = alpha[..., None].astype(np.uint16)
    rgb = (rgba[..., :3].astype(np.uint16) * a + background * (255 - a) + 127) // 255
    return rgb.astype(np.uint8)


def _area_rows(a: np.ndarray, offset: float, f: float, n: int) -> np.ndarray:
    """Area means of ``n`` cells of height ``f`` from ``offset`` along axis 0 (float32)."""
    m = a.shape[0]
    c = np.empty((m + 1,) + a.shape[1:], np.float32)
    c[0] = 0
    np.cumsum(a, axis=0, dtype=np.float32, out=c[1:])  # c[k] = sum of rows [0, k)
    p = np.clip(offset + np.arange(n + 1) * f, 0.0, float(m))
    k = np.minimum(p.astype(np.int64), m - 1)
    t = (p - k).astype(np.float32).reshape((-1,) + (1,) * (a.ndim - 1))
    cp = c[k] + t * a[k]  # the cumulative sum is linear inside a source pixel
    out = cp[1:] - cp[:-1]
    out *= np.float32(1.0 / f)
    return out


def area_resample(src: np.ndarray, offset: tuple[float, float], f: float,
                  size: tuple[int, int]) -> np.ndarray:
    """Exact area resampling of an image by a (fractional) factor.

    Parameters
    ----------
    src : ndarray (h, w, C) uint8
        Source pixels; pixel ``(r, c)`` covers ``[c, c+1) x [r, r+1)``.
    offset : (float, float)
        (x, y) of the output's top-left corner in source pixels.
    f : float
        Source pixels per output pixel.
    size : (int, int)
        Output (width, height); output pixel ``(i, j)`` is the mean of the source
        over ``[ox + j*f, ox + (j+1)*f) x [oy + i*f, oy + (i+1)*f)``.

    Returns
    -------
    ndarray (height, width, C) uint8
    """
    w, h = int(size[0]), int(size[1])
    a = _area_rows(np.asarray(src), offset[1], f, h)                       # (h, sw, C)
    a = _area_rows(np.ascontiguousarray(a.transpose(1, 0, 2)), offset[0], f, w)  # (w, h, C)
    return np.clip(np.rint(a.transpose(1, 0, 2)), 0, 255).astype(np.uint8)


class Slide:
    """A whole-slide image (or a plain image treated as a one-level slide).

    Parameters
    ----------
    path : str or path-like
        Slide or image file.
    reader : {"auto", "openslide"}
        ``auto`` reads the tiled TIFF levels of Aperio SVS and generic tiled
        TIFF slides tile by tile with tifffile, where that gives OpenSlide's
        pixels exactly (:mod:`wsiheat.wsi.tiff_tiles`; 1.5-3x faster), and
        everything else through OpenSlide; ``openslide`` reads everything
        through OpenSlide (as does ``WSIHEAT_SLIDE_READER=openslide``).

    Raises
    ------
    WsiheatError
        When the file is missing or is neither a slide nor an image.
    """

    def __init__(self, path: str | os.PathLike, reader: str = "auto"):
        if reader not in ("auto", "openslide"):
            raise SlideError(f"{path}: unknown slide reader {reader!r} (auto or openslide)")
        self.path = Path(path)
        if not self.path.exists():
            raise SlideError(f"{self.path}: no such file")
        if self.path.is_dir():
            raise SlideError(f"{self.path}: is a folder, not a slide")
        try:
            self._osr = openslide.open_slide(str(self.path))
        except (openslide.OpenSlideError, OSError, ValueError, Image.DecompressionBombError) as exc:
            raise SlideError(
                f"{self.path}: not a slide or image that OpenSlide or Pillow can read "
                f"({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else 'unknown format'})"
            ) from None
        self.level_count: int = self._osr.level_count
        self.level_dimensions: tuple[tuple[int, int], ...] = tuple(
            (int(w), int(h)) for w, h in self._osr.level_dimensions
        )
        self.level_downsamples: tuple[float, ...] = tuple(float(d) for d in self._osr.level_downsamples)
        self.properties: dict[str, str] = dict(self._osr.properties)
        self.mpp: float | None = self._read_mpp()
        self._tiles = None
        if reader == "auto" and self.is_openslide:
            from wsiheat.wsi.tiff_tiles import TiffTiles

            self._tiles = TiffTiles.open(self.path, self.properties.get("openslide.vendor"), self.level_dimensions,
                                         self.level_downsamples, self._read_openslide)

    @property
    def reader(self) -> str:
        """``direct`` when some levels are read tile by tile with tifffile (see
        :mod:`wsiheat.wsi.tiff_tiles`), else ``openslide`` (or ``pillow`` for a plain image)."""
        if self._tiles is not None and self._tiles.levels:
            return "direct"
        return "openslide" if self.is_openslide else "pillow"

    # -- metadata ----------------------------------------------------------------
    @property
    def name(self) -> str:
        """Slide name: the file name without its extension(s); see :func:`slide_name`."""
        return slide_name(self.path)

    @property
    def dimensions(self) -> tuple[int, int]:
        """Level-0 (width, height)."""
        return self.level_dimensions[0]

    @property
    def is_openslide(self) -> bool:
        """True when read by OpenSlide (False: a plain image read by Pillow)."""
        return isinstance(self._osr, openslide.OpenSlide)

    def _read_mpp(self) -> float | None:
        vals = []
        for key in (openslide.PROPERTY_NAME_MPP_X, openslide.PROPERTY_NAME_MPP_Y):
            try:
                v = float(self.properties.get(key, "nan"))
            except ValueError:
                v = float("nan")
            if math.isfinite(v) and v > 0:
                vals.append(v)
        return float(np.mean(vals)) if vals else None

    def __repr__(self) -> str:
        return (f"Slide({str(self.path)!r}, levels={self.level_count}, "
                f"dimensions={self.dimensions}, mpp={self.mpp})")

    # -- level choice -------------------------------------------------------------
    def downsample_for(self, *, level: int | None = None, downsample: float | None = None,
                       mpp: float | None = None) -> float:
        """Resolve exactly one of ``level``, ``downsample`` or ``mpp`` to a downsample.

        Raises
        ------
        WsiheatError
            For a level the slide does not have, or a µm/px target on a slide
            without µm/px metadata.
        """
        given = [v is not None for v in (level, downsample, mpp)]
        if sum(given) != 1:
            raise ValueError("give exactly one of level, downsample, mpp")
        if level is not None:
            if not 0 <= level < self.level_count:
                raise SlideError(
                    f"{self.path}: has no level {level} (levels 0-{self.level_count - 1}, "
                    f"downsamples {', '.join(f'{d:g}' for d in self.level_downsamples)})")
            return self.level_downsamples[level]
        if mpp is not None:
            if self.mpp is None:
                raise SlideError(
                    f"{self.path}: no µm/px in the slide metadata, so a target of {mpp:g} µm/px "
                    f"cannot be resolved; give a level or a downsample instead")
            if not (mpp > 0 and math.isfinite(mpp)):
                raise SlideError(f"{self.path}: target µm/px must be positive, got {mpp:g}")
            ds = mpp / self.mpp
            if ds * MAX_UPSAMPLE < 1:
                raise SlideError(
                    f"{self.path}: has no magnification as fine as {mpp:g} µm/px "
                    f"(level 0 is {self.mpp:g} µm/px)")
            return ds
        if not (downsample > 0 and math.isfinite(downsample)):
            raise SlideError(f"{self.path}: downsample must be positive, got {downsample:g}")
        if downsample * MAX_UPSAMPLE < 1:
            raise SlideError(
                f"{self.path}: downsample {downsample:g} is finer than level 0 "
                f"(the slide has no magnification above its scan resolution)")
        return float(downsample)

    def level_matches(self, level: int, downsample: float) -> bool:
        """True when pyramid ``level`` *is* ``downsample`` (up to rounding of its size).

        A level matches when its downsample is within :data:`DOWNSAMPLE_TOLERANCE`
        (relative) of the target, or within 1 % when its size is the level-0
        size divided by the target rounded either way (pyramids floor or ceil
        odd sizes, which moves small levels' downsamples off the nominal one).
        """
        lds = self.level_downsamples[level]
        rel = abs(lds - downsample) / downsample
        if rel <= DOWNSAMPLE_TOLERANCE:
            return True
        W, H = self.dimensions
        w, h = self.level_dimensions[level]
        return rel <= 0.01 and abs(W / downsample - w) < 1 and abs(H / downsample - h) < 1

    def level_for(self, downsample: float | None = None, *, mpp: float | None = None) -> int:
        """Index of the nearest level at or finer than a target downsample (or µm/px).

        Parameters
        ----------
        downsample : float, optional
            Target downsample relative to level 0.
        mpp : float, optional
            Target resolution in µm per pixel (needs slide metadata).

        Returns
        -------
        int
            The coarsest level whose downsample is <= the target (level 0 if
            the target is finer than level 0).
        """
        ds = self.downsample_for(downsample=downsample, mpp=mpp)
        best = 0
        for i, d in enumerate(self.level_downsamples):
            if d <= ds or self.level_matches(i, ds):
                best = i
        return best

    # -- reading ------------------------------------------------------------------
    def read_region(self, location: tuple[int, int], level: int, size: tuple[int, int],
                    background: int = 255) -> np.ndarray:
        """Read a region of a level as RGB uint8.

        Parameters
        ----------
        location : (int, int)
            Top-left (x, y) in level-0 pixels; may lie outside the slide.
        level : int
            Pyramid level.
        size : (int, int)
            (width, height) in pixels of that level.
        background : int
            Grey level for transparent or out-of-slide pixels (255 = white).

        Returns
        -------
        ndarray, shape (height, width, 3), uint8
        """
        if not 0 <= level < self.level_count:
            raise SlideError(f"{self.path}: has no level {level} (levels 0-{self.level_count - 1})")
        w, h = int(size[0]), int(size[1])
        if w <= 0 or h <= 0:
            return np.full((max(h, 0), max(w, 0), 3), background, np.uint8)
        if self._tiles is not None:
            try:
                arr = self._tiles.read((int(location[0]), int(location[1])), level, (w, h), background)
            except SlideError:  # OpenSlide's own read (a level's first-read check) failed: already worded
                raise
            except Exception as exc:  # noqa: BLE001 - tifffile/imagecodecs raise many kinds on a damaged tile
                msg = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
                raise SlideError(f"{self.path}: read failed at {tuple(location)} level {level}: {msg}") from None
            if arr is not None:
                return arr
        return self._read_openslide(location, level, (w, h), background)

    def _read_openslide(self, location: tuple[int, int], level: int, size: tuple[int, int],
                        background: int = 255) -> np.ndarray:
        """:meth:`read_region` through OpenSlide (or Pillow) only."""
        w, h = int(size[0]), int(size[1])
        try:
            img = self._osr.read_region((int(location[0]), int(location[1])), level, (w, h))
        except (openslide.OpenSlideError, OSError, ValueError) as exc:
            msg = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            raise SlideError(f"{self.path}: read failed at {tuple(location)} level {level}: {msg}") from None
        arr = np.asarray(img)
        if arr.ndim == 2:
            arr = np.repeat(arr[..., None], 3, axis=2)
        if arr.shape[2] == 4:
            return composite_on(arr, background)
        return np.ascontiguousarray(arr[..., :3])

    def read_scaled(self, location: tuple[float, float], downsample: float, size: tuple[int, int],
                    background: int = 255) -> np.ndarray:
        """Read a region at any downsample, resampled from the nearest finer level.

        Output pixel ``(i, j)`` is the area mean of level-0
        ``[x0 + j*d, x0 + (j+1)*d) x [y0 + i*d, y0 + (i+1)*d)``. When ``d`` is a
        pyramid level (see :meth:`level_matches`) this is a direct read of that
        level; otherwise the covering region of the nearest finer level is read
        once and area-resampled with exact geometry (fractional scale and
        offset included), so adjacent reads tile seamlessly.

        Parameters
        ----------
        location : (float, float)
            Top-left (x, y) in level-0 pixels.
        downsample : float
            Target downsample relative to level 0 (need not be a pyramid level).
        size : (int, int)
            (width, height) of the output in target pixels.
        background : int
            Grey level for transparent or out-of-slide pixels.

        Returns
        -------
        ndarray, shape (height, width, 3), uint8
        """
        level = self.level_for(downsample)
        lds = self.level_downsamples[level]
        w, h = int(size[0]), int(size[1])
        if self.level_matches(level, downsample) or w <= 0 or h <= 0:
            return self.read_region((int(round(location[0])), int(round(location[1]))), level, (w, h),
                                    background)
        f = downsample / lds  # source pixels per output pixel
        sx, sy = float(location[0]) / lds, float(location[1]) / lds  # top-left in level pixels
        ix, iy = math.floor(sx + 1e-9), math.floor(sy + 1e-9)
        ox, oy = max(0.0, sx - ix), max(0.0, sy - iy)
        sw = max(1, math.ceil(ox + w * f - 1e-9))
        sh = max(1, math.ceil(oy + h * f - 1e-9))
        src = self.read_region((int(round(ix * lds)), int(round(iy * lds))), level, (sw, sh), background)
        exact = (ox < 1e-9 and oy < 1e-9 and abs(w * f - sw) < 1e-6 and abs(h * f - sh) < 1e-6)
        if exact:  # integer geometry: OpenCV's area resize is exact and fast
            return cv2.resize(src, (w, h), interpolation=cv2.INTER_AREA)
        return area_resample(src, (ox, oy), f, (w, h))

    def read_downsampled(self, downsample: float, background: int = 255,
                         chunk: int = 4096) -> np.ndarray:
        """The whole slide at a (large) downsample, read in bounded chunks.

        Memory is bounded by the output plus one ``chunk`` x ``chunk`` source
        block, whatever the slide size. Used for thumbnails and tissue masks.

        Returns
        -------
        ndarray, shape (ceil(H / downsample), ceil(W / downsample), 3), uint8
        """
        W, H = self.dimensions
        ow, oh = max(1, math.ceil(W / downsample)), max(1, math.ceil(H / downsample))
        out = np.empty((oh, ow, 3), np.uint8)
        level = self.level_for(downsample)
        factor = downsample / self.level_downsamples[level]
        # output pixels per chunk so that the source block is <= chunk pixels wide
        step = max(1, int(chunk // max(factor, 1.0)))
        for oy in range(0, oh, step):
            for ox in range(0, ow, step):
                bw, bh = min(step, ow - ox), min(step, oh - oy)
                out[oy:oy + bh, ox:ox + bw] = self.read_scaled(
                    (ox * downsample, oy * downsample), downsample, (bw, bh), background)
        return out

    def thumbnail(self, max_size: int = 1024) -> tuple[np.ndarray, float]:
        """A thumbnail whose longer side is at most ``max_size`` pixels.

        Returns
        -------
        rgb : ndarray (h, w, 3) uint8
        downsample : float
            Level-0 pixels per thumbnail pixel.
        """
        W, H = self.dimensions
        ds = max(1.0, max(W, H) / max_size)
        return self.read_downsampled(ds), ds

    # -- lifetime -----------------------------------------------------------------
    def close(self) -> None:
        if self._tiles is not None:
            self._tiles.close()
        self._osr.close()

    def __enter__(self) -> "Slide":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def slide_name(path: str | os.PathLike) -> str:
    """The name of a slide file, without opening it: the file name without its
    extension (both parts of ``.ome.tif``/``.ome.tiff``). Output files and
    HDF5 rows are named by it."""
    name = Path(path).name
    for ext in (".ome.tiff", ".ome.tif"):
        if name.lower().endswith(ext):
            return name[: -len(ext)]
    return Path(path).stem


def name_problem(name: str) -> str | None:
    """Why ``name`` cannot name output files (``NAME.h5``, ``NAME_overlay.png``, ...), or None.

    Empty names, ``.`` and ``..``, and names starting with a dot (hidden
    files such as ``..h5``) are refused.
    """
    n = str(name)
    if not n.strip():
        return "is empty"
    if n.startswith(".") or n.strip() in (".", ".."):
        return f"starts with a dot (the outputs would be hidden files such as {n}.h5)"
    if "/" in n or os.sep in n:
        return "holds a path separator"
    return None


def open_slide(path: str | os.PathLike) -> Slide:
    """Open a slide or image; see :class:`Slide`."""
    return Slide(path)
