"""Learned lesion map: each heatmap cell rescored from its neighbourhood in the raw map.

The patch classifier scores every cell on its own. Its confident mistakes in
normal tissue are mostly single cells, while a lesion is a connected group of
cells. Gaussian smoothing (:func:`wsiheat.postprocess.lesions.smooth_heatmap`) uses that,
but one sigma cannot suit both 2-cell and 20-cell lesions. A lesion scorer
is a logistic regression over a few neighbourhood features of the raw map
(:data:`FEATURES`): the cell's own probability, its strongest neighbour, the
map smoothed at four sigmas, and the share of confident cells around it.
It is fitted on validation slides with ground truth
(``wsiheat evaluate fit-scorer``) and applied by
``wsiheat heatmap --lesion-scorer``: its map then locates and ranks the
lesion points and gives the slide score, instead of the smoothed map.

Classes are balanced when fitting, so 0.5 on the lesion map means "as much
evidence for tumor as for normal tissue" and the usual lesion threshold
(0.5) applies.

The scorer file is JSON (``format`` = ``wsiheat-lesion-scorer``):
``features``, ``coef``, ``intercept`` and ``fitted`` (how and on what it was
fitted).
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from wsiheat.errors import WsiheatError
from wsiheat.fileio import atomic_path

SCORER_FORMAT = "wsiheat-lesion-scorer"
SCORER_VERSION = 1
#: Gaussian sigmas (cells) of the smoothed-map features
FEATURE_SIGMAS = (0.5, 0.75, 1.0, 1.5)
#: probability levels of the "share of confident cells in the 3 x 3 around" features
FEATURE_LEVELS = (0.5, 0.9)
FEATURES = ("prob", "best_neighbour") + tuple(f"smooth_{s:g}" for s in FEATURE_SIGMAS) + tuple(
    f"share_3x3_{p:g}" for p in FEATURE_LEVELS)


def neighbourhood_features(prob: np.ndarray, tissue: np.ndarray) -> np.ndarray:
    """The :data:`FEATURES` of every cell of a raw probability map.

    Parameters
    ----------
    prob : ndarray (rows, cols)
        Raw probabilities (NaN counts as 0).
    tissue : ndarray of bool (rows, cols)
        Evaluated cells; the others count as probability 0 and get all-zero
        features.

    Returns
    -------
    ndarray float64 (rows, cols, len(FEATURES))
        In order: ``prob``; ``best_neighbour`` = min(prob, the highest of the
        8 neighbours), so a lone confident cell keeps only its neighbours'
        level; the tissue-only Gaussian smoothing at each of
        :data:`FEATURE_SIGMAS`; the share of the 3 x 3 cells around (itself
        included) at or above each of :data:`FEATURE_LEVELS`.
    """
    from scipy.ndimage import maximum_filter, uniform_filter

    from wsiheat.postprocess.lesions import smooth_heatmap

    prob = np.asarray(prob)
    tissue = np.asarray(tissue, bool)
    if prob.ndim != 2 or prob.shape != tissue.shape:
        raise ValueError(f"prob and tissue must be 2-D of one shape, got {prob.shape} and {tissue.shape}")
    q = np.where(tissue, np.nan_to_num(prob.astype(np.float64)), 0.0)
    ring = np.ones((3, 3), bool)
    ring[1, 1] = False
    feats = [q, np.minimum(q, maximum_filter(q, footprint=ring, mode="constant", cval=0.0))]
    feats += [smooth_heatmap(q, tissue, s) for s in FEATURE_SIGMAS]
    feats += [uniform_filter((q >= p).astype(np.float64), 3, mode="constant", cval=0.0) for p in FEATURE_LEVELS]
    out = np.stack(feats, axis=-1)
    out[~tissue] = 0.0
    return out


@dataclass(frozen=True)
class LesionScorer:
    """A fitted logistic regression over :data:`FEATURES`.

    Parameters
    ----------
    coef : sequence of float
        One weight per feature.
    intercept : float
    features : sequence of str
        Must be :data:`FEATURES` (the file records them so that a file from
        another version fails clearly).
    fitted : dict
        How it was fitted (slides, cells, regularisation, the heatmaps'
        model); recorded, not used.
    """

    coef: tuple[float, ...]
    intercept: float
    features: tuple[str, ...] = FEATURES
    fitted: dict = field(default_factory=dict, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "coef", tuple(float(c) for c in self.coef))
        object.__setattr__(self, "features", tuple(str(f) for f in self.features))
        object.__setattr__(self, "intercept", float(self.intercept))
        if self.features != FEATURES:
            raise ValueError(f"features {list(self.features)} are not this version's {list(FEATURES)}")
        if len(self.coef) != len(FEATURES):
            raise ValueError(f"coef has {len(self.coef)} values for {len(FEATURES)} features")
        if not all(math.isfinite(c) for c in self.coef + (self.intercept,)):
            raise ValueError("coef and intercept must be finite")

    def apply(self, prob: np.ndarray, tissue: np.ndarray) -> np.ndarray:
        """The lesion map: P(tumor | neighbourhood) on tissue cells, 0 elsewhere.

        Returns
        -------
        ndarray float64 (rows, cols), in [0, 1]
        """
        tissue = np.asarray(tissue, bool)
        z = neighbourhood_features(prob, tissue) @ np.asarray(self.coef) + self.intercept
        return np.where(tissue, 1.0 / (1.0 + np.exp(-np.clip(z, -50, 50))), 0.0)

    def to_dict(self) -> dict[str, Any]:
        """The JSON content of a scorer file."""
        return {"format": SCORER_FORMAT, "version": SCORER_VERSION, "features": list(self.features),
                "coef": list(self.coef), "intercept": self.intercept, "fitted": self.fitted}


def fit_lesion_scorer(maps: Sequence[tuple[np.ndarray, np.ndarray, np.ndarray]], c: float = 1.0,
                      fitted: dict | None = None) -> LesionScorer:
    """Fit a :class:`LesionScorer` on raw maps with known tumor cells.

    Parameters
    ----------
    maps : sequence of (prob, tissue, tumor)
        Per slide: the raw map, its tissue cells and the cells whose centre
        lies in tumor (bool, same shape). Only tissue cells are samples.
    c : float
        Inverse L2 regularisation strength (scikit-learn's ``C``).
    fitted : dict, optional
        Recorded in the scorer (what it was fitted on).

    Returns
    -------
    LesionScorer
        Logistic regression with balanced class weights.

    Raises
    ------
    ValueError
        No tissue cell, or only one class among them.
    """
    from sklearn.linear_model import LogisticRegression

    if c <= 0:
        raise ValueError(f"c must be > 0, got {c}")
    xs, ys = [], []
    for prob, tissue, tumor in maps:
        tissue = np.asarray(tissue, bool)
        tumor = np.asarray(tumor, bool)
        if tumor.shape != tissue.shape:
            raise ValueError(f"tumor cells {tumor.shape} and tissue {tissue.shape} differ in shape")
        xs.append(neighbourhood_features(prob, tissue)[tissue])
        ys.append(tumor[tissue])
    x = np.concatenate(xs) if xs else np.zeros((0, len(FEATURES)))
    y = np.concatenate(ys) if ys else np.zeros(0, bool)
    n_pos = int(y.sum())
    if n_pos == 0 or n_pos == len(y):
        raise ValueError(f"need tumor and normal tissue cells to fit, got {n_pos} tumor of {len(y)}")
    lr = LogisticRegression(C=float(c), class_weight="balanced", max_iter=2000).fit(x, y)
    info = {"c": float(c), "class_weight": "balanced", "cells": int(len(y)), "tumor_cells": n_pos,
            **(fitted or {})}
    return LesionScorer(tuple(lr.coef_[0]), float(lr.intercept_[0]), FEATURES, info)


def save_scorer(path: str | os.PathLike, scorer: LesionScorer) -> Path:
    """Write a scorer file atomically (JSON)."""
    path = Path(path)
    text = json.dumps(scorer.to_dict(), indent=2, allow_nan=False, default=str) + "\n"
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return path


def load_scorer(path: str | os.PathLike) -> LesionScorer:
    """Read a scorer file written by :func:`save_scorer`.

    Raises
    ------
    WsiheatError
        Missing, unreadable or not a scorer file (one line naming ``path``).
    """
    path = Path(path)
    try:
        d = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise WsiheatError(f"{path}: no such lesion scorer file") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise WsiheatError(f"{path}: not a lesion scorer file (cannot read JSON: {exc})") from None
    if not isinstance(d, dict) or d.get("format") != SCORER_FORMAT:
        raise WsiheatError(f"{path}: not a lesion scorer file (format is not {SCORER_FORMAT!r}; "
                           f"make one with `wsiheat evaluate fit-scorer`)")
    if d.get("version") != SCORER_VERSION:
        raise WsiheatError(f"{path}: lesion scorer version {d.get('version')!r}, this wsiheat reads "
                           f"{SCORER_VERSION}")
    try:
        return LesionScorer(tuple(d["coef"]), d["intercept"], tuple(d["features"]), dict(d.get("fitted") or {}))
    except (KeyError, TypeError, ValueError) as exc:
        raise WsiheatError(f"{path}: bad lesion scorer ({exc})") from None
