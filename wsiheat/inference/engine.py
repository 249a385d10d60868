"""A model loaded once and run on many slides: :class:`HeatmapModel`.

The engine holds the Keras model, its wsiheat metadata (window geometry) and
one compiled inference function per batch size; every slide it is given
reuses them. The function comes from a backend (:mod:`wsiheat.inference.backends`):
TensorFlow or OpenVINO.

Example
-------
>>> model = HeatmapModel.load("model.keras")                    # doctest: +SKIP
>>> hm = model.predict_slide("test_001.tif")                     # doctest: +SKIP
>>> hm.score, hm.lesions[:3]                                     # doctest: +SKIP
>>> hm.save("results/")                                          # doctest: +SKIP
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import TYPE_CHECKING, Callable

import numpy as np

from wsiheat import defaults
from wsiheat.errors import ModelError
from wsiheat.inference.outputs import Heatmap
from wsiheat.inference.predict import check_model, make_predict_fn, spec_from_metadata

if TYPE_CHECKING:  # pragma: no cover
    from wsiheat.wsi.stain import StainNormalizer

log = logging.getLogger(__name__)


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
                 batch_size: int = defaults.PREDICT_BATCH_SIZE, tta: bool = False, backend: str = "tensorflow",
                 precision: str | None = None, reason: str = "", requests: int = 0):
        if batch_size < 1:
            raise ModelError(f"batch size must be >= 1, got {batch_size}")
        if backend not in ("tensorflow", "openvino"):
            raise ModelError(f"backend {backend!r}: choose tensorflow or openvino")
        self.model = model
        self.metadata = dict(metadata)
        self.path = None if path is None else str(path)
        self.batch_size = int(batch_size)
        self.tta = bool(tta)
        self.backend = backend
        self.requests = int(requests)
        self.spec = spec_from_metadata(self.metadata)
        if backend == "tensorflow":
            from wsiheat.models.model import model_precision

            check_model(model, self.spec, self.path or "model")
            self.precision = model_precision(model)
        else:
            from wsiheat.inference.backends import openvino_input_shape

            got, want = openvino_input_shape(model)[1:], (self.spec.towers, self.spec.window, self.spec.window, 3)
            if got != want:
                raise ModelError(f"{self.path or 'model'}: the OpenVINO model takes {got}, its metadata says {want}")
            self.precision = precision or "float32"
        #: Why this backend and precision were chosen (``"auto: CPU has avx512_bf16"``...).
        self.reason = reason
        self._predict: Callable[[np.ndarray], np.ndarray] | None = None

    @classmethod
    def load(cls, path: str | os.PathLike, *, backend: str = "auto", precision: str = "auto",
             batch_size: int = defaults.PREDICT_BATCH_SIZE, tta: bool = False, requests: int = 0) -> HeatmapModel:
        """Load a saved wsiheat model (``.keras``), checking its metadata before TensorFlow loads.

        Parameters
        ----------
        backend : {"auto", "tensorflow", "openvino"}
            Inference backend (:mod:`wsiheat.inference.backends`); ``auto``:
            TensorFlow on a GPU, OpenVINO on CPU when installed.
        precision : {"auto", "float32", "mixed_bfloat16", "mixed_float16"}
            Compute precision; ``auto``: ``mixed_bfloat16`` with OpenVINO on
            CPUs with AMX or AVX512-BF16, else ``float32``.
        requests : int
            OpenVINO only: inference requests each batch is split over (0: auto,
            one per OpenVINO stream; 1: one synchronous request on all cores;
            see :class:`wsiheat.inference.backends.OpenVINOPredict`).
        """
        from wsiheat.inference.backends import load_openvino_model, resolve_backend, resolve_precision
        from wsiheat.models.model import load_model, read_metadata

        metadata = read_metadata(path)  # a foreign file fails fast
        backend, why_backend = resolve_backend(backend)
        precision, why_precision = resolve_precision(precision, backend)
        reason = f"backend {why_backend}; precision {why_precision}"
        if backend == "openvino":
            spec = spec_from_metadata(metadata)
            ov_model, source = load_openvino_model(path, spec.towers, spec.window)
            log.debug("%s: OpenVINO model (%s), %s", path, source, reason)
            return cls(ov_model, metadata, Path(path), batch_size=batch_size, tta=tta, backend=backend,
                       precision=precision, reason=reason, requests=requests)
        model, metadata = load_model(path, precision=precision)
        return cls(model, metadata, Path(path), batch_size=batch_size, tta=tta, reason=reason)

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
            if self.backend == "openvino":
                from wsiheat.inference.backends import OpenVINOPredict

                self._predict = OpenVINOPredict(self.model, self.batch_size, self.precision, self.tta, self.requests)
            else:
                self._predict = make_predict_fn(self.model, self.spec, self.batch_size, self.tta)
        return self._predict

    def describe(self) -> str:
        """The backend and precision in words: ``"openvino mixed_bfloat16 (backend auto: ...)"``."""
        return f"{self.backend} {self.precision}" + (f" ({self.reason})" if self.reason else "")

    @property
    def stain(self) -> StainNormalizer | None:
        """The model's stain normaliser (:class:`wsiheat.wsi.stain.StainNormalizer`), or None."""
        from wsiheat.wsi.stain import normalizer_from_dict

        return normalizer_from_dict(self.metadata.get("stain"), self.path or "model")

    def predict_windows(self, windows: np.ndarray, stain_source: dict | None = None) -> np.ndarray:
        """Tumor probabilities of windows, uint8 ``(N, T, W, W, 3)`` -> float32 ``(N,)``.

        Windows are taken as they are. For a model trained with stain
        normalisation, give ``stain_source``: the statistics of the slide the
        windows come from (``model.stain.source(sample_of_its_windows)``, or
        ``Heatmap.summary["stain"]["source"]``), and they are normalised as in
        training; :meth:`predict_slide` does all of that itself.
        """
        x = np.asarray(windows)
        want = (self.spec.towers, self.spec.window, self.spec.window, 3)
        if x.ndim != 5 or x.shape[1:] != want or x.dtype != np.uint8:
            raise ModelError(f"windows of shape {x.shape} ({x.dtype}) do not fit the model: "
                             f"need uint8 (N, {', '.join(map(str, want))})")
        if stain_source is not None:
            norm = self.stain
            if norm is None:
                raise ModelError(f"{self.path or 'model'}: a stain source was given, but the model has no stain normaliser")
            x = norm.transform(x, stain_source)
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

        # the compiled function depends on the window shape only, not on the towers' downsamples
        model_path = options.pop("model_path", self.path)  # as recorded in the outputs
        return compute_heatmap(slide, self.model, self.metadata, name, batch_size=self.batch_size,
                               tta=self.tta, model_path=model_path, predict=self.predict_fn(),
                               backend=self.backend, precision=self.precision, precision_reason=self.reason,
                               **options)
