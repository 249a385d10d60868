"""The stain normaliser contract and the pixel selection every normaliser fits on.

A normaliser maps a *source* stain appearance onto a fixed *target*. Both are
small JSON-able dicts of statistics of tissue pixels (:meth:`StainNormalizer.stats`):
the target is fitted once (a reference image, or the training patches) and
stored in the model's metadata; the source is fitted once per slide (on a
sample of its tissue windows) or per patient of a patches file. Every tile of a
slide is then mapped with the same fixed pixel-wise function, so a heatmap
has no seams; no tile is ever fitted on its own.
"""

from __future__ import annotations

import threading

import numpy as np

from wsiheat.errors import NoStainedTissueError, StainError

OD_BACKGROUND = 0.15
"""A pixel is stained tissue when every channel's optical density is at least this (Macenko et al. 2009)."""
OD_BLACK = 3.0
"""... and no channel's optical density is above this (black pen, padding, dust)."""
MIN_TISSUE_PIXELS = 200
"""Fewer stained pixels than this cannot be fitted."""
MIN_COLOUR = 0.08
"""Median relative spread of a tissue pixel's optical densities ((max - min) / mean over R, G, B) below
which an image counts as grayscale: H&E tissue is about 0.3-1.0."""

OD_LUT = (-np.log((np.arange(256, dtype=np.float64) + 1.0) / 256.0)).astype(np.float32)
"""Optical density of each 8-bit value: ``-ln((v + 1) / 256)`` (0 for white, 5.5 for black)."""


