"""Reading evaluation inputs: reference CSVs, heatmap result folders, detection CSVs, ground-truth files.

Every reader checks what it reads and raises a one-line :class:`wsiheat.errors.WsiheatError`
naming the file (and row) on bad input. Slides are matched by :func:`wsiheat.wsi.slide.slide_name`.
"""

from __future__ import annotations

import csv
import io
import math
import os
import re
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np

from wsiheat.errors import WsiheatError
from wsiheat.wsi.slide import slide_name

GROUND_TRUTH_SUFFIXES = (".tif", ".tiff", ".png", ".xml", ".json", ".geojson")


def read_patch_rows(patches_path: str | os.PathLike, rows: np.ndarray) -> np.ndarray:
    """The ``images`` rows of an HDF5 patches file, in the order asked (uint8 (K, T, W, W, 3))."""
    from wsiheat.patches.store import open_patches

    with open_patches(patches_path) as pf:
        return pf.read_rows(np.asarray(rows, np.int64))


# =====================================================================================
# Slide level
# =====================================================================================

_TUMOR_WORDS = {"1": 1, "tumor": 1, "tumour": 1, "positive": 1, "metastasis": 1, "metastases": 1,
                "0": 0, "normal": 0, "negative": 0}


def read_reference_csv(path: str | os.PathLike) -> dict[str, int]:
    """Read slide labels from a CSV ``slide,label[,...]`` (optional header).

    Labels may be 0/1 or words (``Tumor``/``Normal``, case-insensitive), so the
    CAMELYON16 ``reference.csv`` (``Test_001,Tumor,Macro,Box``) works as is.
    Slide names may carry an extension (``Test_001.tif``), which is dropped.
    """
    path = Path(path)
    rows = _read_csv_rows(path)
    labels: dict[str, int] = {}
    for lineno, row in rows:
        if len(row) < 2:
            raise WsiheatError(f"{path}:{lineno}: expected 'slide,label', got {','.join(row)!r}")
        name, lab = row[0].strip(), row[1].strip().lower()
        if lab not in _TUMOR_WORDS:
            if lineno == rows[0][0]:  # header
                continue
            raise WsiheatError(f"{path}:{lineno}: label {row[1]!r} is not 0/1 or tumor/normal")
        name = slide_name(name)
        if name in labels:
            raise WsiheatError(f"{path}:{lineno}: slide {name!r} listed twice")
        labels[name] = _TUMOR_WORDS[lab]
    if not labels:
        raise WsiheatError(f"{path}: no slide labels")
    return labels




def read_slide_scores(results: str | os.PathLike, score: str = "score") -> dict[str, float]:
    """Slide scores from a heatmap results folder or a ``slide,score`` CSV.

    In a folder, every ``*.json`` holding ``slide`` and ``score`` keys (the
    heatmap's per-slide JSON) is read; other JSON files are ignored.
    ``score`` names the JSON field used (:func:`wsiheat.postprocess.scores.names`:
    ``score`` = maximum of the lesion map, ``max_probability``, ``topk_mean`` =
    mean of the k most probable cells, or a registered score).
    """
    from wsiheat.postprocess.scores import names

    if score not in names():
        raise WsiheatError(f"slide score {score!r}: choose one of {', '.join(names())}")
    results = Path(results)
    scores: dict[str, float] = {}
    if not results.exists():
        raise WsiheatError(f"{results}: no such file or folder")
    if results.is_dir():
        for meta in read_result_jsons(results).values():
            if score not in meta:
                raise WsiheatError(f"{meta['_path']}: no {score!r} field (written by wsiheat heatmap)")
            scores[meta["slide"]] = _check_prob(meta[score], f"{meta['_path']}: {score}")
        if not scores:
            raise WsiheatError(f"{results}: no heatmap result JSON (with 'slide' and 'score') in this folder")
        return scores
    rows = _read_csv_rows(results)
    for lineno, row in rows:
        if len(row) < 2:
            raise WsiheatError(f"{results}:{lineno}: expected 'slide,score', got {','.join(row)!r}")
        try:
            val = float(row[1])
        except ValueError:
            if lineno == rows[0][0]:
                continue
            raise WsiheatError(f"{results}:{lineno}: score {row[1]!r} is not a number") from None
        name = slide_name(row[0].strip())
        if name in scores:
            raise WsiheatError(f"{results}:{lineno}: slide {name!r} listed twice")
        scores[name] = _check_prob(val, f"{results}:{lineno}: score")
    if not scores:
        raise WsiheatError(f"{results}: no slide scores")
    return scores


