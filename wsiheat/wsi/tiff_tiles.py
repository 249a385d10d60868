"""Direct tile reads of tiled TIFF slides (Aperio SVS, generic tiled TIFF) with tifffile and imagecodecs.

OpenSlide decodes a tile, converts it to premultiplied ARGB, paints it with
cairo and hands Python a PIL image that wsiheat converts back to RGB. For
the two formats whose pyramid levels are plain tiled TIFF pages, the same
pixels can be had by reading the page's tiles with ``os.pread`` and decoding
them with the codec tifffile picks (imagecodecs: libjpeg-turbo, OpenJPEG,
zlib, ...): measured 1.5x faster per pixel on JPEG 2000 and 2.5-3x on JPEG
(docs/benchmarks.md). :class:`~wsiheat.wsi.slide.Slide` uses it for a read
only when the result is the same as OpenSlide's, pixel for pixel:

* the slide's OpenSlide vendor is ``aperio`` or ``generic-tiff``, and the
  level is one tiled, 8-bit, 3-sample, chunky TIFF page of exactly the
  level's size;
* the region starts on a whole level pixel (OpenSlide interpolates
  regions that start between level pixels, as on a level whose downsample
  is not an integer; those reads stay with OpenSlide);
* the first time a level is read, one tile is read both ways and compared;
  any difference (another decoder, a colour conversion OpenSlide does
  itself) sends that level back to OpenSlide for good.

Decoded tiles are kept in one LRU cache per slide, bounded in bytes
(:data:`wsiheat.defaults.TILE_CACHE_BYTES`), shared by the reader threads;
reads are thread-safe. ``WSIHEAT_SLIDE_READER=openslide`` in the environment
turns direct reads off.
"""

from __future__ import annotations

import gc
import os
import threading
from pathlib import Path
from typing import Callable

import numpy as np

from wsiheat import defaults
from wsiheat.cache import TileCache

#: OpenSlide vendors whose levels are plain tiled TIFF pages
DIRECT_VENDORS = ("aperio", "generic-tiff")

#: environment variable: ``openslide`` turns direct tile reads off
READER_ENV = "WSIHEAT_SLIDE_READER"

#: a region whose level origin is within this of a whole pixel starts on it
_WHOLE = 1e-6

#: tiles in all levels above which opening a slide frees tifffile's parsed tables at once
_BIG_TABLES = 50_000


