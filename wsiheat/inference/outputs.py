"""The heatmap of a slide, its nine output files and the pictures in them.

Outputs per slide, in the output folder, ``NAME`` = the output name (the slide
name by default); every file is written atomically:

* ``NAME.png``: heatmap, perceptual colormap and colorbar legend;
* ``NAME_overlay.png``: heatmap blended over the slide thumbnail (tissue
  cells only; background shows the slide);
* ``NAME.h5``: raw float32 ``probabilities`` and bool ``tissue`` (rows, cols)
  plus the geometry as attributes (:func:`read_heatmap`);
* ``NAME_heatmap.tif``: tiled pyramidal RGB TIFF, one pixel per cell, aligned
  with the slide's top-left corner (readable by OpenSlide, QuPath, tifffile);
* ``NAME_lesions.csv``: ``prob,x,y`` rows (level-0 px, no header);
* ``NAME_lesions.png``: the 16 most probable lesion candidates, each a view
  of 6 cells around it with the scored cell outlined, captioned with rank,
  probability and level-0 position, to check before opening a viewer;
* ``NAME_qupath.geojson`` and ``NAME_asap.xml``: the heatmap cells and lesion
  candidates for QuPath and ASAP (:mod:`wsiheat.inference.exports`);
* ``NAME.json``: the slide summary (``score`` = maximum of the lesion map:
  the smoothed map, or a fitted lesion scorer's map, see :func:`lesion_map`;
  ``max_probability`` = maximum of the raw map, ...), written last, with
  the completion record (each other file's SHA-256 and the run's
  parameters): a set is complete only when it verifies
  (:func:`outputs_complete`).
"""

from __future__ import annotations

import csv
import json
import os
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np

from wsiheat.errors import WsiheatError
from wsiheat.fileio import atomic_path, pause_point, sha256_file
from wsiheat.inference.exports import ASAP_SUFFIX, QUPATH_SUFFIX, write_viewer_files
from wsiheat.wsi.slide import Slide

#: Output file suffixes, in the order they are written (the JSON last).
OUTPUT_SUFFIXES = (".h5", ".png", "_overlay.png", "_heatmap.tif", "_lesions.csv", "_lesions.png", QUPATH_SUFFIX,
                   ASAP_SUFFIX, ".json")
#: lesion candidates shown in ``NAME_lesions.png``, and the side of each view in cells
GALLERY_LESIONS, GALLERY_CONTEXT_CELLS, GALLERY_PIXELS = 16, 6, 160
HEATMAP_FORMAT = "wsiheat-heatmap"
COLORMAP = "inferno"


def lesion_views(slide: Slide, lesions: np.ndarray, cell0: float, context_cells: float = GALLERY_CONTEXT_CELLS,
                 size: int = GALLERY_PIXELS) -> np.ndarray:
    """Views of the slide around lesion points, the scored cell outlined.

    Parameters
    ----------
    slide : Slide
    lesions : ndarray (K, 3)
        Rows ``(prob, x, y)`` in level-0 pixels (:func:`lesions_from_heatmap`).
    cell0 : float
        Cell size in level-0 pixels.
    context_cells : float
        Side of each view in cells.
    size : int
        Side of each view in pixels.

    Returns
    -------
    ndarray uint8 (K, 1, size, size, 3)
        One tower per view, for :func:`wsiheat.inference.gallery.plot_gallery`.
    """
    side0 = float(context_cells) * float(cell0)
    d = side0 / size
    half = 0.5 * float(cell0) / d  # half the cell, in view pixels
    lo, hi = int(round(size / 2 - half)), int(round(size / 2 + half))  # outline: [lo, hi)
    lo, hi = max(0, lo), min(size, max(hi, lo + 4))
    t = 2  # line width in view pixels
    out = np.empty((len(lesions), 1, size, size, 3), np.uint8)
    for i, (_, x, y) in enumerate(np.asarray(lesions, np.float64).reshape(-1, 3)):
        if d >= 1.0:
            v = slide.read_scaled((x - side0 / 2, y - side0 / 2), d, (size, size))
        else:  # small cells: the view is finer than level 0, so read level 0 and enlarge it
            n = max(1, int(round(side0)))
            v = cv2.resize(slide.read_scaled((x - side0 / 2, y - side0 / 2), 1.0, (n, n)), (size, size),
                           interpolation=cv2.INTER_NEAREST)
        for r0, r1, c0, c1 in ((lo, lo + t, lo, hi), (hi - t, hi, lo, hi),
                               (lo, hi, lo, lo + t), (lo, hi, hi - t, hi)):
            v[r0:r1, c0:c1] = (0, 200, 255)  # cyan outline of the scored cell
        out[i, 0] = v
    return out


