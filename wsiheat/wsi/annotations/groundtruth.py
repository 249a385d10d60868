"""Tumor ground truth: mask images and polygon annotations, rasterized on demand.

Accepted forms (recognised by content, not only by extension):

* a **mask** image or slide (TIFF, pyramidal TIFF, PNG, ...): nonzero = tumor
  (so both 1 and 255 work). Its size may be any level of the slide: it must be
  proportional to the slide's level-0 size.
* **CAMELYON16 ASAP XML**: ``ASAP_Annotations/Annotations/Annotation[@PartOfGroup]
  /Coordinates/Coordinate[@X, @Y]`` in level-0 float pixels; groups ``Tumor``,
  ``_0`` and ``_1`` are tumor, ``_2`` and ``Exclusion`` are non-tumor holes cut
  out of them.
* the **JSON** form of ``camelyon16-annotations`` (NCRF):
  ``{"positive": [{"name", "vertices": [[x, y], ...]}], "negative": [...]}``.
* **GeoJSON** as QuPath exports it (Feature / FeatureCollection / geometry list;
  Polygon and MultiPolygon; interior rings are holes). Features classified as
  non-tumor (``Exclusion``, ``Normal``, ``Stroma`` ...) are holes.

Nothing is ever rasterized at full level-0 size: :meth:`GroundTruth.tumor_mask`
renders only the requested region at the requested downsample.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from wsiheat.errors import GroundTruthError, WsiheatError
from wsiheat.wsi.annotations.asap import read_asap_xml
from wsiheat.wsi.annotations.jsonfmt import is_empty_camelyon_json, read_json_annotations
from wsiheat.wsi.annotations.raster import asap_level_mask, rasterize_polygons
from wsiheat.wsi.slide import Slide

#: Relative tolerance on the aspect ratio when matching a mask to a slide.
PROPORTION_TOLERANCE = 0.01


def nominal_downsample(full: tuple[int, int], size: tuple[int, int]) -> float:
    """The downsample that made an image of ``size`` from one of ``full`` (both (width, height)).

    A pyramid level, or a mask written at a level of its slide, has each side
    ``full / n`` rounded down or up for an integer ``n`` (usually a power of
    two); its pixel ``(i, j)`` then covers full-size ``[j*n, (j+1)*n) x
    [i*n, (i+1)*n)``, and ``n`` is returned. OpenSlide's own
    ``level_downsamples`` (the mean of ``full / size`` over both axes, e.g.
    31.9875 for level 5 of a 1279 x 1280 image) is not ``n`` when a side is
    not a multiple of ``n``. When no integer fits, the mean ratio is returned.

    Parameters
    ----------
    full, size : (int, int)
        Width and height of the full image and of the smaller one.

    Returns
    -------
    float
    """
    W, H = (int(v) for v in full)
    w, h = (int(v) for v in size)
    s = (W / w + H / h) / 2
    if s >= 1:
        for n in (2 ** round(math.log2(s)), round(s)):
            if w in (W // n, -(-W // n)) and h in (H // n, -(-H // n)):
                return float(n)
    return s


class GroundTruth:
    """Tumor ground truth for one slide; see the module docstring for formats."""

    path: Path

    @property
    def has_tumor(self) -> bool:
        """True when the ground truth marks any tumor."""
        raise NotImplementedError

    @property
    def extent(self) -> tuple[int, int]:
        """Level-0 (width, height) covered: the slide size when known, else the polygons' extent."""
        raise NotImplementedError

    def tumor_mask(self, x0: float, y0: float, width: int, height: int, downsample: float) -> np.ndarray:
        """Boolean tumor mask of a region.

        Parameters
        ----------
        x0, y0 : float
            Level-0 top-left.
        width, height : int
            Output size in pixels.
        downsample : float
            Level-0 pixels per output pixel; output pixel ``(i, j)`` covers
            level-0 ``[x0 + j*d, x0 + (j+1)*d) x [y0 + i*d, y0 + (i+1)*d)``.

        Returns
        -------
        ndarray of bool, shape (height, width)
        """
        raise NotImplementedError

    def level_mask(self, level: int, dimensions: tuple[int, int] | None = None) -> np.ndarray:
        """The whole slide's mask at pyramid level ``level``, as a stored mask pyramid reads.

        What CAMELYON16's ``Evaluation_FROC.py`` sees when it reads level
        ``level`` of a mask TIFF with OpenSlide: level pixel ``(i, j)`` is
        level-0 ``[j*2**level, (j+1)*2**level) x [i*2**level, ...)``.

        Parameters
        ----------
        level : int
            Pyramid level (downsample ``2**level``).
        dimensions : (int, int), optional
            Level-0 (width, height); default :attr:`extent`.

        Returns
        -------
        ndarray of bool, shape (ceil(H / 2**level), ceil(W / 2**level))
            Beyond a stored level's last row/column: background.
        """
        W, H = dimensions or self.extent
        d = 2 ** int(level)
        return self.tumor_mask(0, 0, math.ceil(W / d), math.ceil(H / d), d)

    def full_mask(self, downsample: float, dimensions: tuple[int, int] | None = None) -> np.ndarray:
        """The whole slide's mask at a (coarse) downsample: ``ceil(H/d) x ceil(W/d)``."""
        W, H = dimensions or self.extent
        return self.tumor_mask(0, 0, math.ceil(W / downsample), math.ceil(H / downsample), downsample)


