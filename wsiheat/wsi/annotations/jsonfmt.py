"""JSON annotations: CAMELYON16 JSON (``positive``/``negative`` polygons) and GeoJSON (QuPath)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np

from wsiheat.errors import GroundTruthError
from wsiheat.wsi.annotations.asap import HOLE_GROUPS


def _is_number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def vertices(path: Path, what: str, positions) -> np.ndarray:
    """A ring of positions as float64 (K, 2): the first two coordinates (x, y) of each position.

    GeoJSON positions may carry more coordinates (``[x, y, z]``); only x and y
    are used. Raises GroundTruthError naming ``what`` when the ring is not a
    list of number lists (a ragged or mistyped ring) or a vertex is NaN or
    infinite.
    """
    if not isinstance(positions, (list, tuple)):
        raise GroundTruthError(f"{path}: {what}: coordinates must be a list of [x, y] positions, "
                               f"got {type(positions).__name__}")
    pts = []
    for k, pos in enumerate(positions):
        if not isinstance(pos, (list, tuple)) or len(pos) < 2 or not all(_is_number(v) for v in pos[:2]):
            raise GroundTruthError(f"{path}: {what}: coordinates: position {k} is {json.dumps(pos)[:40]}, "
                                   f"not [x, y] numbers")
        pts.append((float(pos[0]), float(pos[1])))
    arr = np.asarray(pts, np.float64).reshape(-1, 2)
    bad = ~np.isfinite(arr).all(axis=1)
    if bad.any():
        k = int(np.flatnonzero(bad)[0])
        raise GroundTruthError(f"{path}: {what}: vertex {k} ({arr[k, 0]}, {arr[k, 1]}) is not finite")
    return arr


def _camelyon_json(path: Path, data: dict) -> tuple[list[np.ndarray], list[np.ndarray]]:
    def polys(key: str) -> list[np.ndarray]:
        items = data.get(key, []) or []
        if not isinstance(items, list):
            raise GroundTruthError(f"{path}: {key!r} must be a list of polygons, got {type(items).__name__}")
        out = []
        for i, item in enumerate(items):
            name = item.get("name", i) if isinstance(item, dict) else i
            verts = item.get("vertices") if isinstance(item, dict) else item
            if not isinstance(verts, list):
                raise GroundTruthError(f"{path}: {key} polygon {name}: vertices must be a list of [x, y], "
                                       f"got {type(verts).__name__}")
            arr = vertices(path, f"{key} polygon {name}", verts)
            if arr.shape[0] >= 3:
                out.append(arr)
        return out

    return polys("positive"), polys("negative")


def _geojson(path: Path, data) -> tuple[list[np.ndarray], list[np.ndarray]]:
    pos, neg = [], []
    if isinstance(data, dict) and data.get("type") == "FeatureCollection":
        feats = data.get("features", [])
        if not isinstance(feats, list):
            raise GroundTruthError(f"{path}: GeoJSON 'features' must be a list, got {type(feats).__name__}")
    elif isinstance(data, dict):
        feats = [data]
    else:
        feats = list(data)

    def classification(feat: dict, what: str) -> str:
        props = feat.get("properties") or {}
        if not isinstance(props, dict):
            raise GroundTruthError(f"{path}: {what}: 'properties' must be an object, got {type(props).__name__}")
        cls = props.get("classification") or props.get("class") or props.get("label") or ""
        if isinstance(cls, dict):
            cls = cls.get("name", "")
        return str(cls).strip().lower()

    for i, feat in enumerate(feats):
        if not isinstance(feat, dict):
            raise GroundTruthError(f"{path}: feature {i} must be a GeoJSON object, got {type(feat).__name__}")
        geom = feat.get("geometry", feat if "coordinates" in feat else None)
        if not geom:
            continue
        props = feat.get("properties")
        label = props.get("name") if isinstance(props, dict) and isinstance(props.get("name"), str) else None
        what = f"feature {i}" + (f" ({label})" if label else "")
        if not isinstance(geom, dict):
            raise GroundTruthError(f"{path}: {what}: 'geometry' must be an object, got {type(geom).__name__}")
        is_hole = classification(feat, what) in HOLE_GROUPS + ("stroma", "other", "ignore")
        gtype = geom.get("type")
        coords = geom.get("coordinates", [])
        if gtype == "Polygon":
            polygons = [coords]
        elif gtype == "MultiPolygon":
            polygons = coords
        else:
            continue
        if not isinstance(polygons, list) or not all(isinstance(r, list) for r in polygons):
            raise GroundTruthError(f"{path}: {what}: {gtype} coordinates must be lists of rings")
        for rings in polygons:
            for k, ring in enumerate(rings):
                arr = vertices(path, f"{what} ring {k}", ring)
                if arr.shape[0] < 3:
                    continue
                if k == 0:  # exterior ring: tumor, or a hole when the feature is non-tumor
                    (neg if is_hole else pos).append(arr)
                elif not is_hole:  # interior rings of a tumor feature are holes
                    neg.append(arr)
    return pos, neg


def _load_json(path: Path):
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise GroundTruthError(f"{path}: not valid JSON ({exc})") from None
    except RecursionError:
        raise GroundTruthError(f"{path}: JSON nested too deep to be annotations") from None


def read_json_annotations(path: str | os.PathLike) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Read the CAMELYON16 JSON form or GeoJSON into (tumor polygons, holes)."""
    path = Path(path)
    data = _load_json(path)
    if isinstance(data, dict) and ("positive" in data or "negative" in data):
        return _camelyon_json(path, data)
    if (isinstance(data, dict) and data.get("type") in ("FeatureCollection", "Feature", "Polygon", "MultiPolygon")) \
            or isinstance(data, list):
        return _geojson(path, data)
    raise GroundTruthError(f"{path}: JSON is neither CAMELYON16 annotations (positive/negative) nor GeoJSON")


def is_empty_camelyon_json(path: Path) -> bool:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError):
        return False
    return isinstance(data, dict) and data.get("positive", None) == []