#: Largest level-0 coordinate accepted in a detection CSV (no slide is ten million pixels wide).
MAX_COORDINATE = 10_000_000


def read_detections(path: str | os.PathLike, allow_empty: bool = False) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Read a CAMELYON16 detection CSV: rows ``prob,x,y`` (level-0 pixels), optional header.

    Coordinates are truncated to integers (as ``int()`` in the official
    reader, which only accepts integers). Empty lines are skipped.

    Raises
    ------
    WsiheatError
        Malformed rows, NaN or out-of-range probabilities, negative or
        impossibly large (> :data:`MAX_COORDINATE`) coordinates, or an empty
        file (unless ``allow_empty``).
    """
    probs, xs, ys, _ = read_detection_rows(path, allow_empty)
    return probs, xs, ys


def read_detection_rows(path: str | os.PathLike, allow_empty: bool = False
                        ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """:func:`read_detections` and the CSV line number of each detection (for errors)."""
    path = Path(path)
    probs, xs, ys, lines = [], [], [], []
    for k, (lineno, row) in enumerate(_read_csv_rows(path)):
        elems = [e.strip() for e in row]
        line = ",".join(row)
        if k == 0 and elems[:3] == ["prob", "x", "y"]:
            continue
        if len(elems) < 3:
            raise WsiheatError(f"{path}:{lineno}: expected 'prob,x,y', got {line!r}")
        try:
            p, x, y = float(elems[0]), float(elems[1]), float(elems[2])
        except ValueError:
            raise WsiheatError(f"{path}:{lineno}: expected numbers 'prob,x,y', got {line!r}") from None
        if not (p >= 0.0 and p <= 1.0):  # also catches NaN
            raise WsiheatError(f"{path}:{lineno}: probability {elems[0]} is not in [0, 1]")
        if not (math.isfinite(x) and math.isfinite(y)) or x < 0 or y < 0:
            raise WsiheatError(f"{path}:{lineno}: coordinates ({elems[1]}, {elems[2]}) are not level-0 pixels "
                               f"inside the slide")
        if x > MAX_COORDINATE or y > MAX_COORDINATE:
            raise WsiheatError(f"{path}:{lineno}: coordinates ({elems[1]}, {elems[2]}) are outside any slide "
                               f"(more than {MAX_COORDINATE} level-0 pixels)")
        probs.append(p)
        xs.append(int(x))
        ys.append(int(y))
        lines.append(lineno)
    if not probs and not allow_empty:
        raise WsiheatError(f"{path}: no detections (empty file; allow empty files to count it as a slide "
                           f"without detections)")
    return (np.asarray(probs, np.float64), np.asarray(xs, np.int64), np.asarray(ys, np.int64),
            np.asarray(lines, np.int64))


def check_detections_inside(path: str | os.PathLike, xs: np.ndarray, ys: np.ndarray, lines: np.ndarray,
                            size: tuple[int, int], what: str = "slide") -> None:
    """Raise naming the file and CSV line of the first detection outside ``size`` = (W, H) level-0 pixels."""
    W, H = size
    out = (xs >= W) | (ys >= H)
    if out.any():
        i = int(np.flatnonzero(out)[0])
        raise WsiheatError(f"{path}:{int(lines[i])}: detection at ({xs[i]}, {ys[i]}) is outside the {what}'s "
                           f"{W}x{H} level-0 pixels")


def find_detection_files(results: str | os.PathLike) -> dict[str, Path]:
    """Map slide name -> detection CSV in a results folder.

    ``NAME_lesions.csv`` (the heatmap output) when the folder has any;
    otherwise every ``NAME.csv`` (the CAMELYON16 submission layout).
    A single CSV file is also accepted (name = its stem without ``_lesions``).
    """
    results = Path(results)
    if not results.exists():
        raise WsiheatError(f"{results}: no such file or folder")
    if results.is_file():
        return {_strip(results.name, "_lesions.csv", ".csv"): results}
    lesion_files = sorted(results.glob("*_lesions.csv"))
    files = lesion_files or sorted(results.glob("*.csv"))
    out = {_strip(p.name, "_lesions.csv", ".csv"): p for p in files if p.is_file()}
    if not out:
        raise WsiheatError(f"{results}: no detection CSV (NAME_lesions.csv or NAME.csv) in this folder")
    return out


def find_ground_truth(paths: Sequence[str | os.PathLike]) -> dict[str, Path]:
    """Map slide name -> ground-truth file from files and folders.

    In a folder, files ending in .tif/.tiff/.png/.xml/.json/.geojson are taken;
    the name is the file stem without a ``_Mask``/``_mask`` suffix (CAMELYON16
    masks are ``Tumor_001_Mask.tif``). Two files for one slide are refused.
    """
    found: dict[str, Path] = {}
    for p in paths:
        p = Path(p)
        if not p.exists():
            raise WsiheatError(f"{p}: no such file or folder")
        cands = sorted(q for q in p.iterdir() if q.is_file() and not q.name.startswith(".")
                       and q.suffix.lower() in GROUND_TRUTH_SUFFIXES) if p.is_dir() else [p]
        for q in cands:
            name = re.sub(r"_mask$", "", q.name[: -len(q.suffix)] if q.suffix else q.name, flags=re.I)
            if name in found and found[name] != q:
                raise WsiheatError(f"{q}: second ground-truth file for slide {name!r} (also {found[name]})")
            found[name] = q
        if p.is_dir() and not cands:
            raise WsiheatError(f"{p}: no ground-truth file (.tif, .png, .xml, .json, .geojson) in this folder")
    return found


def _read_csv_rows(path: Path) -> list[tuple[int, list[str]]]:
    try:
        text = path.read_text(encoding="utf-8-sig")
    except FileNotFoundError:
        raise WsiheatError(f"{path}: no such file") from None
    except (UnicodeDecodeError, IsADirectoryError):
        raise WsiheatError(f"{path}: not a text CSV file") from None
    rows = []
    for lineno, row in enumerate(csv.reader(io.StringIO(text)), 1):
        if row and any(c.strip() for c in row):
            rows.append((lineno, row))
    return rows


def read_result_jsons(folder: Path) -> dict[str, dict[str, Any]]:
    """Heatmap per-slide JSONs (with 'slide' and 'score') in a folder, by slide name."""
    from wsiheat.inference.outputs import result_summaries

    out: dict[str, dict[str, Any]] = {}
    for p, data in result_summaries(folder):
        data = dict(data)
        data["_path"] = p
        name = slide_name(str(data["slide"]))
        if name in out:
            raise WsiheatError(f"{p}: second result for slide {name!r} (also {out[name]['_path']})")
        data["slide"] = name
        out[name] = data
    return out


def _check_prob(value: Any, where: str) -> float:
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise WsiheatError(f"{where} {value!r} is not a number") from None
    if not (0.0 <= v <= 1.0):
        raise WsiheatError(f"{where} {value!r} is not a probability in [0, 1]")
    return v


def check_inside(name: str, xs: np.ndarray, ys: np.ndarray, shape: tuple[int, ...], level: int) -> None:
    d = 2 ** level
    if xs.size and (xs.max() // d >= shape[1] or ys.max() // d >= shape[0]):
        i = int(np.argmax((xs // d >= shape[1]) | (ys // d >= shape[0])))
        raise WsiheatError(f"{name}: detection at ({xs[i]}, {ys[i]}) lies outside the slide "
                           f"({shape[1] * d}x{shape[0] * d} level-0 pixels)")


def _strip(name: str, *suffixes: str) -> str:
    for s in suffixes:
        if name.endswith(s):
            return name[: -len(s)]
    return name


def short_list(names: Sequence[str], limit: int = 5) -> str:
    names = list(names)
    shown = ", ".join(names[:limit])
    return shown + (f" and {len(names) - limit} more" if len(names) > limit else "")


def match_names(a: Iterable[str], b: Iterable[str], a_where: str, b_where: str) -> None:
    """Refuse slide names present in one source and not the other (both directions)."""
    a, b = set(a), set(b)
    only_a, only_b = sorted(a - b), sorted(b - a)
    if only_a:
        raise WsiheatError(f"{a_where}: slide(s) {short_list(only_a)} have no match in {b_where}")
    if only_b:
        raise WsiheatError(f"{b_where}: slide(s) {short_list(only_b)} have no match in {a_where}")