class PolygonGroundTruth(GroundTruth):
    """Ground truth as level-0 polygons (tumor) and holes.

    Parameters
    ----------
    positive, negative : list of array-like (n, 2)
        Tumor polygons and non-tumor holes in level-0 pixels.
    path : path-like, optional
        Source file, for messages.
    dimensions : (int, int), optional
        Level-0 slide size, when known.
    """

    def __init__(self, positive: list, negative: list | None = None, path: str | os.PathLike = "<polygons>",
                 dimensions: tuple[int, int] | None = None):
        self.path = Path(path)
        self.positive = [np.asarray(p, np.float64).reshape(-1, 2) for p in positive]
        self.negative = [np.asarray(p, np.float64).reshape(-1, 2) for p in (negative or [])]
        self.dimensions = dimensions

    @property
    def has_tumor(self) -> bool:
        return any(p.shape[0] >= 3 for p in self.positive)

    @property
    def extent(self) -> tuple[int, int]:
        if self.dimensions is not None:
            return self.dimensions
        if not self.positive:
            return (1, 1)
        allp = np.concatenate(self.positive)
        return (int(math.ceil(allp[:, 0].max())) + 1, int(math.ceil(allp[:, 1].max())) + 1)

    def tumor_mask(self, x0: float, y0: float, width: int, height: int, downsample: float) -> np.ndarray:
        return rasterize_polygons(self.positive, self.negative, x0, y0, width, height, downsample)

    def level_mask(self, level: int, dimensions: tuple[int, int] | None = None) -> np.ndarray:
        """Level ``level`` of the mask TIFF ASAP would write from these polygons (:func:`asap_level_mask`).

        Unlike :meth:`tumor_mask` (pixel centres, and polygons smaller than a
        pixel kept), this is the CAMELYON16 masks' convention: evaluation
        masks made from XML/JSON then equal those the challenge's TIFFs give.
        """
        return asap_level_mask(self.positive, self.negative, level, dimensions or self.extent)

    def __repr__(self) -> str:
        return f"PolygonGroundTruth({str(self.path)!r}, {len(self.positive)} tumor, {len(self.negative)} holes)"


