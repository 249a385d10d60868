"""Viewer-native exports of a heatmap: ``NAME_qupath.geojson`` and ``NAME_asap.xml``.

``NAME_qupath.geojson`` is a GeoJSON ``FeatureCollection`` in QuPath's own
form (the one ``File > Export objects as GeoJSON`` writes since QuPath 0.4 and
reads back, also by drag-and-drop), coordinates in level-0 pixels, origin at
the slide's top-left corner:

* each tissue cell of the heatmap (probability >= ``min_prob``) is a square
  ``Polygon`` with ``properties.objectType = "detection"`` and
  ``properties.measurements = {"tumor probability": p}``, so QuPath's
  *Measure > Show measurement maps* colours them;
* each lesion candidate is a ``Point`` with ``objectType = "annotation"``,
  ``classification = {"name": "Tumor", "color": [r, g, b]}``, its rank in
  ``name`` and its probability in ``measurements``.

``NAME_asap.xml`` is ASAP's annotation XML: the lesion candidates as ``Dot``
annotations in group ``lesion candidates``; optionally the heatmap thresholded
at ``polygon_threshold`` as ``Polygon`` annotations (group ``heatmap >= t``,
holes in group ``heatmap holes``), traced along cell edges (corners cut
by 1/8 of a cell).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Iterator

import numpy as np

from wsiheat.errors import WsiheatError

QUPATH_SUFFIX, ASAP_SUFFIX = "_qupath.geojson", "_asap.xml"
#: QuPath measurement name of a cell's probability
MEASUREMENT = "tumor probability"
TUMOR_COLOR = [200, 0, 0]


def _num(v: float) -> float | int:
    v = round(float(v), 2)
    return int(v) if v.is_integer() else v


def iter_qupath_features(probabilities: np.ndarray, tissue: np.ndarray, cell_size: float,
                         origin: tuple[float, float], lesions: np.ndarray, min_prob: float = 0.0) -> Iterator[dict]:
    """The QuPath GeoJSON features of a heatmap and its lesion candidates, one at a time.

    Parameters
    ----------
    probabilities, tissue : ndarray (rows, cols)
        The raw heatmap (:func:`wsiheat.inference.outputs.read_heatmap`).
    cell_size : float
        Cell side in level-0 pixels.
    origin : (float, float)
        Level-0 ``(x, y)`` of cell (0, 0)'s top-left corner.
    lesions : ndarray (K, 3)
        ``prob, x, y`` rows (level-0 pixels), most probable first.
    min_prob : float
        Cells below this probability are left out (smaller files).

    Yields
    ------
    dict
        GeoJSON features, detections first (row-major), then the candidates by rank.
    """
    if not 0.0 <= min_prob <= 1.0:
        raise WsiheatError(f"min_prob={min_prob}: need a probability in [0, 1]")
    p = np.nan_to_num(np.asarray(probabilities, np.float64))
    keep = np.asarray(tissue, bool) & (p >= min_prob)
    rows, cols = np.nonzero(keep)
    s, (ox, oy) = float(cell_size), origin
    for r, c in zip(rows.tolist(), cols.tolist()):
        x0, y0, x1, y1 = _num(ox + c * s), _num(oy + r * s), _num(ox + (c + 1) * s), _num(oy + (r + 1) * s)
        yield {"type": "Feature",
               "geometry": {"type": "Polygon", "coordinates": [[[x0, y0], [x1, y0], [x1, y1], [x0, y1], [x0, y0]]]},
               "properties": {"objectType": "detection", "measurements": {MEASUREMENT: round(float(p[r, c]), 4)}}}
    for i, (prob, x, y) in enumerate(np.asarray(lesions, np.float64).reshape(-1, 3)):
        yield {"type": "Feature",
               "geometry": {"type": "Point", "coordinates": [_num(x), _num(y)]},
               "properties": {"objectType": "annotation", "name": f"#{i + 1} p={prob:.3f}",
                              "classification": {"name": "Tumor", "color": TUMOR_COLOR},
                              "measurements": {MEASUREMENT: round(float(prob), 4), "rank": i + 1}}}


def qupath_features(probabilities: np.ndarray, tissue: np.ndarray, cell_size: float,
                    origin: tuple[float, float], lesions: np.ndarray, min_prob: float = 0.0) -> dict:
    """The QuPath GeoJSON ``FeatureCollection`` (:func:`iter_qupath_features`) as one dict."""
    return {"type": "FeatureCollection",
            "features": list(iter_qupath_features(probabilities, tissue, cell_size, origin, lesions, min_prob))}


def write_qupath_geojson(path: str | os.PathLike, probabilities: np.ndarray, tissue: np.ndarray, cell_size: float,
                         origin: tuple[float, float], lesions: np.ndarray, min_prob: float = 0.0) -> None:
    """Write :func:`qupath_features` atomically, one feature at a time (memory does not grow with the file)."""
    from wsiheat.fileio import atomic_path

    feats = iter_qupath_features(probabilities, tissue, cell_size, origin, lesions, min_prob)
    with atomic_path(path) as tmp, open(tmp, "w", encoding="utf-8") as f:
        f.write('{"type":"FeatureCollection","features":[')
        for i, feat in enumerate(feats):
            f.write(("," if i else "") + json.dumps(feat, separators=(",", ":")))
        f.write("]}\n")


def heatmap_polygons(probabilities: np.ndarray, tissue: np.ndarray, cell_size: float,
                     origin: tuple[float, float], threshold: float) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Outlines of the cells at or above ``threshold``, along cell edges, in level-0 pixels.

    Returns
    -------
    outer, holes : list of ndarray (n, 2)
        Closed rings ``(x, y)`` (last point = first); ``holes`` are rings of
        cells below the threshold enclosed by an outer ring.
    """
    from skimage import measure

    k = 4  # sub-cells per cell: the iso-line cuts each corner by 1 / (2k) of a cell
    m = (np.asarray(tissue, bool) & (np.nan_to_num(np.asarray(probabilities, np.float64)) >= threshold))
    up = np.pad(np.kron(m.astype(np.float64), np.ones((k, k))), 1)
    outer, holes = [], []
    s, (ox, oy) = float(cell_size), origin
    for ring in measure.find_contours(up, 0.5, positive_orientation="high"):
        ring = measure.approximate_polygon(ring, tolerance=0.01)
        # padded sub-cell index i has its centre at cell coordinate (i - 1 + 0.5) / k
        r, c = (ring[:, 0] - 0.5) / k, (ring[:, 1] - 0.5) / k
        xy = np.stack([ox + c * s, oy + r * s], axis=1)
        # shoelace in (x, y), y down: outer rings and holes wind in opposite directions
        area = 0.5 * float(np.sum(xy[:-1, 0] * xy[1:, 1] - xy[1:, 0] * xy[:-1, 1]))
        (outer if area < 0 else holes).append(xy)
    return outer, holes


