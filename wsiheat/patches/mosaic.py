"""Mosaic slides of real tissue built from labeled IDC patches.

No whole slide with a tumor annotation can be shipped, but the IDC data set
(``IDC_DIR/PATIENT/CLASS/PATIENT_idx5_xX_yY_classC.png``: 50x50 RGB patches of
breast tissue at about 2.5x, class 1 = invasive ductal carcinoma, class 0 =
normal) holds real labeled tissue. This module lays such patches out on a grid
of cells into a pyramidal tiled TIFF "slide" with its ground truth, so the
whole pipeline (extract, heatmap, evaluate) can run on real tissue:

* ``NAME.tif``       the slide: RGB, level 0 at the patches' own magnification
  (optionally scaled), downsampled levels by 2, white background, JPEG (or
  deflate) tiles of 256 px; OpenSlide reads it as a generic tiled TIFF, with
  µm/px from the TIFF resolution tags and a JSON summary in ImageDescription.
* ``NAME_mask.tif``  the tumor mask: uint8, 255 = tumor, 0 elsewhere, same
  level-0 size and the same pyramid (deflate, lossless, binary at every level).
* ``NAME.xml``       the same tumor regions as CAMELYON16 ASAP XML polygons
  (group ``Tumor``), one polygon per connected tumor region, level-0 pixels.
* ``NAME.json``      the layout record: seed, patients, every cell's patch.

Coordinates
-----------
Cell ``(row, col)`` covers level-0 pixels ``[col*c, (col+1)*c) x [row*c, (row+1)*c)``
with ``c`` the cell size in pixels. Polygon vertices lie on pixel *corners*:
level-0 pixel ``(i, j)`` spans ``[j, j+1) x [i, i+1)``, so a pixel is inside a
polygon when its centre ``(j + 0.5, i + 0.5)`` is. With that rule the XML
rasterizes exactly to the mask.

Slides are deterministic given the seed and the set of patients (the order of
the patient list does not matter). :func:`split_patients` splits patients so
that no patient's patches appear in two splits.
"""

from __future__ import annotations

import csv
import json
import math
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable, Sequence

import cv2
import numpy as np

from wsiheat.errors import WsiheatError
from wsiheat.fileio import atomic_path
from wsiheat.patches.idc import PATCH_PX, SOURCE_MPP, check_idc_dir, list_patches
from wsiheat.patches.mosaic_layout import plan_layout, region_outlines
from wsiheat.wsi.annotations.asap import asap_xml
from wsiheat.wsi.pyramid import down2, write_pyramid

#: Patches whose shorter side is below this fraction of PATCH_PX are skipped (slivers
#: from the slide border); larger edge patches are resized to the cell size.
MIN_PATCH_FRACTION = 0.5


# ------------------------------------------------------------------------------------
# Mosaic slides
# ------------------------------------------------------------------------------------
@dataclass
class MosaicInfo:
    """What :func:`build_mosaic` wrote.

    Attributes
    ----------
    name : str
        Slide name (file stem).
    slide, mask, xml, layout : Path
        The slide TIFF, mask TIFF, ASAP XML and layout JSON.
    tumor : bool
        True when the slide holds tumor.
    dimensions : (int, int)
        Level-0 (width, height).
    level_count : int
    mpp : float
        Level-0 µm per pixel.
    cell_px : int
        Cell side in level-0 pixels.
    n_cells, n_tumor_cells, n_tumor_regions : int
    tumor_area_px : int
        Level-0 tumor pixels (mask area).
    patients : list of str
    seed : int
    bytes : dict of str to int
        File sizes.
    """

    name: str
    slide: Path
    mask: Path
    xml: Path
    layout: Path
    tumor: bool
    dimensions: tuple[int, int]
    level_count: int
    mpp: float
    cell_px: int
    n_cells: int
    n_tumor_cells: int
    n_tumor_regions: int
    tumor_area_px: int
    patients: list[str]
    seed: int
    bytes: dict[str, int]


