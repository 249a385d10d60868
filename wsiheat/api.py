"""The one-call functions of the public API (``wsiheat.extract``, ``wsiheat.train``).

Each wraps the stage that does the work, with the same defaults as the CLI
(:mod:`wsiheat.defaults`); the stage functions stay available for finer control.
"""

from __future__ import annotations

import dataclasses
import os

from wsiheat.errors import WsiheatError


def extract(slide: str | os.PathLike, ground_truth: str | os.PathLike | None, output: str | os.PathLike,
            *, levels: tuple[int, ...] | None = None, progress: bool = False, **options) -> dict:
    """Cut windows at several magnifications from ``slide`` into the HDF5 patches file ``output``.

    Parameters
    ----------
    slide : path-like
        Any slide OpenSlide (or tifffile) reads.
    ground_truth : path-like or None
        Tumor annotations (ASAP XML, CAMELYON16 JSON, GeoJSON) or a mask TIFF;
        None for a normal slide.
    output : path-like
        Patches file; created, or appended to (the slide replaces an earlier copy
        only with ``replace=True``).
    levels : tuple of int, optional
        Pyramid levels of the towers (or give ``downsamples=`` / ``mpps=``).
    **options
        Those of :func:`wsiheat.patches.extract.extract_to_file` (``window``,
        ``center``, ``stride``, ``tissue_threshold``, ``max_normal``, ``seed``, ...).

    Returns
    -------
    dict
        The extraction summary (windows kept per class, seconds, ...).
    """
    from wsiheat.patches.extract import extract_to_file

    return extract_to_file(slide, ground_truth, output, levels=levels, progress=progress, **options)


def train(patches: str | os.PathLike, output: str | os.PathLike, *, val: str | os.PathLike | None = None,
          resume: bool = False, progress: bool = False, **config) -> dict:
    """Train the multi-tower classifier on an HDF5 patches file and save it as ``output`` (``.keras``).

    Parameters
    ----------
    patches : path-like
        From :func:`extract` (or ``wsiheat import``).
    output : path-like
        The model file.
    val : path-like, optional
        A validation patches file (default: a slide-level split of ``patches``).
    **config
        Fields of :class:`wsiheat.training.train.TrainConfig` (``epochs``,
        ``batch_size``, ``weights``, ``backbone``, ``lr``, ...).

    Returns
    -------
    dict
        The training summary (history, best epoch, validation AUC, ...).
    """
    from wsiheat.training.train import TrainConfig
    from wsiheat.training.train import train as _train

    known = {f.name for f in dataclasses.fields(TrainConfig)}
    unknown = sorted(set(config) - known)
    if unknown:
        raise WsiheatError(f"train: unknown option(s) {', '.join(unknown)}; choose from {', '.join(sorted(known))}")
    return _train(patches, output, TrainConfig(**config), val=val, resume=resume, progress=progress)
