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

import json
import math
import os
import xml.etree.ElementTree as ET
from pathlib import Path

import cv2
import numpy as np

from .errors import WsiheatError
from .slide import Slide

#: ASAP groups that are tumor / holes in CAMELYON16.
TUMOR_GROUPS = ("tumor", "_0", "_1", "metastases", "metastasis")
HOLE_GROUPS = ("_2", "exclusion", "non-tumor", "normal")

#: Relative tolerance on the aspect ratio when matching a mask to a slide.
PROPORTION_TOLERANCE = 0.01

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
        s = (sx + sy) / 2
        # a pyramid level may round each side by a pixel
        if abs(W / s - mw) > 1 + PROPORTION_TOLERANCE * mw or abs(H / s - mh) > 1 + PROPORTION_TOLERANCE * mh:
            raise WsiheatError(
                f"{self.path}: mask size {mw}x{mh} is not proportional to the slide size {W}x{H} "
                f"(scale {sx:.4g} in x, {sy:.4g} in y)")
        self.scale = s  # level-0 slide pixels per mask level-0 pixel
        self.dimensions = (int(W), int(H))
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
            ds = self._mask.level_downsamples[level] * self.scale
            self._has_tumor = bool(self.full_mask(ds).any())
        return self._has_tumor

    def tumor_mask(self, x0: float, y0: float, width: int, height: int, downsample: float) -> np.ndarray:
        if width <= 0 or height <= 0:
            return np.zeros((max(height, 0), max(width, 0)), bool)
        mds = downsample / self.scale  # target downsample in mask pixels
        level = self._mask.level_for(max(mds, self._mask.level_downsamples[0]))
        lds = self._mask.level_downsamples[level]
        f = mds / lds  # source pixels per output pixel
        mx0, my0 = x0 / self.scale, y0 / self.scale
        sx0, sy0 = int(math.floor(mx0 / lds)), int(math.floor(my0 / lds))
        sx1 = int(math.ceil((mx0 / lds) + width * f))
        sy1 = int(math.ceil((my0 / lds) + height * f))
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


# --- readers -----------------------------------------------------------------------

def read_asap_xml(path: str | os.PathLike) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Read CAMELYON16 ASAP XML into (tumor polygons, holes), level-0 pixels."""
    path = Path(path)
    try:
        root = ET.parse(path).getroot()
    except ET.ParseError as exc:
        raise WsiheatError(f"{path}: not valid XML ({exc})") from None
    pos, neg = [], []
    for ann in root.iter("Annotation"):
        group = (ann.get("PartOfGroup") or "").strip().lower()
        pts = []
        for c in ann.iter("Coordinate"):
            try:
                pts.append((float(c.get("X").replace(",", ".")), float(c.get("Y").replace(",", "."))))
            except (TypeError, ValueError, AttributeError):
                raise WsiheatError(f"{path}: annotation {ann.get('Name')!r} has a coordinate without "
                                   f"numeric X/Y") from None
        if len(pts) < 3:
            continue
        if group in HOLE_GROUPS:
            neg.append(np.asarray(pts))
        elif group in TUMOR_GROUPS or group in ("", "none"):
            pos.append(np.asarray(pts))
    return pos, neg


def _camelyon_json(path: Path, data: dict) -> tuple[list[np.ndarray], list[np.ndarray]]:
    def polys(key: str) -> list[np.ndarray]:
        out = []
        for item in data.get(key, []) or []:
            verts = item.get("vertices") if isinstance(item, dict) else item
            try:
                arr = np.asarray(verts, np.float64).reshape(-1, 2)
            except (TypeError, ValueError):
                raise WsiheatError(f"{path}: {key} polygon {item.get('name', '?') if isinstance(item, dict) else '?'} "
                                   f"has malformed vertices") from None
            if arr.shape[0] >= 3:
                out.append(arr)
        return out

    return polys("positive"), polys("negative")


def _geojson(path: Path, data) -> tuple[list[np.ndarray], list[np.ndarray]]:
    pos, neg = [], []
    if isinstance(data, dict) and data.get("type") == "FeatureCollection":
        feats = data.get("features", [])
    elif isinstance(data, dict):
        feats = [data]
    else:
        feats = list(data)

    def classification(feat: dict) -> str:
        props = feat.get("properties") or {}
        cls = props.get("classification") or props.get("class") or props.get("label") or ""
        if isinstance(cls, dict):
            cls = cls.get("name", "")
        return str(cls).strip().lower()

    for feat in feats:
        if not isinstance(feat, dict):
            continue
        geom = feat.get("geometry", feat if "coordinates" in feat else None)
        if not geom:
            continue
        is_hole = classification(feat) in HOLE_GROUPS + ("stroma", "other", "ignore")
        gtype = geom.get("type")
        if gtype == "Polygon":
            polygons = [geom.get("coordinates", [])]
        elif gtype == "MultiPolygon":
            polygons = geom.get("coordinates", [])
        else:
            continue
        for rings in polygons:
            for k, ring in enumerate(rings):
                arr = np.asarray(ring, np.float64).reshape(-1, 2)
                if arr.shape[0] < 3:
                    continue
                if k == 0:  # exterior ring: tumor, or a hole when the feature is non-tumor
                    (neg if is_hole else pos).append(arr)
                elif not is_hole:  # interior rings of a tumor feature are holes
                    neg.append(arr)
    return pos, neg


def read_json_annotations(path: str | os.PathLike) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Read the CAMELYON16 JSON form or GeoJSON into (tumor polygons, holes)."""
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise WsiheatError(f"{path}: not valid JSON ({exc})") from None
    if isinstance(data, dict) and ("positive" in data or "negative" in data):
        return _camelyon_json(path, data)
    if (isinstance(data, dict) and data.get("type") in ("FeatureCollection", "Feature", "Polygon", "MultiPolygon")) \
            or isinstance(data, list):
        return _geojson(path, data)
    raise WsiheatError(f"{path}: JSON is neither CAMELYON16 annotations (positive/negative) nor GeoJSON")