class _PatchCache:
    """Source patches read once and resized to the cell size."""

    def __init__(self, idc: Path, cell: int):
        self.idc, self.cell, self._cache = idc, cell, {}

    def load(self, rel: str) -> np.ndarray | None:
        """The patch resized to cell x cell RGB, or None for a sliver to skip."""
        if rel in self._cache:
            return self._cache[rel]
        path = self.idc / rel
        bgr = cv2.imread(str(path), cv2.IMREAD_COLOR)
        if bgr is None:
            raise WsiheatError(f"{path}: not a readable PNG patch")
        h, w = bgr.shape[:2]
        if min(h, w) < MIN_PATCH_FRACTION * PATCH_PX:
            self._cache[rel] = None
            return None
        rgb = cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)
        if (h, w) != (self.cell, self.cell):
            interp = cv2.INTER_AREA if max(h, w) > self.cell else cv2.INTER_CUBIC
            rgb = cv2.resize(rgb, (self.cell, self.cell), interpolation=interp)
        self._cache[rel] = np.ascontiguousarray(rgb)
        return self._cache[rel]


class _Draw:
    """Draw patches without replacement (reshuffled when used up), skipping slivers."""

    def __init__(self, rng: np.random.Generator, paths: list[str], cache: _PatchCache):
        self.rng, self.paths, self.cache, self.queue = rng, list(paths), cache, []

    def next(self) -> str:
        for _ in range(2 * len(self.paths) + 2):
            if not self.queue:
                self.queue = [self.paths[i] for i in self.rng.permutation(len(self.paths))]
            rel = self.queue.pop()
            if self.cache.load(rel) is not None:
                return rel
        raise WsiheatError(f"{self.cache.idc}: no usable patch among {len(self.paths)} "
                           f"(all smaller than {MIN_PATCH_FRACTION * PATCH_PX:g} px)")


def _sidecar_paths(out_slide: Path) -> tuple[Path, Path, Path]:
    stem = out_slide.with_suffix("")
    return (stem.with_name(stem.name + "_mask.tif"), stem.with_suffix(".xml"),
            stem.with_suffix(".json"))


