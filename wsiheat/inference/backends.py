"""Inference backends of :class:`wsiheat.inference.engine.HeatmapModel`: TensorFlow and OpenVINO.

A backend turns a saved wsiheat model into one function on fixed-size uint8
batches, ``(batch_size, T, W, W, 3) -> float32 (batch_size,)``; the heatmap
pipeline and ``evaluate patches`` only ever call that function.

* ``tensorflow``: the Keras model in a compiled ``tf.function``
  (:func:`wsiheat.inference.predict.make_predict_fn`), in the precisions of
  :data:`wsiheat.models.model.INFER_PRECISIONS`.
* ``openvino`` (optional extra, ``pip install wsiheat[openvino]``): the same
  graph converted once by OpenVINO from the saved ``.keras`` file, cached
  next to it as ``MODEL.keras.openvino-HASH.xml``/``.bin`` where ``HASH`` is
  the SHA-256 of the model file (a changed model never uses a stale cache),
  run by the OpenVINO CPU plugin. ``mixed_bfloat16`` is its
  ``INFERENCE_PRECISION_HINT=bf16`` (weights stay float32 in the cache).

``auto`` choices (:func:`resolve_backend`, :func:`resolve_precision`): the
backend is TensorFlow when TensorFlow sees a GPU, else OpenVINO when it is
installed, else TensorFlow; the precision is ``mixed_bfloat16`` for OpenVINO
on CPUs with AMX or AVX512-BF16 instructions and ``float32`` otherwise.
"""

from __future__ import annotations

import importlib.util
import logging
import os
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Callable

import numpy as np

from wsiheat.errors import ModelError
from wsiheat.models.model import INFER_PRECISIONS

if TYPE_CHECKING:  # pragma: no cover
    import keras
    import openvino

log = logging.getLogger(__name__)

#: Names accepted for ``backend``.
BACKENDS = ("auto", "tensorflow", "openvino")
#: Names accepted for ``precision``: ``auto`` or one of :data:`INFER_PRECISIONS`.
PRECISIONS = ("auto",) + INFER_PRECISIONS
#: CPU flags (``/proc/cpuinfo``) of bf16 matrix instructions.
BF16_FLAGS = ("amx_bf16", "avx512_bf16")
#: Bumped when the conversion changes: older caches are then never used.
OPENVINO_CACHE_VERSION = 1
_OV_PRECISION = {"float32": "f32", "mixed_bfloat16": "bf16"}


def cpu_flags(path: str = "/proc/cpuinfo") -> set[str]:
    """The CPU's feature flags (first ``flags`` line of ``/proc/cpuinfo``); empty when unknown."""
    try:
        with open(path, encoding="ascii", errors="replace") as f:
            for line in f:
                if line.startswith("flags"):
                    return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


def bf16_flags(flags: set[str] | None = None) -> list[str]:
    """The bf16 matrix-instruction flags this CPU has (of :data:`BF16_FLAGS`)."""
    flags = cpu_flags() if flags is None else flags
    return [f for f in BF16_FLAGS if f in flags]


def openvino_installed() -> bool:
    """True when the ``openvino`` package can be imported."""
    return importlib.util.find_spec("openvino") is not None


def gpu_visible() -> bool:
    """True when TensorFlow sees a GPU."""
    import tensorflow as tf

    return bool(tf.config.list_physical_devices("GPU"))


def resolve_backend(backend: str = "auto") -> tuple[str, str]:
    """The backend to use and why: ``(name, reason)``.

    ``auto``: TensorFlow on a GPU, else OpenVINO when installed, else TensorFlow.
    """
    if backend not in BACKENDS:
        raise ModelError(f"backend {backend!r}: choose {', '.join(BACKENDS)}")
    if backend == "openvino" and not openvino_installed():
        raise ModelError("backend openvino: the openvino package is not installed "
                         "(pip install 'wsiheat[openvino]')")
    if backend != "auto":
        return backend, "asked for"
    if gpu_visible():
        return "tensorflow", "auto: a GPU is visible"
    if openvino_installed():
        return "openvino", "auto: CPU, openvino installed"
    return "tensorflow", "auto: openvino not installed"


