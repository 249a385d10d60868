"""``wsiheat extract``: one slide (and its optional ground truth) into a patches file.

Steps: open the slide and ground truth, resolve the towers, check the output
(writable; when it exists: a wsiheat file with the same parameters, slide not
yet present unless ``replace``), compute the tissue mask, plan the windows
(:func:`wsiheat.patches.sampling.plan_windows`), write them to a temporary shard beside
the output, then append the shard atomically (:func:`wsiheat.patches.store.merge_into`).
The existing output stays byte-identical on any failure or interruption.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING

from wsiheat import __version__, defaults
from wsiheat.errors import WsiheatError
from wsiheat.fileio import check_free_space, check_writable_dir, remove_stale_temporaries, temp_prefix
from wsiheat.patches.sampling import WindowSpec, extract_slide, plan_windows, resolve_towers
from wsiheat.patches.store import ShardWriter, compatibility_problems, merge_into, normalize_attrs, open_patches
from wsiheat.wsi.slide import Slide

if TYPE_CHECKING:  # pragma: no cover
    from wsiheat.wsi.annotations.groundtruth import GroundTruth

#: Default tower levels (CAMELYON: level 2 ~ 10x and level 3 ~ 5x of a 40x scan).
DEFAULT_LEVELS = (2, 3)


def extract_to_file(slide_path: str | os.PathLike, ground_truth_path: str | os.PathLike | None,
                    output: str | os.PathLike, *, levels: tuple[int, ...] | None = None,
                    downsamples: tuple[float, ...] | None = None, mpps: tuple[float, ...] | None = None,
                    window: int = defaults.WINDOW, center: int = defaults.CENTER, stride: int = defaults.STRIDE,
                    tissue_threshold: float = defaults.TISSUE_THRESHOLD,
                    normal_ratio: float = defaults.NORMAL_RATIO, max_normal: int | None = defaults.MAX_NORMAL, seed: int = 0,
                    replace: bool = False, progress: bool = True, tissue_downsample: float = defaults.TISSUE_MASK_DOWNSAMPLE,
                    batch: int = 1024) -> dict:
    """Extract one slide's windows and append them to ``output``.

    Parameters
    ----------
    slide_path : path-like
    ground_truth_path : path-like or None
        Any form :func:`wsiheat.wsi.annotations.groundtruth.load_ground_truth` accepts; None
        for a normal slide.
    output : path-like
        Patches file, created or appended to.
    levels, downsamples, mpps : tuple, optional
        Tower magnifications (first given wins; default levels 2 and 3).
    window, center, stride : int
        Geometry (tower-0 pixels), see :mod:`wsiheat.patches.sampling`.
    tissue_threshold, normal_ratio, max_normal, seed
        Sampler options, see :func:`wsiheat.patches.sampling.plan_windows`.
    replace : bool
        Re-extract a slide already in ``output``.
    progress : bool
        Show a tqdm progress bar.
    tissue_downsample : float
        Resolution of the tissue mask (level-0 pixels per mask pixel).
    batch : int
        Windows per write batch (bounds memory).

    Returns
    -------
    dict
        Statistics: scanned, on_tissue, tumor, kept_tumor, kept_normal,
        rows_total, seconds, ...
    """
    from wsiheat.wsi.annotations.groundtruth import load_ground_truth

    t0 = time.perf_counter()
    output = Path(output)
    if output.is_dir():
        raise WsiheatError(f"{output}: is a folder; give a file name such as {output / 'patches.h5'}")
    check_writable_dir(output)
    if output.exists() and not os.access(output, os.R_OK):
        raise WsiheatError(f"{output}: cannot read the existing output file")
    slide = Slide(slide_path)
    try:
        gt = load_ground_truth(ground_truth_path, slide.dimensions) if ground_truth_path is not None else None
        spec, attrs = extraction_attrs(slide, levels=levels, downsamples=downsamples, mpps=mpps, window=window,
                                       center=center, stride=stride, tissue_threshold=tissue_threshold,
                                       tissue_downsample=tissue_downsample, normal_ratio=normal_ratio,
                                       max_normal=max_normal, seed=seed)
        if output.exists():  # fail fast, before the long work (merge_into checks again)
            with open_patches(output) as pf:
                probs = compatibility_problems(pf.attrs, attrs)
                if probs:
                    raise WsiheatError(f"{output}: parameters differ from those already in the file "
                                       f"({'; '.join(probs)}); extract into another file or use the file's parameters")
                if slide.name in pf.slides and not replace:
                    raise WsiheatError(f"{output}: slide {slide.name} is already in the file "
                                       f"(use --replace to re-extract it)")
        removed = remove_stale_temporaries(output)  # of earlier runs that were killed
        try:
            fd, shard = tempfile.mkstemp(prefix=temp_prefix(output), suffix=".shard.h5", dir=output.parent)
        except OSError as exc:
            raise WsiheatError(f"{output}: cannot write output in {output.parent} ({exc.strerror})") from None
        os.close(fd)
        try:
            stats = write_shard(slide, gt, shard, spec, attrs, progress=progress, batch=batch,
                                merge_into_size=output.stat().st_size if output.exists() else 0)
            if removed:
                stats.setdefault("warnings", []).append(
                    f"removed {len(removed)} temporary file(s) left beside {output} by killed runs")
            warns = stats.setdefault("warnings", [])
            if stats["kept_tumor"] + stats["kept_normal"] == 0:
                if gt is not None and gt.has_tumor:
                    raise WsiheatError(f"{slide_path}: no window could be made (no tissue found, and none of the "
                                       f"tumor in {ground_truth_path} is inside a window); {output} is unchanged")
                warns.append(f"{slide_path}: no tissue found: 0 windows (the slide is recorded in {output} "
                             f"without rows)")
            merged = merge_into(output, [shard], replace=replace)
        finally:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(shard)
    finally:
        slide.close()
    stats.update(rows_total=merged["rows_total"], replaced=bool(merged["slides_replaced"]),
                 slide=slide.name, output=str(output), seconds=time.perf_counter() - t0,
                 levels=list(spec.levels), downsamples=list(spec.downsamples))
    return stats


def extraction_attrs(slide: Slide, *, levels: tuple[int, ...] | None = None,
                     downsamples: tuple[float, ...] | None = None, mpps: tuple[float, ...] | None = None,
                     window: int = defaults.WINDOW, center: int = defaults.CENTER, stride: int = defaults.STRIDE,
                     tissue_threshold: float = defaults.TISSUE_THRESHOLD,
                     tissue_downsample: float = defaults.TISSUE_MASK_DOWNSAMPLE, normal_ratio: float = defaults.NORMAL_RATIO,
                     max_normal: int | None = defaults.MAX_NORMAL, seed: int = 0) -> tuple[WindowSpec, dict]:
    """The window spec and the patches-file attributes of one extraction.

    Towers come from the first of ``levels``, ``downsamples`` or ``mpps``
    given (default :data:`DEFAULT_LEVELS`). The attributes hold the geometry
    and, under ``params``, the full parameter record.

    Returns
    -------
    spec : WindowSpec
    attrs : dict
        Normalised root attributes for :class:`wsiheat.patches.store.ShardWriter`.
    """
    if levels is None and downsamples is None and mpps is None:
        levels = DEFAULT_LEVELS
    lv, ds = resolve_towers(slide, levels=levels, downsamples=downsamples, mpps=mpps)
    spec = WindowSpec(tuple(ds), window=window, center=center, stride=stride, levels=lv)
    params = {
        "window": window, "center": center, "stride": stride,
        "levels": list(levels) if levels is not None else None,
        "downsamples": list(downsamples) if downsamples is not None and levels is None else None,
        "mpp": list(mpps) if mpps is not None and levels is None and downsamples is None else None,
        "tissue_threshold": tissue_threshold, "tissue_downsample": tissue_downsample,
        "normal_ratio": normal_ratio, "max_normal": max_normal, "seed": seed,
        "label_rule": "tumor if any tumor pixel in the central C x C tower-0 pixels",
    }
    attrs = normalize_attrs({"window": window, "center": center, "stride": stride, "downsamples": ds,
                             "levels": lv, "tissue_threshold": tissue_threshold, "params": params,
                             "wsiheat_version": __version__})
    return spec, attrs


def write_shard(slide: Slide, ground_truth: GroundTruth | None, shard: str | os.PathLike, spec: WindowSpec, attrs: dict, *,
                progress: bool = True, batch: int = 1024, merge_into_size: int | None = None) -> dict:
    """Plan one slide's windows and write them into a new shard file ``shard``.

    The free space is checked once the windows are planned (the shard, and
    when ``merge_into_size`` is given, the merged copy of a file of that size
    too), before anything is written.

    The sampler options (tissue threshold and mask resolution, class ratio,
    cap, seed) are read from ``attrs["params"]`` so the shard records exactly
    what produced it.

    Returns
    -------
    dict
        The slide's statistics (see :func:`wsiheat.patches.sampling.extract_slide`).
    """
    from wsiheat.wsi.tissue import BandedTissueMask

    p = json.loads(attrs["params"]) if isinstance(attrs["params"], str) else attrs["params"]
    tissue = BandedTissueMask(slide, p["tissue_downsample"])  # block by block: memory independent of the slide
    plan = plan_windows(slide, spec, ground_truth, tissue=tissue, tissue_threshold=p["tissue_threshold"],
                        normal_ratio=p["normal_ratio"], max_normal=p["max_normal"], seed=p["seed"],
                        progress=progress)
    from wsiheat.patches.store import CHUNK_ROWS

    rows = -(-len(plan.labels) // CHUNK_ROWS) * CHUNK_ROWS * spec.towers * spec.window * spec.window * 3
    need = rows if merge_into_size is None else 2 * rows + merge_into_size
    check_free_space(shard, need, what=f"{len(plan.labels)} windows of {slide.name}")
    with ShardWriter(shard, attrs) as writer:
        return extract_slide(slide, ground_truth, spec, writer, plan=plan, progress=progress, batch=batch,
                             slide_info={"params": p, "tissue_downsample": tissue.downsample})


def summary_line(stats: dict) -> str:
    """One-line summary of :func:`extract_to_file`'s statistics."""
    s = stats
    secs = s["seconds"]
    return (f"{s['slide']}: {s['scanned']} windows scanned, {s['on_tissue']} on tissue, {s['tumor']} tumor; "
            f"kept {s['kept_tumor']} tumor + {s['kept_normal']} normal"
            f"{' (replaced)' if s.get('replaced') else ''} -> {s['output']} ({s['rows_total']} rows); "
            f"{secs:.1f} s, {s['scanned'] / max(secs, 1e-9):.0f} windows scanned/s")
