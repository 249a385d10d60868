"""Stain normalisation of a patches file: one source fit per slide (patient), the same map for all its rows.

Training (:func:`wsiheat.training.dataset.make_dataset`) and ``evaluate
patches`` (:func:`wsiheat.inference.predict.predict_patches`) both go through
:class:`PatchStain`, so a patient's windows are normalised the same way in both.
A slide whose fit fails (no stained pixels, grayscale) keeps its rows as they
are and is counted, never a crash.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

import numpy as np

from wsiheat.errors import StainError
from wsiheat.wsi.stain import StainNormalizer

ROWS_PER_SLIDE = 32
"""Rows of a slide (evenly spaced over its rows) whose pixels fit its source statistics."""
ROWS_FOR_TARGET = 8
"""Rows per slide pooled into a target fitted on the training rows (when no reference image is given)."""


def spread_rows(rows: np.ndarray, k: int) -> np.ndarray:
    """At most ``k`` of ``rows`` (sorted), evenly spaced; deterministic."""
    rows = np.sort(np.asarray(rows, np.int64))
    if len(rows) <= k:
        return rows
    return rows[np.linspace(0, len(rows) - 1, k).round().astype(np.int64)]


def fit_target(normalizer: StainNormalizer, path: str | os.PathLike, rows: np.ndarray | None = None,
               per_slide: int = ROWS_FOR_TARGET) -> StainNormalizer:
    """Set ``normalizer``'s target from the pooled stained pixels of ``rows`` (default all) of a patches
    file, ``per_slide`` rows from each slide; returns the normaliser."""
    from wsiheat.patches.store import open_patches

    with open_patches(path) as pf:
        ids = pf.slide_ids if rows is None else pf.slide_ids[np.asarray(rows, np.int64)]
        all_rows = np.arange(pf.n) if rows is None else np.asarray(rows, np.int64)
        pick = np.concatenate([spread_rows(all_rows[ids == s], per_slide) for s in np.unique(ids)]) \
            if len(all_rows) else all_rows
        return normalizer.fit(pf.read_rows(pick), f"{pf.path} (training rows)")


@dataclass
class PatchStain:
    """Per-slide source statistics of a patches file and the map of its rows.

    Attributes
    ----------
    normalizer : StainNormalizer
        With its target set.
    sources : dict
        Slide id -> source statistics (fitted slides only).
    failed : dict
        Slide name -> why its fit failed (rows left unnormalised).
    """

    normalizer: StainNormalizer
    sources: dict = field(default_factory=dict)
    failed: dict = field(default_factory=dict)

    @classmethod
    def fit(cls, normalizer: StainNormalizer, path: str | os.PathLike, rows: np.ndarray | None = None,
            per_slide: int = ROWS_PER_SLIDE) -> PatchStain:
        """Fit every slide that has rows among ``rows`` (default all) on ``per_slide`` of its rows."""
        from wsiheat.patches.store import open_patches

        out = cls(normalizer)
        with open_patches(path) as pf:
            all_rows = np.arange(pf.n) if rows is None else np.asarray(rows, np.int64)
            ids = pf.slide_ids[all_rows]
            for s in np.unique(ids):
                name = pf.slides[int(s)]
                try:
                    out.sources[int(s)] = normalizer.source(pf.read_rows(spread_rows(all_rows[ids == s], per_slide)),
                                                            f"{pf.path}: slide {name}")
                except StainError as e:
                    out.failed[name] = str(e)
        return out

    def apply(self, images: np.ndarray, slide_ids: np.ndarray) -> np.ndarray:
        """Normalised copy of uint8 rows ``(B, T, W, W, 3)`` whose slides are ``slide_ids``."""
        x = np.array(images, np.uint8, copy=True)
        slide_ids = np.asarray(slide_ids).reshape(-1)
        for s in np.unique(slide_ids):
            src = self.sources.get(int(s))
            if src is None:
                continue
            sel = slide_ids == s
            x[sel] = self.normalizer.transform(x[sel], src)
        return x

    def record(self) -> dict:
        """What a model's metadata or a report keeps: the normaliser, and the slides left as they were."""
        return {**self.normalizer.to_dict(), "fitted_slides": len(self.sources),
                "unnormalised_slides": sorted(self.failed)}