class MaskGroundTruth(GroundTruth):
    """Ground truth as a mask image or (pyramidal) slide; nonzero = tumor.

    Parameters
    ----------
    path : path-like
        Mask file.
    slide_dimensions : (int, int), optional
        Level-0 size of the slide; the mask must be proportional to it. When
        omitted, the mask is taken to be at level-0 scale.
    """

    def __init__(self, path: str | os.PathLike, slide_dimensions: tuple[int, int] | None = None):
        self.path = Path(path)
        self._mask = Slide(path)
        mw, mh = self._mask.dimensions
        if slide_dimensions is None:
            slide_dimensions = (mw, mh)
        W, H = slide_dimensions
        sx, sy = W / mw, H / mh
        # a mask at a level of the slide is read at that level's own downsample (32 for a
        # level-5 mask of a 1279-pixel-wide slide, not the mean ratio 31.99)
        s = nominal_downsample((W, H), (mw, mh))
        # a pyramid level may round each side by a pixel
        if abs(W / s - mw) > 1 + PROPORTION_TOLERANCE * mw or abs(H / s - mh) > 1 + PROPORTION_TOLERANCE * mh:
            raise GroundTruthError(
                f"{self.path}: mask size {mw}x{mh} is not proportional to the slide size {W}x{H} "
                f"(scale {sx:.4g} in x, {sy:.4g} in y)")
        self.scale = s  # level-0 slide pixels per mask level-0 pixel
        self.dimensions = (int(W), int(H))
        # each mask level's own downsample (OpenSlide's level_downsamples are off when
        # a side is not a multiple of 2**level)
        self.level_downsamples = tuple(nominal_downsample((mw, mh), d) for d in self._mask.level_dimensions)
        self._has_tumor: bool | None = None

    @property
    def extent(self) -> tuple[int, int]:
        return self.dimensions

    @property
    def has_tumor(self) -> bool:
        if self._has_tumor is None:
            # the finest mask level of at most ~4 Mpx, read at its own scale
            # (a coarse level subsampled by nearest neighbour may lose small lesions)
            level = self._mask.level_count - 1
            for i, (w, h) in enumerate(self._mask.level_dimensions):
                if w * h <= 1 << 22:
                    level = i
                    break
            ds = self.level_downsamples[level] * self.scale
            self._has_tumor = bool(self.full_mask(ds).any())
        return self._has_tumor

    def tumor_mask(self, x0: float, y0: float, width: int, height: int, downsample: float) -> np.ndarray:
        if width <= 0 or height <= 0:
            return np.zeros((max(height, 0), max(width, 0)), bool)
        mds = downsample / self.scale  # target downsample in mask pixels
        # the coarsest level at or finer than the target, by the levels' own downsamples
        level = max(i for i, d in enumerate(self.level_downsamples) if i == 0 or d <= mds * (1 + 1e-9))
        lds = self.level_downsamples[level]
        f = mds / lds  # source pixels per output pixel (exactly 1 when the target is a stored level)
        mx0, my0 = x0 / self.scale, y0 / self.scale
        sx0, sy0 = int(math.floor(mx0 / lds)), int(math.floor(my0 / lds))
        sx1 = int(math.ceil((mx0 / lds) + width * f))
        sy1 = int(math.ceil((my0 / lds) + height * f))
        if sx0 >= 0 and sy0 >= 0 and (sx0 or sy0) and self._mask.level_downsamples[level] != lds:
            # OpenSlide maps a level-0 location through its own (inexact) downsample and
            # interpolates a fractional offset: read such a level from its origin instead
            src = self._mask.read_region((0, 0), level, (max(1, sx1), max(1, sy1)), background=0)
            src = src[max(sy0, 0):, max(sx0, 0):]
        else:
            src = self._mask.read_region((int(round(sx0 * lds)), int(round(sy0 * lds))), level,
                                         (max(1, sx1 - sx0), max(1, sy1 - sy0)), background=0)
        src = (src[..., 0] | src[..., 1] | src[..., 2]) > 0  # nonzero in any channel
        # map output pixel centres into the source block
        jj = (mx0 / lds - sx0) + (np.arange(width) + 0.5) * f
        ii = (my0 / lds - sy0) + (np.arange(height) + 0.5) * f
        if f > 1.0:
            # downsampling: an output pixel is tumor when any source pixel under it is
            integ = np.zeros((src.shape[0] + 1, src.shape[1] + 1), np.int64 if src.size >= 2**31 else np.int32)
            np.cumsum(np.cumsum(src, axis=0, dtype=integ.dtype), axis=1, out=integ[1:, 1:])
            c0 = np.clip(np.floor(jj - f / 2 + 1e-6).astype(int), 0, src.shape[1])
            c1 = np.clip(np.ceil(jj + f / 2 - 1e-6).astype(int), 0, src.shape[1])
            r0 = np.clip(np.floor(ii - f / 2 + 1e-6).astype(int), 0, src.shape[0])
            r1 = np.clip(np.ceil(ii + f / 2 - 1e-6).astype(int), 0, src.shape[0])
            s = (integ[r1[:, None], c1[None, :]] - integ[r0[:, None], c1[None, :]]
                 - integ[r1[:, None], c0[None, :]] + integ[r0[:, None], c0[None, :]])
            return s > 0
        ci = np.clip(np.floor(jj).astype(int), 0, src.shape[1] - 1)
        ri = np.clip(np.floor(ii).astype(int), 0, src.shape[0] - 1)
        return src[ri[:, None], ci[None, :]] > 0

    def __repr__(self) -> str:
        return f"MaskGroundTruth({str(self.path)!r}, mask {self._mask.dimensions}, scale {self.scale:.4g})"


# --------------------------------------------------------------------------------------
# Format registry: a sniffer and a reader per format
# --------------------------------------------------------------------------------------

@dataclass(frozen=True)
class GroundTruthFormat:
    """A registered ground-truth format.

    ``sniff(head: bytes, path: Path) -> bool`` says from the file's first 512
    bytes (BOM and leading blanks stripped) whether it is this format;
    ``read(path: Path, slide_dimensions) -> GroundTruth | (positive, negative)``
    reads it: a :class:`GroundTruth`, or tumor and hole polygons as lists of
    ``(K, 2)`` float arrays in level-0 pixels (then checked and wrapped here).
    """

    name: str
    sniff: Callable[[bytes, Path], bool]
    read: Callable[[Path, tuple[int, int] | None], object]


