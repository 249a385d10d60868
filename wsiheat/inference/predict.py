"""Running a model on windows: geometry from the model's metadata, tissue cells, batches, TTA.

:func:`spec_from_metadata` turns a model's metadata into the window geometry for a slide;
:func:`tissue_cells` picks the heatmap cells on tissue; :func:`make_predict_fn` compiles an
inference function on fixed-size uint8 batches (optionally averaging the 8 dihedral views);
:func:`predict_cells` reads tiles of cells in background threads while the model runs;
:func:`predict_patches` runs a model over a patches file.
"""

from __future__ import annotations

import collections
import os
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

import numpy as np

from wsiheat import defaults
from wsiheat.errors import WsiheatError
from wsiheat.patches.sampling import Grid, WindowSpec, read_windows
from wsiheat.wsi.slide import DOWNSAMPLE_TOLERANCE, Slide

if TYPE_CHECKING:  # pragma: no cover
    import keras


# --------------------------------------------------------------------------- geometry
def spec_from_metadata(metadata: dict, slide: Slide | None = None,
                       downsamples: tuple[float, ...] | None = None) -> WindowSpec:
    """The inference window spec of a model: its towers, with stride = centre.

    Parameters
    ----------
    metadata : dict
        The model's wsiheat metadata (:func:`wsiheat.models.model.read_metadata`).
    slide : Slide, optional
        When given, the towers are checked against it: a tower finer than
        level 0 is an error (the slide lacks that magnification); a tower that
        is not a pyramid level is resampled from the nearest finer level.
    downsamples : tuple of float, optional
        Override the metadata's downsamples (relative to level 0).

    Notes
    -----
    When the metadata has ``mpps`` (µm/px of each tower, recorded when the
    training slides had µm/px) and the slide has µm/px, the towers are read
    at ``mpps / slide.mpp``, so a model trained at one scan resolution reads
    other scanners' slides at the same physical scale. Otherwise the
    metadata's ``downsamples`` are used as they are.
    """
    mpps = metadata.get("mpps")
    if downsamples is None and mpps and slide is not None and slide.mpp:
        # the model knows the physical resolution of its towers: match it on this slide
        downsamples = tuple(float(m) / slide.mpp for m in mpps)
    try:
        ds = tuple(float(d) for d in (downsamples if downsamples is not None else metadata["downsamples"]))
        window, center = int(metadata["window"]), int(metadata["center"])
        levels = tuple(metadata.get("levels") or ())
    except (KeyError, TypeError, ValueError) as exc:
        raise WsiheatError(f"model metadata: bad geometry ({exc})") from None
    towers = int(metadata.get("towers", len(ds)))
    if len(ds) != towers:
        raise WsiheatError(f"model metadata: {towers} towers but {len(ds)} downsamples {list(ds)}")
    spec = WindowSpec(downsamples=ds, window=window, center=center, stride=center,
                      levels=levels if downsamples is None else ())
    if slide is not None:
        for d in ds:
            if d < 1 - DOWNSAMPLE_TOLERANCE:
                raise WsiheatError(
                    f"{slide.path}: the model needs downsample {d:g} (finer than level 0); the slide "
                    f"has downsamples {', '.join(f'{x:g}' for x in slide.level_downsamples)}")
    return spec


def resampled_towers(slide: Slide, spec: WindowSpec) -> list[float]:
    """Tower downsamples that are not pyramid levels of ``slide`` (read by resampling)."""
    out = []
    for d in spec.downsamples:
        if not any(abs(d - l) <= DOWNSAMPLE_TOLERANCE * d for l in slide.level_downsamples):
            out.append(d)
    return out


def tissue_cells(slide: Slide, spec: WindowSpec, threshold: float = 0.0,
                 mask_downsample: float = defaults.TISSUE_MASK_DOWNSAMPLE, progress: bool = False
                 ) -> tuple[Grid, np.ndarray]:
    """The heatmap grid and its tissue cells.

    Parameters
    ----------
    threshold : float
        A cell is tissue when the tissue fraction of its centre box (``C x C``
        tower-0 pixels) is greater than this (0: any tissue).
    progress : bool
        Show a tqdm bar of the grid rows scanned.

    Returns
    -------
    grid : Grid
    tissue : ndarray of bool, shape (grid.n_rows, grid.n_cols)
    """
    from wsiheat.patches.sampling import rows_bar
    from wsiheat.wsi.tissue import BandedTissueMask, cell_fractions

    grid = Grid.for_slide(slide.dimensions, spec)
    # block by block, band of cell rows by band: one bool per cell, nothing slide-sized
    tm = BandedTissueMask(slide, downsample=min(mask_downsample, spec.cell0))
    tissue = np.zeros((grid.n_rows, grid.n_cols), bool)
    with rows_bar(grid.n_rows, slide.name, progress) as bar:
        for r0, frac in cell_fractions(tm, spec.cell0, tissue.shape, spec.center * spec.downsamples[0]):
            tissue[r0:r0 + len(frac)] = frac > threshold
            bar.update(len(frac))
    return grid, tissue


