"""The HDF5 patches file: the data contract between extract/import and train/evaluate.

Layout (schema version 1; N windows, T towers, W x W pixels)::

    images      uint8  (N, T, W, W, 3)  tower 0 the finest; chunked CHUNK_ROWS rows
    labels      uint8  (N,)             1 = tumor
    centers     int64  (N, 2)           window centre (x, y), level-0 pixels (-1: unknown)
    slide_ids   int32  (N,)             index into ``slides``
    slides      str    (S,)             slide names (file stem / patient id), UTF-8
    slide_info  str    (S,)             one JSON object per slide (path, dimensions, ...)
    attrs: format="wsiheat-patches", schema_version=1, window, center, stride,
           levels (int per tower, -1 = not a pyramid level), downsamples (float per
           tower, relative to level 0), tissue_threshold, wsiheat_version,
           params (JSON string of the full parameter set)

Writing is two-step, so an existing file is never modified in place:

1. :class:`ShardWriter` writes one or more slides into a new *shard* (itself a
   valid patches file), incrementally and with bounded memory;
2. :func:`merge_into` appends shards to the destination by writing a complete
   new file under a temporary name and renaming it over the destination
   (:func:`wsiheat.fileio.atomic_path`): a failure or Ctrl-C at any point
   leaves the destination byte-identical.

Reading goes through :func:`open_patches`, which validates the contract.

Example
-------
>>> with open_patches("patches.h5") as pf:                       # doctest: +SKIP
...     pf.n, pf.towers, pf.window, pf.slides
...     for start, stop in pf.batches():          # chunk-aligned ranges
...         x = pf.read(start, stop)              # uint8 (B, T, W, W, 3)
...         y = pf.labels[start:stop]
"""

from __future__ import annotations

import json
import math
import os
import shutil
import time
from pathlib import Path
from typing import Iterator

import h5py
import numpy as np

from wsiheat import __version__
from wsiheat.errors import PatchFileError
from wsiheat.fileio import atomic_path, check_free_space, free_bytes, pause_point

FORMAT = "wsiheat-patches"
SCHEMA_VERSION = 1

#: Rows (windows) per ``images`` chunk. Measured with ``tools/bench_store.py``
#: (see docs/extract.md): 64-row chunks read as fast as larger ones.
CHUNK_ROWS = 64
#: Compression of ``images``: none (gzip/lzf slowed chunk reads, see docs/extract.md).
COMPRESSION = None
#: HDF5 chunk cache for reading/writing ``images`` (bytes); holds several chunks.
CHUNK_CACHE_BYTES = 64 * 1024 * 1024

#: Root attributes that must agree between files merged together.
GEOMETRY_ATTRS = ("window", "center", "stride", "tissue_threshold")
DATASETS = ("images", "labels", "centers", "slide_ids", "slides", "slide_info")

_STR = h5py.string_dtype(encoding="utf-8")
#: Relative tolerance when comparing downsamples (pyramids round level sizes).
DOWNSAMPLE_RTOL = 0.01


#: What h5py raises on a damaged file (bad signatures, checksums, heaps, truncated data).
_H5_ERRORS = (OSError, KeyError, RuntimeError, ValueError, UnicodeDecodeError)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().strip("'\"")
    return text.splitlines()[0] if text else type(exc).__name__


def tower_mismatch(a: dict, b: dict) -> str | None:
    """How the towers of two sources differ in magnification, or None when they agree.

    ``a`` and ``b`` hold ``downsamples`` (per tower), and optionally
    ``levels`` and ``mpps`` (per-tower µm/px, None when unknown). When both
    know their µm/px, those are compared (5 % tolerance); otherwise the
    downsamples (:data:`DOWNSAMPLE_RTOL`).
    """
    da, db = [float(v) for v in a.get("downsamples") or []], [float(v) for v in b.get("downsamples") or []]
    if len(da) != len(db):
        return f"{len(db)} tower(s) vs {len(da)}"
    ma, mb = a.get("mpps"), b.get("mpps")

    def show(d, ds):
        lv = d.get("levels")
        lv = [v for v in lv if v is not None and int(v) >= 0] if lv else []
        return f"downsamples {[round(v, 3) for v in ds]}" + (f" (levels {lv})" if len(lv) == len(ds) else "")

    if ma and mb and len(ma) == len(mb):
        if not np.allclose(ma, mb, rtol=0.05):
            return (f"µm/px {[round(float(v), 3) for v in mb]} vs {[round(float(v), 3) for v in ma]}; "
                    f"{show(b, db)} vs {show(a, da)}")
        return None
    if not np.allclose(da, db, rtol=DOWNSAMPLE_RTOL):
        return f"{show(b, db)} vs {show(a, da)}"
    return None