def lesions_asap_xml(lesions: np.ndarray, polygons: tuple[list[np.ndarray], list[np.ndarray]] | None = None,
                     threshold: float | None = None) -> str:
    """ASAP annotation XML of the lesion candidates (``Dot``) and optional heatmap polygons.

    Parameters
    ----------
    lesions : ndarray (K, 3)
        ``prob, x, y`` rows, most probable first.
    polygons : (outer, holes), optional
        From :func:`heatmap_polygons`.
    threshold : float, optional
        The threshold of ``polygons`` (names their group).
    """
    from wsiheat.wsi.annotations.asap import asap_annotations_xml

    items = [(f"#{i + 1} p={p:.3f}", "Dot", "lesion candidates", "#F4FA58", [(x, y)])
             for i, (p, x, y) in enumerate(np.asarray(lesions, np.float64).reshape(-1, 3))]
    groups = [("lesion candidates", "#F4FA58")]
    if polygons is not None:
        outer, holes = polygons
        gname = f"heatmap >= {threshold:g}" if threshold is not None else "heatmap"
        groups += [(gname, "#FF4040"), ("heatmap holes", "#40A0FF")]
        items += [(f"{gname} {i + 1}", "Polygon", gname, "#FF4040", ring[:-1]) for i, ring in enumerate(outer)]
        items += [(f"hole {i + 1}", "Polygon", "heatmap holes", "#40A0FF", ring[:-1]) for i, ring in enumerate(holes)]
    return asap_annotations_xml(items, groups, decimals=2)


def write_viewer_files(out_dir: str | os.PathLike, name: str, probabilities: np.ndarray, tissue: np.ndarray,
                       cell_size: float, origin: tuple[float, float], lesions: np.ndarray, min_prob: float = 0.0,
                       polygon_threshold: float | None = None) -> dict[str, Path]:
    """Write ``NAME_qupath.geojson`` and ``NAME_asap.xml`` of a heatmap into ``out_dir`` (each atomically).

    Returns
    -------
    dict
        ``{"qupath": path, "asap": path}``.
    """
    from wsiheat.fileio import atomic_path

    if polygon_threshold is not None and not 0.0 <= polygon_threshold <= 1.0:
        raise WsiheatError(f"polygon_threshold={polygon_threshold}: need a probability in [0, 1]")
    out = Path(out_dir)
    paths = {"qupath": out / f"{name}{QUPATH_SUFFIX}", "asap": out / f"{name}{ASAP_SUFFIX}"}
    write_qupath_geojson(paths["qupath"], probabilities, tissue, cell_size, origin, lesions, min_prob)
    polys = (heatmap_polygons(probabilities, tissue, cell_size, origin, polygon_threshold)
             if polygon_threshold is not None else None)
    with atomic_path(paths["asap"]) as tmp:
        tmp.write_text(lesions_asap_xml(lesions, polys, polygon_threshold), encoding="utf-8")
    return paths
