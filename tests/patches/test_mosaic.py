"""Mosaic slides of real tissue: layout, pyramid, mask, XML, splits, CLI.

Uses the real IDC patches in ../shared/data/idc (skipped when absent), real
TIFF files written by the builder and read back through OpenSlide.
"""

from __future__ import annotations

import csv
import json
import xml.etree.ElementTree as ET
from pathlib import Path

import cv2
import numpy as np
import pytest
from _helpers import shared_path
from PIL import Image
from skimage.draw import polygon as draw_polygon

from wsiheat.cli.main import main as cli_main
from wsiheat.errors import WsiheatError
from wsiheat.patches.idc import list_patches, list_patients, split_patients
from wsiheat.patches.mosaic import build_mosaic, build_mosaic_set, read_layout
from wsiheat.patches.mosaic_layout import region_outlines
from wsiheat.wsi.pyramid import level_sizes
from wsiheat.wsi.slide import Slide

SHARED = Path(__file__).resolve().parents[2] / ".." / "shared" / "data"
IDC = SHARED / "idc"


@pytest.fixture(scope="module")
def idc() -> Path:
    return shared_path("idc")


@pytest.fixture(scope="module")
def patients(idc) -> list[str]:
    """A few patients with tumor patches, from the 'test' split of a fixed split."""
    test = split_patients(idc, {"train": 0.8, "test": 0.2}, seed=0)["test"]
    with_tumor = [p for p in test if list_patches(idc, [p])[1]]
    return with_tumor[:6]


@pytest.fixture(scope="module")
def built(idc, patients, tmp_path_factory) -> dict:
    """One lossless tumor slide at scale 1, one JPEG tumor slide at scale 1.6, one normal slide."""
    out = tmp_path_factory.mktemp("mosaic")
    lossless = build_mosaic(idc, patients, out / "lossless.tif", seed=11, grid=(24, 24),
                            n_islands=2, n_tumors=3, compression="deflate")
    scaled = build_mosaic(idc, patients, out / "scaled.tif", seed=12, grid=(20, 22),
                          n_islands=3, scale=1.6)
    normal = build_mosaic(idc, patients, out / "normal.tif", seed=13, grid=(20, 20),
                          tumor=False)
    return {"lossless": lossless, "scaled": scaled, "normal": normal, "dir": out}


def _read_level(path: Path, level: int) -> np.ndarray:
    with Slide(path) as s:
        w, h = s.level_dimensions[level]
        return s.read_region((0, 0), level, (w, h))


def _mask_from_layout(layout: dict) -> np.ndarray:
    """Expected level-0 mask, built from the layout record's list of placed patches."""
    w, h = layout["dimensions"]
    c = layout["cell_px"]
    m = np.zeros((h, w), np.uint8)
    for row, col, _patch, cls in layout["cells"]:
        if cls == 1:
            m[row * c:(row + 1) * c, col * c:(col + 1) * c] = 255
    return m


def _xml_polygons(path: Path) -> list[np.ndarray]:
    root = ET.parse(path).getroot()
    assert root.tag == "ASAP_Annotations"
    groups = [g.get("Name") for g in root.iter("Group")]
    assert groups == ["Tumor"]
    polys = []
    for ann in root.iter("Annotation"):
        assert ann.get("Type") == "Polygon" and ann.get("PartOfGroup") == "Tumor"
        coords = sorted(ann.iter("Coordinate"), key=lambda e: int(e.get("Order")))
        polys.append(np.array([[float(e.get("X")), float(e.get("Y"))] for e in coords]))
    return polys


def _rasterize(polys: list[np.ndarray], shape: tuple[int, int]) -> np.ndarray:
    """Pixel (i, j) is inside when its centre (j + 0.5, i + 0.5) is inside a polygon."""
    m = np.zeros(shape, np.uint8)
    for p in polys:
        rr, cc = draw_polygon(p[:, 1] - 0.5, p[:, 0] - 0.5, shape)
        m[rr, cc] = 255
    return m


# -- splits ----------------------------------------------------------------------------
def test_split_is_disjoint_complete_and_deterministic(idc):
    fr = {"train": 0.7, "val": 0.1, "test": 0.2}
    a = split_patients(idc, fr, seed=5)
    b = split_patients(idc, dict(fr), seed=5)
    assert a == b
    allp = list_patients(idc)
    seen = [p for v in a.values() for p in v]
    assert sorted(seen) == allp and len(seen) == len(set(seen))  # each patient exactly once
    assert abs(len(a["test"]) - 0.2 * len(allp)) <= 1
    c = split_patients(idc, fr, seed=6)
    assert c["test"] != a["test"]
    # a patient's patches are in one split only
    files = {k: {Path(f).name for cls in (0, 1) for f in list_patches(idc, v)[cls]} for k, v in a.items()}
    assert not files["train"] & files["test"] and not files["val"] & files["test"]