LOCK_RETRY_SECONDS = 3.0
"""How long an open waits for another process's HDF5 file lock to go (a writer closing the file,
or a process forked while the file was open that has not yet closed its copy of the descriptor)."""


def _open_h5(path: Path, mode: str) -> h5py.File:
    deadline = time.monotonic() + LOCK_RETRY_SECONDS
    while True:
        try:
            return h5py.File(path, mode, rdcc_nbytes=CHUNK_CACHE_BYTES, rdcc_nslots=10007)
        except OSError as exc:
            if "unable to lock file" not in str(exc):
                raise
            if time.monotonic() > deadline:
                raise OSError(f"locked by another process (is it being written?): {_first_line(exc)}") from None
            time.sleep(0.05)


def normalize_attrs(attrs: dict) -> dict:
    """Validate and complete root attributes for a new patches file.

    Parameters
    ----------
    attrs : dict
        Must hold ``window``, ``center``, ``stride`` (ints) and ``downsamples``
        (per tower); may hold ``levels`` (per tower, None/-1 = not a level),
        ``tissue_threshold`` (float, NaN when not applicable), ``params``
        (dict or JSON string), ``wsiheat_version``.

    Returns
    -------
    dict
        Attributes as stored (numpy arrays for per-tower values).
    """
    missing = [k for k in ("window", "center", "stride", "downsamples") if k not in attrs]
    if missing:
        raise ValueError(f"patches file attributes lack {missing}")
    ds = np.asarray([float(d) for d in attrs["downsamples"]], np.float64)
    if ds.ndim != 1 or len(ds) < 1 or np.any(ds <= 0):
        raise ValueError(f"downsamples must be positive, one per tower, got {attrs['downsamples']!r}")
    levels = attrs.get("levels")
    if levels is None or len(levels) == 0:
        levels = [-1] * len(ds)
    levels = np.asarray([-1 if v is None else int(v) for v in levels], np.int64)
    if len(levels) != len(ds):
        raise ValueError(f"levels {levels.tolist()} and downsamples {ds.tolist()} differ in length")
    out = {}
    for k in ("window", "center", "stride"):
        v = attrs[k]
        if not isinstance(v, (int, np.integer)) or v <= 0:
            raise ValueError(f"{k} must be a positive integer, got {v!r}")
        out[k] = int(v)
    params = attrs.get("params", {})
    if not isinstance(params, str):
        params = json.dumps(params, sort_keys=True, default=_json_default)
    out.update(
        format=FORMAT, schema_version=SCHEMA_VERSION, levels=levels, downsamples=ds,
        tissue_threshold=float(attrs.get("tissue_threshold", float("nan"))),
        wsiheat_version=str(attrs.get("wsiheat_version", __version__)), params=params,
    )
    return out


def _json_default(o):
    if isinstance(o, np.generic):
        return o.item()
    if isinstance(o, np.ndarray):
        return o.tolist()
    if isinstance(o, Path):
        return str(o)
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")


def _create_layout(f: h5py.File, attrs: dict, chunk_rows: int = CHUNK_ROWS) -> None:
    T, W = len(attrs["downsamples"]), attrs["window"]
    for k, v in attrs.items():
        f.attrs[k] = v
    f.create_dataset("images", shape=(0, T, W, W, 3), maxshape=(None, T, W, W, 3), dtype=np.uint8,
                     chunks=(chunk_rows, T, W, W, 3), compression=COMPRESSION)
    f.create_dataset("labels", shape=(0,), maxshape=(None,), dtype=np.uint8, chunks=(16384,))
    f.create_dataset("centers", shape=(0, 2), maxshape=(None, 2), dtype=np.int64, chunks=(8192, 2))
    f.create_dataset("slide_ids", shape=(0,), maxshape=(None,), dtype=np.int32, chunks=(16384,))
    f.create_dataset("slides", shape=(0,), maxshape=(None,), dtype=_STR, chunks=(256,))
    f.create_dataset("slide_info", shape=(0,), maxshape=(None,), dtype=_STR, chunks=(256,))