def tiles_of_cells(rows: np.ndarray, cols: np.ndarray, tile_cells: int) -> list[np.ndarray]:
    """Group cells into square tiles of ``tile_cells`` x ``tile_cells`` cells.

    Returns index arrays into ``rows``/``cols``, tiles in row-major order
    (block rows top to bottom), cells row-major inside a tile.
    """
    rows, cols = np.asarray(rows), np.asarray(cols)
    if len(rows) == 0:
        return []
    tr, tc = rows // tile_cells, cols // tile_cells
    order = np.lexsort((cols, rows, tc, tr))
    key = (tr * (int(tc.max()) + 1) + tc)[order]
    splits = np.flatnonzero(np.diff(key)) + 1
    return np.split(order, splits)


# --------------------------------------------------------------------------- model
def check_model(model: keras.Model, spec: WindowSpec, path: str | os.PathLike = "model") -> None:
    """Check a Keras model takes ``(B, T, W, W, 3)`` and returns ``(B, 1)``."""
    try:
        ishape = tuple(model.inputs[0].shape)[1:]
        oshape = tuple(model.outputs[0].shape)[1:]
    except (AttributeError, IndexError, TypeError):
        return  # subclassed model without symbolic shapes: trust the metadata
    want = (spec.towers, spec.window, spec.window, 3)
    if len(ishape) != 4 or any(a is not None and a != b for a, b in zip(ishape, want)):
        raise WsiheatError(f"{path}: the model takes inputs shaped {ishape}, but its metadata says {want}")
    if oshape not in ((1,), (None,)):
        raise WsiheatError(f"{path}: the model returns {oshape} per window, expected (1,) tumor probability")


def _rot90(x, k: int):
    """Rotate a (B, T, H, W, C) tensor by k * 90 degrees in the (H, W) plane."""
    import tensorflow as tf

    for _ in range(k % 4):
        x = tf.reverse(tf.transpose(x, [0, 1, 3, 2, 4]), axis=[3])
    return x


def dihedral(x: np.ndarray, k: int, flip: bool) -> np.ndarray:
    """The numpy twin of the TTA transforms: optional horizontal flip, then k x 90° rotation.

    ``x`` is (B, T, H, W, C); every tower gets the same transform.
    """
    if flip:
        x = x[:, :, :, ::-1]
    for _ in range(k % 4):
        x = np.swapaxes(x, 2, 3)[:, :, :, ::-1]
    return x


def make_predict_fn(model: keras.Model, spec: WindowSpec, batch_size: int, tta: bool = False, jit_compile: bool = False
                    ) -> Callable[[np.ndarray], np.ndarray]:
    """A compiled inference function on fixed-size uint8 batches.

    ``jit_compile``: compile with XLA (measured slower than the default on
    CPU, see docs/benchmarks.md).

    Returns
    -------
    callable
        ``f(batch uint8 (batch_size, T, W, W, 3)) -> float32 (batch_size,)``;
        with ``tta`` the mean over the 8 rotations/flips (same transform for
        every tower).
    """
    import tensorflow as tf

    try:
        in_dtype = tf.as_dtype(model.inputs[0].dtype)
    except (AttributeError, IndexError, TypeError):
        in_dtype = tf.uint8
    shape = (batch_size, spec.towers, spec.window, spec.window, 3)

    def run(x):
        y = model(x if in_dtype == tf.uint8 else tf.cast(x, in_dtype), training=False)
        return tf.reshape(tf.cast(y, tf.float32), [batch_size])

    # plain Python control flow over constants (tta, the 8 views): nothing for AutoGraph to convert
    @tf.function(input_signature=[tf.TensorSpec(shape, tf.uint8)], jit_compile=jit_compile or None, autograph=False)
    def fn(x):
        if not tta:
            return run(x)
        outs = []
        for flip in (False, True):
            xf = tf.reverse(x, axis=[3]) if flip else x
            for k in range(4):
                outs.append(run(_rot90(xf, k)))
        return tf.add_n(outs) / 8.0

    def predict(batch: np.ndarray) -> np.ndarray:
        return fn(batch).numpy()

    return predict


