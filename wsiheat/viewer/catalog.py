"""The slides a viewer serves: heatmap results matched with their slides and ground truth.

A :class:`Catalog` is built once, when the viewer starts, from a results
folder written by ``wsiheat heatmap`` (``NAME.json`` + ``NAME.h5`` +
``NAME_lesions.csv`` + ``NAME_overlay.png``). Every later request addresses
a slide by its :attr:`SlideEntry.key` (the name when it is URL-safe, else
``s<index>``); nothing a browser sends is ever turned into a path.

A result whose slide cannot be shown keeps its row, with
:attr:`SlideEntry.problem` saying why (slide not found, not a slide, a
different size or name than the heatmap was made on, heatmap unreadable);
the other slides work.
"""

from __future__ import annotations

import json
import math
import os
import re
import threading
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from wsiheat.errors import WsiheatError
from wsiheat.wsi.slide import Slide

#: file suffixes taken for slides in a ``--slides`` folder (first match wins, in this order)
SLIDE_SUFFIXES = (".svs", ".tif", ".tiff", ".ndpi", ".mrxs", ".scn", ".vms", ".vmu", ".svslide", ".bif",
                  ".dcm", ".png", ".jpg", ".jpeg")
_SAFE_KEY = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
#: longest side, in pixels, of the mask read to trace ground-truth outlines from a mask image
OUTLINE_MASK_PIXELS = 2048


@dataclass
class SlideEntry:
    """One heatmap result and what the viewer knows about it.

    Attributes
    ----------
    key : str
        The address of the slide in URLs and file names of a static copy.
    name : str
        Output name (``NAME`` of ``NAME.json``).
    summary : dict
        The ``NAME.json`` slide summary.
    results_dir : Path
        Folder of the heatmap outputs.
    slide_path : Path or None
        The slide file, when found.
    ground_truth : Path or None
        Ground-truth file, when given.
    label : int or None
        1 tumor / 0 normal from ``--reference``; else from the ground truth when
        given (a manifest row without ground truth: normal).
    problem : str or None
        Why the slide cannot be shown (one line), None when it can.
    gt_problem : str or None
        Why the ground truth cannot be shown.
    """

    key: str
    name: str
    summary: dict
    results_dir: Path
    slide_path: Path | None = None
    ground_truth: Path | None = None
    label: int | None = None
    problem: str | None = None
    gt_problem: str | None = None
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)
    _heatmap: object = field(default=None, repr=False)
    _lesions: np.ndarray | None = field(default=None, repr=False)
    _outlines: list | None = field(default=None, repr=False)

    # -- figures of the summary ------------------------------------------------------
    @property
    def score(self) -> float:
        """Slide score (NaN when the summary has none)."""
        try:
            return float(self.summary.get("score"))
        except (TypeError, ValueError):
            return float("nan")

    @property
    def dimensions(self) -> tuple[int, int]:
        """Level-0 (width, height) the heatmap was made on."""
        w, h = self.summary.get("dimensions") or (0, 0)
        return int(w), int(h)

    @property
    def mpp(self) -> float | None:
        """µm per level-0 pixel, when the slide has it."""
        m = self.summary.get("mpp")
        try:
            m = float(m)
        except (TypeError, ValueError):
            return None
        return m if math.isfinite(m) and m > 0 else None

    def path_of(self, suffix: str) -> Path:
        """An output file of this result (``NAME`` + suffix, in the results folder)."""
        return self.results_dir / f"{self.name}{suffix}"

    # -- lazily read data ----------------------------------------------------------------
    def heatmap(self):
        """The raw heatmap (:class:`wsiheat.inference.outputs.Heatmap`), read once."""
        from wsiheat.inference.outputs import read_heatmap

        with self._lock:
            if self._heatmap is None:
                self._heatmap = read_heatmap(self.path_of(".h5"))
            return self._heatmap

    def lesions(self) -> np.ndarray:
        """Lesion candidates ``(K, 3)``: probability, level-0 x, y, most probable first."""
        from wsiheat.evaluation.inputs import read_detections

        with self._lock:
            if self._lesions is None:
                path = self.path_of("_lesions.csv")
                if path.exists():
                    probs, xs, ys = read_detections(path, allow_empty=True)
                    arr = np.stack([probs, xs, ys], axis=1).astype(np.float64).reshape(-1, 3)
                    self._lesions = arr[np.argsort(-arr[:, 0], kind="stable")]
                else:
                    self._lesions = np.zeros((0, 3))
            return self._lesions

    @property
    def n_lesions(self) -> int:
        """Number of lesion candidates (from the summary; the CSV when the summary lacks it)."""
        n = self.summary.get("lesions")
        return int(n) if isinstance(n, (int, float)) else len(self.lesions())

    def outlines(self) -> list[dict]:
        """Ground-truth outlines: ``[{"points": [[x, y], ...], "hole": bool}]`` in level-0 pixels.

        Polygon ground truth gives its polygons; a mask gives the contours of
        its tumor pixels at a coarse downsample. Empty without ground truth or
        when it cannot be read (:attr:`gt_problem` says why).
        """
        from wsiheat.wsi.annotations.groundtruth import PolygonGroundTruth, load_ground_truth

        with self._lock:
            if self._outlines is not None:
                return self._outlines
            out: list[dict] = []
            if self.ground_truth is not None and self.gt_problem is None:
                try:
                    gt = load_ground_truth(self.ground_truth, self.dimensions)
                    if isinstance(gt, PolygonGroundTruth):
                        out = ([{"points": _round_points(p), "hole": False} for p in gt.positive]
                               + [{"points": _round_points(p), "hole": True} for p in gt.negative])
                    else:
                        out = _mask_outlines(gt, self.dimensions)
                except WsiheatError as exc:
                    self.gt_problem = str(exc)
            self._outlines = out
            return out