_FORMATS: list[GroundTruthFormat] = []


def register_format(name: str, sniff: Callable[[bytes, Path], bool],
                    read: Callable[[Path, tuple[int, int] | None], object]) -> None:
    """Register a ground-truth format; it is tried before the built-in ones.

    Example: a CSV of polygons, one ``polygon_id,x,y`` row per vertex::

        def sniff(head, path):
            return head.startswith(b"polygon_id,x,y")

        def read(path, slide_dimensions):
            rows = np.loadtxt(path, delimiter=",", skiprows=1)
            return [rows[rows[:, 0] == i, 1:] for i in np.unique(rows[:, 0])], []

        register_format("polygon-csv", sniff, read)
    """
    global _FORMATS
    _FORMATS = [GroundTruthFormat(name, sniff, read)] + [f for f in _FORMATS if f.name != name]


def unregister_format(name: str) -> None:
    """Remove a registered format (no error when it is not registered)."""
    global _FORMATS
    _FORMATS = [f for f in _FORMATS if f.name != name]


def formats() -> tuple[str, ...]:
    """Registered format names, in the order they are tried."""
    return tuple(f.name for f in _FORMATS)


def _head(path: Path) -> bytes:
    with open(path, "rb") as fh:
        head = fh.read(512)
    return head.lstrip(b"\xef\xbb\xbf").lstrip()


def sniff_format(path: str | os.PathLike) -> str:
    """The name of the first registered format that recognises the file ('xml', 'json', 'mask', ...)."""
    path = Path(path)
    head = _head(path)
    for f in _FORMATS:
        if f.sniff(head, path):
            return f.name
    return "mask"


def _read_mask(path: Path, slide_dimensions):
    try:
        return MaskGroundTruth(path, slide_dimensions)
    except WsiheatError as exc:
        if "not proportional" in str(exc):
            raise
        raise GroundTruthError(f"{path}: unknown ground-truth format (not a mask image, ASAP XML, "
                               f"CAMELYON16 JSON or GeoJSON)") from None


def _read_json(path: Path, slide_dimensions):
    pos, neg = read_json_annotations(path)
    if not pos and is_empty_camelyon_json(path):
        # {"positive": [], "negative": []}: a normal slide, annotated as such
        return PolygonGroundTruth([], [], path, slide_dimensions)
    return pos, neg


def _polygons(path: Path, pos: list, neg: list, slide_dimensions) -> GroundTruth:
    if not pos:
        raise GroundTruthError(f"{path}: no valid tumor polygon (need at least 3 vertices)")
    if slide_dimensions is not None:
        W, H = slide_dimensions
        allp = np.concatenate(pos)
        if allp[:, 0].max() > W * 1.05 or allp[:, 1].max() > H * 1.05 or allp.min() < -0.05 * max(W, H):
            raise GroundTruthError(
                f"{path}: polygons extend to ({allp[:, 0].max():.0f}, {allp[:, 1].max():.0f}), "
                f"outside the slide's {W}x{H} level-0 pixels")
    return PolygonGroundTruth(pos, neg, path, slide_dimensions)


def load_ground_truth(path: str | os.PathLike, slide_dimensions: tuple[int, int] | None = None) -> GroundTruth:
    """Load tumor ground truth in any registered form (chosen by content).

    Parameters
    ----------
    path : path-like
        Mask image/slide, ASAP XML, CAMELYON16 JSON, GeoJSON, or a format added
        with :func:`register_format`.
    slide_dimensions : (int, int), optional
        Level-0 size of the slide it annotates; masks are checked to be
        proportional to it.

    Raises
    ------
    GroundTruthError
        Missing file, unknown format, no valid polygon, or a mask whose size
        does not fit the slide.
    """
    path = Path(path)
    if not path.exists():
        raise GroundTruthError(f"{path}: no such file")
    if path.is_dir():
        raise GroundTruthError(f"{path}: is a folder, not a ground-truth file")
    fmt = next((f for f in _FORMATS if f.sniff(_head(path), path)), None)
    got = (fmt.read if fmt else _read_mask)(path, slide_dimensions)
    if isinstance(got, GroundTruth):
        return got
    pos, neg = got
    return _polygons(path, [np.asarray(p, np.float64) for p in pos], [np.asarray(p, np.float64) for p in neg],
                     slide_dimensions)


# built-in formats, tried last (a registered format comes first): mask is the fallback
register_format("mask", lambda head, path: not head.startswith((b"<", b"{", b"[")), _read_mask)
register_format("json", lambda head, path: head[:1] in (b"{", b"["), _read_json)
register_format("xml", lambda head, path: head.startswith(b"<"), lambda path, dims: read_asap_xml(path))
