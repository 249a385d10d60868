"""Training input pipeline: HDF5 patches -> augmented ``tf.data`` batches.

* :func:`open_patch_file` checks a file against the HDF5 patches contract
  (``format = "wsiheat-patches"``, ``schema_version = 1``, datasets ``images``
  (N, T, W, W, 3) uint8, ``labels``, ``slide_ids``, ``slides`` ...) and reads
  the small arrays (labels, slide ids, names), never the images.
* :func:`split_by_slide` makes a deterministic validation split in which no
  slide (patient) has windows in both sets.
* :func:`make_dataset` streams rows in chunk-aligned blocks read in shuffled
  order through a shuffle buffer (bounded memory whatever the file size), or
  holds the selected rows in memory when they fit under a memory budget;
  augmentation runs batched in parallel, and batches are prefetched.
* augmentation (rotation, flips, RGB and HED colour) lives in
  :mod:`wsiheat.training.augment`.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from wsiheat.errors import WsiheatError
from wsiheat.training.augment import AugmentConfig, augment_batch

if TYPE_CHECKING:  # pragma: no cover
    import tensorflow as tf

    from wsiheat.patches.stain import PatchStain


@dataclass
class PatchSummary:
    """What training needs to know about a patches file: its small arrays, read once through
    :func:`wsiheat.patches.store.open_patches` (the images stay on disk).

    Attributes
    ----------
    path : Path
    n, towers, window : int
        Rows, towers per row and window side.
    labels : ndarray uint8 (N,)
    slide_ids : ndarray int32 (N,)
    slides : list of str
        Slide (patient) names, indexed by ``slide_ids``.
    attrs : dict
        Root attributes (numpy values converted to plain Python).
    chunk_rows : int
        Rows per HDF5 chunk of ``images`` (reads are aligned to it).
    row_bytes : int
        Bytes per image row (T*W*W*3).
    tower_mpps : list of float or None
        µm/px of each tower when all slides know theirs (see
        :meth:`wsiheat.patches.store.PatchFile.tower_mpps`).
    """

    path: Path
    n: int
    towers: int
    window: int
    labels: np.ndarray
    slide_ids: np.ndarray
    slides: list
    attrs: dict = field(default_factory=dict)
    chunk_rows: int = 64
    row_bytes: int = 0
    tower_mpps: list | None = None

    @property
    def levels(self) -> list:
        lv = self.attrs.get("levels", [-1] * self.towers)
        return [None if int(v) < 0 else int(v) for v in np.atleast_1d(lv)]

    @property
    def downsamples(self) -> list:
        return [float(v) for v in np.atleast_1d(self.attrs.get("downsamples", [1.0] * self.towers))]

    def fingerprint(self) -> str:
        """SHA-256 over the shape, attributes, labels, slide ids and names (not the pixels)."""
        h = hashlib.sha256()
        h.update(json.dumps({"n": self.n, "towers": self.towers, "window": self.window,
                             "attrs": self.attrs}, sort_keys=True, default=str).encode())
        h.update(self.labels.tobytes())
        h.update(self.slide_ids.tobytes())
        h.update("\n".join(self.slides).encode())
        return h.hexdigest()


def _plain(v):
    if isinstance(v, bytes):
        return v.decode("utf-8", "replace")
    if isinstance(v, np.ndarray):
        return [_plain(x) for x in v.tolist()]
    if isinstance(v, np.generic):
        return v.item()
    if isinstance(v, list):
        return [_plain(x) for x in v]
    return v


def open_patch_file(path: str | os.PathLike) -> PatchSummary:
    """Validate an HDF5 patches file (:func:`wsiheat.patches.store.open_patches`) and read its small arrays.

    Raises
    ------
    WsiheatError
        Missing, not HDF5, another tool's file, another schema version, missing
        or inconsistent datasets, labels other than 0/1, or no rows.
    """
    from wsiheat.patches.store import open_patches

    path = Path(path)
    with open_patches(path) as sf:
        if sf.n == 0:
            raise WsiheatError(f"{path}: contains no patches")
        labels = np.asarray(sf.labels, dtype=np.uint8)
        if not np.isin(sf.labels, (0, 1)).all():
            raise WsiheatError(f"{path}: labels must be 0 or 1")
        attrs = {k: _plain(v) for k, v in sf.attrs.items()}
        return PatchSummary(path=path, n=sf.n, towers=sf.towers, window=sf.window, labels=labels,
                         slide_ids=np.asarray(sf.slide_ids, dtype=np.int32), slides=list(sf.slides),
                         attrs=attrs, chunk_rows=max(1, sf.chunk_rows),
                         row_bytes=sf.towers * sf.window * sf.window * 3, tower_mpps=sf.tower_mpps())


# --------------------------------------------------------------------------------------
# Splitting
# --------------------------------------------------------------------------------------

def split_by_slide(slide_ids: np.ndarray, labels: np.ndarray, slide_names: list,
                   fraction: float = 0.15, seed: int = 0) -> tuple[np.ndarray, np.ndarray, list]:
    """Split rows into train/validation so that no slide is in both.

    Slides with and without tumor windows are shuffled separately (seeded) and
    ``fraction`` of each group (rounded, at least one where the group has two
    or more slides) goes to validation, so that validation sees both classes
    whenever the data allow.

    Returns
    -------
    train_idx, val_idx : ndarray int64
        Sorted row indices.
    val_slides : list of str
        Names of the validation slides.
    """
    if not 0.0 < fraction < 1.0:
        raise WsiheatError(f"val_fraction={fraction}: need a value between 0 and 1")
    present = np.unique(slide_ids)
    if len(present) < 2:
        raise WsiheatError(f"only {len(present)} slide(s): a by-slide validation split needs at "
                           "least 2; give a separate validation patches file")
    tumor_slides = np.unique(slide_ids[labels == 1])
    groups = [np.setdiff1d(present, tumor_slides), tumor_slides]
    rng = np.random.default_rng(seed)
    val = []
    for g in groups:
        g = np.array(sorted(g, key=lambda s: slide_names[s]))
        if len(g) == 0:
            continue
        k = int(round(fraction * len(g)))
        if len(g) >= 2:
            k = min(max(k, 1), len(g) - 1)
        val.extend(rng.permutation(g)[:k].tolist())
    if not val:  # e.g. one slide per group: take one slide anyway
        val = [int(rng.permutation(present)[0])]
    if len(val) == len(present):
        val = val[:-1]
    val_mask = np.isin(slide_ids, val)
    return (np.flatnonzero(~val_mask).astype(np.int64), np.flatnonzero(val_mask).astype(np.int64),
            sorted(slide_names[s] for s in val))


def class_weights(labels: np.ndarray) -> dict:
    """Weights ``{0: w0, 1: w1}`` with ``w_c = n / (2 n_c)`` (balanced loss)."""
    n = len(labels)
    counts = np.bincount(labels.astype(np.int64), minlength=2)
    return {c: float(n / (2.0 * counts[c])) if counts[c] else 0.0 for c in (0, 1)}


# --------------------------------------------------------------------------------------
# Pipeline
# --------------------------------------------------------------------------------------

def available_memory() -> int:
    """Bytes of physical memory currently available (a conservative guess where unknown)."""
    try:
        return int(os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE"))
    except (ValueError, OSError, AttributeError):
        return 2 << 30


def default_memory_budget() -> int:
    """Bytes of images held in memory at most: 40 % of the memory available now."""
    return int(0.4 * available_memory())


class _RowSource:
    """Yields ``(images, labels)`` blocks of selected rows from disk or memory."""

    def __init__(self, pf: PatchSummary, rows: np.ndarray, in_memory: bool, block_rows: int, stain=None):
        self.pf = pf
        self.rows = np.sort(np.asarray(rows, dtype=np.int64))
        self.block = max(1, int(block_rows))
        self.labels = pf.labels[self.rows].astype(np.float32)
        self.stain = stain
        self.images = None
        if in_memory and len(self.rows):
            from wsiheat.patches.store import open_patches

            with open_patches(pf.path) as sf:
                self.images = sf.read_rows(self.rows)
            if stain is not None:  # normalised once
                for s in range(0, len(self.rows), 1024):
                    sel = slice(s, s + 1024)
                    self.images[sel] = stain.apply(self.images[sel], pf.slide_ids[self.rows[sel]])

    def blocks(self, shuffle: bool, seed: int, repeat: bool):
        """Generator of ``(uint8 (k,T,W,W,3), float32 (k,1))``."""
        from wsiheat.patches.store import open_patches

        rng = np.random.default_rng(seed)
        if self.images is not None:
            while True:
                order = rng.permutation(len(self.rows)) if shuffle else np.arange(len(self.rows))
                for i in range(0, len(order), 256):
                    sel = np.sort(order[i:i + 256]) if not shuffle else order[i:i + 256]
                    yield self.images[sel], self.labels[sel, None]
                if not repeat:
                    return
        starts = np.unique((self.rows // self.block) * self.block)
        with open_patches(self.pf.path) as sf:
            n = sf.n
            while True:
                order = rng.permutation(starts) if shuffle else starts
                for s in order:
                    lo, hi = np.searchsorted(self.rows, [s, s + self.block])
                    sel = self.rows[lo:hi]
                    data = sf.read(s, min(s + self.block, n))[sel - s]  # PatchFileError when damaged
                    if self.stain is not None:
                        data = self.stain.apply(data, self.pf.slide_ids[sel])
                    lab = self.labels[lo:hi, None]
                    if shuffle:
                        p = rng.permutation(len(sel))
                        data, lab = data[p], lab[p]
                    yield data, lab
                if not repeat:
                    return


def make_dataset(pf: PatchSummary, rows: np.ndarray, batch_size: int, *, training: bool,
                 augment: AugmentConfig | None = AugmentConfig(), balance: str = "weights",
                 seed: int = 0, memory_budget: int | None = None, shuffle_buffer: int | None = None,
                 block_rows: int | None = None, stain: PatchStain | None = None) -> tf.data.Dataset:
    """A ``tf.data.Dataset`` of ``(uint8 (B,T,W,W,3), float32 (B,1))`` batches.

    Parameters
    ----------
    pf : PatchSummary
    rows : array of int
        Rows of ``pf`` to use.
    batch_size : int
    training : bool
        True: infinite, shuffled, augmented (when ``augment``), full batches only.
        False: one pass in file order, no augmentation.
    augment : AugmentConfig or None
    balance : {"weights", "sampling"}
        ``"sampling"`` draws tumor and normal windows with equal probability
        (training only); ``"weights"`` leaves sampling alone (class weights are
        applied by the trainer).
    seed : int
    memory_budget : int, optional
        Rows are held in memory when they fit in this many bytes (default 40 %
        of the available memory), else streamed from disk in chunk-aligned
        blocks read in shuffled order.
    shuffle_buffer : int, optional
        Elements in the shuffle buffer (default: 16 blocks, at least 4 batches).
    block_rows : int, optional
        Rows per disk read (default: the HDF5 chunk size, at least 64).
    stain : wsiheat.patches.stain.PatchStain, optional
        Stain-normalise every row (per slide) as it is read, before augmentation.
    """
    import tensorflow as tf

    if batch_size < 1:
        raise WsiheatError(f"batch_size={batch_size}: need at least 1")
    if balance not in ("weights", "sampling"):
        raise WsiheatError(f"balance={balance}: choose weights or sampling")
    rows = np.asarray(rows, dtype=np.int64)
    budget = default_memory_budget() if memory_budget is None else int(memory_budget)
    in_memory = len(rows) * pf.row_bytes <= budget
    block = int(block_rows or max(pf.chunk_rows, 64))
    if block % pf.chunk_rows:
        block = (block // pf.chunk_rows + 1) * pf.chunk_rows
    T, W = pf.towers, pf.window
    sig = (tf.TensorSpec((None, T, W, W, 3), tf.uint8), tf.TensorSpec((None, 1), tf.float32))

    def stream(sel_rows, s):
        src = _RowSource(pf, sel_rows, in_memory, block, stain)
        return tf.data.Dataset.from_generator(
            lambda: src.blocks(shuffle=training, seed=s, repeat=training), output_signature=sig)

    if training and balance == "sampling":
        parts = [rows[pf.labels[rows] == c] for c in (0, 1)]
        if any(len(p) == 0 for p in parts):
            raise WsiheatError(f"{pf.path}: balanced sampling needs both classes in the training rows")
        ds = tf.data.Dataset.sample_from_datasets(
            [stream(p, seed + 7 * c).unbatch() for c, p in enumerate(parts)], weights=[0.5, 0.5],
            seed=seed)
    else:
        ds = stream(rows, seed).unbatch()
    if training:
        buf = shuffle_buffer or max(16 * block, 4 * batch_size)
        ds = ds.shuffle(min(buf, max(len(rows), 1)), seed=seed)
        ds = ds.batch(batch_size, drop_remainder=True)
        if augment is not None:
            ds = ds.map(lambda x, y: (augment_batch(x, augment), y),
                        num_parallel_calls=tf.data.AUTOTUNE, deterministic=False)
    else:
        ds = ds.batch(batch_size)
    opts = tf.data.Options()
    opts.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.DATA
    ds = ds.with_options(opts)
    return ds.prefetch(tf.data.AUTOTUNE)


def steps_for(n: int, batch_size: int) -> int:
    """Steps of ``batch_size`` covering ``n`` rows once (at least 1)."""
    return max(1, -(-int(n) // int(batch_size)))