def resolve_precision(precision: str, backend: str, flags: set[str] | None = None) -> tuple[str, str]:
    """The compute precision for ``backend`` and why: ``(name, reason)``.

    ``auto``: ``mixed_bfloat16`` for OpenVINO on a CPU with AMX or
    AVX512-BF16, else ``float32`` (TensorFlow: always ``float32``; ask for
    ``mixed_bfloat16`` or ``mixed_float16`` explicitly).
    """
    if precision not in PRECISIONS:
        raise ModelError(f"precision {precision!r}: choose {', '.join(PRECISIONS)}")
    if backend == "openvino":
        if precision == "auto":
            have = bf16_flags(flags)
            if have:
                return "mixed_bfloat16", f"auto: CPU has {'/'.join(have)}"
            return "float32", "auto: CPU has no amx_bf16/avx512_bf16"
        if precision not in _OV_PRECISION:
            raise ModelError(f"precision {precision} with backend openvino: choose "
                             f"{', '.join(_OV_PRECISION)} (mixed_float16 is for GPUs, with tensorflow)")
        return precision, "asked for"
    if precision == "auto":
        return "float32", "auto: tensorflow default"
    return precision, "asked for"


# --------------------------------------------------------------------------- OpenVINO
def model_digest(path: str | os.PathLike) -> str:
    """SHA-256 (hex) of a model file and the conversion version: the OpenVINO cache key."""
    from wsiheat.fileio import sha256_file

    return sha256_file(path, prefix=f"wsiheat-openvino-{OPENVINO_CACHE_VERSION}\n".encode())


def openvino_cache_path(model_path: str | os.PathLike, digest: str) -> Path:
    """Where the converted model of ``model_path`` is cached: ``MODEL.keras.openvino-HASH16.xml``."""
    p = Path(model_path)
    return p.with_name(f"{p.name}.openvino-{digest[:16]}.xml")


def convert_to_openvino(keras_model: keras.Model, towers: int, window: int) -> openvino.Model:
    """An OpenVINO model of a wsiheat Keras model: uint8 ``(N, T, W, W, 3)`` -> float32 ``(N,)``."""
    import openvino as ov
    import tensorflow as tf

    @tf.function(input_signature=[tf.TensorSpec((None, towers, window, window, 3), tf.uint8)])
    def fn(x):
        return tf.reshape(tf.cast(keras_model(x, training=False), tf.float32), [-1])

    return ov.convert_model(fn)


def load_openvino_model(model_path: str | os.PathLike, towers: int, window: int,
                        keras_loader: Callable[[], object] | None = None) -> openvino.Model:
    """The OpenVINO model of a saved ``.keras`` file, converted once and cached beside it.

    The cache (:func:`openvino_cache_path`) is named after the SHA-256 of the
    model file, so it is used only for that exact file; other (stale) caches of
    the same model name are removed when a new one is written. When the folder
    is not writable the model is converted in memory on every load.

    Returns
    -------
    (openvino.Model, str)
        The model and where it came from: ``"cache"`` or ``"converted"``.
    """
    import openvino as ov

    model_path = Path(model_path)
    core = ov.Core()
    xml = openvino_cache_path(model_path, model_digest(model_path))
    if xml.exists() and xml.with_suffix(".bin").exists():
        try:
            return core.read_model(str(xml)), "cache"
        except RuntimeError as exc:  # a damaged cache: convert again
            log.warning("%s: unreadable OpenVINO cache, converting again (%s)", xml, str(exc).splitlines()[0])
    if keras_loader is None:
        from wsiheat.models.model import load_model

        def keras_loader():
            return load_model(model_path)[0]
    ov_model = convert_to_openvino(keras_loader(), towers, window)
    try:
        _save_atomically(ov_model, xml)
        for old in model_path.parent.glob(f"{model_path.name}.openvino-*.xml"):
            if old != xml:
                for stale in (old, old.with_suffix(".bin")):
                    stale.unlink(missing_ok=True)
        log.debug("%s: OpenVINO model cached in %s", model_path, xml)
    except OSError as exc:
        log.warning("%s: cannot cache the OpenVINO model (%s); converting on every load", xml, exc)
    return ov_model, "converted"


