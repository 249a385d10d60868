"""Deep-zoom tiles of a slide and of its heatmap, made on demand and cached.

Both layers follow the Deep Zoom (DZI) pyramid that OpenSeadragon reads:
level ``L`` of an image ``w x h`` is ``ceil(w / 2**(max_level - L))`` pixels
wide, cut in tiles of ``TILE_SIZE`` pixels plus ``OVERLAP`` pixels on each
inner edge.

* The **slide** layer comes from :class:`openslide.deepzoom.DeepZoomGenerator`
  (``limit_bounds=False``, so deep-zoom pixels are level-0 pixels scaled).
* The **stain** layer is the slide layer with each tile mapped by the slide's
  stain normalisation (:class:`StainMap`): the slide as the model saw it.
* The **heatmap** layer is an image of ``PX_PER_CELL`` pixels per heatmap
  cell (``n_cols * P x n_rows * P``), anchored at the heatmap origin; in
  OpenSeadragon it is placed over the slide with width ``n_cols * cell / W``
  (viewport units, slide width = 1), so cell edges fall exactly on the
  slide's level-0 coordinates. Pixels are colour-mapped probabilities, fully
  transparent off tissue and below the probability threshold; the opacity is
  applied by the browser.

Tile coordinates are validated: a level, column or row out of range raises
:class:`TileNotFound` (the server answers 404).
"""

from __future__ import annotations

import io
import math
import re
import threading
from typing import TYPE_CHECKING

import numpy as np

from wsiheat.errors import StainError
from wsiheat.wsi.stain.base import MAP_FAILURES, FittedStain

if TYPE_CHECKING:
    from PIL import Image

#: Deep Zoom tile side and overlap (254 + 2 = 256 px tiles, as openslide's examples)
TILE_SIZE, OVERLAP = 254, 1
#: JPEG quality of slide tiles
JPEG_QUALITY = 80
#: colormaps offered for the heatmap layer (the first is the default, as ``wsiheat heatmap``'s PNGs)
COLORMAPS = ("inferno", "viridis", "magma", "turbo", "jet")
#: most heatmap-layer pixels per heatmap cell
PX_PER_CELL = 8
#: largest deep-zoom level (pixels) a slide layer may hold in memory, and largest slide level
#: read whole to make it, see :class:`SlideLayer`
MEMORY_LEVEL_PIXELS, MEMORY_SOURCE_PIXELS = 2048 * 2048, 32 << 20


class TileNotFound(LookupError):
    """A tile request outside the pyramid (bad level, column, row, colormap or threshold)."""


def dz_level_dimensions(width: int, height: int) -> list[tuple[int, int]]:
    """Deep Zoom level sizes, level 0 = 1 x 1 pixel, last = full size.

    Parameters
    ----------
    width, height : int
        Full-resolution size in pixels.

    Returns
    -------
    list of (int, int)
        ``(w, h)`` of each level, coarsest first (as DeepZoomGenerator and OpenSeadragon).
    """
    size = (max(1, int(width)), max(1, int(height)))
    dims = [size]
    while size[0] > 1 or size[1] > 1:
        size = (max(1, math.ceil(size[0] / 2)), max(1, math.ceil(size[1] / 2)))
        dims.append(size)
    return dims[::-1]


def tile_bounds(level_size: tuple[int, int], col: int, row: int, tile_size: int = TILE_SIZE,
                overlap: int = OVERLAP) -> tuple[int, int, int, int]:
    """Pixel box ``(x0, y0, x1, y1)`` of a tile in its level, overlap included.

    Raises
    ------
    TileNotFound
        When the column or row is outside the level.
    """
    w, h = level_size
    nc, nr = math.ceil(w / tile_size), math.ceil(h / tile_size)
    if not (0 <= col < nc and 0 <= row < nr):
        raise TileNotFound(f"tile ({col}, {row}) outside the {nc} x {nr} tiles of the level")
    x0 = col * tile_size - (overlap if col else 0)
    y0 = row * tile_size - (overlap if row else 0)
    x1 = min(w, (col + 1) * tile_size + overlap)
    y1 = min(h, (row + 1) * tile_size + overlap)
    return x0, y0, x1, y1


def _check_level(level: int, n_levels: int) -> None:
    if not 0 <= level < n_levels:
        raise TileNotFound(f"level {level} outside 0..{n_levels - 1}")