def colorize(prob: np.ndarray, tissue: np.ndarray | None = None, cmap: str = COLORMAP,
             chunk_pixels: int = 1 << 18) -> np.ndarray:
    """RGB uint8 image of a probability map (background cells = probability 0).

    Computed in bands of rows of about ``chunk_pixels`` values: the colormap's
    float64 RGBA is never made for the whole map.
    """
    from matplotlib import colormaps

    cm = colormaps[cmap]
    prob = np.asarray(prob)
    out = np.empty(prob.shape + (3,), np.uint8)
    if prob.ndim == 0 or prob.size == 0:
        return _colorize(prob, tissue, cm) if prob.ndim == 0 else out
    step = max(1, chunk_pixels // max(1, prob.size // prob.shape[0]))
    for r in range(0, prob.shape[0], step):
        out[r:r + step] = _colorize(prob[r:r + step], None if tissue is None else np.asarray(tissue)[r:r + step], cm)
    return out


def _colorize(prob: np.ndarray, tissue: np.ndarray | None, cm) -> np.ndarray:
    p = np.nan_to_num(np.clip(np.asarray(prob, np.float64), 0, 1))
    if tissue is not None:
        p = np.where(tissue, p, 0.0)
    return (cm(p)[..., :3] * 255 + 0.5).astype(np.uint8)


# --------------------------------------------------------------------------- writers
def write_raw(path: Path, prob: np.ndarray, tissue: np.ndarray, attrs: dict) -> None:
    """Write the raw heatmap HDF5 (see :func:`read_heatmap`)."""
    import h5py

    with atomic_path(path) as tmp:
        with h5py.File(tmp, "w") as f:
            f.create_dataset("probabilities", data=prob.astype(np.float32), compression="gzip")
            f.create_dataset("tissue", data=tissue.astype(bool), compression="gzip")
            for k, v in attrs.items():
                f.attrs[k] = v


@dataclass(frozen=True)
class Heatmap:
    """A slide's heatmap: the raw map at cell resolution, and (when computed) its lesions and summary.

    Made by :func:`wsiheat.inference.heatmap.compute_heatmap` (or
    :meth:`wsiheat.HeatmapModel.predict_slide`), or read back from ``NAME.h5``
    by :func:`read_heatmap` (then without lesions, summary or the pictures).

    Cell ``(row, col)`` covers level-0 ``[ox + col*s, ox + (col+1)*s) x
    [oy + row*s, oy + (row+1)*s)``, ``(ox, oy) = origin``, ``s = cell_size``.

    Attributes
    ----------
    probabilities : ndarray float32 (rows, cols)
        Tumor probability of every cell (0 off tissue).
    tissue : ndarray bool (rows, cols)
        Cells that were evaluated.
    cell_size : float
        Cell side in level-0 pixels.
    origin : (float, float)
        Level-0 position of the grid's top-left corner.
    attrs : dict
        The geometry and provenance stored in ``NAME.h5``.
    lesions : ndarray (K, 3)
        Lesion points ``(prob, x, y)`` in level-0 pixels, most probable first.
    summary : dict
        What ``NAME.json`` holds (``score``, ``max_probability``, ``topk_mean``,
        ``tumor_area``, timings, warnings, ...).
    """

    probabilities: np.ndarray
    tissue: np.ndarray
    cell_size: float
    origin: tuple[float, float]
    attrs: dict
    lesions: np.ndarray = field(default_factory=lambda: np.zeros((0, 3)))
    summary: dict = field(default_factory=dict)
    pictures: dict = field(default_factory=dict, repr=False)  # thumbnail and lesion views, for save()

    @property
    def name(self) -> str:
        """The output name (the slide name by default)."""
        return str(self.summary.get("name") or self.attrs.get("slide", ""))

    @property
    def score(self) -> float:
        """Slide score: the maximum of the lesion map over tissue."""
        if "score" not in self.summary:
            raise WsiheatError(f"heatmap of {self.name}: no slide score (read back from NAME.h5 only)")
        return float(self.summary["score"])

    def centers(self, rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
        """Level-0 (x, y) centres of cells, (K, 2)."""
        s, (ox, oy) = self.cell_size, self.origin
        return np.stack([ox + (np.asarray(cols) + 0.5) * s, oy + (np.asarray(rows) + 0.5) * s], axis=-1)

    def cell_at(self, x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(rows, cols) of the cells holding level-0 points."""
        s, (ox, oy) = self.cell_size, self.origin
        return (np.floor((np.asarray(y) - oy) / s).astype(np.int64),
                np.floor((np.asarray(x) - ox) / s).astype(np.int64))

    def save(self, out_dir: str | os.PathLike, name: str | None = None, parameters: dict | None = None) -> dict:
        """Write the nine output files (``NAME.h5``, ``.png``, ``_overlay.png``, ``_heatmap.tif``,
        ``_lesions.csv``, ``_lesions.png``, ``_qupath.geojson``, ``_asap.xml``, ``.json`` last) into
        ``out_dir``; return the summary. ``parameters``: the run's parameters, kept in the
        completion record of ``NAME.json`` (:func:`outputs_complete`).

        Only a computed heatmap can be saved (one read back from ``NAME.h5`` lacks
        the slide thumbnail and lesion views).
        """
        return save_heatmap(self, out_dir, name, parameters)


def read_heatmap(path: str | os.PathLike) -> Heatmap:
    """Read a raw heatmap file written by :func:`heatmap_slide`."""
    import h5py

    path = Path(path)
    try:
        with h5py.File(path, "r") as f:
            if f.attrs.get("format") != HEATMAP_FORMAT:
                raise WsiheatError(f"{path}: not a wsiheat heatmap file")
            attrs = {k: (v.item() if isinstance(v, np.generic) else v) for k, v in f.attrs.items()}
            return Heatmap(f["probabilities"][...], f["tissue"][...].astype(bool),
                           float(attrs["cell_size"]), tuple(float(v) for v in attrs["origin"]), attrs)
    except (OSError, KeyError) as exc:
        raise WsiheatError(f"{path}: cannot read heatmap ({exc})") from None


def write_heatmap_png(path: Path, prob: np.ndarray, tissue: np.ndarray, title: str = "",
                      min_pixels: int = 600, max_pixels: int = 4000) -> None:
    """Heatmap figure: one or more pixels per cell, colormap and colorbar legend."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib.figure import Figure

    rows, cols = prob.shape
    scale = max(1.0, min_pixels / max(rows, cols))
    scale = min(scale, max_pixels / max(rows, cols)) if max(rows, cols) * scale > max_pixels else scale
    dpi = 100
    w_in, h_in = cols * scale / dpi, rows * scale / dpi
    fig = Figure(figsize=(w_in + 1.6, h_in + 0.8), dpi=dpi)
    ax = fig.add_axes((0.2 / (w_in + 1.6), 0.3 / (h_in + 0.8), w_in / (w_in + 1.6), h_in / (h_in + 0.8)))
    from matplotlib import colormaps

    # background (not evaluated) in light grey, so it differs from tissue at probability 0
    img = np.ma.masked_array(np.nan_to_num(prob), mask=~np.asarray(tissue, bool))
    cmap = colormaps[COLORMAP].with_extremes(bad=(0.85, 0.85, 0.85))
    im = ax.imshow(img, cmap=cmap, vmin=0, vmax=1, interpolation="nearest")
    ax.set_axis_off()
    if title:
        ax.set_title(f"{title}   (grey: no tissue, not evaluated)", fontsize=8)
    cax = fig.add_axes(((w_in + 0.35) / (w_in + 1.6), 0.3 / (h_in + 0.8), 0.15 / (w_in + 1.6),
                        h_in / (h_in + 0.8)))
    cb = fig.colorbar(im, cax=cax)
    cb.set_label("tumor probability", fontsize=8)
    cb.ax.tick_params(labelsize=7)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=dpi)


def overlay_image(thumb: np.ndarray, thumb_ds: float, prob: np.ndarray, tissue: np.ndarray,
                  cell0: float, alpha: float = 0.8) -> np.ndarray:
    """Blend the colour-mapped heatmap over a thumbnail; background cells stay transparent.

    A tissue cell's opacity is ``alpha * sqrt(probability)``: tissue at
    probability 0 shows the slide unchanged, likely tumor is strongly tinted.
    """
    h, w = thumb.shape[:2]
    rr = np.minimum(((np.arange(h) + 0.5) * thumb_ds / cell0).astype(np.int64), prob.shape[0] - 1)
    cc = np.minimum(((np.arange(w) + 0.5) * thumb_ds / cell0).astype(np.int64), prob.shape[1] - 1)
    out = np.empty(thumb.shape, np.uint8)
    step = max(1, (1 << 18) // max(1, w))  # rows per band: float copies of one band only
    for r in range(0, h, step):
        ix = np.ix_(rr[r:r + step], cc)
        p = np.nan_to_num(prob[ix])
        t = tissue[ix]
        rgb = colorize(p).astype(np.float32)
        a = np.where(t, alpha * np.sqrt(np.clip(p, 0, 1)), 0.0)[..., None]
        out[r:r + step] = (thumb[r:r + step].astype(np.float32) * (1 - a) + rgb * a + 0.5).astype(np.uint8)
    return out


def write_png(path: Path, rgb: np.ndarray) -> None:
    from PIL import Image

    with atomic_path(path) as tmp:
        Image.fromarray(rgb).save(tmp, format="PNG")


def write_pyramid_tiff(path: Path, rgb: np.ndarray, cell0: float, mpp: float | None = None,
                       description: dict | None = None, tile: int = 256,
                       min_size: int = 128) -> int:
    """Write an RGB image as a tiled pyramidal TIFF (one page per level, halving).

    Level 0 has one pixel per heatmap cell, i.e. ``cell0`` level-0 pixels of
    the slide, anchored at the slide's top-left corner. The resolution tags
    hold the pixel size in cm when the slide's µm/px is known; the
    description (JSON) records ``cell_size`` in level-0 pixels. Lossless
    (deflate); levels are added until both sides are at most ``min_size``
    (:func:`wsiheat.wsi.pyramid.write_pyramid_array`).

    Returns
    -------
    int
        Number of pyramid levels written.
    """
    from wsiheat.wsi.pyramid import write_pyramid_array

    desc = json.dumps({"wsiheat": "heatmap", "cell_size": float(cell0), "mpp": mpp, **(description or {})})
    with atomic_path(path) as tmp:
        return write_pyramid_array(tmp, rgb, compression="deflate", mpp=cell0 * mpp if mpp else None,
                                   description=desc, tile=tile, min_side=min_size)


def write_lesions_csv(path: Path, lesions: np.ndarray) -> None:
    """``prob,x,y`` rows (level-0 pixels), no header: the CAMELYON16 submission format."""
    with atomic_path(path) as tmp:
        with open(tmp, "w", newline="") as f:
            w = csv.writer(f)
            for p, x, y in lesions:
                w.writerow([f"{p:.6f}", int(round(x)), int(round(y))])


# --------------------------------------------------------------------------- the slide
def result_summaries(folder: str | os.PathLike) -> list[tuple[Path, dict]]:
    """The heatmap summaries of a results folder: every ``*.json`` holding ``slide`` and ``score``.

    Sorted by file name; other JSON files (reports, layouts) and unreadable ones are skipped.
    """
    found = []
    for p in sorted(Path(folder).glob("*.json")):
        try:
            data = json.loads(p.read_text(encoding="utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError, OSError):
            continue
        if isinstance(data, dict) and "slide" in data and "score" in data:
            found.append((p, data))
    return found


def output_paths(out_dir: str | os.PathLike, name: str) -> dict[str, Path]:
    """The output files of one slide, keyed by suffix (:data:`OUTPUT_SUFFIXES`)."""
    out_dir = Path(out_dir)
    return {s: out_dir / f"{name}{s}" for s in OUTPUT_SUFFIXES}


def _jsonable(v):
    return json.loads(json.dumps(v, sort_keys=True, default=str))


def outputs_complete(out_dir: str | os.PathLike, name: str, parameters: dict | None = None) -> bool:
    """True when the outputs of ``name`` are a complete set of one run (made with ``parameters``).

    ``NAME.json`` is written last and holds the completion record
    (``completion``: every other file's name and SHA-256, and the run's
    parameters). The set is complete when each file exists with its recorded
    hash, and, when ``parameters`` is given, the recorded parameters equal
    them. A set left by an interrupted run (some files new, ``NAME.json`` old
    or missing), one without a record or one changed since is not.
    """
    paths = output_paths(out_dir, name)
    try:
        summary = json.loads(paths[".json"].read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    rec = summary.get("completion") if isinstance(summary, dict) else None
    files = rec.get("files") if isinstance(rec, dict) else None
    if not isinstance(files, dict):
        return False
    for suffix, path in paths.items():
        if suffix == ".json":
            continue
        want = files.get(path.name)
        try:
            if want is None or sha256_file(path) != want:
                return False
        except OSError:
            return False
    return parameters is None or rec.get("parameters") == _jsonable(parameters)


def outputs_exist(out_dir: str | os.PathLike, name: str) -> bool:
    """True when the outputs of ``name`` are a complete set (see :func:`outputs_complete`)."""
    return outputs_complete(out_dir, name)


def save_heatmap(hm: Heatmap, out_dir: str | os.PathLike, name: str | None = None,
                 parameters: dict | None = None) -> dict:
    """Write a computed :class:`Heatmap` as the nine output files; return the summary (``NAME.json``).

    Each file is written atomically; ``NAME.json``, written last, holds the
    completion record (:func:`outputs_complete`): the other files' SHA-256
    and ``parameters`` (the run's parameters, compared by a later skip check).
    """
    import time

    from wsiheat.fileio import check_writable_dir, ensure_out_dir
    from wsiheat.inference.gallery import plot_gallery

    if "thumbnail" not in hm.pictures:
        raise WsiheatError(f"heatmap of {hm.name}: only a computed heatmap can be saved, not one read from NAME.h5")
    out_dir = ensure_out_dir(out_dir)
    check_writable_dir(out_dir / "x")
    t0 = time.perf_counter()
    name = name or hm.name
    s = hm.summary
    prob, tissue, lesions = hm.probabilities, hm.tissue, hm.lesions
    slide_name, dims, mpp, cell0 = s["slide"], s["dimensions"], s["mpp"], hm.cell_size
    thumb, thumb_ds = hm.pictures["thumbnail"]
    views = hm.pictures["views"]
    lesion_threshold = s["lesion_threshold"]
    paths = output_paths(out_dir, name)
    write_raw(paths[".h5"], prob, tissue, hm.attrs)
    pause_point("heatmap-outputs")
    write_heatmap_png(paths[".png"], prob, tissue, title=f"{slide_name}  score {s['score']:.3f}")
    write_png(paths["_overlay.png"], overlay_image(thumb, thumb_ds, prob, tissue, cell0))
    write_pyramid_tiff(paths["_heatmap.tif"], colorize(prob, tissue), cell0, mpp,
                       {"slide": slide_name, "slide_dimensions": dims, "origin": [0, 0]})
    write_lesions_csv(paths["_lesions.csv"], lesions)
    plot_gallery(paths["_lesions.png"], [(
        f"{slide_name}: {len(views)} most probable of {len(lesions)} lesion candidate(s), "
        f"p >= {lesion_threshold:g} (views of {GALLERY_CONTEXT_CELLS} cells, scored cell outlined)",
        views, [f"#{i + 1}  p = {p:.3f}\nx {x:.0f}, y {y:.0f}" for i, (p, x, y) in enumerate(lesions[:len(views)])])],
        empty_text=f"{slide_name}: no lesion candidate at p >= {lesion_threshold:g}")
    write_viewer_files(out_dir, name, prob, tissue, cell0, hm.origin, lesions)
    summary = dict(s)
    summary["name"] = name
    summary["seconds"] = round(s["seconds"] + time.perf_counter() - t0, 3)
    summary["outputs"] = {k: p.name for k, p in paths.items()}
    summary["completion"] = {"files": {p.name: sha256_file(p) for k, p in paths.items() if k != ".json"},
                              "parameters": _jsonable(parameters or {})}
    with atomic_path(paths[".json"]) as tmp:
        tmp.write_text(json.dumps(summary, indent=2, default=str) + "\n")
    return summary
