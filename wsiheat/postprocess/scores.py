"""Slide scores: a registry from a name to a function of the heatmap.

Every heatmap's ``NAME.json`` holds the built-in figures of
:func:`wsiheat.postprocess.lesions.slide_scores` (``score`` = maximum of the
lesion map, ``max_probability``, ``topk_mean``, ``tumor_area``, ...) and one
field per registered score. ``wsiheat evaluate slides --score NAME`` ranks
slides by any of them. Adding a score is one function plus one call::

    import numpy as np
    from wsiheat.postprocess.scores import register

    def p95(prob, tissue, lesion_map, cell_size, mpp):
        p = prob[tissue]
        return float(np.percentile(p, 95)) if p.size else 0.0

    register("p95", p95)

A score function takes the raw map ``prob`` (float, rows x cols), the bool
``tissue`` mask, the ``lesion_map`` (smoothed or scorer's map), the cell size
in level-0 pixels and the slide's µm/px (or None), and returns a float in [0, 1].
"""

from __future__ import annotations

from typing import Callable

import numpy as np

from wsiheat.errors import WsiheatError

#: the scores every heatmap JSON holds (see :func:`wsiheat.postprocess.lesions.slide_scores`)
BUILTIN = ("score", "max_probability", "topk_mean")

ScoreFn = Callable[[np.ndarray, np.ndarray, np.ndarray, float, "float | None"], float]
_REGISTRY: dict[str, ScoreFn] = {}


def register(name: str, fn: ScoreFn) -> None:
    """Register a slide score ``fn(prob, tissue, lesion_map, cell_size, mpp) -> float`` under ``name``."""
    if not isinstance(name, str) or not name.isidentifier() or name in BUILTIN:
        raise WsiheatError(f"slide score name {name!r}: need an identifier other than {', '.join(BUILTIN)}")
    _REGISTRY[name] = fn


def unregister(name: str) -> None:
    """Remove a registered slide score (no error when it is not registered)."""
    _REGISTRY.pop(name, None)


def names() -> tuple[str, ...]:
    """Every slide score a heatmap JSON can hold: the built-in ones, then the registered ones."""
    return BUILTIN + tuple(_REGISTRY)


def registered_scores(prob: np.ndarray, tissue: np.ndarray, lesion_map: np.ndarray, cell_size: float,
                      mpp: float | None) -> dict[str, float]:
    """The registered scores of one heatmap, by name."""
    out = {}
    for name, fn in _REGISTRY.items():
        value = float(fn(prob, tissue, lesion_map, cell_size, mpp))
        if not np.isfinite(value):
            raise WsiheatError(f"slide score {name!r} gave {value}: need a finite number")
        out[name] = value
    return out