class SlideLayer:
    """Deep-zoom JPEG tiles of one slide, laid out by OpenSlide's DeepZoomGenerator.

    Parameters
    ----------
    path : path-like
        A slide OpenSlide (or, for plain images, Pillow) opens.

    Notes
    -----
    DeepZoomGenerator reads each tile from the slide level nearest below the
    tile's scale and resizes it: cheap on a pyramid with a level every factor
    2, slow for the coarse tiles of a slide with few levels (a one-level SVS
    reads its whole level 0 for the 1-tile levels). So a coarse deep-zoom
    level (at most :data:`MEMORY_LEVEL_PIXELS` pixels) more than 2x below
    the nearest slide level is made once as a whole image (coarser ones by
    halving it) and its tiles are cut from it, when the slide level it is
    made from has at most :data:`MEMORY_SOURCE_PIXELS` pixels; :meth:`warm`
    makes it ahead of the first tile request.
    """

    def __init__(self, path) -> None:
        import openslide
        from openslide.deepzoom import DeepZoomGenerator

        self.osr = openslide.open_slide(str(path))
        self.dz = DeepZoomGenerator(self.osr, TILE_SIZE, OVERLAP, limit_bounds=False)
        self.width, self.height = (int(v) for v in self.dz.level_dimensions[-1])
        self.level_count = int(self.dz.level_count)
        # OpenSlide is thread-safe; Pillow images (ImageSlide) are not
        self._lock = None if isinstance(self.osr, openslide.OpenSlide) else threading.Lock()
        self._images: dict[int, object] = {}
        self._images_lock = threading.Lock()
        bg = str(self.osr.properties.get(openslide.PROPERTY_NAME_BACKGROUND_COLOR) or "ffffff")
        self._background = "#" + (bg if re.fullmatch(r"[0-9a-fA-F]{6}", bg) else "ffffff")
        # regions through wsiheat's Slide where it decodes TIFF tiles directly (the same pixels as
        # OpenSlide's, 1.5-3x faster: wsi/tiff_tiles.py); it composites onto white, so only then
        self._slide = None
        if self._background.lower() == "#ffffff" and isinstance(self.osr, openslide.OpenSlide):
            from wsiheat.wsi.slide import Slide

            slide = Slide(path)
            if slide.reader == "direct":
                self._slide = slide
            else:
                slide.close()

    def check(self, level: int, col: int, row: int) -> None:
        """Raise :class:`TileNotFound` unless the tile exists."""
        _check_level(level, self.level_count)
        cols, rows = self.dz.level_tiles[level]
        if not (0 <= col < cols and 0 <= row < rows):
            raise TileNotFound(f"tile ({col}, {row}) outside the {cols} x {rows} tiles of level {level}")

    def _in_memory(self, level: int) -> bool:
        w, h = self.dz.level_dimensions[level]
        if w * h > MEMORY_LEVEL_PIXELS:
            return False
        f = 2 ** (self.level_count - 1 - level)
        best = self.osr.get_best_level_for_downsample(f)
        bw, bh = self.osr.level_dimensions[best]
        # made from the whole slide level: only when that level is small enough to read at once
        return f / float(self.osr.level_downsamples[best]) > 2.0 and bw * bh <= MEMORY_SOURCE_PIXELS

    def _level_image(self, level: int):
        """The whole deep-zoom level as an RGB Pillow image (made once)."""
        from PIL import Image

        img = self._images.get(level)
        if img is not None:
            return img
        with self._images_lock:
            img = self._images.get(level)
            if img is not None:
                return img
            size = tuple(int(v) for v in self.dz.level_dimensions[level])
            if level + 1 < self.level_count and self._in_memory(level + 1):
                finer = self._images.get(level + 1)
                if finer is None:
                    self._images_lock.release()
                    try:
                        finer = self._level_image(level + 1)
                    finally:
                        self._images_lock.acquire()
                img = finer.resize(size, Image.Resampling.BOX)
            else:
                f = 2 ** (self.level_count - 1 - level)
                best = self.osr.get_best_level_for_downsample(f)
                img = self._region((0, 0), best, self.osr.level_dimensions[best]).resize(size, Image.Resampling.BOX)
            self._images[level] = img
            return img

    def image(self, level: int, col: int, row: int) -> Image.Image:
        """One tile as an RGB Pillow image (before JPEG encoding).

        Raises
        ------
        TileNotFound
            Level, column or row out of range.
        """
        self.check(level, col, row)
        if self._in_memory(level):
            img = self._level_image(level).crop(tile_bounds(self.dz.level_dimensions[level], col, row))
        elif self._lock is None:
            img = self._read_tile(level, col, row)
        else:
            with self._lock:
                img = self._read_tile(level, col, row)
        return img.convert("RGB")

    def tile(self, level: int, col: int, row: int, stain: StainMap | None = None) -> bytes:
        """One JPEG tile, mapped by ``stain`` when given (the slide as the model saw it).

        Raises
        ------
        TileNotFound
            Level, column or row out of range.
        """
        img = self.image(level, col, row)
        if stain is not None:
            from PIL import Image

            img = Image.fromarray(stain(np.asarray(img)), "RGB")
        buf = io.BytesIO()
        img.save(buf, "JPEG", quality=JPEG_QUALITY)
        return buf.getvalue()

    def _read_tile(self, level: int, col: int, row: int):
        """DeepZoomGenerator's tile region, read and scaled with a box filter (its Lanczos is 2x slower)."""
        from PIL import Image

        loc, slide_level, size = self.dz.get_tile_coordinates(level, (col, row))
        img = self._region(loc, slide_level, size)
        z = tuple(int(v) for v in self.dz.get_tile_dimensions(level, (col, row)))
        return img if img.size == z else img.resize(z, Image.Resampling.BOX)

    def _region(self, location: tuple[int, int], level: int, size: tuple[int, int]):
        """A slide region as an RGB Pillow image on the slide's background colour."""
        from PIL import Image

        if self._slide is not None:
            return Image.fromarray(self._slide.read_region(location, level, size), "RGB")
        region = self.osr.read_region(location, level, size)
        img = Image.new("RGB", region.size, self._background)
        img.paste(region, mask=region.getchannel("A") if region.mode == "RGBA" else None)
        return img

    def warm(self) -> None:
        """Make the in-memory coarse level now (the server calls it when it opens the slide)."""
        try:
            for level in range(self.level_count - 1, -1, -1):
                if self._in_memory(level):
                    self._level_image(level)
                    return  # the coarser ones are halvings of it, made when asked
        except Exception:  # noqa: BLE001 - an unreadable slide fails again, visibly, on its tile requests
            return

    def dzi(self) -> str:
        """The DZI XML descriptor of the slide layer."""
        return self.dz.get_dzi("jpeg")

    def close(self) -> None:
        """Close the slide."""
        if self._slide is not None:
            self._slide.close()
        self.osr.close()
        self._images.clear()


