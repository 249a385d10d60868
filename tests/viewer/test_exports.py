"""Viewer-native exports: NAME_qupath.geojson (QuPath's GeoJSON form, read back by our own
GeoJSON reader) and NAME_asap.xml (ASAP Dot annotations, read back as XML), and `wsiheat export`."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import xml.etree.ElementTree as ET

import numpy as np
import pytest
from _viewer import REPO, SLIDE_NAMES

from wsiheat.errors import WsiheatError
from wsiheat.evaluation.inputs import read_detections
from wsiheat.inference.exports import heatmap_polygons
from wsiheat.inference.outputs import read_heatmap
from wsiheat.viewer.exports import export_results, write_viewer_exports
from wsiheat.wsi.annotations.groundtruth import load_ground_truth
from wsiheat.wsi.annotations.jsonfmt import read_json_annotations


def test_qupath_geojson_follows_qupaths_form_and_reads_back(results, tmp_path):
    paths = write_viewer_exports(results, "test_tumor_002", tmp_path)
    assert paths["qupath"].name == "test_tumor_002_qupath.geojson"
    fc = json.loads(paths["qupath"].read_text())
    hm = read_heatmap(results / "test_tumor_002.h5")
    probs, xs, ys = read_detections(results / "test_tumor_002_lesions.csv", allow_empty=True)
    assert fc["type"] == "FeatureCollection"
    det = [f for f in fc["features"] if f["properties"]["objectType"] == "detection"]
    ann = [f for f in fc["features"] if f["properties"]["objectType"] == "annotation"]
    assert len(det) == int(hm.tissue.sum()) and len(ann) == len(probs) > 0
    # detections: closed square polygons of one cell, level-0 px, probability as a measurement
    s = hm.cell_size
    rows, cols = np.nonzero(hm.tissue)
    for f, r, c in zip(det, rows, cols):
        assert f["type"] == "Feature" and f["geometry"]["type"] == "Polygon"
        ring = f["geometry"]["coordinates"][0]
        assert ring == [[c * s, r * s], [(c + 1) * s, r * s], [(c + 1) * s, (r + 1) * s], [c * s, (r + 1) * s],
                        [c * s, r * s]]
        assert f["properties"]["measurements"]["tumor probability"] == pytest.approx(hm.probabilities[r, c], abs=1e-4)
    # candidates: Tumor points with their probability, most probable first
    order = np.argsort(-probs, kind="stable")
    for k, f in enumerate(ann):
        assert f["geometry"] == {"type": "Point", "coordinates": [xs[order[k]], ys[order[k]]]}
        assert f["properties"]["classification"]["name"] == "Tumor"
        assert len(f["properties"]["classification"]["color"]) == 3
        assert f["properties"]["measurements"]["tumor probability"] == pytest.approx(probs[order[k]], abs=1e-4)
        assert f["properties"]["name"].startswith(f"#{k + 1} p=")
    # our own GeoJSON reader reads it back: one polygon per detection, points skipped
    pos, neg = read_json_annotations(paths["qupath"])
    assert len(pos) == len(det) and not neg
    assert np.array_equal(pos[0], np.asarray(det[0]["geometry"]["coordinates"][0], np.float64))
    gt = load_ground_truth(paths["qupath"], (1920, 1920))
    assert gt.has_tumor
    # --min-prob keeps only the likely cells
    fc2 = json.loads(write_viewer_exports(results, "test_tumor_002", tmp_path, min_prob=0.5)["qupath"].read_text())
    n2 = sum(f["properties"]["objectType"] == "detection" for f in fc2["features"])
    assert n2 == int((hm.tissue & (hm.probabilities >= 0.5)).sum()) < len(det)


def test_asap_xml_has_the_candidates_as_dots(results, tmp_path):
    paths = write_viewer_exports(results, "test_tumor_001", tmp_path, polygon_threshold=0.5)
    root = ET.parse(paths["asap"]).getroot()
    assert root.tag == "ASAP_Annotations"
    probs, xs, ys = read_detections(results / "test_tumor_001_lesions.csv", allow_empty=True)
    order = np.argsort(-probs, kind="stable")
    dots = [a for a in root.iter("Annotation") if a.get("Type") == "Dot"]
    assert len(dots) == len(probs) > 0
    for k, a in enumerate(dots):
        assert a.get("PartOfGroup") == "lesion candidates"
        (c,) = list(a.iter("Coordinate"))
        assert (float(c.get("X")), float(c.get("Y"))) == pytest.approx((xs[order[k]], ys[order[k]]), abs=0.01)
    groups = {g.get("Name") for g in root.iter("Group")}
    assert {"lesion candidates", "heatmap >= 0.5"} <= groups
    # the polygons enclose the cells at or above 0.5 (area within the 1/8-cell corner cuts)
    hm = read_heatmap(results / "test_tumor_001.h5")
    polys = [np.array([(float(c.get("X")), float(c.get("Y"))) for c in a.iter("Coordinate")])
             for a in root.iter("Annotation") if a.get("PartOfGroup") == "heatmap >= 0.5"]
    area = sum(0.5 * abs(np.dot(p[:, 0], np.roll(p[:, 1], -1)) - np.dot(p[:, 1], np.roll(p[:, 0], -1))) for p in polys)
    n = int((hm.tissue & (hm.probabilities >= 0.5)).sum())
    assert n > 0 and area == pytest.approx(n * hm.cell_size ** 2, rel=0.1)


def test_heatmap_polygons_trace_cell_edges():
    p = np.zeros((6, 6))
    p[1:5, 1:5] = 0.9
    p[2, 2] = 0.1  # a hole
    outer, holes = heatmap_polygons(p, np.ones((6, 6), bool), 100.0, (10.0, 20.0), 0.5)
    assert len(outer) == 1 and len(holes) == 1
    o, h = outer[0], holes[0]
    assert (o[:, 0].min(), o[:, 0].max(), o[:, 1].min(), o[:, 1].max()) == (110, 510, 120, 520)
    assert (h[:, 0].min(), h[:, 0].max(), h[:, 1].min(), h[:, 1].max()) == (210, 310, 220, 320)


def test_export_command_writes_every_result(results, tmp_path):
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]))
    out = tmp_path / "exports"
    r = subprocess.run([sys.executable, "-m", "wsiheat", "export", str(results), "-o", str(out),
                        "--min-prob", "0.2"], capture_output=True, text=True, env=env, timeout=120, check=False)
    assert r.returncode == 0, r.stderr
    assert sorted(p.name for p in out.iterdir()) == sorted(
        [f"{n}_qupath.geojson" for n in SLIDE_NAMES] + [f"{n}_asap.xml" for n in SLIDE_NAMES])
    r = subprocess.run([sys.executable, "-m", "wsiheat", "export", str(results), "--min-prob", "2"],
                       capture_output=True, text=True, env=env, timeout=120, check=False)
    assert r.returncode == 2 and r.stderr.startswith("wsiheat: error:") and "--min-prob" in r.stderr
    with pytest.raises(WsiheatError, match="no heatmap results"):
        export_results(tmp_path / "exports")
