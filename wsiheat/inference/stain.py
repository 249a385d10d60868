"""Stain normalisation of a slide at inference: one source fit per slide, the same map for every tile.

:func:`fit_slide` fits the model's normaliser (its target is in the model's
metadata) on a fixed, evenly spread sample of the slide's tissue windows;
:class:`WindowStain` then maps every batch of windows the readers produce.
Because no tile is fitted on its own, neighbouring tiles cannot disagree and
the heatmap has no seams.
"""

from __future__ import annotations

import numpy as np

from wsiheat.errors import NoStainedTissueError
from wsiheat.patches.sampling import WindowSpec, read_windows
from wsiheat.wsi.slide import Slide
from wsiheat.wsi.stain import StainNormalizer
from wsiheat.wsi.stain.base import FittedStain, check_slide_colour

FIT_WINDOWS = 64
"""Tissue windows (evenly spread over the slide's tissue cells, all towers) a slide's source is fitted on."""


class WindowStain(FittedStain):
    """The model's normaliser with one slide's source, called on the readers' window batches
    ``(B, T, W, W, 3)``; a batch the map fails on is left as it was and its windows counted
    (:class:`~wsiheat.wsi.stain.base.FittedStain`). Also records how it was fitted."""

    def __init__(self, normalizer: StainNormalizer, source: dict | None, fitted_on: int = 0,
                 why_not: str | None = None):
        super().__init__(normalizer, source)
        self.fitted_on, self.why_not = fitted_on, why_not

    def record(self) -> dict:
        """The normaliser, the slide's source statistics and the windows left unnormalised."""
        return {**self.normalizer.to_dict(), "source": self.source, "fitted_on_windows": int(self.fitted_on),
                "unnormalised_windows": int(self.unnormalised), "not_fitted": self.why_not}


def fit_slide(normalizer: StainNormalizer, slide: Slide, spec: WindowSpec, centers0: np.ndarray,
              k: int = FIT_WINDOWS) -> WindowStain:
    """Fit a slide's source on ``k`` of its tissue windows (centres ``centers0``, level 0), spread evenly.

    A slide without enough stained pixels in that sample is left unnormalised
    (every window counted); a grayscale slide (its thumbnail has no colour)
    raises :class:`StainError`.
    """
    thumb, _ = slide.thumbnail(512)
    check_slide_colour(thumb, str(slide.path))
    if len(centers0) == 0:
        return WindowStain(normalizer, None, 0, "no tissue windows")
    idx = np.unique(np.linspace(0, len(centers0) - 1, min(k, len(centers0))).round().astype(np.int64))
    sample = read_windows(slide, spec, centers0[idx], None)
    try:
        source = normalizer.source(sample, str(slide.path))
    except NoStainedTissueError as e:
        return WindowStain(normalizer, None, len(idx), str(e))
    return WindowStain(normalizer, source, len(idx))
