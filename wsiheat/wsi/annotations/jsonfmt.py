"""JSON annotations: CAMELYON16 JSON (``positive``/``negative`` polygons) and GeoJSON (QuPath)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np

from wsiheat.errors import GroundTruthError
from wsiheat.wsi.annotations.asap import HOLE_GROUPS


def _camelyon_json(path: Path, data: dict) -> tuple[list[np.ndarray], list[np.ndarray]]:
    def polys(key: str) -> list[np.ndarray]:
        out = []
        for item in data.get(key, []) or []:
            verts = item.get("vertices") if isinstance(item, dict) else item
            try:
                arr = np.asarray(verts, np.float64).reshape(-1, 2)
            except (TypeError, ValueError):
                raise GroundTruthError(f"{path}: {key} polygon {item.get('name', '?') if isinstance(item, dict) else '?'} "
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
        raise GroundTruthError(f"{path}: not valid JSON ({exc})") from None
    if isinstance(data, dict) and ("positive" in data or "negative" in data):
        return _camelyon_json(path, data)
    if (isinstance(data, dict) and data.get("type") in ("FeatureCollection", "Feature", "Polygon", "MultiPolygon")) \
            or isinstance(data, list):
        return _geojson(path, data)
    raise GroundTruthError(f"{path}: JSON is neither CAMELYON16 annotations (positive/negative) nor GeoJSON")


def is_empty_camelyon_json(path: Path) -> bool:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError):
        return False
    return isinstance(data, dict) and data.get("positive", None) == []