class StainMap(FittedStain):
    """A slide's stain normalisation as ``wsiheat heatmap`` applied it: the model's normaliser and
    target with the source fitted on that slide (its summary's ``stain`` record).

    Nothing is refitted: every tile goes through the same pixel-wise map
    (:class:`~wsiheat.wsi.stain.base.FittedStain`), so neighbouring tiles
    cannot disagree. A tile the map fails on (degenerate source statistics) is
    returned as it is and counted in :attr:`unnormalised`.

    Parameters
    ----------
    record : dict
        ``{"method": ..., "target": {...}, "source": {...}, ...}`` (``NAME.json``'s ``stain``).
    what : str
        Named in errors.

    Raises
    ------
    wsiheat.errors.StainError
        Not a normaliser record, an unknown method, no fitted source, or a
        source the normaliser cannot read (a damaged record).
    """

    def __init__(self, record: dict, what: str = "slide") -> None:
        from wsiheat.wsi.stain import normalizer_from_dict

        normalizer = normalizer_from_dict(record, what)
        if normalizer is None:
            raise StainError(f"{what}: no stain normaliser record")
        source = record.get("source")
        if not isinstance(source, dict) or not source:
            raise StainError(f"{what}: the stain normaliser was not fitted on this slide")
        try:  # a record read from disk: missing or mistyped statistics are refused here, not per tile
            normalizer.transform(np.full((1, 1, 3), 128, np.uint8), source)
        except (KeyError, TypeError, IndexError) as exc:
            raise StainError(f"{what}: damaged stain source record ({type(exc).__name__}: {exc})") from None
        except MAP_FAILURES:
            pass  # degenerate statistics: every tile will be shown as it is, and counted
        super().__init__(normalizer, dict(source))
        self.method = normalizer.name

    @classmethod
    def from_summary(cls, summary: dict, what: str = "slide") -> StainMap | None:
        """The map of a slide summary, or None when it has no usable record (no normaliser, no source)."""
        record = summary.get("stain") if isinstance(summary, dict) else None
        if not isinstance(record, dict):
            return None
        try:
            return cls(record, what)
        except StainError:
            return None