def _shared_cache(slide: Slide):
    """One OpenSlide tile cache (OpenSlide >= 4.0) for the reader threads' handles, or None."""
    try:
        import openslide

        return openslide.OpenSlideCache(64 << 20) if slide.is_openslide else None
    except (AttributeError, openslide.OpenSlideError):
        return None


def predict_cells(slide: Slide, spec: WindowSpec, centers0: np.ndarray, tiles: list[np.ndarray],
                  predict: Callable[[np.ndarray], np.ndarray], batch_size: int, workers: int = 2,
                  progress: Callable[[int], None] | None = None, own_handles: bool = False,
                  transform: Callable[[np.ndarray], np.ndarray] | None = None) -> np.ndarray:
    """Probabilities of windows centred on ``centers0``, read tile by tile in background threads.

    Parameters
    ----------
    centers0 : ndarray (K, 2)
        Level-0 centres of all cells to evaluate.
    tiles : list of index arrays
        Groups of neighbouring cells (:func:`tiles_of_cells`), each read with
        one region per tower.
    predict : callable
        From :func:`make_predict_fn` (or a backend of
        :mod:`wsiheat.inference.backends`) with the same ``batch_size``. One
        with a ``submit`` method (:class:`~wsiheat.inference.backends.OpenVINOPredict`)
        is handed each batch without waiting, and ``predict.wait()`` is
        called before returning.
    workers : int
        Reader threads (OpenSlide and OpenCV release the GIL); up to
        ``2 * workers`` tiles are read ahead.
    progress : callable, optional
        Called with the number of windows done after each batch.
    own_handles : bool
        Each reader thread reads through its own :class:`Slide` (opened on
        its first tile; their OpenSlide handles share one tile cache, their
        direct tile reads keep a cache each) instead of all sharing
        ``slide``; measured slower on 2 cores (docs/benchmarks.md, reader
        ceiling), so off by default.
    transform : callable, optional
        Applied to each tile's windows in the reader thread, before the model
        (the slide's stain normalisation, :class:`wsiheat.inference.stain.WindowStain`).

    Returns
    -------
    ndarray (K,) float32
    """
    K = len(centers0)
    probs = np.zeros(K, np.float32)
    if K == 0:
        return probs
    batch = np.zeros((batch_size, spec.towers, spec.window, spec.window, 3), np.uint8)
    where = np.zeros(batch_size, np.int64)
    fill = 0
    workers = max(1, int(workers))
    ex = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="wsiheat-read")
    pending: collections.deque = collections.deque()
    tile_iter = iter(tiles)
    local, opened, lock = threading.local(), [], threading.Lock()
    cache = _shared_cache(slide) if own_handles else None

    def read(idx: np.ndarray) -> np.ndarray:
        s = slide
        if own_handles:
            s = getattr(local, "slide", None)
            if s is None:
                s = local.slide = Slide(slide.path)
                if cache is not None:
                    s._osr.set_cache(cache)
                with lock:
                    opened.append(s)
        windows = read_windows(s, spec, centers0[idx], None)
        return windows if transform is None else transform(windows)

    def submit_next() -> None:
        idx = next(tile_iter, None)
        if idx is not None:
            pending.append((idx, ex.submit(read, idx)))

    # a backend that can take a batch and return at once (OpenVINOPredict.submit) keeps its
    # streams busy while this thread gathers the next batch; others are called and waited for
    submit = getattr(predict, "submit", None)
    try:
        for _ in range(2 * workers):
            submit_next()
        while pending:
            idx, fut = pending.popleft()
            windows = fut.result()
            submit_next()
            pos = 0
            while pos < len(idx):
                n = min(batch_size - fill, len(idx) - pos)
                batch[fill:fill + n] = windows[pos:pos + n]
                where[fill:fill + n] = idx[pos:pos + n]
                fill += n
                pos += n
                if fill == batch_size:
                    if submit is not None:
                        submit(batch, where, probs, batch_size)
                    else:
                        probs[where] = predict(batch)
                    fill = 0
                    if progress:
                        progress(batch_size)
        if fill:
            batch[fill:] = 0  # pad the last batch: fixed shape, no retracing
            if submit is not None:
                submit(batch, where, probs, fill)
            else:
                probs[where[:fill]] = predict(batch)[:fill]
            if progress:
                progress(fill)
        if submit is not None:
            predict.wait()
    finally:
        if submit is not None:  # never return (or raise) while requests still write into probs
            try:
                predict.wait()
            except Exception:  # noqa: BLE001 - the first error is the one being raised
                pass
        ex.shutdown(wait=True, cancel_futures=True)
        for s in opened:
            s.close()
    return probs