#: Free space kept in reserve while writing (HDF5 metadata, the chunk cache's last flush).
ROOM_MARGIN = 4 << 20


def _ensure_room(path: Path, expected_size: int) -> None:
    """Raise before a write that would fill the disk: HDF5 does not survive a full disk (it can crash).

    ``expected_size``: bytes the file will hold after the write; what is not
    yet on disk (chunks still in HDF5's cache included) must fit in the free space.
    """
    try:
        on_disk = path.stat().st_blocks * 512
    except OSError:
        on_disk = 0
    need = max(0, expected_size - on_disk) + ROOM_MARGIN
    free = free_bytes(path.parent)
    if need > free:
        raise PatchFileError(f"{path.parent}: not enough free space to go on writing {path.name} "
                             f"({need / 1e6:.1f} MB needed, {free / 1e6:.1f} MB free); the earlier file, "
                             f"if any, is unchanged")


def append_rows(f: h5py.File, images: np.ndarray, labels: np.ndarray, centers: np.ndarray,
                 slide_ids: np.ndarray) -> None:
    """Append rows to the datasets of an open patches file (its layout already made)."""
    n0, k = f["labels"].shape[0], len(labels)
    if k == 0:
        return
    for name, arr in (("images", images), ("labels", labels), ("centers", centers), ("slide_ids", slide_ids)):
        ds = f[name]
        ds.resize(n0 + k, axis=0)
        ds[n0:n0 + k] = arr


def _add_slide(f: h5py.File, name: str, info: dict) -> int:
    sid = f["slides"].shape[0]
    for ds_name, value in (("slides", str(name)),
                           ("slide_info", json.dumps(info, sort_keys=True, default=_json_default))):
        ds = f[ds_name]
        ds.resize(sid + 1, axis=0)
        ds[sid] = value
    return sid


class ShardWriter:
    """Incremental writer of a new patches file (a *shard*).

    Parameters
    ----------
    path : path-like
        File to create (overwritten). Usually a temporary file that
        :func:`merge_into` then appends to the destination.
    attrs : dict
        Root attributes, see :func:`normalize_attrs`.
    chunk_rows : int
        Rows per ``images`` chunk.

    Examples
    --------
    >>> with ShardWriter(tmp, {"window": 80, "center": 50, "stride": 50,   # doctest: +SKIP
    ...                        "downsamples": [4, 8], "levels": [2, 3]}) as w:
    ...     sid = w.add_slide("tumor_001", {"path": "tumor_001.tif"})
    ...     w.append(images, labels, centers, sid)
    """

    def __init__(self, path: str | os.PathLike, attrs: dict, chunk_rows: int = CHUNK_ROWS):
        self.path = Path(path)
        self.attrs = normalize_attrs(attrs)
        self.towers = len(self.attrs["downsamples"])
        self.window = self.attrs["window"]
        self.row_bytes = self.towers * self.window * self.window * 3 + 8 * 3
        try:
            self._f = _open_h5(self.path, "w")
        except OSError as exc:
            raise PatchFileError(f"{self.path}: cannot create HDF5 file ({exc})") from None
        _create_layout(self._f, self.attrs, chunk_rows)

    @property
    def n(self) -> int:
        """Rows written so far."""
        return int(self._f["labels"].shape[0])

    @property
    def slides(self) -> list[str]:
        return [s.decode() if isinstance(s, bytes) else s for s in self._f["slides"][:]]

    def add_slide(self, name: str, info: dict | None = None) -> int:
        """Register a slide; returns its id (index into ``slides``)."""
        if name in self.slides:
            raise ValueError(f"slide {name!r} already added to this shard")
        return _add_slide(self._f, name, info or {})

    def set_slide_info(self, slide_id: int, info: dict) -> None:
        """Replace a slide's info JSON (e.g. with final counts)."""
        self._f["slide_info"][slide_id] = json.dumps(info, sort_keys=True, default=_json_default)

    def append(self, images: np.ndarray, labels: np.ndarray, centers: np.ndarray, slide_id: int) -> None:
        """Append windows of one slide.

        Parameters
        ----------
        images : uint8 (K, T, W, W, 3)
        labels : (K,) 0/1
        centers : (K, 2) level-0 (x, y); rounded to int64
        slide_id : int
        """
        images = np.asarray(images)
        k = len(images)
        if images.shape[1:] != (self.towers, self.window, self.window, 3) or images.dtype != np.uint8:
            raise ValueError(f"images must be uint8 (K, {self.towers}, {self.window}, {self.window}, 3), "
                             f"got {images.dtype} {images.shape}")
        labels = np.asarray(labels).astype(np.uint8).reshape(-1)
        centers = np.rint(np.asarray(centers, np.float64).reshape(-1, 2)).astype(np.int64)
        if len(labels) != k or len(centers) != k:
            raise ValueError(f"{k} images but {len(labels)} labels and {len(centers)} centers")
        if not 0 <= slide_id < self._f["slides"].shape[0]:
            raise ValueError(f"unknown slide id {slide_id}")
        _ensure_room(self.path, (self.n + k) * self.row_bytes)
        append_rows(self._f, images, labels, centers, np.full(k, slide_id, np.int32))
        pause_point("shard-append")

    def close(self) -> None:
        if self._f:
            self._f.close()

    def __enter__(self) -> "ShardWriter":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