_LUTS: dict[str, np.ndarray] = {}


def colormap_lut(name: str) -> np.ndarray:
    """256 x 3 uint8 lookup table of a matplotlib colormap (computed once per name)."""
    lut = _LUTS.get(name)
    if lut is None:
        from matplotlib import colormaps

        lut = _LUTS[name] = (colormaps[name](np.linspace(0, 1, 256))[:, :3] * 255 + 0.5).astype(np.uint8)
    return lut


class HeatmapLayer:
    """Deep-zoom RGBA PNG tiles of a heatmap, aligned with its slide.

    Parameters
    ----------
    probabilities : ndarray (rows, cols)
        Tumor probabilities per cell.
    tissue : ndarray of bool (rows, cols)
        Evaluated cells; the others are transparent.
    cell_size : float
        Cell side in level-0 pixels.
    origin : (float, float)
        Level-0 ``(x, y)`` of the top-left corner of cell (0, 0).
    """

    def __init__(self, probabilities: np.ndarray, tissue: np.ndarray, cell_size: float,
                 origin: tuple[float, float] = (0.0, 0.0)) -> None:
        p = np.nan_to_num(np.asarray(probabilities, np.float64)).clip(0, 1)
        self.rows, self.cols = p.shape
        self.tissue = np.asarray(tissue, bool)
        self.p = p.astype(np.float32)
        # probability quantised to 0..255 (the colormap's resolution)
        self.q = np.round(p * 255).astype(np.uint8)
        self.cell_size = float(cell_size)
        self.origin = (float(origin[0]), float(origin[1]))
        self.px_per_cell = int(max(1, min(PX_PER_CELL, math.floor(self.cell_size))))
        self.width, self.height = self.cols * self.px_per_cell, self.rows * self.px_per_cell
        self.levels = dz_level_dimensions(self.width, self.height)
        self.level_count = len(self.levels)

    def lut(self, cmap: str) -> np.ndarray:
        """The lookup table of an offered colormap (:data:`COLORMAPS`)."""
        if cmap not in COLORMAPS:
            raise TileNotFound(f"colormap {cmap!r} is not one of {', '.join(COLORMAPS)}")
        return colormap_lut(cmap)

    def rgba(self, level: int, box: tuple[int, int, int, int], cmap: str = COLORMAPS[0],
             threshold: float = 0.0) -> np.ndarray:
        """RGBA pixels of a box of a level (uint8, (h, w, 4)); transparent off tissue and below ``threshold``."""
        _check_level(level, self.level_count)
        lut = self.lut(cmap)
        if not 0.0 <= threshold <= 1.0:
            raise TileNotFound(f"threshold {threshold} outside [0, 1]")
        x0, y0, x1, y1 = box
        f = 2 ** (self.level_count - 1 - level)  # full-resolution pixels per level pixel
        P = self.px_per_cell
        cc = np.floor((np.arange(x0, x1) + 0.5) * f / P).astype(np.int64)
        rr = np.floor((np.arange(y0, y1) + 0.5) * f / P).astype(np.int64)
        okc, okr = cc < self.cols, rr < self.rows
        cc, rr = np.minimum(cc, self.cols - 1), np.minimum(rr, self.rows - 1)
        q = self.q[np.ix_(rr, cc)]
        show = self.tissue[np.ix_(rr, cc)] & okr[:, None] & okc[None, :]
        if threshold > 0:
            show &= self.p[np.ix_(rr, cc)] >= np.float32(threshold)
        out = np.empty(q.shape + (4,), np.uint8)
        out[..., :3] = lut[q]
        out[..., 3] = np.where(show, 255, 0)
        return out

    def tile(self, level: int, col: int, row: int, cmap: str = COLORMAPS[0], threshold: float = 0.0) -> bytes:
        """One PNG tile.

        Raises
        ------
        TileNotFound
            Level, column, row, colormap or threshold out of range.
        """
        from PIL import Image

        _check_level(level, self.level_count)
        box = tile_bounds(self.levels[level], col, row)
        buf = io.BytesIO()
        Image.fromarray(self.rgba(level, box, cmap, threshold), "RGBA").save(buf, "PNG", compress_level=1)
        return buf.getvalue()

    def viewport_rect(self, slide_width: int) -> dict:
        """Where the layer goes in OpenSeadragon's viewport (slide width = 1): ``x, y, width``."""
        W = float(slide_width)
        return {"x": self.origin[0] / W, "y": self.origin[1] / W, "width": self.cols * self.cell_size / W}