def build_mosaic(idc_dir: str | os.PathLike, patients: Sequence[str], out_slide: str | os.PathLike,
                 *, seed: int, tumor: bool = True, n_islands: int | None = None,
                 n_tumors: int | None = None, grid: tuple[int, int] = (40, 40),
                 scale: float = 1.0, compression: str = "jpeg", quality: int = 90,
                 source_mpp: float = SOURCE_MPP,
                 progress: Callable[[], None] | None = None) -> MosaicInfo:
    """Build one mosaic slide of real tissue and its ground truth.

    Writes ``out_slide`` (``.tif``), ``<stem>_mask.tif``, ``<stem>.xml`` and
    ``<stem>.json`` beside it, each atomically.

    Parameters
    ----------
    idc_dir : path
        IDC folder (``PATIENT/CLASS/*.png``).
    patients : sequence of str
        Patients whose patches may be used (the only ones used).
    out_slide : path
        Output slide file, e.g. ``test_tumor_001.tif``.
    seed : int
        Layout and patch-draw seed; same seed and patients -> same files.
    tumor : bool
        False: a normal slide, class-0 patches only, empty mask.
    n_islands : int, optional
        Tissue islands; default 2-4 chosen from the seed.
    n_tumors : int, optional
        Tumor regions (tumor slides); default 2-4 chosen from the seed.
    grid : (rows, cols)
        Grid size in cells (level 0 is ``rows*cell`` x ``cols*cell`` px).
    scale : float
        Magnification factor: cells are ``round(50 * scale)`` px (patches
        resized); level-0 µm/px is ``source_mpp * 50 / cell``.
    compression : {"jpeg", "deflate"}
        Slide tiles (the mask is always deflate, lossless).
    quality : int
        JPEG quality.
    source_mpp : float
        µm per pixel of the patches.
    progress : callable, optional
        Called once per tile written.

    Returns
    -------
    MosaicInfo

    Raises
    ------
    WsiheatError
        Unknown patients, no class-1 patch for a tumor slide, bad parameters.
    """
    idc = check_idc_dir(idc_dir)
    out_slide = Path(out_slide)
    patients = sorted(set(patients))
    if not patients:
        raise WsiheatError(f"{out_slide}: no patients given")
    if not (isinstance(scale, (int, float)) and math.isfinite(scale) and scale > 0):
        raise WsiheatError(f"mosaic: scale must be a positive number, got {scale}")
    cell = int(round(PATCH_PX * scale))
    if cell < 2:
        raise WsiheatError(f"mosaic: scale {scale:g} makes cells of {cell} px; use a larger scale")
    rows, cols = int(grid[0]), int(grid[1])
    if rows < 6 or cols < 6:
        raise WsiheatError(f"mosaic: grid must be at least 6x6 cells, got {rows}x{cols}")
    if not 1 <= int(quality) <= 100:
        raise WsiheatError(f"mosaic: JPEG quality must be 1-100, got {quality}")
    pool = list_patches(idc, patients)
    if not pool[0]:
        raise WsiheatError(f"{idc}: patients {', '.join(patients[:5])}{'...' if len(patients) > 5 else ''} "
                           f"have no class-0 (normal) patch")
    if tumor and not pool[1]:
        raise WsiheatError(f"{idc}: patients {', '.join(patients[:5])}{'...' if len(patients) > 5 else ''} "
                           f"have no class-1 (tumor) patch for a tumor slide")

    rng = np.random.default_rng(int(seed))
    if n_islands is None:
        n_islands = int(rng.integers(2, 5))
    if n_tumors is None:
        n_tumors = int(rng.integers(2, 5)) if tumor else 0
    elif not tumor:
        n_tumors = 0
    elif n_tumors < 1:
        raise WsiheatError(f"mosaic: a tumor slide needs n_tumors >= 1, got {n_tumors}")
    layout = plan_layout(rng, (rows, cols), n_islands, n_tumors)

    cache = _PatchCache(idc, cell)
    draws = {0: _Draw(rng, pool[0], cache), 1: _Draw(rng, pool[1], cache) if pool[1] else None}
    index: dict[str, int] = {}
    used: list[str] = []
    cellmap = np.full((rows, cols), -1, np.int32)
    cells_rec = []
    for r, c in zip(*np.nonzero(layout.tissue)):
        cls = int(layout.tumor[r, c])
        rel = draws[cls].next()
        if rel not in index:
            index[rel] = len(used)
            used.append(rel)
        cellmap[r, c] = index[rel]
        cells_rec.append([int(r), int(c), index[rel], cls])
    patch_arrays = [cache.load(rel) for rel in used]

    W, H = cols * cell, rows * cell
    mpp = source_mpp * PATCH_PX / cell

    def render0(x: int, y: int, w: int, h: int) -> np.ndarray:
        out = np.full((h, w, 3), 255, np.uint8)
        c0, c1 = max(0, x // cell), min(cols, (x + w - 1) // cell + 1)
        r0, r1 = max(0, y // cell), min(rows, (y + h - 1) // cell + 1)
        for r in range(r0, r1):
            for c in range(c0, c1):
                k = cellmap[r, c]
                if k < 0:
                    continue
                px, py = c * cell, r * cell
                ax0, ay0 = max(px, x), max(py, y)
                ax1, ay1 = min(px + cell, x + w), min(py + cell, y + h)
                out[ay0 - y:ay1 - y, ax0 - x:ax1 - x] = \
                    patch_arrays[k][ay0 - py:ay1 - py, ax0 - px:ax1 - px]
        return out

    def render_slide(level: int, x: int, y: int, w: int, h: int) -> np.ndarray:
        if level == 0:
            return render0(x, y, w, h)
        # area-average 2x2 blocks of the finer level, one (w, h) block at a time
        out = np.empty((h, w, 3), np.uint8)
        for by in range(0, 2 * h, h):
            for bx in range(0, 2 * w, w):
                child = render_slide(level - 1, 2 * x + bx, 2 * y + by, w, h)
                out[by // 2:(by + h) // 2, bx // 2:(bx + w) // 2] = down2(child)
        return out

    tumor_grid = layout.tumor

    def render_mask(level: int, x: int, y: int, w: int, h: int) -> np.ndarray:
        # binary at every level: each level pixel takes the cell under its centre
        d = 2 ** level
        cx = np.floor((np.arange(x, x + w) + 0.5) * d / cell).astype(np.int64)
        cy = np.floor((np.arange(y, y + h) + 0.5) * d / cell).astype(np.int64)
        okx, oky = (cx >= 0) & (cx < cols), (cy >= 0) & (cy < rows)
        sub = tumor_grid[np.clip(cy, 0, rows - 1)][:, np.clip(cx, 0, cols - 1)]
        sub = sub & oky[:, None] & okx[None, :]
        return np.where(sub, 255, 0).astype(np.uint8)

    outlines = region_outlines(layout.tumor)
    polygons = [[(x * cell, y * cell) for x, y in poly] for poly in outlines]
    name = out_slide.with_suffix("").name
    mask_path, xml_path, json_path = _sidecar_paths(out_slide)
    tumors_rec = []
    for _i, t in enumerate(layout.tumors):
        cells = np.array(t["cells"])
        tumors_rec.append({
            "shape": t["shape"], "cells": t["cells"],
            "bbox_px": [int(cells[:, 1].min() * cell), int(cells[:, 0].min() * cell),
                        int((cells[:, 1].max() + 1) * cell), int((cells[:, 0].max() + 1) * cell)],
            "area_px": int(len(cells) * cell * cell)})
    record = {
        "format": "wsiheat-mosaic", "version": 1, "name": name, "seed": int(seed),
        "tumor": bool(tumor), "patients": patients, "idc_dir": str(idc),
        "scale": float(scale), "cell_px": cell, "patch_px": PATCH_PX,
        "source_mpp": float(source_mpp), "mpp": mpp, "grid": [rows, cols],
        "dimensions": [W, H], "compression": compression,
        "files": {"slide": out_slide.name, "mask": mask_path.name, "xml": xml_path.name},
        "islands": layout.islands, "tumors": tumors_rec,
        "polygons": [[[float(x), float(y)] for x, y in p] for p in polygons],
        "patches": used,
        "cells": cells_rec,
    }
    summary = {k: record[k] for k in ("format", "version", "name", "seed", "tumor", "patients",
                                      "scale", "cell_px", "mpp", "grid")}
    summary["layout"] = json_path.name
    description = json.dumps(summary, separators=(",", ":"))

    with atomic_path(out_slide) as tmp:
        n_levels = write_pyramid(tmp, render_slide, (W, H), 3, compression=compression,
                                 quality=quality, mpp=mpp, description=description,
                                 progress=progress)
    with atomic_path(mask_path) as tmp:
        write_pyramid(tmp, render_mask, (W, H), 1, compression="deflate", mpp=mpp,
                      description=json.dumps({"format": "wsiheat-mosaic-mask", "slide": out_slide.name,
                                              "tumor_value": 255}, separators=(",", ":")))
    with atomic_path(xml_path) as tmp:
        tmp.write_text(asap_xml(polygons), encoding="utf-8")
    with atomic_path(json_path) as tmp:
        tmp.write_text(json.dumps(record, separators=(",", ":")), encoding="utf-8")

    n_tumor_cells = int(layout.tumor.sum())
    return MosaicInfo(
        name=name, slide=out_slide, mask=mask_path, xml=xml_path, layout=json_path,
        tumor=bool(n_tumor_cells), dimensions=(W, H), level_count=n_levels, mpp=mpp,
        cell_px=cell, n_cells=int(layout.tissue.sum()), n_tumor_cells=n_tumor_cells,
        n_tumor_regions=len(polygons), tumor_area_px=n_tumor_cells * cell * cell,
        patients=patients, seed=int(seed),
        bytes={k: p.stat().st_size for k, p in
               (("slide", out_slide), ("mask", mask_path), ("xml", xml_path), ("layout", json_path))})


def read_layout(path: str | os.PathLike) -> dict:
    """Read a mosaic layout record (``NAME.json``).

    Raises
    ------
    WsiheatError
        When the file is missing or is not a mosaic layout.
    """
    path = Path(path)
    try:
        rec = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise WsiheatError(f"{path}: no such file") from None
    except (OSError, ValueError) as exc:
        raise WsiheatError(f"{path}: not a mosaic layout JSON ({exc})") from None
    if not isinstance(rec, dict) or rec.get("format") != "wsiheat-mosaic":
        raise WsiheatError(f"{path}: not a mosaic layout (format is not 'wsiheat-mosaic')")
    return rec


def _slide_seed(seed: int, i: int) -> int:
    return int(np.random.SeedSequence([int(seed), int(i)]).generate_state(1)[0])


def build_mosaic_set(idc_dir: str | os.PathLike, out_dir: str | os.PathLike, patients: Sequence[str],
                     n_slides: int, n_normal: int, seed: int, *, split: str = "test",
                     prefix: str | None = None, progress: bool = True, split_record: dict | None = None,
                     **mosaic_kwargs) -> list[MosaicInfo]:
    """Build several mosaic slides, their ground truth, a manifest and labels.

    Writes into ``out_dir`` (created if needed):

    * ``PREFIX_tumor_NNN.tif`` / ``PREFIX_normal_NNN.tif`` with their
      ``_mask.tif``, ``.xml`` and ``.json`` (see :func:`build_mosaic`);
    * ``manifest.csv``: ``slide,ground_truth,split,mask`` -- paths relative to
      ``out_dir``; ``ground_truth`` is the ASAP XML for tumor slides and empty
      for normal slides; ``mask`` is given for every slide (all zero for
      normal slides);
    * ``labels.csv``: ``slide,label`` -- slide name (file stem), 1 = tumor,
      0 = normal;
    * ``split.json``: ``split_record`` (how the patients were chosen,
      :func:`wsiheat.patches.idc.choose_patients`), when given.

    Parameters
    ----------
    idc_dir : path
        IDC folder.
    out_dir : path
        Output folder.
    patients : sequence of str
        Patients to draw from (e.g. one split of :func:`split_patients`).
    n_slides : int
        Total number of slides (>= 1).
    n_normal : int
        How many of them have no tumor (0 <= n_normal <= n_slides).
    seed : int
        Base seed; slide ``i`` uses a seed derived from ``(seed, i)``.
    split : str
        Split name written in the manifest (and the default file prefix).
    prefix : str, optional
        File name prefix (default: ``split``).
    progress : bool
        Show a tqdm bar over slides.
    split_record : dict, optional
        Written as ``split.json``.
    **mosaic_kwargs
        Passed to :func:`build_mosaic` (``grid``, ``scale``, ``compression``...).

    Returns
    -------
    list of MosaicInfo
    """
    from tqdm import tqdm

    if n_slides < 1:
        raise WsiheatError(f"mosaic: slides={n_slides}: need at least 1")
    if not 0 <= n_normal <= n_slides:
        raise WsiheatError(f"mosaic: normal={n_normal}: need a number between 0 and the {n_slides} slides")
    list_patches(idc_dir, patients)  # unknown patients fail before anything is written
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise WsiheatError(f"{out}: exists and is not a folder")
    out.mkdir(parents=True, exist_ok=True)
    prefix = split if prefix is None else prefix
    n_tumor = n_slides - n_normal
    plan = [(True, i + 1) for i in range(n_tumor)] + [(False, i + 1) for i in range(n_normal)]
    infos = []
    for i, (is_tumor, k) in enumerate(tqdm(plan, desc="mosaic slides", unit="slide",
                                           disable=not progress)):
        name = f"{prefix}_{'tumor' if is_tumor else 'normal'}_{k:03d}" if prefix else \
            f"{'tumor' if is_tumor else 'normal'}_{k:03d}"
        infos.append(build_mosaic(idc_dir, patients, out / f"{name}.tif", seed=_slide_seed(seed, i),
                                  tumor=is_tumor, **mosaic_kwargs))
    with atomic_path(out / "manifest.csv") as tmp:
        with open(tmp, "w", newline="") as f:
            w = csv.writer(f)
            w.writerow(["slide", "ground_truth", "split", "mask"])
            for info in infos:
                w.writerow([info.slide.name, info.xml.name if info.tumor else "", split, info.mask.name])
    with atomic_path(out / "labels.csv") as tmp:
        with open(tmp, "w", newline="") as f:
            w = csv.writer(f)
            w.writerow(["slide", "label"])
            for info in infos:
                w.writerow([info.name, int(info.tumor)])
    if split_record is not None:
        with atomic_path(out / "split.json") as tmp:
            tmp.write_text(json.dumps(split_record, indent=1), encoding="utf-8")
    return infos


def info_dict(info: MosaicInfo) -> dict:
    """A JSON-friendly dict of a :class:`MosaicInfo`."""
    d = asdict(info)
    for k in ("slide", "mask", "xml", "layout"):
        d[k] = str(d[k])
    return d
