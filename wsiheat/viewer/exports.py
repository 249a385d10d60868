"""Viewer-native exports of a heatmap result: ``NAME_qupath.geojson`` and ``NAME_asap.xml``.

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
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np

from ..errors import WsiheatError

QUPATH_SUFFIX, ASAP_SUFFIX = "_qupath.geojson", "_asap.xml"
#: QuPath measurement name of a cell's probability
MEASUREMENT = "tumor probability"
TUMOR_COLOR = [200, 0, 0]


def _num(v: float) -> float | int:
    v = round(float(v), 2)
    return int(v) if v.is_integer() else v


def qupath_features(probabilities: np.ndarray, tissue: np.ndarray, cell_size: float,
                    origin: tuple[float, float], lesions: np.ndarray, min_prob: float = 0.0) -> dict:
    """The QuPath GeoJSON ``FeatureCollection`` of a heatmap and its lesion candidates.

    Parameters
    ----------
    probabilities, tissue : ndarray (rows, cols)
        The raw heatmap (:func:`wsiheat.infer.read_heatmap`).
    cell_size : float
        Cell side in level-0 pixels.
    origin : (float, float)
        Level-0 ``(x, y)`` of cell (0, 0)'s top-left corner.
    lesions : ndarray (K, 3)
        ``prob, x, y`` rows (level-0 pixels), most probable first.
    min_prob : float
        Cells below this probability are left out (smaller files).

    Returns
    -------
    dict
        GeoJSON, detections first (row-major), then the candidates by rank.
    """
    if not 0.0 <= min_prob <= 1.0:
        raise WsiheatError(f"--min-prob must be in [0, 1], got {min_prob}")
    p = np.nan_to_num(np.asarray(probabilities, np.float64))
    keep = np.asarray(tissue, bool) & (p >= min_prob)
    rows, cols = np.nonzero(keep)
    s, (ox, oy) = float(cell_size), origin
    feats: list[dict] = []
    for r, c in zip(rows.tolist(), cols.tolist()):
        x0, y0, x1, y1 = _num(ox + c * s), _num(oy + r * s), _num(ox + (c + 1) * s), _num(oy + (r + 1) * s)
        feats.append({"type": "Feature",
                      "geometry": {"type": "Polygon",
                                   "coordinates": [[[x0, y0], [x1, y0], [x1, y1], [x0, y1], [x0, y0]]]},
                      "properties": {"objectType": "detection",
                                     "measurements": {MEASUREMENT: round(float(p[r, c]), 4)}}})
    for i, (prob, x, y) in enumerate(np.asarray(lesions, np.float64).reshape(-1, 3)):
        feats.append({"type": "Feature",
                      "geometry": {"type": "Point", "coordinates": [_num(x), _num(y)]},
                      "properties": {"objectType": "annotation", "name": f"#{i + 1} p={prob:.3f}",
                                     "classification": {"name": "Tumor", "color": TUMOR_COLOR},
                                     "measurements": {MEASUREMENT: round(float(prob), 4), "rank": i + 1}}})
    return {"type": "FeatureCollection", "features": feats}


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


def asap_xml(lesions: np.ndarray, polygons: tuple[list[np.ndarray], list[np.ndarray]] | None = None,
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
    root = ET.Element("ASAP_Annotations")
    anns = ET.SubElement(root, "Annotations")
    groups = [("lesion candidates", "#F4FA58")]

    def add(name: str, kind: str, group: str, color: str, pts) -> None:
        a = ET.SubElement(anns, "Annotation", Name=name, Type=kind, PartOfGroup=group, Color=color)
        coords = ET.SubElement(a, "Coordinates")
        for k, (x, y) in enumerate(pts):
            ET.SubElement(coords, "Coordinate", Order=str(k), X=f"{float(x):.2f}", Y=f"{float(y):.2f}")

    for i, (p, x, y) in enumerate(np.asarray(lesions, np.float64).reshape(-1, 3)):
        add(f"#{i + 1} p={p:.3f}", "Dot", "lesion candidates", "#F4FA58", [(x, y)])
    if polygons is not None:
        outer, holes = polygons
        gname = f"heatmap >= {threshold:g}" if threshold is not None else "heatmap"
        groups += [(gname, "#FF4040"), ("heatmap holes", "#40A0FF")]
        for i, ring in enumerate(outer):
            add(f"{gname} {i + 1}", "Polygon", gname, "#FF4040", ring[:-1])
        for i, ring in enumerate(holes):
            add(f"hole {i + 1}", "Polygon", "heatmap holes", "#40A0FF", ring[:-1])
    gs = ET.SubElement(root, "AnnotationGroups")
    for name, color in groups:
        g = ET.SubElement(gs, "Group", Name=name, PartOfGroup="None", Color=color)
        ET.SubElement(g, "Attributes")
    ET.indent(root, "\t")
    return '<?xml version="1.0"?>\n' + ET.tostring(root, encoding="unicode") + "\n"


def write_viewer_exports(results_dir: str | os.PathLike, name: str, out_dir: str | os.PathLike | None = None,
                         min_prob: float = 0.0, polygon_threshold: float | None = None) -> dict[str, Path]:
    """Write ``NAME_qupath.geojson`` and ``NAME_asap.xml`` of one heatmap result.

    Parameters
    ----------
    results_dir : path-like
        Folder holding ``NAME.h5`` and ``NAME_lesions.csv`` (``wsiheat heatmap``'s outputs).
    name : str
        The result's output name.
    out_dir : path-like, optional
        Where to write (default: ``results_dir``, beside the other outputs).
    min_prob : float
        Heatmap cells below this probability are left out of the GeoJSON.
    polygon_threshold : float, optional
        Also write the heatmap thresholded at this probability as ASAP polygons.

    Returns
    -------
    dict
        ``{"qupath": path, "asap": path}``.
    """
    from ..evaluate import read_detections
    from ..fileio import atomic_path
    from ..infer import read_heatmap

    results_dir = Path(results_dir)
    out = Path(out_dir) if out_dir is not None else results_dir
    if not out.is_dir():
        raise WsiheatError(f"{out}: output folder does not exist")
    if polygon_threshold is not None and not 0.0 <= polygon_threshold <= 1.0:
        raise WsiheatError(f"--asap-threshold must be in [0, 1], got {polygon_threshold}")
    hm = read_heatmap(results_dir / f"{name}.h5")
    csv_path = results_dir / f"{name}_lesions.csv"
    lesions = np.zeros((0, 3))
    if csv_path.exists():
        probs, xs, ys = read_detections(csv_path, allow_empty=True)
        lesions = np.stack([probs, xs, ys], axis=1).reshape(-1, 3)
        lesions = lesions[np.argsort(-lesions[:, 0], kind="stable")]
    fc = qupath_features(hm.probabilities, hm.tissue, hm.cell_size, hm.origin, lesions, min_prob)
    polys = (heatmap_polygons(hm.probabilities, hm.tissue, hm.cell_size, hm.origin, polygon_threshold)
             if polygon_threshold is not None else None)
    paths = {"qupath": out / f"{name}{QUPATH_SUFFIX}", "asap": out / f"{name}{ASAP_SUFFIX}"}
    with atomic_path(paths["qupath"]) as tmp:
        tmp.write_text(json.dumps(fc, separators=(",", ":")) + "\n", encoding="utf-8")
    with atomic_path(paths["asap"]) as tmp:
        tmp.write_text(asap_xml(lesions, polys, polygon_threshold), encoding="utf-8")
    return paths


def export_results(results_dir: str | os.PathLike, out_dir: str | os.PathLike | None = None,
                   min_prob: float = 0.0, polygon_threshold: float | None = None) -> dict[str, dict[str, Path]]:
    """:func:`write_viewer_exports` for every heatmap result (``NAME.json`` + ``NAME.h5``) of a folder.

    Returns
    -------
    dict
        ``{name: {"qupath": path, "asap": path}}``, by name.

    Raises
    ------
    WsiheatError
        No such folder, or no heatmap result in it.
    """
    results_dir = Path(results_dir)
    if not results_dir.is_dir():
        raise WsiheatError(f"{results_dir}: no such results folder")
    names = []
    for p in sorted(results_dir.glob("*.json")):
        try:
            data = json.loads(p.read_text(encoding="utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError, OSError):
            continue
        if isinstance(data, dict) and "slide" in data and "score" in data and (results_dir / f"{p.stem}.h5").is_file():
            names.append(p.stem)
    if not names:
        raise WsiheatError(f"{results_dir}: no heatmap results in this folder (NAME.json and NAME.h5 written by "
                           f"wsiheat heatmap)")
    return {n: write_viewer_exports(results_dir, n, out_dir, min_prob, polygon_threshold) for n in names}
