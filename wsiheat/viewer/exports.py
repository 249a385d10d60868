"""``wsiheat export``: the viewer-native files (:mod:`wsiheat.inference.exports`) of existing result folders."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from wsiheat.errors import WsiheatError
from wsiheat.inference.exports import write_viewer_files


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
    from wsiheat.evaluation.inputs import read_detections
    from wsiheat.inference.outputs import read_heatmap

    results_dir = Path(results_dir)
    out = Path(out_dir) if out_dir is not None else results_dir
    if not out.is_dir():
        raise WsiheatError(f"{out}: output folder does not exist")
    if polygon_threshold is not None and not 0.0 <= polygon_threshold <= 1.0:
        raise WsiheatError(f"polygon_threshold={polygon_threshold}: need a probability in [0, 1]")
    hm = read_heatmap(results_dir / f"{name}.h5")
    csv_path = results_dir / f"{name}_lesions.csv"
    lesions = np.zeros((0, 3))
    if csv_path.exists():
        probs, xs, ys = read_detections(csv_path, allow_empty=True)
        lesions = np.stack([probs, xs, ys], axis=1).reshape(-1, 3)
        lesions = lesions[np.argsort(-lesions[:, 0], kind="stable")]
    return write_viewer_files(out, name, hm.probabilities, hm.tissue, hm.cell_size, hm.origin, lesions,
                              min_prob, polygon_threshold)


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
    from wsiheat.inference.outputs import result_summaries

    names = [p.stem for p, _ in result_summaries(results_dir) if (results_dir / f"{p.stem}.h5").is_file()]
    if not names:
        raise WsiheatError(f"{results_dir}: no heatmap results in this folder (NAME.json and NAME.h5 written by "
                           f"wsiheat heatmap)")
    return {n: write_viewer_exports(results_dir, n, out_dir, min_prob, polygon_threshold) for n in names}
