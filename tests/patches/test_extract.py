"""Sampler, HDF5 store and ``wsiheat extract`` on small pyramidal TIFFs read through OpenSlide."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import cv2
import h5py
import numpy as np
import openslide
import pytest
import tifffile
from _helpers import damaged_copy, file_digest, run_wsiheat, shared_path, start_paused

from wsiheat.errors import WsiheatError
from wsiheat.patches.extract import extract_to_file
from wsiheat.patches.sampling import Grid, WindowSpec, plan_windows, tumor_labels, window_origin
from wsiheat.patches.store import ShardWriter, merge_into, open_patches
from wsiheat.wsi.annotations.groundtruth import load_ground_truth
from wsiheat.wsi.slide import Slide

REPO = Path(__file__).resolve().parents[2]


# --- fixtures -------------------------------------------------------------------------

def write_pyramid(path: Path, level0: np.ndarray, n_levels: int = 3, tile: int = 128,
                  compression: str | None = "zlib") -> list[np.ndarray]:
    """Multi-page tiled TIFF (OpenSlide generic-tiff), each level half the previous."""
    levels = [level0]
    for _ in range(n_levels - 1):
        prev = levels[-1]
        levels.append(cv2.resize(prev, (prev.shape[1] // 2, prev.shape[0] // 2), interpolation=cv2.INTER_AREA))
    with tifffile.TiffWriter(path) as tw:
        for i, lv in enumerate(levels):
            tw.write(lv, tile=(tile, tile), photometric="rgb", compression=compression,
                     subfiletype=1 if i else 0)
    return levels


def tissue_image(size: int, seed: int = 0) -> np.ndarray:
    """White background with a large noisy pink 'tissue' ellipse."""
    rng = np.random.default_rng(seed)
    img = np.full((size, size, 3), 255, np.uint8)
    yy, xx = np.ogrid[:size, :size]
    inside = ((xx - size * 0.5) / (size * 0.38)) ** 2 + ((yy - size * 0.5) / (size * 0.33)) ** 2 <= 1
    t = min(size, 512)
    noise = rng.integers(-25, 26, size=(t, t, 3))
    pink = np.clip(np.array([205, 120, 170]) + noise, 0, 255).astype(np.uint8)
    pink = np.tile(pink, (size // t, size // t, 1))
    img[inside] = pink[inside]
    return img


@pytest.fixture(scope="module")
def slide1k(tmp_path_factory):
    """1024 x 1024 slide, levels at downsample 1, 2, 4, with a dark 8x8 marker centred on (550, 550)."""
    d = tmp_path_factory.mktemp("slides")
    img = tissue_image(1024)
    img[546:554, 546:554] = (20, 20, 90)
    path = d / "slide_a.tif"
    levels = write_pyramid(path, img)
    return path, levels


@pytest.fixture(scope="module")
def slide_b(tmp_path_factory):
    d = tmp_path_factory.mktemp("slides_b")
    path = d / "slide_b.tif"
    write_pyramid(path, tissue_image(1024, seed=1))
    return path


def edge_mask(size: int = 1024) -> np.ndarray:
    """Level-0 tumor pixels placed at the edges of central boxes (C=40, S=50, d0=2 -> cell 100 px).

    Cell (r, c)'s central box is level-0 [100c+10, 100c+90) x [100r+10, 100r+90).
    """
    m = np.zeros((size, size), np.uint8)
    m[350, 489] = 255   # cell (3, 4): last column inside
    m[610, 210] = 255   # cell (6, 2): first row and column inside
    m[850, 290] = 255   # x just outside cell (8, 2)'s box (and not in (8, 3)'s)
    m[209, 750] = 255   # y just outside cell (2, 7)'s box
    m[690, 950] = 255   # y just outside cell (6, 9)'s box (bottom)
    return m


@pytest.fixture(scope="module")
def mask_png(tmp_path_factory):
    p = tmp_path_factory.mktemp("masks") / "slide_a_mask.png"
    cv2.imwrite(str(p), edge_mask())
    return p


run_cli = run_wsiheat
digest = file_digest


def assert_one_line_error(res, *needles):
    assert res.returncode == 2, (res.returncode, res.stdout, res.stderr)
    lines = [l for l in res.stderr.splitlines() if l.strip()]
    assert len(lines) == 1, res.stderr
    assert "Traceback" not in res.stderr
    assert lines[0].startswith("wsiheat: error:")
    for n in needles:
        assert n in lines[0], lines[0]


# --- the test fixture really is a pyramid ------------------------------------------------

def test_fixture_levels_read_by_openslide(slide1k):
    path, levels = slide1k
    s = openslide.OpenSlide(str(path))
    assert s.level_dimensions == ((1024, 1024), (512, 512), (256, 256))
    assert s.level_downsamples == (1.0, 2.0, 4.0)
    got = np.asarray(s.read_region((400, 400), 2, (32, 32)))[..., :3]
    assert np.array_equal(got, levels[2][100:132, 100:132])


# --- label rule ---------------------------------------------------------------------------

def test_label_rule_edges_center_smaller_than_stride(slide1k, mask_png):
    spec = WindowSpec((2.0, 4.0), window=80, center=40, stride=50)
    grid = Grid.for_slide((1024, 1024), spec)
    gt = load_ground_truth(mask_png, (1024, 1024))
    rows, cols = grid.all_cells()
    lab = tumor_labels(grid, gt, rows, cols).reshape(grid.n_rows, grid.n_cols)
    assert sorted(zip(*np.nonzero(lab))) == [(3, 4), (6, 2)]


def test_label_rule_edges_default_center(tmp_path):
    # C = S = 50, d0 = 2: cell c's central box is level-0 [100c, 100c+100)
    m = np.zeros((1024, 1024), np.uint8)
    m[450, 499] = 1   # last pixel of cell (4, 4); value 1 counts as tumor too
    m[750, 500] = 1   # first pixel of cell (7, 5)
    p = tmp_path / "m.png"
    cv2.imwrite(str(p), m)
    spec = WindowSpec((2.0, 4.0))
    grid = Grid.for_slide((1024, 1024), spec)
    rows, cols = grid.all_cells()
    lab = tumor_labels(grid, load_ground_truth(p, (1024, 1024)), rows, cols).reshape(grid.n_rows, grid.n_cols)
    assert sorted(zip(*np.nonzero(lab))) == [(4, 4), (7, 5)]
    # moving each pixel one to the right moves only the second one into no other cell
    m2 = np.zeros_like(m)
    m2[450, 500] = 1
    cv2.imwrite(str(p), m2)
    lab2 = tumor_labels(grid, load_ground_truth(p, (1024, 1024)), rows, cols).reshape(grid.n_rows, grid.n_cols)
    assert sorted(zip(*np.nonzero(lab2))) == [(4, 5)]


def test_grid_counts_cells_from_mpp_ratios_without_a_rounding_sliver():
    # a 224 px model trained at 0.892857 µm/px on a 0.668896 µm/px slide: cells of 299 level-0 px,
    # computed as 224 * 1.3348214285714284 = 298.99999999999994; 7176 = 24 * 299 px is 24 cells
    d = 0.8928571428571428 / 0.6688963210702341
    spec = WindowSpec((d,), window=224, center=224, stride=224)
    assert spec.cell0 < 299
    assert (Grid.for_slide((7176, 7176), spec).n_cols, Grid.for_slide((7176, 7176), spec).n_rows) == (24, 24)
    assert Grid.for_slide((7177, 7176), spec).n_cols == 25  # one real pixel more is a partial cell
    assert Grid.for_slide((7175, 7176), spec).n_cols == 24


def test_polygon_ground_truth_labels_match_mask_rule(slide1k):
    from wsiheat.wsi.annotations.groundtruth import PolygonGroundTruth
    spec = WindowSpec((2.0, 4.0), center=50, stride=50)
    grid = Grid.for_slide((1024, 1024), spec)
    # square covering level-0 [300, 420) x [300, 420): cells 3 and 4 in both axes
    gt = PolygonGroundTruth([[[300, 300], [420, 300], [420, 420], [300, 420]]], [], dimensions=(1024, 1024))
    rows, cols = grid.all_cells()
    lab = tumor_labels(grid, gt, rows, cols).reshape(grid.n_rows, grid.n_cols)
    assert sorted(zip(*np.nonzero(lab))) == [(3, 3), (3, 4), (4, 3), (4, 4)]


# --- extraction geometry through the CLI ----------------------------------------------------

@pytest.fixture(scope="module")
def extracted(slide1k, mask_png, tmp_path_factory):
    out = tmp_path_factory.mktemp("out") / "patches.h5"
    res = run_cli("extract", slide1k[0], mask_png, "-o", out, "--levels", "1", "2", "--center", "40",
                  "--normal-ratio", "3", "-q")
    assert res.returncode == 0, res.stderr
    return out, res


def test_extract_labels_and_summary(extracted):
    out, res = extracted
    assert "windows scanned" in res.stdout and "kept 2 tumor + 6 normal" in res.stdout, res.stdout
    with open_patches(out) as pf:
        assert pf.n == 8 and pf.towers == 2 and pf.window == 80
        assert pf.levels == [1, 2] and pf.downsamples == [2.0, 4.0]
        tumor_centers = sorted(map(tuple, pf.centers[pf.labels == 1].tolist()))
        assert tumor_centers == [(250, 650), (450, 350)]
        assert pf.params["center"] == 40 and pf.params["normal_ratio"] == 3
        assert pf.slides == ["slide_a"]
        info = pf.slide_info[0]
        assert info["kept_tumor"] == 2 and info["kept_normal"] == 6 and info["dimensions"] == [1024, 1024]
    with h5py.File(out, "r") as f:  # the raw contract
        assert f.attrs["format"] == "wsiheat-patches" and int(f.attrs["schema_version"]) == 1
        assert f["images"].dtype == np.uint8 and f["images"].chunks[0] == 64
        assert f["centers"].dtype == np.int64 and f["slide_ids"].dtype == np.int32
        assert json.loads(f.attrs["params"])["levels"] == [1, 2]


def test_windows_match_levels_downsample_2_and_4(slide1k, extracted):
    _, levels = slide1k
    out, _ = extracted
    with open_patches(out) as pf:
        imgs = pf.read(0, pf.n)
        centers = pf.centers
    W = 80
    for t, (d, lv) in enumerate(((2, levels[1]), (4, levels[2]))):
        padded = np.pad(lv, ((W, W), (W, W), (0, 0)), constant_values=255)
        org = window_origin(centers, d, W)
        for k in range(len(centers)):
            x, y = org[k] + W
            assert np.array_equal(imgs[k, t], padded[y:y + W, x:x + W]), (t, k)


def test_two_towers_centered_on_same_level0_point(slide1k, tmp_path):
    spec = WindowSpec((2.0, 4.0), levels=(1, 2))
    from wsiheat.patches.sampling import read_windows
    with Slide(slide1k[0]) as s:
        # cell (5, 5) is centred on level-0 (550, 550), where the marker is
        centers = Grid.for_slide(s.dimensions, spec).centers(np.array([5]), np.array([5]))
        assert centers.tolist() == [[550.0, 550.0]]
        win = read_windows(s, spec, centers)[0]
    for t, d in enumerate(spec.downsamples):
        # the marker's centre inside the window, in pixel-index coordinates
        expected = 550 / d - window_origin(centers, d, 80)[0] - 0.5
        assert np.all(np.abs(expected - 39.5) <= 0.5)  # within half a pixel of the window centre
        w = np.clip(400 - win[t].astype(float).sum(axis=2), 0, None)  # darkness (pink tissue sums > 400)
        yy, xx = np.mgrid[:80, :80]
        cx, cy = (w * xx).sum() / w.sum(), (w * yy).sum() / w.sum()
        assert abs(cx - expected[0]) <= 0.25 and abs(cy - expected[1]) <= 0.25, (t, cx, cy, expected)


# --- class balance -------------------------------------------------------------------------

def test_class_balance_rule(slide1k, mask_png):
    spec = WindowSpec((2.0, 4.0), levels=(1, 2), center=40)
    with Slide(slide1k[0]) as s:
        gt = load_ground_truth(mask_png, s.dimensions)
        full = plan_windows(s, spec, gt, normal_ratio=1.0, seed=0)
        st = full.stats
        assert st["kept_tumor"] == st["tumor"] == 2 == int(full.labels.sum())
        assert st["kept_normal"] == 2 and st["normal_available"] > 10
        ratio = plan_windows(s, spec, gt, normal_ratio=4.5, seed=0)
        assert ratio.stats["kept_normal"] == 9  # round(4.5 * 2)
        huge = plan_windows(s, spec, gt, normal_ratio=1000, seed=0)
        assert huge.stats["kept_normal"] == st["normal_available"]
        # tumor windows kept whatever their tissue fraction: threshold 1.0 on tissue edges
        strict = plan_windows(s, spec, gt, tissue_threshold=1.0, normal_ratio=0)
        assert strict.stats["kept_tumor"] == 2 and strict.stats["kept_normal"] == 0
        # a slide without ground truth: at most max_normal normal windows, all on tissue
        normal = plan_windows(s, spec, None, max_normal=7, seed=3)
        assert normal.stats["kept_normal"] == 7 and normal.labels.sum() == 0
        allnormal = plan_windows(s, spec, None, max_normal=None)
        assert allnormal.stats["kept_normal"] == allnormal.stats["on_tissue"]
        # deterministic given the seed; another seed draws other windows
        again = plan_windows(s, spec, None, max_normal=7, seed=3)
        other = plan_windows(s, spec, None, max_normal=7, seed=4)
        assert np.array_equal(normal.centers0, again.centers0)
        assert not np.array_equal(np.sort(normal.centers0, axis=0), np.sort(other.centers0, axis=0))
        # kept normal windows reach the tissue threshold
        from wsiheat.wsi.tissue import tissue_mask
        tm = tissue_mask(s)
        g = Grid.for_slide(s.dimensions, spec)
        cols = (normal.centers0[:, 0] / g.spec.cell0 - 0.5).round().astype(int)
        rows = (normal.centers0[:, 1] / g.spec.cell0 - 0.5).round().astype(int)
        assert (tm.fraction_in_boxes(*g.boxes(rows, cols, 80)) >= 0.75).all()


# --- append, refusal, replace, atomicity -------------------------------------------------------

def test_append_refuse_replace(slide1k, slide_b, tmp_path):
    out = tmp_path / "p.h5"
    r1 = run_cli("extract", slide1k[0], "-o", out, "--levels", "1", "2", "--max-normal", "5", "-q")
    assert r1.returncode == 0, r1.stderr
    r2 = run_cli("extract", slide_b, "-o", out, "--levels", "1", "2", "--max-normal", "4", "-q")
    assert r2.returncode == 0, r2.stderr
    with open_patches(out) as pf:
        assert pf.slides == ["slide_a", "slide_b"] and pf.n == 9
        assert np.bincount(pf.slide_ids).tolist() == [5, 4]
        b_rows = pf.read_rows(pf.rows_of_slide("slide_b"))
    before = digest(out)
    r3 = run_cli("extract", slide1k[0], "-o", out, "--levels", "1", "2", "--max-normal", "5", "-q")
    assert_one_line_error(r3, str(out), "slide_a", "already", "--replace")
    assert digest(out) == before
    r4 = run_cli("extract", slide1k[0], "-o", out, "--levels", "1", "2", "--max-normal", "3", "--replace", "-q")
    assert r4.returncode == 0, r4.stderr
    assert "(replaced)" in r4.stdout
    with open_patches(out) as pf:
        assert sorted(pf.slides) == ["slide_a", "slide_b"] and pf.n == 7
        counts = {pf.slides[i]: int(c) for i, c in enumerate(np.bincount(pf.slide_ids))}
        assert counts == {"slide_a": 3, "slide_b": 4}
        assert np.array_equal(pf.read_rows(pf.rows_of_slide("slide_b")), b_rows)
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temporary files left


def test_differing_parameters_refused(slide1k, slide_b, tmp_path):
    out = tmp_path / "p.h5"
    assert run_cli("extract", slide1k[0], "-o", out, "--levels", "1", "2", "--max-normal", "2", "-q").returncode == 0
    before = digest(out)
    res = run_cli("extract", slide_b, "-o", out, "--levels", "1", "2", "--stride", "40", "-q")
    assert_one_line_error(res, str(out), "parameters differ", "stride")
    res = run_cli("extract", slide_b, "-o", out, "--levels", "0", "2", "-q")
    assert_one_line_error(res, str(out), "levels")
    assert digest(out) == before


def test_merge_refuses_other_schema_and_foreign_hdf5(tmp_path):
    attrs = {"window": 8, "center": 4, "stride": 4, "downsamples": [1.0], "tissue_threshold": 0.75}
    shard = tmp_path / "s.h5"
    with ShardWriter(shard, attrs) as w:
        sid = w.add_slide("x", {})
        w.append(np.zeros((3, 1, 8, 8, 3), np.uint8), [0, 1, 0], [[1, 2], [3, 4], [5, 6]], sid)
    foreign = tmp_path / "foreign.h5"
    with h5py.File(foreign, "w") as f:
        f["data"] = np.arange(3)
    before = digest(foreign)
    with pytest.raises(WsiheatError, match="not a wsiheat patches file"):
        merge_into(foreign, [shard])
    assert digest(foreign) == before
    other = tmp_path / "v2.h5"
    merge_into(other, [shard])
    with h5py.File(other, "r+") as f:
        f.attrs["schema_version"] = 2
    before = digest(other)
    with pytest.raises(WsiheatError, match="schema_version 2"):
        merge_into(other, [shard])
    assert digest(other) == before


def corrupt_tile(path: Path, page: int, frac_x: float, frac_y: float) -> None:
    """Overwrite one tile's compressed bytes with garbage (the decoder will fail on it)."""
    with tifffile.TiffFile(path) as tf:
        p = tf.pages[page]
        tiles_across = -(-p.imagewidth // p.tilewidth)
        tiles_down = -(-p.imagelength // p.tilelength)
        i = int(frac_y * tiles_down) * tiles_across + int(frac_x * tiles_across)
        off, n = p.dataoffsets[i], p.databytecounts[i]
    with open(path, "r+b") as fh:
        fh.seek(off)
        fh.write(bytes(np.random.default_rng(0).integers(0, 256, n, dtype=np.uint8)))


def test_failure_mid_slide_leaves_file_identical(slide1k, tmp_path):
    out = tmp_path / "p.h5"
    assert run_cli("extract", slide1k[0], "-o", out, "--levels", "1", "2", "--max-normal", "4", "-q").returncode == 0
    before = digest(out)
    big = tmp_path / "broken.tif"
    write_pyramid(big, tissue_image(2048, seed=5))
    corrupt_tile(big, page=1, frac_x=0.6, frac_y=0.75)  # level 1, lower part: read late
    appended = []
    orig = ShardWriter.append

    def counting_append(self, images, *a, **k):
        appended.append(len(images))
        return orig(self, images, *a, **k)

    ShardWriter.append = counting_append
    try:
        with pytest.raises(WsiheatError, match="broken.tif"):
            extract_to_file(big, None, out, levels=(1, 2), max_normal=None, progress=False, batch=64)
    finally:
        ShardWriter.append = orig
    assert sum(appended) > 0  # it failed mid-slide, after writing some rows
    assert digest(out) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["broken.tif", "p.h5"]


def _extract_args(slide, out):
    return ("extract", slide, "-o", out, "--levels", "0", "1", "--max-normal", "0", "-q")


@pytest.mark.parametrize("point", ["shard-append", "before-commit"])
def test_sigint_mid_slide_leaves_file_identical(slide1k, slide_b, tmp_path, point):
    """Deterministic: the writer is held by the test hook mid-slide (a row batch in the shard) or with the
    merged file complete but not yet renamed; SIGINT there leaves the file byte-identical, nothing behind."""
    out = tmp_path / "p.h5"
    assert run_cli("extract", slide1k[0], "-o", out, "--levels", "0", "1", "--max-normal", "4", "-q").returncode == 0
    before = digest(out)
    proc = start_paused(_extract_args(slide_b, out), tmp_path, point)
    proc.send_signal(signal.SIGINT)
    try:
        _, err = proc.communicate(timeout=300)
    finally:  # never leave a writer behind when the test fails
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130, err
    assert "Traceback" not in err and "interrupted" in err and "completed" not in err
    assert digest(out) == before
    assert sorted(p.name for p in tmp_path.iterdir() if p.name != "hooks") == ["p.h5"]


def test_sigint_after_commit_says_completed(slide1k, slide_b, tmp_path):
    """SIGINT once the append is committed: the message says it completed (exit 0), the rows are there."""
    out = tmp_path / "p.h5"
    assert run_cli("extract", slide1k[0], "-o", out, "--levels", "0", "1", "--max-normal", "4", "-q").returncode == 0
    proc = start_paused(_extract_args(slide_b, out), tmp_path, "after-commit")
    proc.send_signal(signal.SIGINT)
    try:
        _, err = proc.communicate(timeout=300)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, err
    assert "Traceback" not in err and "completed" in err and "p.h5" in err
    with open_patches(out) as pf:
        assert pf.slides == ["slide_a", "slide_b"]
    assert sorted(p.name for p in tmp_path.iterdir() if p.name != "hooks") == ["p.h5"]


# --- bad inputs through the CLI ---------------------------------------------------------------

@pytest.fixture(scope="module")
def existing_output(slide1k, tmp_path_factory):
    out = tmp_path_factory.mktemp("existing") / "p.h5"
    assert run_cli("extract", slide1k[0], "-o", out, "--levels", "1", "2", "--max-normal", "2", "-q").returncode == 0
    return out


def _bad_cases(tmp: Path, slide: Path, existing: Path):
    notslide = tmp / "notes.svs"
    notslide.write_text("just some text\n")
    small = tmp / "wrong_size_mask.png"
    cv2.imwrite(str(small), np.zeros((300, 500), np.uint8))
    nopoly = tmp / "nopoly.json"
    nopoly.write_text(json.dumps({"positive": [{"name": "a", "vertices": [[1, 2], [3, 4]]}], "negative": []}))
    unknown = tmp / "unknown.dat"
    unknown.write_bytes(bytes(range(256)) * 8)
    foreign = tmp / "foreign.h5"
    with h5py.File(foreign, "w") as f:
        f["x"] = np.arange(4)
    text_out = tmp / "text.h5"
    text_out.write_text("not hdf5")
    lv = ("--levels", "1", "2")
    return [
        ("missing slide", (tmp / "nope.svs", "-o", tmp / "o1.h5", *lv), ["nope.svs", "no such file"], None),
        ("missing ground truth", (slide, tmp / "nope.xml", "-o", tmp / "o2.h5", *lv), ["nope.xml", "no such file"], None),
        ("not a slide", (notslide, "-o", tmp / "o3.h5", *lv), ["notes.svs", "not a slide"], None),
        ("mask not proportional", (slide, small, "-o", tmp / "o4.h5", *lv), ["wrong_size_mask.png", "not proportional"], None),
        ("no valid polygon", (slide, nopoly, "-o", tmp / "o5.h5", *lv), ["nopoly.json", "no valid tumor polygon"], None),
        ("unknown format", (slide, unknown, "-o", tmp / "o6.h5", *lv), ["unknown.dat", "unknown ground-truth format"], None),
        ("missing level", (slide, "-o", tmp / "o7.h5", "--levels", "1", "5"), ["slide_a.tif", "no level 5"], None),
        ("unwritable output", (slide, "-o", tmp / "no_such_dir" / "o.h5", *lv), ["no_such_dir", "does not exist"], None),
        ("output is a folder", (slide, "-o", tmp, *lv), [str(tmp), "folder"], None),
        ("foreign hdf5", (slide, "-o", foreign, *lv), ["foreign.h5", "not a wsiheat patches file"], foreign),
        ("not hdf5", (slide, "-o", text_out, *lv), ["text.h5", "not an HDF5 file"], text_out),
        ("differing parameters", (slide, "-o", existing, "--levels", "1", "2", "--window", "64"),
         ["parameters differ", "window"], existing),
        ("slide present", (slide, "-o", existing, *lv), ["already in the file"], existing),
        ("mpp without metadata", (slide, "-o", tmp / "o8.h5", "--mpp", "1", "2"), ["slide_a.tif", "µm/px"], None),
    ]


def test_bad_inputs(slide1k, existing_output, tmp_path):
    for name, args, needles, keep in _bad_cases(tmp_path, slide1k[0], existing_output):
        before = digest(keep) if keep else None
        res = run_cli("extract", *args)
        try:
            assert_one_line_error(res, *needles)
        except AssertionError as exc:
            raise AssertionError(f"{name}: {exc}") from None
        if keep:
            assert digest(keep) == before, name
    assert not [p for p in tmp_path.iterdir() if p.name.startswith("o") and p.suffix == ".h5"]


def test_levels_option_parsing_keeps_positional(slide1k, tmp_path):
    # option before the positional arguments: only numbers are consumed
    out = tmp_path / "p.h5"
    res = run_cli("extract", "--levels", "1", "2", slide1k[0], "-o", out, "--max-normal", "3", "-q")
    assert res.returncode == 0, res.stderr
    with open_patches(out) as pf:
        assert pf.levels == [1, 2] and pf.n == 3


def test_downsample_towers_and_real_tcga_slide(tmp_path):
    data = shared_path("slides", "tcga-cr-7395-01a-01-ts1.svs")
    out = tmp_path / "tcga.h5"
    res = run_cli("extract", data, "-o", out, "--downsamples", "1", "2", "--max-normal", "50", "-q")
    assert res.returncode == 0, res.stderr
    with open_patches(out) as pf:
        assert pf.n == 50 and pf.levels == [None, None] and np.allclose(pf.downsamples, [1, 2])
        x = pf.read(0, pf.n)
        # windows on tissue are not blank
        assert (x.reshape(pf.n, -1).std(axis=1) > 5).all()


# --- bounded memory: bool grids band by band = the per-cell arrays of every cell -----------------

def _plan_all_cells(slide, spec, gt, tissue_threshold, normal_ratio, max_normal, seed, block=2048):
    """The plan as computed before issue 21: every cell's box, fraction and label in memory at once."""
    from wsiheat.patches.sampling import block_order, slide_seed
    from wsiheat.wsi.tissue import tissue_mask, tissue_mask_from_rgb

    tm = tissue_mask(slide)
    np.testing.assert_array_equal(tm.mask, tissue_mask_from_rgb(slide.read_downsampled(tm.downsample)))
    grid = Grid.for_slide(slide.dimensions, spec)
    rows, cols = grid.all_cells()
    on_tissue = tm.fraction_in_boxes(*grid.boxes(rows, cols, spec.window)) >= tissue_threshold - 1e-9
    tumor_slide = bool(gt is not None and gt.has_tumor)
    tumor = tumor_labels(grid, gt, rows, cols) if tumor_slide else np.zeros(len(rows), bool)
    normal_idx, tumor_idx = np.flatnonzero(on_tissue & ~tumor), np.flatnonzero(tumor)
    rng = slide_seed(seed, slide.name)
    n_normal = (min(len(normal_idx), int(round(normal_ratio * len(tumor_idx)))) if tumor_slide else
                len(normal_idx) if not max_normal else min(len(normal_idx), int(max_normal)))
    if n_normal < len(normal_idx):
        normal_idx = np.sort(rng.choice(normal_idx, size=n_normal, replace=False))
    keep = np.concatenate([tumor_idx, normal_idx])
    labels = np.concatenate([np.ones(len(tumor_idx), np.uint8), np.zeros(len(normal_idx), np.uint8)])
    centers = grid.centers(rows[keep], cols[keep])
    order = block_order(centers, spec, block)
    stats = {"on_tissue": int(on_tissue.sum()), "tumor": int(tumor.sum()),
             "tumor_off_tissue": int((tumor & ~on_tissue).sum()), "normal_available": int((on_tissue & ~tumor).sum()),
             "kept_tumor": len(tumor_idx), "kept_normal": len(normal_idx), "scanned": len(rows)}
    return centers[order], labels[order], stats


@pytest.mark.parametrize("slide_path, gt_suffix, levels, kwargs", [
    ("data/mosaics/train/train_tumor_001.tif", "_mask.tif", (0, 1), {"normal_ratio": 1.5}),
    ("data/mosaics/train/train_tumor_001.tif", ".xml", (1, 2), {"normal_ratio": 1.0, "tissue_threshold": 0.5}),
    ("data/mosaics/train/train_normal_001.tif", None, (0, 1), {"max_normal": 50, "seed": 3}),
    ("data/slides/cmu-1-small-region.svs", None, (0,), {"max_normal": None}),
])
def test_plan_equals_the_all_cells_computation_on_real_slides(slide_path, gt_suffix, levels, kwargs):
    """Band-wise bool grids and the candidate-cell tumor grid choose the same windows, in the same order."""
    repo = Path(__file__).resolve().parents[2]
    path = repo / slide_path
    with Slide(path) as s:
        gt = load_ground_truth(str(path)[:-4] + gt_suffix, s.dimensions) if gt_suffix else None
        spec = WindowSpec(tuple(s.level_downsamples[l] for l in levels), levels=levels)
        opts = {"tissue_threshold": 0.75, "normal_ratio": 1.0, "max_normal": 1000, "seed": 0, **kwargs}
        centers, labels, stats = _plan_all_cells(s, spec, gt, **opts)
        plan = plan_windows(s, spec, gt, **opts)
    assert len(labels) > 20 and (labels.sum() > 5 or gt is None)
    np.testing.assert_array_equal(plan.centers0, centers)
    np.testing.assert_array_equal(plan.labels, labels)
    assert {k: plan.stats[k] for k in stats} == stats


# --- no tissue (issue 18, case 6) ------------------------------------------------------------

@pytest.mark.parametrize("kind", ["white", "black", "one_pixel", "grayscale"])
def test_slide_without_tissue_gives_zero_windows_and_a_warning(tmp_path, kind):
    path = tmp_path / f"{kind}.tif"
    img = {"white": np.full((512, 512, 3), 255, np.uint8), "black": np.zeros((512, 512, 3), np.uint8),
           "one_pixel": np.full((1, 1, 3), 200, np.uint8), "grayscale": np.full((512, 512), 240, np.uint8)}[kind]
    tifffile.imwrite(path, img, photometric="rgb" if img.ndim == 3 else "minisblack",
                     tile=(128, 128) if img.shape[0] > 1 else None)
    out = tmp_path / "p.h5"
    res = run_cli("extract", path, "-o", out, "--levels", "0", "-q")
    assert res.returncode == 0, res.stderr
    assert "Traceback" not in res.stderr and "warning" in res.stderr and "no tissue" in res.stderr, res.stderr
    with open_patches(out) as pf:
        assert pf.n == 0 and pf.slides == [kind]
    if kind == "one_pixel":
        return
    # tumor ground truth between the labelled centres of the grid: no window at all, an error
    gt = tmp_path / "gt.json"
    gt.write_text(json.dumps({"positive": [{"name": "t", "vertices": [[1, 1], [3, 1], [3, 3], [1, 3]]}]}))
    out2 = tmp_path / "q.h5"
    res = run_cli("extract", path, gt, "-o", out2, "--levels", "0", "--center", "10", "-q")
    assert_one_line_error(res, "no window", f"{kind}.tif")
    assert not out2.exists()


# --- disk full, kills and stale temporary files (issue 18, case 8) -------------------------------------

@pytest.fixture
def small_disk(tmp_path):
    """A real 12 MB file system (tmpfs) as output folder; skipped where mounting is not allowed."""
    d = tmp_path / "disk"
    d.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=12m", "tmpfs", str(d)], capture_output=True).returncode:
        pytest.skip("cannot mount a tmpfs here (tools/fault_matrix.py falls back to a file-size limit)")
    yield d
    subprocess.run(["umount", str(d)], capture_output=True)


def test_disk_full_is_one_line_and_keeps_the_file(slide1k, slide_b, small_disk):
    out = small_disk / "p.h5"
    assert run_cli("extract", slide1k[0], "-o", out, "--levels", "1", "2", "--max-normal", "20", "-q").returncode == 0
    before = digest(out)
    # planned windows that cannot fit (the shard and the merged copy): refused before writing
    big = small_disk.parent / "big.tif"
    write_pyramid(big, tissue_image(2048, seed=9))
    res = run_cli("extract", big, "-o", out, "--levels", "1", "2", "--max-normal", "0", "-q")
    assert_one_line_error(res, "not enough free space")
    assert digest(out) == before and sorted(p.name for p in small_disk.iterdir()) == ["p.h5"]
    # a few windows fit: appended, nothing left behind
    res = run_cli("extract", slide_b, "-o", out, "--levels", "1", "2", "--max-normal", "5", "-q")
    assert res.returncode == 0, res.stderr
    assert sorted(p.name for p in small_disk.iterdir()) == ["p.h5"]


def test_write_failure_while_writing_is_one_line_not_a_crash(slide_b, small_disk):
    """The free-space estimate fooled (another writer fills the disk): HDF5 is stopped before ENOSPC."""
    out = small_disk / "p.h5"
    code = ("import wsiheat.patches.extract as e, wsiheat.fileio as f\n"
            "e.check_free_space = lambda *a, **k: None\n"  # the up-front estimate passes
            "from wsiheat.cli.main import main\n"
            f"main(['extract', {str(slide_b)!r}, '-o', {str(out)!r}, '--levels', '0', '1', '--max-normal', '0', '-q'])\n")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         env=dict(os.environ, PYTHONPATH=str(REPO)), timeout=120)
    assert_one_line_error(res, "free space")
    assert list(small_disk.iterdir()) == []


@pytest.mark.parametrize("point", ["shard-append", "before-commit"])
def test_sigkill_leaves_temporaries_that_the_next_run_removes(slide1k, slide_b, tmp_path, point):
    out = tmp_path / "p.h5"
    assert run_cli("extract", slide1k[0], "-o", out, "--levels", "0", "1", "--max-normal", "4", "-q").returncode == 0
    before = digest(out)
    proc = start_paused(_extract_args(slide_b, out), tmp_path, point)
    proc.kill()
    proc.communicate(timeout=120)
    assert digest(out) == before
    left = [p for p in tmp_path.iterdir() if p.name.startswith(".p.h5.")]
    assert left, "the killed run should have left its temporary file"
    # a live writer's temporaries are never touched: one beside it, named after this (live) test process
    from wsiheat.fileio import temp_prefix

    live = tmp_path / f"{temp_prefix(out)}keep.shard.h5"
    live.write_bytes(b"in use")
    res = run_cli(*_extract_args(slide_b, out))
    assert res.returncode == 0, res.stderr
    assert f"removed {len(left)} temporary file" in res.stderr, res.stderr
    assert not any(p.exists() for p in left) and live.exists()
    with open_patches(out) as pf:
        assert pf.slides == ["slide_a", "slide_b"]


def test_extract_into_a_file_damaged_in_the_middle(slide1k, slide_b, tmp_path):
    """Case 7: the output's chunk index is damaged: a one-line error, the file unchanged, nothing left."""
    good = tmp_path / "good.h5"
    assert run_cli("extract", slide1k[0], "-o", good, "--levels", "0", "1", "--max-normal", "4", "-q").returncode == 0
    bad = damaged_copy(good, tmp_path / "bad.h5")
    before = digest(bad)
    assert_one_line_error(run_cli(*_extract_args(slide_b, bad)), "bad.h5", "damaged")
    assert digest(bad) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.h5", "good.h5"]