def _round_points(p: np.ndarray) -> list[list[float]]:
    return [[round(float(x), 1), round(float(y), 1)] for x, y in np.asarray(p).reshape(-1, 2)]


def _mask_outlines(gt, dimensions: tuple[int, int]) -> list[dict]:
    import cv2

    W, H = dimensions
    ds = max(1.0, max(W, H) / OUTLINE_MASK_PIXELS)
    mask = gt.full_mask(ds, dimensions).astype(np.uint8)
    contours, hierarchy = cv2.findContours(mask, cv2.RETR_CCOMP, cv2.CHAIN_APPROX_SIMPLE)
    out = []
    for i, c in enumerate(contours):
        if len(c) < 3:
            continue
        hole = hierarchy is not None and hierarchy[0][i][3] >= 0
        pts = (c.reshape(-1, 2).astype(np.float64) + 0.5) * ds
        out.append({"points": _round_points(pts), "hole": bool(hole)})
    return out


@dataclass
class Catalog:
    """Every result of a results folder, in triage order (highest score first).

    Attributes
    ----------
    results_dir : Path
    entries : list of SlideEntry
    summary : dict
        ``n``, ``n_labelled``, ``auc`` (slide AUC when labels of both classes
        are known), ``reports`` (figures read from ``evaluate`` reports found
        in or under the results folder).
    """

    results_dir: Path
    entries: list[SlideEntry]
    summary: dict

    def get(self, key: str) -> SlideEntry | None:
        """The entry addressed by ``key``, or None (never a filesystem look-up)."""
        return self._by_key.get(key) if isinstance(key, str) else None

    def __post_init__(self) -> None:
        self._by_key = {e.key: e for e in self.entries}

    def neighbours(self, key: str) -> tuple[str | None, str | None]:
        """Keys of the previous and next slide in triage order."""
        keys = [e.key for e in self.entries]
        i = keys.index(key)
        return (keys[i - 1] if i > 0 else None, keys[i + 1] if i + 1 < len(keys) else None)


def _result_summaries(results_dir: Path) -> list[tuple[Path, dict]]:
    from wsiheat.inference.outputs import result_summaries

    return [(p, data) for p, data in result_summaries(results_dir) if "geometry" in data]


def _find_in_folder(folder: Path, name: str) -> Path | None:
    for suffix in SLIDE_SUFFIXES:
        for p in (folder / f"{name}{suffix}", folder / f"{name}{suffix.upper()}"):
            if p.is_file():
                return p
    return None


def _check_slide(path: Path, summary: dict) -> str | None:
    """Why ``path`` is not the slide the heatmap was made on (one line), or None."""
    try:
        with Slide(path) as s:
            dims = tuple(int(v) for v in s.dimensions)
            sname = s.name
            # a truncated or damaged file may open and fail on reading: read a corner of the coarsest level
            lw, lh = s.level_dimensions[-1]
            s.read_region((0, 0), s.level_count - 1, (min(64, lw), min(64, lh)))
    except WsiheatError as exc:
        return str(exc)
    want = tuple(int(v) for v in summary.get("dimensions") or ())
    if want and dims != want:
        return (f"{path}: the slide is {dims[0]}x{dims[1]} px but the heatmap was made on a "
                f"{want[0]}x{want[1]} slide (moved or replaced since?); re-run wsiheat heatmap")
    made_on = str(summary.get("slide") or "")
    if made_on and sname != made_on:
        return (f"{path}: the slide is named {sname} but the heatmap was made on {made_on}; "
                f"give the right slide with --slides or --manifest")
    return None


def _read_reports(results_dir: Path) -> dict:
    """Slide AUC and FROC from ``evaluate`` reports in the results folder or one level below."""
    out: dict = {}
    for fname, keys in (("slide_report.json", ("auc",)), ("froc_report.json", ("froc_score",))):
        for p in [results_dir / fname, *sorted(results_dir.glob(f"*/{fname}"))]:
            if not p.is_file():
                continue
            try:
                data = json.loads(p.read_text(encoding="utf-8"))
            except (UnicodeDecodeError, json.JSONDecodeError, OSError):
                continue
            for k in keys:
                if isinstance(data.get(k), (int, float)):
                    out[k] = {"value": float(data[k]), "file": str(p.relative_to(results_dir))}
            break
    return out


