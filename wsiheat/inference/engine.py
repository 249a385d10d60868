"""A model loaded once and run on many slides: :class:`HeatmapModel`.

The engine holds the Keras model, its wsiheat metadata (window geometry) and
one compiled inference function per batch size; every slide it is given
reuses them. It is the place for other inference backends.

Example
-------
>>> model = HeatmapModel.load("model.keras")                    # doctest: +SKIP
>>> hm = model.predict_slide("test_001.tif")                     # doctest: +SKIP
>>> hm.score, hm.lesions[:3]                                     # doctest: +SKIP
>>> hm.save("results/")                                          # doctest: +SKIP
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Callable

import numpy as np

from wsiheat import defaults
from wsiheat.errors import ModelError
from wsiheat.inference.outputs import Heatmap
from wsiheat.inference.predict import check_model, make_predict_fn, spec_from_metadata


class HeatmapModel:
    """A trained wsiheat model ready to predict windows and slides.

    Parameters
    ----------
    model : keras.Model
        Takes uint8 ``(B, T, W, W, 3)`` windows, returns ``(B, 1)`` probabilities.
    metadata : dict
        The model's wsiheat metadata (``window``, ``center``, ``stride``, ``downsamples``, ...).
    path : path-like, optional
        Where it was loaded from (recorded in the outputs).
    batch_size : int
        Windows per model call.
    tta : bool
        Average the 8 rotations/flips of every window (8x slower).
    """

    def __init__(self, model, metadata: dict, path: str | os.PathLike | None = None, *,
                 batch_size: int = defaults.PREDICT_BATCH_SIZE, tta: bool = False):
        if batch_size < 1:
            raise ModelError(f"batch size must be >= 1, got {batch_size}")
        self.model = model
        self.metadata = dict(metadata)
        self.path = None if path is None else str(path)
        self.batch_size = int(batch_size)
        self.tta = bool(tta)
        self.spec = spec_from_metadata(self.metadata)
        check_model(model, self.spec, self.path or "model")
        self._predict: Callable[[np.ndarray], np.ndarray] | None = None

    @classmethod
    def load(cls, path: str | os.PathLike, *, precision: str = "float32",
             batch_size: int = defaults.PREDICT_BATCH_SIZE, tta: bool = False) -> HeatmapModel:
        """Load a saved wsiheat model (``.keras``), checking its metadata before TensorFlow loads.

        Parameters
        ----------
        precision : {"float32", "mixed_bfloat16", "mixed_float16"}
            Compute precision (:data:`wsiheat.models.model.INFER_PRECISIONS`).
        """
        from wsiheat.models.model import load_model, read_metadata

        read_metadata(path)  # a foreign file fails fast
        model, metadata = load_model(path, precision=precision)
        return cls(model, metadata, Path(path), batch_size=batch_size, tta=tta)

    @property
    def towers(self) -> int:
        """Magnifications (towers) per window."""
        return self.spec.towers

    @property
    def window(self) -> int:
        """Window side in pixels."""
        return self.spec.window

    def predict_fn(self) -> Callable[[np.ndarray], np.ndarray]:
        """The compiled function on full batches, made once: uint8 ``(batch_size, T, W, W, 3)`` -> ``(batch_size,)``."""
        if self._predict is None:
            self._predict = make_predict_fn(self.model, self.spec, self.batch_size, self.tta)
        return self._predict

    def predict_windows(self, windows: np.ndarray) -> np.ndarray:
        """Tumor probabilities of windows, uint8 ``(N, T, W, W, 3)`` -> float32 ``(N,)``."""
        x = np.asarray(windows)
        want = (self.spec.towers, self.spec.window, self.spec.window, 3)
        if x.ndim != 5 or x.shape[1:] != want or x.dtype != np.uint8:
            raise ModelError(f"windows of shape {x.shape} ({x.dtype}) do not fit the model: "
                             f"need uint8 (N, {', '.join(map(str, want))})")
        fn, b = self.predict_fn(), self.batch_size
        out = np.empty(len(x), np.float32)
        for s in range(0, len(x), b):
            chunk = x[s:s + b]
            if len(chunk) < b:  # the compiled function takes full batches: pad the last one
                chunk = np.concatenate([chunk, np.zeros((b - len(chunk),) + want, np.uint8)])
            out[s:s + b] = fn(chunk)[:min(b, len(x) - s)]
        return out

    def predict_slide(self, slide: str | os.PathLike, name: str | None = None, **options) -> Heatmap:
        """The heatmap of one slide, in memory (see :func:`wsiheat.inference.heatmap.compute_heatmap`).

        ``options`` are those of ``compute_heatmap`` (``tissue_threshold``,
        ``smooth``, ``lesion_threshold``, ``lesion_scorer``, ``progress``, ...).
        Call :meth:`Heatmap.save` on the result to write the nine output files.
        """
        from wsiheat.inference.heatmap import compute_heatmap

        ds = options.get("downsamples")
        predict = self.predict_fn() if not ds else None  # other downsamples: same shapes, fresh spec
        return compute_heatmap(slide, self.model, self.metadata, name, batch_size=self.batch_size,
                               tta=self.tta, model_path=self.path, predict=predict, **options)