@pytest.mark.parametrize("fractions", [{"train": 0.8, "test": 0.3}, {"train": 1.2, "test": -0.2}, {}])
def test_split_rejects_bad_fractions(idc, fractions):
    with pytest.raises(WsiheatError, match="split fractions"):
        split_patients(idc, fractions, seed=0)


def test_mosaic_uses_only_given_patients(built, patients):
    for key in ("lossless", "scaled", "normal"):
        layout = read_layout(built[key].layout)
        assert layout["patients"] == sorted(patients)
        used = {p.split("/")[0] for p in layout["patches"]}
        assert used <= set(patients)
        for rel in layout["patches"]:
            pid, cls, name = rel.split("/")
            assert name.startswith(f"{pid}_") and name.endswith(f"_class{cls}.png")


# -- pyramid ---------------------------------------------------------------------------
def test_levels_readable_by_openslide(built):
    for key in ("lossless", "scaled", "normal"):
        info = built[key]
        layout = read_layout(info.layout)
        W, H = layout["dimensions"]
        rows, cols = layout["grid"]
        assert (W, H) == (cols * layout["cell_px"], rows * layout["cell_px"])
        for path in (info.slide, info.mask):
            with Slide(path) as s:
                assert s.is_openslide and s.properties["openslide.vendor"] == "generic-tiff"
                assert s.level_count > 1
                assert s.level_dimensions == tuple(level_sizes(W, H))
                assert min(s.level_dimensions[-1]) <= 256
                assert s.mpp == pytest.approx(layout["mpp"], rel=1e-6)
        with Slide(info.slide) as s:
            desc = json.loads(s.properties["openslide.comment"])
            assert desc["seed"] == info.seed and desc["patients"] == info.patients
    assert built["scaled"].cell_px == 80 and built["scaled"].mpp == pytest.approx(2.5)