def build_catalog(results_dir: str | os.PathLike, slides: str | os.PathLike | None = None,
                  manifest: str | os.PathLike | None = None, reference: str | os.PathLike | None = None,
                  ground_truth: Sequence[str | os.PathLike] = ()) -> Catalog:
    """Match the results of a folder with their slides, labels and ground truth.

    Parameters
    ----------
    results_dir : path-like
        Folder written by ``wsiheat heatmap``.
    slides : path-like, optional
        Folder holding the slides (``NAME.svs``, ``NAME.tif``, ...); by default
        the slide path recorded in ``NAME.json``.
    manifest : path-like, optional
        Manifest CSV ``slide,ground_truth,split`` (paths relative to it): the
        slides and their ground truth. Not with ``slides``.
    reference : path-like, optional
        ``slide,label`` CSV of slide labels (tumor/normal).
    ground_truth : sequence of path-like
        Ground-truth files or folders (``NAME.xml``, ``NAME.geojson``, masks ...).

    Returns
    -------
    Catalog

    Raises
    ------
    WsiheatError
        No such folder, no heatmap result in it, ``slides`` and ``manifest``
        both given, or an unreadable manifest, reference or ground-truth list.
    """
    results_dir = Path(results_dir)
    if not results_dir.is_dir():
        raise WsiheatError(f"{results_dir}: no such results folder")
    if slides is not None and manifest is not None:
        raise WsiheatError("give either --slides or --manifest, not both")
    found = _result_summaries(results_dir)
    if not found:
        raise WsiheatError(f"{results_dir}: no heatmap results in this folder (NAME.json written by "
                           f"wsiheat heatmap); run wsiheat heatmap SLIDES -m MODEL --out-dir {results_dir}")
    slide_files: dict[str, Path] = {}
    gt_files: dict[str, Path] = {}
    if manifest is not None:
        from wsiheat.scale.tasks import read_manifest

        for task in read_manifest(manifest):
            slide_files[task.name] = Path(task.slide)
            if task.ground_truth:
                gt_files[task.name] = Path(task.ground_truth)
    if slides is not None:
        slides = Path(slides)
        if not slides.is_dir():
            raise WsiheatError(f"{slides}: no such slide folder")
    if ground_truth:
        from wsiheat.evaluation.inputs import find_ground_truth

        gt_files.update(find_ground_truth(list(ground_truth)))
    labels: dict[str, int] = {}
    if reference is not None:
        from wsiheat.evaluation.inputs import read_reference_csv

        labels = read_reference_csv(reference)

    entries: list[SlideEntry] = []
    used_keys: set[str] = set()
    for i, (jpath, summary) in enumerate(found):
        name = jpath.stem
        made_on = str(summary.get("slide") or name)
        key = name if _SAFE_KEY.match(name) and name not in used_keys else f"s{i}"
        used_keys.add(key)
        e = SlideEntry(key=key, name=name, summary=summary, results_dir=results_dir)
        # the slide: manifest, then --slides, then the path recorded by heatmap
        recorded = Path(str(summary.get("slide_path") or ""))
        cand = slide_files.get(made_on) or slide_files.get(name)
        if cand is None and slides is not None:
            cand = _find_in_folder(slides, made_on) or _find_in_folder(slides, name)
        if cand is None and str(recorded) and recorded.is_file():
            cand = recorded
        if cand is None:
            where = f" in {slides}" if slides is not None else (" in the manifest" if manifest is not None else "")
            e.problem = (f"slide {made_on} not found{where} (heatmap made from {recorded}; moved? "
                         f"give --slides DIR or --manifest CSV)")
        else:
            e.slide_path = cand
            e.problem = _check_slide(cand, summary)
        if e.problem is None and not e.path_of(".h5").is_file():
            e.problem = f"{e.path_of('.h5')}: heatmap file missing; re-run wsiheat heatmap"
        e.ground_truth = gt_files.get(made_on) or gt_files.get(name)
        if made_on in labels or name in labels:
            e.label = labels.get(made_on, labels.get(name))
        entries.append(e)

    if gt_files and not labels:
        from wsiheat.wsi.annotations.groundtruth import load_ground_truth

        for e in entries:
            if e.ground_truth is None:
                if str(e.summary.get("slide") or e.name) in slide_files:
                    e.label = 0  # a manifest row without ground truth: a normal slide
                continue
            try:
                e.label = int(load_ground_truth(e.ground_truth, e.dimensions).has_tumor)
            except WsiheatError as exc:
                e.gt_problem = str(exc)
    entries.sort(key=lambda e: (-(e.score if math.isfinite(e.score) else -1.0), e.name))
    summary: dict = {"n": len(entries), "n_problems": sum(e.problem is not None for e in entries),
                     "reports": _read_reports(results_dir)}
    lab = [(e.label, e.score) for e in entries if e.label is not None and math.isfinite(e.score)]
    summary["n_labelled"] = len(lab)
    if lab and 0 < sum(y for y, _ in lab) < len(lab):
        from wsiheat.evaluation.metrics import roc_auc

        summary["auc"] = float(roc_auc(np.array([y for y, _ in lab]), np.array([s for _, s in lab])))
    return Catalog(results_dir, entries, summary)