def as_grid(pixels: np.ndarray) -> np.ndarray:
    """A C-contiguous ``(rows, cols, 3)`` view of ``(N, 3)`` pixels: OpenCV works row-parallel, and a
    one-column or one-row image is several times slower than a 2-D one."""
    px = np.ascontiguousarray(pixels).reshape(-1, 3)
    n = len(px)
    w = next(w for w in (1024, 512, 256, 128, 64, 32, 16, 8, 4, 2, 1) if n % w == 0)
    return px.reshape(n // w, w, 3)


def optical_density(rgb: np.ndarray) -> np.ndarray:
    """Optical density ``-ln((v + 1) / 256)`` of uint8 RGB, float32 of the same shape (a table lookup)."""
    import cv2

    x = np.asarray(rgb, np.uint8)
    if x.size == 0 or x.shape[-1] != 3:
        return OD_LUT[x]
    return cv2.LUT(as_grid(x), OD_LUT).reshape(x.shape)


OD_MAX = float(np.log(256.0))
"""Optical density of black (``-ln(1 / 256)``): larger values map to 0 as well."""


def from_optical_density(od: np.ndarray) -> np.ndarray:
    """uint8 RGB from float32 optical density ``(..., 3)`` (the inverse of :func:`optical_density`,
    rounded and saturated), with OpenCV's row-parallel ``exp``."""
    import cv2

    x = np.minimum(np.asarray(od, np.float32), np.float32(OD_MAX))
    g = as_grid(x)
    return cv2.convertScaleAbs(cv2.exp(-g), alpha=256.0, beta=-1.0).reshape(x.shape)


def map_optical_density(pixels: np.ndarray, matrix: np.ndarray) -> np.ndarray:
    """uint8 RGB ``(N, 3)`` mapped by a 3x3 matrix in optical density: ``OD' = OD @ matrix`` (OpenCV's
    per-pixel ``transform``: no BLAS threads, so it stays fast on a busy machine)."""
    import cv2

    od = as_grid(optical_density(pixels))
    return from_optical_density(cv2.transform(od, np.asarray(matrix, np.float32).T)).reshape(-1, 3)


def tissue_pixels(images: np.ndarray, what: str = "image") -> np.ndarray:
    """The stained pixels of uint8 RGB images, ``(N, 3)``, checked for colour.

    Parameters
    ----------
    images : uint8 array (..., 3)
        Any stack of RGB images (windows, towers, tiles).
    what : str
        Named in errors (a file, a slide, a patient).

    Raises
    ------
    NoStainedTissueError
        Fewer than :data:`MIN_TISSUE_PIXELS` stained pixels.
    StainError
        Grayscale.
    """
    px = np.asarray(images, np.uint8).reshape(-1, 3)
    od = optical_density(px)
    keep = (od.min(axis=1) >= OD_BACKGROUND) & (od.max(axis=1) <= OD_BLACK)
    n = int(keep.sum())
    if n < MIN_TISSUE_PIXELS:
        raise NoStainedTissueError(f"{what}: no tissue to fit a stain normaliser on ({n} stained pixels of {len(px)})")
    check_colour(od[keep], what)
    return px[keep]


def colour_spread(od: np.ndarray) -> np.ndarray:
    """Relative spread of each pixel's optical densities, ``(max - min) / mean`` over R, G, B (0 for gray)."""
    od = np.asarray(od, np.float32).reshape(-1, 3)
    return (od.max(axis=1) - od.min(axis=1)) / np.maximum(od.mean(axis=1), 1e-6)


def check_colour(od: np.ndarray, what: str = "image") -> None:
    """Raise :class:`StainError` when the optical densities ``(N, 3)`` of stained pixels carry no colour."""
    if not np.size(od):
        return
    spread = float(np.median(colour_spread(od)))
    if spread < MIN_COLOUR:
        raise StainError(f"{what}: grayscale (median colour spread {spread:.3f}); stain normalisation needs "
                         f"colour H&E")


MIN_COLOURED_SHARE = 0.01
"""A slide overview counts as grayscale when fewer than this share of its non-background pixels have colour."""


def check_slide_colour(rgb: np.ndarray, what: str = "slide") -> None:
    """Raise :class:`StainError` when an overview image (a thumbnail) has (almost) no coloured pixel among
    its non-background ones (mean optical density of at least :data:`OD_BACKGROUND`).

    Lenient on purpose: gray scanner borders or padding may cover most of a real slide's overview, so
    one pixel in a hundred with H&E colour (spread of at least :data:`MIN_COLOUR`) is enough.
    """
    od = optical_density(np.asarray(rgb, np.uint8).reshape(-1, 3))
    od = od[(od.mean(axis=1) >= OD_BACKGROUND) & (od.max(axis=1) <= OD_BLACK)]
    if not len(od):
        return
    share = float((colour_spread(od) >= MIN_COLOUR).mean())
    if share < MIN_COLOURED_SHARE:
        raise StainError(f"{what}: grayscale ({share:.1%} of the stained area has colour); stain normalisation "
                         f"needs colour H&E")


class StainNormalizer:
    """Base class of the normalisers: subclasses set :attr:`name` and write
    :meth:`stats` and :meth:`map_pixels`.

    Parameters
    ----------
    target : dict, optional
        Target statistics (from :meth:`stats`); :meth:`fit` sets them from a
        reference image.
    """

    name: str = ""

    def __init__(self, target: dict | None = None):
        self.target = None if target is None else dict(target)

    # -- the two methods of a normaliser -------------------------------------------------
    def stats(self, pixels: np.ndarray) -> dict:
        """Statistics of stained pixels ``(N, 3)`` uint8 (JSON-able)."""
        raise NotImplementedError

    def map_pixels(self, pixels: np.ndarray, source: dict) -> np.ndarray:
        """Map uint8 pixels ``(N, 3)`` of an image with ``source`` statistics onto the target."""
        raise NotImplementedError

    # -- built on them ---------------------------------------------------------------------
    def fit(self, images: np.ndarray, what: str = "reference image") -> StainNormalizer:
        """Set the target from a reference image (or a stack of images); returns ``self``."""
        self.target = self.stats(tissue_pixels(images, what))
        return self

    def source(self, images: np.ndarray, what: str = "image") -> dict:
        """Source statistics of a slide or patient, fitted on its stained pixels."""
        return self.stats(tissue_pixels(images, what))

    def transform(self, images: np.ndarray, source: dict) -> np.ndarray:
        """Map uint8 RGB images ``(..., 3)`` with ``source`` statistics onto the target; same shape."""
        if self.target is None:
            raise StainError(f"the {self.name} normaliser has no target: fit it on a reference image first")
        x = np.asarray(images, np.uint8)
        out = self.map_pixels(x.reshape(-1, 3), source)
        return out.reshape(x.shape)

    def to_dict(self) -> dict:
        """``{"method": name, "target": {...}}``, as stored in a model's metadata."""
        return {"method": self.name, "target": self.target}

    def __repr__(self) -> str:
        return f"{type(self).__name__}(target={'set' if self.target else None})"


MAP_FAILURES = (StainError, ValueError, ArithmeticError, np.linalg.LinAlgError)
"""What a map may raise on degenerate source statistics: :class:`FittedStain` then leaves the pixels as they are."""


class FittedStain:
    """A normaliser with one slide's fitted source: the same pixel-wise map for every tile.

    Called on uint8 pixels ``(..., 3)``: a batch of windows ``(B, T, W, W, 3)``
    (heatmap readers) or one image (a viewer tile). Where the map fails
    (:data:`MAP_FAILURES`), or no source was fitted (``source=None``), the
    pixels come back as they were and are counted in :attr:`unnormalised`:
    ``B`` for a batch of windows, 1 for an image. Thread-safe.

    Parameters
    ----------
    normalizer : StainNormalizer
        With its target.
    source : dict or None
        The slide's statistics (:meth:`StainNormalizer.source`).
    """

    def __init__(self, normalizer: StainNormalizer, source: dict | None):
        self.normalizer, self.source = normalizer, source
        self.unnormalised = 0
        self._lock = threading.Lock()

    def __call__(self, pixels: np.ndarray) -> np.ndarray:
        if self.source is not None:
            try:
                return self.normalizer.transform(pixels, self.source)
            except MAP_FAILURES:
                pass
        with self._lock:
            self.unnormalised += len(pixels) if np.ndim(pixels) == 5 else 1
        return np.asarray(pixels, np.uint8)