# --- reading ------------------------------------------------------------------------

def _decode(v) -> str:
    return v.decode("utf-8") if isinstance(v, bytes) else str(v)


class PatchFile:
    """A validated, open patches file (use :func:`open_patches`).

    Attributes
    ----------
    path : Path
    n, towers, window, center, stride : int
    levels : list of (int or None)
        Per tower; None where the tower was not a pyramid level.
    downsamples : list of float
    tissue_threshold : float
    attrs : dict
        All root attributes (numpy values converted to Python).
    params : dict
        The parameter set (root ``params`` JSON).
    slides : list of str
    slide_info : list of dict
    labels, slide_ids : ndarray (N,)
    centers : ndarray (N, 2)
    images : h5py.Dataset
        ``(N, T, W, W, 3)`` uint8; prefer :meth:`read` / :meth:`batches`.
    chunk_rows : int
        Rows per ``images`` chunk: read whole chunks for speed.
    """

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        if not self.path.exists():
            raise PatchFileError(f"{self.path}: no such file")
        if self.path.is_dir():
            raise PatchFileError(f"{self.path}: is a folder, not an HDF5 patches file")
        if not h5py.is_hdf5(self.path):
            raise PatchFileError(f"{self.path}: not an HDF5 file (expected a wsiheat patches file)")
        try:
            self._f = _open_h5(self.path, "r")
        except OSError as exc:
            raise PatchFileError(f"{self.path}: cannot open HDF5 file ({exc})") from None
        try:
            self._validate()
        except _H5_ERRORS as exc:
            self._f.close()
            raise PatchFileError(f"{self.path}: damaged HDF5 file, cannot read it ({_first_line(exc)})") from None
        except BaseException:
            self._f.close()
            raise

    def _validate(self) -> None:
        f, p = self._f, self.path
        fmt = f.attrs.get("format")
        if fmt is None or _decode(fmt) != FORMAT:
            raise PatchFileError(f"{p}: not a wsiheat patches file (attribute format={_decode(fmt) if fmt is not None else 'missing'},"
                               f" expected {FORMAT!r})")
        ver = f.attrs.get("schema_version")
        if ver is None or int(ver) != SCHEMA_VERSION:
            raise PatchFileError(f"{p}: patches schema_version {ver} is not supported (this wsiheat reads {SCHEMA_VERSION})")
        missing = [d for d in DATASETS if d not in f]
        missing += [a for a in ("window", "center", "stride", "levels", "downsamples") if a not in f.attrs]
        if missing:
            raise PatchFileError(f"{p}: damaged wsiheat patches file: missing {', '.join(missing)}")
        self.attrs = {k: (v.tolist() if isinstance(v, np.ndarray) else v.item() if isinstance(v, np.generic)
                          else _decode(v) if isinstance(v, bytes) else v) for k, v in f.attrs.items()}
        self.window, self.center, self.stride = (int(self.attrs[k]) for k in ("window", "center", "stride"))
        self.downsamples = [float(d) for d in np.atleast_1d(self.attrs["downsamples"])]
        self.levels = [None if int(l) < 0 else int(l) for l in np.atleast_1d(self.attrs["levels"])]
        self.towers = len(self.downsamples)
        self.tissue_threshold = float(self.attrs.get("tissue_threshold", float("nan")))
        try:
            self.params = json.loads(self.attrs.get("params", "{}") or "{}")
        except json.JSONDecodeError:
            raise PatchFileError(f"{p}: damaged wsiheat patches file: params attribute is not JSON") from None
        img = f["images"]
        n = img.shape[0]
        if img.dtype != np.uint8 or img.shape[1:] != (self.towers, self.window, self.window, 3):
            raise PatchFileError(f"{p}: damaged wsiheat patches file: images {img.dtype} {img.shape} do not match "
                               f"{self.towers} towers of {self.window} px")
        for name, shape in (("labels", (n,)), ("centers", (n, 2)), ("slide_ids", (n,))):
            if f[name].shape != shape:
                raise PatchFileError(f"{p}: damaged wsiheat patches file: {name} has shape {f[name].shape}, expected {shape}")
        self.n = int(n)
        self.images = img
        self.chunk_rows = int(img.chunks[0]) if img.chunks else 64
        self.labels = f["labels"][:]
        self.centers = f["centers"][:]
        self.slide_ids = f["slide_ids"][:]
        self.slides = [_decode(s) for s in f["slides"][:]]
        self.slide_info = []
        for s in f["slide_info"][:]:
            try:
                self.slide_info.append(json.loads(_decode(s)))
            except json.JSONDecodeError:
                self.slide_info.append({})
        if self.n and (self.slide_ids.min() < 0 or self.slide_ids.max() >= len(self.slides)):
            raise PatchFileError(f"{p}: damaged wsiheat patches file: slide_ids outside 0-{len(self.slides) - 1}")

    def tower_mpps(self, tolerance: float = 0.02) -> list[float] | None:
        """µm/px of each tower, when every slide's ``slide_info`` knows its µm/px and they agree.

        A slide's tower resolution is its level-0 ``mpp`` times the tower's
        downsample. Returns None when any slide lacks µm/px or the slides differ
        by more than ``tolerance`` (relative); the per-tower mean otherwise.
        """
        per_slide = []
        for info in self.slide_info:
            mpp = info.get("mpp")
            ds = info.get("downsamples") or self.downsamples
            if not mpp or len(ds) != self.towers:
                return None
            per_slide.append([float(mpp) * float(d) for d in ds])
        if not per_slide:
            return None
        arr = np.asarray(per_slide)
        mean = arr.mean(axis=0)
        if np.any(np.abs(arr - mean) > tolerance * mean):
            return None
        return [float(m) for m in mean]

    # -- reading --------------------------------------------------------------------
    def read(self, start: int, stop: int) -> np.ndarray:
        """Images of rows ``[start, stop)``, uint8 (B, T, W, W, 3).

        Raises PatchFileError when the file is damaged there.
        """
        try:
            return self.images[start:stop]
        except _H5_ERRORS as exc:
            raise self.damaged(start, stop, exc) from None

    def damaged(self, start: int, stop: int, exc: BaseException) -> PatchFileError:
        """The error of a failed read of rows ``[start, stop)``."""
        return PatchFileError(f"{self.path}: damaged HDF5 file, cannot read rows {start}-{stop - 1} "
                              f"({_first_line(exc)})")

    def read_rows(self, rows: np.ndarray) -> np.ndarray:
        """Images of arbitrary rows (any order, repeats allowed), uint8 (B, T, W, W, 3).

        Rows are read chunk by chunk (sorted), so nearby rows cost one read.
        """
        rows = np.asarray(rows, np.int64).reshape(-1)
        out = np.empty((len(rows), self.towers, self.window, self.window, 3), np.uint8)
        if len(rows) == 0:
            return out
        if rows.min() < 0 or rows.max() >= self.n:
            raise IndexError(f"rows outside 0-{self.n - 1}")
        order = np.argsort(rows, kind="stable")
        srt = rows[order]
        chunk = srt // self.chunk_rows
        for c in np.unique(chunk):
            sel = np.flatnonzero(chunk == c)
            lo, hi = srt[sel[0]], srt[sel[-1]] + 1
            block = self.read(lo, hi)
            out[order[sel]] = block[srt[sel] - lo]
        return out

    def batches(self, batch_size: int | None = None) -> Iterator[tuple[int, int]]:
        """Chunk-aligned ``(start, stop)`` row ranges covering the file in order.

        ``batch_size`` is rounded up to a whole number of chunks (default one chunk).
        """
        step = self.chunk_rows * max(1, math.ceil((batch_size or self.chunk_rows) / self.chunk_rows))
        for s in range(0, self.n, step):
            yield s, min(self.n, s + step)

    def rows_of_slide(self, name: str) -> np.ndarray:
        """Row indices of one slide."""
        if name not in self.slides:
            raise KeyError(name)
        return np.flatnonzero(self.slide_ids == self.slides.index(name))

    def close(self) -> None:
        self._f.close()

    def __enter__(self) -> "PatchFile":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __repr__(self) -> str:
        return (f"PatchFile({str(self.path)!r}, n={self.n}, towers={self.towers}, window={self.window}, "
                f"slides={len(self.slides)}, tumor={int(self.labels.sum())})")


