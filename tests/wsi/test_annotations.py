"""Ground truth: every format rasterized against known polygons, sniffing, bad inputs, real files."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
from _tiff import write_mask_tiff
from PIL import Image
from scipy import ndimage
from skimage.draw import polygon as draw_polygon

from wsiheat.errors import WsiheatError
from wsiheat.wsi.annotations.groundtruth import MaskGroundTruth, PolygonGroundTruth, load_ground_truth

SLIDE = (4096, 3072)  # level-0 (W, H) of the imaginary slide

TUMOR_A = np.array([[300, 400], [1500, 350], [1700, 1300], [900, 1700], [250, 1100]], float)
HOLE_A = np.array([[800, 800], [1200, 800], [1200, 1100], [800, 1100]], float)   # inside A
TUMOR_B = np.array([[2500, 1500], [3600, 1600], [3300, 2800], [2600, 2500]], float)
TUMOR_C = np.array([[3000, 1400], [3800, 1400], [3800, 1900], [3000, 1900]], float)  # overlaps B
TUMOR_D = np.array([[400.3, 2200.7], [1300.9, 2250.2], [800.5, 2900.4]], float)     # fractional


def reference(pos, neg, x0, y0, w, h, d):
    """Independent rasterization: skimage polygon fill at output pixel centres."""
    out = np.zeros((h, w), bool)
    for polys, val in ((pos, True), (neg, False)):
        for p in polys:
            q = (np.asarray(p) - (x0, y0)) / d - 0.5
            rr, cc = draw_polygon(q[:, 1], q[:, 0], (h, w))
            out[rr, cc] = val
    return out


def assert_close_to_reference(got, ref, max_off=0.03):
    """Differences only on boundary pixels (within one pixel of an edge of the reference)."""
    assert got.shape == ref.shape
    diff = got != ref
    edge = ref ^ ndimage.binary_erosion(ref, border_value=0)
    edge = ndimage.binary_dilation(edge | (ref ^ ndimage.binary_dilation(ref)), iterations=1)
    assert not (diff & ~edge).any(), np.argwhere(diff & ~edge)[:5]
    assert diff.mean() <= max_off
    assert ref.sum() == 0 or abs(int(got.sum()) - int(ref.sum())) <= 0.1 * ref.sum()


POS = [TUMOR_A, TUMOR_B, TUMOR_C, TUMOR_D]
NEG = [HOLE_A]


def check_polygons(gt, pos=POS, neg=NEG):
    assert gt.has_tumor
    for (x0, y0, w, h, d) in [(0, 0, 128, 96, 32.0), (0, 0, 512, 384, 8.0), (700, 300, 300, 250, 4.0),
                              (123.5, 77.25, 200, 150, 12.5)]:
        got = gt.tumor_mask(x0, y0, w, h, d)
        assert got.dtype == bool and got.shape == (h, w)
        assert_close_to_reference(got, reference(pos, neg, x0, y0, w, h, d))
    # the hole is a hole, the overlap of B and C is tumor (no even-odd cancellation)
    m = gt.tumor_mask(0, 0, 512, 384, 8.0)
    assert not m[int(950 / 8), int(1000 / 8)]
    assert m[int(1550 / 8), int(3200 / 8)]
    assert m[int(600 / 8), int(600 / 8)]


# --- writers for each format ------------------------------------------------------------

def asap_xml(path: Path, groups: dict[str, list[np.ndarray]], decimal_comma: bool = False) -> Path:
    lines = ['<?xml version="1.0"?>', "<ASAP_Annotations>", "\t<Annotations>"]
    k = 0
    for group, polys in groups.items():
        for p in polys:
            lines.append(f'\t\t<Annotation Name="Annotation {k}" Type="Polygon" PartOfGroup="{group}" Color="#F4FA58">')
            lines.append("\t\t\t<Coordinates>")
            for i, (x, y) in enumerate(p):
                xs, ys = f"{x:.4f}", f"{y:.4f}"
                if decimal_comma:
                    xs, ys = xs.replace(".", ","), ys.replace(".", ",")
                lines.append(f'\t\t\t\t<Coordinate Order="{i}" X="{xs}" Y="{ys}" />')
            lines.append("\t\t\t</Coordinates>")
            lines.append("\t\t</Annotation>")
            k += 1
    lines += ["\t</Annotations>", "\t<AnnotationGroups>",
              '\t\t<Group Name="_0" PartOfGroup="None" Color="#FF0000"><Attributes /></Group>',
              "\t</AnnotationGroups>", "</ASAP_Annotations>"]
    path.write_text("\n".join(lines))
    return path


def camelyon_json(path: Path, pos, neg) -> Path:
    data = {"positive": [{"name": f"Annotation {i}", "vertices": p.tolist()} for i, p in enumerate(pos)],
            "negative": [{"name": f"Annotation {i}", "vertices": p.tolist()} for i, p in enumerate(neg)]}
    path.write_text(json.dumps(data))
    return path


def ring(p: np.ndarray) -> list:
    return p.tolist() + [p[0].tolist()]  # GeoJSON rings are closed


# --- formats -----------------------------------------------------------------------------

def test_asap_xml_groups_and_hole(tmp_path):
    path = asap_xml(tmp_path / "a.xml", {"_0": [TUMOR_A, TUMOR_D], "_1": [TUMOR_B], "Tumor": [TUMOR_C],
                                        "_2": [HOLE_A]})
    gt = load_ground_truth(path, SLIDE)
    assert isinstance(gt, PolygonGroundTruth) and len(gt.positive) == 4 and len(gt.negative) == 1
    check_polygons(gt)
    # Exclusion is a hole too; decimal commas are read
    path = asap_xml(tmp_path / "b.xml", {"Tumor": [TUMOR_A, TUMOR_B, TUMOR_C, TUMOR_D],
                                        "Exclusion": [HOLE_A]}, decimal_comma=True)
    check_polygons(load_ground_truth(path, SLIDE))


def test_camelyon_json(tmp_path):
    gt = load_ground_truth(camelyon_json(tmp_path / "t.json", POS, NEG), SLIDE)
    check_polygons(gt)
    assert gt.extent == SLIDE
    full = gt.full_mask(32.0)
    assert full.shape == (math.ceil(3072 / 32), math.ceil(4096 / 32))


def test_geojson_forms(tmp_path):
    # Feature with a Polygon whose interior ring is the hole
    feat_a = {"type": "Feature", "properties": {"classification": {"name": "Tumor"}},
              "geometry": {"type": "Polygon", "coordinates": [ring(TUMOR_A), ring(HOLE_A)]}}
    # MultiPolygon B + C + D
    feat_bcd = {"type": "Feature", "properties": {"objectType": "annotation"},
                "geometry": {"type": "MultiPolygon", "coordinates": [[ring(TUMOR_B)], [ring(TUMOR_C)],
                                                                     [ring(TUMOR_D)]]}}
    fc = {"type": "FeatureCollection", "features": [feat_a, feat_bcd]}
    (tmp_path / "fc.geojson").write_text(json.dumps(fc))
    check_polygons(load_ground_truth(tmp_path / "fc.geojson", SLIDE))
    # a bare list of features (older QuPath exports)
    (tmp_path / "list.json").write_text(json.dumps([feat_a, feat_bcd]))
    check_polygons(load_ground_truth(tmp_path / "list.json", SLIDE))
    # a single Feature; an 'Exclusion' feature is a hole
    single = {"type": "Feature", "geometry": {"type": "MultiPolygon", "coordinates": [
        [ring(TUMOR_A)], [ring(TUMOR_B)], [ring(TUMOR_C)], [ring(TUMOR_D)]]}}
    excl = {"type": "Feature", "properties": {"classification": {"name": "Exclusion"}},
            "geometry": {"type": "Polygon", "coordinates": [ring(HOLE_A)]}}
    (tmp_path / "single.geojson").write_text(json.dumps(single))
    gt = load_ground_truth(tmp_path / "single.geojson", SLIDE)
    assert len(gt.negative) == 0 and len(gt.positive) == 4
    (tmp_path / "excl.geojson").write_text(json.dumps({"type": "FeatureCollection", "features": [single, excl]}))
    check_polygons(load_ground_truth(tmp_path / "excl.geojson", SLIDE))


def reference_mask_image(scale: int) -> np.ndarray:
    """The POS/NEG polygons rendered (independently) at a downsample ``scale``."""
    W, H = SLIDE
    return reference(POS, NEG, 0, 0, W // scale, H // scale, float(scale))


@pytest.mark.parametrize("kind, value", [("png-level0", 255), ("png-level2", 1), ("png-level2", 255),
                                         ("tiff-pyramid", 1), ("tiff-level3-pyramid", 255),
                                         ("tiff-level3-pyramid", 1)])
def test_mask_images(tmp_path, kind, value):
    scale = {"png-level0": 1, "png-level2": 4, "tiff-pyramid": 1, "tiff-level3-pyramid": 8}[kind]
    m = reference_mask_image(scale).astype(np.uint8) * value
    if kind.startswith("png"):
        path = tmp_path / "mask.png"
        Image.fromarray(m).save(path)
    else:
        path = tmp_path / "mask.tif"
        write_mask_tiff(path, m, 4 if scale == 1 else 2, tile=256)
    gt = load_ground_truth(path, SLIDE)
    assert isinstance(gt, MaskGroundTruth)
    assert gt.scale == pytest.approx(scale)
    assert gt.has_tumor and gt.extent == SLIDE
    for (x0, y0, w, h, d) in [(0, 0, 256, 192, 16.0), (700, 300, 300, 250, 4.0), (2400, 1400, 100, 90, 12.0)]:
        got = gt.tumor_mask(x0, y0, w, h, d)
        ref = reference(POS, NEG, x0, y0, w, h, d)
        # masks are pooled with "any tumor pixel under the output pixel": boundary differences only
        assert_close_to_reference(got, ref, max_off=0.05)
        # never misses a tumor pixel centre away from the boundary
        assert not (ref & ~got & ~ndimage.binary_dilation(ref ^ ndimage.binary_erosion(ref), iterations=2)).any()


def test_mask_any_pooling_keeps_a_single_pixel(tmp_path):
    m = np.zeros((512, 768), np.uint8)
    m[301, 402] = 1
    path = tmp_path / "dot.tif"
    write_mask_tiff(path, m, 1, tile=256)
    gt = load_ground_truth(path, (768, 512))
    assert gt.has_tumor
    coarse = gt.tumor_mask(0, 0, 24, 16, 32.0)
    assert coarse.sum() == 1 and coarse[301 // 32, 402 // 32]
    empty = np.zeros((512, 768), np.uint8)
    write_mask_tiff(tmp_path / "empty.tif", empty, 2, tile=256)
    assert not load_ground_truth(tmp_path / "empty.tif", (768, 512)).has_tumor


def test_sniffing_by_content(tmp_path):
    xml = asap_xml(tmp_path / "x.xml", {"_0": [TUMOR_A]})
    (tmp_path / "xml_named.json").write_bytes(b"\xef\xbb\xbf" + xml.read_bytes())  # BOM too
    gt = load_ground_truth(tmp_path / "xml_named.json", SLIDE)
    assert isinstance(gt, PolygonGroundTruth) and len(gt.positive) == 1
    js = camelyon_json(tmp_path / "j.json", [TUMOR_B], [])
    (tmp_path / "json_named.xml").write_text("\n  " + js.read_text())
    assert len(load_ground_truth(tmp_path / "json_named.xml", SLIDE).positive) == 1
    m = reference_mask_image(8).astype(np.uint8)
    Image.fromarray(m * 255).save(tmp_path / "mask_named.xml", format="PNG")
    assert isinstance(load_ground_truth(tmp_path / "mask_named.xml", SLIDE), MaskGroundTruth)


def _bad(path, dims=SLIDE, match=None):
    with pytest.raises(WsiheatError) as exc:
        load_ground_truth(path, dims)
    msg = str(exc.value)
    assert "\n" not in msg and str(path) in msg
    if match:
        assert match in msg, msg
    return msg


def test_bad_inputs(tmp_path):
    _bad(tmp_path / "missing.xml", match="no such file")
    (tmp_path / "dir").mkdir()
    _bad(tmp_path / "dir", match="folder")
    # XML without any tumor polygon (two-vertex "polygon", holes only)
    asap_xml(tmp_path / "empty.xml", {"_0": [TUMOR_A[:2]], "_2": [HOLE_A]})
    _bad(tmp_path / "empty.xml", match="no valid tumor polygon")
    (tmp_path / "broken.xml").write_text("<ASAP_Annotations><Annotations>")
    _bad(tmp_path / "broken.xml", match="not valid XML")
    (tmp_path / "badcoord.xml").write_text(
        '<ASAP_Annotations><Annotations><Annotation PartOfGroup="_0"><Coordinates>'
        '<Coordinate X="a" Y="1"/><Coordinate X="2" Y="1"/><Coordinate X="2" Y="3"/>'
        "</Coordinates></Annotation></Annotations></ASAP_Annotations>")
    _bad(tmp_path / "badcoord.xml", match="numeric")
    (tmp_path / "other.json").write_text(json.dumps({"hello": 1}))
    _bad(tmp_path / "other.json", match="neither")
    (tmp_path / "broken.json").write_text('{"positive": [')
    _bad(tmp_path / "broken.json", match="not valid JSON")
    (tmp_path / "fc_empty.geojson").write_text(json.dumps({"type": "FeatureCollection", "features": []}))
    _bad(tmp_path / "fc_empty.geojson", match="no valid tumor polygon")
    (tmp_path / "notes.txt").write_text("tumor somewhere on the left\n")
    _bad(tmp_path / "notes.txt", match="unknown ground-truth format")
    # a mask not proportional to the slide
    Image.fromarray(np.zeros((100, 300), np.uint8)).save(tmp_path / "wrong.png")
    _bad(tmp_path / "wrong.png", match="not proportional")
    # polygons outside the slide
    camelyon_json(tmp_path / "outside.json", [TUMOR_A + (5000, 0)], [])
    _bad(tmp_path / "outside.json", match="outside the slide")
    camelyon_json(tmp_path / "negative.json", [TUMOR_A - (2000, 0)], [])
    _bad(tmp_path / "negative.json", match="outside the slide")


def test_polygons_without_slide_size():
    gt = PolygonGroundTruth([TUMOR_A], [])
    assert gt.extent == (1701, 1701)
    assert gt.has_tumor and not PolygonGroundTruth([], []).has_tumor


def test_tiny_polygon_marks_a_pixel():
    gt = PolygonGroundTruth([np.array([[100.2, 100.2], [101.0, 100.4], [100.5, 101.1]])], [])
    m = gt.tumor_mask(0, 0, 16, 16, 32.0)
    assert m.sum() >= 1 and m[3, 3]


# --- ASAP's AnnotationToMask convention (issue 20) ----------------------------------------

def asap_level0_reference(positive, negative, W, H):
    """Every level-0 pixel as ASAP's AnnotationToMask::convert writes it (annotation/AnnotationToMask.cpp,
    computationalpathologygroup/ASAP since 2016-02), transcribed literally but vectorized over pixels:
    the point (x, y) is tested, strictly inside the vertices' bounding box, wn_PnPoly != 0 with
    ASAP's isLeft (y axis reversed, float32, truncated to int); holes (label 0) drawn last."""
    f32 = np.float32
    yy, xx = np.mgrid[0:H, 0:W]
    px, py = xx.astype(f32), yy.astype(f32)
    out = np.zeros((H, W), np.uint8)
    for polys, label in ((positive, 1), (negative, 0)):
        for p in polys:
            V = np.asarray(p, np.float64).astype(f32)
            V = np.concatenate([V, V[:1]])  # coords.push_back(coords[0])
            tl, br = V.min(axis=0), V.max(axis=0)
            box = (px > tl[0]) & (px < br[0]) & (py > tl[1]) & (py < br[1])
            wn = np.zeros((H, W), np.int32)
            for k in range(len(V) - 1):
                P0, P1 = V[k], V[k + 1]
                is_left = ((P1[0] - P0[0]) * (P0[1] - py) - (px - P0[0]) * (P0[1] - P1[1])).astype(f32)
                il = np.trunc(is_left).astype(np.int64)  # static_cast<int>
                start_below = P0[1] <= py
                wn += start_below & (P1[1] > py) & (il > 0)
                wn -= ~start_below & (P1[1] <= py) & (il < 0)
            out[box & (wn != 0)] = label
    return out