class TiffLevel:
    """One tiled TIFF page, read by tiles.

    Parameters
    ----------
    fd : int
        An open descriptor of the file (read with ``os.pread``: no shared
        file position, so threads need no lock).
    page : tifffile.TiffPage
        A tiled page with 8-bit samples, 3 per pixel, chunky.
    key : int
        This level's part of the cache keys.
    cache : TileCache
    """

    def __init__(self, fd: int, page, key: int, cache: TileCache):
        self._fd, self._key, self._cache = fd, key, cache
        self.width, self.height = int(page.imagewidth), int(page.imagelength)
        self.tile_width, self.tile_height = int(page.tilewidth), int(page.tilelength)
        self._across = -(-self.width // self.tile_width)
        # numpy, not the page's tuples of Python ints: 16 bytes a tile (a 40-gigapixel level-0 has ~600k)
        self._offsets = np.asarray(page.dataoffsets, np.int64)
        self._counts = np.asarray(page.databytecounts, np.int64)
        self._jpegtables = page.jpegtables
        self._decode: Callable = page.decode  # tifffile's decoder for this page (thread-safe)

    @property
    def n_tiles(self) -> int:
        return len(self._offsets)

    def tile(self, index: int) -> np.ndarray | None:
        """Decoded tile ``index`` (row-major), shape (th, tw, >=3), or None when the file has none."""
        key = (self._key, index)
        tile = self._cache.get(key)
        if tile is not None:
            return tile
        count = int(self._counts[index])
        data = os.pread(self._fd, count, int(self._offsets[index])) if count else None
        if data is not None and len(data) < count:
            raise OSError(f"tile {index} is cut short ({len(data)} of {count} bytes)")
        segment, _, _ = self._decode(data, index, jpegtables=self._jpegtables)
        if segment is None:
            return None
        tile = np.ascontiguousarray(segment.reshape(segment.shape[-3:])[..., :3])
        self._cache.put(key, tile)
        return tile

    def read(self, x: int, y: int, w: int, h: int, background: int = 255) -> np.ndarray:
        """Region ``[x, x+w) x [y, y+h)`` in this level's pixels as RGB uint8.

        Pixels outside the page, and tiles the file does not hold, are ``background``.
        """
        out = np.full((h, w, 3), background, np.uint8)
        x0, y0, x1, y1 = max(x, 0), max(y, 0), min(x + w, self.width), min(y + h, self.height)
        tw, th = self.tile_width, self.tile_height
        for ty in range(y0 // th, (y1 - 1) // th + 1) if y1 > y0 else ():
            for tx in range(x0 // tw, (x1 - 1) // tw + 1) if x1 > x0 else ():
                tile = self.tile(ty * self._across + tx)
                if tile is None:
                    continue
                ax0, ay0 = max(x0, tx * tw), max(y0, ty * th)
                ax1, ay1 = min(x1, (tx + 1) * tw), min(y1, (ty + 1) * th)
                out[ay0 - y:ay1 - y, ax0 - x:ax1 - x] = tile[ay0 - ty * th:ay1 - ty * th, ax0 - tx * tw:ax1 - tx * tw]
        return out

    def check_tile(self, downsample: float) -> tuple[int, int, int, int]:
        """A tile to compare with OpenSlide: (x, y, w, h) in level pixels.

        The stored tile with the most bytes (the most detail) among those
        whose level-0 origin is a whole pixel; tile (0, 0) when the
        downsample is not an integer (only that origin is whole then).
        """
        whole = abs(downsample - round(downsample)) < _WHOLE
        index = int(np.argmax(self._counts)) if whole and self.n_tiles else 0
        x, y = (index % self._across) * self.tile_width, (index // self._across) * self.tile_height
        return x, y, min(self.tile_width, self.width - x), min(self.tile_height, self.height - y)


def _page_ok(page) -> bool:
    try:
        return (page.is_tiled and int(page.samplesperpixel) == 3 and int(page.bitspersample) == 8
                and int(page.planarconfig) == 1 and int(page.imagedepth) == 1)
    except (AttributeError, TypeError, ValueError):
        return False


def _map_levels(path: str | os.PathLike, level_dimensions: tuple[tuple[int, int], ...], fd: int,
                cache: TileCache) -> dict[int, TiffLevel]:
    """A :class:`TiffLevel` for each level that is exactly one usable tiled page of its size
    (tifffile's pages are no longer referenced once this returns)."""
    import tifffile

    with tifffile.TiffFile(str(path)) as tf:
        pages = [p for p in tf.pages if _page_ok(p)]
        levels = {}
        for lv, (w, h) in enumerate(level_dimensions):
            match = [p for p in pages if (int(p.imagewidth), int(p.imagelength)) == (w, h)]
            if len(match) == 1:
                levels[lv] = TiffLevel(fd, match[0], lv, cache)
    return levels


class TiffTiles:
    """Direct reads of a slide's tiled TIFF levels, checked against OpenSlide.

    Use :meth:`open`; :meth:`read` returns None for every read it does not take.

    Attributes
    ----------
    levels : dict
        Level index -> :class:`TiffLevel` for the levels read directly.
    refused : dict
        Level index -> why that level is read by OpenSlide (after its check).
    """

    def __init__(self, path: Path, fd: int, levels: dict[int, TiffLevel],
                 reference: Callable[[tuple[int, int], int, tuple[int, int], int], np.ndarray],
                 downsamples: tuple[float, ...], cache: TileCache):
        self.path, self._fd, self.levels, self.cache = path, fd, levels, cache
        self._reference, self._downsamples = reference, downsamples
        self._checked: set[int] = set()
        self._lock = threading.Lock()
        self.refused: dict[int, str] = {}

    @classmethod
    def open(cls, path: str | os.PathLike, vendor: str | None, level_dimensions: tuple[tuple[int, int], ...],
             level_downsamples: tuple[float, ...],
             reference: Callable[[tuple[int, int], int, tuple[int, int], int], np.ndarray],
             cache_bytes: int = defaults.TILE_CACHE_BYTES) -> TiffTiles | None:
        """Map a slide's levels to TIFF pages; None when no level can be read directly.

        Parameters
        ----------
        vendor : str or None
            OpenSlide's ``openslide.vendor`` property.
        reference : callable
            ``reference(location0, level, (w, h), background)``: OpenSlide's
            read, composited to RGB; the first read of each level is checked
            against it.
        """
        if vendor not in DIRECT_VENDORS or os.environ.get(READER_ENV, "").strip().lower() == "openslide":
            return None
        fd, cache = -1, TileCache(cache_bytes)
        try:
            fd = os.open(str(path), os.O_RDONLY)
            levels = _map_levels(path, level_dimensions, fd, cache)
        except Exception:  # noqa: BLE001 - anything tifffile cannot map is left to OpenSlide
            levels = {}
        if sum(lvl.n_tiles for lvl in levels.values()) > _BIG_TABLES:
            # tifffile's pages hold their tile tables as tuples of Python ints (~90 bytes a tile) in
            # reference cycles: free them now, not at some later collection, so a large slide's
            # tables do not add to the peak memory of the work that follows
            gc.collect()
        if not levels:
            if fd >= 0:
                os.close(fd)
            return None
        return cls(Path(path), fd, levels, reference, tuple(level_downsamples), cache)

    def read(self, location: tuple[int, int], level: int, size: tuple[int, int],
             background: int = 255) -> np.ndarray | None:
        """The region as OpenSlide would give it, or None when this read is left to OpenSlide.

        Raises the decoder's own error (``ValueError``, ``OSError``,
        ``RuntimeError``...) for a damaged tile; :class:`Slide` words it.
        """
        lvl = self.levels.get(level)
        if lvl is None:
            return None
        ds = self._downsamples[level]
        lx, ly = location[0] / ds, location[1] / ds
        x, y = round(lx), round(ly)
        if abs(lx - x) > _WHOLE or abs(ly - y) > _WHOLE:
            return None  # OpenSlide interpolates between level pixels here
        if level not in self._checked and not self._check(level):
            return None
        return lvl.read(x, y, int(size[0]), int(size[1]), background)

    def _check(self, level: int) -> bool:
        with self._lock:
            if level in self._checked:
                return level in self.levels
            lvl, ds = self.levels[level], self._downsamples[level]
            x, y, w, h = lvl.check_tile(ds)
            why = None
            try:
                mine = lvl.read(x, y, w, h)
            except Exception as exc:  # noqa: BLE001 - the decoder cannot read this page: OpenSlide will
                why = f"tile decode failed ({type(exc).__name__}: {exc})"
            else:
                theirs = self._reference((int(round(x * ds)), int(round(y * ds))), level, (w, h), 255)
                if not np.array_equal(mine, theirs):
                    why = "decoded pixels differ from OpenSlide's"
            if why is not None:
                self.refused[level] = why
                del self.levels[level]
            self._checked.add(level)
            return why is None

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1