def _save_atomically(ov_model, xml: Path) -> None:
    """Write ``xml`` and its ``.bin``; the ``.xml`` (read first) appears last, complete."""
    import openvino as ov

    tmp = Path(tempfile.mkdtemp(prefix=".openvino-", dir=xml.parent))
    try:
        ov.save_model(ov_model, str(tmp / "m.xml"), compress_to_fp16=False)  # float32 weights
        os.replace(tmp / "m.bin", xml.with_suffix(".bin"))
        os.replace(tmp / "m.xml", xml)
    finally:
        for f in tmp.iterdir():
            f.unlink(missing_ok=True)
        tmp.rmdir()


def openvino_input_shape(ov_model: openvino.Model) -> tuple:
    """The input shape of an OpenVINO model, ``None`` for dynamic dimensions."""
    ps = ov_model.inputs[0].get_partial_shape()
    return tuple(d.get_length() if d.is_static else None for d in ps)


class OpenVINOPredict:
    """A compiled OpenVINO model on fixed-size batches, called like a :func:`make_predict_fn` function.

    Parameters
    ----------
    ov_model : openvino.Model
        From :func:`load_openvino_model`.
    batch_size : int
        Windows per call (the model is compiled for this static shape).
    precision : {"float32", "mixed_bfloat16"}
        ``INFERENCE_PRECISION_HINT`` f32 or bf16.
    tta : bool
        Mean over the 8 rotations/flips (numpy views, 8 requests).
    requests : int
        1: one synchronous request using every core (``PERFORMANCE_HINT=LATENCY``).
        N > 1: ``PERFORMANCE_HINT=THROUGHPUT``, each batch split over N
        requests of an ``AsyncInferQueue`` run at once (measured faster,
        see docs/benchmarks.md). 0 (default): N = OpenVINO's optimal number
        of requests for that hint (about one per stream), at least 8 windows each.
    threads : int, optional
        ``INFERENCE_NUM_THREADS`` (default: OpenVINO's, all cores).
    config : dict, optional
        More OpenVINO CPU properties (e.g. ``{"ENABLE_CPU_PINNING": "NO"}``).
    stream : bool
        Offer :meth:`submit`: the heatmap pipeline then hands each batch over and
        goes on reading while up to ``2 * requests`` requests run, each stream
        taking the next request as soon as it is free (no wait for a whole
        batch; measured in docs/benchmarks.md). False: only ``__call__``.
    """

    def __init__(self, ov_model, batch_size: int, precision: str = "float32", tta: bool = False,
                 requests: int = 0, threads: int | None = None, config: dict | None = None,
                 stream: bool = True):
        import openvino as ov

        if precision not in _OV_PRECISION:
            raise ModelError(f"precision {precision} with backend openvino: choose {', '.join(_OV_PRECISION)}")
        self.batch_size, self.tta = int(batch_size), bool(tta)
        self.precision = precision
        extra = {k: str(v) for k, v in (config or {}).items()}
        if requests == 0:  # auto: as many requests as OpenVINO's THROUGHPUT hint wants, >= 8 windows each
            probe = self._compile(ov_model, 2, threads, extra, limit=False)
            requests = int(probe.get_property("OPTIMAL_NUMBER_OF_INFER_REQUESTS"))
            requests = max(1, min(requests, self.batch_size // 8))
        if requests < 1 or requests > self.batch_size:
            raise ModelError(f"openvino requests {requests}: need 1 to the batch size {self.batch_size}")
        self.requests = int(requests)
        self.compiled = self._compile(ov_model, self.requests, threads, extra)
        self._sub = sub = -(-self.batch_size // self.requests)  # ceil
        if self.requests == 1:
            self._request = self.compiled.create_infer_request()
        else:
            self._queue = ov.AsyncInferQueue(self.compiled, self.requests)
            self._queue.set_callback(self._done)
            self._out = np.empty(self.requests * sub, np.float32)
        self.streaming = bool(stream) and not self.tta
        self._stream_queue = None
        self._stream_errors: list[str] = []

    @property
    def submit(self) -> Callable[[np.ndarray, np.ndarray, np.ndarray, int], None]:
        """Start scoring a batch without waiting; only when ``streaming`` (else AttributeError).

        ``submit(batch, where, out, n)`` copies the first ``n`` windows of
        ``batch`` (``n`` <= ``batch_size``) into free requests and returns;
        when each request finishes, its probabilities are written to
        ``out[where[i]]``. :meth:`wait` blocks until every submitted window is
        written. ``batch`` and ``where`` may be reused as soon as it returns.
        """
        if not self.streaming:
            raise AttributeError("submit")
        return self._submit

    def _submit(self, batch: np.ndarray, where: np.ndarray, out: np.ndarray, n: int) -> None:
        import openvino as ov

        if self._stream_queue is None:
            self._stream_queue = ov.AsyncInferQueue(self.compiled, 2 * self.requests)
            self._stream_queue.set_callback(self._stream_done)
        sub = self._sub
        for i in range(0, n, sub):
            k = min(sub, n - i)
            x = batch[i:i + sub]
            if len(x) < sub:  # the last, short batch: pad to the compiled shape
                x = np.concatenate([x, np.zeros((sub - len(x),) + x.shape[1:], x.dtype)])
            self._stream_queue.start_async([np.ascontiguousarray(x)], (out, where[i:i + k].copy(), k))

    def _stream_done(self, request, userdata) -> None:
        out, where, k = userdata
        try:
            out[where] = request.get_output_tensor(0).data.reshape(-1)[:k]
        except Exception as exc:  # noqa: BLE001 - raised again by wait(), in the caller's thread
            self._stream_errors.append(f"{type(exc).__name__}: {exc}")

    def wait(self) -> None:
        """Block until every window handed to :meth:`submit` has its probability."""
        if self._stream_queue is not None:
            self._stream_queue.wait_all()
        if self._stream_errors:
            msg, self._stream_errors = self._stream_errors[0], []
            raise ModelError(f"openvino inference failed: {msg}")

    def _compile(self, ov_model, requests: int, threads: int | None, extra: dict, limit: bool = True):
        import openvino as ov

        model = ov_model.clone()
        model.reshape([-(-self.batch_size // requests)] + list(openvino_input_shape(ov_model))[1:])
        config = {"INFERENCE_PRECISION_HINT": _OV_PRECISION[self.precision],
                  "PERFORMANCE_HINT": "LATENCY" if requests == 1 else "THROUGHPUT"}
        if requests > 1 and limit:
            config["PERFORMANCE_HINT_NUM_REQUESTS"] = str(requests)
        if threads:
            config["INFERENCE_NUM_THREADS"] = str(int(threads))
        config.update(extra)
        return ov.Core().compile_model(model, "CPU", config)

    def _done(self, request, i: int) -> None:
        self._out[i * self._sub:(i + 1) * self._sub] = request.get_output_tensor(0).data.reshape(-1)

    def _run(self, x: np.ndarray) -> np.ndarray:
        if self.requests == 1:
            return np.array(self._request.infer([x])[0], np.float32, copy=True).reshape(-1)
        pad = self.requests * self._sub - len(x)
        if pad:
            x = np.concatenate([x, np.zeros((pad,) + x.shape[1:], x.dtype)])
        for i in range(self.requests):
            self._queue.start_async([np.ascontiguousarray(x[i * self._sub:(i + 1) * self._sub])], i)
        self._queue.wait_all()
        return self._out[:self.batch_size].copy()

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        from wsiheat.inference.predict import dihedral

        if not self.tta:
            return self._run(np.ascontiguousarray(batch))
        views = [dihedral(batch, k, flip) for flip in (False, True) for k in range(4)]
        return (sum(self._run(np.ascontiguousarray(v)) for v in views) / 8.0).astype(np.float32)