def asap_stored_level(level0, level):
    """Level ``level`` of ASAP's pyramid (floor sizes, top-left nearest neighbour), padded to ceil sizes."""
    H, W = level0.shape
    d = 2 ** level
    out = np.zeros((-(-H // d), -(-W // d)), bool)
    out[:H // d, :W // d] = level0[::d, ::d][:H // d, :W // d] > 0
    return out


def test_polygon_level_mask_is_the_asap_mask_pyramid():
    W, H = 701, 613
    # a square on the level-5 grid: ASAP tests the pixel corners strictly inside the bounding
    # box, so only (64, 64) -- level-5 pixel (2, 2) -- is tumor (tumor_mask, which keeps the
    # pixels an outline touches, gives the 3 x 3 pixels the square's outline touches)
    square = np.array([[32, 32], [96, 32], [96, 96], [32, 96]], float)
    gt = PolygonGroundTruth([square], [], dimensions=(W, H))
    m = gt.level_mask(5)
    assert m.shape == (20, 22) and m.sum() == 1 and m[2, 2]
    assert gt.tumor_mask(0, 0, 22, 20, 32.0).sum() == 9
    # random polygons (self-intersecting ones, integer and grid vertices, holes) at several levels
    rng = np.random.default_rng(0)
    for t in range(12):
        pos = []
        for _ in range(3):
            n = int(rng.integers(3, 40))
            ang = np.sort(rng.uniform(0, 2 * np.pi, n)) if t % 2 else rng.uniform(0, 2 * np.pi, n)
            r = rng.uniform(5, 200, n)
            p = rng.uniform(50, 650, 2) + np.c_[np.cos(ang) * r, np.sin(ang) * r]
            pos.append(np.round(p) if t % 3 == 0 else np.round(p / 8) * 8 if t % 3 == 1 else p)
        neg = [pos[0].mean(0) + (pos[0] - pos[0].mean(0)) * 0.4]
        ref = asap_level0_reference(pos, neg, W, H)
        gt = PolygonGroundTruth(pos, neg, dimensions=(W, H))
        for level in (0, 2, 5):
            assert np.array_equal(gt.level_mask(level), asap_stored_level(ref, level)), (t, level)
    # a thin, nearly horizontal edge: ASAP's truncated cross product ignores a crossing for
    # points less than 1 / |dy| pixels to its right (here 1 / 0.25 = 4 px)
    sliver = np.array([[10.0, 10.0], [40.0, 10.0], [40.0, 30.0], [20.0, 30.0], [19.0, 29.75], [10.0, 29.75]])
    ref = asap_level0_reference([sliver], [], 50, 40)
    assert np.array_equal(PolygonGroundTruth([sliver], [], dimensions=(50, 40)).level_mask(0), ref > 0)


# --- real CAMELYON16 annotations ---------------------------------------------------------

def test_real_camelyon16_annotations(shared_data):
    d = shared_data / "camelyon16-annotations"
    gt = load_ground_truth(d / "Tumor_071.json")
    assert len(gt.positive) == 41 and gt.has_tumor
    W, H = gt.extent
    full = gt.full_mask(32.0)
    assert full.shape == (math.ceil(H / 32), math.ceil(W / 32))
    assert full.any()
    # independent check of the tumor area at level-5 scale
    ref = reference(gt.positive, gt.negative, 0, 0, full.shape[1], full.shape[0], 32.0)
    assert abs(int(full.sum()) - int(ref.sum())) <= 0.1 * max(ref.sum(), 10) + 50
    normal = load_ground_truth(d / "Normal_001.json")
    assert not normal.has_tumor
    assert not normal.tumor_mask(0, 0, 64, 64, 32.0).any()


# --- faults (issue 18, cases 5 and 7) ------------------------------------------------------

def _feature(coords, gtype="Polygon", props=None):
    return {"type": "Feature", "properties": props if props is not None else {"classification": {"name": "Tumor"}},
            "geometry": {"type": gtype, "coordinates": coords}}


def test_geojson_3d_positions_use_x_and_y(tmp_path):
    ring2 = ring(TUMOR_A)
    ring3 = [[x, y, 7.0] for x, y in ring2]
    for name, r in (("two.geojson", ring2), ("three.geojson", ring3)):
        (tmp_path / name).write_text(json.dumps({"type": "FeatureCollection", "features": [_feature([r])]}))
    two = load_ground_truth(tmp_path / "two.geojson", SLIDE)
    three = load_ground_truth(tmp_path / "three.geojson", SLIDE)
    assert len(three.positive) == 1 and np.array_equal(two.positive[0], three.positive[0])
    assert np.array_equal(two.tumor_mask(0, 0, 64, 64, 32.0), three.tumor_mask(0, 0, 64, 64, 32.0))


def test_nan_or_inf_vertex_is_an_error_naming_the_annotation(tmp_path):
    bad = TUMOR_A.astype(float).copy()
    bad[1, 0] = np.nan
    asap_xml(tmp_path / "nan.xml", {"_0": [TUMOR_B, bad]})
    msg = _bad(tmp_path / "nan.xml", match="not finite")
    assert "_0 2" in msg or "Annotation 1" in msg or "'" in msg
    (tmp_path / "nan.json").write_text(json.dumps({"positive": [{"name": "lesion-7", "vertices": ring(bad)}],
                                                   "negative": []}).replace("NaN", "NaN"))
    _bad(tmp_path / "nan.json", match="lesion-7")
    (tmp_path / "inf.geojson").write_text(json.dumps(_feature([[[0, 0], [10, float("inf")], [10, 10]]],
                                                              props={"name": "blob"})))
    _bad(tmp_path / "inf.geojson", match="not finite")


@pytest.mark.parametrize("name,data,needle", [
    ("geometry_string", {"type": "FeatureCollection", "features": [{"type": "Feature", "geometry": "Polygon"}]},
     "geometry"),
    ("properties_list", {"type": "FeatureCollection", "features": [_feature([[[0, 0], [9, 0], [9, 9]]],
                                                                             props=[1, 2])]}, "properties"),
    ("features_number", {"type": "FeatureCollection", "features": 5}, "features"),
    ("feature_string", {"type": "FeatureCollection", "features": ["tumor"]}, "feature 0"),
    ("coordinates_string", {"type": "FeatureCollection", "features": [_feature("0,0 9,0 9,9")]}, "coordinates"),
    ("coordinates_numbers", {"type": "FeatureCollection", "features": [_feature([0, 0, 9, 0, 9, 9])]},
     "coordinates"),
    ("ragged_ring", {"type": "FeatureCollection", "features": [_feature([[[0, 0], [9, 0], 9, [9, 9]]])]},
     "coordinates"),
    ("multipolygon_ragged", {"type": "FeatureCollection", "features": [
        _feature([[[[0, 0], [9, 0], [9, 9]]], [[0, 0], [5, 5]]], "MultiPolygon")]}, "coordinates"),
    ("text_vertex", {"type": "FeatureCollection", "features": [_feature([[[0, 0], ["9", 0], [9, 9]]])]},
     "coordinates"),
    ("positive_number", {"positive": 5, "negative": []}, "positive"),
    ("negative_string", {"positive": [{"name": "a", "vertices": [[0, 0], [9, 0], [9, 9]]}], "negative": "x"},
     "negative"),
    ("vertices_dict", {"positive": [{"name": "a", "vertices": {"x": 1}}]}, "vertices"),
])
def test_wrong_json_types_are_one_line_errors(tmp_path, name, data, needle):
    p = tmp_path / f"{name}.json"
    p.write_text(json.dumps(data))
    _bad(p, match=needle)


def test_json_nested_100k_deep_is_an_error(tmp_path):
    p = tmp_path / "deep.json"
    p.write_text('{"positive": ' + "[" * 100_000 + "]" * 100_000 + "}")
    _bad(p, match="deep")
    q = tmp_path / "deep_list.json"
    q.write_text("[" * 100_000 + "]" * 100_000)
    _bad(q, match="deep")