def open_patches(path: str | os.PathLike) -> PatchFile:
    """Open and validate a patches file for reading.

    Raises
    ------
    WsiheatError
        Missing file, not HDF5, not a wsiheat patches file, another schema
        version, or inconsistent datasets.
    """
    return PatchFile(path)


# --- merging ------------------------------------------------------------------------

def compatibility_problems(a: dict, b: dict) -> list[str]:
    """Differences between two files' parameters that forbid merging them.

    ``a`` and ``b`` are root-attribute dicts (as :attr:`PatchFile.attrs`).
    Window geometry, tissue threshold, towers, levels and downsamples must
    agree; when both were extracted with µm/px targets (``params["mpp"]``),
    the targets are compared instead of the per-slide downsamples.
    """
    probs = []
    for k in GEOMETRY_ATTRS:
        va, vb = a.get(k), b.get(k)
        if k == "tissue_threshold":
            fa, fb = float(va if va is not None else "nan"), float(vb if vb is not None else "nan")
            if not ((math.isnan(fa) and math.isnan(fb)) or math.isclose(fa, fb, rel_tol=1e-9, abs_tol=1e-12)):
                probs.append(f"{k} {fb:g} vs {fa:g}")
        elif int(va) != int(vb):
            probs.append(f"{k} {vb} vs {va}")
    da, db = list(np.atleast_1d(a["downsamples"])), list(np.atleast_1d(b["downsamples"]))
    if len(da) != len(db):
        return probs + [f"{len(db)} towers vs {len(da)}"]

    def mpp(x):
        try:
            return json.loads(x.get("params", "{}") or "{}").get("mpp")
        except (json.JSONDecodeError, AttributeError):
            return None

    ma, mb = mpp(a), mpp(b)
    if ma and mb:
        if not np.allclose(ma, mb, rtol=1e-6):
            probs.append(f"µm/px targets {mb} vs {ma}")
    else:
        la, lb = [int(v) for v in np.atleast_1d(a["levels"])], [int(v) for v in np.atleast_1d(b["levels"])]
        if la != lb:
            probs.append(f"levels {lb} vs {la}")
        if not np.allclose(da, db, rtol=DOWNSAMPLE_RTOL):
            probs.append(f"downsamples {[round(float(d), 4) for d in db]} vs {[round(float(d), 4) for d in da]}")
    return probs