def _is_empty_camelyon_json(path: Path) -> bool:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError):
        return False
    return isinstance(data, dict) and data.get("positive", None) == []


def sniff_format(path: str | os.PathLike) -> str:
    """Guess a ground-truth file's format from its content: 'xml', 'json' or 'mask'."""
    path = Path(path)
    with open(path, "rb") as fh:
        head = fh.read(512)
    text = head.lstrip(b"\xef\xbb\xbf").lstrip()
    if text.startswith(b"<"):
        return "xml"
    if text[:1] in (b"{", b"["):
        return "json"
    return "mask"


def load_ground_truth(path: str | os.PathLike, slide_dimensions: tuple[int, int] | None = None) -> GroundTruth:
    """Load tumor ground truth in any supported form (chosen by content).

    Parameters
    ----------
    path : path-like
        Mask image/slide, ASAP XML, CAMELYON16 JSON or GeoJSON.
    slide_dimensions : (int, int), optional
        Level-0 size of the slide it annotates; masks are checked to be
        proportional to it.

    Raises
    ------
    WsiheatError
        Missing file, unknown format, no valid polygon, or a mask whose size
        does not fit the slide.
    """
    path = Path(path)
    if not path.exists():
        raise WsiheatError(f"{path}: no such file")
    if path.is_dir():
        raise WsiheatError(f"{path}: is a folder, not a ground-truth file")
    kind = sniff_format(path)
    if kind == "mask":
        try:
            return MaskGroundTruth(path, slide_dimensions)
        except WsiheatError as exc:
            if "not proportional" in str(exc):
                raise
            raise WsiheatError(f"{path}: unknown ground-truth format (not a mask image, ASAP XML, "
                               f"CAMELYON16 JSON or GeoJSON)") from None
    pos, neg = read_asap_xml(path) if kind == "xml" else read_json_annotations(path)
    if not pos and _is_empty_camelyon_json(path):
        # {"positive": [], "negative": []}: a normal slide, annotated as such
        return PolygonGroundTruth([], [], path, slide_dimensions)
    if not pos:
        raise WsiheatError(f"{path}: no valid tumor polygon (need at least 3 vertices)")
    if slide_dimensions is not None:
        W, H = slide_dimensions
        allp = np.concatenate(pos)
        if allp[:, 0].max() > W * 1.05 or allp[:, 1].max() > H * 1.05 or allp.min() < -0.05 * max(W, H):
            raise WsiheatError(
                f"{path}: polygons extend to ({allp[:, 0].max():.0f}, {allp[:, 1].max():.0f}), "
                f"outside the slide's {W}x{H} level-0 pixels")
    return PolygonGroundTruth(pos, neg, path, slide_dimensions)