def test_background_is_white_and_tissue_is_not(built):
    info = built["scaled"]
    layout = read_layout(info.layout)
    c = layout["cell_px"]
    rows, cols = layout["grid"]
    tissue = np.zeros((rows, cols), bool)
    for row, col, _p, _cls in layout["cells"]:
        tissue[row, col] = True
    rgb = _read_level(info.slide, 0)
    for level in range(2):
        img = _read_level(info.slide, level) if level else rgb
        d = 2 ** level
        for r, cc in zip(*np.nonzero(~_dilate_np(tissue))):  # background cells away from tissue
            y, x = r * c // d, cc * c // d
            block = img[y:y + c // d, x:x + c // d]
            assert block.min() >= 250, (level, r, cc)
    # tissue cells are not blank
    means = [rgb[r * c:(r + 1) * c, col * c:(col + 1) * c].mean() for r, col in zip(*np.nonzero(tissue))]
    assert np.median(means) < 235


def _dilate_np(m: np.ndarray) -> np.ndarray:
    return cv2.dilate(m.astype(np.uint8), np.ones((3, 3), np.uint8)).astype(bool)


def test_placed_patch_pixels_equal_source_png(built, idc):
    info = built["lossless"]
    layout = read_layout(info.layout)
    c = layout["cell_px"]
    assert c == 50
    rgb = _read_level(info.slide, 0)
    checked = 0
    for row, col, k, _cls in layout["cells"]:
        src = np.asarray(Image.open(idc / layout["patches"][k]).convert("RGB"))
        if src.shape != (50, 50, 3):
            continue
        np.testing.assert_array_equal(rgb[row * c:(row + 1) * c, col * c:(col + 1) * c], src)
        checked += 1
    assert checked > 100


# -- ground truth ------------------------------------------------------------------------
def test_mask_matches_placed_patches(built):
    for key in ("lossless", "scaled"):
        info = built[key]
        layout = read_layout(info.layout)
        mask = _read_level(info.mask, 0)
        assert (mask[..., 0] == mask[..., 1]).all() and (mask[..., 0] == mask[..., 2]).all()
        expected = _mask_from_layout(layout)
        np.testing.assert_array_equal(mask[..., 0], expected)
        # the patch placed in each cell is of the cell's class (tumor cells hold class-1 patches)
        for _row, _col, k, cls in layout["cells"]:
            assert layout["patches"][k].split("/")[1] == str(cls)
        assert info.tumor and info.tumor_area_px == int((expected == 255).sum())
        # coarse levels stay binary: each level pixel takes the level-0 pixel under its centre
        for level in range(1, 3):
            d = 2 ** level
            coarse = _read_level(info.mask, level)[..., 0]
            assert set(np.unique(coarse)) <= {0, 255}
            np.testing.assert_array_equal(coarse, expected[d // 2::d, d // 2::d][:coarse.shape[0], :coarse.shape[1]])


def test_tumor_regions_have_several_sizes_and_sit_in_normal_tissue(built):
    layout = read_layout(built["lossless"].layout)
    rows, cols = layout["grid"]
    grid = np.zeros((rows, cols), np.int8)  # 0 background, 1 normal, 2 tumor
    for row, col, _p, cls in layout["cells"]:
        grid[row, col] = 1 + cls
    tumor = grid == 2
    n, labels = cv2.connectedComponents(tumor.astype(np.uint8), connectivity=8)
    assert n - 1 == len(layout["tumors"]) == 3
    sizes = {int((labels == i).sum()) for i in range(1, n)}
    assert len(sizes) >= 2
    ring = _dilate_np(tumor) & ~tumor
    assert (grid[ring] == 1).all()  # every tumor region is surrounded by normal tissue


def test_xml_polygons_rasterize_to_mask(built):
    for key in ("lossless", "scaled"):
        info = built[key]
        mask = _read_level(info.mask, 0)[..., 0]
        polys = _xml_polygons(info.xml)
        assert len(polys) == info.n_tumor_regions >= 1
        c = info.cell_px
        for p in polys:
            assert (p % c == 0).all()  # vertices on cell corners
        np.testing.assert_array_equal(_rasterize(polys, mask.shape), mask)


def test_region_outlines_of_irregular_shapes():
    grid = np.zeros((8, 9), bool)
    grid[1:4, 1] = True
    grid[3, 1:4] = True          # an L
    grid[5:8, 6] = True
    grid[6, 5:8] = True          # a cross
    outlines = region_outlines(grid)
    assert sorted(len(o) for o in outlines) == [6, 12]
    raster = _rasterize([np.array(o, float) for o in outlines], grid.shape)
    np.testing.assert_array_equal(raster == 255, grid)


def test_normal_slide_has_no_tumor(built):
    info = built["normal"]
    layout = read_layout(info.layout)
    assert not info.tumor and info.n_tumor_regions == 0
    assert all(cls == 0 for *_rest, cls in layout["cells"])
    assert all(p.split("/")[1] == "0" for p in layout["patches"])
    for level in range(2):
        assert _read_level(info.mask, level).max() == 0
    assert _xml_polygons(info.xml) == []


def test_same_seed_same_files(built, idc, patients, tmp_path):
    again = build_mosaic(idc, list(reversed(patients)), tmp_path / "lossless.tif", seed=11,
                         grid=(24, 24), n_islands=2, n_tumors=3, compression="deflate")
    ref = built["lossless"]
    for a, b in ((again.slide, ref.slide), (again.mask, ref.mask), (again.xml, ref.xml)):
        assert a.read_bytes() == b.read_bytes()
    other = build_mosaic(idc, patients, tmp_path / "other.tif", seed=99, grid=(24, 24),
                         n_islands=2, n_tumors=3, compression="deflate")
    assert read_layout(other.layout)["cells"] != read_layout(ref.layout)["cells"]


def test_tumor_slide_needs_tumor_patches(idc, tmp_path):
    no_tumor = [p for p in list_patients(idc) if not list_patches(idc, [p])[1]]
    if not no_tumor:
        pytest.skip("every patient has tumor patches")
    with pytest.raises(WsiheatError, match="no class-1"):
        build_mosaic(idc, no_tumor[:1], tmp_path / "x.tif", seed=0, grid=(12, 12))
    assert not list(tmp_path.iterdir())


# -- set and CLI -------------------------------------------------------------------------
def test_build_mosaic_set_manifest_and_labels(idc, patients, tmp_path):
    infos = build_mosaic_set(idc, tmp_path / "set", patients, n_slides=3, n_normal=1, seed=4,
                             split="test", grid=(14, 14), n_islands=1, progress=False)
    out = tmp_path / "set"
    rows = list(csv.DictReader(open(out / "manifest.csv")))
    assert [r["slide"] for r in rows] == [i.slide.name for i in infos]
    assert all(r["split"] == "test" for r in rows)
    for r, info in zip(rows, infos):
        assert (out / r["slide"]).exists() and (out / r["mask"]).exists()
        if info.tumor:
            assert r["ground_truth"] == info.xml.name and (out / r["ground_truth"]).exists()
        else:
            assert r["ground_truth"] == ""
    labels = {r["slide"]: r["label"] for r in csv.DictReader(open(out / "labels.csv"))}
    assert labels == {i.name: str(int(i.tumor)) for i in infos}
    assert sorted(labels.values()) == ["0", "1", "1"]
    assert len({i.seed for i in infos}) == 3


def test_cli_mosaic(idc, tmp_path, capsys):
    out = tmp_path / "cli"
    with pytest.raises(SystemExit) as ei:
        cli_main(["mosaic", str(idc), "-o", str(out), "--slides", "2", "--normal", "1",
                  "--split", "test", "--seed", "2", "--grid", "12x12", "--islands", "1",
                  "--split-fractions", "train=0.9,test=0.1"])
    assert ei.value.code == 0
    printed = capsys.readouterr().out
    assert "test_tumor_001.tif" in printed and "test_normal_001.tif" in printed
    split = json.loads((out / "split.json").read_text())
    test_patients = split_patients(idc, {"train": 0.9, "test": 0.1}, seed=0)["test"]
    assert split["splits"]["test"] == test_patients
    for name in ("test_tumor_001", "test_normal_001"):
        layout = read_layout(out / f"{name}.json")
        assert {p.split("/")[0] for p in layout["patches"]} <= set(test_patients)
    # user mistakes: one line, exit 2
    with pytest.raises(SystemExit) as ei:
        cli_main(["mosaic", str(idc), "-o", str(out), "--split", "val"])
    assert ei.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("wsiheat: error:") and "'val'" in err and len(err.strip().splitlines()) == 1
    with pytest.raises(SystemExit) as ei:
        cli_main(["mosaic", str(tmp_path / "nope"), "-o", str(out)])
    assert ei.value.code == 2 and "no such folder" in capsys.readouterr().err


def test_cli_mosaic_from_a_models_validation_patients(idc, patients, tmp_path, capsys):
    """--val-patients-of: mosaics of exactly the patients `wsiheat train` held out for validation."""
    from wsiheat.models.model import read_metadata, save_model

    sub = tmp_path / "idc"
    sub.mkdir()
    for p in patients:
        (sub / p).symlink_to((idc / p).resolve())

    def run(argv):
        with pytest.raises(SystemExit) as ei:
            cli_main(argv)
        out, err = capsys.readouterr()
        return ei.value.code, out, err

    code, _, err = run(["import", str(sub), "-o", str(tmp_path / "p.h5"), "--window", "32"])
    assert code == 0, err
    code, _, err = run(["train", str(tmp_path / "p.h5"), "-o", str(tmp_path / "m.keras"), "--weights", "none",
                        "--backbone", "tiny", "--epochs", "1", "--steps-per-epoch", "1", "--batch-size", "8",
                        "--val-fraction", "0.34", "--seed", "0"])
    assert code == 0, err
    val = read_metadata(tmp_path / "m.keras")["training_data"]["val_slides"]
    assert val and set(val) < set(patients)
    out = tmp_path / "mos"
    code, _, err = run(["mosaic", str(sub), "-o", str(out), "--val-patients-of", str(tmp_path / "m.keras"),
                        "--slides", "2", "--normal", "1", "--grid", "12x12", "--islands", "1"])
    assert code == 0, err
    split = json.loads((out / "split.json").read_text())
    assert split["patients"] == sorted(val) and split["split"] == "val"
    for name in ("val_tumor_001", "val_normal_001"):
        assert {p.split("/")[0] for p in read_layout(out / f"{name}.json")["patches"]} <= set(val)
    # user mistakes: both ways of naming patients; a model without recorded validation slides
    code, _, err = run(["mosaic", str(sub), "-o", str(out), "--val-patients-of", str(tmp_path / "m.keras"),
                        "--patients", patients[0]])
    assert code == 2 and "not both" in err
    import keras
    inp = keras.Input((1,))
    save_model(keras.Model(inp, keras.layers.Dense(1)(inp)), tmp_path / "bare.keras",
               {"window": 32, "center": 32, "stride": 32, "downsamples": [1.0], "towers": 1})
    code, _, err = run(["mosaic", str(sub), "-o", str(out), "--val-patients-of", str(tmp_path / "bare.keras")])
    assert code == 2 and "bare.keras" in err and "no validation slides" in err and len(err.strip().splitlines()) == 1