def predict_patches(model: Any, patches_path: str | os.PathLike, batch_size: int = 64,
                    progress: bool = True, tta: bool = False) -> dict[str, np.ndarray]:
    """Run a model over a wsiheat HDF5 patches file, reading it in chunks.

    Parameters
    ----------
    model : keras.Model or wsiheat.inference.engine.HeatmapModel
        Takes uint8 ``(B, T, W, W, 3)`` exactly as the HDF5 ``images`` rows,
        returns ``(B, 1)`` tumor probabilities; a ``HeatmapModel`` runs its
        backend's compiled function (and its own TTA: ``tta`` is then unused).
    patches_path : path-like
        A wsiheat patches file (read through :func:`wsiheat.patches.store.open_patches`).
    batch_size : int
        Windows per model call (and per HDF5 read).
    progress : bool
        Show a tqdm bar (on a terminal only).
    tta : bool
        Average over the 8 rotations/flips of each window (the same
        transform for every tower), as ``heatmap --tta`` does.

    Returns
    -------
    dict
        ``scores`` float64 (N,), ``labels`` uint8 (N,), ``slide_ids`` (N,),
        ``slides`` list of str, ``centers`` (N, 2), ``stain`` (the
        normalisation record, or None).

    Notes
    -----
    A ``HeatmapModel`` whose metadata holds a stain normaliser normalises every
    row as training did: one source fit per slide of the file
    (:class:`wsiheat.patches.stain.PatchStain`).
    """
    from tqdm import tqdm

    from wsiheat.patches.store import open_patches

    if batch_size < 1:
        raise WsiheatError(f"batch size must be >= 1 (got {batch_size})")
    path = Path(patches_path)
    engine = model if hasattr(model, "predict_windows") else None
    stain = None
    if engine is not None and engine.metadata.get("stain"):
        from wsiheat.patches.stain import PatchStain
        from wsiheat.wsi.stain import normalizer_from_dict

        stain = PatchStain.fit(normalizer_from_dict(engine.metadata["stain"], engine.path or "model"), path)
    with open_patches(path) as pf:
        n, expected = pf.n, (pf.towers, pf.window, pf.window, 3)
        mshape = (None, engine.towers, engine.window, engine.window, 3) if engine else getattr(model, "input_shape", None)
        if isinstance(mshape, tuple) and len(mshape) == 5:
            want = tuple(mshape[1:])
            if any(w is not None and w != e for w, e in zip(want, expected)):
                raise WsiheatError(f"{path}: windows of shape {expected} do not fit the model's input {want}")
        labels = np.asarray(pf.labels).astype(np.uint8).reshape(-1)
        slide_ids, slides, centers = np.asarray(pf.slide_ids), list(pf.slides), np.asarray(pf.centers)
        scores = np.empty(n, np.float64)
        bar = tqdm(total=n, desc="predict", unit="patch", disable=None if progress else True, smoothing=0.1)
        for start in range(0, n, batch_size):
            stop = min(n, start + batch_size)
            x = pf.read(start, stop)
            if stain is not None:
                x = stain.apply(x, slide_ids[start:stop])
            if engine is not None:
                scores[start:stop] = engine.predict_windows(x)
                bar.update(stop - start)
                continue
            views = [dihedral(x, k, flip) for flip in (False, True) for k in range(4)] if tta else [x]
            out = sum(np.asarray(model.predict_on_batch(v), dtype=np.float64).reshape(stop - start, -1)[:, -1]
                      for v in views) / len(views)
            scores[start:stop] = out
            bar.update(stop - start)
        bar.close()
    if not np.isfinite(scores).all():
        raise WsiheatError(f"{path}: the model produced NaN or infinite scores")
    return {"scores": scores, "labels": labels, "slide_ids": slide_ids, "slides": slides, "centers": centers,
            "stain": None if stain is None else stain.record()}