def merge_into(dest: str | os.PathLike, shard_paths: list[str | os.PathLike], replace: bool = False) -> dict:
    """Append shards to a patches file atomically.

    A complete new file is written under a temporary name beside ``dest``
    (a copy of ``dest`` with the shards appended) and renamed over ``dest``;
    on any failure or interruption ``dest`` stays byte-identical.

    Parameters
    ----------
    dest : path-like
        Patches file to create or append to.
    shard_paths : list of path-like
        Patches files (e.g. written by :class:`ShardWriter`) to append, in order.
    replace : bool
        When a shard's slide is already in ``dest``: drop its old rows and add
        the new ones (True), or refuse (False, the default).

    Returns
    -------
    dict
        ``{"slides_added": [...], "slides_replaced": [...], "rows_added": int, "rows_total": int}``

    Raises
    ------
    WsiheatError
        ``dest`` is not a wsiheat patches file (or another schema version),
        parameters differ, or a slide is already present and ``replace`` is False.
    """
    dest = Path(dest)
    shards = [open_patches(p) for p in shard_paths]
    old = None
    try:
        if dest.exists():
            old = open_patches(dest)
        ref_attrs = old.attrs if old is not None else (shards[0].attrs if shards else None)
        if ref_attrs is None:
            raise ValueError("nothing to merge")
        seen: dict[str, Path] = {}
        for s in shards:
            probs = compatibility_problems(ref_attrs, s.attrs)
            if probs:
                raise PatchFileError(f"{dest}: parameters differ from those already in the file ({'; '.join(probs)});"
                                   f" extract into another file or use the file's parameters")
            for name in s.slides:
                if name in seen:
                    raise PatchFileError(f"{s.path}: slide {name} is also in {seen[name]}")
                seen[name] = s.path
        existing = set(old.slides) if old is not None else set()
        clash = [n for n in seen if n in existing]
        if clash and not replace:
            raise PatchFileError(f"{dest}: slide {', '.join(clash)} is already in the file "
                               f"(use --replace to re-extract it)")
        rows_bytes = sum(-(-s.n // CHUNK_ROWS) * CHUNK_ROWS * s.towers * s.window * s.window * 3 for s in shards)
        old_size = dest.stat().st_size if old is not None else 0
        check_free_space(dest, old_size + rows_bytes, what="the merged file")
        with atomic_path(dest, suffix=".h5") as tmp:
            if old is not None and not clash:
                old.close()
                shutil.copyfile(dest, tmp)
                f = _open_h5(tmp, "r+")
            else:
                f = _open_h5(tmp, "w")
                attrs = {k: v for k, v in (old or shards[0])._f.attrs.items()}
                chunk_rows = (old or shards[0]).chunk_rows
                _create_layout(f, attrs, chunk_rows)
                if old is not None:
                    _copy_rows(old, f, drop=set(clash))
                    old.close()
            try:
                rows_added = 0
                for s in shards:
                    rows_added += _copy_rows(s, f, drop=set())
                total = int(f["labels"].shape[0])
            except _H5_ERRORS as exc:  # the copy of a file damaged in the middle (its chunk index, ...)
                raise PatchFileError(f"{dest}: damaged HDF5 file, cannot append to it ({_first_line(exc)}); "
                                     f"it is unchanged") from None
            finally:
                f.close()
        return {"slides_added": [n for n in seen if n not in existing], "slides_replaced": clash,
                "rows_added": rows_added, "rows_total": total}
    finally:
        for s in shards:
            s.close()
        if old is not None:
            try:
                old.close()
            except Exception:  # already closed
                pass


def _copy_rows(src: PatchFile, f: h5py.File, drop: set[str]) -> int:
    """Append ``src``'s slides (except ``drop``) and their rows to open file ``f``."""
    id_map = np.full(max(1, len(src.slides)), -1, np.int64)
    for i, (name, info) in enumerate(zip(src.slides, src.slide_info)):
        if name not in drop:
            id_map[i] = _add_slide(f, name, info)
    copied = 0
    step = src.chunk_rows * max(1, 4096 // src.chunk_rows)
    for s in range(0, src.n, step):
        e = min(src.n, s + step)
        new_ids = id_map[src.slide_ids[s:e]]
        keep = new_ids >= 0
        if not keep.any():
            continue
        imgs = src.read(s, e)
        if not keep.all():
            imgs = imgs[keep]
        append_rows(f, imgs, src.labels[s:e][keep], src.centers[s:e][keep], new_ids[keep].astype(np.int32))
        copied += int(keep.sum())
    return copied
